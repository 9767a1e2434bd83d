/*
 * srv_http.c - connections, request parsing and response writing for
 * kvbusd's HTTP/1.1 server. See srv_http.h for the contract.
 *
 * A connection reads into a fixed buffer and feeds http_parser. The parser
 * callbacks gather the target, the few headers handlers use, and the body,
 * enforcing the limits as bytes arrive. On message-complete the route table
 * picks a handler. While a handler's answer is pending the parser is paused
 * and reading stops; the unparsed bytes wait in `pending` and are parsed
 * when the answer has been written into the output buffer. Output is
 * batched: everything answered while handling one read is written with one
 * uv_try_write, the remainder queued with uv_write.
 *
 * A connection is freed only when its socket is closed and no handler
 * answer is pending, so a late backend callback never touches freed memory.
 *
 * Each connection is in one phase with its own deadline, checked by the
 * housekeeping timer: waiting for headers (header_timeout_ms from the
 * connection or the request's first byte), for body bytes
 * (body_timeout_ms between them), busy in a handler (no deadline), idle
 * between keep-alive requests (idle_timeout_ms), or finishing (its last
 * answer must leave within header_timeout_ms). Connections waiting for
 * headers or body, and those closing, are also in FIFOs, oldest first: when
 * max_connections is reached, a new connection closes the oldest closing
 * one, else the one waiting longest for its request (see evict_one()),
 * instead of being refused, so slow or stalled clients cannot lock
 * well-behaved ones out.
 *
 * With TLS, ciphertext read from the socket goes through srv_tls_read() and
 * the plaintext takes the same path as a plain connection's bytes; output
 * is encrypted in conn_flush() as one batch and the ciphertext written with
 * one write, as plain output is.
 *
 * Runs on: the event loop thread.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <http_parser.h>
#include <jansson.h>
#include <uv.h>

#include "server/srv_http.h"
#include "server/srv_log.h"

#define SRV_READ_BUF_BYTES 65536
#define SRV_SEND_BATCH_BYTES 16384 /* upgraded output written at once */
#define SRV_HDR_NAME_MAX 32        /* longer names are none we want */
#define SRV_LISTEN_BACKLOG 511
#define SRV_RETRY_AFTER_S 1
#define SRV_LINGER_MS 1000       /* reading what follows a last answer */
#define SRV_HOUSEKEEPING_MS 250  /* linger and phase deadline checks */
#define SRV_TLS_REASON_BYTES 160 /* OpenSSL reason for a debug line */
#define SRV_EVICT_MIN_AGE_MS 100 /* a silent connection younger is kept */
#define SRV_EVICT_SCAN_MAX 64    /* slow connections looked at per eviction */

typedef struct srv_buf {
    char *data;
    size_t len, cap;
} srv_buf;

/* Connections in one phase group, oldest first (links in srv_conn). */
typedef struct srv_fifo {
    srv_conn *head, *tail;
} srv_fifo;

/* What a connection is doing, for its deadline (see the file comment). */
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

static const char *const wanted_headers[SRV_HDR__COUNT] = {
#define SRV__HDR_NAME(id, name) name,
    SRV_HDR_MAP(SRV__HDR_NAME)
#undef SRV__HDR_NAME
};

static void conn_close(srv_conn *c);
static void conn_feed(srv_conn *c, const char *data, size_t len);
static void conn_flush(srv_conn *c);
static int conn_write(srv_conn *c);
static void on_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_conn_freeable(srv_conn *c);
static void on_housekeeping(uv_timer_t *t);
static void on_flush_idle(uv_idle_t *h);
static void conn_set_phase(srv_conn *c, enum srv_phase ph);

/* ------------------------------------------------------------------ */
/* Buffers                                                              */

/* Makes room for len more bytes; returns false when memory runs out. */
static bool buf_reserve(srv_buf *b, size_t len)
{
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *grown;
        while (cap < b->len + len)
            cap *= 2;
        grown = realloc(b->data, cap);
        if (!grown)
            return false;
        b->data = grown;
        b->cap = cap;
    }
    return true;
}

/* Appends len bytes; returns false when memory runs out. */
static bool buf_append(srv_buf *b, const void *data, size_t len)
{
    if (!buf_reserve(b, len))
        return false;
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    return true;
}

static bool buf_printf(srv_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static bool buf_printf(srv_buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < sizeof tmp && buf_append(b, tmp, (size_t)n);
}

static void buf_free(srv_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ------------------------------------------------------------------ */
/* Responses                                                            */

static const char *status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 426:
        return "Upgrade Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 408:
        return "Request Timeout";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Status";
    }
}

