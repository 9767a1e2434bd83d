/*
 * srv_server.c - the server of kvbusd's HTTP/1.1 server: creating it,
 * listening, the housekeeping timer that applies the deadlines
 * (srv_phase.c), graceful shutdown and freeing. Connections themselves are
 * in srv_conn.c. See srv_http.h for the contract.
 *
 * Runs on: the event loop thread.
 */
#include <stdio.h>
#include <stdlib.h>

#include <uv.h>

#include "server/srv_http_int.h"
#include "server/srv_log.h"

#define SRV_LISTEN_BACKLOG 511
#define SRV_HOUSEKEEPING_MS 250 /* linger and phase deadline checks */

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
                       srv__on_connection);
    if (rc == 0 && !s->housekeeping) {
        uv_timer_init(s->loop, &s->housekeeping_timer);
        s->housekeeping_timer.data = s;
        uv_timer_start(&s->housekeeping_timer, srv__on_housekeeping,
                       SRV_HOUSEKEEPING_MS, SRV_HOUSEKEEPING_MS);
        uv_unref((uv_handle_t *)&s->housekeeping_timer);
        s->housekeeping = true;
    }
    if (rc != 0)
        snprintf(err, errlen, "cannot listen on %s:%u: %s", host, port,
                 uv_strerror(rc));
    return rc;
}

const srv_http_stats *srv_server_stats(const srv_server *s)
{
    return &s->stats;
}

static void on_grace_timeout(uv_timer_t *t)
{
    srv_server *s = t->data;
    srv_conn *c;

    srv_warn("http: shutdown grace period over; closing busy connections");
    for (c = s->conns; c; c = c->next)
        srv__conn_close(c);
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
            srv__conn_flush(c);
        } else
            srv__conn_close(c);
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
