/*
 * test_postgres.c - unit tests of the postgres backend (backends/postgres).
 *
 * Most tests cover the pure helpers of pg_int.h: identifier quoting and
 * table/index naming, LIKE escaping, value placement, binary parameters,
 * SQLSTATE mapping, the server label that never shows a password, the
 * reconnect backoff and statement expansion (the keys cursor is the kvstore
 * core's, tested in test_kvstore.c). The rest drive the method table on a
 * real libuv loop without a PostgreSQL server: a port that refuses
 * connections (calls fail fast with KV_EUNAVAIL once the pool is down)
 * and a listener that accepts but never answers (a waiting call times out
 * with KV_ETIMEDOUT); closing answers what is left and frees everything
 * (checked under ASan). A fake server that speaks only the startup and
 * simple-query messages shows that the reconnect counter counts each pool
 * connection that comes back after a loss, never the first connects. The
 * SQL itself is exercised by the e2e suite against a real server.
 *
 * The backend logs through srv_log(); a stub below collects the lines so
 * tests can check that no password reaches a log.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "backends/postgres/pg_conn.h"
#include "backends/postgres/pg_int.h"
#include "backends/postgres/postgres.h"
#include "kvstore/kvstore.h"
#include "server/srv_log.h"
#include "tests/unit/t_net.h"

#define TEST(name) static void name(void **state __attribute__((unused)))

#define T_LOG_BYTES 8192      /* log lines kept by the srv_log stub */
#define T_LOOP_LIMIT_MS 10000 /* a loop test taking longer is stuck */
#define T_SHORT_TIMEOUT_MS 150
#define T_SECRET "s3cr3t-pw"

/* ------------------------------------------------------------------ */
/* srv_log stub                                                         */

static char t_log[T_LOG_BYTES];
static size_t t_log_len;

