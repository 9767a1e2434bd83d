/*
 * pg_direct.c - the "direct libpq" reference of the postgres rows of
 * tests/bench/run: runs the statement kvbusd's postgres backend sends for
 * a GET or a PUT, straight from C, for a fixed time, and prints one line:
 *
 *   pg_direct op=get conns=4 seconds=5 requests=61234 errors=0
 *             rps=12246 p50_ms=0.31 p99_ms=0.80
 *
 * Each of --conns threads owns one blocking connection and runs one
 * statement at a time, as each connection of kvbusd's pool does. The
 * statements are the text of backends/postgres/pg_kv.c (PG_SQL_GET,
 * PG_SQL_PUT) with the table filled in, sent as kvbusd sends them: not
 * prepared (PQexecParams, the unnamed statement), every parameter typed
 * and binary, results in binary. The connection gets kvbusd's extra
 * parameters (client_encoding=UTF8, fallback_application_name).
 *
 * GET reads --key; PUT cycles each thread over --keys keys named
 * <prefix><thread>-<n> with a --value-bytes value of 'v' (a string row,
 * like the "PUT postgres" row's wrk script). The table must exist (the
 * runner has kvbusd create it). Latency is per statement, from send to
 * result, every one kept and sorted for the percentiles.
 *
 * Left out: pipelining, and anything kvbusd does around the statement
 * (HTTP, the pool's queue); measuring that gap is the point of the row.
 *
 * Build: cc -std=c11 -O2 pg_direct.c $(pkg-config --cflags --libs libpq)
 *        -lpthread
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

/* The statements, as backends/postgres/pg_kv.c spells them. */
#define PG_NOW "floor(extract(epoch FROM now()))::bigint"
#define PG_LIVE "(t.ttl IS NULL OR t.ttl > " PG_NOW ")"
#define PG_VALUE                                                               \
    "coalesce(convert_to(t.string, 'UTF8'), convert_to(t.long::text, "         \
    "'UTF8'), t.bytes)"
#define PG_EXPIRY(n) "CASE WHEN " n " = 0 THEN NULL ELSE " PG_NOW " + " n " END"
#define PG_TTL_LEFT                                                            \
    "CASE WHEN t.ttl IS NULL THEN 0 "                                          \
    "ELSE ceil(t.ttl - extract(epoch FROM now()))::bigint END"
#define PG_EXPIRY_P5 PG_EXPIRY("$5")
#define PG_UPSERT                                                              \
    "INSERT INTO @T AS t (key, long, string, bytes, ttl) "                     \
    "VALUES ($1, $2, $3, $4, " PG_EXPIRY_P5 ") "                               \
    "ON CONFLICT (key) DO UPDATE SET long = excluded.long, "                   \
    "string = excluded.string, bytes = excluded.bytes, ttl = excluded.ttl"

static const char SQL_GET[] = "SELECT " PG_VALUE ", " PG_TTL_LEFT
                              " FROM @T AS t WHERE t.key = $1 AND " PG_LIVE;
static const char SQL_PUT[] = PG_UPSERT;

#define OID_BYTEA 17
#define OID_INT8 20
#define OID_TEXT 25
#define FORMAT_BINARY 1
#define PUT_PARAMS 5
#define KEY_BYTES_MAX 256
#define TABLE_BYTES_MAX 63
#define SQL_BYTES_MAX 1024
#define LAT_INITIAL 65536 /* latencies kept per thread before growing */
#define NS_PER_S 1000000000LL

struct options {
    const char *url;
    const char *op; /* "get" or "put" */
    const char *table;
    const char *key;        /* get */
    const char *key_prefix; /* put */
    int conns;
    int seconds;
    int keys; /* put: keys per thread */
    int value_bytes;
};

struct worker {
    pthread_t tid;
    int id;
    const struct options *opt;
    const char *sql;     /* with the table filled in */
    int64_t deadline_ns; /* CLOCK_MONOTONIC */
    uint32_t *lat_us;    /* one per answered statement; owned */
    size_t nlat, cap;
    long errors;
    char error[256]; /* the first error, for the report */
};

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* Replaces every "@T" of tmpl with the quoted table; out has cap bytes.
 * Returns 0, or -1 when it does not fit. */
static int sql_expand(const char *tmpl, const char *table, char *out,
                      size_t cap)
{
    size_t n = 0, tl = strlen(table), i;

    for (; *tmpl; tmpl++) {
        if (tmpl[0] == '@' && tmpl[1] == 'T') {
            if (n + tl + 2 + 1 > cap)
                return -1;
            out[n++] = '"';
            for (i = 0; i < tl; i++) {
                if (table[i] == '"')
                    return -1;
                out[n++] = table[i];
            }
            out[n++] = '"';
            tmpl++;
            continue;
        }
        if (n + 2 > cap)
            return -1;
        out[n++] = *tmpl;
    }
    out[n] = '\0';
    return 0;
}

