/*
 * test_redis.c - unit tests of the Redis backend (backends/redis) that need
 * no Redis server.
 *
 * The pure parts exposed in redis_int.h are tested as functions: URL
 * parsing (every accepted form, every refusal, and that no error message
 * ever quotes a password), glob escaping for SCAN MATCH, the keys() cursor
 * (round trips, foreign text refused, the 63-byte bound the HTTP layer
 * reads), how much of a SCAN batch a page takes, and the mapping of Redis
 * error replies to kvbus codes. The connection and the method table are
 * then run on a real libuv loop against a loopback port nobody listens on:
 * a call made during the first attempt waits and fails with KV_EUNAVAIL,
 * later calls fail at once, close completes pending calls and leaves no
 * handle open, and open refuses bad configuration without leaking. A fake
 * server that answers only the connection handshake shows that the
 * reconnect counter counts each return after a loss, never the first
 * connect. The pub/sub wire formats (the kvbus envelope, Nuxeo's
 * "<node>:<payload>") are tested as pure functions, and the pub/sub
 * provider runs against the fake server, which also confirms PSUBSCRIBE
 * and pushes messages, with the bus functions it calls (ps_bus_receive,
 * ps_bus_reset, ps_bus_node_id, ps_check_topic) defined here as recorders:
 * this driver links no bus. Everything that needs a real server (commands,
 * TTLs, CAS, paging, timeouts, outages) is covered by the e2e suite run with
 * KVBUS_TEST_BACKEND=redis (tests/e2e/redis.test.mjs).
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

#include "backends/redis/redis.h"
#include "backends/redis/redis_conn.h"
#include "backends/redis/redis_int.h"
#include "kvstore/kvstore.h"
#include "tests/unit/t_net.h"

#define T_PASSWORD "S3cretPw" /* must never appear in a message */
#define T_CURSOR_TEXT_MAX 63  /* most cursor bytes the HTTP layer reads */
#define T_WAIT_MS_MAX 5000    /* a loop test that waits longer fails */
#define T_TIMEOUT_MS 1000     /* op_timeout_ms of the loop tests */

/* A test case; cmocka's state is not used. */
#define TEST(name) static void name(void **state __attribute__((unused)))

/* A NUL-terminated C string as kv_bytes (no NUL included). */
#define B(s) ((kv_bytes){(s), sizeof(s) - 1})

/* ------------------------------------------------------------------ */
/* URLs                                                                 */

static redis_url parse_ok(const char *text)
{
    redis_url u;
    kv_err err = {0};

    assert_int_equal(redis__url_parse(text, &u, &err), 0);
    return u;
}

TEST(url__full_form__parses_every_part)
{
    redis_url u = parse_ok("redis://alice:" T_PASSWORD "@db.example:6380/2");
    char addr[REDIS_ADDR_MAX + 1];

    assert_string_equal(u.host, "db.example");
    assert_false(u.ipv6);
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 2);
    assert_string_equal(u.user, "alice");
    assert_string_equal(u.password, T_PASSWORD);
    redis__url_addr(&u, addr, sizeof addr);
    assert_string_equal(addr, "db.example:6380");
    redis__url_clear(&u);
    assert_null(u.user);
    assert_null(u.password);
}

TEST(url__host_only__defaults_to_port_6379_db_0_no_auth)
{
    static const char *const forms[] = {"redis://h", "redis://h/", "REDIS://h",
                                        "redis://h:6379/0"};
    size_t i;

    for (i = 0; i < sizeof forms / sizeof *forms; i++) {
        redis_url u = parse_ok(forms[i]);
        assert_string_equal(u.host, "h");
        assert_int_equal(u.port, REDIS_DEFAULT_PORT);
        assert_int_equal(u.db, 0);
        assert_null(u.user);
        assert_null(u.password);
        redis__url_clear(&u);
    }
}

TEST(url__userinfo_without_colon__is_the_password_as_in_redis_cli)
{
    redis_url u = parse_ok("redis://" T_PASSWORD "@127.0.0.1:7000/1");

    assert_null(u.user);
    assert_string_equal(u.password, T_PASSWORD);
    assert_string_equal(u.host, "127.0.0.1");
    redis__url_clear(&u);
}

TEST(url__empty_user__authenticates_the_default_user)
{
    redis_url u = parse_ok("redis://:" T_PASSWORD "@h:1/0");

    assert_null(u.user);
    assert_string_equal(u.password, T_PASSWORD);
    assert_int_equal(u.port, 1);
    redis__url_clear(&u);
}

TEST(url__last_at_sign__ends_the_userinfo)
{
    redis_url u = parse_ok("redis://:p@ss/w:rd@h:2/3");

    assert_string_equal(u.password, "p@ss/w:rd");
    assert_string_equal(u.host, "h");
    assert_int_equal(u.port, 2);
    assert_int_equal(u.db, 3);
    redis__url_clear(&u);
}

TEST(url__percent_escapes__are_decoded_in_user_and_password)
{
    redis_url u = parse_ok("redis://al%69ce:p%3Aw%25d%40@h");

    assert_string_equal(u.user, "alice");
    assert_string_equal(u.password, "p:w%d@");
    redis__url_clear(&u);
}

TEST(url__bracketed_ipv6__is_stored_without_brackets)
{
    redis_url u = parse_ok("redis://[::1]:7000/1");
    char addr[REDIS_ADDR_MAX + 1];

    assert_string_equal(u.host, "::1");
    assert_true(u.ipv6);
    assert_int_equal(u.port, 7000);
    redis__url_addr(&u, addr, sizeof addr);
    assert_string_equal(addr, "[::1]:7000");
    redis__url_clear(&u);
}

TEST(url__bad_forms__are_einval_and_never_quote_the_password)
{
    static const char *const bad[] = {
        "",
        "http://h",
        "rediss://:" T_PASSWORD "@h",
        "unix:///tmp/redis.sock",
        "redis://",
        "redis://:" T_PASSWORD "@",
        "redis://:" T_PASSWORD "@/0",
        "redis://h:0",
        "redis://h:65536",
        "redis://h:123456",
        "redis://h:abc",
        "redis://h:",
        "redis://h/x",
        "redis://h/-1",
        "redis://h/1/2",
        "redis://h/1234567890",
        "redis://h?db=1",
        "redis://h#frag",
        "redis://h h",
        "redis://h\t",
        "redis://ho$t",
        "redis://[::1",
        "redis://[::1]x",
        "redis://[::1]:",
        "redis://[zz::1]",
        "redis://[]:1",
        "redis://alice:@h",
        "redis://:" T_PASSWORD "%zz@h",
        "redis://:" T_PASSWORD "%4@h",
        "redis://:" T_PASSWORD "%00@h",
    };
    size_t i;

    for (i = 0; i < sizeof bad / sizeof *bad; i++) {
        redis_url u;
        kv_err err = {0};
        int rc = redis__url_parse(bad[i], &u, &err);
        if (rc != KV_EINVAL)
            fail_msg("\"%s\" gave %d, expected KV_EINVAL", bad[i], rc);
        assert_int_equal(err.code, KV_EINVAL);
        assert_true(strlen(err.msg) > 0);
        if (strstr(err.msg, T_PASSWORD))
            fail_msg("message for \"%s\" quotes the password: %s", bad[i],
                     err.msg);
        assert_null(u.user); /* nothing to free after an error */
        assert_null(u.password);
    }
}

