/*
 * fuzz_backend.c - "memory, but late": the memory backend behind a wrapper
 * that answers every call on a later loop turn, as the network backends
 * do. With it, fuzz_http reaches the paths of srv_http.c that wait for an
 * answer: a paused parser, pipelined bytes kept in `pending`, the answer
 * written from a callback, reading resumed afterwards.
 *
 * Each data method copies its request (the core lends the bytes for the
 * call only) into a queue; an idle handle runs the queue on the next turn
 * through the real memory backend, passing the caller's done and ud, so
 * every answer is the memory backend's own. A call the memory backend
 * refuses is answered with its error. close() answers what is still queued
 * with KV_EUNAVAIL, as a network backend going away does.
 *
 * Runs on: the event loop thread.
 */
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "backends/memory/memory.h"
#include "kvstore/kvstore.h"
#include "tests/fuzz/fuzz_net.h"

/* One call waiting for its turn, with its own copy of the request. */
typedef struct late_call {
    struct late_call *next;
    kv_req req;
    kv_bytes *keys; /* mget: copies of the key slices, into bytes */
    kv_done_cb done;
    void *ud;
    char bytes[]; /* key, value, expected, prefix, cursor, mget keys */
} late_call;

/* The idle handle lives apart: the core frees the instance at close. */
typedef struct late_idle {
    uv_idle_t idle;
    struct late_backend *owner; /* NULL once the backend is closed */
} late_idle;

typedef struct late_backend {
    kv_backend base; /* must be first */
    kv_backend *inner;
    late_idle *idle;
    late_call *head, **tail;
} late_backend;

/* Copies len bytes at *at and points b there. */
static void copy_bytes(kv_bytes *b, char **at)
{
    if (b->len)
        memcpy(*at, b->ptr, b->len);
    b->ptr = *at;
    *at += b->len;
}

static late_call *call_copy(const kv_req *req, kv_done_cb done, void *ud)
{
    size_t n = req->key.len + req->value.len + req->expected.len +
               req->prefix.len + req->cursor.len,
           i;
    late_call *c;
    char *at;

    for (i = 0; i < req->nkeys; i++)
        n += req->keys[i].len;
    c = calloc(1, sizeof *c + n + 1);
    if (!c)
        return NULL;
    if (req->nkeys) {
        c->keys = calloc(req->nkeys, sizeof *c->keys);
        if (!c->keys) {
            free(c);
            return NULL;
        }
    }
    c->req = *req;
    c->done = done;
    c->ud = ud;
    at = c->bytes;
    copy_bytes(&c->req.key, &at);
    copy_bytes(&c->req.value, &at);
    copy_bytes(&c->req.expected, &at);
    copy_bytes(&c->req.prefix, &at);
    copy_bytes(&c->req.cursor, &at);
    for (i = 0; i < req->nkeys; i++) {
        c->keys[i] = req->keys[i];
        copy_bytes(&c->keys[i], &at);
    }
    c->req.keys = c->keys;
    return c;
}

static void call_free(late_call *c)
{
    free(c->keys);
    free(c);
}

static kv_method inner_method(const late_backend *lb, kv_op op)
{
    const struct kv_backend_ops *o = lb->inner->ops;

    switch (op) {
    case KV_OP_GET:
        return o->get;
    case KV_OP_PUT:
        return o->put;
    case KV_OP_DEL:
        return o->del;
    case KV_OP_SET_TTL:
        return o->set_ttl;
    case KV_OP_CAS:
        return o->cas;
    case KV_OP_INCR:
        return o->incr;
    case KV_OP_MGET:
        return o->mget;
    case KV_OP_KEYS:
        return o->keys;
    case KV_OP_CLEAR:
        return o->clear;
    default:
        return NULL;
    }
}

/* The next turn: every call queued so far, through the memory backend. */
static void on_idle(uv_idle_t *h)
{
    late_idle *li = (late_idle *)h;
    late_backend *lb = li->owner;
    late_call *c;
    kv_method m;
    kv_err err = {0};
    int rc;

    uv_idle_stop(h);
    while (lb && (c = lb->head)) {
        lb->head = c->next;
        if (!lb->head)
            lb->tail = &lb->head;
        m = inner_method(lb, c->req.op);
        rc = m ? m(lb->inner, &c->req, c->done, c->ud, &err)
               : kv_err_set(&err, KV_ENOTSUP, "not supported");
        if (rc != 0)
            c->done(rc, NULL, &err, c->ud);
        call_free(c);
    }
}

static int late_call_queue(kv_backend *b, const kv_req *req, kv_done_cb done,
                           void *ud, kv_err *err)
{
    late_backend *lb = (late_backend *)b;
    late_call *c = call_copy(req, done, ud);

    if (!c)
        return kv_err_set(err, KV_ENOMEM, "out of memory");
    *lb->tail = c;
    lb->tail = &c->next;
    uv_idle_start(&lb->idle->idle, on_idle);
    return 0;
}

static void on_idle_closed(uv_handle_t *h)
{
    free(h);
}

static int late_open(kv_backend *b, const kv_store_conf *conf, kv_err *err)
{
    late_backend *lb = (late_backend *)b;
    int rc;

    lb->tail = &lb->head;
    lb->inner = calloc(1, mem_backend_ops.size);
    lb->idle = calloc(1, sizeof *lb->idle);
    if (!lb->inner || !lb->idle) {
        free(lb->inner);
        free(lb->idle);
        return kv_err_set(err, KV_ENOMEM, "out of memory");
    }
    lb->inner->ops = &mem_backend_ops;
    lb->inner->loop = b->loop;
    lb->inner->conf = b->conf;
    lb->inner->now_ms = b->now_ms;
    rc = mem_backend_ops.open(lb->inner, conf, err);
    if (rc != 0) {
        free(lb->inner);
        free(lb->idle);
        return rc;
    }
    uv_idle_init(b->loop, &lb->idle->idle);
    lb->idle->owner = lb;
    return 0;
}

static void late_close(kv_backend *b)
{
    late_backend *lb = (late_backend *)b;
    kv_err err = {0};
    late_call *c;

    while ((c = lb->head)) {
        lb->head = c->next;
        kv_err_set(&err, KV_EUNAVAIL, "backend closed");
        c->done(KV_EUNAVAIL, NULL, &err, c->ud);
        call_free(c);
    }
    lb->idle->owner = NULL;
    uv_close((uv_handle_t *)&lb->idle->idle, on_idle_closed);
    mem_backend_ops.close(lb->inner);
    free(lb->inner);
}

static void late_stats(kv_backend *b, kv_backend_stats *out)
{
    late_backend *lb = (late_backend *)b;

    mem_backend_ops.stats(lb->inner, out);
}

const struct kv_backend_ops fuzz_late_memory_ops = {
    .version = KV_BACKEND_OPS_VERSION,
    .name = "memory",
    .size = sizeof(late_backend),
    .open = late_open,
    .close = late_close,
    .get = late_call_queue,
    .put = late_call_queue,
    .del = late_call_queue,
    .set_ttl = late_call_queue,
    .cas = late_call_queue,
    .incr = late_call_queue,
    .mget = late_call_queue,
    .keys = late_call_queue,
    .clear = late_call_queue,
    .stats = late_stats,
};