/* Opens one connection as kvbusd does (blocking here). NULL on failure,
 * with the reason in w->error. */
static PGconn *connect_like_kvbusd(struct worker *w)
{
    static const char *const keys[] = {"dbname", "client_encoding",
                                       "fallback_application_name", NULL};
    const char *vals[] = {w->opt->url, "UTF8", "pg_direct", NULL};
    PGconn *pg = PQconnectdbParams(keys, vals, 1);

    if (!pg || PQstatus(pg) != CONNECTION_OK) {
        snprintf(w->error, sizeof w->error, "connect: %s",
                 pg ? PQerrorMessage(pg) : "out of memory");
        PQfinish(pg);
        return NULL;
    }
    return pg;
}

static int lat_push(struct worker *w, int64_t ns)
{
    if (w->nlat == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : LAT_INITIAL;
        uint32_t *p = realloc(w->lat_us, cap * sizeof *p);
        if (!p)
            return -1;
        w->lat_us = p;
        w->cap = cap;
    }
    w->lat_us[w->nlat++] = (uint32_t)(ns / 1000);
    return 0;
}

/* Runs statements until the deadline. Runs on: its own thread. */
static void *worker_run(void *arg)
{
    struct worker *w = arg;
    const struct options *o = w->opt;
    int put = strcmp(o->op, "put") == 0;
    PGconn *pg = connect_like_kvbusd(w);
    char key[KEY_BYTES_MAX];
    char *value = NULL;
    int64_t zero_be = 0; /* ttl 0: big-endian zero is zero */
    Oid types[PUT_PARAMS] = {OID_TEXT, OID_INT8, OID_TEXT, OID_BYTEA, OID_INT8};
    const char *values[PUT_PARAMS];
    int lengths[PUT_PARAMS];
    int formats[PUT_PARAMS] = {FORMAT_BINARY, FORMAT_BINARY, FORMAT_BINARY,
                               FORMAT_BINARY, FORMAT_BINARY};
    int n = 0;

    if (!pg) {
        w->errors++;
        return NULL;
    }
    if (put) {
        value = malloc((size_t)o->value_bytes + 1);
        if (!value) {
            snprintf(w->error, sizeof w->error, "out of memory");
            w->errors++;
            PQfinish(pg);
            return NULL;
        }
        memset(value, 'v', (size_t)o->value_bytes);
    }
    while (now_ns() < w->deadline_ns) {
        int64_t t0;
        PGresult *res;
        ExecStatusType st;

        if (put) {
            snprintf(key, sizeof key, "%s%d-%d", o->key_prefix, w->id, n);
            n = (n + 1) % o->keys;
            values[0] = key;
            lengths[0] = (int)strlen(key);
            values[1] = NULL; /* long */
            lengths[1] = 0;
            values[2] = value; /* string */
            lengths[2] = o->value_bytes;
            values[3] = NULL; /* bytes */
            lengths[3] = 0;
            values[4] = (const char *)&zero_be; /* ttl seconds */
            lengths[4] = (int)sizeof zero_be;
        } else {
            values[0] = o->key;
            lengths[0] = (int)strlen(o->key);
        }
        t0 = now_ns();
        res = PQexecParams(pg, w->sql, put ? PUT_PARAMS : 1, types, values,
                           lengths, formats, FORMAT_BINARY);
        st = PQresultStatus(res);
        if ((put && st == PGRES_COMMAND_OK) ||
            (!put && st == PGRES_TUPLES_OK && PQntuples(res) == 1)) {
            if (lat_push(w, now_ns() - t0) != 0) {
                PQclear(res);
                break;
            }
        } else {
            if (!w->errors)
                snprintf(w->error, sizeof w->error, "%s",
                         st == PGRES_TUPLES_OK ? "GET found no row\n"
                                               : PQerrorMessage(pg));
            w->errors++;
            if (PQstatus(pg) != CONNECTION_OK) {
                PQclear(res);
                break;
            }
        }
        PQclear(res);
    }
    free(value);
    PQfinish(pg);
    return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

    return (x > y) - (x < y);
}

static void usage(FILE *out)
{
    fprintf(out, "usage: pg_direct --url URL --op get|put [--conns N] "
                 "[--seconds S]\n"
                 "         [--table T] [--key K] [--key-prefix P] [--keys N] "
                 "[--value-bytes B]\n"
                 "  defaults: conns 4, seconds 5, table kv_pg, key bench-key,\n"
                 "  key-prefix direct-put-, keys 1000, value-bytes 100\n");
}

