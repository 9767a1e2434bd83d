/*
 * mongo_conn.c - the pools of the mongodb backend (see mongo_conn.h).
 *
 * Each pool owns a mongoc_client_pool_t whose size is the number of jobs
 * it runs at once (mongo_workers_for), so mongoc_client_pool_pop never
 * waits. Jobs live in two lists: `pending` holds every unfinished job in
 * submission order, which is also deadline order since every job of a
 * pool has the same timeout, so one timer serves them all; `waiting` is
 * the FIFO of jobs not yet handed to uv_queue_work. Pings bypass the
 * FIFO: at most one runs at a time, and one that is due while another
 * still runs (a stopped server holds a worker until the driver's socket
 * timeout) starts when that one returns.
 *
 * The driver is initialised once per process (pthread_once), its log
 * lines go through srv_log (debug and trace dropped), and mongoc_cleanup
 * runs at exit when no driver pool is left. Destroying a driver pool joins
 * its monitor threads, which may wait for a connect timeout: it runs on a
 * worker thread, never on the loop.
 *
 * Every handle is unreferenced: a pool never keeps the loop alive by
 * itself; running jobs do (uv_queue_work requests), so the server's
 * shutdown waits for them, and for the driver pool's destruction.
 *
 * Runs on: the event loop thread, except job_work() and pool_destroy_work()
 * (worker threads) and the driver's log handler (any thread).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/mongodb/mongo_conn.h"
#include "backends/mongodb/mongo_int.h"
#include "server/srv_log.h"

enum mongo_pool_state {
    MONGO_POOL_CONNECTING, /* no answer yet */
    MONGO_POOL_UP,
    MONGO_POOL_DOWN, /* jobs refused until a ping succeeds */
};

/* An intrusive list of jobs; which links it uses is the caller's. */
typedef struct job_list {
    mongo_job *head, *tail;
    size_t len;
} job_list;

struct mongo_pool {
    mongo_pool *next; /* in the registry */
    uv_loop_t *loop;
    char *url; /* as configured; never logged */
    uint32_t timeout_ms;
    mongoc_uri_t *uri;
    mongoc_client_pool_t *clients;
    char where[MONGO_WHERE_MAX];
    const char *db;   /* points into uri */
    unsigned refs;    /* stores using the pool */
    unsigned workers; /* jobs at most on worker threads at once */
    unsigned running; /* jobs on worker threads now */
    enum mongo_pool_state state;
    bool ever_up;
    bool closing;
    bool ping_running;      /* a ping is on a worker thread */
    bool ping_due;          /* start a ping as soon as a worker is free */
    uint32_t backoff_ms;    /* delay before the next ping while down */
    uint64_t last_ok_ms;    /* loop time of the latest successful job */
    uint64_t down_since_ms; /* loop time it went down */
    uint64_t reconnects;
    char last_error[KV_ERR_MSG_BYTES]; /* why it is down */
    job_list pending;                  /* every unfinished job */
    job_list waiting;                  /* FIFO for a worker */
    uv_timer_t deadline;               /* the first pending job's */
    uv_timer_t ping;                   /* next ping */
    unsigned handles;                  /* open handles */
    bool destroying;                   /* the driver pool is going */
    uv_work_t destroy_req;
};

/* Every pool, to share one per loop, url and timeout; and how many driver
 * pools exist, for mongoc_cleanup at exit. */
static mongo_pool *pools;
static unsigned driver_pools;
static pthread_mutex_t pools_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t driver_once = PTHREAD_ONCE_INIT;

static void pool_dispatch(mongo_pool *p);
static void on_deadline(uv_timer_t *t);
static void pool_maybe_free(mongo_pool *p);
static void ping_schedule(mongo_pool *p, uint64_t delay_ms);

/* ------------------------------------------------------------------ */
/* The driver                                                           */

