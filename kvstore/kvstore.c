/*
 * kvstore.c - the store registry and the one request entry point.
 *
 * The registry owns every store: its configuration, its backend instance
 * and its per-op statistics. kv_store_call() validates a request, wraps the
 * caller's callback in a small call record (timing, error counting, change
 * notification) and dispatches to the backend's method. A CAS by ETag is a
 * read followed by a byte-exact CAS, so a change between the two fails the
 * swap instead of overwriting it.
 *
 * Runs on: the event loop thread, like everything in this module.
 */
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "kvstore/kvstore.h"

const double kv_latency_bounds_us[KV_LATENCY_BUCKETS] = {
    50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000, 500000, 2000000,
};

struct kv_store {
    kv_registry *reg;
    kv_store_conf conf;
    kv_backend *backend;
    kv_op_stats stats[KV_OP__COUNT];
};

struct kv_registry {
    uv_loop_t *loop;
    const struct kv_backend_ops *const *backends; /* NULL-terminated */
    kv_limits limits;
    kv_store **stores;
    size_t nstores, cap;
    kv_change_cb on_change;
    void *on_change_ud;
    uint64_t (*now_ms)(kv_backend *b);
};

/* One request in flight: what the completion needs once the backend
 * answers. Freed when the caller's callback has returned. */
typedef struct kv_call {
    kv_store *store;
    kv_req req;  /* ETag CAS: kept for the second step */
    char *owned; /* copies of key and expected bytes, or NULL */
    uint64_t start_ns;
    kv_done_cb done;
    void *ud;
} kv_call;

static uint64_t clock_monotonic_ms(kv_backend *b)
{
    (void)b;
    return uv_hrtime() / 1000000u;
}

static const char *const default_name = "default";

/* ------------------------------------------------------------------ */

void kv_store_conf_clear(kv_store_conf *conf)
{
    if (!conf)
        return;
    free(conf->url);
    free(conf->key_prefix);
    free(conf->table);
    free(conf->collection);
    conf->url = conf->key_prefix = conf->table = conf->collection = NULL;
}

static int dup_opt(char **dst, const char *src)
{
    *dst = NULL;
    if (src && !(*dst = strdup(src)))
        return KV_ENOMEM;
    return 0;
}

int kv_store_conf_copy(kv_store_conf *dst, const kv_store_conf *src)
{
    *dst = *src;
    dst->url = dst->key_prefix = dst->table = dst->collection = NULL;
    if (dup_opt(&dst->url, src->url) ||
        dup_opt(&dst->key_prefix, src->key_prefix) ||
        dup_opt(&dst->table, src->table) ||
        dup_opt(&dst->collection, src->collection)) {
        kv_store_conf_clear(dst);
        return KV_ENOMEM;
    }
    return 0;
}

/* ------------------------------------------------------------------ */

kv_registry *kv_registry_new(uv_loop_t *loop,
                             const struct kv_backend_ops *const *backends,
                             const kv_limits *limits)
{
    kv_registry *reg = calloc(1, sizeof *reg);

    if (!reg)
        return NULL;
    reg->loop = loop;
    reg->backends = backends;
    reg->now_ms = clock_monotonic_ms;
    if (limits)
        reg->limits = *limits;
    if (!reg->limits.max_key_bytes)
        reg->limits.max_key_bytes = KV_MAX_KEY_BYTES_DEFAULT;
    if (!reg->limits.max_value_bytes)
        reg->limits.max_value_bytes = KV_MAX_VALUE_BYTES_DEFAULT;
    if (!reg->limits.max_stores)
        reg->limits.max_stores = KV_MAX_STORES_DEFAULT;
    if (!reg->limits.max_mget_keys)
        reg->limits.max_mget_keys = KV_KEYS_LIMIT_MAX;
    if (!reg->limits.max_page_keys)
        reg->limits.max_page_keys = KV_KEYS_LIMIT_MAX;
    return reg;
}

