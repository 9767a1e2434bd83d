/*
 * pg_conn.c - the connection pool of the postgres backend (see pg_conn.h).
 *
 * Each pool holds PG_POOL_CONNS libpq connections to one server, each
 * driven without blocking on the loop: PQconnectStartParams and
 * PQconnectPoll with a uv_poll on PQsocket while connecting, then
 * PQsendQueryParams / PQsendQuery, PQflush while output is pending, and
 * PQconsumeInput / PQgetResult when the socket is readable. An idle
 * connection is watched too, so a server that goes away is noticed at
 * once. Statements wait in one FIFO and go to the first idle connection;
 * one statement runs per connection at a time, so a slow statement holds
 * one connection and never the loop.
 *
 * A connection that fails (or fails to connect) is retried after a delay
 * that doubles from PG_BACKOFF_MIN_MS to PG_BACKOFF_MAX_MS, reset by a
 * success; one reset because a statement timed out is reopened at once.
 * The pool is "down" when no connection is up and the latest attempt
 * failed: waiting statements then fail with KV_EUNAVAIL and new ones are
 * refused until a connection is back. One log line per pool state change
 * (first up, down, back up) and per timed-out statement; connection-level
 * events are debug lines. Values and passwords are never logged.
 *
 * Every handle is unreferenced: the pool never keeps the loop alive by
 * itself (a caller waiting for an answer does), so the server's shutdown
 * can run the loop until its own handles are done.
 *
 * Left out: pipeline mode (see docs/backends-postgres.md), prepared
 * statements, and LISTEN/NOTIFY (notifications are drained and dropped).
 * libpq resolves a host name synchronously when a connection starts: use
 * an IP address (or hostaddr) where DNS may be slow.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/postgres/pg_conn.h"
#include "backends/postgres/pg_int.h"
#include "server/srv_log.h"

#define PG_FORMAT_BINARY 1
#define PG_APPLICATION_NAME "kvbusd"

enum pg_conn_state {
    PG_CONN_WAITING,    /* no connection; the timer starts the next one */
    PG_CONN_CONNECTING, /* PQconnectPoll under way; the timer is its limit */
    PG_CONN_READY,      /* connected and idle */
    PG_CONN_BUSY,       /* running `running` */
    PG_CONN_CLOSED,     /* the pool is closing */
};

struct pg_conn {
    pg_pool *pool;
    unsigned index; /* 0..PG_POOL_CONNS-1, for logs */
    enum pg_conn_state state;
    PGconn *pg;          /* NULL while WAITING or CLOSED */
    uv_poll_t *poll;     /* own allocation; NULL when not watching */
    int poll_fd;         /* the socket poll watches */
    int poll_events;     /* UV_READABLE/UV_WRITABLE last started */
    uv_timer_t *timer;   /* own allocation: backoff wait or connect limit */
    pg_query *running;   /* BUSY: the statement sent */
    PGresult *last;      /* its latest result */
    PGresult *error;     /* its first error result */
    uint32_t backoff_ms; /* delay before the next attempt; 0 after success */
    bool flushing;       /* output still to send: watch writable too */
    bool ever_up;        /* has been connected once */
};

struct pg_pool {
    pg_pool *next; /* in the registry */
    uv_loop_t *loop;
    char *conninfo;           /* as configured; never logged */
    char where[PG_WHERE_MAX]; /* "host:port/db" for messages */
    unsigned refs;            /* stores using the pool */
    size_t handles;           /* uv handles not yet closed */
    bool closing;             /* last reference gone */
    bool down;                /* none up and the latest attempt failed */
    bool ever_up;             /* a connection has been up once */
    unsigned up;              /* connections READY or BUSY */
    uint64_t reconnects;      /* connections up again after having been up */
    uint64_t down_since_ms;   /* uv_now when it went down */
    char last_error[KV_ERR_MSG_BYTES]; /* why the latest attempt failed */
    pg_qlist fifo;                     /* statements waiting for a connection */
    struct pg_conn conns[PG_POOL_CONNS];
};

/* Every pool, to share one per loop and conninfo. */
static pg_pool *pools;
static pthread_mutex_t pools_lock = PTHREAD_MUTEX_INITIALIZER;

