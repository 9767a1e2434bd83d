/*
 * redis_kv.c - the Redis backend's method table: each kvbus operation as
 * Redis commands on the store's connection (redis_conn.h), and each reply
 * turned back into a kv_reply.
 *
 * Layout: key = key_prefix + key, value = raw bytes, TTL native. Commands:
 *   get     EVALSHA get script: GET and PTTL in one atomic step
 *   put     SET k v [EX ttl]  (without EX, SET drops any earlier TTL)
 *   del     DEL k
 *   set_ttl EXPIRE k ttl, or for ttl 0 the persist script (EXISTS, PERSIST:
 *           PERSIST alone answers 0 for a key that has no TTL)
 *   cas     EVALSHA cas script: the four cases of SPEC 5.5, TTL included
 *   incr    INCRBY k delta (Redis accepts exactly -?(0|[1-9][0-9]*) in
 *           int64 range, keeps the TTL, refuses overflow)
 *   mget    MGET k...
 *   keys    SCAN cursor MATCH <escaped prefix>* COUNT n  (redis_scan.c)
 *   clear   SCAN + UNLINK over <escaped key_prefix>*     (redis_scan.c)
 * Every request waits for its reply in a small record holding the caller's
 * callback; the request's own bytes are formatted into the connection's
 * buffer at once and never kept. close completes everything pending (the
 * connection does) before the core frees the instance.
 *
 * Left out: Redis Cluster (MOVED/ASK are errors), TLS, and statistics.
 * Runs on: the event loop thread only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/redis/redis.h"
#include "backends/redis/redis_conn.h"
#include "backends/redis/redis_int.h"

#define REDIS_KEY_STACK 512 /* prefixed keys built on the stack below */
#define REDIS_MS_PER_S 1000
#define REDIS_ERR_QUOTE_MAX 120 /* bytes of a Redis error quoted */

/* The Lua scripts, loaded on every connect; indexes into redis_scripts. */
enum redis_script_id {
    SCRIPT_GET,
    SCRIPT_PERSIST,
    SCRIPT_CAS,
    SCRIPT__COUNT,
};
#define SCRIPT_NONE SCRIPT__COUNT /* op_send: a plain command */

static const char *const redis_scripts[SCRIPT__COUNT] = {
    /* KEYS[1]: nil when absent, else {value, PTTL}. */
    [SCRIPT_GET] = "local v = redis.call('GET', KEYS[1])\n"
                   "if not v then return false end\n"
                   "return {v, redis.call('PTTL', KEYS[1])}\n",
    /* KEYS[1]: 1 and no TTL any more when it exists, else 0. */
    [SCRIPT_PERSIST] = "if redis.call('EXISTS', KEYS[1]) == 0 then "
                       "return 0 end\n"
                       "redis.call('PERSIST', KEYS[1])\n"
                       "return 1\n",
    /*
     * KEYS[1]; ARGV: has_expected ("1"/"0"), expected, has_value, value,
     * ttl seconds ("0" = none). Compares the bytes exactly (Lua strings);
     * returns 1 when it matched (and acted), else 0.
     */
    [SCRIPT_CAS] = "local cur = redis.call('GET', KEYS[1])\n"
                   "if ARGV[1] == '1' then\n"
                   "  if cur ~= ARGV[2] then return 0 end\n"
                   "elseif cur then\n"
                   "  return 0\n"
                   "end\n"
                   "if ARGV[3] == '1' then\n"
                   "  if ARGV[5] ~= '0' then\n"
                   "    redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[5])\n"
                   "  else\n"
                   "    redis.call('SET', KEYS[1], ARGV[4])\n"
                   "  end\n"
                   "elseif cur then\n"
                   "  redis.call('DEL', KEYS[1])\n"
                   "end\n"
                   "return 1\n",
};

static inline struct redis_backend *redis_of(kv_backend *b)
{
    return (struct redis_backend *)b;
}

/* ------------------------------------------------------------------ */
/* Error replies                                                        */

#define REDIS_ANY_OP KV_OP__COUNT

/* First word of the error (Redis's code), text inside it, op, result. */
static const struct redis_error_rule {
    const char *word;
    const char *text; /* NULL = any */
    kv_op op;         /* REDIS_ANY_OP = any */
    int code;
} redis_error_rules[] = {
    {"ERR", "is not an integer", KV_OP_INCR, KV_ENOTINT},
    {"ERR", "would overflow", KV_OP_INCR, KV_EOVERFLOW},
    {"WRONGTYPE", NULL, KV_OP_INCR, KV_ENOTINT},
    {"WRONGTYPE", NULL, REDIS_ANY_OP, KV_EINVAL},
    {"ERR", "WRONGTYPE", REDIS_ANY_OP, KV_EINVAL}, /* script errors, Redis 6 */
    {"OOM", NULL, REDIS_ANY_OP, KV_ENOMEM},
};

