/*
 * test_mongodb.c - unit tests of the mongodb backend (backends/mongodb).
 *
 * Most tests cover the pure helpers of mongo_int.h: how a value is typed
 * in BSON and read back (every type, and the types kvbus never writes),
 * the literal-prefix regex, the mapping of driver and server errors
 * (network vs duplicate key vs type mismatch), the connection URI with
 * kvbusd's timeouts, the server label that never shows a password,
 * collection names, the ping backoff and the worker count (the keys cursor
 * is the kvstore core's, tested in test_kvstore.c). The rest drive
 * the method table on a real libuv loop and the driver's worker threads
 * without a MongoDB server: a port that refuses connections (calls answer
 * 503-class errors within about op_timeout_ms, then fail fast once the
 * store is down) and a listener that accepts but never answers (a call
 * times out; closing answers what is left and frees everything, checked
 * under ASan). The commands themselves are exercised by the e2e suite
 * against the wire-protocol double or a real server.
 *
 * The backend logs through srv_log(); a stub below collects the lines
 * (the driver logs from its own threads, hence the mutex) so tests can
 * check that no password reaches a log.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "backends/mongodb/mongo_int.h"
#include "backends/mongodb/mongodb.h"
#include "kvstore/kvstore.h"
#include "server/srv_log.h"
#include "tests/unit/t_net.h"

#define TEST(name) static void name(void **state __attribute__((unused)))

#define T_LOG_BYTES 16384     /* log lines kept by the srv_log stub */
#define T_LOOP_LIMIT_MS 10000 /* a loop test taking longer is stuck */
#define T_TIMEOUT_MS 300      /* op_timeout_ms of the loop tests */
#define T_SECRET "s3cr3t-pw"

/* ------------------------------------------------------------------ */
/* srv_log stub                                                         */

static char t_log[T_LOG_BYTES];
static size_t t_log_len;
static pthread_mutex_t t_log_lock = PTHREAD_MUTEX_INITIALIZER;