static void conn_start(struct pg_conn *c);
static void conn_lost(struct pg_conn *c, const char *why, bool failed);
static void conn_on_timer(uv_timer_t *t);
static void pool_dispatch(pg_pool *p);

/* The store a statement belongs to, for messages. */
static const char *qstore(const pg_query *q)
{
    return q->store ? q->store : "?";
}

/* ------------------------------------------------------------------ */
/* Lists                                                                */

void pg_qlist_push(pg_qlist *l, pg_query *q)
{
    q->list = l;
    q->next = NULL;
    q->prev = l->tail;
    if (l->tail)
        l->tail->next = q;
    else
        l->head = q;
    l->tail = q;
    l->len++;
}

/* Puts q back at the head (a statement that could not be sent). */
static void qlist_unshift(pg_qlist *l, pg_query *q)
{
    q->list = l;
    q->prev = NULL;
    q->next = l->head;
    if (l->head)
        l->head->prev = q;
    else
        l->tail = q;
    l->head = q;
    l->len++;
}

static void qlist_remove(pg_qlist *l, pg_query *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        l->head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        l->tail = q->prev;
    q->prev = q->next = NULL;
    q->list = NULL;
    l->len--;
}

pg_query *pg_qlist_pop(pg_qlist *l)
{
    pg_query *q = l->head;

    if (q)
        qlist_remove(l, q);
    return q;
}

/* ------------------------------------------------------------------ */
/* Handles and statements                                               */

static void pool_free(pg_pool *p)
{
    free(p->conninfo);
    free(p);
}

/* One handle of p is closed; the last one after release frees p. */
static void pool_handle_gone(pg_pool *p)
{
    if (--p->handles == 0 && p->closing)
        pool_free(p);
}

/* Close callback of a connection's poll or timer (data = the conn). */
static void conn_handle_closed(uv_handle_t *h)
{
    struct pg_conn *c = h->data;

    free(h);
    pool_handle_gone(c->pool);
}

/* Close callback of a statement's timer: frees the statement. */
static void query_closed(uv_handle_t *h)
{
    pg_query *q = h->data;
    pg_pool *p = q->pool;

    free(q);
    pool_handle_gone(p);
}

static void query_free(pg_query *q)
{
    uv_close((uv_handle_t *)&q->timer, query_closed);
}

/*
 * Runs q's callback once (unless it already ran) and frees q, or leaves it
 * to its connection when one still runs it: the connection frees it when
 * the server answers or the connection is dropped. The deadline keeps
 * running for such a statement, so a hung server cannot hold it forever.
 */
static void query_finish(pg_query *q, int status, const PGresult *res,
                         const kv_err *err)
{
    if (!q->finished) {
        if (q->list)
            qlist_remove(q->list, q);
        q->finished = true;
        if (!q->conn)
            uv_timer_stop(&q->timer);
        if (q->done)
            q->done(q, status, res, err);
        if (q->conn) {
            /* Still on the server: an orphan from now on, whose store
             * may go away before the answer comes. */
            q->store = NULL;
            q->owner = NULL;
            q->done = NULL;
        }
    }
    if (!q->conn)
        query_free(q);
}

void pg_query_complete(pg_query *q, int status, const kv_err *err)
{
    query_finish(q, status, NULL, err);
}

void pg_query_discard(pg_query *q)
{
    if (q->list)
        qlist_remove(q->list, q);
    q->finished = true;
    query_free(q);
}

/* Detaches the statement c runs; returns it, or NULL when none. */
static pg_query *conn_detach(struct pg_conn *c)
{
    pg_query *q = c->running;

    if (q) {
        q->conn = NULL;
        c->running = NULL;
    }
    return q;
}

static void conn_reset(struct pg_conn *c);