int redis__error_code(kv_op op, const char *msg, size_t len)
{
    const char *sp = memchr(msg, ' ', len);
    size_t wlen = sp ? (size_t)(sp - msg) : len;
    size_t i;

    for (i = 0; i < sizeof redis_error_rules / sizeof *redis_error_rules; i++) {
        const struct redis_error_rule *r = &redis_error_rules[i];
        if (strlen(r->word) != wlen || memcmp(r->word, msg, wlen) != 0)
            continue;
        if (r->op != REDIS_ANY_OP && r->op != op)
            continue;
        if (r->text && !memmem(msg, len, r->text, strlen(r->text)))
            continue;
        return r->code;
    }
    return KV_EUNAVAIL;
}

/* ------------------------------------------------------------------ */
/* Requests                                                             */

/*
 * The Redis key of key: key_prefix + key, in stack (REDIS_KEY_STACK
 * bytes) when it fits, else in *heap (free it after the call). NULL when
 * allocation fails.
 */
static char *key_build(const struct redis_backend *rb, kv_bytes key,
                       char *stack, char **heap)
{
    size_t n = rb->prefix_len + key.len;
    char *p = stack;

    *heap = NULL;
    if (n > REDIS_KEY_STACK) {
        p = *heap = malloc(n);
        if (!p)
            return NULL;
    }
    memcpy(p, rb->prefix, rb->prefix_len);
    if (key.len)
        memcpy(p + rb->prefix_len, key.ptr, key.len);
    return p;
}

int redis__err_nomem(const struct redis_backend *rb, kv_err *err)
{
    return kv_err_set(err, KV_ENOMEM, "%s: out of memory", rb->label);
}

/* Completes op with status and err, then frees it. */
static void op_fail(struct redis_op *op, int status, const kv_err *err)
{
    op->done(status, NULL, err, op->ud);
    free(op);
}

/* See redis_int.h. */
int redis__reply_error(const struct redis_op *op, const redisReply *reply,
                       kv_err *e)
{
    const struct redis_backend *rb = op->rb;
    int code = redis__error_code(op->op, reply->str, reply->len);

    if (code == KV_ENOTINT)
        return kv_err_set(e, code, "value is not a 64-bit decimal integer");
    if (code == KV_EOVERFLOW)
        return kv_err_set(e, code, "incrementing by %lld overflows 64 bits",
                          (long long)op->delta);
    if (code == KV_EINVAL)
        return kv_err_set(e, code,
                          "%s: the Redis key holds a value that is not a "
                          "string (WRONGTYPE)",
                          rb->label);
    return kv_err_set(
        e, code, "%s: redis %s: %.*s", rb->label, redis_conn_addr(rb->conn),
        (int)(reply->len > REDIS_ERR_QUOTE_MAX ? REDIS_ERR_QUOTE_MAX
                                               : reply->len),
        reply->str);
}

/* Completes op with the kvbus error for a Redis error reply. */
static void op_fail_reply(struct redis_op *op, const redisReply *reply)
{
    kv_err e = {0};

    op_fail(op, redis__reply_error(op, reply, &e), &e);
}

/* Completes op for a reply of a shape the command never gives. */
static void op_fail_shape(struct redis_op *op, const redisReply *reply)
{
    kv_err e = {0};

    kv_err_set(&e, KV_EUNAVAIL,
               "%s: redis %s: unexpected reply (type %d) to %s", op->rb->label,
               redis_conn_addr(op->rb->conn), reply->type, kv_op_name(op->op));
    op_fail(op, KV_EUNAVAIL, &e);
}

/*
 * The common start of every reply handler: completes op and returns true
 * when the call failed or Redis answered an error; false when reply is an
 * answer to interpret.
 */
static bool op_failed(struct redis_op *op, int status, const redisReply *reply,
                      const kv_err *err)
{
    if (status != 0) {
        op_fail(op, status, err);
        return true;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        op_fail_reply(op, reply);
        return true;
    }
    return false;
}

/* Completes op with r and frees it. */
static void op_done(struct redis_op *op, kv_reply *r)
{
    r->op = op->op;
    op->done(0, r, NULL, op->ud);
    free(op);
}

