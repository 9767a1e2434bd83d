/*
 * srv_app.h - what one running kvbusd holds: its loop, configuration,
 * store registry, pub/sub bus, HTTP server and WebSocket hub. One instance per
 * process, passed to every handler through srv_conn_app(); there are no
 * globals, so a process could run one per thread later (the fuzz harnesses
 * open and close one per input).
 */
#ifndef SRV_APP_H
#define SRV_APP_H

#include <stdint.h>

#include "kvstore/kvstore.h"
#include "pubsub/pubsub.h"
#include "server/srv_auth.h"
#include "server/srv_config.h"
#include "server/srv_http.h"
#include "server/srv_ws.h"

struct uv_loop_s;

typedef struct srv_app {
    struct uv_loop_s *loop;
    const srv_config *cfg;
    kv_registry *reg;
    srv_server *http;
    ps_bus *bus;
    srv_ws_hub *ws;
    srv_auth *auth;            /* owned; NULL = no tokens_file, auth off */
    srv_auth_stats auth_stats; /* 401s and 403s, HTTP and WebSocket */
    uint64_t started_ms;       /* wall clock, for uptime */
} srv_app;

/*
 * Builds app on loop from cfg (borrowed; must outlive app), as kvbusd runs
 * it: the store registry with every configured store, the pub/sub bus on
 * the configured provider, the HTTP server on srv_routes (not listening yet:
 * call srv_server_listen() on app->http) and the WebSocket hub, with change
 * notifications wired, and the token guard on the server and the hub
 * (passing everything until the caller sets app->auth). Returns 0, or -1
 * after logging why. Whatever the result, srv_app_close() frees what was
 * made (srv_app.c).
 */
int srv_app_open(srv_app *app, struct uv_loop_s *loop, const srv_config *cfg);

/* The same with another NULL-terminated table of store backends (borrowed,
 * must outlive app) instead of kvbusd's; the fuzz harnesses use it. */
int srv_app_open_with(srv_app *app, struct uv_loop_s *loop,
                      const srv_config *cfg,
                      const struct kv_backend_ops *const *store_backends);

/*
 * Frees what srv_app_open() made, in the order their callbacks need (the
 * WebSocket hub and stores, the server, then the bus once no subscriber is
 * left), running the loop for their close callbacks, and app->auth. Open
 * connections are aborted; drain them first (srv_server_shutdown) for a
 * graceful stop. Leaves app zeroed.
 */
void srv_app_close(srv_app *app);

/* The route table of kvbusd (srv_routes.c). */
extern const srv_route srv_routes[];
extern const size_t srv_nroutes;

/*
 * The server's guard (srv_http.h, in srv_guard.c): when tokens are configured,
 * checks the request's bearer token against its route's need and answers 401 or
 * 403 itself. Passes everything when app->auth is NULL.
 */
bool srv_route_guard(srv_conn *c, const srv_route *route);

/* Renders the Prometheus text exposition of app into a malloc'd string
 * (*len bytes); the caller frees it. NULL when memory runs out. */
char *srv_metrics_render(const srv_app *app, size_t *len);

#endif