TEST(url__null__is_einval)
{
    redis_url u;
    kv_err err = {0};

    assert_int_equal(redis__url_parse(NULL, &u, &err), KV_EINVAL);
}

/* ------------------------------------------------------------------ */
/* Glob escaping                                                        */

TEST(glob_escape__the_five_specials__get_a_backslash)
{
    const char in[] = "a*b?c[d]e\\f";
    char out[2 * sizeof in];
    size_t n = redis__glob_escape(in, sizeof in - 1, out);

    assert_int_equal(n, sizeof "a\\*b\\?c\\[d\\]e\\\\f" - 1);
    assert_memory_equal(out, "a\\*b\\?c\\[d\\]e\\\\f", n);
}

TEST(glob_escape__other_bytes__are_copied_unchanged)
{
    const char in[] = "kvbus:s:%_.^{}-!\x01\xff";
    char out[2 * sizeof in];
    size_t n = redis__glob_escape(in, sizeof in - 1, out);

    assert_int_equal(n, sizeof in - 1);
    assert_memory_equal(out, in, n);
}

TEST(glob_escape__empty__writes_nothing)
{
    char out[1] = {'x'};

    assert_int_equal(redis__glob_escape("", 0, out), 0);
    assert_int_equal(out[0], 'x');
}

/* ------------------------------------------------------------------ */
/* Cursors                                                              */

static void assert_round_trip(redis_cursor c, const char *want)
{
    char buf[REDIS_CURSOR_MAX + 1];
    size_t n = redis__cursor_encode(&c, buf);
    redis_cursor back;
    kv_err err = {0};

    assert_string_equal(buf, want);
    assert_int_equal(n, strlen(want));
    assert_true(n <= REDIS_CURSOR_MAX);
    assert_int_equal(redis__cursor_decode((kv_bytes){buf, n}, &back, &err), 0);
    assert_true(back.scan == c.scan);
    assert_int_equal(back.bounded, c.bounded);
    if (c.bounded) {
        assert_true(back.after == c.after);
        assert_true(back.next == c.next);
    }
}

TEST(cursor__encode_then_decode__round_trips)
{
    assert_round_trip((redis_cursor){.scan = 0}, "0");
    assert_round_trip((redis_cursor){.scan = 1234}, "1234");
    assert_round_trip((redis_cursor){.scan = UINT64_MAX},
                      "18446744073709551615");
    assert_round_trip((redis_cursor){.scan = 7,
                                     .bounded = true,
                                     .after = 0x00ab00cd00ef0012ULL,
                                     .next = 96},
                      "7.00ab00cd00ef0012.96");
    assert_round_trip(
        (redis_cursor){
            .scan = 0, .bounded = true, .after = UINT64_MAX, .next = 0},
        "0.ffffffffffffffff.0");
}

TEST(cursor__longest__fits_what_the_server_reads)
{
    redis_cursor c = {.scan = UINT64_MAX,
                      .bounded = true,
                      .after = UINT64_MAX,
                      .next = UINT64_MAX};
    char buf[REDIS_CURSOR_MAX + 1];

    assert_int_equal(redis__cursor_encode(&c, buf), REDIS_CURSOR_MAX);
    assert_true(REDIS_CURSOR_MAX <= T_CURSOR_TEXT_MAX);
}

TEST(cursor__empty__is_the_start)
{
    redis_cursor c = {.scan = 9, .bounded = true};
    kv_err err = {0};

    assert_int_equal(redis__cursor_decode((kv_bytes){"", 0}, &c, &err), 0);
    assert_true(c.scan == 0);
    assert_false(c.bounded);
}

TEST(cursor__foreign_text__is_ecursor)
{
    static const char *const bad[] = {
        "not-a-cursor",
        "\xff\xfe",
        "-1",
        "+1",
        "01",
        " 1",
        "1 ",
        "1.",
        ".1",
        "1..2",
        "1.abc.2",
        "1.0123456789abcdeF.2",
        "1.0123456789abcdef",
        "1.0123456789abcdef.",
        "1.0123456789abcdef.01",
        "1.0123456789abcdef.2.3",
        "1.0123456789abcde.22",
        "18446744073709551616",
        "99999999999999999999",
        "1.0123456789abcdef.18446744073709551616",
        "123456789012345678901234567890123456789012345678901234567890",
    };
    size_t i;

    for (i = 0; i < sizeof bad / sizeof *bad; i++) {
        redis_cursor c;
        kv_err err = {0};
        int rc =
            redis__cursor_decode((kv_bytes){bad[i], strlen(bad[i])}, &c, &err);
        if (rc != KV_ECURSOR)
            fail_msg("cursor \"%s\" gave %d, expected KV_ECURSOR", bad[i], rc);
        assert_int_equal(err.code, KV_ECURSOR);
    }
}

TEST(cursor__nul_byte__is_ecursor)
{
    redis_cursor c;
    kv_err err = {0};

    assert_int_equal(redis__cursor_decode((kv_bytes){"1\0", 2}, &c, &err),
                     KV_ECURSOR);
}

TEST(key_hash__is_xxh3_of_the_bytes)
{
    /* The same digest as kv_etag (XXH3-64), whose vectors are known. */
    char etag[KV_ETAG_HEX + 1], hex[KV_ETAG_HEX + 1];

    kv_etag(B("hello"), etag);
    snprintf(hex, sizeof hex, "%016llx",
             (unsigned long long)redis__key_hash("hello", 5));
    assert_string_equal(hex, etag);
}

/* ------------------------------------------------------------------ */
/* Page selection                                                       */

/* Fills keys[i] = {hashes[i], i}. */
static void scan_keys(redis_scan_key *keys, const uint64_t *hashes, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        keys[i] = (redis_scan_key){hashes[i], i};
}

TEST(scan_pick__batch_fits__takes_all_in_reply_order)
{
    const uint64_t h[] = {30, 10, 20};
    redis_scan_key k[3];

    scan_keys(k, h, 3);
    assert_int_equal(redis__scan_pick(k, 3, 3, false), 3);
    assert_int_equal(k[0].index, 0);
    assert_int_equal(k[1].index, 1);
    assert_int_equal(k[2].index, 2);
    assert_int_equal(redis__scan_pick(k, 0, 5, true), 0);
}