/* See redis_int.h. */
struct redis_op *redis__op_new(struct redis_backend *rb, const kv_req *req,
                               size_t size, kv_done_cb done, void *ud)
{
    struct redis_op *op = calloc(1, size);

    if (!op)
        return NULL;
    op->rb = rb;
    op->op = req->op;
    op->delta = req->delta;
    op->nkeys = req->nkeys;
    op->done = done;
    op->ud = ud;
    return op;
}

/*
 * Sends argv (argv[key_arg] replaced by the prefixed key of req->key when
 * key_arg >= 0) as a command (script SCRIPT_NONE), or as the arguments of
 * that script; cb gets the reply with a new redis_op.
 */
static int op_send(struct redis_backend *rb, const kv_req *req,
                   enum redis_script_id script, int argc, const char **argv,
                   size_t *lens, int key_arg, redis_reply_cb cb,
                   kv_done_cb done, void *ud, kv_err *err)
{
    char stack[REDIS_KEY_STACK], *heap = NULL;
    struct redis_op *op;
    int rc;

    if (key_arg >= 0) {
        argv[key_arg] = key_build(rb, req->key, stack, &heap);
        lens[key_arg] = rb->prefix_len + req->key.len;
        if (!argv[key_arg])
            return redis__err_nomem(rb, err);
    }
    op = redis__op_new(rb, req, sizeof *op, done, ud);
    if (!op) {
        free(heap);
        return redis__err_nomem(rb, err);
    }
    rc = script != SCRIPT_NONE
             ? redis_conn_script(rb->conn, (size_t)script, argc, argv, lens, cb,
                                 op, err)
             : redis_conn_command(rb->conn, argc, argv, lens, cb, op, err);
    free(heap);
    if (rc != 0)
        free(op);
    return rc;
}

/* get: nil = absent, else {value, PTTL ms}; the TTL is rounded up. */
static void on_get(int status, const redisReply *reply, const kv_err *err,
                   void *ud)
{
    struct redis_op *op = ud;
    kv_reply r = {0};
    long long pttl;

    if (op_failed(op, status, reply, err))
        return;
    if (reply->type == REDIS_REPLY_NIL) {
        op_done(op, &r);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_INTEGER) {
        op_fail_shape(op, reply);
        return;
    }
    r.found = true;
    r.value = (kv_bytes){reply->element[0]->str, reply->element[0]->len};
    pttl = reply->element[1]->integer;
    if (pttl >= 0) /* -1: no TTL; 0 left still counts as one second */
        r.ttl_left_s =
            pttl / REDIS_MS_PER_S + (pttl % REDIS_MS_PER_S != 0) + (pttl == 0);
    op_done(op, &r);
}

static int redis_kv_get(kv_backend *b, const kv_req *req, kv_done_cb done,
                        void *ud, kv_err *err)
{
    const char *argv[] = {"1", NULL};
    size_t lens[] = {1, 0};

    return op_send(redis_of(b), req, SCRIPT_GET, 2, argv, lens, 1, on_get, done,
                   ud, err);
}

/* Replies that only say OK. */
static void on_ok(int status, const redisReply *reply, const kv_err *err,
                  void *ud)
{
    struct redis_op *op = ud;
    kv_reply r = {0};

    if (op_failed(op, status, reply, err))
        return;
    if (reply->type != REDIS_REPLY_STATUS) {
        op_fail_shape(op, reply);
        return;
    }
    op_done(op, &r);
}

static int redis_kv_put(kv_backend *b, const kv_req *req, kv_done_cb done,
                        void *ud, kv_err *err)
{
    char ttl[KV_INT_TEXT_MAX + 1];
    const char *argv[] = {"SET", NULL, req->value.ptr, "EX", ttl};
    size_t lens[] = {3, 0, req->value.len, 2, 0};

    if (!argv[2])
        argv[2] = "";
    lens[4] = kv_format_int64(req->ttl_s, ttl);
    return op_send(redis_of(b), req, SCRIPT_NONE, req->ttl_s > 0 ? 5 : 3, argv,
                   lens, 1, on_ok, done, ud, err);
}

/* Integer replies: found = non-zero (del, set_ttl, cas). */
static void on_found(int status, const redisReply *reply, const kv_err *err,
                     void *ud)
{
    struct redis_op *op = ud;
    kv_reply r = {0};

    if (op_failed(op, status, reply, err))
        return;
    if (reply->type != REDIS_REPLY_INTEGER) {
        op_fail_shape(op, reply);
        return;
    }
    r.found = reply->integer != 0;
    op_done(op, &r);
}

