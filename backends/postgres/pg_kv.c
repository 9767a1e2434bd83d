/*
 * pg_kv.c - the postgres backend's method table: each kvbus operation as
 * one SQL statement on the store's table, sent through the shared pool of
 * pg_conn.c, and each answer turned back into a kv_reply.
 *
 * Layout (Nuxeo's): key text primary key, long bigint, string text, bytes
 * bytea, ttl bigint (absolute expiry in epoch seconds, NULL = none). A
 * value goes to exactly one of long / string / bytes (pg_classify); a read
 * takes the first of string, long (as decimal text), bytes. Time is the
 * database's: "now" is floor(extract(epoch FROM now())) in every
 * statement, a row is live while ttl IS NULL OR ttl > now, and every
 * statement ignores (or, for writes, replaces) rows that are not live, so
 * expiry shows at once. A put with ttl N stores ttl = now + N.
 *
 * The table is created at open, asynchronously; calls made before it
 * exists wait for it (within their deadline), and a call that finds it
 * gone has it created again. A timer deletes expired rows in batches.
 *
 * Left out: prepared statements (each statement is parsed per call),
 * stats (known = false).
 */
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <uv.h>

#include "backends/postgres/pg_conn.h"
#include "backends/postgres/pg_int.h"
#include "backends/postgres/postgres.h"
#include "server/srv_log.h"

/* SQL building blocks; @T is the quoted table, @I its ttl index, t the
 * table's alias. */
#define PG_NOW "floor(extract(epoch FROM now()))::bigint"
#define PG_LIVE "(t.ttl IS NULL OR t.ttl > " PG_NOW ")"
#define PG_VALUE                                                               \
    "coalesce(convert_to(t.string, 'UTF8'), convert_to(t.long::text, "         \
    "'UTF8'), t.bytes)"
#define PG_EXPIRY(n) "CASE WHEN " n " = 0 THEN NULL ELSE " PG_NOW " + " n " END"
#define PG_TTL_LEFT                                                            \
    "CASE WHEN t.ttl IS NULL THEN 0 "                                          \
    "ELSE ceil(t.ttl - extract(epoch FROM now()))::bigint END"
/* The absolute expiry for a TTL in seconds held by parameter $2 / $5. */
#define PG_EXPIRY_P2 PG_EXPIRY("$2")
#define PG_EXPIRY_P5 PG_EXPIRY("$5")
#define PG_UPSERT                                                              \
    "INSERT INTO @T AS t (key, long, string, bytes, ttl) "                     \
    "VALUES ($1, $2, $3, $4, " PG_EXPIRY_P5 ") "                               \
    "ON CONFLICT (key) DO UPDATE SET long = excluded.long, "                   \
    "string = excluded.string, bytes = excluded.bytes, ttl = excluded.ttl"

enum pg_sql_id {
    PG_SQL_SETUP,
    PG_SQL_GET,
    PG_SQL_PUT,
    PG_SQL_DEL,
    PG_SQL_SET_TTL,
    PG_SQL_CAS_CREATE,
    PG_SQL_CAS_REPLACE,
    PG_SQL_CAS_DELETE,
    PG_SQL_CAS_ABSENT,
    PG_SQL_INCR,
    PG_SQL_MGET,
    PG_SQL_KEYS,
    PG_SQL_CLEAR,
    PG_SQL_SWEEP,
    PG_SQL__COUNT
};

/* Every statement; parameters are documented in docs/backends-postgres.md
 * and filled by the method of the same name below. */