void srv_log(int level, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (getenv("T_VERBOSE")) {
        va_start(ap, fmt);
        fprintf(stderr, "log %d: ", level);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
    if (t_log_len >= sizeof t_log - 1)
        return;
    va_start(ap, fmt);
    n = vsnprintf(t_log + t_log_len, sizeof t_log - t_log_len, fmt, ap);
    va_end(ap);
    if (n > 0)
        t_log_len += (size_t)n < sizeof t_log - t_log_len
                         ? (size_t)n
                         : sizeof t_log - t_log_len - 1;
    if (t_log_len < sizeof t_log - 1)
        t_log[t_log_len++] = '\n';
    t_log[t_log_len] = '\0';
}

static kv_bytes b(const char *s)
{
    return (kv_bytes){s, strlen(s)};
}

/* ------------------------------------------------------------------ */
/* Value placement                                                      */

TEST(classify__canonical_integers__go_to_long)
{
    int64_t n = 0;

    assert_int_equal(pg_classify(b("0"), &n), PG_PLACE_LONG);
    assert_int_equal(n, 0);
    assert_int_equal(pg_classify(b("579"), &n), PG_PLACE_LONG);
    assert_int_equal(n, 579);
    assert_int_equal(pg_classify(b("-9223372036854775808"), &n), PG_PLACE_LONG);
    assert_true(n == INT64_MIN);
    assert_int_equal(pg_classify(b("9223372036854775807"), NULL),
                     PG_PLACE_LONG);
}

TEST(classify__non_canonical_integer_text__goes_to_string)
{
    const char *texts[] = {"01",  "-0",  " 1",
                           "1 ",  "+1",  "00",
                           "1e3", "0x1", "9223372036854775808",
                           "",    "abc", "é€"};
    size_t i;

    for (i = 0; i < sizeof texts / sizeof *texts; i++)
        assert_int_equal(pg_classify(b(texts[i]), NULL), PG_PLACE_STRING);
}

TEST(classify__nul_or_invalid_utf8__goes_to_bytes)
{
    assert_int_equal(pg_classify((kv_bytes){"1\0", 2}, NULL), PG_PLACE_BYTES);
    assert_int_equal(pg_classify((kv_bytes){"\0", 1}, NULL), PG_PLACE_BYTES);
    assert_int_equal(pg_classify(b("\xff\xfe"), NULL), PG_PLACE_BYTES);
    assert_int_equal(pg_classify(b("\xc3\x28"), NULL), PG_PLACE_BYTES);
    assert_int_equal(pg_classify(b("\xed\xa0\x80"), NULL), PG_PLACE_BYTES);
}

/* ------------------------------------------------------------------ */
/* Identifiers                                                          */

TEST(quote_ident__wraps_in_quotes_and_doubles_embedded_quotes)
{
    char out[64];

    assert_int_equal(pg_quote_ident("kv_a.b-c", out, sizeof out), 10);
    assert_string_equal(out, "\"kv_a.b-c\"");
    assert_int_equal(pg_quote_ident("a\"b", out, sizeof out), 6);
    assert_string_equal(out, "\"a\"\"b\"");
    assert_int_equal(pg_quote_ident("KV", out, sizeof out), 4);
    assert_string_equal(out, "\"KV\"");
}

TEST(quote_ident__too_small_buffer__reports_length_writes_nothing)
{
    char out[4] = "xyz";

    assert_int_equal(pg_quote_ident("abcd", out, sizeof out), 6);
    assert_string_equal(out, "xyz");
}

TEST(table_name__default_is_kv_store)
{
    char out[PG_IDENT_MAX + 1];

    assert_int_equal(pg_table_name("sessions.v2-x", NULL, out, NULL), 0);
    assert_string_equal(out, "kv_sessions.v2-x");
}

TEST(table_name__configured_table_is_used_as_is)
{
    char out[PG_IDENT_MAX + 1];

    assert_int_equal(pg_table_name("default", "kv", out, NULL), 0);
    assert_string_equal(out, "kv");
}

TEST(table_name__long_default__is_shortened_with_a_hash_and_stays_distinct)
{
    char a[PG_IDENT_MAX + 1], c[PG_IDENT_MAX + 1];
    char s1[KV_STORE_NAME_MAX + 1], s2[KV_STORE_NAME_MAX + 1];

    memset(s1, 'z', KV_STORE_NAME_MAX);
    s1[KV_STORE_NAME_MAX] = '\0';
    memcpy(s2, s1, sizeof s2);
    s2[KV_STORE_NAME_MAX - 1] = 'y'; /* differs past the kept bytes */
    assert_int_equal(pg_table_name(s1, NULL, a, NULL), 0);
    assert_int_equal(pg_table_name(s2, NULL, c, NULL), 0);
    assert_int_equal(strlen(a), PG_IDENT_MAX);
    assert_int_equal(strlen(c), PG_IDENT_MAX);
    assert_memory_equal(a, "kv_zzz", 6);
    assert_string_not_equal(a, c);
    assert_int_equal(a[PG_IDENT_MAX - PG_HASH_HEX - 1], '_');
}

TEST(table_name__configured_too_long_or_empty__is_refused)
{
    char out[PG_IDENT_MAX + 1], longname[PG_IDENT_MAX + 2];
    kv_err err = {0};

    memset(longname, 't', PG_IDENT_MAX + 1);
    longname[PG_IDENT_MAX + 1] = '\0';
    assert_int_equal(pg_table_name("s", longname, out, &err), KV_EINVAL);
    assert_non_null(strstr(err.msg, "at most 63"));
    assert_int_equal(pg_table_name("s", "", out, &err), KV_EINVAL);
}

TEST(index_name__is_table_ttl_idx_or_shortened)
{
    char out[PG_IDENT_MAX + 1], table[PG_IDENT_MAX + 1];

    pg_index_name("kv_default", out);
    assert_string_equal(out, "kv_default_ttl_idx");
    memset(table, 'q', PG_IDENT_MAX);
    table[PG_IDENT_MAX] = '\0';
    pg_index_name(table, out);
    assert_int_equal(strlen(out), PG_IDENT_MAX);
}

TEST(table_name__shortening_never_splits_a_utf8_character)
{
    char out[PG_IDENT_MAX + 1], name[64];
    size_t i;

    /* "kv_" + 30 x "é" (60 bytes) + "x" = 64 bytes: shortened. */
    for (i = 0; i < 30; i++)
        memcpy(name + 2 * i, "\xc3\xa9", 2);
    name[60] = 'x';
    name[61] = '\0';
    assert_int_equal(pg_table_name(name, NULL, out, NULL), 0);
    assert_true(kv_utf8_valid(out, strlen(out)));
}

/* ------------------------------------------------------------------ */
/* LIKE                                                                 */

TEST(like_prefix__escapes_backslash_percent_underscore_and_appends_percent)
{
    char out[64];

    assert_int_equal(pg_like_prefix(b("a%b_c\\d"), out), 11);
    assert_string_equal(out, "a\\%b\\_c\\\\d%");
    assert_int_equal(pg_like_prefix(b(""), out), 1);
    assert_string_equal(out, "%");
    pg_like_prefix(b("*?[.^"), out);
    assert_string_equal(out, "*?[.^%");
}

/* ------------------------------------------------------------------ */
/* SQLSTATE and binary parameters                                       */

TEST(sqlstate__maps_overflow_encoding_and_everything_else_to_unavailable)
{
    assert_int_equal(pg_sqlstate_code("22003"), KV_EOVERFLOW);
    assert_int_equal(pg_sqlstate_code("22001"), KV_EINVAL);
    assert_int_equal(pg_sqlstate_code("22021"), KV_EINVAL);
    assert_int_equal(pg_sqlstate_code("22P05"), KV_EINVAL);
    assert_int_equal(pg_sqlstate_code("57P01"), KV_EUNAVAIL);
    assert_int_equal(pg_sqlstate_code("08006"), KV_EUNAVAIL);
    assert_int_equal(pg_sqlstate_code("42P01"), KV_EUNAVAIL);
    assert_int_equal(pg_sqlstate_code("40001"), KV_EUNAVAIL);
    assert_int_equal(pg_sqlstate_code(NULL), KV_EUNAVAIL);
    assert_int_equal(pg_sqlstate_code("2200"), KV_EUNAVAIL);
    assert_int_equal(kv_errstatus(pg_sqlstate_code("22003")), 409);
    assert_int_equal(kv_errstatus(pg_sqlstate_code("57P01")), 503);
}

TEST(sqlstate__creation_races_are_retried)
{
    assert_true(pg_sqlstate_setup_race("23505"));
    assert_true(pg_sqlstate_setup_race("42P07"));
    assert_false(pg_sqlstate_setup_race("42501"));
    assert_false(pg_sqlstate_setup_race(NULL));
}

TEST(be64__round_trips_in_network_order)
{
    char buf[8];

    pg_put_be64(buf, 0x0102030405060708LL);
    assert_memory_equal(buf, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
    assert_true(pg_get_be64(buf) == 0x0102030405060708LL);
    pg_put_be64(buf, INT64_MIN);
    assert_true(pg_get_be64(buf) == INT64_MIN);
    pg_put_be64(buf, -1);
    assert_memory_equal(buf, "\xff\xff\xff\xff\xff\xff\xff\xff", 8);
}

TEST(text_array__has_array_recv_layout)
{
    kv_bytes keys[] = {b("a"), b("éé"), b("")};
    static const char want[] = "\0\0\0\1"                 /* ndim */
                               "\0\0\0\0"                 /* no nulls */
                               "\0\0\0\x19"               /* text */
                               "\0\0\0\3"                 /* 3 elements */
                               "\0\0\0\1"                 /* lower bound */
                               "\0\0\0\1a"                /* "a" */
                               "\0\0\0\4\xc3\xa9\xc3\xa9" /* "éé" */
                               "\0\0\0\0";                /* "" */
    char out[64];
    size_t n = pg_text_array_size(keys, 3);

    assert_int_equal(n, sizeof want - 1);
    assert_int_equal(pg_text_array_encode(keys, 3, out), n);
    assert_memory_equal(out, want, n);
}

/* ------------------------------------------------------------------ */
/* Labels, messages, backoff, statements                                */

TEST(where__shows_host_port_db_and_never_the_password)
{
    char out[PG_WHERE_MAX];

    pg_conninfo_where("postgresql://kv:" T_SECRET "@db.example:5433/kvbus", out,
                      sizeof out);
    assert_string_equal(out, "db.example:5433/kvbus");
    pg_conninfo_where("host=10.0.0.1 dbname=app password=" T_SECRET, out,
                      sizeof out);
    assert_string_equal(out, "10.0.0.1/app");
    pg_conninfo_where("dbname=x", out, sizeof out);
    assert_string_equal(out, "local socket/x");
    pg_conninfo_where("postgresql://[bad", out, sizeof out);
    assert_null(strstr(out, "bad"));
}

TEST(conninfo_valid__accepts_urls_and_key_values_refuses_garbage)
{
    assert_true(pg_conninfo_valid("postgresql://u:p@h:1/db?sslmode=disable"));
    assert_true(pg_conninfo_valid("host=h port=1 dbname=db"));
    assert_true(pg_conninfo_valid(""));
    assert_true(pg_conninfo_valid(NULL));
    assert_false(pg_conninfo_valid("postgresql://[bad"));
    assert_false(pg_conninfo_valid("host=h nosuchkey=1"));
    assert_false(pg_conninfo_valid("postgresql://h/db?nosuchparam=1"));
}

TEST(one_line__joins_libpq_lines)
{
    char msg[] = "connection to server failed: Connection refused\n\t"
                 "Is the server running?\n";

    assert_string_equal(pg_one_line(msg),
                        "connection to server failed: Connection refused "
                        "Is the server running?");
}

TEST(backoff__doubles_from_100_ms_to_5_s)
{
    uint32_t d = 0;
    const uint32_t want[] = {100, 200, 400, 800, 1600, 3200, 5000, 5000};
    size_t i;

    for (i = 0; i < sizeof want / sizeof *want; i++) {
        d = pg_backoff_next(d);
        assert_int_equal(d, want[i]);
    }
}

TEST(sql_expand__fills_table_and_index)
{
    char *s = pg_sql_expand("CREATE INDEX @I ON @T (ttl); -- @x @", "\"t.1\"",
                            "\"t.1_ttl_idx\"");

    assert_non_null(s);
    assert_string_equal(
        s, "CREATE INDEX \"t.1_ttl_idx\" ON \"t.1\" (ttl); -- @x @");
    free(s);
}

/* ------------------------------------------------------------------ */
/* The method table on a loop, without a server                         */

struct t_done {
    int calls;
    int status;
    char msg[KV_ERR_MSG_BYTES];
};

static void t_on_done(int status, const kv_reply *reply, const kv_err *err,
                      void *ud)
{
    struct t_done *d = ud;

    d->calls++;
    d->status = status;
    if (status != 0) {
        assert_null(reply);
        assert_non_null(err);
        snprintf(d->msg, sizeof d->msg, "%s", err->msg);
    }
}

/* An instance built the way the core does it. */
struct t_store {
    kv_backend *b;
    kv_store_conf conf;
};

static int t_open(struct t_store *s, uv_loop_t *loop, const char *url,
                  uint32_t timeout_ms, kv_err *err)
{
    memset(&s->conf, 0, sizeof s->conf);
    snprintf(s->conf.name, sizeof s->conf.name, "unit.store-1");
    snprintf(s->conf.backend, sizeof s->conf.backend, "postgres");
    s->conf.url = (char *)url;
    s->conf.op_timeout_ms = timeout_ms;
    s->b = calloc(1, pg_backend_ops.size);
    assert_non_null(s->b);
    s->b->ops = &pg_backend_ops;
    s->b->loop = loop;
    s->b->conf = &s->conf;
    return pg_backend_ops.open(s->b, &s->conf, err);
}

static void t_close(struct t_store *s)
{
    pg_backend_ops.close(s->b);
    free(s->b);
}

static void t_tick(uv_timer_t *t)
{
    (void)t;
}

/*
 * Runs loop until *flag is set or T_LOOP_LIMIT_MS passes. The backend's
 * handles are unreferenced (they never keep a loop alive by themselves),
 * so a referenced timer stands in for kvbusd's HTTP server meanwhile.
 */
static void t_run_until(uv_loop_t *loop, const int *flag)
{
    uint64_t start = uv_hrtime();
    uv_timer_t keep;

    uv_timer_init(loop, &keep);
    uv_timer_start(&keep, t_tick, 10, 10);
    while (!*flag && uv_hrtime() - start < T_LOOP_LIMIT_MS * 1000000ULL)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&keep, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    assert_true(*flag);
}

/* Runs the loop until every handle is closed; fails if one never is. */
static void t_drain(uv_loop_t *loop)
{
    int i;

    for (i = 0; i < 1000; i++)
        uv_run(loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_close(loop), 0);
}

TEST(open__without_a_loop__is_invalid)
{
    struct t_store s;
    kv_err err = {0};

    assert_int_equal(t_open(&s, NULL, "postgresql://127.0.0.1:1/x", 100, &err),
                     KV_EINVAL);
    free(s.b);
}

TEST(open__with_a_too_long_table__is_invalid)
{
    uv_loop_t loop;
    struct t_store s;
    kv_err err = {0};
    char table[PG_IDENT_MAX + 2];

    memset(table, 't', sizeof table - 1);
    table[sizeof table - 1] = '\0';
    uv_loop_init(&loop);
    memset(&s.conf, 0, sizeof s.conf);
    s.conf.table = table;
    snprintf(s.conf.name, sizeof s.conf.name, "x");
    s.b = calloc(1, pg_backend_ops.size);
    s.b->ops = &pg_backend_ops;
    s.b->loop = &loop;
    s.b->conf = &s.conf;
    assert_int_equal(pg_backend_ops.open(s.b, &s.conf, &err), KV_EINVAL);
    free(s.b);
    t_drain(&loop);
}

TEST(open__with_an_unparsable_url__is_invalid_and_hides_it)
{
    uv_loop_t loop;
    struct t_store s;
    kv_err err = {0};

    uv_loop_init(&loop);
    assert_int_equal(
        t_open(&s, &loop, "host=h password=" T_SECRET " bogus", 100, &err),
        KV_EINVAL);
    assert_null(strstr(err.msg, T_SECRET));
    assert_non_null(strstr(err.msg, "unit.store-1"));
    free(s.b);
    t_drain(&loop);
}

TEST(server_refusing__calls_fail_with_unavailable_then_fail_fast)
{
    uv_loop_t loop;
    struct t_store s;
    struct t_done d1 = {0}, d2 = {0};
    kv_req get = {.op = KV_OP_GET, .key = b("k")};
    kv_err err = {0};
    char url[128];
    int rc;

    t_log_len = 0;
    t_log[0] = '\0';
    snprintf(url, sizeof url,
             "postgresql://kvbus:" T_SECRET "@127.0.0.1:%d/kvbus",
             t_refusing_port());
    uv_loop_init(&loop);
    assert_int_equal(t_open(&s, &loop, url, 2000, &err), 0);
    assert_false(pg_backend_ops.healthy(s.b));

    /* Before the first attempt settles, a call waits... */
    assert_int_equal(pg_backend_ops.get(s.b, &get, t_on_done, &d1, &err), 0);
    assert_int_equal(d1.calls, 0);
    /* ...and fails with 503 once the server refused. */
    t_run_until(&loop, &d1.calls);
    assert_int_equal(d1.calls, 1);
    assert_int_equal(d1.status, KV_EUNAVAIL);
    assert_non_null(strstr(d1.msg, "unit.store-1"));
    assert_non_null(strstr(d1.msg, "127.0.0.1"));

    /* Down: the next call is refused at once, its callback never runs. */
    rc = pg_backend_ops.put(
        s.b, &(kv_req){.op = KV_OP_PUT, .key = b("k"), .value = b("v")},
        t_on_done, &d2, &err);
    assert_int_equal(rc, KV_EUNAVAIL);
    assert_int_equal(err.code, KV_EUNAVAIL);
    assert_non_null(strstr(err.msg, "unit.store-1"));
    assert_int_equal(d2.calls, 0);
    assert_false(pg_backend_ops.healthy(s.b));

    t_close(&s);
    t_drain(&loop);
    assert_non_null(strstr(t_log, "down"));
    assert_null(strstr(t_log, T_SECRET));
    assert_null(strstr(d1.msg, T_SECRET));
    assert_null(strstr(err.msg, T_SECRET));
}

TEST(server_mute__a_waiting_call_times_out_and_close_answers_the_rest)
{
    uv_loop_t loop;
    struct t_mute m;
    struct t_store s;
    struct t_done d1 = {0}, d2 = {0};
    kv_req get = {.op = KV_OP_GET, .key = b("k")};
    kv_bytes keys[] = {b("a"), b("b")};
    kv_req mget = {.op = KV_OP_MGET, .keys = keys, .nkeys = 2};
    kv_err err = {0};
    char url[128];
    uint64_t start;

    uv_loop_init(&loop);
    t_mute_start(&m, &loop);
    snprintf(url, sizeof url,
             "host=127.0.0.1 port=%d dbname=kvbus "
             "sslmode=disable gssencmode=disable",
             m.port);
    assert_int_equal(t_open(&s, &loop, url, T_SHORT_TIMEOUT_MS, &err), 0);

    start = uv_hrtime();
    assert_int_equal(pg_backend_ops.get(s.b, &get, t_on_done, &d1, &err), 0);
    t_run_until(&loop, &d1.calls);
    assert_int_equal(d1.status, KV_ETIMEDOUT);
    assert_true(uv_hrtime() - start >= T_SHORT_TIMEOUT_MS * 1000000ULL / 2);
    assert_non_null(strstr(d1.msg, "did not answer"));
    assert_false(pg_backend_ops.healthy(s.b));

    /* Still not down (the server accepted): calls wait. Closing the store
     * answers them, exactly once. */
    assert_int_equal(pg_backend_ops.mget(s.b, &mget, t_on_done, &d2, &err), 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(d2.calls, 0);
    t_close(&s);
    assert_int_equal(d2.calls, 1);
    assert_int_equal(d2.status, KV_EUNAVAIL);
    t_mute_stop(&m);
    t_drain(&loop);
    assert_int_equal(d1.calls, 1);
}

TEST(mget__of_no_keys__answers_at_once_without_a_server)
{
    uv_loop_t loop;
    struct t_store s;
    struct t_done d = {0};
    kv_req mget = {.op = KV_OP_MGET, .nkeys = 0};
    kv_err err = {0};
    char url[64];

    snprintf(url, sizeof url, "postgresql://127.0.0.1:%d/kvbus",
             t_refusing_port());
    uv_loop_init(&loop);
    assert_int_equal(t_open(&s, &loop, url, 1000, &err), 0);
    assert_int_equal(pg_backend_ops.mget(s.b, &mget, t_on_done, &d, &err), 0);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, 0);
    t_close(&s);
    t_drain(&loop);
}

TEST(keys__with_a_bad_cursor__is_refused_before_any_io)
{
    uv_loop_t loop;
    struct t_store s;
    struct t_done d = {0};
    kv_req keys = {.op = KV_OP_KEYS, .cursor = b("not-a-cursor")};
    kv_err err = {0};
    char url[64];

    snprintf(url, sizeof url, "postgresql://127.0.0.1:%d/kvbus",
             t_refusing_port());
    uv_loop_init(&loop);
    assert_int_equal(t_open(&s, &loop, url, 1000, &err), 0);
    assert_int_equal(pg_backend_ops.keys(s.b, &keys, t_on_done, &d, &err),
                     KV_ECURSOR);
    assert_int_equal(d.calls, 0);
    t_close(&s);
    t_drain(&loop);
}

/* ------------------------------------------------------------------ */
/* A fake server, for the reconnect counter                             */

#define T_FAKE_CLIENTS 8      /* connections a fake server keeps */
#define T_FAKE_BUF_BYTES 4096 /* unanswered bytes per connection */

/*
 * Just enough of the PostgreSQL protocol (v3) on the test's loop for
 * libpq to connect and for the store to create its table: the startup
 * message gets AuthenticationOk, a few ParameterStatus and ReadyForQuery;
 * a simple Query gets CommandComplete and ReadyForQuery. The url must
 * disable TLS and GSS encryption (no SSLRequest). t_pgfake_drop() closes
 * every connection, as a server that restarted would.
 */
struct t_pgfake;

struct t_pgfake_client {
    uv_tcp_t tcp;
    struct t_pgfake *fake;
    bool started; /* the startup message was answered */
    unsigned char buf[T_FAKE_BUF_BYTES];
    size_t len;
};

struct t_pgfake {
    uv_tcp_t server;
    struct t_pgfake_client *clients[T_FAKE_CLIENTS];
    int started; /* connections that got ReadyForQuery after startup */
    int port;
};

static void t_pgfake_client_closed(uv_handle_t *h)
{
    free(h->data);
}

static void t_pgfake_client_close(struct t_pgfake_client *cl)
{
    int i;

    for (i = 0; i < T_FAKE_CLIENTS; i++)
        if (cl->fake->clients[i] == cl)
            cl->fake->clients[i] = NULL;
    uv_close((uv_handle_t *)&cl->tcp, t_pgfake_client_closed);
}

static uint32_t t_get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           p[3];
}

/* Appends one message: type, length, then body. */
static size_t t_pgmsg(unsigned char *out, char type, const void *body,
                      size_t len)
{
    uint32_t n = (uint32_t)len + 4;

    out[0] = (unsigned char)type;
    out[1] = (unsigned char)(n >> 24);
    out[2] = (unsigned char)(n >> 16);
    out[3] = (unsigned char)(n >> 8);
    out[4] = (unsigned char)n;
    memcpy(out + 5, body, len);
    return len + 5;
}

static void t_pgfake_send(struct t_pgfake_client *cl, const unsigned char *p,
                          size_t len)
{
    uv_buf_t buf = uv_buf_init((char *)p, (unsigned)len);

    assert_int_equal(uv_try_write((uv_stream_t *)&cl->tcp, &buf, 1), (int)len);
}

static void t_pgfake_answer_startup(struct t_pgfake_client *cl)
{
    static const char params[] = "server_version\0"
                                 "15.0\0"
                                 "client_encoding\0"
                                 "UTF8\0"
                                 "standard_conforming_strings\0"
                                 "on\0";
    unsigned char out[256];
    const char *p = params;
    size_t n = 0, a, v;

    n += t_pgmsg(out + n, 'R', "\0\0\0\0", 4); /* AuthenticationOk */
    while (p < params + sizeof params - 1) {
        a = strlen(p) + 1;
        v = strlen(p + a) + 1;
        n += t_pgmsg(out + n, 'S', p, a + v);
        p += a + v;
    }
    n += t_pgmsg(out + n, 'Z', "I", 1);
    t_pgfake_send(cl, out, n);
    cl->started = true;
    cl->fake->started++;
}

static void t_pgfake_answer_query(struct t_pgfake_client *cl)
{
    static const char tag[] = "CREATE INDEX";
    unsigned char out[64];
    size_t n = 0;

    n += t_pgmsg(out + n, 'C', tag, sizeof tag);
    n += t_pgmsg(out + n, 'Z', "I", 1);
    t_pgfake_send(cl, out, n);
}

static void t_pgfake_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct t_pgfake_client *cl = h->data;

    (void)hint;
    *buf = uv_buf_init((char *)cl->buf + cl->len,
                       (unsigned)(sizeof cl->buf - cl->len));
}