static int redis_kv_del(kv_backend *b, const kv_req *req, kv_done_cb done,
                        void *ud, kv_err *err)
{
    const char *argv[] = {"DEL", NULL};
    size_t lens[] = {3, 0};

    return op_send(redis_of(b), req, SCRIPT_NONE, 2, argv, lens, 1, on_found,
                   done, ud, err);
}

static int redis_kv_set_ttl(kv_backend *b, const kv_req *req, kv_done_cb done,
                            void *ud, kv_err *err)
{
    char ttl[KV_INT_TEXT_MAX + 1];
    const char *argv[] = {"EXPIRE", NULL, ttl};
    size_t lens[] = {6, 0, 0};
    const char *pargv[] = {"1", NULL};
    size_t plens[] = {1, 0};

    if (req->ttl_s == 0)
        return op_send(redis_of(b), req, SCRIPT_PERSIST, 2, pargv, plens, 1,
                       on_found, done, ud, err);
    lens[2] = kv_format_int64(req->ttl_s, ttl);
    return op_send(redis_of(b), req, SCRIPT_NONE, 3, argv, lens, 1, on_found,
                   done, ud, err);
}

static int redis_kv_cas(kv_backend *b, const kv_req *req, kv_done_cb done,
                        void *ud, kv_err *err)
{
    char ttl[KV_INT_TEXT_MAX + 1];
    const char *argv[] = {
        "1",
        NULL,
        req->has_expected ? "1" : "0",
        req->has_expected && req->expected.ptr ? req->expected.ptr : "",
        req->has_value ? "1" : "0",
        req->has_value && req->value.ptr ? req->value.ptr : "",
        ttl,
    };
    size_t lens[] = {
        1, 0,
        1, req->has_expected ? req->expected.len : 0,
        1, req->has_value ? req->value.len : 0,
        0,
    };

    lens[6] = kv_format_int64(req->ttl_s, ttl);
    return op_send(redis_of(b), req, SCRIPT_CAS, 7, argv, lens, 1, on_found,
                   done, ud, err);
}

/* incr: the new value. */
static void on_incr(int status, const redisReply *reply, const kv_err *err,
                    void *ud)
{
    struct redis_op *op = ud;
    kv_reply r = {0};

    if (op_failed(op, status, reply, err))
        return;
    if (reply->type != REDIS_REPLY_INTEGER) {
        op_fail_shape(op, reply);
        return;
    }
    r.number = reply->integer;
    op_done(op, &r);
}

static int redis_kv_incr(kv_backend *b, const kv_req *req, kv_done_cb done,
                         void *ud, kv_err *err)
{
    char delta[KV_INT_TEXT_MAX + 1];
    const char *argv[] = {"INCRBY", NULL, delta};
    size_t lens[] = {6, 0, 0};

    lens[2] = kv_format_int64(req->delta, delta);
    return op_send(redis_of(b), req, SCRIPT_NONE, 3, argv, lens, 1, on_incr,
                   done, ud, err);
}

/* mget: one value or nil per key asked, in order. */
static void on_mget(int status, const redisReply *reply, const kv_err *err,
                    void *ud)
{
    struct redis_op *op = ud;
    kv_reply r = {0};
    kv_err e = {0};
    size_t i;

    if (op_failed(op, status, reply, err))
        return;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != op->nkeys) {
        op_fail_shape(op, reply);
        return;
    }
    r.values = calloc(reply->elements ? reply->elements : 1, sizeof *r.values);
    if (!r.values) {
        redis__err_nomem(op->rb, &e);
        op_fail(op, KV_ENOMEM, &e);
        return;
    }
    for (i = 0; i < reply->elements; i++) {
        const redisReply *v = reply->element[i];
        if (v->type == REDIS_REPLY_STRING)
            r.values[i] = (kv_bytes){v->str, v->len};
    }
    op_done(op, &r);
    free(r.values);
}

