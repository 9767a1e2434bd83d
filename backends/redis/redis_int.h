/*
 * redis_int.h - internals of the Redis backend shared between its files,
 * and the pure parts tests/unit/test_redis.c checks: URL parsing, glob
 * escaping, the keys() cursor and page selection, and the mapping of Redis
 * error replies to kvbus codes (those are pure functions, safe on any
 * thread). The rest (log line, connection and KV adapter internals) runs
 * on the event loop thread.
 *
 * Not a public interface: the backend is used through redis.h and the
 * connection through redis_conn.h.
 */
#ifndef KVBUS_BACKEND_REDIS_INT_H
#define KVBUS_BACKEND_REDIS_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backends/redis/redis_conn.h"
#include "kvstore/kvstore.h"
#include "pubsub/pubsub.h"

struct redisAsyncContext;
struct uv_loop_s;

#define REDIS_DEFAULT_PORT 6379
#define REDIS_HOST_MAX 255       /* bytes of a host name or address */
#define REDIS_DB_MAX 999999999   /* largest SELECT index a URL may name */
#define REDIS_ADDR_MAX 263       /* "[" host "]:" port */
#define REDIS_CURSOR_MAX 58      /* 20 digits '.' 16 hex '.' 20 digits */
#define REDIS_CURSOR_HASH_HEX 16 /* hex digits of a cursor's hash bound */

/* ------------------------------------------------------------------ */
/* URLs                                                                 */

/*
 * A parsed redis://[[user:]password@]host[:port][/db] URL. user and
 * password are percent-decoded copies owned by the struct (NULL when
 * absent); free them with redis__url_clear().
 */
typedef struct redis_url {
    char host[REDIS_HOST_MAX + 1]; /* name or address, no brackets */
    bool ipv6;                     /* host was written as [address] */
    uint16_t port;                 /* 1..65535, default 6379 */
    int db;                        /* SELECT index, default 0 */
    char *user;                    /* ACL user; NULL = AUTH without one */
    char *password;                /* NULL = no AUTH */
} redis_url;

/*
 * Parses text into *out (zeroed first). The scheme is redis:// (any case);
 * userinfo runs to the last '@', and without a ':' it is the password alone,
 * as redis-cli reads it; user and password are percent-decoded. A missing
 * port is 6379, a missing or empty path db 0. Query strings, fragments,
 * rediss:// (TLS) and unix sockets are refused. On error returns KV_EINVAL
 * or KV_ENOMEM with a message in err that never quotes the URL (it may hold
 * a password), and *out holds nothing to free.
 */
int redis__url_parse(const char *text, redis_url *out, kv_err *err);

/* Frees the strings of u and zeroes it. Accepts NULL. */
void redis__url_clear(redis_url *u);

/* Writes "host:port" ("[v6]:port") into buf; returns snprintf's length. */
int redis__url_addr(const redis_url *u, char *buf, size_t size);

/* ------------------------------------------------------------------ */
/* Logging                                                              */

enum redis_log_level {
    REDIS_LOG_ERROR = 0,
    REDIS_LOG_WARN = 1,
    REDIS_LOG_INFO = 2,
};

/*
 * One line on stderr in the server's log format (UTC timestamp, level,
 * message). The kvstore layer has no log sink of its own, so the backend
 * writes its few state-change lines itself. Never pass values or
 * passwords.
 */