void srv_respond(srv_conn *c, int status, const char *content_type,
                 const char *extra_headers, const void *body, size_t len)
{
    srv_buf *o = &c->out;
    bool ok;

    if (c->responded)
        return;
    c->responded = true;
    c->srv->stats.responses[status / 100 % 6]++;
    if (c->closing) { /* the client left; nothing to write to */
        c->waiting = false;
        on_conn_freeable(c);
        return;
    }
    if (c->srv->draining)
        c->close_after_write = true;
    conn_set_phase(c, c->close_after_write ? SRV_PH_CLOSING : SRV_PH_IDLE);
    ok = buf_printf(o, "HTTP/1.1 %d %s\r\n", status, status_text(status));
    if (content_type)
        ok = ok && buf_printf(o, "Content-Type: %s\r\n", content_type);
    if (status != 204 && status >= 200)
        ok = ok && buf_printf(o, "Content-Length: %zu\r\n", len);
    if (extra_headers)
        ok = ok && buf_append(o, extra_headers, strlen(extra_headers));
    if (c->close_after_write)
        ok = ok && buf_append(o, "Connection: close\r\n", 19);
    ok = ok && buf_append(o, "\r\n", 2);
    if (status != 204 && c->method != SRV_HEAD)
        ok = ok && buf_append(o, body, len);
    if (!ok) {
        srv_warn("http: out of memory writing a response; closing");
        c->close_after_write = true;
    }
    if (c->waiting) {
        /* Answered later, from a callback: write now and go on parsing. */
        c->waiting = false;
        conn_flush(c);
        if (!c->closing && !c->close_after_write && c->pending.len) {
            srv_buf rest = c->pending;
            c->pending = (srv_buf){0};
            conn_feed(c, rest.data, rest.len);
            buf_free(&rest);
        }
        if (!c->closing && !c->waiting && !c->reading &&
            !c->close_after_write) {
            c->reading =
                uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0;
            if (!c->reading)
                conn_close(c);
        }
        conn_flush(c);
    }
}

/* The JSON error body and its headers (Retry-After on 503). */
static void respond_error_va(srv_conn *c, int status, const char *headers,
                             const char *code, const char *fmt, va_list ap)
{
    char msg[KV_ERR_MSG_BYTES];
    json_t *j;
    char *body;

    vsnprintf(msg, sizeof msg, fmt, ap);
    j = json_pack("{s:s, s:s}", "error", code, "message", msg);
    body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (!headers && status == 503)
        headers = "Retry-After: 1\r\n";
    if (body) {
        srv_respond(c, status, "application/json", headers, body, strlen(body));
    } else {
        static const char fallback[] =
            "{\"error\":\"internal\",\"message\":\"out of memory\"}";
        srv_respond(c, 503, "application/json", "Retry-After: 1\r\n", fallback,
                    sizeof fallback - 1);
    }
    free(body);
    json_decref(j);
}

void srv_respond_error(srv_conn *c, int status, const char *code,
                       const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    respond_error_va(c, status, NULL, code, fmt, ap);
    va_end(ap);
}

void srv_respond_error_with(srv_conn *c, int status, const char *headers,
                            const char *code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    respond_error_va(c, status, headers, code, fmt, ap);
    va_end(ap);
}

void srv_respond_kv_error(srv_conn *c, int code, const kv_err *err)
{
    const char *msg = err && err->code ? err->msg : kv_strerror(code);

    srv_respond_error(c, kv_errstatus(code), kv_errcode(code), "%s", msg);
}

/* ------------------------------------------------------------------ */
/* Accessors for handlers                                               */

void *srv_conn_app(const srv_conn *c)
{
    return c->srv->app;
}
unsigned srv_req_method(const srv_conn *c)
{
    return c->method;
}
kv_bytes srv_req_query(const srv_conn *c)
{
    return c->query;
}

kv_bytes srv_req_cap(const srv_conn *c, int i)
{
    return (i >= 0 && i < SRV_ROUTE_CAPS) ? c->caps[i] : (kv_bytes){"", 0};
}

kv_bytes srv_req_body(const srv_conn *c)
{
    return (kv_bytes){c->body.data ? c->body.data : "", c->body.len};
}

const char *srv_req_header(const srv_conn *c, enum srv_hdr h)
{
    return c->hdr_seen[h] ? c->hdr[h] : NULL;
}

const srv_http_stats *srv_server_stats(const srv_server *s)
{
    return &s->stats;
}

/* ------------------------------------------------------------------ */
/* Parsing                                                              */

/* Refuses the request being parsed: answered once the parser stops. */
static int reject(srv_conn *c, int status, const char *code, const char *msg)
{
    if (!c->reject_status) {
        c->reject_status = status;
        c->reject_code = code;
        c->reject_msg = msg;
    }
    return -1; /* stops http_parser_execute */
}

static void request_reset(srv_conn *c)
{
    c->target.len = 0;
    c->body.len = 0;
    c->header_bytes = 0;
    c->field_len = 0;
    c->cur_hdr = -1;
    c->in_value = false;
    memset(c->hdr_len, 0, sizeof c->hdr_len);
    memset(c->hdr_seen, 0, sizeof c->hdr_seen);
    c->responded = false;
    c->method = 0;
    c->reject_status = 0;
}