void srv_log(int level, const char *fmt, ...)
{
    va_list ap;
    int n;

    pthread_mutex_lock(&t_log_lock);
    if (getenv("T_VERBOSE")) {
        va_start(ap, fmt);
        fprintf(stderr, "log %d: ", level);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
    if (t_log_len < sizeof t_log - 1) {
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
    pthread_mutex_unlock(&t_log_lock);
}

static void t_log_reset(void)
{
    pthread_mutex_lock(&t_log_lock);
    t_log_len = 0;
    t_log[0] = '\0';
    pthread_mutex_unlock(&t_log_lock);
}

/* True when the log holds needle. */
static bool t_log_has(const char *needle)
{
    bool has;

    pthread_mutex_lock(&t_log_lock);
    has = strstr(t_log, needle) != NULL;
    pthread_mutex_unlock(&t_log_lock);
    return has;
}

static kv_bytes b(const char *s)
{
    return (kv_bytes){s, strlen(s)};
}

/* ------------------------------------------------------------------ */
/* Values                                                               */

TEST(classify__canonical_integers__are_int64)
{
    int64_t n = 0;

    assert_int_equal(mongo_classify(b("0"), &n), MONGO_V_INT64);
    assert_int_equal(n, 0);
    assert_int_equal(mongo_classify(b("-579"), &n), MONGO_V_INT64);
    assert_int_equal(n, -579);
    assert_int_equal(mongo_classify(b("-9223372036854775808"), &n),
                     MONGO_V_INT64);
    assert_true(n == INT64_MIN);
    assert_int_equal(mongo_classify(b("9223372036854775807"), NULL),
                     MONGO_V_INT64);
}

TEST(classify__other_utf8__is_a_string)
{
    const char *texts[] = {"01",
                           "-0",
                           "+1",
                           " 1",
                           "1e3",
                           "0x1",
                           "",
                           "5 ",
                           "abc",
                           "9223372036854775808",
                           "h\xc3\xa9llo \xe2\x98\x83"};
    size_t i;

    for (i = 0; i < sizeof texts / sizeof *texts; i++)
        assert_int_equal(mongo_classify(b(texts[i]), NULL), MONGO_V_STRING);
}

TEST(classify__nul_or_invalid_utf8__is_binary)
{
    assert_int_equal(mongo_classify((kv_bytes){"a\0b", 3}, NULL),
                     MONGO_V_BINARY);
    assert_int_equal(mongo_classify((kv_bytes){"\0", 1}, NULL), MONGO_V_BINARY);
    assert_int_equal(mongo_classify(b("\xff\xfe"), NULL), MONGO_V_BINARY);
    assert_int_equal(mongo_classify(b("\xc3\x28"), NULL), MONGO_V_BINARY);
    assert_int_equal(mongo_classify(b("\xed\xa0\x80"), NULL), MONGO_V_BINARY);
}

/* Appends value as "v" to a new document, checks its BSON type, reads it
 * back and checks the bytes are the same. */
static void value_round_trip(kv_bytes value, bson_type_t type)
{
    bson_t doc = BSON_INITIALIZER;
    char num[KV_INT_TEXT_MAX + 1];
    kv_bytes out = {0};
    bson_iter_t it;
    kv_err err = {0};

    assert_true(mongo_append_value(&doc, MONGO_F_VALUE, value));
    assert_true(bson_iter_init_find(&it, &doc, MONGO_F_VALUE));
    assert_int_equal(bson_iter_type(&it), type);
    assert_int_equal(mongo_read_value(&it, num, &out, b("k"), &err), 0);
    assert_int_equal(out.len, value.len);
    if (value.len)
        assert_memory_equal(out.ptr, value.ptr, value.len);
    bson_destroy(&doc);
}

TEST(value__each_type_round_trips_through_bson)
{
    char all[256];
    int i;

    for (i = 0; i < 256; i++)
        all[i] = (char)i;
    value_round_trip(b("579"), BSON_TYPE_INT64);
    value_round_trip(b("-9223372036854775808"), BSON_TYPE_INT64);
    value_round_trip(b("0"), BSON_TYPE_INT64);
    value_round_trip(b("5 "), BSON_TYPE_UTF8);
    value_round_trip(b("01"), BSON_TYPE_UTF8);
    value_round_trip(b(""), BSON_TYPE_UTF8);
    value_round_trip(b("\xe2\x82\xac"), BSON_TYPE_UTF8);
    value_round_trip((kv_bytes){"a\0b", 3}, BSON_TYPE_BINARY);
    value_round_trip((kv_bytes){all, sizeof all}, BSON_TYPE_BINARY);
}

TEST(value__int64_is_stored_as_the_number_not_its_text)
{
    bson_t doc = BSON_INITIALIZER;
    bson_iter_t it;

    assert_true(mongo_append_value(&doc, MONGO_F_VALUE, b("-42")));
    assert_true(bson_iter_init_find(&it, &doc, MONGO_F_VALUE));
    assert_true(bson_iter_int64(&it) == -42);
    bson_destroy(&doc);
}

TEST(read_value__int32_of_another_writer__reads_as_decimal_text)
{
    bson_t doc = BSON_INITIALIZER;
    char num[KV_INT_TEXT_MAX + 1];
    kv_bytes out = {0};
    bson_iter_t it;

    BSON_APPEND_INT32(&doc, MONGO_F_VALUE, -7);
    assert_true(bson_iter_init_find(&it, &doc, MONGO_F_VALUE));
    assert_int_equal(mongo_read_value(&it, num, &out, b("k"), NULL), 0);
    assert_int_equal(out.len, 2);
    assert_memory_equal(out.ptr, "-7", 2);
    bson_destroy(&doc);
}

TEST(read_value__types_kvbus_never_writes__are_invalid)
{
    bson_t doc = BSON_INITIALIZER;
    char num[KV_INT_TEXT_MAX + 1];
    kv_bytes out = {0};
    bson_iter_t it;
    kv_err err = {0};

    BSON_APPEND_DOUBLE(&doc, "d", 1.5);
    BSON_APPEND_BOOL(&doc, "t", true);
    BSON_APPEND_NULL(&doc, "n");
    assert_true(bson_iter_init(&it, &doc));
    while (bson_iter_next(&it)) {
        assert_int_equal(mongo_read_value(&it, num, &out, b("key-1"), &err),
                         KV_EINVAL);
        assert_non_null(strstr(err.msg, "key-1"));
        assert_non_null(strstr(err.msg, "BSON type"));
    }
    bson_destroy(&doc);
}

/* The BSON types of the $in array of {v: {$in: [...]}} built for value;
 * returns how many, each element's bytes checked equal to value. */
static size_t match_types(kv_bytes value, bson_type_t *types, size_t cap)
{
    bson_t doc = BSON_INITIALIZER;
    char num[KV_INT_TEXT_MAX + 1];
    bson_iter_t it, cond, in;
    kv_bytes out;
    size_t n = 0;

    assert_true(mongo_append_value_match(&doc, MONGO_F_VALUE, value));
    assert_true(bson_iter_init_find(&it, &doc, MONGO_F_VALUE));
    assert_true(bson_iter_recurse(&it, &cond));
    assert_true(bson_iter_find(&cond, "$in"));
    assert_true(BSON_ITER_HOLDS_ARRAY(&cond));
    assert_true(bson_iter_recurse(&cond, &in));
    while (bson_iter_next(&in) && n < cap) {
        types[n++] = bson_iter_type(&in);
        assert_int_equal(mongo_read_value(&in, num, &out, b("k"), NULL), 0);
        assert_int_equal(out.len, value.len);
        if (value.len)
            assert_memory_equal(out.ptr, value.ptr, value.len);
    }
    bson_destroy(&doc);
    return n;
}

TEST(value_match__covers_every_form_the_same_bytes_can_be_stored_in)
{
    bson_type_t t[4];

    assert_int_equal(match_types(b("5"), t, 4), 3);
    assert_int_equal(t[0], BSON_TYPE_INT64);
    assert_int_equal(t[1], BSON_TYPE_UTF8);
    assert_int_equal(t[2], BSON_TYPE_BINARY);
    assert_int_equal(match_types(b("05"), t, 4), 2);
    assert_int_equal(t[0], BSON_TYPE_UTF8);
    assert_int_equal(t[1], BSON_TYPE_BINARY);
    assert_int_equal(match_types(b(""), t, 4), 2);
    assert_int_equal(match_types((kv_bytes){"\xff\0", 2}, t, 4), 1);
    assert_int_equal(t[0], BSON_TYPE_BINARY);
}

/* ------------------------------------------------------------------ */
/* Prefix regex                                                         */

static void regex_is(const char *prefix, const char *want)
{
    char out[256];

    assert_int_equal(mongo_regex_prefix(b(prefix), out), strlen(want));
    assert_string_equal(out, want);
}

TEST(regex_prefix__escapes_every_metacharacter)
{
    regex_is("", "^");
    regex_is("abc", "^abc");
    regex_is("a.b", "^a\\.b");
    regex_is("a*b?c+", "^a\\*b\\?c\\+");
    regex_is("[x]{2}(y)|z", "^\\[x\\]\\{2\\}\\(y\\)\\|z");
    regex_is("^$", "^\\^\\$");
    regex_is("a\\b", "^a\\\\b");
    regex_is("user/42", "^user\\/42");
}

TEST(regex_prefix__leaves_other_characters_alone)
{
    regex_is("a-b_c%d e#f:g'h\"i", "^a-b_c%d e#f:g'h\"i");
    regex_is("\xc3\xa9t\xc3\xa9", "^\xc3\xa9t\xc3\xa9");
}

TEST(regex_prefix__output_fits_twice_the_prefix_plus_two)
{
    const char *all = "\\^$.|?*+()[]{}/";
    char out[2 * 15 + 2];

    assert_int_equal(strlen(all), 15);
    assert_int_equal(mongo_regex_prefix(b(all), out), 2 * 15 + 1);
    assert_int_equal(out[2 * 15 + 1], '\0');
}

/* ------------------------------------------------------------------ */
/* Errors                                                               */

static bson_error_t t_error(uint32_t domain, uint32_t code)
{
    bson_error_t e;

    memset(&e, 0, sizeof e);
    e.domain = domain;
    e.code = code;
    snprintf(e.message, sizeof e.message, "test error");
    return e;
}

TEST(error__network_and_selection_errors__are_unavailable_and_down)
{
    const uint32_t cases[][2] = {
        {MONGOC_ERROR_STREAM, MONGOC_ERROR_STREAM_SOCKET},
        {MONGOC_ERROR_STREAM, MONGOC_ERROR_STREAM_CONNECT},
        {MONGOC_ERROR_STREAM, MONGOC_ERROR_STREAM_NAME_RESOLUTION},
        {MONGOC_ERROR_SERVER_SELECTION, MONGOC_ERROR_SERVER_SELECTION_FAILURE},
        {MONGOC_ERROR_PROTOCOL, MONGOC_ERROR_PROTOCOL_INVALID_REPLY},
        {MONGOC_ERROR_CLIENT, MONGOC_ERROR_CLIENT_AUTHENTICATE},
        {MONGOC_ERROR_SERVER, 10107}, /* NotWritablePrimary */
        {MONGOC_ERROR_SERVER, 91},    /* ShutdownInProgress */
    };
    size_t i;
    bson_error_t e;
    bool down;

    for (i = 0; i < sizeof cases / sizeof *cases; i++) {
        e = t_error(cases[i][0], cases[i][1]);
        down = false;
        assert_int_equal(mongo_error_code(&e, &down), KV_EUNAVAIL);
        assert_true(down);
        assert_false(mongo_error_duplicate(&e));
    }
}

TEST(error__duplicate_key__is_recognised_and_the_server_stays_up)
{
    bson_error_t e = t_error(MONGOC_ERROR_SERVER, MONGO_CODE_DUPLICATE_KEY);
    bson_error_t old = t_error(MONGOC_ERROR_COLLECTION, 11001);
    bson_error_t net = t_error(MONGOC_ERROR_STREAM, MONGO_CODE_DUPLICATE_KEY);
    bool down = true;

    assert_true(mongo_error_duplicate(&e));
    assert_true(mongo_error_duplicate(&old));
    assert_false(mongo_error_duplicate(&net));
    assert_int_equal(mongo_error_code(&e, &down), KV_EUNAVAIL);
    assert_false(down);
}

TEST(error__type_mismatch__is_not_an_integer)
{
    bson_error_t e = t_error(MONGOC_ERROR_SERVER, MONGO_CODE_TYPE_MISMATCH);
    bool down = true;

    assert_int_equal(mongo_error_code(&e, &down), KV_ENOTINT);
    assert_false(down);
    assert_int_equal(kv_errstatus(KV_ENOTINT), 409);
}

TEST(error__max_time_and_other_server_errors__are_503_not_down)
{
    bson_error_t t = t_error(MONGOC_ERROR_SERVER, MONGO_CODE_MAX_TIME_EXPIRED);
    bson_error_t other = t_error(MONGOC_ERROR_SERVER, 85); /* IndexOptions */
    bool down = true;

    assert_int_equal(mongo_error_code(&t, &down), KV_ETIMEDOUT);
    assert_false(down);
    assert_int_equal(mongo_error_code(&other, NULL), KV_EUNAVAIL);
    assert_int_equal(kv_errstatus(KV_ETIMEDOUT), 503);
}

/* ------------------------------------------------------------------ */
/* URI and names                                                        */

TEST(uri__sets_the_three_timeouts_and_appname_from_op_timeout)
{
    mongoc_uri_t *uri = NULL;
    kv_err err = {0};

    assert_int_equal(
        mongo_uri_prepare("mongodb://127.0.0.1:27017/kvbus", 1500, &uri, &err),
        0);
    assert_int_equal(mongoc_uri_get_option_as_int32(
                         uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, 0),
                     1500);
    assert_int_equal(
        mongoc_uri_get_option_as_int32(uri, MONGOC_URI_CONNECTTIMEOUTMS, 0),
        1500);
    assert_int_equal(
        mongoc_uri_get_option_as_int32(uri, MONGOC_URI_SOCKETTIMEOUTMS, 0),
        1500);
    assert_string_equal(mongoc_uri_get_appname(uri), MONGO_APPNAME);
    assert_string_equal(mongo_uri_database(uri), "kvbus");
    mongoc_uri_destroy(uri);
}

TEST(uri__options_the_url_sets__win)
{
    mongoc_uri_t *uri = NULL;

    assert_int_equal(mongo_uri_prepare("mongodb://h/?socketTimeoutMS=9000&"
                                       "appname=mine",
                                       1500, &uri, NULL),
                     0);
    assert_int_equal(
        mongoc_uri_get_option_as_int32(uri, MONGOC_URI_SOCKETTIMEOUTMS, 0),
        9000);
    assert_int_equal(
        mongoc_uri_get_option_as_int32(uri, MONGOC_URI_CONNECTTIMEOUTMS, 0),
        1500);
    assert_string_equal(mongoc_uri_get_appname(uri), "mine");
    assert_string_equal(mongo_uri_database(uri), MONGO_DB_DEFAULT);
    mongoc_uri_destroy(uri);
}

TEST(uri__a_bad_or_missing_url__is_invalid_and_never_quoted)
{
    mongoc_uri_t *uri = (mongoc_uri_t *)1;
    kv_err err = {0};

    assert_int_equal(
        mongo_uri_prepare("http://u:" T_SECRET "@h/x", 1000, &uri, &err),
        KV_EINVAL);
    assert_null(uri);
    assert_null(strstr(err.msg, T_SECRET));
    assert_int_equal(
        mongo_uri_prepare("mongodb://u:" T_SECRET "@/x", 1000, &uri, &err),
        KV_EINVAL);
    assert_null(strstr(err.msg, T_SECRET));
    assert_int_equal(mongo_uri_prepare(NULL, 1000, &uri, &err), KV_EINVAL);
    assert_int_equal(mongo_uri_prepare("", 1000, &uri, &err), KV_EINVAL);
    assert_int_equal(mongo_uri_prepare("mongodb://h/x", 0, &uri, &err),
                     KV_EINVAL);
}

TEST(where__shows_host_port_db_and_never_credentials)
{
    mongoc_uri_t *uri = NULL;
    char where[MONGO_WHERE_MAX];

    assert_int_equal(mongo_uri_prepare("mongodb://kv:" T_SECRET
                                       "@db1:27018,db2/app?replicaSet=rs",
                                       1000, &uri, NULL),
                     0);
    mongo_uri_where(uri, where, sizeof where);
    assert_string_equal(where, "db1:27018+1/app");
    assert_null(strstr(where, T_SECRET));
    mongoc_uri_destroy(uri);
}

TEST(collection__default_is_kv_store_and_configured_is_checked)
{
    char out[MONGO_COLLECTION_MAX + 1], longname[MONGO_COLLECTION_MAX + 2];
    kv_err err = {0};

    assert_int_equal(mongo_collection_name("sessions.v2-x", NULL, out, &err),
                     0);
    assert_string_equal(out, "kv.sessions.v2-x");
    assert_int_equal(mongo_collection_name("s", "docs_kv", out, &err), 0);
    assert_string_equal(out, "docs_kv");
    assert_int_equal(mongo_collection_name("s", "", out, &err), KV_EINVAL);
    assert_int_equal(mongo_collection_name("s", "a$b", out, &err), KV_EINVAL);
    assert_int_equal(mongo_collection_name("s", "system.x", out, &err),
                     KV_EINVAL);
    memset(longname, 'c', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_int_equal(mongo_collection_name("s", longname, out, &err),
                     KV_EINVAL);
    assert_non_null(strstr(err.msg, "store s"));
}

TEST(backoff__doubles_from_100_ms_to_5_s)
{
    const uint32_t want[] = {100, 200, 400, 800, 1600, 3200, 5000, 5000};
    uint32_t d = 0;
    size_t i;

    for (i = 0; i < sizeof want / sizeof *want; i++) {
        d = mongo_backoff_next(d);
        assert_int_equal(d, want[i]);
    }
}

TEST(workers__leave_one_libuv_thread_free)
{
    assert_int_equal(mongo_workers_for(NULL), 3);
    assert_int_equal(mongo_workers_for(""), 3);
    assert_int_equal(mongo_workers_for("16"), 15);
    assert_int_equal(mongo_workers_for("1"), 1);
    assert_int_equal(mongo_workers_for("2"), 1);
    assert_int_equal(mongo_workers_for("0"), 3);
    assert_int_equal(mongo_workers_for("many"), 3);
    assert_int_equal(mongo_workers_for("5000"), MONGO_THREADPOOL_MAX - 1);
}

/* ------------------------------------------------------------------ */
/* The method table on a loop, without a server                         */

struct t_done {
    int calls;
    int status;
    uint64_t at_ns; /* uv_hrtime() when answered */
    char msg[KV_ERR_MSG_BYTES];
};

static void t_on_done(int status, const kv_reply *reply, const kv_err *err,
                      void *ud)
{
    struct t_done *d = ud;

    d->calls++;
    d->status = status;
    d->at_ns = uv_hrtime();
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
    snprintf(s->conf.backend, sizeof s->conf.backend, "mongodb");
    s->conf.url = (char *)url;
    s->conf.op_timeout_ms = timeout_ms;
    s->b = calloc(1, mongo_backend_ops.size);
    assert_non_null(s->b);
    s->b->ops = &mongo_backend_ops;
    s->b->loop = loop;
    s->b->conf = &s->conf;
    return mongo_backend_ops.open(s->b, &s->conf, err);
}

static void t_close(struct t_store *s)
{
    mongo_backend_ops.close(s->b);
    free(s->b);
}

static void t_tick(uv_timer_t *t)
{
    (void)t;
}

/*
 * Runs loop until until(arg) or T_LOOP_LIMIT_MS passes. The backend's
 * timers are unreferenced, so a referenced timer stands in for kvbusd's
 * HTTP server meanwhile.
 */
static void t_run_until(uv_loop_t *loop, bool (*until)(void *), void *arg)
{
    uint64_t start = uv_hrtime();
    uv_timer_t keep;

    uv_timer_init(loop, &keep);
    uv_timer_start(&keep, t_tick, 10, 10);
    while (!until(arg) && uv_hrtime() - start < T_LOOP_LIMIT_MS * 1000000ULL)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&keep, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    assert_true(until(arg));
}

static bool t_answered(void *arg)
{
    return ((struct t_done *)arg)->calls > 0;
}

static bool t_unhealthy(void *arg)
{
    struct t_store *s = arg;

    return !mongo_backend_ops.healthy(s->b) && t_log_has("down");
}

/* Runs the loop until every request (jobs still on worker threads, the
 * driver pool's destruction) and handle is done; then closes it. */
static void t_drain(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0);
}

TEST(open__without_a_loop_or_a_url__is_invalid)
{
    uv_loop_t loop;
    struct t_store s;
    kv_err err = {0};

    assert_int_equal(t_open(&s, NULL, "mongodb://127.0.0.1:1/x", 100, &err),
                     KV_EINVAL);
    free(s.b);
    uv_loop_init(&loop);
    assert_int_equal(t_open(&s, &loop, NULL, 100, &err), KV_EINVAL);
    assert_non_null(strstr(err.msg, "unit.store-1"));
    free(s.b);
    assert_int_equal(t_open(&s, &loop, "mongodb://u:" T_SECRET "@", 100, &err),
                     KV_EINVAL);
    assert_null(strstr(err.msg, T_SECRET));
    free(s.b);
    t_drain(&loop);
}

TEST(server_refusing__calls_fail_503_in_bounded_time_then_fail_fast)
{
    uv_loop_t loop;
    struct t_store s;
    struct t_done d1 = {0}, d2 = {0};
    kv_req get = {.op = KV_OP_GET, .key = b("k")};
    kv_req put = {.op = KV_OP_PUT, .key = b("k"), .value = b("v")};
    kv_err err = {0};
    char url[160];
    uint64_t start;
    int rc;

    t_log_reset();
    snprintf(url, sizeof url, "mongodb://kvbus:" T_SECRET "@127.0.0.1:%d/kvbus",
             t_refusing_port());
    uv_loop_init(&loop);
    assert_int_equal(t_open(&s, &loop, url, T_TIMEOUT_MS, &err), 0);
    assert_false(mongo_backend_ops.healthy(s.b));

    /* The first call goes to the driver and comes back with a 503-class
     * error within about op_timeout_ms. */
    start = uv_hrtime();
    assert_int_equal(mongo_backend_ops.get(s.b, &get, t_on_done, &d1, &err), 0);
    t_run_until(&loop, t_answered, &d1);
    assert_int_equal(d1.calls, 1);
    assert_true(d1.status == KV_EUNAVAIL || d1.status == KV_ETIMEDOUT);
    assert_int_equal(kv_errstatus(d1.status), 503);
    assert_true(d1.at_ns - start < 3ULL * T_TIMEOUT_MS * 1000000ULL);
    assert_non_null(strstr(d1.msg, "unit.store-1"));

    /* Down: the next call is refused at once, its callback never runs. */
    t_run_until(&loop, t_unhealthy, &s);
    start = uv_hrtime();
    rc = mongo_backend_ops.put(s.b, &put, t_on_done, &d2, &err);
    assert_int_equal(rc, KV_EUNAVAIL);
    assert_true(uv_hrtime() - start < 50ULL * 1000000ULL);
    assert_int_equal(err.code, KV_EUNAVAIL);
    assert_non_null(strstr(err.msg, "unit.store-1"));
    assert_non_null(strstr(err.msg, "127.0.0.1"));
    assert_int_equal(d2.calls, 0);

    t_close(&s);
    t_drain(&loop);
    assert_int_equal(d1.calls, 1);
    assert_false(t_log_has(T_SECRET));
    assert_null(strstr(d1.msg, T_SECRET));
    assert_null(strstr(err.msg, T_SECRET));
}

TEST(server_mute__calls_answer_503_by_the_deadline_and_close_answers_the_rest)
{
    uv_loop_t loop;
    struct t_mute m;
    struct t_store s;
    struct t_done d[6];
    kv_req get = {.op = KV_OP_GET, .key = b("k")};
    kv_err err = {0};
    char url[128];
    uint64_t start;
    int i, submitted = 0;

    memset(d, 0, sizeof d);
    uv_loop_init(&loop);
    t_mute_start(&m, &loop);
    snprintf(url, sizeof url, "mongodb://127.0.0.1:%d/kvbus", m.port);
    assert_int_equal(t_open(&s, &loop, url, T_TIMEOUT_MS, &err), 0);

    /* More calls than workers: the extra ones wait in the FIFO, and every
     * one is answered by its deadline, never later. */
    start = uv_hrtime();
    for (i = 0; i < 6; i++)
        if (mongo_backend_ops.get(s.b, &get, t_on_done, &d[i], &err) == 0)
            submitted++;
    assert_int_equal(submitted, 6);
    for (i = 0; i < 6; i++) {
        t_run_until(&loop, t_answered, &d[i]);
        assert_int_equal(kv_errstatus(d[i].status), 503);
        assert_true(d[i].at_ns - start < 3ULL * T_TIMEOUT_MS * 1000000ULL);
    }
    assert_false(mongo_backend_ops.healthy(s.b));

    /* A call made now is refused (down) or answered by close. */
    memset(&d[0], 0, sizeof d[0]);
    if (mongo_backend_ops.get(s.b, &get, t_on_done, &d[0], &err) == 0) {
        t_close(&s);
        assert_int_equal(d[0].calls, 1);
        assert_int_equal(kv_errstatus(d[0].status), 503);
    } else {
        assert_int_equal(err.code, KV_EUNAVAIL);
        t_close(&s);
    }
    t_mute_stop(&m);
    t_drain(&loop);
    for (i = 0; i < 6; i++)
        assert_int_equal(d[i].calls, i == 0 ? d[0].calls : 1);
}

TEST(mget__of_no_keys__answers_at_once_without_a_server)
{
    uv_loop_t loop;
    struct t_store s;
    struct t_done d = {0};
    kv_req mget = {.op = KV_OP_MGET, .nkeys = 0};
    kv_err err = {0};
    char url[64];

    snprintf(url, sizeof url, "mongodb://127.0.0.1:%d/kvbus",
             t_refusing_port());
    uv_loop_init(&loop);
    assert_int_equal(t_open(&s, &loop, url, 1000, &err), 0);
    assert_int_equal(mongo_backend_ops.mget(s.b, &mget, t_on_done, &d, &err),
                     0);
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

    snprintf(url, sizeof url, "mongodb://127.0.0.1:%d/kvbus",
             t_refusing_port());
    uv_loop_init(&loop);
    assert_int_equal(t_open(&s, &loop, url, 1000, &err), 0);
    assert_int_equal(mongo_backend_ops.keys(s.b, &keys, t_on_done, &d, &err),
                     KV_ECURSOR);
    assert_int_equal(d.calls, 0);
    t_close(&s);
    t_drain(&loop);
}

TEST(close__with_calls_in_flight__answers_each_once_and_frees_everything)
{
    uv_loop_t loop;
    struct t_store s, other;
    struct t_done d[3];
    kv_req put = {.op = KV_OP_PUT, .key = b("k"), .value = b("v"), .ttl_s = 5};
    kv_bytes keys[] = {b("a"), b("b"), b("a")};
    kv_req mget = {.op = KV_OP_MGET, .keys = keys, .nkeys = 3};
    kv_req cas = {.op = KV_OP_CAS,
                  .key = b("k"),
                  .has_expected = true,
                  .expected = b("old"),
                  .has_value = true,
                  .value = b("new")};
    kv_err err = {0};
    char url[64];
    int i;

    memset(d, 0, sizeof d);
    snprintf(url, sizeof url, "mongodb://127.0.0.1:%d/kvbus",
             t_refusing_port());
    uv_loop_init(&loop);
    assert_int_equal(t_open(&s, &loop, url, 2000, &err), 0);
    assert_int_equal(t_open(&other, &loop, url, 2000, &err), 0);
    assert_int_equal(mongo_backend_ops.put(s.b, &put, t_on_done, &d[0], &err),
                     0);
    assert_int_equal(mongo_backend_ops.mget(s.b, &mget, t_on_done, &d[1], &err),
                     0);
    assert_int_equal(mongo_backend_ops.cas(s.b, &cas, t_on_done, &d[2], &err),
                     0);
    t_close(&s);
    for (i = 0; i < 3; i++) {
        assert_int_equal(d[i].calls, 1);
        assert_int_equal(d[i].status, KV_EUNAVAIL);
        assert_non_null(strstr(d[i].msg, "closing"));
    }
    t_close(&other);
    t_drain(&loop);
    for (i = 0; i < 3; i++)
        assert_int_equal(d[i].calls, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(classify__canonical_integers__are_int64),
        cmocka_unit_test(classify__other_utf8__is_a_string),
        cmocka_unit_test(classify__nul_or_invalid_utf8__is_binary),
        cmocka_unit_test(value__each_type_round_trips_through_bson),
        cmocka_unit_test(value__int64_is_stored_as_the_number_not_its_text),
        cmocka_unit_test(
            read_value__int32_of_another_writer__reads_as_decimal_text),
        cmocka_unit_test(read_value__types_kvbus_never_writes__are_invalid),
        cmocka_unit_test(
            value_match__covers_every_form_the_same_bytes_can_be_stored_in),
        cmocka_unit_test(regex_prefix__escapes_every_metacharacter),
        cmocka_unit_test(regex_prefix__leaves_other_characters_alone),
        cmocka_unit_test(regex_prefix__output_fits_twice_the_prefix_plus_two),
        cmocka_unit_test(
            error__network_and_selection_errors__are_unavailable_and_down),
        cmocka_unit_test(
            error__duplicate_key__is_recognised_and_the_server_stays_up),
        cmocka_unit_test(error__type_mismatch__is_not_an_integer),
        cmocka_unit_test(
            error__max_time_and_other_server_errors__are_503_not_down),
        cmocka_unit_test(
            uri__sets_the_three_timeouts_and_appname_from_op_timeout),
        cmocka_unit_test(uri__options_the_url_sets__win),
        cmocka_unit_test(
            uri__a_bad_or_missing_url__is_invalid_and_never_quoted),
        cmocka_unit_test(where__shows_host_port_db_and_never_credentials),
        cmocka_unit_test(
            collection__default_is_kv_store_and_configured_is_checked),
        cmocka_unit_test(backoff__doubles_from_100_ms_to_5_s),
        cmocka_unit_test(workers__leave_one_libuv_thread_free),
        cmocka_unit_test(open__without_a_loop_or_a_url__is_invalid),
        cmocka_unit_test(
            server_refusing__calls_fail_503_in_bounded_time_then_fail_fast),
        cmocka_unit_test(
            server_mute__calls_answer_503_by_the_deadline_and_close_answers_the_rest),
        cmocka_unit_test(mget__of_no_keys__answers_at_once_without_a_server),
        cmocka_unit_test(keys__with_a_bad_cursor__is_refused_before_any_io),
        cmocka_unit_test(
            close__with_calls_in_flight__answers_each_once_and_frees_everything),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