TEST(scan_pick__too_many_and_no_cut_allowed__takes_none)
{
    const uint64_t h[] = {30, 10, 20};
    redis_scan_key k[3];

    scan_keys(k, h, 3);
    assert_int_equal(redis__scan_pick(k, 3, 2, false), 0);
}

TEST(scan_pick__too_many_with_cut_allowed__takes_the_lowest_hashes)
{
    const uint64_t h[] = {30, 10, 50, 20, 40};
    redis_scan_key k[5];

    scan_keys(k, h, 5);
    assert_int_equal(redis__scan_pick(k, 5, 2, true), 2);
    assert_true(k[0].hash == 10 && k[0].index == 1);
    assert_true(k[1].hash == 20 && k[1].index == 3);
}

TEST(scan_pick__cut_inside_equal_hashes__moves_before_them)
{
    const uint64_t h[] = {3, 2, 1, 2};
    redis_scan_key k[4];

    scan_keys(k, h, 4);
    /* Sorted 1 2 2 3: a cut after two keys would split the 2s. */
    assert_int_equal(redis__scan_pick(k, 4, 2, true), 1);
    assert_true(k[0].hash == 1);
}

TEST(scan_pick__equal_hashes_longer_than_a_page__are_taken_whole)
{
    const uint64_t h[] = {5, 6, 5, 5};
    redis_scan_key k[4];

    scan_keys(k, h, 4);
    /* Losing keys would be worse than a page of three with limit two. */
    assert_int_equal(redis__scan_pick(k, 4, 2, true), 3);
    assert_true(k[0].hash == 5 && k[1].hash == 5 && k[2].hash == 5);
}

/* ------------------------------------------------------------------ */
/* Error replies                                                        */

#define E(s) (s), (sizeof(s) - 1)

TEST(error_code__incr_errors__map_to_not_integer_and_overflow)
{
    assert_int_equal(
        redis__error_code(KV_OP_INCR,
                          E("ERR value is not an integer or out of range")),
        KV_ENOTINT);
    assert_int_equal(
        redis__error_code(KV_OP_INCR,
                          E("ERR increment or decrement would overflow")),
        KV_EOVERFLOW);
    assert_int_equal(
        redis__error_code(
            KV_OP_INCR,
            E("WRONGTYPE Operation against a key holding the wrong kind of "
              "value")),
        KV_ENOTINT);
}

TEST(error_code__wrong_type_elsewhere__is_einval)
{
    assert_int_equal(
        redis__error_code(
            KV_OP_GET,
            E("WRONGTYPE Operation against a key holding the wrong kind of "
              "value script: 5ed98bd4c45bc4c1b07cb7a8f1f2498f88436f91, on "
              "@user_script:1.")),
        KV_EINVAL);
    assert_int_equal(
        redis__error_code(
            KV_OP_CAS,
            E("ERR Error running script (call to f_0123): @user_script:1: "
              "WRONGTYPE Operation against a key holding the wrong kind of "
              "value")),
        KV_EINVAL);
}

TEST(error_code__out_of_memory__is_enomem)
{
    assert_int_equal(
        redis__error_code(KV_OP_PUT,
                          E("OOM command not allowed when used memory > "
                            "'maxmemory'.")),
        KV_ENOMEM);
}

TEST(error_code__server_side_problems__are_eunavail)
{
    static const char *const msgs[] = {
        "LOADING Redis is loading the dataset in memory",
        "BUSY Redis is busy running a script.",
        "READONLY You can't write against a read only replica.",
        "NOAUTH Authentication required.",
        "NOPERM this user has no permissions to run the 'set' command",
        "MASTERDOWN Link with MASTER is down",
        "MOVED 3999 127.0.0.1:6381",
        "NOSCRIPT No matching script. Please use EVAL.",
        "ERR unknown command 'UNLINK'",
        "",
    };
    size_t i;

    for (i = 0; i < sizeof msgs / sizeof *msgs; i++)
        assert_int_equal(redis__error_code(KV_OP_PUT, msgs[i], strlen(msgs[i])),
                         KV_EUNAVAIL);
}

TEST(error_code__integer_errors_outside_incr__are_eunavail)
{
    assert_int_equal(
        redis__error_code(KV_OP_SET_TTL,
                          E("ERR value is not an integer or out of range")),
        KV_EUNAVAIL);
}

/* ------------------------------------------------------------------ */
/* On a loop, with no server                                            */

/* What one completion delivered. */
struct t_done {
    int calls;
    int status;
    char msg[KV_ERR_MSG_BYTES];
};

static void t_reply_cb(int status, const redisReply *reply, const kv_err *err,
                       void *ud)
{
    struct t_done *d = ud;

    d->calls++;
    d->status = status;
    assert_null(reply);
    assert_non_null(err);
    snprintf(d->msg, sizeof d->msg, "%s", err->msg);
}

static void t_kv_done(int status, const kv_reply *reply, const kv_err *err,
                      void *ud)
{
    struct t_done *d = ud;

    d->calls++;
    d->status = status;
    if (status != 0) {
        assert_null(reply);
        snprintf(d->msg, sizeof d->msg, "%s", err->msg);
    }
}