static int on_message_begin(http_parser *p)
{
    srv_conn *c = p->data;

    request_reset(c);
    if (c->phase != SRV_PH_HEADERS)
        conn_set_phase(c, SRV_PH_HEADERS);
    c->got_bytes = true;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    srv_conn *c = p->data;

    if (c->target.len + len > c->srv->limits.max_uri_bytes)
        return reject(c, 414, "uri_too_long",
                      "the request target is longer than max_uri_bytes");
    if (!buf_append(&c->target, at, len))
        return reject(c, 503, "no_memory", "out of memory");
    return 0;
}

static int count_header_bytes(srv_conn *c, size_t len)
{
    c->header_bytes += len;
    if (c->header_bytes > c->srv->limits.max_header_bytes)
        return reject(c, 431, "headers_too_large",
                      "request headers are larger than max_header_bytes");
    return 0;
}

/* Resolves the field name gathered so far to a wanted header or none. */
static void header_name_done(srv_conn *c)
{
    size_t i;

    c->cur_hdr = -1;
    c->field[c->field_len] = '\0';
    for (i = 0; i < SRV_HDR__COUNT; i++)
        if (strcasecmp(c->field, wanted_headers[i]) == 0)
            c->cur_hdr = (int)i;
    if (c->cur_hdr >= 0) {
        /* a repeated header: keep the last, as most servers do */
        c->hdr_len[c->cur_hdr] = 0;
        c->hdr_seen[c->cur_hdr] = true;
        c->hdr[c->cur_hdr][0] = '\0';
    }
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    srv_conn *c = p->data;

    if (count_header_bytes(c, len))
        return -1;
    if (c->in_value) {
        c->in_value = false;
        c->field_len = 0;
    }
    if (c->field_len + len <= SRV_HDR_NAME_MAX) {
        memcpy(c->field + c->field_len, at, len);
        c->field_len += len;
    } else {
        c->field_len = SRV_HDR_NAME_MAX + 1; /* too long to be wanted */
    }
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    srv_conn *c = p->data;
    size_t *n;

    if (count_header_bytes(c, len))
        return -1;
    if (!c->in_value) {
        c->in_value = true;
        if (c->field_len <= SRV_HDR_NAME_MAX)
            header_name_done(c);
        else
            c->cur_hdr = -1;
    }
    if (c->cur_hdr < 0)
        return 0;
    n = &c->hdr_len[c->cur_hdr];
    if (*n + len > SRV_HDR_VALUE_MAX)
        return reject(c, 431, "header_too_large",
                      "a request header value is too long");
    memcpy(c->hdr[c->cur_hdr] + *n, at, len);
    *n += len;
    c->hdr[c->cur_hdr][*n] = '\0';
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    srv_conn *c = p->data;
    const char *expect = srv_req_header(c, SRV_HDR_EXPECT);
    uint64_t limit = c->srv->limits.max_body_bytes;

    if ((p->flags & F_CONTENTLENGTH) && p->content_length > limit)
        return reject(c, 413, "too_large",
                      "the request body is larger than max_value_bytes");
    if (expect && strcasecmp(expect, "100-continue") == 0)
        buf_append(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    conn_set_phase(c, SRV_PH_BODY);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    srv_conn *c = p->data;

    if (c->body.len + len > c->srv->limits.max_body_bytes)
        return reject(c, 413, "too_large",
                      "the request body is larger than max_value_bytes");
    if (!buf_append(&c->body, at, len))
        return reject(c, 503, "no_memory", "out of memory");
    c->deadline = uv_now(c->srv->loop) + c->srv->limits.body_timeout_ms;
    return 0;
}

/* 405 with the Allow header RFC 9110 asks for. */
static void respond_not_allowed(srv_conn *c)
{
    static const struct {
        unsigned bit;
        const char *name;
    } methods[] = {{SRV_GET, "GET"},
                   {SRV_HEAD, "HEAD"},
                   {SRV_PUT, "PUT"},
                   {SRV_POST, "POST"},
                   {SRV_DELETE, "DELETE"}};
    unsigned allowed =
        srv_route_allowed(c->srv->routes, c->srv->nroutes, c->path);
    char headers[96] = "Allow: ";
    size_t i, n = strlen(headers);

    for (i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (allowed & methods[i].bit)
            n += (size_t)snprintf(headers + n, sizeof headers - n, "%s%s",
                                  n > 7 ? ", " : "", methods[i].name);
    snprintf(headers + n, sizeof headers - n, "\r\n");
    srv_respond_error_with(c, 405, headers, "method_not_allowed",
                           "this method is not allowed on this path");
}

/* A complete request: route it and run its handler. */
static int on_message_complete(http_parser *p)
{
    srv_conn *c = p->data;
    srv_server *s = c->srv;
    const srv_route *route = NULL;
    kv_bytes target = {c->target.data, c->target.len};

    c->method = srv_method_bit(p->method);
    if (!http_should_keep_alive(p))
        c->close_after_write = true;
    conn_set_phase(c, SRV_PH_BUSY);
    memset(c->caps, 0, sizeof c->caps);
    if (!srv_split_target(target, &c->path, &c->query)) {
        srv_respond_error(c, 400, "bad_request",
                          "the request target must start with '/'");
    } else {
        switch (srv_route_find(s->routes, s->nroutes, c->method, c->path,
                               &route, c->caps)) {
        case SRV_MATCH_OK:
            if (!s->guard || s->guard(c, route))
                route->handler(c);
            break;
        case SRV_MATCH_BAD_METHOD:
            respond_not_allowed(c);
            break;
        case SRV_MATCH_NO_ROUTE:
            srv_respond_error(c, 404, "not_found", "no such route");
            break;
        }
    }
    if (!c->responded)
        c->waiting = true;
    /* Stop after a pending answer, and after the last request of the
     * connection: what follows a "close" is never handled (RFC 9112 9.6). */
    if (c->waiting || c->close_after_write)
        http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/*
 * Parses len bytes. Stops early when a handler's answer is pending (the
 * rest waits in c->pending) or the request is refused (answered, then the
 * connection closes, since what follows in the stream cannot be trusted).
 */
static void conn_feed(srv_conn *c, const char *data, size_t len)
{
    size_t used = http_parser_execute(&c->parser, &parser_settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);

    if (e == HPE_PAUSED) {
        /* the pending bytes are fed when the answer comes, unless the
         * connection ends with it; reading goes on for the linger */
        if (!c->close_after_write && used < len &&
            !buf_append(&c->pending, data + used, len - used))
            c->close_after_write = true;
        http_parser_pause(&c->parser, 0);
        if (c->waiting && c->reading) {
            uv_read_stop((uv_stream_t *)&c->tcp);
            c->reading = false;
        }
        return;
    }
    if (e == HPE_OK && c->parser.upgrade) {
        /* The handler took the connection over, or refused the upgrade. */
        if (c->proto && used < len)
            c->proto->on_data(c->proto_ud, data + used, len - used);
        else if (!c->proto)
            c->close_after_write = true;
        return;
    }
    if (e == HPE_OK)
        return;
    c->srv->stats.requests_rejected++;
    c->close_after_write = true;
    c->responded = false;
    conn_set_phase(c, SRV_PH_CLOSING);
    if (c->reject_status)
        srv_respond_error(c, c->reject_status, c->reject_code, "%s",
                          c->reject_msg);
    else if (e == HPE_HEADER_OVERFLOW)
        srv_respond_error(c, 431, "headers_too_large",
                          "request headers are too large");
    else
        srv_respond_error(c, 400, "bad_request", "malformed HTTP request: %s",
                          http_errno_description(e));
}

/* ------------------------------------------------------------------ */
/* Phases and deadlines                                                 */

/* The FIFO of the server holding connections in phase ph, or NULL. */
static srv_fifo *phase_fifo(srv_server *s, enum srv_phase ph)
{
    switch (ph) {
    case SRV_PH_HEADERS:
    case SRV_PH_BODY:
        return &s->slow;
    case SRV_PH_CLOSING:
        return &s->finished;
    case SRV_PH_NONE:
    case SRV_PH_BUSY:
    case SRV_PH_IDLE:
        break;
    }
    return NULL;
}

static void fifo_remove(srv_fifo *q, srv_conn *c)
{
    if (c->fifo_prev)
        c->fifo_prev->fifo_next = c->fifo_next;
    else
        q->head = c->fifo_next;
    if (c->fifo_next)
        c->fifo_next->fifo_prev = c->fifo_prev;
    else
        q->tail = c->fifo_prev;
    c->fifo_prev = c->fifo_next = NULL;
}

static void fifo_push(srv_fifo *q, srv_conn *c)
{
    c->fifo_prev = q->tail;
    c->fifo_next = NULL;
    if (q->tail)
        q->tail->fifo_next = c;
    else
        q->head = c;
    q->tail = c;
}

/*
 * Moves c to phase ph and sets its deadline from now. Changing phase
 * group moves c from one eviction FIFO (srv->slow: headers and body;
 * srv->finished: closing) to the tail of the other, or out of both.
 */
static void conn_set_phase(srv_conn *c, enum srv_phase ph)
{
    srv_server *s = c->srv;
    const srv_limits *l = &s->limits;
    uint64_t now = uv_now(s->loop);
    srv_fifo *from = phase_fifo(s, c->phase), *to = phase_fifo(s, ph);

    if (from != to) {
        if (from)
            fifo_remove(from, c);
        if (to) {
            fifo_push(to, c);
            c->fifo_since = now;
        }
    }
    c->phase = ph;
    switch (ph) {
    case SRV_PH_HEADERS:
    case SRV_PH_CLOSING:
        c->deadline = now + l->header_timeout_ms;
        break;
    case SRV_PH_BODY:
        c->deadline = now + l->body_timeout_ms;
        break;
    case SRV_PH_IDLE:
        c->deadline = now + l->idle_timeout_ms;
        c->got_bytes = false;
        break;
    case SRV_PH_NONE:
    case SRV_PH_BUSY:
        c->deadline = 0;
        break;
    }
}

/* ------------------------------------------------------------------ */
/* Connections                                                          */

static void on_conn_freeable(srv_conn *c)
{
    srv_server *s = c->srv;

    if (!c->closed || c->waiting || c->writes_in_flight || c->dirty)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->stats.connections_open--;
    srv_tls_free(c->tls);
    buf_free(&c->wire);
    buf_free(&c->target);
    buf_free(&c->body);
    buf_free(&c->pending);
    buf_free(&c->out);
    free(c);
    if (s->draining && !s->conns && s->drained) {
        void (*drained)(void *) = s->drained;
        s->drained = NULL;
        uv_timer_stop(&s->grace_timer);
        drained(s->drained_ud);
    }
}

static void on_close(uv_handle_t *h)
{
    srv_conn *c = (srv_conn *)h;

    c->closed = true;
    if (c->proto) {
        const srv_proto *proto = c->proto;
        c->proto = NULL;
        proto->on_close(c->proto_ud);
    }
    on_conn_freeable(c); /* waits for a pending answer, if any */
}

static void conn_close(srv_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    c->reading = false;
    conn_set_phase(c, SRV_PH_NONE);
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    srv_conn *c = req->data;

    if (status < 0)
        conn_close(c);
}

/*
 * Ends a connection whose last answer has been written. Connections
 * half-close and discard what the client still sends for up to
 * SRV_LINGER_MS, so an answer given before the request was fully read
 * (413, 431, a WebSocket close 1009 in the middle of a huge frame) is not
 * destroyed by a reset; the peer's EOF closes at once.
 */
static void conn_finish(srv_conn *c)
{
    if (c->closing || c->lingering)
        return;
    if (c->tls && srv_tls_established(c->tls)) {
        srv_tls_close_notify(c->tls);
        if (conn_write(c) != 0)
            return;
    }
    c->lingering = true;
    c->linger_deadline = uv_now(c->srv->loop) + SRV_LINGER_MS;
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown)) {
        conn_close(c);
        return;
    }
    if (!c->reading) {
        c->reading =
            uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0;
        if (!c->reading)
            conn_close(c);
    }
}

static void on_write(uv_write_t *req, int status)
{
    srv_write *w = (srv_write *)req;
    srv_conn *c = w->conn;

    free(w->data);
    free(w);
    c->writes_in_flight--;
    if (status == 0 && (c->phase == SRV_PH_IDLE || c->phase == SRV_PH_CLOSING))
        conn_set_phase(c, c->phase); /* its deadline runs from now */
    if (status < 0 && status != UV_ECANCELED)
        conn_close(c);
    else if (!c->writes_in_flight && c->close_after_write && !c->waiting)
        conn_finish(c);
    else if (c->proto && !c->closing)
        c->proto->on_writable(c->proto_ud);
    on_conn_freeable(c);
}

/*
 * Writes c's outgoing bytes (c->wire on a TLS connection, c->out on a plain
 * one): now if the socket takes them, the rest queued with uv_write. Returns
 * 0, or -1 when the connection has been closed.
 */
static int conn_write(srv_conn *c)
{
    srv_buf *o = c->tls ? &c->wire : &c->out;
    uv_buf_t b;
    srv_write *w;
    int n;

    if (c->tls) { /* everything OpenSSL has for the peer, in one buffer */
        size_t more = srv_tls_out_len(c->tls);
        if (more && !buf_reserve(o, more)) {
            conn_close(c);
            return -1;
        }
        o->len += srv_tls_take_out(c->tls, o->data + o->len, more);
    }
    if (!o->len)
        return 0;
    b = uv_buf_init(o->data, (unsigned)o->len);
    n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n < 0 && n != UV_EAGAIN && n != UV_ENOSYS) {
        conn_close(c);
        return -1;
    }
    if (n < 0)
        n = 0;
    if ((size_t)n == o->len) {
        o->len = 0;
        return 0;
    }
    w = malloc(sizeof *w);
    if (!w) {
        conn_close(c);
        return -1;
    }
    w->conn = c;
    if (n > 0)
        memmove(o->data, o->data + n, o->len - (size_t)n);
    w->data = o->data;
    b = uv_buf_init(w->data, (unsigned)(o->len - (size_t)n));
    *o = (srv_buf){0};
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write)) {
        free(w->data);
        free(w);
        conn_close(c);
        return -1;
    }
    c->writes_in_flight++;
    return 0;
}

