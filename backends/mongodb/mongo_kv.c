/*
 * mongo_kv.c - the mongodb backend's method table: each kvbus call copied
 * into a call record (mongo_int.h), run by the shared pool of
 * mongo_conn.c on a worker thread (mongo_ops.c), and its reply handed to
 * the caller on the loop thread.
 *
 * The TTL index is created when the store opens, asynchronously; calls do
 * not wait for it (reads filter expired documents themselves, the index
 * only lets the server reclaim them). When it could not be created
 * because the server was unavailable, the next successful call tries
 * again; any other refusal (an index of the same name with other options)
 * is logged once and left alone.
 *
 * Left out: stats (known = false: counting documents costs a command).
 * Runs on: the event loop thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/mongodb/mongo_conn.h"
#include "backends/mongodb/mongo_int.h"
#include "backends/mongodb/mongodb.h"
#include "server/srv_log.h"

enum mongo_index_state {
    MONGO_INDEX_UNKNOWN,  /* not created yet: the next good call tries */
    MONGO_INDEX_CREATING, /* the command is on its way */
    MONGO_INDEX_SETTLED,  /* created, or refused for good (logged) */
};

struct mongo_backend {
    struct kv_backend base; /* must be first */
    mongo_pool *pool;       /* shared with stores of the same url */
    const char *store;      /* conf->name */
    char collection[MONGO_COLLECTION_MAX + 1];
    enum mongo_index_state index;
    bool closing;
};

/* Bytes reserved for struct mongo_call, keeping what follows aligned. */
#define MONGO_CALL_BYTES                                                       \
    ((sizeof(struct mongo_call) + sizeof(max_align_t) - 1) /                   \
     sizeof(max_align_t) * sizeof(max_align_t))

static inline struct mongo_backend *mongo_of(kv_backend *b)
{
    return (struct mongo_backend *)b;
}

static void index_start(struct mongo_backend *mb);

/* ------------------------------------------------------------------ */
/* Calls                                                                */

/* The work of a call is over: hand its reply to the caller. */
static void call_done(mongo_job *j, int status, const kv_err *err)
{
    struct mongo_call *c = (struct mongo_call *)j;
    struct mongo_backend *mb = c->mb;

    if (status != 0)
        c->done(status, NULL, err, c->ud);
    else
        c->done(0, &c->reply, NULL, c->ud);
    if (status == 0 && mb && !mb->closing && mb->index == MONGO_INDEX_UNKNOWN)
        index_start(mb);
}

static void call_cleanup(mongo_job *j)
{
    mongo__call_clear((struct mongo_call *)j);
}

/*
 * A call of op with `extra` bytes after it, at *w. NULL (err set) when
 * out of memory.
 */
static struct mongo_call *call_new(struct mongo_backend *mb, kv_op op,
                                   kv_done_cb done, void *ud, size_t extra,
                                   char **w, kv_err *err)
{
    struct mongo_call *c =
        (struct mongo_call *)mongo_job_new(mb->pool, MONGO_CALL_BYTES + extra);

    if (!c) {
        kv_err_set(err, KV_ENOMEM, "store %s: out of memory (%s)", mb->store,
                   kv_op_name(op));
        return NULL;
    }
    c->op = op;
    c->reply.op = op;
    snprintf(c->store, sizeof c->store, "%s", mb->store);
    memcpy(c->collection, mb->collection, sizeof c->collection);
    c->mb = mb;
    c->done = done;
    c->ud = ud;
    c->job.work = mongo__call_work;
    c->job.done = call_done;
    c->job.cleanup = call_cleanup;
    c->job.owner = mb;
    c->job.store = c->store;
    *w = (char *)c + MONGO_CALL_BYTES;
    return c;
}

/* Copies b to *w and returns the copy. */
static kv_bytes copy_bytes(char **w, kv_bytes b)
{
    kv_bytes out = {*w, b.len};

    if (b.len)
        memcpy(*w, b.ptr, b.len);
    *w += b.len;
    return out;
}

/* Submits c; on refusal frees it. Returns 0 or the refusal. */
static int call_submit(struct mongo_call *c, kv_err *err)
{
    int rc = mongo_pool_submit(&c->job, err);

    if (rc != 0)
        mongo_job_discard(&c->job);
    return rc;
}

/*
 * get, put, del, set_ttl, cas, incr: the key, and the value and expected
 * bytes of req when its op has them (see mongo_ops.c for each command).
 */