static void t_guard_fired(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

/*
 * Turns the loop until *calls reaches want. The connection's handles do
 * not keep a loop alive (kvbusd's server does), so a timer of the test's
 * own does, and bounds the wait.
 */
static void t_run_until(uv_loop_t *loop, const int *calls, int want)
{
    uv_timer_t guard;
    bool fired = false;

    uv_timer_init(loop, &guard);
    guard.data = &fired;
    uv_timer_start(&guard, t_guard_fired, T_WAIT_MS_MAX, 0);
    while (*calls < want && !fired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    assert_int_equal(*calls, want);
}

/* Runs the loop until every handle closed, then closes it. */
static void t_loop_finish(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0);
}

static const char *const t_scripts[] = {"return 1"};

TEST(conn__first_attempt_refused__waiting_call_fails_eunavail)
{
    uv_loop_t loop;
    char url[64];
    redis_conn *c;
    kv_err err = {0};
    struct t_done d = {0};
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    redis_conn_conf conf = {.url = url,
                            .label = "store t",
                            .op_timeout_ms = T_TIMEOUT_MS,
                            .scripts = t_scripts,
                            .nscripts = 1};

    assert_int_equal(uv_loop_init(&loop), 0);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", t_refusing_port());
    assert_int_equal(redis_conn_open(&loop, &conf, &c, &err), 0);
    assert_false(redis_conn_ready(c));
    /* During the first attempt the call is accepted and waits. */
    assert_int_equal(redis_conn_command(c, 1, argv, lens, t_reply_cb, &d, &err),
                     0);
    assert_int_equal(d.calls, 0);
    t_run_until(&loop, &d.calls, 1);
    assert_int_equal(d.status, KV_EUNAVAIL);
    assert_non_null(strstr(d.msg, "store t"));
    assert_non_null(strstr(d.msg, redis_conn_addr(c)));
    redis_conn_close(c);
    t_loop_finish(&loop);
}

TEST(conn__after_a_failed_attempt__calls_fail_at_once)
{
    uv_loop_t loop;
    char url[64];
    redis_conn *c;
    kv_err err = {0};
    struct t_done d = {0}, late = {0};
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    redis_conn_conf conf = {
        .url = url, .label = "store t", .op_timeout_ms = T_TIMEOUT_MS};

    assert_int_equal(uv_loop_init(&loop), 0);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", t_refusing_port());
    assert_int_equal(redis_conn_open(&loop, &conf, &c, &err), 0);
    assert_int_equal(redis_conn_command(c, 1, argv, lens, t_reply_cb, &d, &err),
                     0);
    t_run_until(&loop, &d.calls, 1);
    /* Down now: refused without a callback, naming store and address. */
    assert_int_equal(
        redis_conn_command(c, 1, argv, lens, t_reply_cb, &late, &err),
        KV_EUNAVAIL);
    assert_int_equal(err.code, KV_EUNAVAIL);
    assert_non_null(strstr(err.msg, "store t"));
    assert_non_null(strstr(err.msg, redis_conn_addr(c)));
    assert_int_equal(redis_conn_script(c, 0, 1, (const char *[]){"0"},
                                       (size_t[]){1}, t_reply_cb, &late, &err),
                     KV_EUNAVAIL);
    assert_int_equal(late.calls, 0);
    redis_conn_close(c);
    t_loop_finish(&loop);
    assert_int_equal(late.calls, 0);
}

TEST(conn__close_during_first_attempt__completes_the_waiting_call)
{
    uv_loop_t loop;
    char url[64];
    redis_conn *c;
    kv_err err = {0};
    struct t_done d = {0};
    const char *argv[] = {"GET", "k"};
    size_t lens[] = {3, 1};
    redis_conn_conf conf = {.url = url, .label = "store t"};

    assert_int_equal(uv_loop_init(&loop), 0);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", t_refusing_port());
    assert_int_equal(redis_conn_open(&loop, &conf, &c, &err), 0);
    assert_int_equal(redis_conn_command(c, 2, argv, lens, t_reply_cb, &d, &err),
                     0);
    redis_conn_close(c);
    assert_int_equal(d.calls, 1); /* before close returned */
    assert_int_equal(d.status, KV_EUNAVAIL);
    t_loop_finish(&loop);
    assert_int_equal(d.calls, 1);
}

TEST(conn__host_name__is_resolved_then_refused)
{
    uv_loop_t loop;
    char url[64];
    redis_conn *c;
    kv_err err = {0};
    struct t_done d = {0};
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    redis_conn_conf conf = {.url = url, .label = "store t"};

    assert_int_equal(uv_loop_init(&loop), 0);
    snprintf(url, sizeof url, "redis://localhost:%d/0", t_refusing_port());
    assert_int_equal(redis_conn_open(&loop, &conf, &c, &err), 0);
    assert_int_equal(redis_conn_command(c, 1, argv, lens, t_reply_cb, &d, &err),
                     0);
    t_run_until(&loop, &d.calls, 1);
    assert_int_equal(d.status, KV_EUNAVAIL);
    redis_conn_close(c);
    t_loop_finish(&loop);
}

TEST(conn__close_while_resolving__frees_everything)
{
    uv_loop_t loop;
    redis_conn *c;
    kv_err err = {0};
    redis_conn_conf conf = {.url = "redis://localhost:1/0", .label = "t"};

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(redis_conn_open(&loop, &conf, &c, &err), 0);
    redis_conn_close(c);
    t_loop_finish(&loop);
}

TEST(conn__bad_url__is_refused_without_quoting_it)
{
    uv_loop_t loop;
    redis_conn *c = (redis_conn *)&loop;
    kv_err err = {0};
    redis_conn_conf conf = {.url = "redis://:" T_PASSWORD "@h:99999",
                            .label = "t"};

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(redis_conn_open(&loop, &conf, &c, &err), KV_EINVAL);
    assert_null(c);
    assert_null(strstr(err.msg, T_PASSWORD));
    t_loop_finish(&loop);
}

/* An instance built the way the core builds one. */
static kv_backend *t_backend_new(uv_loop_t *loop, const kv_store_conf *conf)
{
    kv_backend *b = calloc(1, redis_backend_ops.size);

    assert_non_null(b);
    b->ops = &redis_backend_ops;
    b->loop = loop;
    b->conf = conf;
    return b;
}

TEST(backend__table__is_named_redis_and_complete)
{
    const struct kv_backend_ops *ops = &redis_backend_ops;

    assert_int_equal(ops->version, KV_BACKEND_OPS_VERSION);
    assert_string_equal(ops->name, "redis");
    assert_true(ops->size >= sizeof(struct kv_backend));
    assert_non_null(ops->open);
    assert_non_null(ops->close);
    assert_non_null(ops->get);
    assert_non_null(ops->put);
    assert_non_null(ops->del);
    assert_non_null(ops->set_ttl);
    assert_non_null(ops->cas);
    assert_non_null(ops->incr);
    assert_non_null(ops->mget);
    assert_non_null(ops->keys);
    assert_non_null(ops->clear);
    assert_non_null(ops->stats);
    assert_non_null(ops->healthy);
}

TEST(backend__bad_configuration__is_refused_by_open)
{
    uv_loop_t loop;
    kv_store_conf conf = {.name = "s", .backend = "redis"};
    kv_err err = {0};
    kv_backend *b;

    assert_int_equal(uv_loop_init(&loop), 0);
    b = t_backend_new(&loop, &conf);

    conf.url = NULL; /* no URL */
    assert_int_equal(b->ops->open(b, &conf, &err), KV_EINVAL);
    assert_non_null(strstr(err.msg, "url"));

    conf.url = "redis://:" T_PASSWORD "@h/x"; /* bad db */
    assert_int_equal(b->ops->open(b, &conf, &err), KV_EINVAL);
    assert_non_null(strstr(err.msg, "redis url"));
    assert_null(strstr(err.msg, T_PASSWORD));

    conf.url = "redis://127.0.0.1:1/0";
    conf.key_prefix = ""; /* clear would empty the whole database */
    assert_int_equal(b->ops->open(b, &conf, &err), KV_EINVAL);
    assert_non_null(strstr(err.msg, "key_prefix"));

    free(b); /* a failed open leaves nothing to close */
    t_loop_finish(&loop);
}

TEST(backend__server_down__answers_eunavail_and_reports_unhealthy)
{
    uv_loop_t loop;
    char url[64];
    kv_store_conf conf = {.name = "s", .backend = "redis", .url = url};
    kv_req get = {.op = KV_OP_GET, .key = B("k")};
    kv_req keys = {.op = KV_OP_KEYS, .limit = 10};
    kv_backend_stats st = {.known = true};
    struct t_done d = {0}, d2 = {0};
    kv_err err = {0};
    kv_backend *b;

    assert_int_equal(uv_loop_init(&loop), 0);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", t_refusing_port());
    b = t_backend_new(&loop, &conf);
    assert_int_equal(b->ops->open(b, &conf, &err), 0);
    assert_false(b->ops->healthy(b));
    b->ops->stats(b, &st);
    assert_false(st.known);

    assert_int_equal(b->ops->get(b, &get, t_kv_done, &d, &err), 0);
    t_run_until(&loop, &d.calls, 1);
    assert_int_equal(d.status, KV_EUNAVAIL);
    assert_non_null(strstr(d.msg, "store s"));

    /* Down: refused at once, done never called. */
    assert_int_equal(b->ops->get(b, &get, t_kv_done, &d2, &err), KV_EUNAVAIL);
    assert_int_equal(b->ops->keys(b, &keys, t_kv_done, &d2, &err), KV_EUNAVAIL);
    keys.cursor = B("not-a-cursor");
    assert_int_equal(b->ops->keys(b, &keys, t_kv_done, &d2, &err), KV_ECURSOR);
    assert_int_equal(d2.calls, 0);

    b->ops->close(b);
    free(b);
    t_loop_finish(&loop);
}

TEST(backend__close_with_calls_waiting__completes_them_first)
{
    uv_loop_t loop;
    char url[64];
    kv_store_conf conf = {.name = "s", .backend = "redis", .url = url};
    kv_req put = {.op = KV_OP_PUT, .key = B("k"), .value = B("v")};
    kv_req clear = {.op = KV_OP_CLEAR};
    kv_bytes mkeys[] = {B("a"), B("b")};
    kv_req mget = {.op = KV_OP_MGET, .keys = mkeys, .nkeys = 2};
    struct t_done d[3] = {{0}};
    kv_err err = {0};
    kv_backend *b;
    int i;

    assert_int_equal(uv_loop_init(&loop), 0);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", t_refusing_port());
    b = t_backend_new(&loop, &conf);
    assert_int_equal(b->ops->open(b, &conf, &err), 0);
    assert_int_equal(b->ops->put(b, &put, t_kv_done, &d[0], &err), 0);
    assert_int_equal(b->ops->clear(b, &clear, t_kv_done, &d[1], &err), 0);
    assert_int_equal(b->ops->mget(b, &mget, t_kv_done, &d[2], &err), 0);
    b->ops->close(b);
    for (i = 0; i < 3; i++) {
        assert_int_equal(d[i].calls, 1);
        assert_int_equal(d[i].status, KV_EUNAVAIL);
    }
    free(b); /* as the core does, before the loop has run */
    t_loop_finish(&loop);
}

TEST(backend__mget_of_no_keys__answers_at_once)
{
    uv_loop_t loop;
    char url[64];
    kv_store_conf conf = {.name = "s", .backend = "redis", .url = url};
    kv_req mget = {.op = KV_OP_MGET, .nkeys = 0};
    struct t_done d = {0};
    kv_err err = {0};
    kv_backend *b;

    assert_int_equal(uv_loop_init(&loop), 0);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", t_refusing_port());
    b = t_backend_new(&loop, &conf);
    assert_int_equal(b->ops->open(b, &conf, &err), 0);
    assert_int_equal(b->ops->mget(b, &mget, t_kv_done, &d, &err), 0);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, 0);
    b->ops->close(b);
    free(b);
    t_loop_finish(&loop);
}

