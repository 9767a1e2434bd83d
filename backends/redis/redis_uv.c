/*
 * redis_uv.c - hiredis's event hooks on the libuv loop: one uv_poll_t per
 * hiredis context, watching its socket for what hiredis asks.
 *
 * Debian's hiredis 0.14 ships an adapter (adapters/libuv.h), but its poll
 * handle keeps the loop alive (kvbusd's loop must be able to end while a
 * connection sits idle), it ignores poll errors, and it cannot tell its
 * user when a context is gone. This one is unreferenced, hands an error
 * to hiredis as readiness so that hiredis reads the error and disconnects,
 * and calls back into the connection (redis__conn_context_gone) from the
 * cleanup hook, the one place where every end of a context passes. The
 * poll handle's close callback is the moment hiredis can no longer call
 * us about that context, so it drops the reference on the connection.
 *
 * Runs on: the event loop thread only.
 */
#include <stdlib.h>

#include <hiredis/async.h>
#include <uv.h>

#include "backends/redis/redis_int.h"

/* The libuv side of one hiredis context. */
struct redis_uv {
    uv_poll_t poll;
    redisAsyncContext *ac; /* NULL once hiredis cleaned up */
    redis_conn *conn;
    int events; /* UV_READABLE | UV_WRITABLE being watched */
};

static void uv_adapter_poll(uv_poll_t *h, int status, int events)
{
    struct redis_uv *a = h->data;
    int ev = status < 0 ? a->events : events; /* let hiredis see the error */

    if (a->ac && (ev & UV_READABLE))
        redisAsyncHandleRead(a->ac);
    if (a->ac && (ev & UV_WRITABLE))
        redisAsyncHandleWrite(a->ac);
}

static void uv_adapter_set(struct redis_uv *a, int events)
{
    if (!a->ac || events == a->events)
        return;
    a->events = events;
    if (events)
        uv_poll_start(&a->poll, events, uv_adapter_poll);
    else
        uv_poll_stop(&a->poll);
}

static void uv_adapter_add_read(void *p)
{
    struct redis_uv *a = p;
    uv_adapter_set(a, a->events | UV_READABLE);
}

static void uv_adapter_del_read(void *p)
{
    struct redis_uv *a = p;
    uv_adapter_set(a, a->events & ~UV_READABLE);
}

static void uv_adapter_add_write(void *p)
{
    struct redis_uv *a = p;
    uv_adapter_set(a, a->events | UV_WRITABLE);
}

static void uv_adapter_del_write(void *p)
{
    struct redis_uv *a = p;
    uv_adapter_set(a, a->events & ~UV_WRITABLE);
}

/* hiredis is done with the context: no call of ours can come after. */
static void uv_adapter_closed(uv_handle_t *h)
{
    struct redis_uv *a = h->data;
    redis_conn *c = a->conn;

    free(a);
    redis__conn_unref(c);
}

/*
 * hiredis is freeing the context (it may call this twice). Pending calls
 * get their NULL replies around this; the context itself stays valid
 * until this returns.
 */
static void uv_adapter_cleanup(void *p)
{
    struct redis_uv *a = p;
    redisAsyncContext *ac = a->ac;

    if (!ac)
        return;
    a->ac = NULL;
    uv_close((uv_handle_t *)&a->poll, uv_adapter_closed);
    redis__conn_context_gone(a->conn, ac);
}

/* See redis_int.h. */
int redis__uv_attach(uv_loop_t *loop, redisAsyncContext *ac, redis_conn *c)
{
    struct redis_uv *a = calloc(1, sizeof *a);

    if (!a)
        return -1;
    if (uv_poll_init(loop, &a->poll, ac->c.fd) != 0) {
        free(a);
        return -1;
    }
    /* An idle connection does not keep the loop running. */
    uv_unref((uv_handle_t *)&a->poll);
    a->poll.data = a;
    a->ac = ac;
    a->conn = c;
    redis__conn_ref(c);
    ac->ev.data = a;
    ac->ev.addRead = uv_adapter_add_read;
    ac->ev.delRead = uv_adapter_del_read;
    ac->ev.addWrite = uv_adapter_add_write;
    ac->ev.delWrite = uv_adapter_del_write;
    ac->ev.cleanup = uv_adapter_cleanup;
    return 0;
}