/* The driver's log lines, one srv_log line each. Runs on: any thread. */
static void driver_log(mongoc_log_level_t level, const char *domain,
                       const char *message, void *ud)
{
    int ours;

    (void)ud;
    switch (level) {
    case MONGOC_LOG_LEVEL_ERROR:
    case MONGOC_LOG_LEVEL_CRITICAL:
        ours = SRV_LOG_ERROR;
        break;
    case MONGOC_LOG_LEVEL_WARNING:
        ours = SRV_LOG_WARN;
        break;
    case MONGOC_LOG_LEVEL_MESSAGE:
    case MONGOC_LOG_LEVEL_INFO:
        ours = SRV_LOG_DEBUG;
        break;
    default:
        return; /* debug, trace */
    }
    srv_log(ours, "mongodb driver (%s): %s", domain ? domain : "-",
            message ? message : "");
}

static void driver_cleanup_at_exit(void)
{
    bool idle;

    pthread_mutex_lock(&pools_lock);
    idle = driver_pools == 0;
    pthread_mutex_unlock(&pools_lock);
    if (idle)
        mongoc_cleanup();
}

static void driver_init(void)
{
    mongoc_log_set_handler(driver_log, NULL);
    mongoc_init();
    atexit(driver_cleanup_at_exit);
}

/* ------------------------------------------------------------------ */
/* Lists                                                                */

static void pending_push(job_list *l, mongo_job *j)
{
    j->next = NULL;
    j->prev = l->tail;
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
    l->len++;
}

static void pending_remove(job_list *l, mongo_job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        l->head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        l->tail = j->prev;
    j->prev = j->next = NULL;
    l->len--;
}

static void waiting_push(job_list *l, mongo_job *j)
{
    j->wnext = NULL;
    j->wprev = l->tail;
    if (l->tail)
        l->tail->wnext = j;
    else
        l->head = j;
    l->tail = j;
    l->len++;
}

static void waiting_remove(job_list *l, mongo_job *j)
{
    if (j->wprev)
        j->wprev->wnext = j->wnext;
    else
        l->head = j->wnext;
    if (j->wnext)
        j->wnext->wprev = j->wprev;
    else
        l->tail = j->wprev;
    j->wprev = j->wnext = NULL;
    l->len--;
}

/* ------------------------------------------------------------------ */
/* Jobs                                                                 */

static const char *jstore(const mongo_job *j)
{
    return j->store ? j->store : "?";
}

mongo_job *mongo_job_new(mongo_pool *p, size_t size)
{
    mongo_job *j;

    if (size < sizeof *j)
        size = sizeof *j;
    j = calloc(1, size);
    if (!j)
        return NULL;
    j->pool = p;
    j->req.data = j;
    return j;
}

static void job_free(mongo_job *j)
{
    if (j->cleanup)
        j->cleanup(j);
    free(j);
}

void mongo_job_discard(mongo_job *j)
{
    if (j)
        job_free(j);
}

/* Re-arms the deadline timer for the first pending job. */
static void deadline_arm(mongo_pool *p)
{
    uint64_t now = uv_now(p->loop);
    mongo_job *j = p->pending.head;

    if (p->closing)
        return;
    if (!j) {
        uv_timer_stop(&p->deadline);
        return;
    }
    uv_timer_start(&p->deadline, on_deadline,
                   j->deadline_ms > now ? j->deadline_ms - now : 0, 0);
}

/*
 * Runs j's callback once (unless it already ran) and frees j, or leaves
 * it to its worker when the work still runs: after_work frees it then.
 */
static void job_finish(mongo_job *j, int status, const kv_err *err)
{
    mongo_pool *p = j->pool;

    if (!j->finished) {
        j->finished = true;
        if (j->state == MONGO_JOB_WAITING) {
            waiting_remove(&p->waiting, j);
            j->state = MONGO_JOB_DONE;
        }
        pending_remove(&p->pending, j);
        if (j->done)
            j->done(j, status, err);
        if (j->state == MONGO_JOB_RUNNING) {
            /* An orphan from now on: its owner may go away. */
            j->store = NULL;
            j->owner = NULL;
            j->done = NULL;
        }
    }
    if (j->state != MONGO_JOB_RUNNING)
        job_free(j);
}

/* ------------------------------------------------------------------ */
/* Pool state                                                           */

