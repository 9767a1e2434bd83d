/*
 * kvstore.h - the Key/Value store API of kvbus.
 *
 * A store is a named keyspace served by one backend (memory, redis,
 * postgres, mongodb). Every backend implements the same method table,
 * struct kv_backend_ops; the registry routes a store name to its backend,
 * creating unconfigured stores on first use with the default store's
 * backend and a namespace of their own. kv_store_call() is the one entry
 * point callers use: it validates the request against the limits, times it,
 * dispatches it to the backend and reports successful mutations to a
 * change hook (for pub/sub notifications).
 *
 * Everything here runs on the event loop thread. Every call is
 * asynchronous: a request goes in, and its completion callback runs on the
 * loop thread, possibly before the call returns (the memory backend answers
 * at once). A call that returns an error never also calls its callback.
 *
 * Semantics are those of SPEC section 5 (the Nuxeo KeyValueStore contract).
 */
#ifndef KVSTORE_H
#define KVSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kv_errors.h"

struct uv_loop_s;

#define KV_STORE_NAME_MAX 64      /* bytes, SPEC 5 */
#define KV_MAX_TTL_S 3153600000LL /* 100 years; longer is a 400 */
#define KV_INT_TEXT_MAX 20        /* "-9223372036854775808" */
#define KV_ETAG_HEX 16            /* XXH3-64 as lowercase hex */
#define KV_KEYS_LIMIT_DEFAULT 100 /* page size when none is asked */
#define KV_KEYS_LIMIT_MAX 10000   /* largest page a caller may ask */

/* A borrowed byte string; binary-safe, not NUL-terminated. */
typedef struct kv_bytes {
    const char *ptr;
    size_t len;
} kv_bytes;

#define KV_OP_MAP(X)                                                           \
    X(GET, get, false)                                                         \
    X(PUT, put, true)                                                          \
    X(DEL, delete, true)                                                       \
    X(SET_TTL, ttl, true)                                                      \
    X(CAS, cas, true)                                                          \
    X(INCR, incr, true)                                                        \
    X(MGET, mget, false)                                                       \
    X(KEYS, keys, false)                                                       \
    X(CLEAR, clear, true)

typedef enum kv_op {
#define KV__OP_ENUM(up, low, mutates) KV_OP_##up,
    KV_OP_MAP(KV__OP_ENUM)
#undef KV__OP_ENUM
        KV_OP__COUNT
} kv_op;

/* "get", "put", ... as used in metrics and notifications. */
const char *kv_op_name(kv_op op);

/*
 * One request. Only the fields of its op are read; all bytes are borrowed
 * for the duration of the call (a backend that answers later copies them).
 */
typedef struct kv_req {
    kv_op op;
    kv_bytes key;          /* every single-key op */
    kv_bytes value;        /* put; cas: the new value when has_value */
    bool has_value;        /* cas: false = delete on match */
    kv_bytes expected;     /* cas: the expected value when has_expected */
    bool has_expected;     /* cas: false = expect the key to be absent */
    bool expected_is_etag; /* cas: expected holds an ETag (16 hex), not bytes */
    int64_t ttl_s;         /* put, cas, set_ttl: seconds, 0 = no expiry */
    int64_t delta;         /* incr */
    const kv_bytes *keys;  /* mget */
    size_t nkeys;          /* mget */
    kv_bytes prefix;       /* keys: literal prefix, may be empty */
    kv_bytes cursor;       /* keys: from the previous page, empty = start */
    size_t limit;          /* keys: page size, 0 = KV_KEYS_LIMIT_DEFAULT */
} kv_req;

/*
 * The answer to a request. Everything it points to is owned by the backend
 * and valid only until the callback returns: copy what you keep.
 */
typedef struct kv_reply {
    kv_op op;
    bool found;         /* get/del/set_ttl: the key existed; cas: swapped */
    kv_bytes value;     /* get: the value */
    int64_t ttl_left_s; /* get: whole seconds left, rounded up; 0 = none */
    int64_t number;     /* incr: the new value */
    kv_bytes *values;   /* mget: values[i] answers keys[i]; ptr NULL = absent */
    kv_bytes *keys;     /* keys: this page */
    size_t nkeys;       /* keys: entries in keys */
    kv_bytes cursor;    /* keys: pass back for the next page; len 0 = done */
} kv_reply;

/*
 * Completion of a request, on the loop thread. status is 0 or a KV_E* code;
 * on error, reply is NULL and err says why.
 */
typedef void (*kv_done_cb)(int status, const kv_reply *reply, const kv_err *err,
                           void *ud);

