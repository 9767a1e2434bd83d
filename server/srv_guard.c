/*
 * srv_guard.c - the HTTP side of API tokens: the server's guard, run once
 * per routed request before its handler (srv_http.h, srv_server_set_guard).
 *
 * Each route of the table declares what it needs (srv_request.h, enum
 * srv_route_need); the guard turns that, the method and the decoded store
 * or topic name into one srv_auth action, checks the request's bearer
 * token (srv_auth.h) and answers 401 or 403 itself, counting the refusal
 * for /metrics and logging it with the token's name, never its value.
 * When no tokens file is configured it lets everything through.
 *
 * Left out: the WebSocket frames (srv_ws.c checks those).
 * Runs on: the event loop thread.
 */
#include <string.h>

#include "server/srv_app.h"
#include "server/srv_log.h"

static const char auth_missing_header[] =
    "WWW-Authenticate: Bearer realm=\"kvbus\"\r\n";
static const char auth_invalid_header[] =
    "WWW-Authenticate: Bearer realm=\"kvbus\", error=\"invalid_token\"\r\n";

/* kv:read for GET, HEAD and op=mget; kv:write for every change. */
static enum srv_auth_action kv_action(srv_conn *c)
{
    char op[8];
    long n;

    if (srv_req_method(c) & (SRV_GET | SRV_HEAD))
        return SRV_AUTH_KV_READ;
    if (srv_req_method(c) == SRV_POST) {
        n = srv_query_param(srv_req_query(c), "op", op, sizeof op);
        if (n == 4 && memcmp(op, "mget", 4) == 0)
            return SRV_AUTH_KV_READ;
    }
    return SRV_AUTH_KV_WRITE;
}

/* Answers a refused request (401 or 403), counts and logs it. */
static void auth_refuse(srv_conn *c, enum srv_auth_result r,
                        enum srv_auth_action act, const srv_token *who,
                        const char *name, size_t len)
{
    srv_app *app = srv_conn_app(c);
    char shown[SRV_AUTH_SHOWN_MAX + 1];

    app->auth_stats.failures[r]++;
    switch (r) {
    case SRV_AUTH_MISSING:
        srv_debug("auth: request without a token refused");
        srv_respond_error_with(c, 401, auth_missing_header, "unauthorized",
                               "this route needs an API token: send "
                               "Authorization: Bearer <token>");
        break;
    case SRV_AUTH_INVALID:
        srv_info("auth: request with an invalid token refused");
        srv_respond_error_with(c, 401, auth_invalid_header, "unauthorized",
                               "the API token is not valid");
        break;
    default:
        if (len) {
            srv_auth_shown(name, len, shown);
            srv_info("auth: token %s denied %s on %s", srv_token_name(who),
                     srv_auth_action_name(act), shown);
            srv_respond_error(
                c, 403, "forbidden", "token %s has no %s permission on \"%s\"",
                srv_token_name(who), srv_auth_action_name(act), shown);
        } else {
            srv_info("auth: token %s denied %s", srv_token_name(who),
                     srv_auth_action_name(act));
            srv_respond_error(c, 403, "forbidden",
                              "token %s has no %s permission",
                              srv_token_name(who), srv_auth_action_name(act));
        }
        break;
    }
}

bool srv_route_guard(srv_conn *c, const srv_route *route)
{
    srv_app *app = srv_conn_app(c);
    const char *header = srv_req_header(c, SRV_HDR_AUTHORIZATION);
    enum srv_auth_action act = SRV_AUTH_ANY;
    enum srv_auth_result r;
    char name[PS_TOPIC_MAX * 3 + 1] = "";
    const srv_token *who;
    kv_bytes raw;
    long n = 0;

    if (!app->auth || route->need == SRV_NEED_OPEN)
        return true;
    switch (route->need) {
    case SRV_NEED_ADMIN:
        act = SRV_AUTH_ADMIN;
        break;
    case SRV_NEED_WS:
        if (!header)
            return true; /* the first frame must then be {"op":"auth"} */
        break;
    case SRV_NEED_KV:
    case SRV_NEED_PUB:
        act = route->need == SRV_NEED_KV ? kv_action(c) : SRV_AUTH_TOPIC_PUB;
        raw = srv_req_cap(c, 0);
        n = raw.len < sizeof name ? srv_pct_decode(raw, false, name) : -1;
        if (n < 0) {
            /* a name no store or topic can have: once the token is
             * known to be valid, the handler answers 400 */
            act = SRV_AUTH_ANY;
            n = 0;
        }
        break;
    default:
        break;
    }
    r = srv_auth_check(app->auth, header, act, name, (size_t)n, &who);
    if (r == SRV_AUTH_OK)
        return true;
    auth_refuse(c, r, act, who, name, (size_t)n);
    return false;
}