bool mongo_pool_up(const mongo_pool *p)
{
    return p->state == MONGO_POOL_UP;
}

const char *mongo_pool_where(const mongo_pool *p)
{
    return p->where;
}

uint64_t mongo_pool_reconnects(const mongo_pool *p)
{
    return p->reconnects;
}

int mongo_pool_check(const mongo_pool *p, const char *store, kv_err *err)
{
    if (p->closing)
        return kv_err_set(err, KV_EUNAVAIL, "store %s: closing", store);
    if (p->state == MONGO_POOL_DOWN)
        return kv_err_set(err, KV_EUNAVAIL,
                          "store %s: MongoDB at %s is unavailable: %s", store,
                          p->where, p->last_error);
    return 0;
}

/* The server cannot be used: fail what waits, ping on the backoff. */
static void pool_down(mongo_pool *p, const char *why)
{
    kv_err err = {0};
    mongo_job *j;

    snprintf(p->last_error, sizeof p->last_error, "%s", why);
    if (p->state == MONGO_POOL_DOWN || p->closing)
        return;
    p->state = MONGO_POOL_DOWN;
    p->down_since_ms = uv_now(p->loop);
    p->backoff_ms = MONGO_BACKOFF_MIN_MS;
    srv_error("mongodb %s: down: %s; calls fail until it answers a ping "
              "(every %d ms at first, backoff up to %d ms)",
              p->where, why, MONGO_BACKOFF_MIN_MS, MONGO_BACKOFF_MAX_MS);
    while ((j = p->waiting.head) != NULL) {
        kv_err_set(&err, KV_EUNAVAIL,
                   "store %s: MongoDB at %s is unavailable: %s", jstore(j),
                   p->where, why);
        job_finish(j, KV_EUNAVAIL, &err);
    }
    ping_schedule(p, p->backoff_ms);
}

/* The server answered. */
static void pool_up(mongo_pool *p)
{
    if (p->state == MONGO_POOL_UP)
        return;
    if (p->state == MONGO_POOL_DOWN && p->ever_up) {
        p->reconnects++;
        srv_info("mongodb %s: up again after %llu ms down", p->where,
                 (unsigned long long)(uv_now(p->loop) - p->down_since_ms));
    } else {
        srv_info("mongodb %s: connected", p->where);
    }
    p->state = MONGO_POOL_UP;
    p->ever_up = true;
    p->backoff_ms = 0;
    ping_schedule(p, MONGO_HEALTH_PING_MS);
}

/* ------------------------------------------------------------------ */
/* Running jobs                                                         */

/* Runs on: a worker thread. */
static void job_work(uv_work_t *req)
{
    mongo_job *j = req->data;
    mongo_pool *p = j->pool;
    mongoc_client_t *client = mongoc_client_pool_pop(p->clients);

    if (!client) {
        j->status = kv_err_set(&j->err, KV_EUNAVAIL,
                               "no MongoDB client available for %s", p->where);
        return;
    }
    j->work(j, client, p->db);
    mongoc_client_pool_push(p->clients, client);
}

/* The work of j returned: answer it (or free an orphan), go on. */
static void job_after_work(uv_work_t *req, int status)
{
    mongo_job *j = req->data;
    mongo_pool *p = j->pool;

    (void)status; /* jobs are never cancelled */
    p->running--;
    j->state = MONGO_JOB_DONE;
    if (j->is_ping)
        p->ping_running = false;
    /* A ping's own callback decides the state. */
    if (!j->finished && !p->closing && !j->is_ping) {
        if (j->down) {
            pool_down(p, j->err.msg);
        } else if (j->status == 0) {
            p->last_ok_ms = uv_now(p->loop);
            if (p->state == MONGO_POOL_CONNECTING)
                pool_up(p);
        }
    }
    job_finish(j, j->status, j->status ? &j->err : NULL);
    deadline_arm(p);
    if (p->closing)
        pool_maybe_free(p);
    else
        pool_dispatch(p);
}

