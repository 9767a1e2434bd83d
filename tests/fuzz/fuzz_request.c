/*
 * fuzz_request.c - libFuzzer harness of the pure request functions:
 * srv_request.c (target splitting, route matching against kvbusd's real
 * route table, percent-decoding, query parameters, integer parameters) and
 * the checks a decoded request goes through before a backend sees it
 * (kv_check_store_name, kv_check_key, kv_utf8_valid, kv_parse_int64,
 * ps_check_topic, ps_check_pattern, ps_pattern_match).
 *
 * Besides memory errors and undefined behaviour, each call is checked
 * against what its contract says, and the validators against independent
 * reference versions written here from SPEC 5 and 7 and RFC 3629, so a
 * disagreement is a crash: routes match only what their pattern allows,
 * decoding never grows its input and inverts percent-encoding, a parsed
 * integer prints back as the same text, and so on.
 *
 * Input: byte 0 picks the method and the capacity given to
 * srv_query_param; the rest is the request target.
 *
 * Runs on: the fuzzer's thread.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pubsub/pubsub.h"
#include "server/srv_app.h"
#include "server/srv_request.h"

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "fuzz_request: %s:%d: check failed: %s\n",         \
                    __FILE__, __LINE__, #cond);                                \
            abort();                                                           \
        }                                                                      \
    } while (0)

#define KEY_LIMIT_BYTES 1024 /* kvbusd's default max_key_bytes */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ------------------------------------------------------------------ */
/* Reference versions                                                   */

/* RFC 3629 section 4: the well-formed byte sequences, range by range. */
static bool ref_utf8(const uint8_t *s, size_t n)
{
    static const struct {
        uint8_t lead_lo, lead_hi, next_lo, next_hi, len;
    } rows[] = {
        {0xC2, 0xDF, 0x80, 0xBF, 2}, {0xE0, 0xE0, 0xA0, 0xBF, 3},
        {0xE1, 0xEC, 0x80, 0xBF, 3}, {0xED, 0xED, 0x80, 0x9F, 3},
        {0xEE, 0xEF, 0x80, 0xBF, 3}, {0xF0, 0xF0, 0x90, 0xBF, 4},
        {0xF1, 0xF3, 0x80, 0xBF, 4}, {0xF4, 0xF4, 0x80, 0x8F, 4},
    };
    size_t i = 0, r, k;

    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        for (r = 0; r < sizeof rows / sizeof rows[0]; r++)
            if (s[i] >= rows[r].lead_lo && s[i] <= rows[r].lead_hi)
                break;
        if (r == sizeof rows / sizeof rows[0] || n - i < rows[r].len)
            return false;
        if (s[i + 1] < rows[r].next_lo || s[i + 1] > rows[r].next_hi)
            return false;
        for (k = 2; k < rows[r].len; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF)
                return false;
        i += rows[r].len;
    }
    return true;
}

/* SPEC 5: valid UTF-8, 1..max bytes, no C0 or C1 control, no DEL. */
static bool ref_key(const uint8_t *s, size_t n, size_t max)
{
    size_t i;

    if (n == 0 || n > max || !ref_utf8(s, n))
        return false;
    for (i = 0; i < n; i++) {
        if (s[i] < 0x20 || s[i] == 0x7F)
            return false;
        if (s[i] == 0xC2 && i + 1 < n && s[i + 1] <= 0x9F)
            return false; /* U+0080..U+009F */
    }
    return true;
}

/* SPEC 5: 1..64 characters of [A-Za-z0-9_.-]. */
static bool ref_store_name(const uint8_t *s, size_t n)
{
    static const char ok[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuv"
                             "wxyz0123456789_.-";
    size_t i;

    if (n == 0 || n > KV_STORE_NAME_MAX)
        return false;
    for (i = 0; i < n; i++)
        if (s[i] == '\0' || !strchr(ok, s[i]))
            return false;
    return true;
}

/* SPEC 7: 1..255 bytes of printable ASCII, no space, no '*'. */
static bool ref_topic(const uint8_t *s, size_t n)
{
    size_t i;

    if (n == 0 || n > PS_TOPIC_MAX)
        return false;
    for (i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] >= 0x7F || s[i] == '*')
            return false;
    return true;
}

