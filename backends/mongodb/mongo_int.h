/*
 * mongo_int.h - internals shared by the files of the mongodb backend and
 * its unit tests: the named constants, the pure functions that turn kvbus
 * requests into BSON and MongoDB answers back into kvbus codes (value
 * typing, prefix regexes, error mapping, the connection URI, the server
 * label used in logs), and the record of one call as the loop side
 * (mongo_kv.c) and the worker side (mongo_ops.c) share it. Keys cursors
 * are the kvstore core's (kv_cursor_encode in kvstore.h).
 *
 * The pure functions touch neither the network nor the loop and are safe
 * on any thread.
 */
#ifndef KVBUS_BACKEND_MONGO_INT_H
#define KVBUS_BACKEND_MONGO_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mongoc/mongoc.h>

#include "backends/mongodb/mongo_conn.h"
#include "kvstore/kvstore.h"

#define MONGO_BACKOFF_MIN_MS 100   /* first ping after the server failed */
#define MONGO_BACKOFF_MAX_MS 5000  /* pings while down double up to this */
#define MONGO_HEALTH_PING_MS 2000  /* idle time before a ping while up */
#define MONGO_QUEUE_MAX 4096       /* calls waiting for a worker, per pool */
#define MONGO_THREADPOOL_DEFAULT 4 /* libuv's UV_THREADPOOL_SIZE default */
#define MONGO_THREADPOOL_MAX 1024  /* libuv's largest pool */
#define MONGO_INCR_ATTEMPTS 5      /* incr steps retried after a race */
#define MONGO_COLLECTION_MAX 200   /* bytes in a configured collection */
#define MONGO_WHERE_MAX 160        /* "host:port/db" label, NUL included */

#define MONGO_DB_DEFAULT "kvbus"      /* when the URL names no database */
#define MONGO_COLLECTION_PREFIX "kv." /* default collection: kv.<store> */
#define MONGO_APPNAME "kvbusd"        /* shown in the server's logs */
#define MONGO_TTL_INDEX "ttl_1"       /* name of the TTL index */
#define MONGO_ERROR_API_VERSION 2     /* server errors in their own domain */

/* Document fields (Nuxeo's MongoDBKeyValueStore). */
#define MONGO_F_ID "_id"
#define MONGO_F_VALUE "v"
#define MONGO_F_TTL "ttl"

/* Server error codes kvbus tells apart (MongoDB's error_codes.yml). */
#define MONGO_CODE_BAD_VALUE 2
#define MONGO_CODE_TYPE_MISMATCH 14
#define MONGO_CODE_MAX_TIME_EXPIRED 50
#define MONGO_CODE_DUPLICATE_KEY 11000
#define MONGO_CODE_DUPLICATE_KEY_OLD 11001

/* How a value is stored in `v`. */
typedef enum mongo_vtype {
    MONGO_V_INT64,  /* canonical 64-bit decimal text */
    MONGO_V_STRING, /* other valid UTF-8 without NUL */
    MONGO_V_BINARY, /* anything else, binary subtype 0 */
} mongo_vtype;

/*
 * The type value is stored as, by the canonical rules of kv_value.c.
 * For MONGO_V_INT64, *num receives the integer (num may be NULL).
 */
mongo_vtype mongo_classify(kv_bytes value, int64_t *num);

/* Appends value to doc as field, typed by mongo_classify. False when the
 * document would grow past BSON's limits. */
bool mongo_append_value(bson_t *doc, const char *field, kv_bytes value);

/*
 * Appends {field: {$in: [...]}} matching every way the bytes of value may
 * be stored: its own type first, then, for canonical integer text, the
 * same text as a string and as binary, and for other UTF-8, as binary
 * (written so by another client), so a comparison is by the bytes a read
 * returns. False when the document would grow past BSON's limits.
 */
bool mongo_append_value_match(bson_t *doc, const char *field, kv_bytes value);

/*
 * The value bytes of a `v` element: a string's bytes and a binary's as
 * they are (borrowed from the document), an Int64 or Int32 as decimal
 * text written into num (KV_INT_TEXT_MAX + 1 bytes). Returns 0, or
 * KV_EINVAL (err set, naming the key) for any other BSON type: such a
 * document was not written by kvbus nor Nuxeo.
 */
int mongo_read_value(const bson_iter_t *it, char *num, kv_bytes *out,
                     kv_bytes key, kv_err *err);

/*
 * The regular expression matching every string that starts with prefix,
 * taken literally: "^" then the prefix with each of \ ^ $ . | ? * + ( )
 * [ ] { } / escaped by a backslash (an escape both PCRE and JavaScript
 * read as the character itself). out needs 2 * prefix.len + 2 bytes; the
 * result is NUL-terminated. Returns its length.
 */