static int mongo_single(kv_backend *b, const kv_req *req, kv_done_cb done,
                        void *ud, kv_err *err)
{
    struct mongo_backend *mb = mongo_of(b);
    size_t extra = req->key.len;
    struct mongo_call *c;
    char *w;

    if (req->op == KV_OP_PUT || (req->op == KV_OP_CAS && req->has_value))
        extra += req->value.len;
    if (req->op == KV_OP_CAS && req->has_expected)
        extra += req->expected.len;
    c = call_new(mb, req->op, done, ud, extra, &w, err);
    if (!c)
        return KV_ENOMEM;
    c->key = copy_bytes(&w, req->key);
    if (req->op == KV_OP_PUT || (req->op == KV_OP_CAS && req->has_value)) {
        c->value = copy_bytes(&w, req->value);
        c->has_value = true;
    }
    if (req->op == KV_OP_CAS && req->has_expected) {
        c->expected = copy_bytes(&w, req->expected);
        c->has_expected = true;
    }
    c->ttl_s = req->ttl_s;
    c->delta = req->delta;
    return call_submit(c, err);
}

/* mget: the keys and their bytes are copied; no keys answers at once. */
static int mongo_mget(kv_backend *b, const kv_req *req, kv_done_cb done,
                      void *ud, kv_err *err)
{
    struct mongo_backend *mb = mongo_of(b);
    kv_reply r = {.op = req->op};
    size_t extra = req->nkeys * sizeof(kv_bytes), i;
    struct mongo_call *c;
    char *w;

    if (req->nkeys == 0) {
        done(0, &r, NULL, ud);
        return 0;
    }
    for (i = 0; i < req->nkeys; i++)
        extra += req->keys[i].len;
    c = call_new(mb, req->op, done, ud, extra, &w, err);
    if (!c)
        return KV_ENOMEM;
    c->keys = (kv_bytes *)w; /* aligned: w follows MONGO_CALL_BYTES */
    c->nkeys = req->nkeys;
    w += req->nkeys * sizeof(kv_bytes);
    for (i = 0; i < req->nkeys; i++)
        c->keys[i] = copy_bytes(&w, req->keys[i]);
    return call_submit(c, err);
}

/*
 * keys: the prefix as an anchored regex with its metacharacters escaped,
 * the cursor decoded into the key to resume after (a bad cursor is
 * refused before any I/O), and the page size.
 */
static int mongo_keys(kv_backend *b, const kv_req *req, kv_done_cb done,
                      void *ud, kv_err *err)
{
    struct mongo_backend *mb = mongo_of(b);
    size_t extra = 2 * req->prefix.len + 2 + req->cursor.len;
    struct mongo_call *c;
    size_t len = 0;
    char *w;
    int rc;

    c = call_new(mb, req->op, done, ud, extra, &w, err);
    if (!c)
        return KV_ENOMEM;
    c->limit = req->limit ? req->limit : KV_KEYS_LIMIT_DEFAULT;
    if (req->prefix.len) {
        c->regex = w;
        w += mongo_regex_prefix(req->prefix, w) + 1;
    }
    if (req->cursor.len) {
        rc = kv_cursor_decode(req->cursor, w, &len, err);
        if (rc != 0) {
            mongo_job_discard(&c->job);
            return rc;
        }
        c->after = (kv_bytes){w, len};
    }
    return call_submit(c, err);
}

/* clear: every document of the collection; the index stays. */
static int mongo_clear(kv_backend *b, const kv_req *req, kv_done_cb done,
                       void *ud, kv_err *err)
{
    struct mongo_backend *mb = mongo_of(b);
    struct mongo_call *c;
    char *w;

    c = call_new(mb, req->op, done, ud, 0, &w, err);
    if (!c)
        return KV_ENOMEM;
    return call_submit(c, err);
}

/* ------------------------------------------------------------------ */
/* The TTL index                                                        */

static void index_done(mongo_job *j, int status, const kv_err *err)
{
    struct mongo_call *c = (struct mongo_call *)j;
    struct mongo_backend *mb = c->mb;

    if (!mb || mb->closing)
        return;
    if (status == 0) {
        mb->index = MONGO_INDEX_SETTLED;
        srv_debug("store %s: TTL index on %s.ttl ready", mb->store,
                  mb->collection);
    } else if (status != KV_EINVAL) {
        mb->index = MONGO_INDEX_UNKNOWN; /* the next good call retries */
    } else {
        mb->index = MONGO_INDEX_SETTLED;
        srv_warn("store %s: cannot create the TTL index on %s.ttl: %s; "
                 "expired documents stay until deleted (reads ignore them)",
                 mb->store, mb->collection, err ? err->msg : "error");
    }
}