static const char *const pg_sql_templates[PG_SQL__COUNT] = {
    [PG_SQL_SETUP] = "CREATE TABLE IF NOT EXISTS @T (key text PRIMARY KEY, "
                     "long bigint, string text, bytes bytea, ttl bigint); "
                     "CREATE INDEX IF NOT EXISTS @I ON @T (ttl)",
    [PG_SQL_GET] = "SELECT " PG_VALUE ", " PG_TTL_LEFT
                   " FROM @T AS t WHERE t.key = $1 AND " PG_LIVE,
    [PG_SQL_PUT] = PG_UPSERT,
    [PG_SQL_DEL] = "DELETE FROM @T AS t WHERE t.key = $1 RETURNING " PG_LIVE,
    [PG_SQL_SET_TTL] = "UPDATE @T AS t SET ttl = " PG_EXPIRY_P2
                       " WHERE t.key = $1 AND " PG_LIVE " RETURNING true",
    [PG_SQL_CAS_CREATE] = PG_UPSERT " WHERE NOT " PG_LIVE " RETURNING true",
    [PG_SQL_CAS_REPLACE] =
        "UPDATE @T AS t SET long = $2, string = $3, bytes = $4, "
        "ttl = " PG_EXPIRY_P5 " WHERE t.key = $1 AND " PG_LIVE " AND " PG_VALUE
        " = $6 RETURNING true",
    [PG_SQL_CAS_DELETE] = "DELETE FROM @T AS t WHERE t.key = $1 AND " PG_LIVE
                          " AND " PG_VALUE " = $2 RETURNING true",
    [PG_SQL_CAS_ABSENT] = "SELECT NOT EXISTS (SELECT 1 FROM @T AS t "
                          "WHERE t.key = $1 AND " PG_LIVE ")",
    [PG_SQL_INCR] =
        "INSERT INTO @T AS t (key, long) VALUES ($1, $2) "
        "ON CONFLICT (key) DO UPDATE SET "
        "long = CASE WHEN " PG_LIVE " THEN t.long + excluded.long "
        "ELSE excluded.long END, string = NULL, bytes = NULL, "
        "ttl = CASE WHEN " PG_LIVE " THEN t.ttl END "
        "WHERE NOT " PG_LIVE " OR (t.long IS NOT NULL AND t.string IS NULL "
        "AND t.bytes IS NULL) RETURNING t.long",
    [PG_SQL_MGET] = "SELECT k.i, " PG_VALUE
                    " FROM unnest($1::text[]) WITH ORDINALITY AS k(key, i) "
                    "JOIN @T AS t ON t.key = k.key WHERE " PG_LIVE,
    [PG_SQL_KEYS] =
        "SELECT t.key FROM @T AS t WHERE t.key LIKE $1 "
        "ESCAPE E'\\\\' AND t.key > $2 AND " PG_LIVE " ORDER BY t.key LIMIT $3",
    [PG_SQL_CLEAR] = "DELETE FROM @T",
    [PG_SQL_SWEEP] = "DELETE FROM @T WHERE ctid = ANY (ARRAY (SELECT t.ctid "
                     "FROM @T AS t WHERE t.ttl <= " PG_NOW " LIMIT $1))",
};

#define PG_SQLSTATE_UNDEFINED_TABLE "42P01"
#define PG_INT8_BYTES 8
#define PG_QUOTED_MAX (2 * PG_IDENT_MAX + 3)

enum pg_table_state {
    PG_TABLE_UNKNOWN,  /* not created by us yet (or found missing) */
    PG_TABLE_CREATING, /* the setup statement is on its way */
    PG_TABLE_READY,    /* exists: calls go straight to the pool */
};

struct pg_backend {
    struct kv_backend base;       /* must be first */
    pg_pool *pool;                /* shared with stores of the same url */
    const char *store;            /* conf->name */
    uint32_t timeout_ms;          /* per call, conf->op_timeout_ms */
    char table[PG_IDENT_MAX + 1]; /* unquoted, for logs */
    char *sql[PG_SQL__COUNT];     /* owned; table name filled in */
    enum pg_table_state table_state;
    int setup_attempts;      /* tries of the current setup */
    pg_qlist waiting;        /* calls waiting for the table */
    uv_timer_t *sweep_timer; /* own allocation; NULL when none */
    bool sweeping;           /* a sweep statement is on its way */
    bool closing;
};

/* One call in flight, kept at the start of its statement's buffer. */
struct pg_call {
    struct pg_backend *pb;
    kv_op op;
    kv_done_cb done;
    void *ud;
    size_t n; /* mget: keys asked; keys: page size */
};

/* Bytes reserved for struct pg_call, keeping what follows aligned. */
#define PG_CALL_BYTES                                                          \
    ((sizeof(struct pg_call) + sizeof(max_align_t) - 1) /                      \
     sizeof(max_align_t) * sizeof(max_align_t))

static inline struct pg_backend *pg_of(kv_backend *b)
{
    return (struct pg_backend *)b;
}

static int pg_err_nomem(struct pg_backend *pb, kv_err *err, const char *what)
{
    return kv_err_set(err, KV_ENOMEM, "store %s: out of memory (%s)", pb->store,
                      what);
}

/* ------------------------------------------------------------------ */
/* Parameters                                                           */

/* Appends a binary parameter of type `type` copied to *w. */
static void param_bytes(pg_query *q, char **w, Oid type, kv_bytes b)
{
    int i = q->nparams++;

    if (b.len)
        memcpy(*w, b.ptr, b.len);
    q->types[i] = type;
    q->values[i] = *w;
    q->lengths[i] = (int)b.len;
    *w += b.len;
}