static void t_pgfake_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct t_pgfake_client *cl = s->data;
    size_t used;

    (void)buf;
    if (n < 0) {
        t_pgfake_client_close(cl);
        return;
    }
    cl->len += (size_t)n;
    for (;;) {
        /* Startup: length, version, parameters; then type and length. */
        size_t head = cl->started ? 1 : 0;
        if (cl->len < head + 4)
            break;
        used = head + t_get32(cl->buf + head);
        if (cl->len < used)
            break;
        if (!cl->started)
            t_pgfake_answer_startup(cl);
        else if (cl->buf[0] == 'Q')
            t_pgfake_answer_query(cl);
        memmove(cl->buf, cl->buf + used, cl->len - used);
        cl->len -= used;
    }
    assert_true(cl->len < sizeof cl->buf);
}

static void t_pgfake_on_conn(uv_stream_t *srv, int status)
{
    struct t_pgfake *f = srv->data;
    struct t_pgfake_client *cl;
    int i;

    assert_int_equal(status, 0);
    cl = calloc(1, sizeof *cl);
    assert_non_null(cl);
    cl->fake = f;
    cl->tcp.data = cl;
    assert_int_equal(uv_tcp_init(srv->loop, &cl->tcp), 0);
    assert_int_equal(uv_accept(srv, (uv_stream_t *)&cl->tcp), 0);
    for (i = 0; i < T_FAKE_CLIENTS && f->clients[i]; i++)
        ;
    if (i == T_FAKE_CLIENTS) {
        uv_close((uv_handle_t *)&cl->tcp, t_pgfake_client_closed);
        return;
    }
    f->clients[i] = cl;
    uv_read_start((uv_stream_t *)&cl->tcp, t_pgfake_alloc, t_pgfake_read);
}