size_t mongo_regex_prefix(kv_bytes prefix, char *out);

/*
 * The kvbus code for a driver or server error, and in *down whether it
 * says the server cannot be used at all (the store is then down until a
 * ping succeeds):
 * - network, server selection, handshake, authentication and protocol
 *   errors, and the server errors of a node that is shutting down or not
 *   primary -> KV_EUNAVAIL, down;
 * - 50 MaxTimeMSExpired -> KV_ETIMEDOUT;
 * - 14 TypeMismatch ($inc on a value that is not a number) -> KV_ENOTINT;
 * - anything else the server answered (duplicate keys included: callers
 *   that expect one check mongo_error_duplicate first) -> KV_EUNAVAIL, not
 *   down.
 * down may be NULL.
 */
int mongo_error_code(const bson_error_t *e, bool *down);

/* True for a duplicate key error (11000, 11001) from the server. */
bool mongo_error_duplicate(const bson_error_t *e);

/*
 * Parses url and sets what kvbusd needs unless the URL sets it itself:
 * serverSelectionTimeoutMS, connectTimeoutMS and socketTimeoutMS to
 * timeout_ms (so a dead or stopped server fails each call in bounded
 * time) and appname "kvbusd". Returns 0 with *out (free with
 * mongoc_uri_destroy), or KV_EINVAL (err never quotes the URL: it may hold
 * a password). NULL or "" is invalid: the backend needs a server.
 */
int mongo_uri_prepare(const char *url, uint32_t timeout_ms, mongoc_uri_t **out,
                      kv_err *err);

/* The database of uri, or MONGO_DB_DEFAULT when it names none. */
const char *mongo_uri_database(const mongoc_uri_t *uri);

/*
 * "host:port/db" of uri (the first host, "+N" when there are more), for
 * logs and messages; never the user or password. NUL-terminated in out.
 */
void mongo_uri_where(const mongoc_uri_t *uri, char *out, size_t cap);

/*
 * The collection of store `store`: `collection` when configured, else
 * "kv.<store>". A configured name must be 1..MONGO_COLLECTION_MAX bytes,
 * contain neither '$' nor NUL and not start with "system."; otherwise
 * KV_EINVAL. out needs MONGO_COLLECTION_MAX + 1 bytes.
 */
int mongo_collection_name(const char *store, const char *collection, char *out,
                          kv_err *err);

/* The ping delay after one of cur ms: doubles from MONGO_BACKOFF_MIN_MS
 * (when cur is 0) up to MONGO_BACKOFF_MAX_MS. */
uint32_t mongo_backoff_next(uint32_t cur);

/*
 * How many driver calls may run at once: one less than libuv's worker
 * pool (the value of UV_THREADPOOL_SIZE, NULL or unparsable = 4, capped
 * at 1024), at least 1, so other users of the pool (name resolution)
 * always find a thread.
 */
unsigned mongo_workers_for(const char *uv_threadpool_size);

/* ------------------------------------------------------------------ */
/* One call                                                             */

/*
 * A call in flight. The loop thread fills the inputs (copies, owned by the
 * call) before submitting it; the worker thread reads them and writes the
 * outputs; the loop thread reads the outputs after the work is done.
 * Nothing here is touched by two threads at once.
 */
struct mongo_call {
    mongo_job job; /* must be first */

    /* Inputs. */
    kv_op op;
    char store[KV_STORE_NAME_MAX + 1]; /* for messages */
    char collection[MONGO_COLLECTION_MAX + 1];
    kv_bytes key;
    kv_bytes value;    /* put, cas */
    kv_bytes expected; /* cas */
    bool has_value, has_expected;
    int64_t ttl_s;   /* put, cas, set_ttl */
    int64_t delta;   /* incr */
    kv_bytes *keys;  /* mget; points into the call's buffer */
    size_t nkeys;    /* mget */
    char *regex;     /* keys: the prefix regex, NULL = every key */
    kv_bytes after;  /* keys: resume after this key, len 0 = from start */
    size_t limit;    /* keys: page size */
    bool index_only; /* create the TTL index, nothing else */

    /* Outputs. */
    kv_reply reply; /* everything it points to is owned by the call */
    char *out;      /* get: the value bytes; keys: the cursor */

    /* Loop side only. */
    void *mb; /* the backend; NULL once it has closed */
    kv_done_cb done;
    void *ud;
};

/* The worker-thread body of every call (mongo_ops.c): runs c's op on
 * client against db.collection and fills c->reply, or sets
 * c->job.status, c->job.err and c->job.down. */
void mongo__call_work(mongo_job *j, mongoc_client_t *client, const char *db);

/* Frees what the outputs of c own (loop thread, after the work). */
void mongo__call_clear(struct mongo_call *c);

#endif