/* A statement's deadline passed. */
static void query_timeout(uv_timer_t *t)
{
    pg_query *q = t->data;
    pg_pool *p = q->pool;
    struct pg_conn *c = q->conn;
    kv_err err = {0};

    kv_err_set(&err, KV_ETIMEDOUT,
               "store %s: PostgreSQL at %s did not answer within %u ms",
               qstore(q), p->where, q->timeout_ms);
    if (c) {
        conn_detach(c);
        srv_warn("postgres %s: a call of store %s timed out after %u ms; "
                 "resetting connection %u",
                 p->where, qstore(q), q->timeout_ms, c->index);
        conn_reset(c);
    }
    query_finish(q, KV_ETIMEDOUT, NULL, &err);
}

pg_query *pg_query_new(pg_pool *p, uint32_t timeout_ms, size_t extra)
{
    pg_query *q = calloc(1, sizeof *q + extra);

    if (!q)
        return NULL;
    q->pool = p;
    q->buf = (char *)(q + 1);
    q->timeout_ms = timeout_ms;
    if (uv_timer_init(p->loop, &q->timer) != 0) {
        free(q);
        return NULL;
    }
    q->timer.data = q;
    p->handles++;
    uv_unref((uv_handle_t *)&q->timer);
    uv_timer_start(&q->timer, query_timeout, timeout_ms, 0);
    return q;
}

/* ------------------------------------------------------------------ */
/* Pool state                                                           */

bool pg_pool_up(const pg_pool *p)
{
    return p->up > 0;
}

const char *pg_pool_where(const pg_pool *p)
{
    return p->where;
}

uint64_t pg_pool_reconnects(const pg_pool *p)
{
    return p->reconnects;
}

int pg_pool_check(const pg_pool *p, const char *store, kv_err *err)
{
    if (p->down)
        return kv_err_set(err, KV_EUNAVAIL,
                          "store %s: PostgreSQL at %s is unavailable: %s",
                          store, p->where, p->last_error);
    return 0;
}

/* No connection is up and the latest attempt failed: fail what waits. */
static void pool_down(pg_pool *p)
{
    kv_err err = {0};
    pg_query *q;

    p->down = true;
    p->down_since_ms = uv_now(p->loop);
    srv_error("postgres %s: down: %s; calls fail until it is back "
              "(reconnecting, backoff up to %d ms)",
              p->where, p->last_error, PG_BACKOFF_MAX_MS);
    while ((q = pg_qlist_pop(&p->fifo)) != NULL) {
        kv_err_set(&err, KV_EUNAVAIL,
                   "store %s: PostgreSQL at %s is unavailable: %s", qstore(q),
                   p->where, p->last_error);
        query_finish(q, KV_EUNAVAIL, NULL, &err);
    }
}

/* The first connection is up (at start, or after being down). */
static void pool_up(pg_pool *p)
{
    if (p->down)
        srv_info("postgres %s: up again after %llu ms down", p->where,
                 (unsigned long long)(uv_now(p->loop) - p->down_since_ms));
    else if (!p->ever_up)
        srv_info("postgres %s: connected", p->where);
    p->down = false;
    p->ever_up = true;
}

int pg_pool_submit(pg_query *q, kv_err *err)
{
    pg_pool *p = q->pool;
    int rc = pg_pool_check(p, q->store, err);

    if (rc != 0)
        return rc;
    if (p->fifo.len >= PG_QUEUE_MAX)
        return kv_err_set(err, KV_EUNAVAIL,
                          "store %s: %d calls are already waiting for "
                          "PostgreSQL at %s",
                          qstore(q), PG_QUEUE_MAX, p->where);
    pg_qlist_push(&p->fifo, q);
    pool_dispatch(p);
    return 0;
}

void pg_pool_cancel(pg_pool *p, void *owner, const kv_err *err)
{
    pg_qlist mine = {0};
    pg_query *q, *next;
    unsigned i;

    for (q = p->fifo.head; q; q = next) {
        next = q->next;
        if (q->owner == owner) {
            qlist_remove(&p->fifo, q);
            pg_qlist_push(&mine, q);
        }
    }
    while ((q = pg_qlist_pop(&mine)) != NULL)
        query_finish(q, err->code, NULL, err);
    for (i = 0; i < PG_POOL_CONNS; i++) {
        q = p->conns[i].running;
        if (q && q->owner == owner && !q->finished)
            query_finish(q, err->code, NULL, err);
    }
}

/* ------------------------------------------------------------------ */
/* One connection                                                       */