/* Configuration of one store, as read from [store.<name>]. */
typedef struct kv_store_conf {
    char name[KV_STORE_NAME_MAX + 1];
    char backend[16];       /* "memory", "redis", "postgres", "mongodb" */
    char *url;              /* owned; NULL when the backend needs none */
    char *key_prefix;       /* redis; NULL = "kvbus:<store>:" */
    char *table;            /* postgres; NULL = "kv_<store>" */
    char *collection;       /* mongodb; NULL = "kv.<store>" */
    bool notify;            /* publish changes on topic kv.<store> */
    uint32_t op_timeout_ms; /* per backend call */
} kv_store_conf;

#define KV_OP_TIMEOUT_MS_DEFAULT 2000

/* Frees the strings a conf owns (not conf itself). Accepts NULL. */
void kv_store_conf_clear(kv_store_conf *conf);
/* Deep copy; returns 0 or KV_ENOMEM. */
int kv_store_conf_copy(kv_store_conf *dst, const kv_store_conf *src);

/* ------------------------------------------------------------------ */
/* Backends                                                             */

typedef struct kv_backend kv_backend;

/* What a backend reports about itself for /metrics. */
typedef struct kv_backend_stats {
    bool known; /* keys and bytes are known (memory; not Redis) */
    uint64_t keys;
    uint64_t bytes;
    uint64_t reconnects; /* connections re-established after a loss */
} kv_backend_stats;

typedef int (*kv_method)(kv_backend *b, const kv_req *req, kv_done_cb done,
                         void *ud, kv_err *err);

#define KV_BACKEND_OPS_VERSION 1

/*
 * The method table every backend implements. Append only; bump version.
 * The core allocates `size` bytes (zeroed) for each instance, whose first
 * member must be a struct kv_backend, then calls open. Each data method
 * validates nothing (kv_store_call did) and either returns an error without
 * calling done, or returns 0 and calls done exactly once, later or before it
 * returns. A NULL method answers KV_ENOTSUP.
 */
struct kv_backend_ops {
    int version;
    const char *name;
    size_t size;
    int (*open)(kv_backend *b, const kv_store_conf *conf, kv_err *err);
    /* Starts closing; the core frees the instance after close returns. */
    void (*close)(kv_backend *b);
    kv_method get, put, del, set_ttl, cas, incr, mget, keys, clear;
    void (*stats)(kv_backend *b, kv_backend_stats *out);
    /* True while the backend answers; NULL means always. */
    bool (*healthy)(kv_backend *b);
};

/* The base of every backend instance ("must be first"). */
struct kv_backend {
    const struct kv_backend_ops *ops;
    struct uv_loop_s *loop;
    const kv_store_conf *conf; /* owned by the store, outlives the backend */
    /* Milliseconds on a monotonic clock; tests may replace it. */
    uint64_t (*now_ms)(kv_backend *b);
};

/* ------------------------------------------------------------------ */
/* Stores and the registry                                              */

typedef struct kv_store kv_store;
typedef struct kv_registry kv_registry;

typedef struct kv_limits {
    size_t max_key_bytes;   /* default 1024 */
    size_t max_value_bytes; /* default 1 MiB */
    size_t max_stores;      /* stores created on first use count too */
    size_t max_mget_keys;   /* keys of one mget; default KV_KEYS_LIMIT_MAX */
    size_t max_page_keys;   /* largest keys page; default KV_KEYS_LIMIT_MAX */
} kv_limits;

#define KV_MAX_KEY_BYTES_DEFAULT 1024
#define KV_MAX_VALUE_BYTES_DEFAULT (1024 * 1024)
#define KV_MAX_STORES_DEFAULT 1024

/* Called after each successful mutation of a store with notify = true.
 * key is empty for clear. Runs on the loop thread. */
typedef void (*kv_change_cb)(const kv_store *s, kv_op op, kv_bytes key,
                             void *ud);

/* Latency histogram bucket bounds, in microseconds (Prometheus "le"). */
#define KV_LATENCY_BUCKETS 12
extern const double kv_latency_bounds_us[KV_LATENCY_BUCKETS];

/* Per-store, per-op counters, exported as metrics. */
typedef struct kv_op_stats {
    uint64_t calls;
    uint64_t errors;
    uint64_t latency_us_sum;
    uint64_t buckets[KV_LATENCY_BUCKETS + 1]; /* last = +Inf */
} kv_op_stats;

/*
 * A new registry on loop, with backends, a NULL-terminated array of method
 * tables the registry may route to (the server passes every compiled-in
 * backend). Free with kv_registry_free(). Returns NULL on allocation failure.
 */
kv_registry *kv_registry_new(struct uv_loop_s *loop,
                             const struct kv_backend_ops *const *backends,
                             const kv_limits *limits);

/* Closes every backend and frees the registry. Accepts NULL. */
void kv_registry_free(kv_registry *reg);

/* Sets the change hook (NULL to remove). */
void kv_registry_on_change(kv_registry *reg, kv_change_cb cb, void *ud);