/* Writes what has been answered (encrypted first on a TLS connection), and
 * finishes the connection when that was its last answer. */
static void conn_flush(srv_conn *c)
{
    if (c->closing || c->lingering)
        return;
    if (c->tls && c->out.len) {
        if (srv_tls_write(c->tls, c->out.data, c->out.len) != 0) {
            conn_close(c);
            return;
        }
        c->out.len = 0;
    }
    if (conn_write(c) != 0)
        return;
    if (c->close_after_write && !c->waiting && !c->writes_in_flight)
        conn_finish(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    srv_conn *c = (srv_conn *)h;

    (void)suggested;
    *buf = uv_buf_init(c->rbuf, sizeof c->rbuf);
}

/*
 * Plaintext from srv_tls_read(): the same path as a plain connection's
 * bytes. While a handler's answer is pending the bytes wait in c->pending,
 * as conn_feed() would keep them. Returns false once c is closing.
 */
static bool on_tls_plain(void *ud, const char *p, size_t n)
{
    srv_conn *c = ud;

    if (c->closing)
        return false;
    if (c->close_after_write || c->lingering)
        return true; /* discarded, as on_read does */
    if (c->proto)
        c->proto->on_data(c->proto_ud, p, n);
    else if (c->waiting) {
        if (!buf_append(&c->pending, p, n))
            c->close_after_write = true;
    } else
        conn_feed(c, p, n);
    return !c->closing;
}

/* Counts and logs a failed handshake once per connection. */
static void tls_handshake_failed(srv_conn *c, const char *why)
{
    if (c->tls_failed || srv_tls_established(c->tls))
        return;
    c->tls_failed = true;
    c->srv->stats.tls_handshake_failures++;
    srv_debug("tls: handshake failed: %s", why);
}

/* n bytes of ciphertext read into c->rbuf. */
static void conn_tls_read(srv_conn *c, size_t n)
{
    char why[SRV_TLS_REASON_BYTES] = "";
    bool was_up = srv_tls_established(c->tls);
    int rc = srv_tls_read(c->tls, c->rbuf, n, on_tls_plain, c, why, sizeof why);

    if (!was_up && srv_tls_established(c->tls))
        c->srv->stats.tls_handshakes++;
    switch (rc) {
    case SRV_TLS_OK:
        conn_flush(c);
        break;
    case SRV_TLS_CLOSED: /* close_notify: like end of file */
        conn_close(c);
        break;
    case SRV_TLS_FAILED:
    case SRV_TLS_NOMEM:
        tls_handshake_failed(c, rc == SRV_TLS_NOMEM ? "out of memory" : why);
        if (!c->closing)
            conn_write(c); /* OpenSSL's alert, if the socket takes it */
        conn_close(c);
        break;
    case SRV_TLS_STOPPED:
        break;
    }
}

static void on_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf)
{
    srv_conn *c = (srv_conn *)stream;

    (void)buf;
    if (n < 0) {
        /* EOF or error: answers still pending have nowhere to go */
        if (c->tls)
            tls_handshake_failed(c, "the client closed during the handshake");
        conn_close(c);
        return;
    }
    if (n == 0 || c->close_after_write || c->lingering)
        return; /* nothing more will be answered on this connection */
    c->read_any = true;
    if (c->tls) {
        conn_tls_read(c, (size_t)n);
        return;
    }
    if (c->proto) {
        c->proto->on_data(c->proto_ud, c->rbuf, (size_t)n);
        return;
    }
    conn_feed(c, c->rbuf, (size_t)n);
    conn_flush(c);
}

