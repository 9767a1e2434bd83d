/*
 * srv_conn.c - the life of one connection of kvbusd's HTTP server: accept,
 * read, write, flush, finish (half-close and linger), close and free, the
 * TLS glue, and connections taken over by another protocol (WebSocket).
 * See srv_http.h for the contract.
 *
 * Output is batched: everything answered while handling one read is
 * written with one uv_try_write, the remainder queued with uv_write.
 *
 * A connection is freed only when its socket is closed and no handler
 * answer is pending, so a late backend callback never touches freed memory.
 *
 * With TLS, ciphertext read from the socket goes through srv_tls_read() and
 * the plaintext takes the same path as a plain connection's bytes; output
 * is encrypted in srv__conn_flush() as one batch and the ciphertext written
 * with one write, as plain output is.
 *
 * Runs on: the event loop thread.
 */
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "server/srv_http_int.h"
#include "server/srv_log.h"

#define SRV_SEND_BATCH_BYTES 16384 /* upgraded output written at once */
#define SRV_LINGER_MS 1000         /* reading what follows a last answer */
#define SRV_TLS_REASON_BYTES 160   /* OpenSSL reason for a debug line */

static int conn_write(srv_conn *c);

/* ------------------------------------------------------------------ */
/* Connections                                                          */

void srv__conn_freeable(srv_conn *c)
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
    srv__buf_free(&c->wire);
    srv__buf_free(&c->target);
    srv__buf_free(&c->body);
    srv__buf_free(&c->pending);
    srv__buf_free(&c->out);
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
    srv__conn_freeable(c); /* waits for a pending answer, if any */
}

void srv__conn_close(srv_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    c->reading = false;
    srv__conn_set_phase(c, SRV_PH_NONE);
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    srv_conn *c = req->data;

    if (status < 0)
        srv__conn_close(c);
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
        srv__conn_close(c);
        return;
    }
    if (!c->reading) {
        c->reading = uv_read_start((uv_stream_t *)&c->tcp, srv__conn_on_alloc,
                                   srv__conn_on_read) == 0;
        if (!c->reading)
            srv__conn_close(c);
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
        srv__conn_set_phase(c, c->phase); /* its deadline runs from now */
    if (status < 0 && status != UV_ECANCELED)
        srv__conn_close(c);
    else if (!c->writes_in_flight && c->close_after_write && !c->waiting)
        conn_finish(c);
    else if (c->proto && !c->closing)
        c->proto->on_writable(c->proto_ud);
    srv__conn_freeable(c);
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
        if (more && !srv__buf_reserve(o, more)) {
            srv__conn_close(c);
            return -1;
        }
        o->len += srv_tls_take_out(c->tls, o->data + o->len, more);
    }
    if (!o->len)
        return 0;
    b = uv_buf_init(o->data, (unsigned)o->len);
    n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n < 0 && n != UV_EAGAIN && n != UV_ENOSYS) {
        srv__conn_close(c);
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
        srv__conn_close(c);
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
        srv__conn_close(c);
        return -1;
    }
    c->writes_in_flight++;
    return 0;
}

/* Writes what has been answered (encrypted first on a TLS connection), and
 * finishes the connection when that was its last answer. */
void srv__conn_flush(srv_conn *c)
{
    if (c->closing || c->lingering)
        return;
    if (c->tls && c->out.len) {
        if (srv_tls_write(c->tls, c->out.data, c->out.len) != 0) {
            srv__conn_close(c);
            return;
        }
        c->out.len = 0;
    }
    if (conn_write(c) != 0)
        return;
    if (c->close_after_write && !c->waiting && !c->writes_in_flight)
        conn_finish(c);
}

void srv__conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    srv_conn *c = (srv_conn *)h;

    (void)suggested;
    *buf = uv_buf_init(c->rbuf, sizeof c->rbuf);
}

/*
 * Plaintext from srv_tls_read(): the same path as a plain connection's
 * bytes. While a handler's answer is pending the bytes wait in c->pending,
 * as srv__conn_feed() would keep them. Returns false once c is closing.
 */