/* Appends a binary parameter of len bytes already written at *w. */
static void param_here(pg_query *q, char **w, Oid type, size_t len)
{
    int i = q->nparams++;

    q->types[i] = type;
    q->values[i] = *w;
    q->lengths[i] = (int)len;
    *w += len;
}

static void param_int8(pg_query *q, char **w, int64_t v)
{
    int i = q->nparams++;

    pg_put_be64(*w, v);
    q->types[i] = PG_OID_INT8;
    q->values[i] = *w;
    q->lengths[i] = PG_INT8_BYTES;
    *w += PG_INT8_BYTES;
}

static void param_null(pg_query *q, Oid type)
{
    int i = q->nparams++;

    q->types[i] = type;
    q->values[i] = NULL;
    q->lengths[i] = 0;
}

/* Appends the three value parameters long, string, bytes: the value in
 * its column, NULL in the two others. Uses up to value.len + 8 bytes. */
static void param_value(pg_query *q, char **w, kv_bytes value)
{
    int64_t num = 0;

    switch (pg_classify(value, &num)) {
    case PG_PLACE_LONG:
        param_int8(q, w, num);
        param_null(q, PG_OID_TEXT);
        param_null(q, PG_OID_BYTEA);
        break;
    case PG_PLACE_STRING:
        param_null(q, PG_OID_INT8);
        param_bytes(q, w, PG_OID_TEXT, value);
        param_null(q, PG_OID_BYTEA);
        break;
    case PG_PLACE_BYTES:
        param_null(q, PG_OID_INT8);
        param_null(q, PG_OID_TEXT);
        param_bytes(q, w, PG_OID_BYTEA, value);
        break;
    }
}

/* ------------------------------------------------------------------ */
/* Reading results                                                      */

/* The int8 at (row, col), false when it is not one. */
static bool res_int8(const PGresult *res, int row, int col, int64_t *out)
{
    if (PQgetisnull(res, row, col) ||
        PQgetlength(res, row, col) != PG_INT8_BYTES)
        return false;
    *out = pg_get_be64(PQgetvalue(res, row, col));
    return true;
}

/* The boolean of the first row's first column; false when none. */
static bool res_first_bool(const PGresult *res)
{
    return PQntuples(res) > 0 && PQnfields(res) > 0 &&
           !PQgetisnull(res, 0, 0) && PQgetlength(res, 0, 0) == 1 &&
           PQgetvalue(res, 0, 0)[0] != 0;
}

/* The value bytes at (row, col); ptr NULL when the column is NULL. */
static kv_bytes res_bytes(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return (kv_bytes){NULL, 0};
    return (kv_bytes){PQgetvalue(res, row, col),
                      (size_t)PQgetlength(res, row, col)};
}

/* ------------------------------------------------------------------ */
/* Answering calls                                                      */

static int answer_get(const PGresult *res, kv_reply *r)
{
    if (PQntuples(res) == 0)
        return 0;
    if (PQnfields(res) != 2 || !res_int8(res, 0, 1, &r->ttl_left_s))
        return KV_EUNAVAIL;
    r->value = res_bytes(res, 0, 0);
    r->found = r->value.ptr != NULL; /* a row with no value is absent */
    if (!r->found)
        r->ttl_left_s = 0;
    return 0;
}

static int answer_incr(const PGresult *res, kv_reply *r, kv_err *err)
{
    if (PQntuples(res) == 0)
        return kv_err_set(err, KV_ENOTINT,
                          "value is not a 64-bit decimal integer");
    if (PQnfields(res) != 1 || !res_int8(res, 0, 0, &r->number))
        return KV_EUNAVAIL;
    return 0;
}

static int answer_mget(const PGresult *res, size_t nkeys, kv_reply *r)
{
    int rows = PQntuples(res), i;

    if (nkeys == 0)
        return 0;
    r->values = calloc(nkeys, sizeof *r->values);
    if (!r->values)
        return KV_ENOMEM;
    if (rows > 0 && PQnfields(res) != 2)
        return KV_EUNAVAIL;
    for (i = 0; i < rows; i++) {
        int64_t ord;
        if (!res_int8(res, i, 0, &ord) || ord < 1 || (uint64_t)ord > nkeys)
            return KV_EUNAVAIL;
        r->values[ord - 1] = res_bytes(res, i, 1);
    }
    return 0;
}

/*
 * A page of keys: the first `limit` rows (the statement asks for one
 * more, to know whether another page follows) and, when it does, the
 * cursor that resumes after the last key of this page.
 */