void redis__log(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ------------------------------------------------------------------ */
/* Pub/sub wire formats (pure; docs/cluster.md)                         */

#define REDIS_PS_MAGIC "kvbus1" /* first word of the kvbus envelope */
#define REDIS_PS_HEAD_MAX 192   /* magic, node id, two u64, spaces, LF */

/* The origin stamp a received message carries. */
typedef struct redis_ps_stamp {
    char node[PS_NODE_ID_MAX + 1]; /* NUL-terminated */
    uint64_t seq;                  /* 0 in the nuxeo format */
    uint64_t ts_ms;                /* 0 in the nuxeo format */
    const char *data;              /* payload, inside the parsed bytes */
    size_t len;
} redis_ps_stamp;

/*
 * Writes the head of the kvbus envelope of m, "kvbus1 <node> <seq> <ts>\n",
 * into buf (REDIS_PS_HEAD_MAX bytes); the payload bytes follow it on the
 * wire. Returns the length written (not NUL-terminated).
 */
size_t redis__ps_envelope_head(const ps_message *m, char *buf);

/*
 * Parses a kvbus envelope (p, len) into *out, whose data points into p.
 * Returns 0, or -1 when it is not a well-formed envelope of version 1
 * (wrong magic, node id empty, too long or not printable, numbers not
 * canonical decimal, no LF).
 */
int redis__ps_envelope_parse(const char *p, size_t len, redis_ps_stamp *out);

/*
 * Parses a Nuxeo message "<node_id>:<payload>" (split at the first ':')
 * into *out (seq and ts_ms 0). Returns 0, or -1 without a ':' or with an
 * empty, too long or unprintable node id.
 */
int redis__ps_nuxeo_parse(const char *p, size_t len, redis_ps_stamp *out);

/* ------------------------------------------------------------------ */
/* Keys: glob escaping, cursors, pages                                  */

/*
 * Writes p (len bytes) into out with the glob characters of Redis's MATCH
 * (`*`, `?`, `[`, `]`, `\`) escaped by a backslash, so the pattern matches
 * the bytes literally. out must hold 2 * len bytes; returns the length
 * written (not NUL-terminated).
 */
size_t redis__glob_escape(const char *p, size_t len, char *out);

/*
 * Where a keys() listing stands: the SCAN cursor to issue next and, when a
 * page ended inside that SCAN step's batch, the largest key hash already
 * returned from it and the cursor SCAN answered then. The step is re-run;
 * if SCAN answers the same next cursor, the batch covers the same part of
 * the keyspace and keys hashing at or below the bound are skipped; if not
 * (the table was resized), nothing is skipped (repeats, never misses).
 */
typedef struct redis_cursor {
    uint64_t scan;  /* Redis SCAN cursor; 0 = from the start */
    bool bounded;   /* after and next are set */
    uint64_t after; /* largest key hash returned from this step */
    uint64_t next;  /* the next cursor SCAN gave for this step */
} redis_cursor;

/*
 * Cursor text: empty = the start, "<scan>" or "<scan>.<after>.<next>",
 * with scan and next in canonical decimal and after as 16 lowercase hex
 * digits. Decoding accepts exactly what encoding writes (plus "0" for the
 * start); anything else is KV_ECURSOR.
 */
int redis__cursor_decode(kv_bytes text, redis_cursor *out, kv_err *err);
/* Writes the text of c into buf (REDIS_CURSOR_MAX + 1 bytes, NUL-ended);
 * returns its length. */
size_t redis__cursor_encode(const redis_cursor *c, char *buf);

/* The hash that orders keys inside one SCAN batch (XXH3-64). */
uint64_t redis__key_hash(const char *p, size_t len);

/* One key of a SCAN batch while a page is being chosen. */
typedef struct redis_scan_key {
    uint64_t hash; /* redis__key_hash of the key */
    size_t index;  /* position in the SCAN reply */
} redis_scan_key;

/*
 * Decides how much of one SCAN batch a page takes. keys (n entries, in
 * any order) are the batch's matching keys not already returned; room is
 * how many more keys the page may hold (>= 1); may_split says whether the
 * batch may be cut (the page is empty and the step ran with the COUNT a
 * re-run will use, so that a re-run gives the same batch).
 * - All fit: returns n, order untouched.
 * - They do not fit and may_split is false: returns 0; the page ends and
 *   the next one re-runs this SCAN step.
 * - They do not fit and may_split is true: sorts keys by hash and returns
 *   how many of the lowest to take, `room` or fewer, so that no hash value
 *   is split between two pages; the next page re-runs the step and skips
 *   hashes up to the last one taken. Only when more than `room` keys share
 *   one 64-bit hash (never seen in practice) is the whole run taken,
 *   exceeding room, because splitting it would lose keys.
 */
size_t redis__scan_pick(redis_scan_key *keys, size_t n, size_t room,
                        bool may_split);

/* ------------------------------------------------------------------ */
/* Error replies                                                        */

/*
 * The kvbus code for a Redis error reply (msg, len bytes, as the server
 * sent it) to a call made for op: for incr, "value is not an integer" and
 * WRONGTYPE are KV_ENOTINT and "would overflow" KV_EOVERFLOW; a key of
 * another Redis type is KV_EINVAL for the other ops; out-of-memory is
 * KV_ENOMEM; everything else (LOADING, BUSY, READONLY, NOAUTH, NOPERM,
 * unknown errors...) is KV_EUNAVAIL, a server-side problem.
 */
int redis__error_code(kv_op op, const char *msg, size_t len);

/* ------------------------------------------------------------------ */
/* Connection internals (redis_conn.c, redis_uv.c)                      */

/*
 * Attaches hiredis context ac to loop on behalf of c: watches its socket
 * and, from hiredis's cleanup hook, calls redis__conn_context_gone. Takes
 * a reference on c, dropped once the poll handle is closed. 0, or -1 with
 * nothing attached.
 */
int redis__uv_attach(struct uv_loop_s *loop, struct redisAsyncContext *ac,
                     redis_conn *c);

/* hiredis is freeing ac (which stays valid until this returns). */
void redis__conn_context_gone(redis_conn *c, struct redisAsyncContext *ac);

/* References on a connection; the last unref frees it. */
void redis__conn_ref(redis_conn *c);
void redis__conn_unref(redis_conn *c);

/* ------------------------------------------------------------------ */
/* The KV adapter's shared parts (redis_kv.c, redis_scan.c)             */

#define REDIS_LABEL_BYTES (sizeof "store " + KV_STORE_NAME_MAX)

/* One instance: a store on a Redis server. */
struct redis_backend {
    struct kv_backend base; /* must be first */
    redis_conn *conn;
    char *prefix; /* key_prefix, NUL-terminated, never empty */
    size_t prefix_len;
    char label[REDIS_LABEL_BYTES]; /* "store <name>" */
};

/* A request waiting for its reply (keys and clear extend it). */
struct redis_op {
    struct redis_backend *rb;
    kv_op op;
    int64_t delta; /* incr: for the overflow message */
    size_t nkeys;  /* mget: keys asked */
    kv_done_cb done;
    void *ud;
};

/* A record for req of size bytes (>= sizeof(struct redis_op), zeroed), or
 * NULL. Freed with free(). */
struct redis_op *redis__op_new(struct redis_backend *rb, const kv_req *req,
                               size_t size, kv_done_cb done, void *ud);

/* Fills e with the kvbus error for a Redis error reply to op (a message
 * naming the store, with Redis's text); returns its code. */
int redis__reply_error(const struct redis_op *op, const redisReply *reply,
                       kv_err *e);

/* Sets KV_ENOMEM naming the store; returns it. */
int redis__err_nomem(const struct redis_backend *rb, kv_err *err);

/* The keys and clear methods (redis_scan.c). */
int redis__kv_keys(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                   kv_err *err);
int redis__kv_clear(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                    kv_err *err);

#endif