/* ------------------------------------------------------------------ */
/* A fake Redis server, for the reconnect counter                       */

#define T_FAKE_CLIENTS 4      /* connections a fake server keeps */
#define T_FAKE_BUF_BYTES 8192 /* unanswered command bytes per connection */

/*
 * Just enough of a Redis server on the test's loop for a connection to
 * become ready: PING answers +PONG, SCRIPT (LOAD) a 40-byte "SHA1", any
 * other command +OK; PSUBSCRIBE confirms the pattern "kvbus:*" (the
 * provider's default) and t_fake_pmessage() then pushes messages to the
 * client. t_fake_drop() closes every connection, as a server that went
 * away and came back would.
 */
struct t_fake;

struct t_fake_client {
    uv_tcp_t tcp;
    struct t_fake *fake;
    char buf[T_FAKE_BUF_BYTES];
    size_t len;
    bool subscribed; /* sent PSUBSCRIBE */
};

struct t_fake {
    uv_tcp_t server;
    struct t_fake_client *clients[T_FAKE_CLIENTS];
    int port;
};

static void t_fake_client_closed(uv_handle_t *h)
{
    free(h->data);
}

static void t_fake_client_close(struct t_fake_client *cl)
{
    int i;

    for (i = 0; i < T_FAKE_CLIENTS; i++)
        if (cl->fake->clients[i] == cl)
            cl->fake->clients[i] = NULL;
    uv_close((uv_handle_t *)&cl->tcp, t_fake_client_closed);
}

/*
 * The length of the first complete command (a RESP array of bulk strings)
 * in p, with its first argument in *name; 0 while it is incomplete.
 */
static size_t t_resp_command(const char *p, size_t len, const char **name,
                             size_t *name_len)
{
    const char *end = p + len, *q = p, *nl;
    long n, i, alen;

    if (len == 0 || *q != '*' || !(nl = memchr(q, '\n', len)))
        return 0;
    n = strtol(q + 1, NULL, 10);
    q = nl + 1;
    for (i = 0; i < n; i++) {
        if (q >= end || *q != '$' || !(nl = memchr(q, '\n', (size_t)(end - q))))
            return 0;
        alen = strtol(q + 1, NULL, 10);
        q = nl + 1;
        if (end - q < alen + 2)
            return 0;
        if (i == 0) {
            *name = q;
            *name_len = (size_t)alen;
        }
        q += alen + 2;
    }
    return (size_t)(q - p);
}

static void t_fake_send(struct t_fake_client *cl, const char *text)
{
    uv_buf_t buf = uv_buf_init((char *)text, (unsigned)strlen(text));

    assert_int_equal(uv_try_write((uv_stream_t *)&cl->tcp, &buf, 1),
                     (int)buf.len);
}

static void t_fake_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct t_fake_client *cl = h->data;

    (void)hint;
    *buf = uv_buf_init(cl->buf + cl->len, (unsigned)(sizeof cl->buf - cl->len));
}