/* Hands j to a worker thread. */
static void job_start(mongo_pool *p, mongo_job *j)
{
    int rc;

    j->state = MONGO_JOB_RUNNING;
    p->running++;
    if (j->is_ping)
        p->ping_running = true;
    rc = uv_queue_work(p->loop, &j->req, job_work, job_after_work);
    if (rc != 0) {
        kv_err err = {0};
        p->running--;
        if (j->is_ping)
            p->ping_running = false;
        j->state = MONGO_JOB_DONE;
        kv_err_set(&err, KV_EUNAVAIL, "store %s: cannot queue work: %s",
                   jstore(j), uv_strerror(rc));
        job_finish(j, KV_EUNAVAIL, &err);
    }
}

static void ping_start(mongo_pool *p);

/* Starts waiting jobs (and a due ping first) while workers are free. */
static void pool_dispatch(mongo_pool *p)
{
    mongo_job *j;

    while (!p->closing && p->running < p->workers) {
        if (p->ping_due && !p->ping_running) {
            p->ping_due = false;
            ping_start(p);
            continue;
        }
        j = p->waiting.head;
        if (!j)
            break;
        waiting_remove(&p->waiting, j);
        job_start(p, j);
    }
}

/* The deadline timer: fails every pending job whose deadline passed. */
static void on_deadline(uv_timer_t *t)
{
    mongo_pool *p = t->data;
    uint64_t now = uv_now(p->loop);
    kv_err err = {0};
    mongo_job *j;
    char why[96];

    while ((j = p->pending.head) != NULL && j->deadline_ms <= now) {
        if (j->is_ping)
            kv_err_set(&err, KV_ETIMEDOUT, "no answer to a ping within %u ms",
                       p->timeout_ms);
        else
            kv_err_set(&err, KV_ETIMEDOUT,
                       "store %s: MongoDB at %s did not answer within %u ms",
                       jstore(j), p->where, p->timeout_ms);
        if (j->state == MONGO_JOB_RUNNING) {
            snprintf(why, sizeof why, "no answer within %u ms", p->timeout_ms);
            if (!j->is_ping)
                srv_warn("mongodb %s: a call of store %s timed out after %u ms",
                         p->where, jstore(j), p->timeout_ms);
            job_finish(j, KV_ETIMEDOUT, &err);
            pool_down(p, why);
        } else {
            job_finish(j, KV_ETIMEDOUT, &err);
        }
    }
    deadline_arm(p);
}

int mongo_pool_submit(mongo_job *j, kv_err *err)
{
    mongo_pool *p = j->pool;
    int rc = mongo_pool_check(p, jstore(j), err);

    if (rc != 0)
        return rc;
    if (p->waiting.len >= MONGO_QUEUE_MAX)
        return kv_err_set(err, KV_EUNAVAIL,
                          "store %s: %d calls are already waiting for "
                          "MongoDB at %s",
                          jstore(j), MONGO_QUEUE_MAX, p->where);
    j->deadline_ms = uv_now(p->loop) + p->timeout_ms;
    j->state = MONGO_JOB_WAITING;
    pending_push(&p->pending, j);
    waiting_push(&p->waiting, j);
    if (p->pending.head == j)
        deadline_arm(p);
    pool_dispatch(p);
    return 0;
}

void mongo_pool_cancel(mongo_pool *p, void *owner, const kv_err *err)
{
    mongo_job *j, *next;

    for (j = p->pending.head; j; j = next) {
        next = j->next;
        if (j->owner == owner)
            job_finish(j, err->code, err);
    }
    deadline_arm(p);
}

/* ------------------------------------------------------------------ */
/* Pings                                                                */

/* Runs on: a worker thread. */
static void ping_work(mongo_job *j, mongoc_client_t *client, const char *db)
{
    bson_t cmd = BSON_INITIALIZER;
    bson_error_t error;
    bool ok;

    (void)db;
    BSON_APPEND_INT32(&cmd, "ping", 1);
    ok =
        mongoc_client_command_simple(client, "admin", &cmd, NULL, NULL, &error);
    bson_destroy(&cmd);
    if (!ok) {
        j->status = mongo_error_code(&error, &j->down);
        j->down = true; /* a ping that fails, fails the server */
        kv_err_set(&j->err, j->status, "%s", error.message);
    }
}

