/*
 * mongo_conn.h - a MongoDB server as the mongodb backend sees it: one
 * mongoc_client_pool_t, the jobs that run blocking driver calls on libuv's
 * worker pool and hand their results back to the loop, per-job deadlines,
 * and the up/down state the backend reports as its health.
 *
 * A pool is shared by every store on the same loop with the same url and
 * op_timeout_ms (the timeouts are part of the driver's URI). It runs at
 * most mongo_workers_for(UV_THREADPOOL_SIZE) jobs at once, each with a
 * client of its own, so a worker never waits for a client; the others wait
 * in a FIFO on the loop. The list of pools is the one piece of
 * process-wide state of the backend besides the driver's own (mongoc_init
 * once per process, mongoc_cleanup at exit when no pool is left); it is
 * guarded by a mutex and keyed by loop, so a loop per thread stays
 * possible.
 *
 * States: connecting (until the first answer), up, down. A job whose
 * driver call fails because the server cannot be used (network, server
 * selection, handshake) or that is still running at its deadline puts the
 * pool down: waiting jobs fail with KV_EUNAVAIL and new ones are refused
 * at once until a ping, sent after 100 ms and then at delays doubling to
 * 5 s, succeeds. While up, a ping also runs after MONGO_HEALTH_PING_MS
 * without a successful job, so /readyz notices a server that went away
 * without traffic.
 *
 * A job's callback runs exactly once, on the loop thread: with the work's
 * result, with KV_ETIMEDOUT at its deadline (the worker may still be
 * blocked in the driver; its late result is dropped), or with KV_EUNAVAIL
 * when the pool goes down or closes first. The job's memory is freed only
 * once both have happened.
 *
 * Runs on: the event loop thread, except mongo_work_cb (a worker thread).
 */
#ifndef KVBUS_BACKEND_MONGO_CONN_H
#define KVBUS_BACKEND_MONGO_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mongoc/mongoc.h>
#include <uv.h>

#include "kvstore/kvstore.h"

typedef struct mongo_pool mongo_pool;
typedef struct mongo_job mongo_job;

/*
 * The blocking part of a job. Runs on: a worker thread, with a client of
 * its own for the duration of the call and db the pool's database. It
 * must not touch anything the loop thread owns; it reports through
 * j->status, j->err and j->down.
 */
typedef void (*mongo_work_cb)(mongo_job *j, mongoc_client_t *client,
                              const char *db);

/* Completion, on the loop thread, exactly once; err is set when status is
 * not 0. The job's outputs are valid only when status is 0. */
typedef void (*mongo_done_cb)(mongo_job *j, int status, const kv_err *err);

/* Releases what the job's outputs own, just before the pool frees it (on
 * the loop thread, after both the work and done have run). */
typedef void (*mongo_cleanup_cb)(mongo_job *j);

enum mongo_job_state {
    MONGO_JOB_NEW,     /* allocated, not submitted */
    MONGO_JOB_WAITING, /* in the pool's FIFO */
    MONGO_JOB_RUNNING, /* on a worker thread */
    MONGO_JOB_DONE,    /* work over (or never started) */
};

struct mongo_job {
    /* Filled by the caller before submitting. */
    mongo_work_cb work;
    mongo_done_cb done;
    mongo_cleanup_cb cleanup; /* may be NULL */
    void *owner;              /* mongo_pool_cancel() matches it */
    const char *store;        /* for messages; borrowed, NULL once orphaned */

    /* Written by the work. */
    int status; /* 0 or a KV_E* code */
    bool down;  /* the server cannot be used: put the pool down */
    kv_err err;

    /* Private to mongo_conn.c. */
    mongo_pool *pool;
    enum mongo_job_state state;
    bool finished;            /* done has run, or never will */
    bool is_ping;             /* the pool's own health check */
    mongo_job *prev, *next;   /* pending: every unfinished job */
    mongo_job *wprev, *wnext; /* waiting FIFO */
    uint64_t deadline_ms;     /* loop time */
    uv_work_t req;
};

/*
 * The pool for url and timeout_ms on loop, created (and its first ping
 * sent) when none exists yet, else shared. Release with
 * mongo_pool_release(). Errors: KV_EINVAL (a URL the driver refuses; the
 * message never quotes it), KV_ENOMEM, KV_EUNAVAIL (a timer could not be
 * initialised).
 */
int mongo_pool_acquire(uv_loop_t *loop, const char *url, uint32_t timeout_ms,
                       mongo_pool **out, kv_err *err);

/*
 * Drops one reference. The last one fails every unfinished job with
 * KV_EUNAVAIL, and destroys the driver's pool on a worker thread once no
 * job runs (running jobs keep the loop alive until then). Accepts NULL.
 */
void mongo_pool_release(mongo_pool *p);

/* True once the server answered and until it fails. */
bool mongo_pool_up(const mongo_pool *p);

/* "host:port/db", never credentials. */
const char *mongo_pool_where(const mongo_pool *p);

/* Times the pool came back up after having been up and then down. */
uint64_t mongo_pool_reconnects(const mongo_pool *p);

/*
 * 0 when jobs may be submitted; KV_EUNAVAIL (err names the store and the
 * server, and why) while the pool is down.
 */
int mongo_pool_check(const mongo_pool *p, const char *store, kv_err *err);

/*
 * A new job of pool p of `size` bytes (at least sizeof(mongo_job); the
 * caller's record starts with the job), zeroed. NULL when out of memory.
 * Submit it, or free it with mongo_job_discard().
 */
mongo_job *mongo_job_new(mongo_pool *p, size_t size);

/* Frees a job that was never submitted (or that submit refused). */
void mongo_job_discard(mongo_job *j);

/*
 * Queues j; its deadline is the pool's timeout from now. Returns 0 (its
 * callback will run) or KV_EUNAVAIL (pool down or closing, or
 * MONGO_QUEUE_MAX jobs waiting) with err set and j untouched.
 */
int mongo_pool_submit(mongo_job *j, kv_err *err);

/*
 * Completes every unfinished job of owner with err: waiting ones are
 * freed, running ones finish on their worker and their results are
 * dropped.
 */
void mongo_pool_cancel(mongo_pool *p, void *owner, const kv_err *err);

#endif