static bool on_tls_plain(void *ud, const char *p, size_t n)
{
    srv_conn *c = ud;

    if (c->closing)
        return false;
    if (c->close_after_write || c->lingering)
        return true; /* discarded, as srv__conn_on_read does */
    if (c->proto)
        c->proto->on_data(c->proto_ud, p, n);
    else if (c->waiting) {
        if (!srv__buf_append(&c->pending, p, n))
            c->close_after_write = true;
    } else
        srv__conn_feed(c, p, n);
    return !c->closing;
}

/* Counts and logs a failed handshake once per connection. */
void srv__tls_handshake_failed(srv_conn *c, const char *why)
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
        srv__conn_flush(c);
        break;
    case SRV_TLS_CLOSED: /* close_notify: like end of file */
        srv__conn_close(c);
        break;
    case SRV_TLS_FAILED:
    case SRV_TLS_NOMEM:
        srv__tls_handshake_failed(c,
                                  rc == SRV_TLS_NOMEM ? "out of memory" : why);
        if (!c->closing)
            conn_write(c); /* OpenSSL's alert, if the socket takes it */
        srv__conn_close(c);
        break;
    case SRV_TLS_STOPPED:
        break;
    }
}

void srv__conn_on_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf)
{
    srv_conn *c = (srv_conn *)stream;

    (void)buf;
    if (n < 0) {
        /* EOF or error: answers still pending have nowhere to go */
        if (c->tls)
            srv__tls_handshake_failed(c,
                                      "the client closed during the handshake");
        srv__conn_close(c);
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
    srv__conn_feed(c, c->rbuf, (size_t)n);
    srv__conn_flush(c);
}

/* ------------------------------------------------------------------ */
/* Accepting                                                            */

void srv__on_connection(uv_stream_t *listener, int status)
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
        srv__conn_close(c);
        return;
    }
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    if (s->stats.connections_open > s->limits.max_connections &&
        !srv__evict_one(s)) {
        if (s->tls) { /* no session to say it in */
            srv__conn_close(c);
            return;
        }
        c->method = SRV_GET;
        c->close_after_write = true;
        srv_respond_error(c, 503, "too_many_connections",
                          "the server has max_connections open connections");
        srv__conn_flush(c);
        return;
    }
    if (s->tls && !(c->tls = srv_tls_new(s->tls))) {
        srv_warn("tls: out of memory accepting a connection");
        srv__conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    srv__conn_set_phase(c, SRV_PH_HEADERS);
    c->reading = uv_read_start((uv_stream_t *)&c->tcp, srv__conn_on_alloc,
                               srv__conn_on_read) == 0;
    if (!c->reading)
        srv__conn_close(c);
}

/* ------------------------------------------------------------------ */
/* Upgraded connections                                                 */

void srv_conn_upgrade(srv_conn *c, const srv_proto *proto, void *ud)
{
    c->proto = proto;
    c->proto_ud = ud;
    srv__conn_set_phase(c, SRV_PH_NONE);
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
        srv__conn_flush(c);
        if (c->proto && !c->closing && c->tcp.write_queue_size == 0)
            c->proto->on_writable(c->proto_ud);
        srv__conn_freeable(c);
    }
    if (!s->dirty)
        uv_idle_stop(&s->flush_idle);
}

int srv_conn_send(srv_conn *c, const void *data, size_t len)
{
    srv_server *s = c->srv;

    if (c->closing || c->close_after_write)
        return -1;
    if (!srv__buf_append(&c->out, data, len)) {
        srv__conn_close(c);
        return -1;
    }
    if (c->out.len >= SRV_SEND_BATCH_BYTES) {
        srv__conn_flush(c); /* enough for one write: do not wait for the turn */
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
    srv__conn_close(c);
}

void srv_conn_close_after_write(srv_conn *c)
{
    c->close_after_write = true;
    srv__conn_flush(c);
}