static void t_pgfake_start(struct t_pgfake *f, uv_loop_t *loop)
{
    struct sockaddr_in addr;
    struct sockaddr_storage got;
    int len = sizeof got;

    memset(f, 0, sizeof *f);
    assert_int_equal(uv_tcp_init(loop, &f->server), 0);
    f->server.data = f;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    assert_int_equal(uv_tcp_bind(&f->server, (struct sockaddr *)&addr, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&f->server, 16, t_pgfake_on_conn),
                     0);
    uv_tcp_getsockname(&f->server, (struct sockaddr *)&got, &len);
    f->port = ntohs(((struct sockaddr_in *)&got)->sin_port);
}

static void t_pgfake_drop(struct t_pgfake *f)
{
    int i;

    for (i = 0; i < T_FAKE_CLIENTS; i++)
        if (f->clients[i])
            t_pgfake_client_close(f->clients[i]);
}

static void t_pgfake_stop(struct t_pgfake *f)
{
    t_pgfake_drop(f);
    uv_close((uv_handle_t *)&f->server, NULL);
}

/* The store's reconnect count, as /metrics reads it. */
static uint64_t t_reconnects(struct t_store *s)
{
    kv_backend_stats st = {0};

    pg_backend_ops.stats(s->b, &st);
    assert_false(st.known);
    return st.reconnects;
}