static void t_fake_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct t_fake_client *cl = s->data;
    const char *name = NULL;
    size_t used, name_len = 0;

    (void)buf;
    if (n < 0) {
        t_fake_client_close(cl);
        return;
    }
    cl->len += (size_t)n;
    while ((used = t_resp_command(cl->buf, cl->len, &name, &name_len)) > 0) {
        if (name_len == 4 && memcmp(name, "PING", 4) == 0)
            t_fake_send(cl, "+PONG\r\n");
        else if (name_len == 6 && memcmp(name, "SCRIPT", 6) == 0)
            t_fake_send(cl, "$40\r\n"
                            "0123456789abcdef0123456789abcdef01234567\r\n");
        else if (name_len == 10 && memcmp(name, "PSUBSCRIBE", 10) == 0) {
            t_fake_send(cl, "*3\r\n$10\r\npsubscribe\r\n$7\r\nkvbus:*\r\n"
                            ":1\r\n");
            cl->subscribed = true;
        } else
            t_fake_send(cl, "+OK\r\n");
        memmove(cl->buf, cl->buf + used, cl->len - used);
        cl->len -= used;
    }
    assert_true(cl->len < sizeof cl->buf);
}

static void t_fake_on_conn(uv_stream_t *srv, int status)
{
    struct t_fake *f = srv->data;
    struct t_fake_client *cl;
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
        uv_close((uv_handle_t *)&cl->tcp, t_fake_client_closed);
        return;
    }
    f->clients[i] = cl;
    uv_read_start((uv_stream_t *)&cl->tcp, t_fake_alloc, t_fake_read);
}

/* Listens on 127.0.0.1:port (0 = any free port). */
static void t_fake_start(struct t_fake *f, uv_loop_t *loop, int port)
{
    struct sockaddr_in addr;
    struct sockaddr_storage got;
    int len = sizeof got;

    memset(f, 0, sizeof *f);
    assert_int_equal(uv_tcp_init(loop, &f->server), 0);
    f->server.data = f;
    assert_int_equal(uv_ip4_addr("127.0.0.1", port, &addr), 0);
    assert_int_equal(uv_tcp_bind(&f->server, (struct sockaddr *)&addr, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&f->server, 16, t_fake_on_conn),
                     0);
    assert_int_equal(
        uv_tcp_getsockname(&f->server, (struct sockaddr *)&got, &len), 0);
    f->port = ntohs(((struct sockaddr_in *)&got)->sin_port);
}

/* Closes every connection the fake accepted. */
static void t_fake_drop(struct t_fake *f)
{
    int i;

    for (i = 0; i < T_FAKE_CLIENTS; i++)
        if (f->clients[i])
            t_fake_client_close(f->clients[i]);
}

static void t_fake_stop(struct t_fake *f)
{
    t_fake_drop(f);
    uv_close((uv_handle_t *)&f->server, NULL);
}

/* The backend's reconnect count, as /metrics reads it. */
static uint64_t t_reconnects(kv_backend *b)
{
    kv_backend_stats st = {0};

    b->ops->stats(b, &st);
    assert_false(st.known);
    return st.reconnects;
}

/*
 * Turns the loop until b is healthy with `want` reconnects counted (or
 * T_WAIT_MS_MAX passes), then checks it is exactly that.
 */
