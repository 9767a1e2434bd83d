/*
 * pg_conn.h - connections to one PostgreSQL server for the postgres
 * backend: a small pool of non-blocking libpq connections on a libuv loop,
 * a FIFO of waiting statements, per-statement deadlines, reconnection with
 * exponential backoff, and the up/down state the backend reports as its
 * health.
 *
 * A pool is shared by every store on the same loop whose url is the same
 * string: stores are tables, connections belong to the server. This keeps
 * the connection count at PG_POOL_CONNS per server however many stores are
 * created on first use. The list of pools is the one piece of process-wide
 * state of the backend; it is guarded by a mutex and keyed by loop, so a
 * loop per thread stays possible.
 *
 * A statement (pg_query) is allocated from its pool, filled by the caller,
 * then either submitted to the pool or kept by the caller in a pg_qlist
 * until it may run (the store waits for its table). Its deadline runs from
 * allocation. Its callback runs exactly once, on the loop thread: with the
 * result, with KV_ETIMEDOUT when the deadline passes first (a statement
 * already sent has its connection dropped and reopened: PQcancel would
 * block the loop), or with KV_EUNAVAIL when its connection is lost or the
 * pool goes down. Every parameter is sent in binary format and every
 * result comes back in binary format.
 *
 * Runs on: the event loop thread only (pg_pool_acquire/release take the
 * registry mutex).
 */
#ifndef KVBUS_BACKEND_PG_CONN_H
#define KVBUS_BACKEND_PG_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <uv.h>

#include "kvstore/kvstore.h"

#define PG_PARAMS_MAX 6 /* parameters of the largest statement */

typedef struct pg_pool pg_pool;
typedef struct pg_query pg_query;
struct pg_conn;

/* An intrusive FIFO of statements; a statement is in at most one. */
typedef struct pg_qlist {
    pg_query *head, *tail;
    size_t len;
} pg_qlist;

/*
 * Completion of a statement, on the loop thread, exactly once. status 0:
 * res is the result of its (last) statement. Otherwise status is a KV_E*
 * code and err says why; res is then the server's error result when there
 * is one (for its SQLSTATE), NULL when the server did not answer. res is
 * valid only until the callback returns. The query is freed after it.
 */
typedef void (*pg_query_cb)(pg_query *q, int status, const PGresult *res,
                            const kv_err *err);

struct pg_query {
    /* Filled by the caller before the statement is submitted. */
    const char *sql; /* borrowed until sent (the store's statements) */
    bool multi;      /* several statements, no parameters (simple query) */
    int nparams;     /* <= PG_PARAMS_MAX */
    Oid types[PG_PARAMS_MAX];
    const char *values[PG_PARAMS_MAX]; /* binary; NULL = SQL NULL */
    int lengths[PG_PARAMS_MAX];
    const char *store; /* the store's name, for messages; borrowed */
    void *owner;       /* the store; pg_pool_cancel() matches it */
    pg_query_cb done;
    void *ud;
    char *buf; /* `extra` bytes owned by the query, for parameter copies */

    /* Private to pg_conn.c. */
    pg_pool *pool;
    pg_qlist *list;        /* the list holding it, or NULL */
    pg_query *prev, *next; /* in list */
    struct pg_conn *conn;  /* the connection running it, or NULL */
    uv_timer_t timer;      /* the deadline; freed with the query */
    uint32_t timeout_ms;   /* from allocation to answer */
    bool finished;         /* done has run, or never will */
};

/*
 * The pool for conninfo (a libpq connection string or postgresql:// URL,
 * passed to libpq as is; NULL = libpq's defaults) on loop, created and
 * connecting when none exists yet, else shared. Release with
 * pg_pool_release(). Errors: KV_ENOMEM, KV_EUNAVAIL (a handle could not be
 * initialised).
 */
int pg_pool_acquire(uv_loop_t *loop, const char *conninfo, pg_pool **out,
                    kv_err *err);

/*
 * Drops one reference; the last one closes the connections and frees the
 * pool once its handles are closed. The caller has cancelled its
 * statements first (pg_pool_cancel). Accepts NULL.
 */
void pg_pool_release(pg_pool *p);

/* True while at least one connection is up. */
bool pg_pool_up(const pg_pool *p);

/* "host:port/db", never the password. */
const char *pg_pool_where(const pg_pool *p);

/*
 * How many times one of the pool's connections was established again after
 * having been up (lost, failed, or reset after a statement timed out). The
 * first connection of each does not count, even after failed attempts; a
 * server restart adds one per connection that comes back.
 */
uint64_t pg_pool_reconnects(const pg_pool *p);

/*
 * 0 when statements may be submitted; KV_EUNAVAIL (err names the store and
 * the server, and why) while the pool is down: no connection up and the
 * latest attempt failed. Until the first attempt settles, statements wait.
 */
int pg_pool_check(const pg_pool *p, const char *store, kv_err *err);

/*
 * A new statement of pool p whose deadline is timeout_ms from now, with
 * `extra` bytes at q->buf, everything else zeroed. NULL when out of
 * memory. The caller then either submits it, completes it with
 * pg_query_complete(), or discards it with pg_query_discard().
 */
pg_query *pg_query_new(pg_pool *p, uint32_t timeout_ms, size_t extra);

/* Frees a statement whose callback never ran and never will (it was not
 * submitted, or pg_pool_submit refused it). */
void pg_query_discard(pg_query *q);

/*
 * Queues q on its pool. Returns 0 (its callback will run), or KV_EUNAVAIL
 * (pool down, or PG_QUEUE_MAX statements waiting) with err set and q
 * untouched: the caller discards or completes it.
 */
int pg_pool_submit(pg_query *q, kv_err *err);

/*
 * Completes q now with status and err (res NULL): removes it from its
 * list, runs its callback, frees it. For statements the caller holds.
 */
void pg_query_complete(pg_query *q, int status, const kv_err *err);

/*
 * Completes every statement of owner with err (waiting in the pool, or
 * running: those finish on the server and their results are dropped).
 */
void pg_pool_cancel(pg_pool *p, void *owner, const kv_err *err);

/* List operations (the caller's lists: statements waiting for a table). */
void pg_qlist_push(pg_qlist *l, pg_query *q);
pg_query *pg_qlist_pop(pg_qlist *l);

#endif