/* Replaces the clock of every backend opened from now on (tests). */
void kv_registry_set_clock(kv_registry *reg, uint64_t (*now_ms)(kv_backend *b));

/*
 * Opens a configured store (the conf is copied). The store named "default"
 * decides the backend of stores created on first use; without one, they use
 * "memory". Errors: KV_ESTORE (bad or duplicate name), KV_EINVAL (unknown
 * backend), or whatever the backend's open reports.
 */
int kv_registry_add(kv_registry *reg, const kv_store_conf *conf, kv_err *err);

/*
 * The store called name (len bytes), created on first use when it is not
 * configured. Errors: KV_ESTORE for a name outside [A-Za-z0-9_.-]{1,64},
 * KV_ELIMIT past max_stores, or the backend's open error.
 */
int kv_registry_find(kv_registry *reg, const char *name, size_t len,
                     kv_store **out, kv_err *err);

/* Stores in creation order; index past the end gives NULL. */
kv_store *kv_registry_at(const kv_registry *reg, size_t index);
const kv_limits *kv_registry_limits(const kv_registry *reg);

const char *kv_store_name(const kv_store *s);
const char *kv_store_backend_name(const kv_store *s);
const kv_store_conf *kv_store_conf_of(const kv_store *s);
bool kv_store_healthy(const kv_store *s);
void kv_store_stats(const kv_store *s, kv_backend_stats *out);
const kv_op_stats *kv_store_op_stats(const kv_store *s, kv_op op);

/*
 * The one entry point for a request. Validates it (key, value size, TTL,
 * delta, limits), then dispatches to the backend. A CAS whose expected value
 * is an ETag reads the current value first and swaps only if its ETag
 * matches, comparing the bytes it read (so a change in between fails).
 * Returns 0 and calls done once, or returns an error and does not.
 */
int kv_store_call(kv_store *s, const kv_req *req, kv_done_cb done, void *ud,
                  kv_err *err);

/* ------------------------------------------------------------------ */
/* Value rules shared by every backend and front end                    */

/* 0 when key is valid UTF-8 of 1..max bytes with no control characters. */
int kv_check_key(kv_bytes key, size_t max_bytes, kv_err *err);
/* 0 when name is 1..64 bytes of [A-Za-z0-9_.-]. */
int kv_check_store_name(const char *name, size_t len, kv_err *err);
/* True when the bytes are valid UTF-8 (NUL allowed). */
bool kv_utf8_valid(const char *p, size_t len);

/* Parses the canonical decimal text of a signed 64-bit integer
 * (-?(0|[1-9][0-9]*), at most 20 bytes). Returns 0 or KV_ENOTINT. */
int kv_parse_int64(kv_bytes text, int64_t *out);
/* Writes the decimal text of v into buf (KV_INT_TEXT_MAX + 1 bytes);
 * returns its length. */
size_t kv_format_int64(int64_t v, char *buf);

/* The ETag of a value: XXH3-64 as 16 lowercase hex digits, NUL-terminated. */
void kv_etag(kv_bytes value, char out[KV_ETAG_HEX + 1]);

/* ------------------------------------------------------------------ */
/* Keys cursors of the backends that list in key order (kv_cursor.c)     */

#define KV_CURSOR_TAG "k."            /* every cursor starts with this */
#define KV_CURSOR_TAG_LEN 2           /* bytes of KV_CURSOR_TAG */
#define KV_CURSOR_KEY_MAX (64 * 1024) /* longest key a cursor may carry */

/* Bytes kv_cursor_encode writes for a key of key_len bytes (no NUL):
 * 2 + ceil(4 * key_len / 3), 1368 for a key of 1024 bytes. */
size_t kv_cursor_len(size_t key_len);

/*
 * The cursor that continues a listing after key: KV_CURSOR_TAG then the
 * key in unpadded base64url ("A-Za-z0-9-_"), so it is opaque, URL-safe and
 * never needs escaping. The format is part of the API: cursors given to
 * clients stay valid across versions. out needs kv_cursor_len(key.len) + 1
 * bytes (caller-owned); NUL-terminated. Returns the length. Any thread.
 */
size_t kv_cursor_encode(kv_bytes key, char *out);

/*
 * Decodes a cursor made by kv_cursor_encode into the key it resumes after.
 * out needs cursor.len bytes (caller-owned). Returns 0 and sets *out_len,
 * or KV_ECURSOR (with err set) for anything kv_cursor_encode cannot have
 * produced: a missing tag, a bad base64url character or length, non-zero
 * padding bits, or bytes that are not a valid key (empty, invalid UTF-8,
 * control characters, longer than KV_CURSOR_KEY_MAX). Any thread.
 */
int kv_cursor_decode(kv_bytes cursor, char *out, size_t *out_len, kv_err *err);

#endif