static void store_free(kv_store *s)
{
    if (!s)
        return;
    if (s->backend) {
        if (s->backend->ops->close)
            s->backend->ops->close(s->backend);
        free(s->backend);
    }
    kv_store_conf_clear(&s->conf);
    free(s);
}

void kv_registry_free(kv_registry *reg)
{
    size_t i;

    if (!reg)
        return;
    for (i = 0; i < reg->nstores; i++)
        store_free(reg->stores[i]);
    free(reg->stores);
    free(reg);
}

void kv_registry_on_change(kv_registry *reg, kv_change_cb cb, void *ud)
{
    reg->on_change = cb;
    reg->on_change_ud = ud;
}

void kv_registry_set_clock(kv_registry *reg, uint64_t (*now_ms)(kv_backend *b))
{
    reg->now_ms = now_ms ? now_ms : clock_monotonic_ms;
}

static const struct kv_backend_ops *backend_lookup(const kv_registry *reg,
                                                   const char *name)
{
    const struct kv_backend_ops *const *p;

    for (p = reg->backends; p && *p; p++)
        if (strcmp((*p)->name, name) == 0)
            return *p;
    return NULL;
}

static kv_store *store_lookup(const kv_registry *reg, const char *name,
                              size_t len)
{
    size_t i;

    for (i = 0; i < reg->nstores; i++) {
        kv_store *s = reg->stores[i];
        if (strlen(s->conf.name) == len && memcmp(s->conf.name, name, len) == 0)
            return s;
    }
    return NULL;
}

/*
 * Creates a store from conf (copied), opens its backend and appends it.
 * On failure nothing is added and err says why.
 */
static int store_open(kv_registry *reg, const kv_store_conf *conf,
                      kv_store **out, kv_err *err)
{
    const struct kv_backend_ops *ops = backend_lookup(reg, conf->backend);
    kv_store *s = NULL;
    int rc;

    if (!ops)
        return kv_err_set(err, KV_EINVAL, "unknown backend \"%s\"",
                          conf->backend);
    if (reg->nstores == reg->cap) {
        size_t cap = reg->cap ? reg->cap * 2 : 8;
        kv_store **grown = realloc(reg->stores, cap * sizeof *grown);
        if (!grown)
            return kv_err_set(err, KV_ENOMEM, "out of memory");
        reg->stores = grown;
        reg->cap = cap;
    }
    s = calloc(1, sizeof *s);
    if (!s || kv_store_conf_copy(&s->conf, conf) != 0) {
        rc = kv_err_set(err, KV_ENOMEM, "out of memory");
        goto fail;
    }
    if (!s->conf.op_timeout_ms)
        s->conf.op_timeout_ms = KV_OP_TIMEOUT_MS_DEFAULT;
    s->reg = reg;
    s->backend = calloc(1, ops->size);
    if (!s->backend) {
        rc = kv_err_set(err, KV_ENOMEM, "out of memory");
        goto fail;
    }
    s->backend->ops = ops;
    s->backend->loop = reg->loop;
    s->backend->conf = &s->conf;
    s->backend->now_ms = reg->now_ms;
    rc = ops->open(s->backend, &s->conf, err);
    if (rc != 0) {
        free(s->backend); /* open failed: nothing to close */
        s->backend = NULL;
        goto fail;
    }
    reg->stores[reg->nstores++] = s;
    *out = s;
    return 0;

fail:
    store_free(s);
    return rc;
}

int kv_registry_add(kv_registry *reg, const kv_store_conf *conf, kv_err *err)
{
    kv_store *s;
    int rc;

    rc = kv_check_store_name(conf->name, strlen(conf->name), err);
    if (rc != 0)
        return rc;
    if (store_lookup(reg, conf->name, strlen(conf->name)))
        return kv_err_set(err, KV_ESTORE, "store %s is configured twice",
                          conf->name);
    return store_open(reg, conf, &s, err);
}