/*
 * Makes room for one connection by closing another: the oldest of those
 * already answered and closing (lingering), else the one that has waited
 * longest for its request's headers or body among the first
 * SRV_EVICT_SCAN_MAX of them, skipping connections that have sent nothing
 * yet and are younger than SRV_EVICT_MIN_AGE_MS (accepted in the same
 * burst, their first bytes may simply not have been read yet). Returns
 * false when there is none to close.
 */
static bool evict_one(srv_server *s)
{
    srv_conn *victim = s->finished.head;
    uint64_t now = uv_now(s->loop);
    int scanned = 0;

    if (!victim) {
        for (victim = s->slow.head; victim && scanned < SRV_EVICT_SCAN_MAX;
             victim = victim->fifo_next, scanned++)
            if (victim->read_any ||
                now - victim->fifo_since >= SRV_EVICT_MIN_AGE_MS)
                break;
        if (!victim || scanned == SRV_EVICT_SCAN_MAX)
            return false;
        srv_debug("http: max_connections reached; closing the connection "
                  "that has waited longest for its request");
    }
    s->stats.evicted++;
    if (victim->tls)
        tls_handshake_failed(victim, "closed to make room");
    conn_close(victim);
    return true;
}

static void on_connection(uv_stream_t *listener, int status)
{
    srv_server *s = listener->data;
    srv_conn *c;

    if (status < 0) {
        srv_warn("http: accept failed: %s", uv_strerror(status));
        return;
    }
    c = calloc(1, sizeof *c);
    if (!c || uv_tcp_init(s->loop, &c->tcp) != 0) {
        free(c);
        srv_warn("http: out of memory accepting a connection");
        return;
    }
    c->srv = s;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->stats.connections_open++;
    s->stats.connections_total++;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    if (s->stats.connections_open > s->limits.max_connections &&
        !evict_one(s)) {
        if (s->tls) { /* no session to say it in */
            conn_close(c);
            return;
        }
        c->method = SRV_GET;
        c->close_after_write = true;
        srv_respond_error(c, 503, "too_many_connections",
                          "the server has max_connections open connections");
        conn_flush(c);
        return;
    }
    if (s->tls && !(c->tls = srv_tls_new(s->tls))) {
        srv_warn("tls: out of memory accepting a connection");
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    conn_set_phase(c, SRV_PH_HEADERS);
    c->reading = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0;
    if (!c->reading)
        conn_close(c);
}

/* ------------------------------------------------------------------ */
/* Upgraded connections                                                 */

void srv_conn_upgrade(srv_conn *c, const srv_proto *proto, void *ud)
{
    c->proto = proto;
    c->proto_ud = ud;
    conn_set_phase(c, SRV_PH_NONE);
}

/*
 * Writes every connection that srv_conn_send() touched since the last turn:
 * one write per connection per loop turn however many frames a fan-out
 * put in its buffer. Upgraded connections whose bytes all left at once are
 * told they may send more. Runs as an idle handle, so the loop does not
 * block in poll while output waits.
 */
static void on_flush_idle(uv_idle_t *h)
{
    srv_server *s = h->data;
    srv_conn *c, *next;

    c = s->dirty;
    s->dirty = NULL;
    for (; c; c = next) {
        next = c->dirty_next;
        c->dirty = false;
        c->dirty_next = NULL;
        conn_flush(c);
        if (c->proto && !c->closing && c->tcp.write_queue_size == 0)
            c->proto->on_writable(c->proto_ud);
        on_conn_freeable(c);
    }
    if (!s->dirty)
        uv_idle_stop(&s->flush_idle);
}

int srv_conn_send(srv_conn *c, const void *data, size_t len)
{
    srv_server *s = c->srv;

    if (c->closing || c->close_after_write)
        return -1;
    if (!buf_append(&c->out, data, len)) {
        conn_close(c);
        return -1;
    }
    if (c->out.len >= SRV_SEND_BATCH_BYTES) {
        conn_flush(c); /* enough for one write: do not wait for the turn */
        return 0;
    }
    if (!c->dirty) {
        c->dirty = true;
        c->dirty_next = s->dirty;
        s->dirty = c;
        uv_idle_start(&s->flush_idle, on_flush_idle);
    }
    return 0;
}

size_t srv_conn_queued_bytes(const srv_conn *c)
{
    return c->tcp.write_queue_size + c->out.len;
}

void srv_conn_abort(srv_conn *c)
{
    conn_close(c);
}

void srv_conn_close_after_write(srv_conn *c)
{
    c->close_after_write = true;
    conn_flush(c);
}

/* ------------------------------------------------------------------ */
/* The server                                                           */

srv_server *srv_server_new(uv_loop_t *loop, const srv_limits *limits,
                           const srv_route *routes, size_t nroutes, void *app)
{
    srv_server *s = calloc(1, sizeof *s);

    if (!s)
        return NULL;
    s->loop = loop;
    s->limits = *limits;
    s->routes = routes;
    s->nroutes = nroutes;
    s->app = app;
    uv_idle_init(loop, &s->flush_idle);
    s->flush_idle.data = s;
    return s;
}

void srv_server_set_guard(srv_server *s, srv_guard guard)
{
    s->guard = guard;
}

void srv_server_set_tls(srv_server *s, srv_tls_ctx *ctx)
{
    s->tls = ctx;
}

int srv_server_listen(srv_server *s, const char *host, unsigned port, char *err,
                      size_t errlen)
{
    struct sockaddr_storage addr;
    int rc;

    rc = uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&addr);
    if (rc != 0)
        rc = uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&addr);
    if (rc != 0) {
        snprintf(err, errlen, "listen address %s is not an IP address", host);
        return rc;
    }
    uv_tcp_init(s->loop, &s->listener);
    s->listener.data = s;
    s->listening = true;
    rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, SRV_LISTEN_BACKLOG,
                       on_connection);
    if (rc == 0 && !s->housekeeping) {
        uv_timer_init(s->loop, &s->housekeeping_timer);
        s->housekeeping_timer.data = s;
        uv_timer_start(&s->housekeeping_timer, on_housekeeping,
                       SRV_HOUSEKEEPING_MS, SRV_HOUSEKEEPING_MS);
        uv_unref((uv_handle_t *)&s->housekeeping_timer);
        s->housekeeping = true;
    }
    if (rc != 0)
        snprintf(err, errlen, "cannot listen on %s:%u: %s", host, port,
                 uv_strerror(rc));
    return rc;
}