static void t_run_until_ready(uv_loop_t *loop, kv_backend *b, uint64_t want)
{
    uv_timer_t guard;
    bool fired = false;

    uv_timer_init(loop, &guard);
    guard.data = &fired;
    uv_timer_start(&guard, t_guard_fired, T_WAIT_MS_MAX, 0);
    while (!(b->ops->healthy(b) && t_reconnects(b) >= want) && !fired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    assert_true(b->ops->healthy(b));
    assert_int_equal(t_reconnects(b), want);
}

TEST(stats__connection_lost_then_back__counts_one_reconnect_each_time)
{
    uv_loop_t loop;
    struct t_fake f;
    char url[64];
    kv_store_conf conf = {.name = "s", .backend = "redis", .url = url};
    kv_err err = {0};
    kv_backend *b;

    assert_int_equal(uv_loop_init(&loop), 0);
    t_fake_start(&f, &loop, 0);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", f.port);
    b = t_backend_new(&loop, &conf);
    assert_int_equal(b->ops->open(b, &conf, &err), 0);
    assert_int_equal(t_reconnects(b), 0);
    t_run_until_ready(&loop, b, 0); /* the first connect is not one */

    t_fake_drop(&f);
    t_run_until_ready(&loop, b, 1);
    t_fake_drop(&f);
    t_run_until_ready(&loop, b, 2);

    b->ops->close(b);
    free(b);
    t_fake_stop(&f);
    t_loop_finish(&loop);
}

TEST(stats__first_connect_after_refused_attempts__is_not_a_reconnect)
{
    uv_loop_t loop;
    struct t_fake f;
    char url[64];
    kv_store_conf conf = {.name = "s", .backend = "redis", .url = url};
    kv_req get = {.op = KV_OP_GET, .key = B("k")};
    struct t_done d = {0};
    kv_err err = {0};
    kv_backend *b;
    int port;

    assert_int_equal(uv_loop_init(&loop), 0);
    port = t_refusing_port();
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", port);
    b = t_backend_new(&loop, &conf);
    assert_int_equal(b->ops->open(b, &conf, &err), 0);
    assert_int_equal(b->ops->get(b, &get, t_kv_done, &d, &err), 0);
    t_run_until(&loop, &d.calls, 1); /* the first attempt was refused */
    assert_int_equal(d.status, KV_EUNAVAIL);

    t_fake_start(&f, &loop, port); /* the server shows up */
    t_run_until_ready(&loop, b, 0);

    b->ops->close(b);
    free(b);
    t_fake_stop(&f);
    t_loop_finish(&loop);
}

/* ------------------------------------------------------------------ */
/* Pub/sub wire formats                                                 */

TEST(envelope__head_then_parse__round_trips_binary_payload)
{
    static const char payload[] = "a\nb\0c:d";
    ps_message m = {.topic = "t",
                    .topic_len = 1,
                    .node = "node-a",
                    .seq = 42,
                    .ts_ms = 1700000000123ull};
    char wire[REDIS_PS_HEAD_MAX + sizeof payload];
    size_t h = redis__ps_envelope_head(&m, wire);
    redis_ps_stamp st;

    assert_string_equal(wire, "kvbus1 node-a 42 1700000000123\n");
    memcpy(wire + h, payload, sizeof payload - 1);
    assert_int_equal(
        redis__ps_envelope_parse(wire, h + sizeof payload - 1, &st), 0);
    assert_string_equal(st.node, "node-a");
    assert_int_equal(st.seq, 42);
    assert_int_equal(st.ts_ms, 1700000000123ull);
    assert_int_equal(st.len, sizeof payload - 1);
    assert_memory_equal(st.data, payload, st.len);
}

TEST(envelope__empty_payload__parses_to_zero_bytes)
{
    redis_ps_stamp st;

    assert_int_equal(redis__ps_envelope_parse("kvbus1 n 1 2\n", 13, &st), 0);
    assert_int_equal(st.len, 0);
}

TEST(envelope__malformed__is_refused)
{
    static const char *const bad[] = {
        "",
        "kvbus1 n 1 2",                       /* no LF */
        "kvbus2 n 1 2\nx",                    /* other version */
        "kvbus1  1 2\nx",                     /* empty node */
        "kvbus1 a:b 1 2\nx",                  /* ':' in the node id */
        "kvbus1 n 01 2\nx",                   /* not canonical */
        "kvbus1 n 1 -2\nx",                   /* not a number */
        "kvbus1 n 1 2 3\nx",                  /* a field too many */
        "kvbus1 n 18446744073709551616 2\nx", /* past 2^64 - 1 */
        "kvbus1 n 1\nx",                      /* a field missing */
    };
    redis_ps_stamp st;

    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(redis__ps_envelope_parse(bad[i], strlen(bad[i]), &st),
                         -1);
}

TEST(nuxeo__payload__splits_at_the_first_colon)
{
    static const char msg[] = "other-node:cacheName/key:with:colons";
    redis_ps_stamp st;

    assert_int_equal(redis__ps_nuxeo_parse(msg, sizeof msg - 1, &st), 0);
    assert_string_equal(st.node, "other-node");
    assert_int_equal(st.seq, 0);
    assert_int_equal(st.len, strlen("cacheName/key:with:colons"));
    assert_memory_equal(st.data, "cacheName/key:with:colons", st.len);
    assert_int_equal(redis__ps_nuxeo_parse("n:", 2, &st), 0);
    assert_int_equal(st.len, 0);
}

TEST(nuxeo__no_colon_or_empty_node__is_refused)
{
    redis_ps_stamp st;

    assert_int_equal(redis__ps_nuxeo_parse("no colon here", 13, &st), -1);
    assert_int_equal(redis__ps_nuxeo_parse(":payload", 8, &st), -1);
    assert_int_equal(redis__ps_nuxeo_parse("a b:payload", 11, &st), -1);
}

/* ------------------------------------------------------------------ */
/* The provider, against the fake server and a recording bus           */

/*
 * The four bus functions the provider calls. This driver links no bus:
 * these record what the provider hands over. The node id is "n1".
 */
static struct {
    int received;
    int resets;
    char topic[64];
    char data[64];
    char node[64];
    uint64_t seq;
    char reason[128];
} t_bus;

const char *ps_bus_node_id(const ps_bus *bus)
{
    (void)bus;
    return "n1";
}

int ps_check_topic(const char *topic, size_t len, kv_err *err)
{
    (void)err;
    if (len == 0 || len > PS_TOPIC_MAX)
        return KV_ETOPIC;
    for (size_t i = 0; i < len; i++)
        if (topic[i] <= ' ' || topic[i] >= 0x7f || topic[i] == '*')
            return KV_ETOPIC;
    return 0;
}

void ps_bus_receive(ps_bus *bus, const ps_message *m)
{
    (void)bus;
    t_bus.received++;
    snprintf(t_bus.topic, sizeof t_bus.topic, "%.*s", (int)m->topic_len,
             m->topic);
    snprintf(t_bus.data, sizeof t_bus.data, "%.*s", (int)m->len, m->data);
    snprintf(t_bus.node, sizeof t_bus.node, "%s", m->node);
    t_bus.seq = m->seq;
}

void ps_bus_reset(ps_bus *bus, const char *pattern, const char *reason)
{
    (void)bus;
    assert_null(pattern);
    t_bus.resets++;
    snprintf(t_bus.reason, sizeof t_bus.reason, "%s", reason);
}

/* Pushes one pmessage on channel to every subscribed client of f. */
static void t_fake_pmessage(struct t_fake *f, const char *channel,
                            const char *payload)
{
    char frame[512];

    snprintf(frame, sizeof frame,
             "*4\r\n$8\r\npmessage\r\n$7\r\nkvbus:*\r\n$%zu\r\n%s\r\n$%zu\r\n"
             "%s\r\n",
             strlen(channel), channel, strlen(payload), payload);
    for (int i = 0; i < T_FAKE_CLIENTS; i++)
        if (f->clients[i] && f->clients[i]->subscribed)
            t_fake_send(f->clients[i], frame);
}

/* A provider on loop for url, opened; free with t_provider_free. */
static ps_provider *t_provider_open(uv_loop_t *loop, const char *url,
                                    const char *format)
{
    ps_provider_conf conf = {.name = "redis",
                             .url = url,
                             .channel_prefix = "kvbus:",
                             .format = format};
    ps_provider *p = calloc(1, redis_provider_ops.size);
    kv_err err = {0};

    assert_non_null(p);
    p->ops = &redis_provider_ops;
    p->loop = loop;
    p->bus = (ps_bus *)p; /* never dereferenced: the bus is recorded */
    assert_int_equal(redis_provider_ops.open(p, &conf, &err), 0);
    return p;
}

static void t_provider_free(ps_provider *p)
{
    p->ops->close(p);
    free(p);
}

/* Turns the loop until p's health is want (or T_WAIT_MS_MAX passes). */
static void t_run_until_healthy(uv_loop_t *loop, ps_provider *p, bool want)
{
    uv_timer_t guard;
    bool fired = false;

    uv_timer_init(loop, &guard);
    guard.data = &fired;
    uv_timer_start(&guard, t_guard_fired, T_WAIT_MS_MAX, 0);
    while (p->ops->healthy(p) != want && !fired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    assert_true(p->ops->healthy(p) == want);
}

TEST(provider__table__is_named_redis_and_complete)
{
    assert_string_equal(redis_provider_ops.name, "redis");
    assert_int_equal(redis_provider_ops.version, PS_PROVIDER_OPS_VERSION);
    assert_true(redis_provider_ops.size >= sizeof(ps_provider));
    assert_non_null(redis_provider_ops.open);
    assert_non_null(redis_provider_ops.close);
    assert_non_null(redis_provider_ops.publish);
    assert_non_null(redis_provider_ops.healthy);
}

TEST(provider__bad_configuration__is_refused_by_open)
{
    static const ps_provider_conf bad[] = {
        {.name = "redis"},
        {.name = "redis", .url = "http://x"},
        {.name = "redis", .url = "redis://127.0.0.1", .format = "json"},
    };
    kv_err err = {0};

    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ps_provider *p = calloc(1, redis_provider_ops.size);
        assert_non_null(p);
        p->ops = &redis_provider_ops;
        assert_int_equal(redis_provider_ops.open(p, &bad[i], &err), KV_EINVAL);
        free(p);
    }
}

TEST(provider__server_down__publish_is_eunavail_and_unhealthy)
{
    uv_loop_t loop;
    char url[64];
    ps_provider *p;
    ps_message m = {.topic = "t",
                    .topic_len = 1,
                    .data = "x",
                    .len = 1,
                    .node = "n1",
                    .seq = 1,
                    .ts_ms = 1};
    kv_err err = {0};

    assert_int_equal(uv_loop_init(&loop), 0);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", t_refusing_port());
    p = t_provider_open(&loop, url, "kvbus");
    assert_false(p->ops->healthy(p));
    assert_int_equal(p->ops->publish(p, &m, &err), KV_EUNAVAIL);
    assert_non_null(strstr(err.msg, "unavailable"));
    t_provider_free(p);
    t_loop_finish(&loop);
}

TEST(provider__messages__others_delivered_own_dropped_gaps_and_reconnects_reset)
{
    uv_loop_t loop;
    struct t_fake f;
    char url[64];
    ps_provider *p;
    ps_message m = {.topic = "t",
                    .topic_len = 1,
                    .data = "x",
                    .len = 1,
                    .node = "n1",
                    .seq = 1,
                    .ts_ms = 1};
    kv_err err = {0};

    memset(&t_bus, 0, sizeof t_bus);
    assert_int_equal(uv_loop_init(&loop), 0);
    t_fake_start(&f, &loop, 0);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", f.port);
    p = t_provider_open(&loop, url, NULL);
    t_run_until_healthy(&loop, p, true);
    assert_int_equal(p->ops->publish(p, &m, &err), 0);

    t_fake_pmessage(&f, "kvbus:inval", "kvbus1 n2 1 5\nhello");
    t_run_until(&loop, &t_bus.received, 1);
    assert_string_equal(t_bus.topic, "inval");
    assert_string_equal(t_bus.data, "hello");
    assert_string_equal(t_bus.node, "n2");
    assert_int_equal(t_bus.resets, 0);

    /* Own echo and malformed messages are dropped; a jump resets. */
    t_fake_pmessage(&f, "kvbus:inval", "kvbus1 n1 1 5\nmine");
    t_fake_pmessage(&f, "kvbus:inval", "garbage");
    t_fake_pmessage(&f, "kvbus:inval", "kvbus1 n2 4 6\nafter a gap");
    t_run_until(&loop, &t_bus.received, 2);
    assert_string_equal(t_bus.data, "after a gap");
    assert_int_equal(t_bus.resets, 1);
    assert_non_null(strstr(t_bus.reason, "2 missed"));

    /* The subscription comes back after a loss: one reset. */
    t_fake_drop(&f);
    t_run_until(&loop, &t_bus.resets, 2);
    assert_string_equal(t_bus.reason, "provider reconnected");
    t_run_until_healthy(&loop, p, true);

    /* The sequence history went with the reset: no gap reported. */
    t_fake_pmessage(&f, "kvbus:inval", "kvbus1 n2 9 7\nfresh");
    t_run_until(&loop, &t_bus.received, 3);
    assert_int_equal(t_bus.resets, 2);

    t_provider_free(p);
    t_fake_stop(&f);
    t_loop_finish(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(url__full_form__parses_every_part),
        cmocka_unit_test(url__host_only__defaults_to_port_6379_db_0_no_auth),
        cmocka_unit_test(
            url__userinfo_without_colon__is_the_password_as_in_redis_cli),
        cmocka_unit_test(url__empty_user__authenticates_the_default_user),
        cmocka_unit_test(url__last_at_sign__ends_the_userinfo),
        cmocka_unit_test(
            url__percent_escapes__are_decoded_in_user_and_password),
        cmocka_unit_test(url__bracketed_ipv6__is_stored_without_brackets),
        cmocka_unit_test(
            url__bad_forms__are_einval_and_never_quote_the_password),
        cmocka_unit_test(url__null__is_einval),
        cmocka_unit_test(glob_escape__the_five_specials__get_a_backslash),
        cmocka_unit_test(glob_escape__other_bytes__are_copied_unchanged),
        cmocka_unit_test(glob_escape__empty__writes_nothing),
        cmocka_unit_test(cursor__encode_then_decode__round_trips),
        cmocka_unit_test(cursor__longest__fits_what_the_server_reads),
        cmocka_unit_test(cursor__empty__is_the_start),
        cmocka_unit_test(cursor__foreign_text__is_ecursor),
        cmocka_unit_test(cursor__nul_byte__is_ecursor),
        cmocka_unit_test(key_hash__is_xxh3_of_the_bytes),
        cmocka_unit_test(scan_pick__batch_fits__takes_all_in_reply_order),
        cmocka_unit_test(scan_pick__too_many_and_no_cut_allowed__takes_none),
        cmocka_unit_test(
            scan_pick__too_many_with_cut_allowed__takes_the_lowest_hashes),
        cmocka_unit_test(scan_pick__cut_inside_equal_hashes__moves_before_them),
        cmocka_unit_test(
            scan_pick__equal_hashes_longer_than_a_page__are_taken_whole),
        cmocka_unit_test(
            error_code__incr_errors__map_to_not_integer_and_overflow),
        cmocka_unit_test(error_code__wrong_type_elsewhere__is_einval),
        cmocka_unit_test(error_code__out_of_memory__is_enomem),
        cmocka_unit_test(error_code__server_side_problems__are_eunavail),
        cmocka_unit_test(error_code__integer_errors_outside_incr__are_eunavail),
        cmocka_unit_test(
            conn__first_attempt_refused__waiting_call_fails_eunavail),
        cmocka_unit_test(conn__after_a_failed_attempt__calls_fail_at_once),
        cmocka_unit_test(
            conn__close_during_first_attempt__completes_the_waiting_call),
        cmocka_unit_test(conn__host_name__is_resolved_then_refused),
        cmocka_unit_test(conn__close_while_resolving__frees_everything),
        cmocka_unit_test(conn__bad_url__is_refused_without_quoting_it),
        cmocka_unit_test(backend__table__is_named_redis_and_complete),
        cmocka_unit_test(backend__bad_configuration__is_refused_by_open),
        cmocka_unit_test(
            backend__server_down__answers_eunavail_and_reports_unhealthy),
        cmocka_unit_test(
            backend__close_with_calls_waiting__completes_them_first),
        cmocka_unit_test(backend__mget_of_no_keys__answers_at_once),
        cmocka_unit_test(
            stats__connection_lost_then_back__counts_one_reconnect_each_time),
        cmocka_unit_test(
            stats__first_connect_after_refused_attempts__is_not_a_reconnect),
        cmocka_unit_test(envelope__head_then_parse__round_trips_binary_payload),
        cmocka_unit_test(envelope__empty_payload__parses_to_zero_bytes),
        cmocka_unit_test(envelope__malformed__is_refused),
        cmocka_unit_test(nuxeo__payload__splits_at_the_first_colon),
        cmocka_unit_test(nuxeo__no_colon_or_empty_node__is_refused),
        cmocka_unit_test(provider__table__is_named_redis_and_complete),
        cmocka_unit_test(provider__bad_configuration__is_refused_by_open),
        cmocka_unit_test(
            provider__server_down__publish_is_eunavail_and_unhealthy),
        cmocka_unit_test(
            provider__messages__others_delivered_own_dropped_gaps_and_reconnects_reset),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
