/*
 * kv_cursor.c - the keys cursor of the backends that list in key order
 * (postgres, mongodb): KV_CURSOR_TAG, then the last key of a page in
 * unpadded base64url (RFC 4648 section 5). The cursor is opaque to
 * clients, URL-safe, and its format is fixed: cursors already handed out
 * must keep decoding to the same key. Backends whose cursor carries other
 * state (redis: SCAN position and hash; memory: table position) have
 * their own. Pure functions, no state, safe on any thread.
 */
#include <stdint.h>
#include <string.h>

#include "kvstore/kvstore.h"

static const char b64url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t kv_cursor_len(size_t key_len)
{
    return KV_CURSOR_TAG_LEN + key_len / 3 * 4 +
           (key_len % 3 ? key_len % 3 + 1 : 0);
}

size_t kv_cursor_encode(kv_bytes key, char *out)
{
    const unsigned char *s = (const unsigned char *)key.ptr;
    size_t i, n = KV_CURSOR_TAG_LEN;
    uint32_t v;

    memcpy(out, KV_CURSOR_TAG, KV_CURSOR_TAG_LEN);
    for (i = 0; i + 3 <= key.len; i += 3) {
        v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        out[n++] = b64url[v >> 18];
        out[n++] = b64url[(v >> 12) & 63];
        out[n++] = b64url[(v >> 6) & 63];
        out[n++] = b64url[v & 63];
    }
    if (key.len - i == 1) {
        v = (uint32_t)s[i] << 16;
        out[n++] = b64url[v >> 18];
        out[n++] = b64url[(v >> 12) & 63];
    } else if (key.len - i == 2) {
        v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        out[n++] = b64url[v >> 18];
        out[n++] = b64url[(v >> 12) & 63];
        out[n++] = b64url[(v >> 6) & 63];
    }
    out[n] = '\0';
    return n;
}

/* The 6-bit value of a base64url character, -1 for anything else. */
static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

int kv_cursor_decode(kv_bytes cursor, char *out, size_t *out_len, kv_err *err)
{
    const unsigned char *p;
    size_t len, n = 0, i;
    uint32_t acc = 0;
    int bits = 0, v;
    kv_err why = {0};

    if (cursor.len <= KV_CURSOR_TAG_LEN ||
        memcmp(cursor.ptr, KV_CURSOR_TAG, KV_CURSOR_TAG_LEN) != 0)
        return kv_err_set(err, KV_ECURSOR, "invalid cursor");
    p = (const unsigned char *)cursor.ptr + KV_CURSOR_TAG_LEN;
    len = cursor.len - KV_CURSOR_TAG_LEN;
    if (len % 4 == 1)
        return kv_err_set(err, KV_ECURSOR, "invalid cursor (length)");
    for (i = 0; i < len; i++) {
        v = b64url_value(p[i]);
        if (v < 0)
            return kv_err_set(err, KV_ECURSOR, "invalid cursor (character)");
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (char)((acc >> bits) & 0xFF);
        }
    }
    /* The 2 or 4 bits left over from the last character must be zero:
     * encode never sets them, so each key has exactly one cursor. */
    if (acc & ((1u << bits) - 1))
        return kv_err_set(err, KV_ECURSOR, "invalid cursor (padding)");
    if (kv_check_key((kv_bytes){out, n}, KV_CURSOR_KEY_MAX, &why) != 0)
        return kv_err_set(err, KV_ECURSOR, "invalid cursor (%s)", why.msg);
    *out_len = n;
    return 0;
}