/* Notices (such as "relation already exists, skipping") are dropped. */
static void notice_ignore(void *arg, const PGresult *res)
{
    (void)arg;
    (void)res;
}

/* Closes the poll handle (before the socket closes), results, PGconn. */
static void conn_teardown(struct pg_conn *c)
{
    if (c->poll) {
        uv_close((uv_handle_t *)c->poll, conn_handle_closed);
        c->poll = NULL;
    }
    c->poll_fd = -1;
    PQclear(c->last);
    PQclear(c->error);
    c->last = c->error = NULL;
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    c->flushing = false;
}

static void conn_on_poll(uv_poll_t *h, int status, int events);

/*
 * Watches c's current socket for events, replacing the poll handle when
 * libpq moved to another socket. Returns false when c was lost instead.
 */
static bool conn_watch(struct pg_conn *c, int events)
{
    pg_pool *p = c->pool;
    int fd = PQsocket(c->pg), rc;

    if (fd < 0) {
        conn_lost(c, "libpq has no socket", true);
        return false;
    }
    if (c->poll && c->poll_fd != fd) {
        uv_close((uv_handle_t *)c->poll, conn_handle_closed);
        c->poll = NULL;
    }
    if (!c->poll) {
        c->poll = malloc(sizeof *c->poll);
        if (!c->poll) {
            conn_lost(c, "out of memory", true);
            return false;
        }
        rc = uv_poll_init(p->loop, c->poll, fd);
        if (rc != 0) {
            free(c->poll);
            c->poll = NULL;
            conn_lost(c, uv_strerror(rc), true);
            return false;
        }
        c->poll->data = c;
        c->poll_fd = fd;
        p->handles++;
        uv_unref((uv_handle_t *)c->poll);
    }
    /* Re-arming with the same events would cost two epoll_ctl calls per
     * statement for nothing. */
    if (uv_is_active((uv_handle_t *)c->poll) && c->poll_events == events)
        return true;
    c->poll_events = events;
    rc = uv_poll_start(c->poll, events, conn_on_poll);
    if (rc != 0) {
        conn_lost(c, uv_strerror(rc), true);
        return false;
    }
    return true;
}

/*
 * c is gone (failed, failed to connect, or reset): tears it down,
 * schedules the next attempt and, when it ran a statement, completes that
 * with KV_EUNAVAIL. failed = the server is at fault: the next attempt
 * waits for the backoff, and with no connection left up the pool is down.
 * Otherwise (a reset) the next attempt starts at once.
 */
static void conn_lost(struct pg_conn *c, const char *why, bool failed)
{
    pg_pool *p = c->pool;
    bool was_up = c->state == PG_CONN_READY || c->state == PG_CONN_BUSY;
    pg_query *q = conn_detach(c);
    char reason[KV_ERR_MSG_BYTES];
    uint32_t delay = 0;
    kv_err err = {0};

    snprintf(reason, sizeof reason, "%s", why && *why ? why : "unknown error");
    pg_one_line(reason);
    conn_teardown(c);
    if (p->closing) {
        c->state = PG_CONN_CLOSED;
        if (q) {
            kv_err_set(&err, KV_EUNAVAIL, "PostgreSQL at %s: closing",
                       p->where);
            query_finish(q, KV_EUNAVAIL, NULL, &err);
        }
        return;
    }
    if (was_up)
        p->up--;
    if (failed) {
        c->backoff_ms = pg_backoff_next(c->backoff_ms);
        delay = c->backoff_ms;
        memcpy(p->last_error, reason, sizeof p->last_error);
    }
    srv_debug("postgres %s: connection %u %s: %s; next attempt in %u ms",
              p->where, c->index, was_up ? "lost" : "failed", reason, delay);
    c->state = PG_CONN_WAITING;
    uv_timer_stop(c->timer);
    uv_timer_start(c->timer, conn_on_timer, delay, 0);
    if (failed && p->up == 0 && !p->down)
        pool_down(p);
    if (q) {
        kv_err_set(&err, KV_EUNAVAIL,
                   "store %s: lost the connection to PostgreSQL at %s: %s",
                   qstore(q), p->where, reason);
        query_finish(q, KV_EUNAVAIL, NULL, &err);
    }
}