static int answer_keys(const PGresult *res, size_t limit, kv_reply *r,
                       char **cursor)
{
    size_t rows = (size_t)PQntuples(res), i;

    if (rows > 0 && PQnfields(res) != 1)
        return KV_EUNAVAIL;
    r->nkeys = rows > limit ? limit : rows;
    if (r->nkeys) {
        r->keys = malloc(r->nkeys * sizeof *r->keys);
        if (!r->keys)
            return KV_ENOMEM;
    }
    for (i = 0; i < r->nkeys; i++) {
        r->keys[i] = res_bytes(res, (int)i, 0);
        if (!r->keys[i].ptr)
            return KV_EUNAVAIL;
    }
    if (rows > limit && limit > 0) {
        kv_bytes last = r->keys[limit - 1];
        *cursor = malloc(kv_cursor_len(last.len) + 1);
        if (!*cursor)
            return KV_ENOMEM;
        r->cursor = (kv_bytes){*cursor, kv_cursor_encode(last, *cursor)};
    }
    return 0;
}

/* The statement of a call answered: builds the reply, calls done. */
static void call_done(pg_query *q, int status, const PGresult *res,
                      const kv_err *err)
{
    struct pg_call *call = q->ud;
    struct pg_backend *pb = call->pb;
    kv_reply r = {.op = call->op};
    kv_err e = {0};
    char *cursor = NULL;
    int rc = 0;

    if (status != 0) {
        const char *state =
            res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        if (state && strcmp(state, PG_SQLSTATE_UNDEFINED_TABLE) == 0 &&
            pb->table_state == PG_TABLE_READY) {
            pb->table_state = PG_TABLE_UNKNOWN;
            srv_warn("store %s: table %s is missing; the next call creates "
                     "it again",
                     pb->store, pb->table);
        }
        call->done(status, NULL, err, call->ud);
        return;
    }
    switch (call->op) {
    case KV_OP_GET:
        rc = answer_get(res, &r);
        break;
    case KV_OP_DEL:
        r.found = res_first_bool(res);
        break;
    case KV_OP_SET_TTL:
        r.found = PQntuples(res) > 0;
        break;
    case KV_OP_CAS:
        r.found = res_first_bool(res);
        break;
    case KV_OP_INCR:
        rc = answer_incr(res, &r, &e);
        break;
    case KV_OP_MGET:
        rc = answer_mget(res, call->n, &r);
        break;
    case KV_OP_KEYS:
        rc = answer_keys(res, call->n, &r, &cursor);
        break;
    default: /* put, clear: nothing to read */
        break;
    }
    if (rc != 0 && !e.code)
        kv_err_set(&e, rc, "store %s: %s", pb->store,
                   rc == KV_ENOMEM ? "out of memory"
                                   : "unexpected answer from PostgreSQL");
    if (rc != 0)
        call->done(rc, NULL, &e, call->ud);
    else
        call->done(0, &r, NULL, call->ud);
    free(r.values);
    free(r.keys);
    free(cursor);
}

/* ------------------------------------------------------------------ */
/* The table                                                            */

static int setup_start(struct pg_backend *pb, kv_err *err);

/* Fails every call waiting for the table with status and err. */
static void fail_waiting(struct pg_backend *pb, int status, const kv_err *err)
{
    pg_query *q;

    while ((q = pg_qlist_pop(&pb->waiting)) != NULL)
        pg_query_complete(q, status, err);
}

/* The CREATE statements answered. */
static void setup_done(pg_query *q, int status, const PGresult *res,
                       const kv_err *err)
{
    struct pg_backend *pb = q->ud;
    const char *state;
    kv_err e = {0};
    pg_query *w;

    if (status == 0) {
        pb->table_state = PG_TABLE_READY;
        pb->setup_attempts = 0;
        srv_info("store %s: table %s ready on %s", pb->store, pb->table,
                 pg_pool_where(pb->pool));
        while ((w = pg_qlist_pop(&pb->waiting)) != NULL)
            if (pg_pool_submit(w, &e) != 0)
                pg_query_complete(w, e.code, &e);
        return;
    }
    pb->table_state = PG_TABLE_UNKNOWN;
    if (pb->closing) {
        fail_waiting(pb, status, err);
        return;
    }
    state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (pg_sqlstate_setup_race(state) &&
        ++pb->setup_attempts < PG_SETUP_ATTEMPTS && setup_start(pb, &e) == 0)
        return; /* another node created it at the same time: again */
    pb->setup_attempts = 0;
    /* Without an answer from the server the pool has logged why. */
    srv_log(res ? SRV_LOG_WARN : SRV_LOG_DEBUG, "%s (creating table %s)",
            err ? err->msg : "unknown error", pb->table);
    fail_waiting(pb, status, err);
}