int kv_registry_find(kv_registry *reg, const char *name, size_t len,
                     kv_store **out, kv_err *err)
{
    kv_store_conf conf;
    kv_store *def;
    int rc;

    *out = store_lookup(reg, name, len);
    if (*out)
        return 0;
    rc = kv_check_store_name(name, len, err);
    if (rc != 0)
        return rc;
    if (reg->nstores >= reg->limits.max_stores)
        return kv_err_set(err, KV_ELIMIT,
                          "store limit reached (%zu stores); configure "
                          "server.max_stores",
                          reg->limits.max_stores);

    /* Same backend and server as "default", a namespace of its own. */
    memset(&conf, 0, sizeof conf);
    memcpy(conf.name, name, len);
    def = store_lookup(reg, default_name, strlen(default_name));
    if (def) {
        memcpy(conf.backend, def->conf.backend, sizeof conf.backend);
        conf.url = def->conf.url;
        conf.op_timeout_ms = def->conf.op_timeout_ms;
    } else {
        strcpy(conf.backend, "memory");
    }
    return store_open(reg, &conf, out, err);
}

kv_store *kv_registry_at(const kv_registry *reg, size_t index)
{
    return index < reg->nstores ? reg->stores[index] : NULL;
}

const kv_limits *kv_registry_limits(const kv_registry *reg)
{
    return &reg->limits;
}

const char *kv_store_name(const kv_store *s)
{
    return s->conf.name;
}

const char *kv_store_backend_name(const kv_store *s)
{
    return s->backend->ops->name;
}

const kv_store_conf *kv_store_conf_of(const kv_store *s)
{
    return &s->conf;
}

bool kv_store_healthy(const kv_store *s)
{
    return !s->backend->ops->healthy || s->backend->ops->healthy(s->backend);
}

void kv_store_stats(const kv_store *s, kv_backend_stats *out)
{
    memset(out, 0, sizeof *out);
    if (s->backend->ops->stats)
        s->backend->ops->stats(s->backend, out);
}

const kv_op_stats *kv_store_op_stats(const kv_store *s, kv_op op)
{
    return &s->stats[op];
}

/* ------------------------------------------------------------------ */
/* Requests                                                             */

static kv_method method_of(const struct kv_backend_ops *ops, kv_op op)
{
    switch (op) {
    case KV_OP_GET:
        return ops->get;
    case KV_OP_PUT:
        return ops->put;
    case KV_OP_DEL:
        return ops->del;
    case KV_OP_SET_TTL:
        return ops->set_ttl;
    case KV_OP_CAS:
        return ops->cas;
    case KV_OP_INCR:
        return ops->incr;
    case KV_OP_MGET:
        return ops->mget;
    case KV_OP_KEYS:
        return ops->keys;
    case KV_OP_CLEAR:
        return ops->clear;
    case KV_OP__COUNT:
        break;
    }
    return NULL;
}

