/*
 * srv_request.c - target splitting, percent-decoding, query parameters and
 * route matching. Pure functions over borrowed bytes; see srv_request.h.
 */
#include <http_parser.h>
#include <string.h>

#include "server/srv_request.h"

unsigned srv_method_bit(unsigned m)
{
    switch (m) {
    case HTTP_GET:
        return SRV_GET;
    case HTTP_HEAD:
        return SRV_HEAD;
    case HTTP_PUT:
        return SRV_PUT;
    case HTTP_POST:
        return SRV_POST;
    case HTTP_DELETE:
        return SRV_DELETE;
    default:
        return SRV_OTHER;
    }
}

bool srv_split_target(kv_bytes target, kv_bytes *path, kv_bytes *query)
{
    const char *q;

    if (target.len == 0 || target.ptr[0] != '/')
        return false;
    q = memchr(target.ptr, '?', target.len);
    path->ptr = target.ptr;
    path->len = q ? (size_t)(q - target.ptr) : target.len;
    query->ptr = q ? q + 1 : target.ptr + target.len;
    query->len = q ? target.len - path->len - 1 : 0;
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

long srv_pct_decode(kv_bytes in, bool plus_is_space, char *out)
{
    size_t i, n = 0;

    for (i = 0; i < in.len; i++) {
        char c = in.ptr[i];
        if (c == '%') {
            int hi, lo;
            if (in.len - i < 3)
                return -1;
            hi = hexval(in.ptr[i + 1]);
            lo = hexval(in.ptr[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            out[n++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[n++] = (plus_is_space && c == '+') ? ' ' : c;
        }
    }
    return (long)n;
}

long srv_query_param(kv_bytes query, const char *name, char *out, size_t cap)
{
    size_t name_len = strlen(name);
    const char *p = query.ptr, *end = query.ptr + query.len;

    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        const char *kend = eq ? eq : stop;

        if ((size_t)(kend - p) == name_len && memcmp(p, name, name_len) == 0) {
            kv_bytes v = {eq ? eq + 1 : stop, eq ? (size_t)(stop - eq - 1) : 0};
            if (v.len > cap)
                return -2;
            long n = srv_pct_decode(v, true, out);
            return n < 0 ? -2 : n;
        }
        p = stop + 1;
    }
    return -1;
}

bool srv_parse_int(const char *s, size_t len, int64_t min, int64_t max,
                   int64_t *out)
{
    int64_t v;

    if (kv_parse_int64((kv_bytes){s, len}, &v) != 0 || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/*
 * Matches path against one pattern, filling caps. Literal segments compare
 * exactly; "{x}" takes one non-empty segment; "{x*}" the non-empty rest.
 */
static bool pattern_match(const char *pat, kv_bytes path,
                          kv_bytes caps[SRV_ROUTE_CAPS])
{
    const char *p = path.ptr, *end = path.ptr + path.len;
    int ncap = 0;

    while (*pat) {
        if (pat[0] == '{') {
            const char *close = strchr(pat, '}');
            bool rest = close[-1] == '*';
            const char *seg_end = p;

            if (!rest)
                while (seg_end < end && *seg_end != '/')
                    seg_end++;
            else
                seg_end = end;
            if (seg_end == p || ncap == SRV_ROUTE_CAPS)
                return false;
            caps[ncap++] = (kv_bytes){p, (size_t)(seg_end - p)};
            p = seg_end;
            pat = close + 1;
        } else {
            if (p == end || *p != *pat)
                return false;
            p++;
            pat++;
        }
    }
    return p == end;
}

srv_match srv_route_find(const srv_route *routes, size_t nroutes,
                         unsigned method, kv_bytes path, const srv_route **out,
                         kv_bytes caps[SRV_ROUTE_CAPS])
{
    bool path_seen = false;
    size_t i;

    for (i = 0; i < nroutes; i++) {
        if (!pattern_match(routes[i].pattern, path, caps))
            continue;
        if (routes[i].methods & method) {
            *out = &routes[i];
            return SRV_MATCH_OK;
        }
        path_seen = true;
    }
    return path_seen ? SRV_MATCH_BAD_METHOD : SRV_MATCH_NO_ROUTE;
}

unsigned srv_route_allowed(const srv_route *routes, size_t nroutes,
                           kv_bytes path)
{
    kv_bytes caps[SRV_ROUTE_CAPS];
    unsigned methods = 0;
    size_t i;

    for (i = 0; i < nroutes; i++)
        if (pattern_match(routes[i].pattern, path, caps))
            methods |= routes[i].methods;
    return methods;
}