/*
 * Sends CREATE TABLE / CREATE INDEX IF NOT EXISTS. Returns 0 (setup_done
 * will run, possibly already has) or the pool's refusal.
 */
static int setup_start(struct pg_backend *pb, kv_err *err)
{
    pg_query *q = pg_query_new(pb->pool, pb->timeout_ms, 0);
    int rc;

    if (!q)
        return pg_err_nomem(pb, err, "table setup");
    q->sql = pb->sql[PG_SQL_SETUP];
    q->multi = true;
    q->store = pb->store;
    q->owner = pb;
    q->done = setup_done;
    q->ud = pb;
    pb->table_state = PG_TABLE_CREATING;
    rc = pg_pool_submit(q, err);
    if (rc != 0) {
        pb->table_state = PG_TABLE_UNKNOWN;
        pg_query_discard(q);
    }
    return rc;
}

/*
 * Sends the statement of a call, or holds it until the table exists
 * (starting its creation when nobody has). Returns 0 (its callback will
 * run) or an error, having discarded q.
 */
static int store_submit(struct pg_backend *pb, pg_query *q, kv_err *err)
{
    int rc;

    if (pb->table_state == PG_TABLE_READY) {
        rc = pg_pool_submit(q, err);
    } else if ((rc = pg_pool_check(pb->pool, pb->store, err)) != 0) {
        /* refused below */
    } else if (pb->waiting.len >= PG_QUEUE_MAX) {
        rc = kv_err_set(err, KV_EUNAVAIL,
                        "store %s: %d calls are already waiting for table %s",
                        pb->store, PG_QUEUE_MAX, pb->table);
    } else {
        pg_qlist_push(&pb->waiting, q);
        if (pb->table_state == PG_TABLE_UNKNOWN &&
            (rc = setup_start(pb, err)) != 0)
            pg_qlist_pop(&pb->waiting); /* only q waited */
    }
    if (rc != 0)
        pg_query_discard(q);
    return rc;
}

/*
 * A statement for a call of op with `extra` bytes for its parameters;
 * *w points at them. NULL (err set) when out of memory.
 */
static pg_query *call_new(struct pg_backend *pb, kv_op op, kv_done_cb done,
                          void *ud, size_t extra, char **w, kv_err *err)
{
    pg_query *q = pg_query_new(pb->pool, pb->timeout_ms, PG_CALL_BYTES + extra);
    struct pg_call *call;

    if (!q) {
        pg_err_nomem(pb, err, kv_op_name(op));
        return NULL;
    }
    call = (struct pg_call *)q->buf;
    call->pb = pb;
    call->op = op;
    call->done = done;
    call->ud = ud;
    q->store = pb->store;
    q->owner = pb;
    q->done = call_done;
    q->ud = call;
    *w = q->buf + PG_CALL_BYTES;
    return q;
}

/* ------------------------------------------------------------------ */
/* Methods                                                              */

/* get: $1 key. Answers the value and whole seconds left, rounded up. */
static int pg_get(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                  kv_err *err)
{
    struct pg_backend *pb = pg_of(b);
    char *w;
    pg_query *q = call_new(pb, req->op, done, ud, req->key.len, &w, err);

    if (!q)
        return KV_ENOMEM;
    q->sql = pb->sql[PG_SQL_GET];
    param_bytes(q, &w, PG_OID_TEXT, req->key);
    return store_submit(pb, q, err);
}

/* put: $1 key, $2..$4 the value in its column, $5 ttl seconds. */
static int pg_put(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                  kv_err *err)
{
    struct pg_backend *pb = pg_of(b);
    char *w;
    pg_query *q =
        call_new(pb, req->op, done, ud,
                 req->key.len + req->value.len + 2 * PG_INT8_BYTES, &w, err);

    if (!q)
        return KV_ENOMEM;
    q->sql = pb->sql[PG_SQL_PUT];
    param_bytes(q, &w, PG_OID_TEXT, req->key);
    param_value(q, &w, req->value);
    param_int8(q, &w, req->ttl_s);
    return store_submit(pb, q, err);
}

/* del: $1 key. found only for a live row; an expired one goes too. */
static int pg_del(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                  kv_err *err)
{
    struct pg_backend *pb = pg_of(b);
    char *w;
    pg_query *q = call_new(pb, req->op, done, ud, req->key.len, &w, err);

    if (!q)
        return KV_ENOMEM;
    q->sql = pb->sql[PG_SQL_DEL];
    param_bytes(q, &w, PG_OID_TEXT, req->key);
    return store_submit(pb, q, err);
}

