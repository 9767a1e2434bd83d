/*
 * srv_ws.h - the WebSocket feed at /v1/ws (SPEC 7): JSON text frames to
 * subscribe, unsubscribe, publish and ping, and message/reset/dropped frames
 * back, with a bounded drop-oldest outbound queue per connection.
 *
 * Runs on: the event loop thread.
 */
#ifndef SRV_WS_H
#define SRV_WS_H

#include <stddef.h>
#include <stdint.h>

#include "pubsub/pubsub.h"
#include "server/srv_auth.h"
#include "server/srv_http.h"

struct uv_loop_s;

typedef struct srv_ws_hub srv_ws_hub;

typedef struct srv_ws_limits {
    size_t queue_bytes;       /* outbound frames kept per connection */
    uint32_t stall_ms;        /* still dropping after this long: close 1008 */
    size_t max_frame_bytes;   /* largest client frame read */
    size_t max_patterns;      /* subscriptions per connection */
    size_t max_payload_bytes; /* largest message published over a socket */
} srv_ws_limits;

/* Counters for /metrics. */
typedef struct srv_ws_stats {
    uint64_t connections_open;
    uint64_t connections_total;
    uint64_t frames_in;
    uint64_t frames_out;
    uint64_t dropped;     /* messages dropped for slow consumers */
    uint64_t closed_slow; /* connections closed with 1008 */
} srv_ws_stats;

/* The WebSocket side of one server, on bus. NULL when memory runs out. */
srv_ws_hub *srv_ws_hub_new(struct uv_loop_s *loop, ps_bus *bus,
                           const srv_ws_limits *limits);

/* Closes every WebSocket connection (1001 going away) and frees the hub
 * once they are gone; the loop must run afterwards. Accepts NULL. */
void srv_ws_hub_free(srv_ws_hub *hub);

/* Sends every connection a 1001 close (going away); their sockets close
 * once it is written. */
void srv_ws_hub_shutdown(srv_ws_hub *hub);

/* The route handler for GET /v1/ws: checks the upgrade request, answers 101
 * and takes the connection over, or answers a JSON error. */
void srv_ws_accept(srv_ws_hub *hub, srv_conn *c);

const srv_ws_stats *srv_ws_hub_stats(const srv_ws_hub *hub);

/*
 * Turns on API tokens for the hub's connections: *auth (borrowed; the
 * pointer is read at every check, so a reload that swaps it is seen at
 * once) is the table, stats counts refusals. A connection is then
 * authenticated by a valid Authorization header at the upgrade or by a
 * first {"op":"auth","token":"..."} frame; until then every other frame
 * gets an `unauthorized` error, and the connection is closed with 1008
 * after SRV_WS_AUTH_MAX_FAILURES of them or SRV_WS_AUTH_TIMEOUT_MS.
 * subscribe needs topic:sub covering each pattern, publish topic:pub.
 */
void srv_ws_hub_set_auth(srv_ws_hub *hub, srv_auth *const *auth,
                         srv_auth_stats *stats);

#define SRV_WS_AUTH_TIMEOUT_MS 10000 /* from the upgrade to the auth frame */
#define SRV_WS_AUTH_MAX_FAILURES 3   /* refused frames before closing */

/* After *auth changed: closes (1008) the connections whose token is gone. */
void srv_ws_hub_auth_changed(srv_ws_hub *hub);

#endif
