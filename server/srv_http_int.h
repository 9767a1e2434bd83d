/*
 * srv_http_int.h - what the files of kvbusd's HTTP server share: the
 * server and connection structs, the growable byte buffer and the few
 * functions one file calls in another. Not for handlers: they see only
 * srv_http.h.
 *
 * The server is split by idea:
 *   srv_http.c      parsing (http_parser callbacks, limits) and dispatch
 *   srv_response.c  byte buffers and writing responses into them
 *   srv_conn.c      connection I/O: accept, read, write, flush, finish,
 *                   linger, close, TLS glue, upgraded connections
 *   srv_phase.c     phases, deadlines, timeouts and eviction
 *   srv_server.c    the listener, housekeeping timer, shutdown and free
 *
 * Runs on: the event loop thread, entirely.
 */
#ifndef SRV_HTTP_INT_H
#define SRV_HTTP_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <http_parser.h>
#include <uv.h>

#include "server/srv_http.h"

#define SRV_READ_BUF_BYTES 65536
#define SRV_HDR_NAME_MAX 32 /* longer names are none we want */

typedef struct srv_buf {
    char *data;
    size_t len, cap;
} srv_buf;

/* Connections in one phase group, oldest first (links in srv_conn). */
typedef struct srv_fifo {
    srv_conn *head, *tail;
} srv_fifo;

/* What a connection is doing, for its deadline (see srv_phase.c). */
enum srv_phase {
    SRV_PH_NONE,    /* upgraded, or closing: no deadline of ours */
    SRV_PH_HEADERS, /* waiting for the request line and headers */
    SRV_PH_BODY,    /* waiting for body bytes */
    SRV_PH_BUSY,    /* a handler has the request */
    SRV_PH_IDLE,    /* keep-alive, between requests */
    SRV_PH_CLOSING, /* last answer being written */
};

struct srv_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    bool listening;
    srv_limits limits;
    const srv_route *routes;
    size_t nroutes;
    void *app;
    srv_conn *conns;   /* doubly linked list of open connections */
    srv_fifo slow;     /* connections in the headers or body phase */
    srv_fifo finished; /* connections in the closing phase */
    srv_tls_ctx *tls;  /* borrowed; NULL = plain HTTP */
    srv_guard guard;   /* NULL: every routed request reaches its handler */
    srv_http_stats stats;
    bool draining;
    bool housekeeping; /* housekeeping_timer initialised */
    srv_conn *dirty;   /* connections with output to flush this turn */
    uv_idle_t flush_idle;
    uv_timer_t housekeeping_timer;
    unsigned pending_closes; /* handles closing in srv_server_free */
    uv_timer_t grace_timer;
    void (*drained)(void *ud);
    void *drained_ud;
};

struct srv_conn {
    uv_tcp_t tcp; /* first: handle pointers cast back to conn */
    srv_server *srv;
    srv_conn *prev, *next;
    http_parser parser;
    bool closing;           /* uv_close called */
    bool closed;            /* close callback ran */
    bool close_after_write; /* the stream cannot carry another request */
    bool waiting;           /* a handler answer is pending */
    bool responded;         /* the current request has been answered */
    bool reading;
    unsigned writes_in_flight;
    bool dirty; /* in the server's to-flush list */
    srv_conn *dirty_next;
    bool lingering;           /* write side shut, input discarded */
    uint64_t linger_deadline; /* loop ms; closed then at the latest */
    uv_shutdown_t shutdown_req;
    const srv_proto *proto; /* set once upgraded; HTTP parsing stops */
    void *proto_ud;
    srv_tls *tls;    /* NULL on a plain connection */
    srv_buf wire;    /* TLS: ciphertext taken from OpenSSL, being written */
    bool tls_failed; /* handshake failure already counted */
    enum srv_phase phase;
    uint64_t deadline;               /* loop ms; 0 = none */
    bool got_bytes;                  /* the current request has begun */
    bool read_any;                   /* the client has sent something */
    size_t watched_queue;            /* write_queue_size at the last check */
    uint64_t fifo_since;             /* loop ms it entered its FIFO */
    srv_conn *fifo_prev, *fifo_next; /* in srv->slow or srv->finished */

    /* the request being parsed */
    srv_buf target;
    srv_buf body;
    size_t header_bytes;
    char field[SRV_HDR_NAME_MAX + 1];
    size_t field_len;
    int cur_hdr; /* index of the wanted header, -1 = none */
    bool in_value;
    char hdr[SRV_HDR__COUNT][SRV_HDR_VALUE_MAX + 1];
    size_t hdr_len[SRV_HDR__COUNT];
    bool hdr_seen[SRV_HDR__COUNT];
    int reject_status; /* set by a callback that refuses the request */
    const char *reject_code;
    const char *reject_msg;

    /* the request being handled */
    unsigned method;
    kv_bytes path, query;
    kv_bytes caps[SRV_ROUTE_CAPS];

    srv_buf pending; /* read but not yet parsed (while waiting) */
    srv_buf out;     /* answered but not yet written */
    char rbuf[SRV_READ_BUF_BYTES];
};

typedef struct srv_write {
    uv_write_t req;
    srv_conn *conn;
    char *data;
} srv_write;

/* ---- srv_response.c ------------------------------------------------- */

/* Makes room for len more bytes; returns false when memory runs out. */
bool srv__buf_reserve(srv_buf *b, size_t len);
/* Appends len bytes; returns false when memory runs out. */
bool srv__buf_append(srv_buf *b, const void *data, size_t len);
/* Frees the bytes and empties b. */
void srv__buf_free(srv_buf *b);

/* ---- srv_http.c ----------------------------------------------------- */

/* Parses len bytes of c's request stream (see its comment). */
void srv__conn_feed(srv_conn *c, const char *data, size_t len);

/* ---- srv_conn.c ----------------------------------------------------- */

/* libuv read callbacks of a connection's socket. */
void srv__conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
void srv__conn_on_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf);
/* The listener's callback: accepts one connection. */
void srv__on_connection(uv_stream_t *listener, int status);
/* Closes c's socket now; c is freed once nothing refers to it. */
void srv__conn_close(srv_conn *c);
/* Writes what has been answered; finishes c after its last answer. */
void srv__conn_flush(srv_conn *c);
/* Frees c if it is closed and nothing refers to it any more. */
void srv__conn_freeable(srv_conn *c);
/* Counts and logs a failed TLS handshake once per connection. */
void srv__tls_handshake_failed(srv_conn *c, const char *why);

/* ---- srv_phase.c ---------------------------------------------------- */

/* Moves c to phase ph with its deadline from now (see its comment). */
void srv__conn_set_phase(srv_conn *c, enum srv_phase ph);
/* Closes one connection to make room; false when none may go. */
bool srv__evict_one(srv_server *s);
/* The housekeeping timer's callback: applies the deadlines. */
void srv__on_housekeeping(uv_timer_t *t);

#endif