/* What the loop waits for in t_spin. */
struct t_wait {
    struct t_pgfake *fake;
    struct t_store *store;
    uint64_t reconnects; /* at least this many */
    uint64_t until_ns;   /* uv_hrtime, for a pause */
};

static bool t_pool_settled(const struct t_wait *w)
{
    return w->fake->started == PG_POOL_CONNS &&
           pg_backend_ops.healthy(w->store->b);
}

static bool t_reconnected(const struct t_wait *w)
{
    return t_reconnects(w->store) >= w->reconnects &&
           pg_backend_ops.healthy(w->store->b);
}

static bool t_paused(const struct t_wait *w)
{
    return uv_hrtime() >= w->until_ns;
}

/* Turns the loop until until(w) holds, T_LOOP_LIMIT_MS at most. */
static void t_spin(uv_loop_t *loop, bool (*until)(const struct t_wait *),
                   const struct t_wait *w)
{
    uint64_t start = uv_hrtime();
    uv_timer_t keep;
    int done;

    uv_timer_init(loop, &keep);
    uv_timer_start(&keep, t_tick, 10, 10);
    while (!until(w) && uv_hrtime() - start < T_LOOP_LIMIT_MS * 1000000ULL)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&keep, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    done = until(w);
    assert_true(done);
}