/* SPEC 7: a topic, or a topic prefix (maybe empty) and a final '*'. */
static bool ref_pattern(const uint8_t *s, size_t n)
{
    if (n > 0 && n <= PS_TOPIC_MAX && s[n - 1] == '*')
        return n == 1 || ref_topic(s, n - 1);
    return ref_topic(s, n);
}

/* SPEC 5 (incr): -?(0|[1-9][0-9]*) within a signed 64-bit integer. */
static bool ref_int64(const uint8_t *s, size_t n, int64_t *out)
{
    char buf[32], *end;
    long long v;
    size_t i = 0;

    if (n == 0 || n >= sizeof buf)
        return false;
    if (s[0] == '-')
        i = 1;
    if (i == n || (s[i] == '0' && n - i > 1) || (i == 1 && s[1] == '0'))
        return false;
    for (; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    errno = 0;
    v = strtoll(buf, &end, 10);
    if (errno == ERANGE)
        return false;
    *out = v;
    return true;
}

/* Percent-encodes every byte that is not unreserved (RFC 3986). */
static size_t pct_encode(const char *in, size_t n, char *out)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i, o = 0;

    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
            c == '~') {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    return o;
}

/* ------------------------------------------------------------------ */
/* Checks                                                               */

/* Decodes one capture into a buffer of exactly its size (so ASan sees
 * any overrun) and checks the round trip through pct_encode. */
static void check_decode(kv_bytes in, bool plus_is_space)
{
    char *out = malloc(in.len ? in.len : 1), *enc, *again;
    long n = srv_pct_decode(in, plus_is_space, out), m;
    size_t elen;

    CHECK(n >= -1 && n <= (long)in.len);
    if (n < 0) {
        free(out);
        return;
    }
    enc = malloc((size_t)n * 3 + 1);
    again = malloc((size_t)n * 3 + 1);
    elen = pct_encode(out, (size_t)n, enc);
    m = srv_pct_decode((kv_bytes){enc, elen}, plus_is_space, again);
    CHECK(m == n && memcmp(again, out, (size_t)n) == 0);
    free(again);
    free(enc);
    free(out);
}

/* A decoded store name or key against the validators and references. */
static void check_names(kv_bytes raw, bool is_key)
{
    char *out = malloc(raw.len ? raw.len : 1);
    long n = srv_pct_decode(raw, false, out);
    const uint8_t *u = (const uint8_t *)out;
    kv_err err = {0};

    if (n >= 0) {
        CHECK(kv_utf8_valid(out, (size_t)n) == ref_utf8(u, (size_t)n));
        if (is_key)
            CHECK((kv_check_key((kv_bytes){out, (size_t)n}, KEY_LIMIT_BYTES,
                                &err) == 0) ==
                  ref_key(u, (size_t)n, KEY_LIMIT_BYTES));
        else
            CHECK((kv_check_store_name(out, (size_t)n, &err) == 0) ==
                  ref_store_name(u, (size_t)n));
        CHECK((ps_check_topic(out, (size_t)n, &err) == 0) ==
              ref_topic(u, (size_t)n));
        CHECK((ps_check_pattern(out, (size_t)n, &err) == 0) ==
              ref_pattern(u, (size_t)n));
    }
    free(out);
}

/* Integer parsing: kv_parse_int64 against the reference, and back. */
static void check_int(const char *s, size_t n)
{
    int64_t got = 0, want = 0, ranged = 0;
    bool ok = kv_parse_int64((kv_bytes){s, n}, &got) == 0;
    char text[KV_INT_TEXT_MAX + 1];

    CHECK(ok == ref_int64((const uint8_t *)s, n, &want));
    if (!ok)
        return;
    CHECK(got == want);
    CHECK(kv_format_int64(got, text) == n && memcmp(text, s, n) == 0);
    CHECK(srv_parse_int(s, n, 0, 1000, &ranged) == (got >= 0 && got <= 1000));
}