/* Drops c after a statement timed out and reconnects it at once. */
static void conn_reset(struct pg_conn *c)
{
    conn_lost(c, "statement timed out", false);
}

/* The connection is established: ready for statements. */
static void conn_connected(struct pg_conn *c)
{
    pg_pool *p = c->pool;

    uv_timer_stop(c->timer);
    if (PQsetnonblocking(c->pg, 1) != 0) {
        conn_lost(c, PQerrorMessage(c->pg), true);
        return;
    }
    c->state = PG_CONN_READY;
    c->backoff_ms = 0;
    if (c->ever_up)
        p->reconnects++;
    c->ever_up = true;
    srv_debug("postgres %s: connection %u up", p->where, c->index);
    if (++p->up == 1)
        pool_up(p);
    if (!conn_watch(c, UV_READABLE))
        return;
    pool_dispatch(p);
}

/* One step of PQconnectPoll, when the socket is ready for it. */
static void conn_connect_step(struct pg_conn *c)
{
    PostgresPollingStatusType st;

    /* The socket may change inside PQconnectPoll: stop watching the old
     * one while it is still open. */
    if (c->poll)
        uv_poll_stop(c->poll);
    st = PQconnectPoll(c->pg);
    switch (st) {
    case PGRES_POLLING_READING:
        conn_watch(c, UV_READABLE);
        break;
    case PGRES_POLLING_WRITING:
        conn_watch(c, UV_WRITABLE);
        break;
    case PGRES_POLLING_OK:
        conn_connected(c);
        break;
    default:
        conn_lost(c, PQerrorMessage(c->pg), true);
        break;
    }
}

/* Starts a connection attempt (the timer bounds it). */
static void conn_start(struct pg_conn *c)
{
    static const char *const keys[] = {"dbname", "client_encoding",
                                       "fallback_application_name", NULL};
    pg_pool *p = c->pool;
    const char *vals[] = {p->conninfo, "UTF8", PG_APPLICATION_NAME, NULL};

    c->pg = PQconnectStartParams(keys, vals, 1);
    if (!c->pg) {
        conn_lost(c, "out of memory", true);
        return;
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        conn_lost(c, PQerrorMessage(c->pg), true);
        return;
    }
    PQsetNoticeReceiver(c->pg, notice_ignore, NULL);
    c->state = PG_CONN_CONNECTING;
    uv_timer_stop(c->timer);
    uv_timer_start(c->timer, conn_on_timer, PG_CONNECT_TIMEOUT_MS, 0);
    /* As if PQconnectPoll had answered PGRES_POLLING_WRITING. */
    conn_watch(c, UV_WRITABLE);
}

/* The connection timer: next attempt, or an attempt that took too long. */
static void conn_on_timer(uv_timer_t *t)
{
    struct pg_conn *c = t->data;
    char why[64];

    if (c->state == PG_CONN_WAITING) {
        conn_start(c);
    } else if (c->state == PG_CONN_CONNECTING) {
        snprintf(why, sizeof why, "no connection within %d ms",
                 PG_CONNECT_TIMEOUT_MS);
        conn_lost(c, why, true);
    }
}

/* Sends q on the idle connection c. */
static void conn_send(struct pg_conn *c, pg_query *q)
{
    static const int formats[PG_PARAMS_MAX] = {
        PG_FORMAT_BINARY, PG_FORMAT_BINARY, PG_FORMAT_BINARY,
        PG_FORMAT_BINARY, PG_FORMAT_BINARY, PG_FORMAT_BINARY,
    };
    pg_pool *p = c->pool;
    int ok, rc;

    if (q->multi)
        ok = PQsendQuery(c->pg, q->sql);
    else
        ok = PQsendQueryParams(c->pg, q->sql, q->nparams, q->types, q->values,
                               q->lengths, formats, PG_FORMAT_BINARY);
    if (!ok) {
        /* Not sent: it goes back first in line; c is unusable. */
        qlist_unshift(&p->fifo, q);
        conn_lost(c, PQerrorMessage(c->pg), true);
        return;
    }
    c->state = PG_CONN_BUSY;
    c->running = q;
    q->conn = c;
    rc = PQflush(c->pg);
    if (rc < 0) {
        conn_lost(c, PQerrorMessage(c->pg), true);
        return;
    }
    c->flushing = rc == 1;
    conn_watch(c, UV_READABLE | (c->flushing ? UV_WRITABLE : 0));
}