/* Parses a positive int option value; exits with status 2 when bad. */
static int positive(const char *name, const char *v)
{
    char *end;
    long n = strtol(v, &end, 10);

    if (*v == '\0' || *end != '\0' || n < 1 || n > 1000000) {
        fprintf(stderr, "pg_direct: %s must be a positive integer\n", name);
        exit(2);
    }
    return (int)n;
}

static void parse_args(int argc, char **argv, struct options *o)
{
    int i;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        }
        if (!v) {
            fprintf(stderr, "pg_direct: %s needs a value\n", a);
            exit(2);
        }
        i++;
        if (strcmp(a, "--url") == 0)
            o->url = v;
        else if (strcmp(a, "--op") == 0)
            o->op = v;
        else if (strcmp(a, "--table") == 0)
            o->table = v;
        else if (strcmp(a, "--key") == 0)
            o->key = v;
        else if (strcmp(a, "--key-prefix") == 0)
            o->key_prefix = v;
        else if (strcmp(a, "--conns") == 0)
            o->conns = positive(a, v);
        else if (strcmp(a, "--seconds") == 0)
            o->seconds = positive(a, v);
        else if (strcmp(a, "--keys") == 0)
            o->keys = positive(a, v);
        else if (strcmp(a, "--value-bytes") == 0)
            o->value_bytes = positive(a, v);
        else {
            fprintf(stderr, "pg_direct: unknown option %s\n", a);
            usage(stderr);
            exit(2);
        }
    }
    if (!o->url || (strcmp(o->op, "get") != 0 && strcmp(o->op, "put") != 0) ||
        strlen(o->table) > TABLE_BYTES_MAX ||
        strlen(o->key_prefix) > KEY_BYTES_MAX / 2) {
        usage(stderr);
        exit(2);
    }
}

int main(int argc, char **argv)
{
    struct options o = {
        .op = "get",
        .table = "kv_pg",
        .key = "bench-key",
        .key_prefix = "direct-put-",
        .conns = 4,
        .seconds = 5,
        .keys = 1000,
        .value_bytes = 100,
    };
    char sql[SQL_BYTES_MAX];
    struct worker *ws;
    uint32_t *all;
    size_t total = 0, k;
    long errors = 0;
    int64_t t0, elapsed;
    int i, started = 0;

    parse_args(argc, argv, &o);
    if (sql_expand(strcmp(o.op, "put") == 0 ? SQL_PUT : SQL_GET, o.table, sql,
                   sizeof sql) != 0) {
        fprintf(stderr, "pg_direct: bad table name\n");
        return 2;
    }
    ws = calloc((size_t)o.conns, sizeof *ws);
    if (!ws)
        return 1;
    t0 = now_ns();
    for (i = 0; i < o.conns; i++) {
        ws[i].id = i;
        ws[i].opt = &o;
        ws[i].sql = sql;
        ws[i].deadline_ns = t0 + (int64_t)o.seconds * NS_PER_S;
        if (pthread_create(&ws[i].tid, NULL, worker_run, &ws[i]) != 0) {
            fprintf(stderr, "pg_direct: cannot start thread %d\n", i);
            break;
        }
        started++;
    }
    for (i = 0; i < started; i++)
        pthread_join(ws[i].tid, NULL);
    elapsed = now_ns() - t0;

    for (i = 0; i < started; i++)
        total += ws[i].nlat;
    all = malloc((total ? total : 1) * sizeof *all);
    if (!all)
        return 1;
    for (i = 0, k = 0; i < started; i++) {
        memcpy(all + k, ws[i].lat_us, ws[i].nlat * sizeof *all);
        k += ws[i].nlat;
        errors += ws[i].errors;
        if (ws[i].errors)
            fprintf(stderr, "pg_direct: thread %d: %ld errors, first: %s", i,
                    ws[i].errors, ws[i].error);
        free(ws[i].lat_us);
    }
    qsort(all, total, sizeof *all, cmp_u32);
    printf("pg_direct op=%s conns=%d seconds=%d requests=%zu errors=%ld "
           "rps=%.0f p50_ms=%.2f p99_ms=%.2f\n",
           o.op, started, o.seconds, total, errors,
           (double)total * NS_PER_S / (double)elapsed,
           total ? all[total / 2] / 1000.0 : 0.0,
           total ? all[(size_t)((double)(total - 1) * 0.99)] / 1000.0 : 0.0);
    free(all);
    free(ws);
    return errors || started < o.conns || total == 0 ? 1 : 0;
}