/* A ping answered (or timed out). */
static void ping_done(mongo_job *j, int status, const kv_err *err)
{
    mongo_pool *p = j->pool;

    if (p->closing)
        return;
    if (status == 0) {
        p->last_ok_ms = uv_now(p->loop);
        pool_up(p);
        if (p->state == MONGO_POOL_UP)
            ping_schedule(p, MONGO_HEALTH_PING_MS);
        return;
    }
    if (p->state != MONGO_POOL_DOWN) {
        pool_down(p, err ? err->msg : "ping failed");
        return;
    }
    snprintf(p->last_error, sizeof p->last_error, "%s",
             err ? err->msg : "ping failed");
    p->backoff_ms = mongo_backoff_next(p->backoff_ms);
    srv_debug("mongodb %s: ping failed: %s; next in %u ms", p->where,
              p->last_error, p->backoff_ms);
    ping_schedule(p, p->backoff_ms);
}

/* Sends a ping now (the caller checked a worker is free). */
static void ping_start(mongo_pool *p)
{
    mongo_job *j = mongo_job_new(p, sizeof *j);

    if (!j) {
        ping_schedule(p, MONGO_BACKOFF_MAX_MS);
        return;
    }
    j->is_ping = true;
    j->work = ping_work;
    j->done = ping_done;
    j->owner = p;
    j->deadline_ms = uv_now(p->loop) + p->timeout_ms;
    pending_push(&p->pending, j);
    if (p->pending.head == j)
        deadline_arm(p);
    job_start(p, j);
}

/* The ping timer: a ping is due, unless one runs or, while up, a job
 * succeeded recently enough. */
static void on_ping_timer(uv_timer_t *t)
{
    mongo_pool *p = t->data;
    uint64_t idle = uv_now(p->loop) - p->last_ok_ms;

    if (p->closing)
        return;
    if (p->state == MONGO_POOL_UP && idle < MONGO_HEALTH_PING_MS) {
        ping_schedule(p, MONGO_HEALTH_PING_MS - idle);
        return;
    }
    if (p->ping_running) {
        p->ping_due = true;
        return;
    }
    p->ping_due = true;
    pool_dispatch(p);
}

static void ping_schedule(mongo_pool *p, uint64_t delay_ms)
{
    if (p->closing)
        return;
    uv_timer_start(&p->ping, on_ping_timer, delay_ms, 0);
}

/* ------------------------------------------------------------------ */
/* Pools                                                                */

static void pool_struct_free(mongo_pool *p)
{
    free(p->url);
    free(p);
}

/* Runs on: a worker thread. */
static void pool_destroy_work(uv_work_t *req)
{
    mongo_pool *p = req->data;

    if (p->clients)
        mongoc_client_pool_destroy(p->clients);
    p->clients = NULL;
    if (p->uri)
        mongoc_uri_destroy(p->uri);
    p->uri = NULL;
}

static void pool_destroy_after(uv_work_t *req, int status)
{
    mongo_pool *p = req->data;

    (void)status;
    pthread_mutex_lock(&pools_lock);
    driver_pools--;
    pthread_mutex_unlock(&pools_lock);
    p->destroying = false;
    srv_debug("mongodb %s: pool closed", p->where);
    if (p->handles == 0)
        pool_struct_free(p);
}

static void pool_handle_closed(uv_handle_t *h)
{
    mongo_pool *p = h->data;

    if (--p->handles == 0 && !p->destroying && !p->clients)
        pool_struct_free(p);
}

/* Closing and no job runs any more: destroy the driver's pool. */
static void pool_maybe_free(mongo_pool *p)
{
    int rc;

    if (!p->closing || p->running > 0 || p->destroying || !p->clients)
        return;
    p->destroying = true;
    p->destroy_req.data = p;
    rc = uv_queue_work(p->loop, &p->destroy_req, pool_destroy_work,
                       pool_destroy_after);
    if (rc != 0) {
        /* Cannot leave the loop thread: destroy here, once. */
        pool_destroy_work(&p->destroy_req);
        pool_destroy_after(&p->destroy_req, 0);
    }
}

