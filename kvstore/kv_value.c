/*
 * kv_value.c - the value rules every backend and front end shares: key and
 * store-name validation, UTF-8, canonical 64-bit integers, ETags, and the
 * error table. Pure functions, no state, safe on any thread.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <xxhash.h>

#include "kvstore/kvstore.h"

const char *kv_strerror(int err)
{
    switch (err) {
#define KV__ERR_MSG(name, value, status, code, msg)                            \
    case value:                                                                \
        return msg;
        KV_ERRNO_MAP(KV__ERR_MSG)
#undef KV__ERR_MSG
    }
    return "unknown error";
}

const char *kv_errcode(int err)
{
    switch (err) {
#define KV__ERR_CODE(name, value, status, code, msg)                           \
    case value:                                                                \
        return code;
        KV_ERRNO_MAP(KV__ERR_CODE)
#undef KV__ERR_CODE
    }
    return "internal";
}

int kv_errstatus(int err)
{
    switch (err) {
#define KV__ERR_STATUS(name, value, status, code, msg)                         \
    case value:                                                                \
        return status;
        KV_ERRNO_MAP(KV__ERR_STATUS)
#undef KV__ERR_STATUS
    }
    return 500;
}

int kv_err_set(kv_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *kv_op_name(kv_op op)
{
    static const char *const names[] = {
#define KV__OP_NAME(up, low, mutates) #low,
        KV_OP_MAP(KV__OP_NAME)
#undef KV__OP_NAME
    };
    return (unsigned)op < KV_OP__COUNT ? names[op] : "unknown";
}

/*
 * Decodes one UTF-8 sequence at p (n bytes available) into *cp and returns
 * its length, or 0 when it is malformed, overlong, a surrogate or past
 * U+10FFFF.
 */
static size_t utf8_decode(const unsigned char *p, size_t n, uint32_t *cp)
{
    uint32_t c = p[0];
    size_t len, i;

    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        c &= 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        c &= 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        c &= 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (p[i] & 0x3F);
    }
    if ((len == 3 && c < 0x800) || (len == 4 && c < 0x10000) ||
        (c >= 0xD800 && c <= 0xDFFF) || c > 0x10FFFF)
        return 0;
    *cp = c;
    return len;
}

bool kv_utf8_valid(const char *p, size_t len)
{
    const unsigned char *s = (const unsigned char *)p;
    size_t i = 0, n;
    uint32_t cp;

    while (i < len) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        n = utf8_decode(s + i, len - i, &cp);
        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

int kv_check_key(kv_bytes key, size_t max_bytes, kv_err *err)
{
    const unsigned char *s = (const unsigned char *)key.ptr;
    size_t i = 0, n;
    uint32_t cp;

    if (key.len == 0)
        return kv_err_set(err, KV_EKEY, "key is empty");
    if (key.len > max_bytes)
        return kv_err_set(err, KV_EKEY, "key is %zu bytes, the limit is %zu",
                          key.len, max_bytes);
    while (i < key.len) {
        n = utf8_decode(s + i, key.len - i, &cp);
        if (n == 0)
            return kv_err_set(err, KV_EKEY, "key is not valid UTF-8 (byte %zu)",
                              i);
        if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F))
            return kv_err_set(err, KV_EKEY,
                              "key contains control character U+%04X at "
                              "byte %zu",
                              (unsigned)cp, i);
        i += n;
    }
    return 0;
}

int kv_check_store_name(const char *name, size_t len, kv_err *err)
{
    size_t i;

    if (len == 0 || len > KV_STORE_NAME_MAX)
        return kv_err_set(err, KV_ESTORE,
                          "store name must be 1 to %d characters",
                          KV_STORE_NAME_MAX);
    for (i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
            return kv_err_set(err, KV_ESTORE,
                              "store name may only contain A-Z a-z 0-9 _ . -");
    }
    return 0;
}

int kv_parse_int64(kv_bytes text, int64_t *out)
{
    const char *p = text.ptr, *end = text.ptr + text.len;
    bool neg = false;
    uint64_t v = 0, limit;

    if (text.len == 0 || text.len > KV_INT_TEXT_MAX)
        return KV_ENOTINT;
    if (*p == '-') {
        neg = true;
        p++;
    }
    if (p == end || *p < '0' || *p > '9')
        return KV_ENOTINT;
    if (*p == '0' && (end - p != 1 || neg))
        return KV_ENOTINT; /* leading zero, or "-0" */
    limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; p < end; p++) {
        unsigned d;
        if (*p < '0' || *p > '9')
            return KV_ENOTINT;
        d = (unsigned)(*p - '0');
        if (v > (limit - d) / 10)
            return KV_ENOTINT;
        v = v * 10 + d;
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 0;
}

size_t kv_format_int64(int64_t v, char *buf)
{
    return (size_t)snprintf(buf, KV_INT_TEXT_MAX + 1, "%lld", (long long)v);
}

void kv_etag(kv_bytes value, char out[KV_ETAG_HEX + 1])
{
    static const char hex[] = "0123456789abcdef";
    XXH64_hash_t h = XXH3_64bits(value.ptr, value.len);
    int i;

    for (i = KV_ETAG_HEX - 1; i >= 0; i--) {
        out[i] = hex[h & 0xF];
        h >>= 4;
    }
    out[KV_ETAG_HEX] = '\0';
}