/* Sends createIndexes unless the pool is down (then a later call will). */
static void index_start(struct mongo_backend *mb)
{
    struct mongo_call *c;
    kv_err err = {0};
    char *w;

    if (mongo_pool_check(mb->pool, mb->store, NULL) != 0)
        return;
    c = call_new(mb, KV_OP_CLEAR, NULL, NULL, 0, &w, &err);
    if (!c)
        return;
    c->index_only = true;
    c->job.done = index_done;
    mb->index = MONGO_INDEX_CREATING;
    if (call_submit(c, &err) != 0)
        mb->index = MONGO_INDEX_UNKNOWN;
}

/* ------------------------------------------------------------------ */
/* Open, close, health                                                  */

/*
 * Names the collection, joins the pool for (url, op_timeout_ms) and
 * starts creating the TTL index. Does not wait for the server: a store
 * opens while MongoDB is down and serves once it is up. Errors: KV_EINVAL
 * (no loop, no url or one the driver refuses, a bad collection name),
 * KV_ENOMEM, the pool's.
 */
static int mongo_open(kv_backend *b, const kv_store_conf *conf, kv_err *err)
{
    struct mongo_backend *mb = mongo_of(b);
    uint32_t timeout_ms =
        conf->op_timeout_ms ? conf->op_timeout_ms : KV_OP_TIMEOUT_MS_DEFAULT;
    kv_err why = {0};
    int rc;

    mb->store = conf->name;
    if (!b->loop)
        return kv_err_set(err, KV_EINVAL,
                          "store %s: the mongodb backend needs an event loop",
                          conf->name);
    if (!conf->url || !*conf->url)
        return kv_err_set(err, KV_EINVAL,
                          "store %s: the mongodb backend needs a url "
                          "(mongodb://host:port/database)",
                          conf->name);
    rc = mongo_collection_name(conf->name, conf->collection, mb->collection,
                               err);
    if (rc != 0)
        return rc;
    rc = mongo_pool_acquire(b->loop, conf->url, timeout_ms, &mb->pool, &why);
    if (rc != 0)
        return kv_err_set(err, rc, "store %s: %s", conf->name, why.msg);
    index_start(mb);
    return 0;
}

/*
 * Answers every call of the store still waiting or running with
 * KV_EUNAVAIL (running ones finish on their worker, their results are
 * dropped) and leaves the pool.
 */
static void mongo_close(kv_backend *b)
{
    struct mongo_backend *mb = mongo_of(b);
    kv_err err = {0};

    mb->closing = true;
    if (!mb->pool)
        return;
    kv_err_set(&err, KV_EUNAVAIL, "store %s: closing", mb->store);
    mongo_pool_cancel(mb->pool, mb, &err);
    mongo_pool_release(mb->pool);
    mb->pool = NULL;
}

/* Up while the server answers. */
static bool mongo_healthy(kv_backend *b)
{
    struct mongo_backend *mb = mongo_of(b);

    return mb->pool && mongo_pool_up(mb->pool);
}

/* The document count is not known without a command. Reconnects are the
 * pool's, shared by every store on the same url. */
static void mongo_stats(kv_backend *b, kv_backend_stats *out)
{
    struct mongo_backend *mb = mongo_of(b);

    out->known = false;
    out->reconnects = mb->pool ? mongo_pool_reconnects(mb->pool) : 0;
}

const struct kv_backend_ops mongo_backend_ops = {
    .version = KV_BACKEND_OPS_VERSION,
    .name = "mongodb",
    .size = sizeof(struct mongo_backend),
    .open = mongo_open,
    .close = mongo_close,
    .get = mongo_single,
    .put = mongo_single,
    .del = mongo_single,
    .set_ttl = mongo_single,
    .cas = mongo_single,
    .incr = mongo_single,
    .mget = mongo_mget,
    .keys = mongo_keys,
    .clear = mongo_clear,
    .stats = mongo_stats,
    .healthy = mongo_healthy,
};