int mongo_pool_acquire(uv_loop_t *loop, const char *url, uint32_t timeout_ms,
                       mongo_pool **out, kv_err *err)
{
    mongo_pool *p;
    bson_error_t error;
    int rc;

    pthread_once(&driver_once, driver_init);
    pthread_mutex_lock(&pools_lock);
    for (p = pools; p; p = p->next) {
        if (p->loop == loop && p->timeout_ms == timeout_ms &&
            strcmp(p->url, url) == 0) {
            p->refs++;
            pthread_mutex_unlock(&pools_lock);
            *out = p;
            return 0;
        }
    }
    pthread_mutex_unlock(&pools_lock);

    p = calloc(1, sizeof *p);
    if (!p || !(p->url = strdup(url))) {
        free(p);
        return kv_err_set(err, KV_ENOMEM, "mongodb: out of memory");
    }
    rc = mongo_uri_prepare(url, timeout_ms, &p->uri, err);
    if (rc != 0) {
        pool_struct_free(p);
        return rc;
    }
    p->loop = loop;
    p->refs = 1;
    p->timeout_ms = timeout_ms;
    p->workers = mongo_workers_for(getenv("UV_THREADPOOL_SIZE"));
    p->db = mongo_uri_database(p->uri);
    p->state = MONGO_POOL_CONNECTING;
    snprintf(p->last_error, sizeof p->last_error, "not connected yet");
    mongo_uri_where(p->uri, p->where, sizeof p->where);
    p->clients = mongoc_client_pool_new_with_error(p->uri, &error);
    if (!p->clients) {
        mongoc_uri_destroy(p->uri);
        pool_struct_free(p);
        return kv_err_set(
            err, KV_EINVAL, "mongodb: the driver refused the url (%s)",
            error.domain == MONGOC_ERROR_COMMAND ? "bad option" : "bad url");
    }
    mongoc_client_pool_set_error_api(p->clients, MONGO_ERROR_API_VERSION);
    mongoc_client_pool_max_size(p->clients, p->workers);
    if (uv_timer_init(loop, &p->deadline) != 0 ||
        uv_timer_init(loop, &p->ping) != 0) {
        /* uv_timer_init only fails for a bad loop: nothing to close. */
        mongoc_client_pool_destroy(p->clients);
        mongoc_uri_destroy(p->uri);
        pool_struct_free(p);
        return kv_err_set(err, KV_EUNAVAIL, "mongodb: timer init failed");
    }
    p->deadline.data = p->ping.data = p;
    p->handles = 2;
    uv_unref((uv_handle_t *)&p->deadline);
    uv_unref((uv_handle_t *)&p->ping);

    pthread_mutex_lock(&pools_lock);
    driver_pools++;
    p->next = pools;
    pools = p;
    pthread_mutex_unlock(&pools_lock);
    srv_debug("mongodb %s: pool of %u clients, timeouts %u ms", p->where,
              p->workers, timeout_ms);
    p->ping_due = true;
    pool_dispatch(p);
    *out = p;
    return 0;
}

void mongo_pool_release(mongo_pool *p)
{
    mongo_pool **pp;
    kv_err err = {0};

    if (!p)
        return;
    pthread_mutex_lock(&pools_lock);
    if (--p->refs > 0) {
        pthread_mutex_unlock(&pools_lock);
        return;
    }
    for (pp = &pools; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    pthread_mutex_unlock(&pools_lock);

    /* Closing first: a callback run below cannot submit anything new. */
    p->closing = true;
    kv_err_set(&err, KV_EUNAVAIL, "MongoDB at %s: the store is closing",
               p->where);
    while (p->pending.head)
        job_finish(p->pending.head, KV_EUNAVAIL, &err);
    uv_timer_stop(&p->deadline);
    uv_timer_stop(&p->ping);
    uv_close((uv_handle_t *)&p->deadline, pool_handle_closed);
    uv_close((uv_handle_t *)&p->ping, pool_handle_closed);
    pool_maybe_free(p);
}