static bool is_hex_etag(kv_bytes b)
{
    size_t i;

    if (b.len != KV_ETAG_HEX)
        return false;
    for (i = 0; i < b.len; i++) {
        char c = b.ptr[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}

/* Checks a request against the contract and the limits. */
static int validate(const kv_registry *reg, const kv_req *req, kv_err *err)
{
    const kv_limits *lim = &reg->limits;
    kv_err why = {0};
    size_t i;
    int rc;

    switch (req->op) {
    case KV_OP_MGET:
        if (req->nkeys > lim->max_mget_keys)
            return kv_err_set(err, KV_ELIMIT,
                              "mget takes at most %zu keys (max_mget_keys)",
                              lim->max_mget_keys);
        for (i = 0; i < req->nkeys; i++)
            if ((rc = kv_check_key(req->keys[i], lim->max_key_bytes, err)))
                return rc;
        return 0;
    case KV_OP_KEYS:
        if (req->limit > lim->max_page_keys)
            return kv_err_set(err, KV_EINVAL,
                              "limit must be 1 to %zu (max_page_keys)",
                              lim->max_page_keys);
        if (req->prefix.len > 0 &&
            kv_check_key(req->prefix, lim->max_key_bytes, &why) != 0)
            return kv_err_set(err, KV_EINVAL, "bad prefix: %s", why.msg);
        return 0;
    case KV_OP_CLEAR:
        return 0;
    default:
        break;
    }
    if ((rc = kv_check_key(req->key, lim->max_key_bytes, err)))
        return rc;
    if (req->ttl_s < 0 || req->ttl_s > KV_MAX_TTL_S)
        return kv_err_set(err, KV_EINVAL, "ttl must be 0 to %lld seconds",
                          KV_MAX_TTL_S);
    if ((req->op == KV_OP_PUT || (req->op == KV_OP_CAS && req->has_value)) &&
        req->value.len > lim->max_value_bytes)
        return kv_err_set(err, KV_ETOOBIG,
                          "value is %zu bytes, the limit is %zu",
                          req->value.len, lim->max_value_bytes);
    if (req->op == KV_OP_CAS && req->has_expected && req->expected_is_etag &&
        !is_hex_etag(req->expected))
        return kv_err_set(err, KV_EINVAL, "an ETag is 16 lowercase hex digits");
    return 0;
}

static void record(kv_store *s, kv_op op, int status, uint64_t start_ns)
{
    kv_op_stats *st = &s->stats[op];
    uint64_t us = (uv_hrtime() - start_ns) / 1000u;
    size_t b = 0;

    st->calls++;
    if (status != 0)
        st->errors++;
    st->latency_us_sum += us;
    while (b < KV_LATENCY_BUCKETS && (double)us > kv_latency_bounds_us[b])
        b++;
    st->buckets[b]++;
}

/* Tells the change hook about a mutation that took effect. */
static void notify_change(kv_store *s, const kv_req *req, const kv_reply *rep)
{
    kv_registry *reg = s->reg;
    kv_op op = req->op;

    if (!s->conf.notify || !reg->on_change)
        return;
    switch (op) {
    case KV_OP_DEL:
    case KV_OP_SET_TTL:
        if (!rep->found)
            return;
        break;
    case KV_OP_CAS:
        if (!rep->found || (!req->has_expected && !req->has_value))
            return;
        op = req->has_value ? KV_OP_PUT : KV_OP_DEL;
        break;
    default:
        break;
    }
    reg->on_change(s, op, op == KV_OP_CLEAR ? (kv_bytes){"", 0} : req->key,
                   reg->on_change_ud);
}

static void call_free(kv_call *c)
{
    free(c->owned);
    free(c);
}

static bool op_mutates(kv_op op)
{
    static const bool mutates[] = {
#define KV__OP_MUTATES(up, low, m) m,
        KV_OP_MAP(KV__OP_MUTATES)
#undef KV__OP_MUTATES
    };
    return mutates[op];
}

/* Records the outcome, answers the caller, then reports the change. */
static void call_finish(kv_call *c, int status, const kv_reply *rep,
                        const kv_err *err)
{
    record(c->store, c->req.op, status, c->start_ns);
    c->done(status, rep, err, c->ud);
    if (status == 0 && rep && op_mutates(c->req.op))
        notify_change(c->store, &c->req, rep);
    call_free(c);
}

static void call_done(int status, const kv_reply *rep, const kv_err *err,
                      void *ud)
{
    call_finish(ud, status, rep, err);
}

/*
 * Second step of a CAS by ETag: the current value is known. Swap only if
 * its ETag matches, comparing the very bytes read, so a concurrent change
 * makes the swap fail rather than be overwritten.
 */
static void etag_read_done(int status, const kv_reply *rep, const kv_err *err,
                           void *ud)
{
    kv_call *c = ud;
    kv_backend *b = c->store->backend;
    char etag[KV_ETAG_HEX + 1];
    kv_reply miss = {.op = KV_OP_CAS, .found = false};
    kv_req cas;
    kv_err err2 = {0};
    char *expected;
    int rc;

    if (status != 0) {
        call_finish(c, status, NULL, err);
        return;
    }
    if (!rep->found) {
        call_finish(c, 0, &miss, NULL);
        return;
    }
    kv_etag(rep->value, etag);
    if (memcmp(etag, c->req.expected.ptr, KV_ETAG_HEX) != 0) {
        call_finish(c, 0, &miss, NULL);
        return;
    }
    expected = malloc(rep->value.len ? rep->value.len : 1);
    if (!expected) {
        kv_err_set(&err2, KV_ENOMEM, "out of memory");
        call_finish(c, KV_ENOMEM, NULL, &err2);
        return;
    }
    memcpy(expected, rep->value.ptr, rep->value.len);
    cas = c->req;
    cas.expected = (kv_bytes){expected, rep->value.len};
    cas.expected_is_etag = false;
    rc = b->ops->cas(b, &cas, call_done, c, &err2);
    free(expected); /* borrowed by the backend for the call only */
    if (rc != 0)
        call_finish(c, rc, NULL, &err2);
}

/*
 * Copies the key, value and expected bytes of req into one block owned by
 * the call, so they outlive the caller's buffers while a backend answers.
 */
static int call_own_bytes(kv_call *c)
{
    kv_req *r = &c->req;
    size_t n = r->key.len + r->value.len + r->expected.len;
    char *p = malloc(n ? n : 1);

    if (!p)
        return KV_ENOMEM;
    c->owned = p;
    if (r->key.len)
        memcpy(p, r->key.ptr, r->key.len);
    r->key.ptr = p;
    p += r->key.len;
    if (r->value.len)
        memcpy(p, r->value.ptr, r->value.len);
    r->value.ptr = p;
    p += r->value.len;
    if (r->expected.len)
        memcpy(p, r->expected.ptr, r->expected.len);
    r->expected.ptr = p;
    return 0;
}

int kv_store_call(kv_store *s, const kv_req *req, kv_done_cb done, void *ud,
                  kv_err *err)
{
    kv_backend *b = s->backend;
    bool by_etag =
        req->op == KV_OP_CAS && req->has_expected && req->expected_is_etag;
    kv_method m;
    kv_call *c;
    int rc;

    if ((unsigned)req->op >= KV_OP__COUNT)
        return kv_err_set(err, KV_EINVAL, "unknown operation");
    if ((rc = validate(s->reg, req, err)) != 0)
        return rc;
    m = method_of(b->ops, by_etag ? KV_OP_GET : req->op);
    if (!m || (by_etag && !b->ops->cas))
        return kv_err_set(err, KV_ENOTSUP, "backend %s does not support %s",
                          b->ops->name, kv_op_name(req->op));
    c = malloc(sizeof *c);
    if (!c)
        return kv_err_set(err, KV_ENOMEM, "out of memory");
    c->store = s;
    c->req = *req;
    c->owned = NULL;
    c->start_ns = uv_hrtime();
    c->done = done;
    c->ud = ud;
    /* A backend may answer after the caller's buffers are gone; the change
     * hook and the second ETag step need key and bytes then. */
    if ((by_etag || (s->conf.notify && op_mutates(req->op))) &&
        call_own_bytes(c) != 0) {
        free(c);
        return kv_err_set(err, KV_ENOMEM, "out of memory");
    }
    if (by_etag) {
        kv_req get = {.op = KV_OP_GET, .key = c->req.key};
        rc = m(b, &get, etag_read_done, c, err);
    } else {
        rc = m(b, &c->req, call_done, c, err);
    }
    if (rc != 0) {
        record(s, req->op, rc, c->start_ns);
        call_free(c);
    }
    return rc;
}
