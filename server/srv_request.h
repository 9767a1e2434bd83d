/*
 * srv_request.h - the pure parts of request handling: splitting a request
 * target into path and query, percent-decoding, query parameters, and
 * matching a path against the route table. No sockets, no state: the
 * connection code (srv_http.c) and the unit tests both call these.
 *
 * Paths are matched raw, before decoding, so an encoded "/" (%2F) inside a
 * key never changes which route or store a request goes to; each captured
 * segment is decoded afterwards by its handler.
 */
#ifndef SRV_REQUEST_H
#define SRV_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvstore/kvstore.h"

enum srv_method {
    SRV_GET = 1 << 0,
    SRV_HEAD = 1 << 1,
    SRV_PUT = 1 << 2,
    SRV_POST = 1 << 3,
    SRV_DELETE = 1 << 4,
    SRV_OTHER = 1 << 5,
};

#define SRV_ROUTE_CAPS 2 /* most captures a pattern may have */

struct srv_conn;

/*
 * What a route asks of the caller when API tokens are configured (checked
 * once, before the handler, by the server's guard; docs/security.md). The
 * zero value is the strictest, so a route added without one is for
 * operators only.
 */
enum srv_route_need {
    SRV_NEED_ADMIN = 0, /* a token with the admin permission */
    SRV_NEED_OPEN,      /* nothing: /healthz and the dashboard's files */
    SRV_NEED_TOKEN,     /* any valid token */
    SRV_NEED_KV,        /* kv:read or kv:write on store capture 0 */
    SRV_NEED_PUB,       /* topic:pub on topic capture 0 */
    SRV_NEED_WS,        /* a valid token if one is sent, else the auth frame */
};

/*
 * A route: a pattern of literal segments, "{name}" (one non-empty segment)
 * and a final "{name*}" (the non-empty rest, "/" included), the methods it
 * accepts, its handler, and what it needs when tokens are on. Tables of
 * these are data, matched in one place.
 */
typedef struct srv_route {
    const char *pattern;
    unsigned methods;                    /* SRV_GET | SRV_HEAD ... */
    void (*handler)(struct srv_conn *c); /* NULL in unit tests */
    enum srv_route_need need;            /* default: SRV_NEED_ADMIN */
} srv_route;

typedef enum srv_match {
    SRV_MATCH_OK,
    SRV_MATCH_NO_ROUTE,   /* 404 */
    SRV_MATCH_BAD_METHOD, /* 405: the path matched, the method did not */
} srv_match;

/*
 * Finds the first route whose pattern matches path and that accepts
 * method. caps receives the raw (still encoded) captures in pattern order.
 */
srv_match srv_route_find(const srv_route *routes, size_t nroutes,
                         unsigned method, kv_bytes path, const srv_route **out,
                         kv_bytes caps[SRV_ROUTE_CAPS]);

/* The methods of every route whose pattern matches path (for Allow). */
unsigned srv_route_allowed(const srv_route *routes, size_t nroutes,
                           kv_bytes path);

/* The srv_method bit for an http_parser method number. */
unsigned srv_method_bit(unsigned http_parser_method);

/* Splits an origin-form target ("/a/b?x=1") at the first '?'. Returns false
 * when the target does not start with '/'. */
bool srv_split_target(kv_bytes target, kv_bytes *path, kv_bytes *query);

/*
 * Percent-decodes in into out (at least in.len bytes). '+' becomes a space
 * only when plus_is_space (query strings); in paths it stays '+'. Returns
 * the decoded length, or -1 on a bad escape ("%zz", a truncated "%4").
 */
long srv_pct_decode(kv_bytes in, bool plus_is_space, char *out);

/*
 * Finds parameter name in query and decodes its value into out (cap bytes).
 * Returns the decoded length, -1 when absent, -2 when the value is badly
 * encoded or longer than cap.
 */
long srv_query_param(kv_bytes query, const char *name, char *out, size_t cap);

/* Parses a whole decimal integer in [min, max] from a query value. */
bool srv_parse_int(const char *s, size_t len, int64_t min, int64_t max,
                   int64_t *out);

#endif