TEST(stats__reconnects__count_each_pool_connection_back_after_a_loss)
{
    uv_loop_t loop;
    struct t_pgfake f;
    struct t_store s, other;
    struct t_wait w = {.fake = &f, .store = &s};
    kv_err err = {0};
    char url[128];

    uv_loop_init(&loop);
    t_pgfake_start(&f, &loop);
    snprintf(url, sizeof url,
             "host=127.0.0.1 port=%d dbname=kvbus "
             "sslmode=disable gssencmode=disable",
             f.port);
    assert_int_equal(t_open(&s, &loop, url, 2000, &err), 0);
    assert_int_equal(t_reconnects(&s), 0);

    /* Every connection of the pool comes up: none of these counts. The
     * pause lets libpq read the last ReadyForQuery the fake sent. */
    t_spin(&loop, t_pool_settled, &w);
    w.until_ns = uv_hrtime() + T_SHORT_TIMEOUT_MS * 1000000ULL;
    t_spin(&loop, t_paused, &w);
    assert_int_equal(t_reconnects(&s), 0);

    /* The server drops them all: each one back counts once, and another
     * store on the same url reports the same, shared count. */
    t_pgfake_drop(&f);
    w.reconnects = PG_POOL_CONNS;
    t_spin(&loop, t_reconnected, &w);
    assert_int_equal(t_reconnects(&s), PG_POOL_CONNS);
    assert_int_equal(t_open(&other, &loop, url, 2000, &err), 0);
    assert_int_equal(t_reconnects(&other), PG_POOL_CONNS);

    t_close(&other);
    t_close(&s);
    t_pgfake_stop(&f);
    t_drain(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(classify__canonical_integers__go_to_long),
        cmocka_unit_test(classify__non_canonical_integer_text__goes_to_string),
        cmocka_unit_test(classify__nul_or_invalid_utf8__goes_to_bytes),
        cmocka_unit_test(
            quote_ident__wraps_in_quotes_and_doubles_embedded_quotes),
        cmocka_unit_test(
            quote_ident__too_small_buffer__reports_length_writes_nothing),
        cmocka_unit_test(table_name__default_is_kv_store),
        cmocka_unit_test(table_name__configured_table_is_used_as_is),
        cmocka_unit_test(
            table_name__long_default__is_shortened_with_a_hash_and_stays_distinct),
        cmocka_unit_test(table_name__configured_too_long_or_empty__is_refused),
        cmocka_unit_test(index_name__is_table_ttl_idx_or_shortened),
        cmocka_unit_test(table_name__shortening_never_splits_a_utf8_character),
        cmocka_unit_test(
            like_prefix__escapes_backslash_percent_underscore_and_appends_percent),
        cmocka_unit_test(
            sqlstate__maps_overflow_encoding_and_everything_else_to_unavailable),
        cmocka_unit_test(sqlstate__creation_races_are_retried),
        cmocka_unit_test(be64__round_trips_in_network_order),
        cmocka_unit_test(text_array__has_array_recv_layout),
        cmocka_unit_test(where__shows_host_port_db_and_never_the_password),
        cmocka_unit_test(
            conninfo_valid__accepts_urls_and_key_values_refuses_garbage),
        cmocka_unit_test(open__with_an_unparsable_url__is_invalid_and_hides_it),
        cmocka_unit_test(one_line__joins_libpq_lines),
        cmocka_unit_test(backoff__doubles_from_100_ms_to_5_s),
        cmocka_unit_test(sql_expand__fills_table_and_index),
        cmocka_unit_test(open__without_a_loop__is_invalid),
        cmocka_unit_test(open__with_a_too_long_table__is_invalid),
        cmocka_unit_test(
            server_refusing__calls_fail_with_unavailable_then_fail_fast),
        cmocka_unit_test(
            server_mute__a_waiting_call_times_out_and_close_answers_the_rest),
        cmocka_unit_test(mget__of_no_keys__answers_at_once_without_a_server),
        cmocka_unit_test(keys__with_a_bad_cursor__is_refused_before_any_io),
        cmocka_unit_test(
            stats__reconnects__count_each_pool_connection_back_after_a_loss),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