/* set_ttl: $1 key, $2 ttl seconds (0 = none). found = the key is live. */
static int pg_set_ttl(kv_backend *b, const kv_req *req, kv_done_cb done,
                      void *ud, kv_err *err)
{
    struct pg_backend *pb = pg_of(b);
    char *w;
    pg_query *q =
        call_new(pb, req->op, done, ud, req->key.len + PG_INT8_BYTES, &w, err);

    if (!q)
        return KV_ENOMEM;
    q->sql = pb->sql[PG_SQL_SET_TTL];
    param_bytes(q, &w, PG_OID_TEXT, req->key);
    param_int8(q, &w, req->ttl_s);
    return store_submit(pb, q, err);
}

/*
 * cas: one conditional statement per case. absent->v: upsert that only
 * replaces an expired row; e->v: update of the live row whose value bytes
 * equal e ($6); e->absent: delete of it ($2); absent->absent: NOT EXISTS.
 * found = swapped.
 */
static int pg_cas(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                  kv_err *err)
{
    struct pg_backend *pb = pg_of(b);
    size_t extra =
        req->key.len + req->value.len + req->expected.len + 2 * PG_INT8_BYTES;
    char *w;
    pg_query *q = call_new(pb, req->op, done, ud, extra, &w, err);

    if (!q)
        return KV_ENOMEM;
    param_bytes(q, &w, PG_OID_TEXT, req->key);
    if (!req->has_expected && !req->has_value) {
        q->sql = pb->sql[PG_SQL_CAS_ABSENT];
    } else if (!req->has_expected) {
        q->sql = pb->sql[PG_SQL_CAS_CREATE];
        param_value(q, &w, req->value);
        param_int8(q, &w, req->ttl_s);
    } else if (req->has_value) {
        q->sql = pb->sql[PG_SQL_CAS_REPLACE];
        param_value(q, &w, req->value);
        param_int8(q, &w, req->ttl_s);
        param_bytes(q, &w, PG_OID_BYTEA, req->expected);
    } else {
        q->sql = pb->sql[PG_SQL_CAS_DELETE];
        param_bytes(q, &w, PG_OID_BYTEA, req->expected);
    }
    return store_submit(pb, q, err);
}

/*
 * incr: $1 key, $2 delta. Upsert adding to `long` of a live integer row
 * (keeping its ttl), or starting from 0 for a missing or expired one. A
 * live row holding a string or bytes matches no row: KV_ENOTINT; a sum out
 * of range makes PostgreSQL raise 22003: KV_EOVERFLOW. Neither changes it.
 */
static int pg_incr(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                   kv_err *err)
{
    struct pg_backend *pb = pg_of(b);
    char *w;
    pg_query *q =
        call_new(pb, req->op, done, ud, req->key.len + PG_INT8_BYTES, &w, err);

    if (!q)
        return KV_ENOMEM;
    q->sql = pb->sql[PG_SQL_INCR];
    param_bytes(q, &w, PG_OID_TEXT, req->key);
    param_int8(q, &w, req->delta);
    return store_submit(pb, q, err);
}

/* mget: $1 the keys as text[]; each row names its key by ordinal. */
static int pg_mget(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                   kv_err *err)
{
    struct pg_backend *pb = pg_of(b);
    size_t size = pg_text_array_size(req->keys, req->nkeys);
    struct pg_call *call;
    kv_reply r = {.op = req->op};
    char *w;
    pg_query *q;

    if (req->nkeys == 0) {
        done(0, &r, NULL, ud);
        return 0;
    }
    q = call_new(pb, req->op, done, ud, size, &w, err);
    if (!q)
        return KV_ENOMEM;
    call = q->ud;
    call->n = req->nkeys;
    q->sql = pb->sql[PG_SQL_MGET];
    size = pg_text_array_encode(req->keys, req->nkeys, w);
    param_here(q, &w, PG_OID_TEXT_ARRAY, size);
    return store_submit(pb, q, err);
}

/*
 * keys: $1 the LIKE pattern of the prefix, $2 the key the cursor resumes
 * after ('' at the start), $3 limit + 1. Pages in key order, so a key
 * present for the whole listing is returned exactly once.
 */