static void check_query(kv_bytes query, size_t cap)
{
    static const char *const names[] = {"ttl",   "op",     "delta", "prefix",
                                        "limit", "cursor", ""};
    char *out = malloc(cap ? cap : 1);
    size_t i;
    long n;

    for (i = 0; i < sizeof names / sizeof names[0]; i++) {
        n = srv_query_param(query, names[i], out, cap);
        CHECK(n >= -2 && n <= (long)cap);
        if (n >= 0)
            check_int(out, (size_t)n);
    }
    free(out);
}

/* Topic patterns: ps_pattern_match against its definition. */
static void check_match(const char *p, size_t n)
{
    size_t split = n / 2;
    const char *pat = p, *topic = p + split;
    size_t plen = split, tlen = n - split;
    bool want;

    if (plen > 0 && pat[plen - 1] == '*')
        want = tlen >= plen - 1 && memcmp(pat, topic, plen - 1) == 0;
    else
        want = plen == tlen && memcmp(pat, topic, plen) == 0;
    CHECK(ps_pattern_match(pat, plen, topic, tlen) == want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const unsigned methods[] = {SRV_GET,  SRV_HEAD,   SRV_PUT,
                                       SRV_POST, SRV_DELETE, SRV_OTHER};
    const srv_route *route = NULL;
    kv_bytes target, path, query, caps[SRV_ROUTE_CAPS];
    unsigned method, allowed;
    char *copy;
    int i;

    if (size < 1)
        return 0;
    method = methods[data[0] % (sizeof methods / sizeof methods[0])];
    /* a copy of exactly the target's size, so ASan sees any overread */
    copy = malloc(size - 1 ? size - 1 : 1);
    memcpy(copy, data + 1, size - 1);
    target = (kv_bytes){copy, size - 1};

    check_int(target.ptr, target.len);
    check_match(target.ptr, target.len);
    check_decode(target, false);
    check_decode(target, true);
    if (!srv_split_target(target, &path, &query)) {
        CHECK(target.len == 0 || target.ptr[0] != '/');
        free(copy);
        return 0;
    }
    CHECK(path.ptr == target.ptr && path.len >= 1 && path.ptr[0] == '/');
    CHECK(!memchr(path.ptr, '?', path.len));
    CHECK(path.len == target.len || (query.ptr == path.ptr + path.len + 1 &&
                                     path.len + 1 + query.len == target.len));
    check_query(query, (size_t)(data[0] >> 3) * 4);

    memset(caps, 0, sizeof caps);
    allowed = srv_route_allowed(srv_routes, srv_nroutes, path);
    switch (
        srv_route_find(srv_routes, srv_nroutes, method, path, &route, caps)) {
    case SRV_MATCH_OK:
        CHECK(route && (route->methods & method) && (allowed & method));
        for (i = 0; i < SRV_ROUTE_CAPS && caps[i].ptr; i++) {
            CHECK(caps[i].len > 0 && caps[i].ptr >= path.ptr &&
                  caps[i].ptr + caps[i].len <= path.ptr + path.len);
            check_decode(caps[i], false);
        }
        if (strncmp(route->pattern, "/v1/kv/{store}", 14) == 0) {
            CHECK(!memchr(caps[0].ptr, '/', caps[0].len));
            check_names(caps[0], false);
            if (caps[1].ptr)
                check_names(caps[1], true);
        } else if (strcmp(route->pattern, "/v1/pub/{topic}") == 0) {
            check_names(caps[0], false);
        }
        break;
    case SRV_MATCH_BAD_METHOD:
        CHECK(allowed != 0 && !(allowed & method));
        break;
    case SRV_MATCH_NO_ROUTE:
        CHECK(allowed == 0);
        break;
    }
    free(copy);
    return 0;
}
