/*
 * srv_phase.c - phases, deadlines and eviction of the connections of
 * kvbusd's HTTP server.
 *
 * Each connection is in one phase with its own deadline, checked by the
 * housekeeping timer: waiting for headers (header_timeout_ms from the
 * connection or the request's first byte), for body bytes
 * (body_timeout_ms between them), busy in a handler (no deadline), idle
 * between keep-alive requests (idle_timeout_ms), or finishing (its last
 * answer must leave within header_timeout_ms). Connections waiting for
 * headers or body, and those closing, are also in FIFOs, oldest first: when
 * max_connections is reached, a new connection closes the oldest closing
 * one, else the one waiting longest for its request (see srv__evict_one()),
 * instead of being refused, so slow or stalled clients cannot lock
 * well-behaved ones out.
 *
 * Runs on: the event loop thread.
 */
#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "server/srv_http_int.h"
#include "server/srv_log.h"

#define SRV_EVICT_MIN_AGE_MS 100 /* a silent connection younger is kept */
#define SRV_EVICT_SCAN_MAX 64    /* slow connections looked at per eviction */

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
void srv__conn_set_phase(srv_conn *c, enum srv_phase ph)
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
/* Eviction                                                             */

/*
 * Makes room for one connection by closing another: the oldest of those
 * already answered and closing (lingering), else the one that has waited
 * longest for its request's headers or body among the first
 * SRV_EVICT_SCAN_MAX of them, skipping connections that have sent nothing
 * yet and are younger than SRV_EVICT_MIN_AGE_MS (accepted in the same
 * burst, their first bytes may simply not have been read yet). Returns
 * false when there is none to close.
 */
bool srv__evict_one(srv_server *s)
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
        srv__tls_handshake_failed(victim, "closed to make room");
    srv__conn_close(victim);
    return true;
}

/* ------------------------------------------------------------------ */
/* Deadlines                                                            */

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
        srv__tls_handshake_failed(c, "header_timeout_ms passed");
    if (!c->got_bytes) {
        srv_debug("http: no request within header_timeout_ms; closing");
        srv__conn_close(c);
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
    srv__conn_flush(c);
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
void srv__on_housekeeping(uv_timer_t *t)
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
                srv__conn_close(c);
            continue;
        }
        if (write_progressed(c)) {
            srv__conn_set_phase(c, c->phase); /* a new deadline from now */
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
            srv__conn_set_phase(c, SRV_PH_CLOSING);
            srv__conn_flush(c);
            break;
        case SRV_PH_CLOSING:
            srv__conn_close(c);
            break;
        case SRV_PH_NONE:
        case SRV_PH_BUSY:
            break;
        }
    }
}