static int pg_keys(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                   kv_err *err)
{
    struct pg_backend *pb = pg_of(b);
    size_t limit = req->limit ? req->limit : KV_KEYS_LIMIT_DEFAULT;
    size_t extra = 2 * req->prefix.len + 2 + req->cursor.len + PG_INT8_BYTES;
    struct pg_call *call;
    size_t len = 0;
    char *w;
    pg_query *q = call_new(pb, req->op, done, ud, extra, &w, err);
    int rc;

    if (!q)
        return KV_ENOMEM;
    call = q->ud;
    call->n = limit;
    q->sql = pb->sql[PG_SQL_KEYS];
    len = pg_like_prefix(req->prefix, w);
    param_here(q, &w, PG_OID_TEXT, len);
    w++; /* the NUL pg_like_prefix wrote */
    len = 0;
    if (req->cursor.len &&
        (rc = kv_cursor_decode(req->cursor, w, &len, err)) != 0) {
        pg_query_discard(q);
        return rc;
    }
    param_here(q, &w, PG_OID_TEXT, len);
    param_int8(q, &w, (int64_t)limit + 1);
    return store_submit(pb, q, err);
}

/* clear: deletes every row of the table (expired ones too). */
static int pg_clear(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                    kv_err *err)
{
    struct pg_backend *pb = pg_of(b);
    char *w;
    pg_query *q = call_new(pb, req->op, done, ud, 0, &w, err);

    if (!q)
        return KV_ENOMEM;
    q->sql = pb->sql[PG_SQL_CLEAR];
    return store_submit(pb, q, err);
}

/* ------------------------------------------------------------------ */
/* Sweeping expired rows                                                */

static void sweep_tick(uv_timer_t *t);

/* A sweep statement answered; a full batch means more: sweep again soon. */
static void sweep_done(pg_query *q, int status, const PGresult *res,
                       const kv_err *err)
{
    struct pg_backend *pb = q->ud;
    long n;

    pb->sweeping = false;
    if (pb->closing)
        return;
    if (status != 0) {
        srv_debug("store %s: sweep failed: %s", pb->store,
                  err ? err->msg : "unknown error");
        return;
    }
    n = strtol(PQcmdTuples((PGresult *)res), NULL, 10);
    if (n > 0)
        srv_debug("store %s: swept %ld expired rows", pb->store, n);
    if (n >= PG_SWEEP_BATCH && pb->sweep_timer)
        uv_timer_start(pb->sweep_timer, sweep_tick, PG_SWEEP_AGAIN_MS,
                       PG_SWEEP_INTERVAL_MS);
}

/* Deletes up to PG_SWEEP_BATCH expired rows, when the table is there. */
static void sweep_tick(uv_timer_t *t)
{
    struct pg_backend *pb = t->data;
    kv_err err = {0};
    pg_query *q;
    char *w;

    if (!pb || pb->sweeping || pb->table_state != PG_TABLE_READY ||
        !pg_pool_up(pb->pool))
        return;
    q = pg_query_new(pb->pool, pb->timeout_ms, PG_INT8_BYTES);
    if (!q)
        return;
    w = q->buf;
    q->sql = pb->sql[PG_SQL_SWEEP];
    q->store = pb->store;
    q->owner = pb;
    q->done = sweep_done;
    q->ud = pb;
    param_int8(q, &w, PG_SWEEP_BATCH);
    pb->sweeping = true;
    if (pg_pool_submit(q, &err) != 0) {
        pb->sweeping = false;
        pg_query_discard(q);
    }
}

/* ------------------------------------------------------------------ */
/* Open, close, health                                                  */

/* Frees a handle of this backend; must not touch the instance. */
static void handle_free(uv_handle_t *h)
{
    free(h);
}

static void free_sql(struct pg_backend *pb)
{
    int i;

    for (i = 0; i < PG_SQL__COUNT; i++) {
        free(pb->sql[i]);
        pb->sql[i] = NULL;
    }
}

/*
 * Names the table, builds the statements, starts the sweep timer
 * (unreferenced), joins the pool for conf->url and starts creating the
 * table. Does not wait for the server: a store opens while PostgreSQL is
 * down and serves once it is up. Errors: KV_EINVAL (no loop, a url libpq
 * cannot parse, bad table name), KV_ENOMEM, the pool's.
 */
