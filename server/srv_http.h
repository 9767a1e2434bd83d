/*
 * srv_http.h - kvbusd's HTTP/1.1 server on the libuv loop.
 *
 * One srv_server listens; each accepted socket is a srv_conn that parses
 * requests with http_parser, dispatches them through a route table
 * (srv_request.h) and writes responses in order. Requests on one connection
 * are served one at a time: pipelined requests wait (their bytes are kept)
 * while a handler's answer is pending, so a handler may answer before it
 * returns or later, from a backend callback, by calling srv_respond().
 *
 * Limits (URI bytes, header bytes, body bytes, connections) are enforced
 * while parsing; each refusal is a JSON error with its status (414, 431,
 * 413, 503) and the connection is closed when its stream can no longer be
 * trusted. Timeouts bound how long a client may take to send its headers
 * (408) or body (408) and how long a keep-alive connection may sit idle;
 * when max_connections is reached, the connection that has waited longest
 * for its request is closed to make room. With a TLS context the listener
 * speaks TLS only (srv_tls.h). Why not libwebsockets for HTTP: see
 * docs/architecture.md.
 *
 * Runs on: the event loop thread, entirely.
 */
#ifndef SRV_HTTP_H
#define SRV_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "kvstore/kvstore.h"
#include "server/srv_request.h"
#include "server/srv_tls.h"

struct uv_loop_s;

typedef struct srv_server srv_server;
typedef struct srv_conn srv_conn;

/* The request headers handlers may read; the rest are skipped. */
#define SRV_HDR_MAP(X)                                                         \
    X(IF_MATCH, "if-match")                                                    \
    X(IF_NONE_MATCH, "if-none-match")                                          \
    X(EXPECT, "expect")                                                        \
    X(AUTHORIZATION, "authorization")                                          \
    X(UPGRADE, "upgrade")                                                      \
    X(SEC_WS_KEY, "sec-websocket-key")                                         \
    X(SEC_WS_VERSION, "sec-websocket-version")

enum srv_hdr {
#define SRV__HDR_ENUM(id, name) SRV_HDR_##id,
    SRV_HDR_MAP(SRV__HDR_ENUM)
#undef SRV__HDR_ENUM
        SRV_HDR__COUNT
};

#define SRV_HDR_VALUE_MAX 512 /* bytes kept per wanted header */

typedef struct srv_limits {
    size_t max_uri_bytes;
    size_t max_header_bytes;
    size_t max_body_bytes;
    size_t max_connections;
    uint32_t header_timeout_ms; /* connection open or first request byte to
                                   end of headers (TLS handshake included) */
    uint32_t body_timeout_ms;   /* longest gap between body bytes */
    uint32_t idle_timeout_ms;   /* keep-alive with no request in progress */
} srv_limits;

/* Response counters by status class, for /metrics. */
typedef struct srv_http_stats {
    uint64_t connections_total;
    uint64_t connections_open;
    uint64_t responses[6];      /* index = status / 100; [0] unused */
    uint64_t requests_rejected; /* refused while parsing (limits, syntax) */
    uint64_t timeouts;          /* header or body timeout (408 or closed) */
    uint64_t idle_closed;       /* keep-alive connections idle too long */
    uint64_t evicted;           /* slow connections closed to make room */
    uint64_t tls_handshakes;    /* completed */
    uint64_t tls_handshake_failures; /* bad or plain-text client, timeout */
} srv_http_stats;

/*
 * A server on loop serving routes (borrowed, must outlive it). app is handed
 * to handlers through srv_conn_app(). Returns NULL on allocation failure.
 */
srv_server *srv_server_new(struct uv_loop_s *loop, const srv_limits *limits,
                           const srv_route *routes, size_t nroutes, void *app);

/*
 * Makes the listener speak TLS only, with ctx (borrowed, must outlive s).
 * Call before srv_server_listen().
 */
void srv_server_set_tls(srv_server *s, srv_tls_ctx *ctx);

/* Binds host:port and listens. Returns 0 or a negative libuv error, with a
 * sentence in err. */
int srv_server_listen(srv_server *s, const char *host, unsigned port, char *err,
                      size_t errlen);

/*
 * Stops accepting, closes idle connections at once and busy ones after
 * their current response, and calls done when none is left or grace_ms
 * has passed (then closing the rest).
 */
void srv_server_shutdown(srv_server *s, unsigned grace_ms,
                         void (*done)(void *ud), void *ud);

/*
 * A check run on every routed request before its handler. It returns true
 * to let the handler run, or answers the request itself (401, 403) and
 * returns false. One guard per server; NULL (the default) lets all pass.
 */
typedef bool (*srv_guard)(srv_conn *c, const srv_route *route);

void srv_server_set_guard(srv_server *s, srv_guard guard);

/* Frees the server after the shutdown callback; the memory goes when the
 * loop next runs its close callbacks. Accepts NULL. */
void srv_server_free(srv_server *s);

const srv_http_stats *srv_server_stats(const srv_server *s);

/* ---- for handlers, during a request ---------------------------------- */

void *srv_conn_app(const srv_conn *c);
unsigned srv_req_method(const srv_conn *c);
/* Raw (still percent-encoded) route capture i. */
kv_bytes srv_req_cap(const srv_conn *c, int i);
kv_bytes srv_req_query(const srv_conn *c);
kv_bytes srv_req_body(const srv_conn *c);
/* A wanted header's value, or NULL when the request did not send it. */
const char *srv_req_header(const srv_conn *c, enum srv_hdr h);

/*
 * Answers the current request. extra_headers is NULL or preformatted
 * "Name: value\r\n" lines. For HEAD requests the body is left out but its
 * Content-Length kept. May be called from the handler or later (once).
 */
void srv_respond(srv_conn *c, int status, const char *content_type,
                 const char *extra_headers, const void *body, size_t len);

/* A JSON error {"error": code, "message": ...}. */
void srv_respond_error(srv_conn *c, int status, const char *code,
                       const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The same with extra preformatted "Name: value\r\n" header lines. */
void srv_respond_error_with(srv_conn *c, int status, const char *headers,
                            const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* The JSON error for a kvstore error code and its detail (err may be
 * NULL); adds Retry-After to 503s. */
void srv_respond_kv_error(srv_conn *c, int code, const kv_err *err);

/* ---- protocols that take a connection over (WebSocket) -------------- */

/* Hooks of a protocol that owns a connection after an HTTP upgrade. */
typedef struct srv_proto {
    /* Bytes read from the peer. */
    void (*on_data)(void *ud, const char *data, size_t len);
    /* A queued write finished: srv_conn_queued_bytes() went down. */
    void (*on_writable)(void *ud);
    /* The socket is closed; free the protocol's state. Called once. */
    void (*on_close)(void *ud);
} srv_proto;

/*
 * Hands c over to proto (borrowed, must outlive c). Call from the handler,
 * after srv_respond() with status 101; bytes the client sent after the
 * request go to proto->on_data.
 */
void srv_conn_upgrade(srv_conn *c, const srv_proto *proto, void *ud);

/* Writes bytes on an upgraded connection (now, or queued in order).
 * Returns 0, or -1 when the connection is closing. */
int srv_conn_send(srv_conn *c, const void *data, size_t len);

/* Bytes accepted by srv_conn_send() and not yet taken by the kernel. */
size_t srv_conn_queued_bytes(const srv_conn *c);

/* Closes the connection now, dropping what was not yet written. */
void srv_conn_abort(srv_conn *c);

/* Closes the connection once what was sent has been written. */
void srv_conn_close_after_write(srv_conn *c);

#endif