/* Sends waiting statements to idle connections, oldest first. */
static void pool_dispatch(pg_pool *p)
{
    unsigned i;

    for (i = 0; i < PG_POOL_CONNS && p->fifo.head && !p->closing; i++) {
        struct pg_conn *c = &p->conns[i];
        if (c->state == PG_CONN_READY)
            conn_send(c, pg_qlist_pop(&p->fifo));
    }
}

/* Keeps a result of the running statement: the first error wins, else
 * the last result. */
static void conn_collect(struct pg_conn *c, PGresult *r)
{
    ExecStatusType st = PQresultStatus(r);

    if (c->error) {
        PQclear(r);
    } else if (st == PGRES_FATAL_ERROR || st == PGRES_NONFATAL_ERROR ||
               st == PGRES_BAD_RESPONSE) {
        c->error = r;
    } else {
        PQclear(c->last);
        c->last = r;
    }
}

/* The running statement has all its results: answer it. */
static void conn_finish_query(struct pg_conn *c)
{
    pg_pool *p = c->pool;
    PGresult *last = c->last, *error = c->error;
    pg_query *q = conn_detach(c);
    kv_err err = {0};
    ExecStatusType st;

    c->last = c->error = NULL;
    c->state = PG_CONN_READY;
    if (error) {
        const char *state = PQresultErrorField(error, PG_DIAG_SQLSTATE);
        const char *msg = PQresultErrorField(error, PG_DIAG_MESSAGE_PRIMARY);
        int code = pg_sqlstate_code(state);
        kv_err_set(&err, code, "store %s: PostgreSQL: %s (SQLSTATE %s)",
                   qstore(q), msg ? msg : "error", state ? state : "?");
        pg_one_line(err.msg);
        query_finish(q, code, error, &err);
    } else if (!last || ((st = PQresultStatus(last)) != PGRES_TUPLES_OK &&
                         st != PGRES_COMMAND_OK)) {
        kv_err_set(&err, KV_EUNAVAIL,
                   "store %s: unexpected answer from PostgreSQL at %s",
                   qstore(q), p->where);
        query_finish(q, KV_EUNAVAIL, NULL, &err);
    } else {
        query_finish(q, 0, last, NULL);
    }
    PQclear(last);
    PQclear(error);
}

/* Readable (or writable while output is pending) on a live connection. */
static void conn_io(struct pg_conn *c, int events)
{
    pg_pool *p = c->pool;
    PGnotify *n;
    int rc;

    if (c->flushing && (events & (UV_WRITABLE | UV_READABLE))) {
        if ((events & UV_READABLE) && !PQconsumeInput(c->pg)) {
            conn_lost(c, PQerrorMessage(c->pg), true);
            return;
        }
        rc = PQflush(c->pg);
        if (rc < 0) {
            conn_lost(c, PQerrorMessage(c->pg), true);
            return;
        }
        if (rc == 0) {
            c->flushing = false;
            if (!conn_watch(c, UV_READABLE))
                return;
        }
    } else if ((events & UV_READABLE) && !PQconsumeInput(c->pg)) {
        conn_lost(c, PQerrorMessage(c->pg), true);
        return;
    }
    while (c->state == PG_CONN_BUSY && !c->flushing && !PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        if (!r) {
            conn_finish_query(c);
            /* The callback may have closed the pool or sent another
             * statement on c: only go on with what is still live. */
            if (p->closing || c->state == PG_CONN_WAITING)
                return;
            if (c->state == PG_CONN_READY)
                pool_dispatch(p);
            continue;
        }
        conn_collect(c, r);
    }
    if (c->state != PG_CONN_READY && c->state != PG_CONN_BUSY)
        return;
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        conn_lost(c, PQerrorMessage(c->pg), true);
        return;
    }
    while ((n = PQnotifies(c->pg)) != NULL)
        PQfreemem(n);
}