static int pg_open(kv_backend *b, const kv_store_conf *conf, kv_err *err)
{
    struct pg_backend *pb = pg_of(b);
    char index[PG_IDENT_MAX + 1];
    char qtable[PG_QUOTED_MAX], qindex[PG_QUOTED_MAX];
    kv_err ignored = {0};
    int rc, i;

    pb->store = conf->name;
    pb->timeout_ms =
        conf->op_timeout_ms ? conf->op_timeout_ms : KV_OP_TIMEOUT_MS_DEFAULT;
    if (!b->loop)
        return kv_err_set(err, KV_EINVAL,
                          "store %s: the postgres backend needs an event loop",
                          conf->name);
    if (!pg_conninfo_valid(conf->url))
        return kv_err_set(err, KV_EINVAL,
                          "store %s: url is neither a libpq connection string "
                          "nor a postgresql:// URL",
                          conf->name);
    rc = pg_table_name(conf->name, conf->table, pb->table, err);
    if (rc != 0)
        return rc;
    pg_index_name(pb->table, index);
    pg_quote_ident(pb->table, qtable, sizeof qtable);
    pg_quote_ident(index, qindex, sizeof qindex);
    for (i = 0; i < PG_SQL__COUNT; i++) {
        pb->sql[i] = pg_sql_expand(pg_sql_templates[i], qtable, qindex);
        if (!pb->sql[i]) {
            rc = pg_err_nomem(pb, err, "statements");
            goto fail;
        }
    }
    pb->sweep_timer = malloc(sizeof *pb->sweep_timer);
    if (!pb->sweep_timer) {
        rc = pg_err_nomem(pb, err, "sweep timer");
        goto fail;
    }
    rc = uv_timer_init(b->loop, pb->sweep_timer);
    if (rc != 0) {
        free(pb->sweep_timer);
        pb->sweep_timer = NULL;
        rc = kv_err_set(err, KV_EUNAVAIL, "store %s: timer: %s", pb->store,
                        uv_strerror(rc));
        goto fail;
    }
    pb->sweep_timer->data = pb;
    rc = pg_pool_acquire(b->loop, conf->url, &pb->pool, err);
    if (rc != 0)
        goto fail;
    uv_timer_start(pb->sweep_timer, sweep_tick, PG_SWEEP_INTERVAL_MS,
                   PG_SWEEP_INTERVAL_MS);
    uv_unref((uv_handle_t *)pb->sweep_timer);
    if (pg_pool_check(pb->pool, pb->store, NULL) == 0)
        setup_start(pb, &ignored); /* else the first call starts it */
    return 0;

fail:
    if (pb->sweep_timer) {
        pb->sweep_timer->data = NULL;
        uv_close((uv_handle_t *)pb->sweep_timer, handle_free);
        pb->sweep_timer = NULL;
    }
    free_sql(pb);
    return rc;
}

/*
 * Stops the sweep, answers every call still waiting or running with
 * KV_EUNAVAIL (running statements finish on the server, their results are
 * dropped), leaves the pool and frees the statements. Handles are freed by
 * their close callbacks, after the core has freed the instance.
 */
static void pg_close(kv_backend *b)
{
    struct pg_backend *pb = pg_of(b);
    kv_err err = {0};

    pb->closing = true;
    if (pb->sweep_timer) {
        uv_timer_stop(pb->sweep_timer);
        pb->sweep_timer->data = NULL;
        uv_close((uv_handle_t *)pb->sweep_timer, handle_free);
        pb->sweep_timer = NULL;
    }
    kv_err_set(&err, KV_EUNAVAIL, "store %s: closing", pb->store);
    fail_waiting(pb, KV_EUNAVAIL, &err);
    if (pb->pool) {
        pg_pool_cancel(pb->pool, pb, &err);
        pg_pool_release(pb->pool);
        pb->pool = NULL;
    }
    free_sql(pb);
}

/* Up while at least one connection to the server is. */
static bool pg_healthy(kv_backend *b)
{
    struct pg_backend *pb = pg_of(b);

    return pb->pool && pg_pool_up(pb->pool);
}

/*
 * The row count is not known without a scan. Reconnects are the pool's,
 * shared by every store on the same url.
 */
static void pg_stats(kv_backend *b, kv_backend_stats *out)
{
    struct pg_backend *pb = pg_of(b);

    out->known = false;
    out->reconnects = pb->pool ? pg_pool_reconnects(pb->pool) : 0;
}

const struct kv_backend_ops pg_backend_ops = {
    .version = KV_BACKEND_OPS_VERSION,
    .name = "postgres",
    .size = sizeof(struct pg_backend),
    .open = pg_open,
    .close = pg_close,
    .get = pg_get,
    .put = pg_put,
    .del = pg_del,
    .set_ttl = pg_set_ttl,
    .cas = pg_cas,
    .incr = pg_incr,
    .mget = pg_mget,
    .keys = pg_keys,
    .clear = pg_clear,
    .stats = pg_stats,
    .healthy = pg_healthy,
};