/*
 * A request whose headers or body did not arrive in time: 408 and close
 * when the client has sent part of one, a quiet close otherwise (nothing
 * was asked; on TLS, no session may exist to answer in).
 */
static void conn_timed_out(srv_conn *c)
{
    bool headers = c->phase == SRV_PH_HEADERS;

    c->srv->stats.timeouts++;
    if (c->tls && !srv_tls_established(c->tls))
        tls_handshake_failed(c, "header_timeout_ms passed");
    if (!c->got_bytes) {
        srv_debug("http: no request within header_timeout_ms; closing");
        conn_close(c);
        return;
    }
    srv_debug("http: request %s too slow; 408", headers ? "headers" : "body");
    c->close_after_write = true;
    c->responded = false;
    if (headers)
        srv_respond_error(c, 408, "request_timeout",
                          "the request headers were not complete within "
                          "header_timeout_ms");
    else
        srv_respond_error(c, 408, "request_timeout",
                          "no request body bytes arrived for "
                          "body_timeout_ms");
    conn_flush(c);
}

/*
 * True when an answer of an idle or closing connection is still being
 * written and the client has taken some of it since the last check: a
 * slow reader of a large answer is not idle, a stalled one is.
 */
static bool write_progressed(srv_conn *c)
{
    size_t queued = c->tcp.write_queue_size;

    if (!c->writes_in_flight ||
        (c->phase != SRV_PH_IDLE && c->phase != SRV_PH_CLOSING))
        return false;
    if (queued == c->watched_queue)
        return false;
    c->watched_queue = queued;
    return true;
}