static void conn_on_poll(uv_poll_t *h, int status, int events)
{
    struct pg_conn *c = h->data;

    if (c->state == PG_CONN_CONNECTING) {
        conn_connect_step(c);
        return;
    }
    if (c->state != PG_CONN_READY && c->state != PG_CONN_BUSY)
        return;
    if (status < 0) {
        conn_lost(c, uv_strerror(status), true);
        return;
    }
    conn_io(c, events);
}

/* ------------------------------------------------------------------ */
/* Pools                                                                */

/* A new pool, not yet connecting. NULL (err set) on failure. */
static pg_pool *pool_new(uv_loop_t *loop, const char *conninfo, kv_err *err)
{
    pg_pool *p = calloc(1, sizeof *p);
    unsigned i;
    int rc;

    if (!p || !(p->conninfo = strdup(conninfo))) {
        free(p);
        kv_err_set(err, KV_ENOMEM, "postgres: out of memory");
        return NULL;
    }
    p->loop = loop;
    p->refs = 1;
    pg_conninfo_where(conninfo, p->where, sizeof p->where);
    snprintf(p->last_error, sizeof p->last_error, "not connected yet");
    for (i = 0; i < PG_POOL_CONNS; i++) {
        struct pg_conn *c = &p->conns[i];
        c->pool = p;
        c->index = i;
        c->poll_fd = -1;
        c->state = PG_CONN_WAITING;
        c->timer = malloc(sizeof *c->timer);
        rc = c->timer ? uv_timer_init(loop, c->timer) : UV_ENOMEM;
        if (rc != 0) {
            free(c->timer);
            c->timer = NULL;
            kv_err_set(err, rc == UV_ENOMEM ? KV_ENOMEM : KV_EUNAVAIL,
                       "postgres: timer: %s", uv_strerror(rc));
            goto fail;
        }
        c->timer->data = c;
        p->handles++;
        uv_unref((uv_handle_t *)c->timer);
    }
    return p;

fail:
    p->closing = true;
    for (i = 0; i < PG_POOL_CONNS; i++)
        if (p->conns[i].timer)
            uv_close((uv_handle_t *)p->conns[i].timer, conn_handle_closed);
    if (p->handles == 0)
        pool_free(p);
    return NULL;
}

int pg_pool_acquire(uv_loop_t *loop, const char *conninfo, pg_pool **out,
                    kv_err *err)
{
    pg_pool *p;
    unsigned i;

    if (!conninfo)
        conninfo = "";
    pthread_mutex_lock(&pools_lock);
    for (p = pools; p; p = p->next) {
        if (p->loop == loop && strcmp(p->conninfo, conninfo) == 0) {
            p->refs++;
            pthread_mutex_unlock(&pools_lock);
            *out = p;
            return 0;
        }
    }
    p = pool_new(loop, conninfo, err);
    if (p) {
        p->next = pools;
        pools = p;
    }
    pthread_mutex_unlock(&pools_lock);
    if (!p)
        return err ? err->code : KV_ENOMEM;
    for (i = 0; i < PG_POOL_CONNS; i++)
        conn_start(&p->conns[i]);
    *out = p;
    return 0;
}

void pg_pool_release(pg_pool *p)
{
    pg_pool **pp;
    kv_err err = {0};
    pg_query *q;
    unsigned i;

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

    p->closing = true;
    kv_err_set(&err, KV_EUNAVAIL, "PostgreSQL at %s: the store is closing",
               p->where);
    while ((q = pg_qlist_pop(&p->fifo)) != NULL)
        query_finish(q, KV_EUNAVAIL, NULL, &err);
    for (i = 0; i < PG_POOL_CONNS; i++) {
        struct pg_conn *c = &p->conns[i];
        q = conn_detach(c);
        conn_teardown(c);
        c->state = PG_CONN_CLOSED;
        uv_close((uv_handle_t *)c->timer, conn_handle_closed);
        c->timer = NULL;
        if (q)
            query_finish(q, KV_EUNAVAIL, NULL, &err);
    }
    srv_debug("postgres %s: pool closed", p->where);
}