static int redis_kv_mget(kv_backend *b, const kv_req *req, kv_done_cb done,
                         void *ud, kv_err *err)
{
    struct redis_backend *rb = redis_of(b);
    const char **argv;
    size_t *lens, total = 0, i;
    struct redis_op *op;
    char *buf, *p;
    int rc;

    if (req->nkeys == 0) {
        kv_reply r = {.op = req->op};
        done(0, &r, NULL, ud);
        return 0;
    }
    for (i = 0; i < req->nkeys; i++)
        total += rb->prefix_len + req->keys[i].len;
    argv = malloc((req->nkeys + 1) * sizeof *argv);
    lens = malloc((req->nkeys + 1) * sizeof *lens);
    buf = malloc(total);
    op = redis__op_new(rb, req, sizeof *op, done, ud);
    if (!argv || !lens || !buf || !op) {
        rc = redis__err_nomem(rb, err);
        goto out;
    }
    argv[0] = "MGET";
    lens[0] = 4;
    for (i = 0, p = buf; i < req->nkeys; i++) {
        argv[i + 1] = p;
        lens[i + 1] = rb->prefix_len + req->keys[i].len;
        memcpy(p, rb->prefix, rb->prefix_len);
        memcpy(p + rb->prefix_len, req->keys[i].ptr, req->keys[i].len);
        p += lens[i + 1];
    }
    rc = redis_conn_command(rb->conn, (int)req->nkeys + 1, argv, lens, on_mget,
                            op, err);
    if (rc == 0)
        op = NULL;
out:
    free(op);
    free(argv);
    free(lens);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Instance                                                             */

/*
 * Works out the key prefix, checks the URL and starts the connection.
 * Redis being down is not an error: the store opens and reports
 * unhealthy until it connects. Errors: KV_EINVAL (no loop, no URL, bad
 * URL, empty key_prefix), KV_ENOMEM; nothing is left to close then. The
 * message does not name the store: the caller does.
 */
static int redis_kv_open(kv_backend *b, const kv_store_conf *conf, kv_err *err)
{
    struct redis_backend *rb = redis_of(b);
    redis_conn_conf cc = {0};
    int rc;

    snprintf(rb->label, sizeof rb->label, "store %s", conf->name);
    if (!b->loop)
        return kv_err_set(err, KV_EINVAL, "redis needs an event loop");
    if (!conf->url)
        return kv_err_set(err, KV_EINVAL,
                          "backend redis needs a url (redis://host:port/db)");
    if (conf->key_prefix) {
        rb->prefix = strdup(conf->key_prefix);
    } else {
        size_t n = strlen("kvbus:") + strlen(conf->name) + 2;
        rb->prefix = malloc(n);
        if (rb->prefix)
            snprintf(rb->prefix, n, "kvbus:%s:", conf->name);
    }
    if (!rb->prefix)
        return kv_err_set(err, KV_ENOMEM, "out of memory");
    rb->prefix_len = strlen(rb->prefix);
    if (rb->prefix_len == 0) {
        rc = kv_err_set(err, KV_EINVAL,
                        "key_prefix must not be empty (clear would empty the "
                        "whole database)");
        goto fail;
    }
    cc.url = conf->url;
    cc.label = rb->label;
    cc.op_timeout_ms = conf->op_timeout_ms;
    cc.scripts = redis_scripts;
    cc.nscripts = SCRIPT__COUNT;
    rc = redis_conn_open(b->loop, &cc, &rb->conn, err);
    if (rc != 0)
        goto fail;
    return 0;

fail:
    free(rb->prefix);
    rb->prefix = NULL;
    return rc;
}

/* Completes every pending call with KV_EUNAVAIL and lets the connection
 * wind down by itself; nothing of the instance is used afterwards. */
static void redis_kv_close(kv_backend *b)
{
    struct redis_backend *rb = redis_of(b);

    redis_conn_close(rb->conn);
    rb->conn = NULL;
    free(rb->prefix);
    rb->prefix = NULL;
}

/*
 * A Redis server is shared: what this store holds is not known. Reports
 * how often the store's connection was re-established.
 */
static void redis_kv_stats(kv_backend *b, kv_backend_stats *out)
{
    struct redis_backend *rb = redis_of(b);

    out->known = false;
    out->reconnects = rb->conn ? redis_conn_reconnects(rb->conn) : 0;
}

static bool redis_kv_healthy(kv_backend *b)
{
    struct redis_backend *rb = redis_of(b);

    return rb->conn && redis_conn_ready(rb->conn);
}

const struct kv_backend_ops redis_backend_ops = {
    .version = KV_BACKEND_OPS_VERSION,
    .name = "redis",
    .size = sizeof(struct redis_backend),
    .open = redis_kv_open,
    .close = redis_kv_close,
    .get = redis_kv_get,
    .put = redis_kv_put,
    .del = redis_kv_del,
    .set_ttl = redis_kv_set_ttl,
    .cas = redis_kv_cas,
    .incr = redis_kv_incr,
    .mget = redis_kv_mget,
    .keys = redis__kv_keys,
    .clear = redis__kv_clear,
    .stats = redis_kv_stats,
    .healthy = redis_kv_healthy,
};