/* Applies the deadlines: lingering, phase (see the file comment). */
static void on_housekeeping(uv_timer_t *t)
{
    srv_server *s = t->data;
    uint64_t now = uv_now(s->loop);
    srv_conn *c, *next;

    for (c = s->conns; c; c = next) {
        next = c->next;
        if (c->closing)
            continue;
        if (c->lingering) {
            if (now >= c->linger_deadline)
                conn_close(c);
            continue;
        }
        if (write_progressed(c)) {
            conn_set_phase(c, c->phase); /* a new deadline from now */
            continue;
        }
        if (!c->deadline || now < c->deadline)
            continue;
        switch (c->phase) {
        case SRV_PH_HEADERS:
        case SRV_PH_BODY:
            conn_timed_out(c);
            break;
        case SRV_PH_IDLE:
            /* quietly, but after what the kernel still holds for it */
            s->stats.idle_closed++;
            c->close_after_write = true;
            conn_set_phase(c, SRV_PH_CLOSING);
            conn_flush(c);
            break;
        case SRV_PH_CLOSING:
            conn_close(c);
            break;
        case SRV_PH_NONE:
        case SRV_PH_BUSY:
            break;
        }
    }
}

static void on_grace_timeout(uv_timer_t *t)
{
    srv_server *s = t->data;
    srv_conn *c;

    srv_warn("http: shutdown grace period over; closing busy connections");
    for (c = s->conns; c; c = c->next)
        conn_close(c);
}

void srv_server_shutdown(srv_server *s, unsigned grace_ms,
                         void (*done)(void *ud), void *ud)
{
    srv_conn *c, *next;

    s->draining = true;
    s->drained = done;
    s->drained_ud = ud;
    if (s->listening) {
        uv_close((uv_handle_t *)&s->listener, NULL);
        s->listening = false;
    }
    uv_timer_init(s->loop, &s->grace_timer);
    s->grace_timer.data = s;
    for (c = s->conns; c; c = next) {
        next = c->next;
        if (c->waiting || c->writes_in_flight)
            c->close_after_write = true;
        else if (c->tls && srv_tls_established(c->tls) && !c->closing) {
            /* idle TLS: close_notify first, then close */
            c->close_after_write = true;
            conn_flush(c);
        } else
            conn_close(c);
    }
    if (!s->conns) {
        s->drained = NULL;
        done(ud);
        return;
    }
    uv_timer_start(&s->grace_timer, on_grace_timeout, grace_ms, 0);
}

static void on_server_handle_closed(uv_handle_t *h)
{
    srv_server *s = h->data;

    if (--s->pending_closes == 0)
        free(s);
}

void srv_server_free(srv_server *s)
{
    if (!s)
        return;
    s->pending_closes = 2; /* held until the handles are closing */
    uv_close((uv_handle_t *)&s->flush_idle, on_server_handle_closed);
    if (s->listening) {
        s->pending_closes++;
        uv_close((uv_handle_t *)&s->listener, on_server_handle_closed);
    }
    if (s->draining) {
        s->pending_closes++;
        uv_close((uv_handle_t *)&s->grace_timer, on_server_handle_closed);
    }
    if (s->housekeeping) {
        s->pending_closes++;
        uv_close((uv_handle_t *)&s->housekeeping_timer,
                 on_server_handle_closed);
    }
    if (--s->pending_closes == 0)
        free(s);
}
