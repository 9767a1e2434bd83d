/*
 * test_memory.c - unit tests of the memory backend (backends/memory).
 *
 * Each test builds an instance by hand the way the core does (zeroed
 * ops->size bytes, base fields filled, then open) with a fake clock, and
 * calls the method table directly, using nothing from kvstore.c.
 * Every call checks the method contract: an error return never calls done,
 * a success calls it exactly once before returning. Covers SPEC 5 point by
 * point, keys paging across table growth and shrinking, allocation
 * failures through mem__malloc, the sweep by hand and on a real loop.
 * Keys paging is checked page by page: never more than `limit` keys, also
 * when many keys share one bucket (found by hashing candidate names with
 * XXH3-64, as the backend does), every key exactly once across resizes
 * and deletions between pages, and cursor text validated.
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
#include <xxhash.h>

#include "backends/memory/memory.h"
#include "kvstore/kvstore.h"

#define T_CLOCK_START_MS 1000000u /* the fake clock at the start of a test */
#define T_PAGES_MAX 100000        /* a scan that takes more pages is stuck */
#define T_CURSOR_TEXT_MAX 63      /* most cursor bytes the HTTP layer reads */
#define T_SCAN_BUCKETS_PER_KEY 10 /* the backend's bucket-visit bound */
#define T_SHARED_HASH_BITS 10     /* put_one_bucket: low hash bits shared */
#define T_CANDIDATES 100000       /* put_one_bucket: names tried */

/* A test case; cmocka's state is not used (setup fills the globals). */
#define TEST(name) static void name(void **state __attribute__((unused)))

/* Bytes copied out of a reply: ptr NULL = absent, else NUL-terminated. */
struct t_bytes {
    char *ptr;
    size_t len;
};

/* What one completion delivered, copied out of the reply. */
struct capture {
    int calls;
    bool found;
    struct t_bytes value;
    int64_t ttl_left_s;
    int64_t number;
    size_t nvalues;         /* mget: how many to copy (set before the call) */
    struct t_bytes *values; /* mget: one per key asked */
    size_t nkeys;
    struct t_bytes *keys; /* keys: this page */
    struct t_bytes cursor;
};

static uint64_t t_now_ms;
static kv_backend *t_b;
static struct capture t_c;
static kv_err t_err;
static const kv_store_conf t_conf = {.name = "test", .backend = "memory"};
static long t_alloc_budget = -1; /* allocations before failing; -1 = no limit */

static uint64_t t_clock(kv_backend *b)
{
    (void)b;
    return t_now_ms;
}

static void *t_malloc(size_t n)
{
    if (t_alloc_budget == 0)
        return NULL;
    if (t_alloc_budget > 0)
        t_alloc_budget--;
    return malloc(n);
}

static struct t_bytes t_copy(kv_bytes b)
{
    struct t_bytes c = {NULL, b.len};

    if (!b.ptr)
        return c;
    c.ptr = malloc(b.len + 1);
    assert_non_null(c.ptr);
    if (b.len)
        memcpy(c.ptr, b.ptr, b.len);
    c.ptr[b.len] = '\0';
    return c;
}

static struct t_bytes *t_copy_all(const kv_bytes *src, size_t n)
{
    struct t_bytes *a = calloc(n + 1, sizeof(*a));
    size_t i;

    assert_non_null(a);
    for (i = 0; i < n; i++)
        a[i] = t_copy(src[i]);
    return a;
}

static void t_free_all(struct t_bytes *a, size_t n)
{
    size_t i;

    for (i = 0; a && i < n; i++)
        free(a[i].ptr);
    free(a);
}

static void capture_reset(void)
{
    free(t_c.value.ptr);
    t_free_all(t_c.values, t_c.nvalues);
    t_free_all(t_c.keys, t_c.nkeys);
    free(t_c.cursor.ptr);
    memset(&t_c, 0, sizeof(t_c));
    memset(&t_err, 0, sizeof(t_err));
}

static void on_done(int status, const kv_reply *r, const kv_err *err, void *ud)
{
    struct capture *c = ud;

    (void)err;
    c->calls++;
    assert_int_equal(status, 0);
    assert_non_null(r);
    c->found = r->found;
    c->value = t_copy(r->value);
    c->ttl_left_s = r->ttl_left_s;
    c->number = r->number;
    if (r->op == KV_OP_MGET)
        c->values = t_copy_all(r->values, c->nvalues);
    if (r->op == KV_OP_KEYS) {
        c->nkeys = r->nkeys;
        c->keys = t_copy_all(r->keys, r->nkeys);
        c->cursor = t_copy(r->cursor);
    }
}

static kv_method method_of(kv_backend *b, kv_op op)
{
    switch (op) {
    case KV_OP_GET:
        return b->ops->get;
    case KV_OP_PUT:
        return b->ops->put;
    case KV_OP_DEL:
        return b->ops->del;
    case KV_OP_SET_TTL:
        return b->ops->set_ttl;
    case KV_OP_CAS:
        return b->ops->cas;
    case KV_OP_INCR:
        return b->ops->incr;
    case KV_OP_MGET:
        return b->ops->mget;
    case KV_OP_KEYS:
        return b->ops->keys;
    case KV_OP_CLEAR:
        return b->ops->clear;
    default:
        fail_msg("unknown op %d", op);
    }
    return NULL;
}

/*
 * Runs req on instance b, checking the method contract: an error leaves
 * done uncalled and err filled with that code, success calls it once.
 */
static int call_on(kv_backend *b, kv_req *req)
{
    size_t nvalues = t_c.nvalues;
    int rc;

    capture_reset();
    t_c.nvalues = nvalues;
    rc = method_of(b, req->op)(b, req, on_done, &t_c, &t_err);
    if (rc == 0) {
        assert_int_equal(t_c.calls, 1);
    } else {
        assert_int_equal(t_c.calls, 0);
        assert_int_equal(t_err.code, rc);
        assert_true(t_err.msg[0] != '\0');
    }
    return rc;
}

static int call(kv_req *req)
{
    return call_on(t_b, req);
}

static kv_bytes B(const char *s)
{
    return (kv_bytes){s, strlen(s)};
}

static kv_backend *mem_new(uv_loop_t *loop)
{
    kv_backend *b = calloc(1, mem_backend_ops.size);
    kv_err err = {0};

    assert_non_null(b);
    b->ops = &mem_backend_ops;
    b->loop = (struct uv_loop_s *)loop;
    b->conf = &t_conf;
    b->now_ms = t_clock;
    assert_int_equal(mem_backend_ops.open(b, &t_conf, &err), 0);
    return b;
}

static void mem_free(kv_backend *b)
{
    b->ops->close(b);
    free(b);
}

static int setup(void **state)
{
    (void)state;
    t_now_ms = T_CLOCK_START_MS;
    t_alloc_budget = -1;
    mem__malloc = t_malloc;
    t_b = mem_new(NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    t_alloc_budget = -1;
    mem_free(t_b);
    t_b = NULL;
    capture_reset();
    return 0;
}

/* ---- one-line wrappers; each asserts the call itself succeeded ---- */

static void put_on(kv_backend *b, kv_bytes k, kv_bytes v, int64_t ttl_s)
{
    kv_req req = {.op = KV_OP_PUT, .key = k, .value = v, .ttl_s = ttl_s};
    assert_int_equal(call_on(b, &req), 0);
}

static void put(const char *k, const char *v, int64_t ttl_s)
{
    put_on(t_b, B(k), B(v), ttl_s);
}

static bool get_on(kv_backend *b, const char *k)
{
    kv_req req = {.op = KV_OP_GET, .key = B(k)};
    assert_int_equal(call_on(b, &req), 0);
    if (!t_c.found)
        assert_null(t_c.value.ptr);
    return t_c.found;
}

static bool get(const char *k)
{
    return get_on(t_b, k);
}

/* Asserts k holds exactly the text v (and returns its ttl_left_s). */
static int64_t assert_value(const char *k, const char *v)
{
    assert_true(get(k));
    assert_int_equal(t_c.value.len, strlen(v));
    assert_memory_equal(t_c.value.ptr, v, strlen(v));
    return t_c.ttl_left_s;
}

static bool del(const char *k)
{
    kv_req req = {.op = KV_OP_DEL, .key = B(k)};
    assert_int_equal(call(&req), 0);
    return t_c.found;
}

static bool set_ttl(const char *k, int64_t ttl_s)
{
    kv_req req = {.op = KV_OP_SET_TTL, .key = B(k), .ttl_s = ttl_s};
    assert_int_equal(call(&req), 0);
    return t_c.found;
}

/* CAS with expected / value NULL meaning absent. */
static bool cas(const char *k, const char *expected, const char *value,
                int64_t ttl_s)
{
    kv_req req = {.op = KV_OP_CAS, .key = B(k), .ttl_s = ttl_s};
    if (expected) {
        req.has_expected = true;
        req.expected = B(expected);
    }
    if (value) {
        req.has_value = true;
        req.value = B(value);
    }
    assert_int_equal(call(&req), 0);
    return t_c.found;
}

static int incr(const char *k, int64_t delta)
{
    kv_req req = {.op = KV_OP_INCR, .key = B(k), .delta = delta};
    return call(&req);
}

static kv_backend_stats stats_of(kv_backend *b)
{
    kv_backend_stats st = {0};
    b->ops->stats(b, &st);
    assert_true(st.known);
    return st;
}

static void advance_ms(uint64_t ms)
{
    t_now_ms += ms;
}

/* ------------------------------------------------------------ get/put */

TEST(get__missing_key__is_absent)
{
    assert_false(get("nope"));
    assert_int_equal(t_c.ttl_left_s, 0);
}

TEST(put__then_get__returns_value_without_ttl)
{
    put("k", "hello", 0);
    assert_int_equal(assert_value("k", "hello"), 0);
}

TEST(put__existing_key__replaces_value)
{
    put("k", "one", 0);
    put("k", "two", 0); /* same length */
    assert_value("k", "two");
    put("k", "a much longer value", 0); /* new length */
    assert_value("k", "a much longer value");
    put("k", "", 0);
    assert_value("k", "");
    assert_int_equal(stats_of(t_b).keys, 1);
}

TEST(put__without_ttl__removes_earlier_ttl)
{
    put("k", "v", 5);
    put("k", "w", 0);
    advance_ms(3600 * 1000);
    assert_int_equal(assert_value("k", "w"), 0);
}

TEST(put__with_ttl__sets_exactly_that_ttl)
{
    put("k", "v", 100);
    advance_ms(50 * 1000);
    put("k", "v", 10); /* shorter than what was left */
    assert_int_equal(assert_value("k", "v"), 10);
    advance_ms(10 * 1000);
    assert_false(get("k"));
}

TEST(get__ttl_left__is_whole_seconds_rounded_up)
{
    put("k", "v", 10);
    assert_int_equal(assert_value("k", "v"), 10);
    advance_ms(1);
    assert_int_equal(assert_value("k", "v"), 10);
    advance_ms(998); /* 999 ms gone */
    assert_int_equal(assert_value("k", "v"), 10);
    advance_ms(1); /* exactly 9 s left */
    assert_int_equal(assert_value("k", "v"), 9);
    advance_ms(8999); /* 1 ms left */
    assert_int_equal(assert_value("k", "v"), 1);
}

TEST(get__expired_key__is_absent_at_once)
{
    put("k", "v", 2);
    advance_ms(1999);
    assert_true(get("k"));
    advance_ms(1);
    assert_false(get("k"));
    assert_false(get("k"));
}

TEST(put__binary_value_with_nul_bytes__round_trips)
{
    static const char bin[] = {'a', '\0', 'b', '\0', '\xff', '\0'};
    put_on(t_b, B("bin"), (kv_bytes){bin, sizeof bin}, 0);
    assert_true(get("bin"));
    assert_int_equal(t_c.value.len, sizeof bin);
    assert_memory_equal(t_c.value.ptr, bin, sizeof bin);
}

TEST(put__empty_value__is_present_not_absent)
{
    put("e", "", 0);
    assert_true(get("e"));
    assert_int_equal(t_c.value.len, 0);
}

/* ---------------------------------------------------------------- del */

TEST(del__live_key__reports_found_and_removes_it)
{
    put("k", "v", 0);
    assert_true(del("k"));
    assert_false(get("k"));
    assert_false(del("k"));
}

TEST(del__missing_or_expired_key__reports_not_found)
{
    assert_false(del("missing"));
    put("k", "v", 1);
    advance_ms(1000);
    assert_false(del("k"));
    assert_int_equal(stats_of(t_b).keys, 0);
}

/* ------------------------------------------------------------ set_ttl */

TEST(set_ttl__missing_or_expired_key__reports_not_found)
{
    assert_false(set_ttl("missing", 10));
    assert_false(set_ttl("missing", 0));
    put("k", "v", 1);
    advance_ms(1000);
    assert_false(set_ttl("k", 10));
    assert_false(get("k"));
}

TEST(set_ttl__zero_on_key_without_ttl__reports_found)
{
    put("k", "v", 0);
    assert_true(set_ttl("k", 0));
    assert_int_equal(assert_value("k", "v"), 0);
}

TEST(set_ttl__zero__removes_the_expiry)
{
    put("k", "v", 5);
    assert_true(set_ttl("k", 0));
    advance_ms(3600 * 1000);
    assert_int_equal(assert_value("k", "v"), 0);
}

TEST(set_ttl__positive__replaces_the_expiry)
{
    put("k", "v", 0);
    assert_true(set_ttl("k", 3));
    assert_int_equal(assert_value("k", "v"), 3);
    put("j", "v", 100);
    assert_true(set_ttl("j", 3)); /* shortened */
    advance_ms(3000);
    assert_false(get("k"));
    assert_false(get("j"));
}

/* ---------------------------------------------------------------- cas */

TEST(cas__expected_absent_to_absent_key_absent__succeeds)
{
    assert_true(cas("k", NULL, NULL, 10));
    assert_false(get("k"));
    assert_int_equal(stats_of(t_b).keys, 0);
}

TEST(cas__expected_absent_to_absent_key_present__fails)
{
    put("k", "v", 0);
    assert_false(cas("k", NULL, NULL, 10));
    assert_int_equal(assert_value("k", "v"), 0);
}

TEST(cas__expected_absent_key_absent__creates_with_ttl)
{
    assert_true(cas("k", NULL, "new", 7));
    assert_int_equal(assert_value("k", "new"), 7);
    advance_ms(7000);
    assert_false(get("k"));
}

TEST(cas__expected_absent_key_present__fails_keeping_all)
{
    put("k", "old", 50);
    assert_false(cas("k", NULL, "new", 7));
    assert_int_equal(assert_value("k", "old"), 50);
}

TEST(cas__expected_absent_key_expired__creates)
{
    put("k", "old", 1);
    advance_ms(1000);
    assert_true(cas("k", NULL, "new", 0));
    assert_int_equal(assert_value("k", "new"), 0);
}

TEST(cas__expected_equal_to_absent__deletes)
{
    put("k", "v", 30);
    assert_true(cas("k", "v", NULL, 0));
    assert_false(get("k"));
    assert_int_equal(stats_of(t_b).keys, 0);
}

TEST(cas__expected_different_to_absent__fails_keeping_key)
{
    put("k", "v", 30);
    assert_false(cas("k", "w", NULL, 0));
    assert_int_equal(assert_value("k", "v"), 30);
}

TEST(cas__expected_value_key_absent__fails)
{
    assert_false(cas("k", "v", NULL, 0));
    assert_false(cas("k", "v", "w", 0));
    assert_false(get("k"));
    put("e", "v", 1);
    advance_ms(1000);
    assert_false(cas("e", "v", "w", 0)); /* expired = absent */
    assert_false(get("e"));
}

TEST(cas__expected_equal_to_value__replaces_and_sets_ttl)
{
    put("k", "v1", 0);
    assert_true(cas("k", "v1", "v2", 20));
    assert_int_equal(assert_value("k", "v2"), 20);
    assert_true(cas("k", "v2", "a longer v3", 0)); /* ttl 0 removes it */
    advance_ms(3600 * 1000);
    assert_int_equal(assert_value("k", "a longer v3"), 0);
}

TEST(cas__expected_different_to_value__fails_keeping_all)
{
    put("k", "v1", 40);
    assert_false(cas("k", "v0", "v2", 5));
    assert_int_equal(assert_value("k", "v1"), 40);
}

TEST(cas__compares_bytes_exactly)
{
    static const char v[] = {'a', '\0', 'b'};
    static const char other[] = {'a', '\0', 'c'};
    kv_req req = {.op = KV_OP_CAS,
                  .key = B("k"),
                  .has_expected = true,
                  .has_value = true,
                  .value = B("x")};
    put_on(t_b, B("k"), (kv_bytes){v, sizeof v}, 0);
    req.expected = (kv_bytes){other, sizeof other};
    assert_int_equal(call(&req), 0);
    assert_false(t_c.found);
    req.expected = (kv_bytes){v, 1}; /* "a", a prefix */
    assert_int_equal(call(&req), 0);
    assert_false(t_c.found);
    req.expected = (kv_bytes){v, sizeof v};
    assert_int_equal(call(&req), 0);
    assert_true(t_c.found);
    assert_value("k", "x");
    assert_false(cas("k", "X", "y", 0)); /* case matters */
    put("e", "", 0);
    assert_true(cas("e", "", "z", 0)); /* empty is a value, not absent */
    assert_value("e", "z");
}

/* --------------------------------------------------------------- incr */

TEST(incr__missing_key__counts_as_zero)
{
    assert_int_equal(incr("n", 5), 0);
    assert_int_equal(t_c.number, 5);
    assert_int_equal(assert_value("n", "5"), 0);
    assert_int_equal(incr("m", -3), 0);
    assert_value("m", "-3");
}

TEST(incr__existing_value__stores_decimal_text)
{
    put("n", "456", 0);
    assert_int_equal(incr("n", 123), 0);
    assert_int_equal(t_c.number, 579);
    assert_value("n", "579");
    assert_int_equal(incr("n", -1000), 0);
    assert_value("n", "-421");
    assert_int_equal(incr("n", 421), 0);
    assert_value("n", "0");
}

TEST(incr__keeps_existing_ttl)
{
    put("n", "9", 10);
    advance_ms(4000);
    assert_int_equal(incr("n", 1), 0); /* "10": a new length */
    assert_int_equal(assert_value("n", "10"), 6);
    assert_int_equal(incr("n", 1), 0);
    assert_int_equal(assert_value("n", "11"), 6);
    advance_ms(6000);
    assert_false(get("n"));
}

TEST(incr__expired_key__starts_from_zero_without_ttl)
{
    put("n", "100", 1);
    advance_ms(1000);
    assert_int_equal(incr("n", 2), 0);
    assert_int_equal(t_c.number, 2);
    assert_int_equal(assert_value("n", "2"), 0);
}

TEST(incr__reaches_both_limits_without_overflow)
{
    put("hi", "9223372036854775806", 0);
    assert_int_equal(incr("hi", 1), 0);
    assert_true(t_c.number == INT64_MAX);
    assert_value("hi", "9223372036854775807");
    put("lo", "-9223372036854775807", 0);
    assert_int_equal(incr("lo", -1), 0);
    assert_true(t_c.number == INT64_MIN);
    assert_value("lo", "-9223372036854775808");
    assert_int_equal(incr("z", INT64_MIN), 0);
    assert_value("z", "-9223372036854775808");
}

TEST(incr__overflow_upward__fails_changing_nothing)
{
    put("n", "9223372036854775807", 30);
    assert_int_equal(incr("n", 1), KV_EOVERFLOW);
    assert_int_equal(assert_value("n", "9223372036854775807"), 30);
    put("m", "1", 0);
    assert_int_equal(incr("m", INT64_MAX), KV_EOVERFLOW);
    assert_value("m", "1");
}

TEST(incr__overflow_downward__fails_changing_nothing)
{
    put("n", "-9223372036854775808", 30);
    assert_int_equal(incr("n", -1), KV_EOVERFLOW);
    assert_int_equal(assert_value("n", "-9223372036854775808"), 30);
    put("m", "-2", 0);
    assert_int_equal(incr("m", INT64_MIN), KV_EOVERFLOW);
    assert_value("m", "-2");
}

TEST(incr__non_canonical_value__fails_with_enotint)
{
    static const char *const bad[] = {
        "01",
        "-0",
        "+1",
        " 1",
        "1 ",
        "1.0",
        "",
        "-",
        "abc",
        "1e3",
        "0x10",
        "100000000000000000000", /* 21 digits */
        "9223372036854775808",   /* INT64_MAX + 1 */
        "-9223372036854775809",  /* INT64_MIN - 1 */
        "-09",
    };
    static const char nul[] = {'1', '\0'};
    size_t i;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        put("n", bad[i], 0);
        assert_int_equal(incr("n", 1), KV_ENOTINT);
        assert_value("n", bad[i]);
    }
    put_on(t_b, B("n"), (kv_bytes){nul, sizeof nul}, 0);
    assert_int_equal(incr("n", 1), KV_ENOTINT);
    assert_true(get("n"));
    assert_int_equal(t_c.value.len, sizeof nul);
}

/* --------------------------------------------------------------- mget */

TEST(mget__answers_each_key_in_order_absent_as_null)
{
    kv_bytes keys[] = {B("a"), B("missing"), B("exp"), B("b"), B("a")};
    kv_req req = {.op = KV_OP_MGET, .keys = keys, .nkeys = 5};
    put("a", "1", 0);
    put("b", "", 0);
    put("exp", "x", 1);
    advance_ms(1000);
    t_c.nvalues = 5;
    assert_int_equal(call(&req), 0);
    assert_string_equal(t_c.values[0].ptr, "1");
    assert_null(t_c.values[1].ptr);
    assert_null(t_c.values[2].ptr);
    assert_non_null(t_c.values[3].ptr); /* empty, yet present */
    assert_int_equal(t_c.values[3].len, 0);
    assert_string_equal(t_c.values[4].ptr, "1");
}

TEST(mget__no_keys__answers_empty)
{
    kv_req req = {.op = KV_OP_MGET, .nkeys = 0};
    assert_int_equal(call(&req), 0);
}

/* --------------------------------------------------------------- keys */

static size_t t_empty_pages; /* scan_all: pages with no key, not the last */

/*
 * Scans every page for prefix from cursor start (a string, "" = from the
 * beginning), asserting each page holds at most limit keys, only keys with
 * that prefix, and a cursor the HTTP layer can carry. seen[i] counts key
 * "<tag>%05d" index i; between(page), when not NULL, runs between two
 * pages. Returns how many pages the scan took and sets t_empty_pages.
 */
static size_t scan_from(const char *start, const char *prefix, size_t limit,
                        const char *tag, unsigned *seen, size_t nseen,
                        void (*between)(size_t page))
{
    char cursor[T_CURSOR_TEXT_MAX + 1];
    size_t cursor_len = strlen(start), page, i, taglen = strlen(tag);

    assert_true(cursor_len <= T_CURSOR_TEXT_MAX);
    memcpy(cursor, start, cursor_len);

    t_empty_pages = 0;
    for (page = 0; page < T_PAGES_MAX; page++) {
        kv_req req = {.op = KV_OP_KEYS,
                      .prefix = B(prefix),
                      .cursor = {cursor, cursor_len},
                      .limit = limit};
        assert_int_equal(call(&req), 0);
        assert_true(t_c.nkeys <= limit);
        for (i = 0; i < t_c.nkeys; i++) {
            assert_memory_equal(t_c.keys[i].ptr, prefix, strlen(prefix));
            if (t_c.keys[i].len == taglen + 5 &&
                memcmp(t_c.keys[i].ptr, tag, taglen) == 0) {
                size_t idx = strtoul(t_c.keys[i].ptr + taglen, NULL, 10);
                assert_true(idx < nseen);
                seen[idx]++;
            }
        }
        if (t_c.cursor.len == 0)
            return page + 1;
        if (t_c.nkeys == 0)
            t_empty_pages++;
        assert_true(t_c.cursor.len <= T_CURSOR_TEXT_MAX);
        memcpy(cursor, t_c.cursor.ptr, t_c.cursor.len);
        cursor_len = t_c.cursor.len;
        if (between)
            between(page);
    }
    fail_msg("keys scan did not finish in %d pages", T_PAGES_MAX);
    return 0;
}

/* scan_from the beginning. */
static size_t scan_all(const char *prefix, size_t limit, const char *tag,
                       unsigned *seen, size_t nseen,
                       void (*between)(size_t page))
{
    return scan_from("", prefix, limit, tag, seen, nseen, between);
}

static void put_numbered(const char *tag, size_t from, size_t to)
{
    char k[32];
    size_t i;

    for (i = from; i < to; i++) {
        snprintf(k, sizeof k, "%s%05zu", tag, i);
        put(k, "v", 0);
    }
}

TEST(keys__prefix__is_taken_literally)
{
    static const char *const all[] = {"a*b", "a?c", "a[x]", "a%", "a_", "a\\",
                                      "a.b", "ab",  "axb",  "a",  "b*"};
    static const struct {
        const char *prefix;
        const char *only; /* the one key expected, NULL = several */
    } cases[] = {
        {"a*", "a*b"}, {"a?", "a?c"},  {"a[", "a[x]"}, {"a%", "a%"},
        {"a_", "a_"},  {"a\\", "a\\"}, {"a.", "a.b"},  {"a[x]", "a[x]"},
    };
    size_t i;
    for (i = 0; i < sizeof all / sizeof all[0]; i++)
        put(all[i], "v", 0);
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kv_req req = {
            .op = KV_OP_KEYS, .prefix = B(cases[i].prefix), .limit = 1000};
        assert_int_equal(call(&req), 0);
        assert_int_equal(t_c.cursor.len, 0);
        assert_int_equal(t_c.nkeys, 1);
        assert_string_equal(t_c.keys[0].ptr, cases[i].only);
    }
    {
        kv_req req = {.op = KV_OP_KEYS, .prefix = B("a"), .limit = 1000};
        assert_int_equal(call(&req), 0);
        assert_int_equal(t_c.nkeys, 10);
        req.prefix = B("a*bc"); /* longer than the key */
        assert_int_equal(call(&req), 0);
        assert_int_equal(t_c.nkeys, 0);
        assert_int_equal(t_c.cursor.len, 0);
    }
}

TEST(keys__empty_prefix__returns_live_keys_only)
{
    unsigned seen[50] = {0};
    size_t i;
    put_numbered("k", 0, 50);
    put("gone", "v", 1);
    advance_ms(1000);
    scan_all("", 7, "k", seen, 50, NULL);
    for (i = 0; i < 50; i++)
        assert_int_equal(seen[i], 1);
    {
        kv_req req = {.op = KV_OP_KEYS, .limit = 1000};
        assert_int_equal(call(&req), 0);
        assert_int_equal(t_c.nkeys, 50); /* one table pass: no repeats */
        for (i = 0; i < t_c.nkeys; i++)
            assert_string_not_equal(t_c.keys[i].ptr, "gone");
    }
}

static size_t t_grow_next;

static void grow_between_pages(size_t page)
{
    (void)page;
    put_numbered("n", t_grow_next, t_grow_next + 200);
    t_grow_next += 200;
}

TEST(keys__5000_keys_with_growth_between_pages__misses_none)
{
    static unsigned seen[5000];
    kv_backend_stats st;
    size_t i;
    memset(seen, 0, sizeof seen);
    put_numbered("k", 0, 5000);
    t_grow_next = 0;
    scan_all("", 100, "k", seen, 5000, grow_between_pages);
    st = stats_of(t_b);
    assert_true(st.keys > 8192); /* the table grew during the scan */
    for (i = 0; i < 5000; i++)
        assert_int_equal(seen[i], 1);
}

static size_t t_shrink_next;

static void shrink_between_pages(size_t page)
{
    char k[32];
    size_t i;

    (void)page;
    for (i = 0; i < 3000 && t_shrink_next < 30000; i++, t_shrink_next++) {
        snprintf(k, sizeof k, "x%05zu", t_shrink_next);
        assert_true(del(k));
    }
}

TEST(keys__with_shrinking_between_pages__misses_none)
{
    static unsigned seen[1000];
    size_t i;
    memset(seen, 0, sizeof seen);
    put_numbered("k", 0, 1000);
    put_numbered("x", 0, 30000);
    t_shrink_next = 0;
    scan_all("k", 50, "k", seen, 1000, shrink_between_pages);
    assert_int_equal(stats_of(t_b).keys, 1000);
    for (i = 0; i < 1000; i++)
        assert_int_equal(seen[i], 1);
}

/*
 * Puts every key "k%05zu" (i < T_CANDIDATES) whose XXH3-64 hash has its
 * low T_SHARED_HASH_BITS bits zero: they share bucket 0 of every table of
 * up to 2^T_SHARED_HASH_BITS buckets. Marks them in stored (T_CANDIDATES
 * flags) and returns how many it put.
 */
static size_t put_one_bucket(bool *stored)
{
    const uint64_t mask = ((uint64_t)1 << T_SHARED_HASH_BITS) - 1;
    char k[32];
    size_t i, n = 0;

    for (i = 0; i < T_CANDIDATES; i++) {
        snprintf(k, sizeof k, "k%05zu", i);
        if ((XXH3_64bits(k, strlen(k)) & mask) != 0)
            continue;
        put(k, "v", 0);
        stored[i] = true;
        n++;
    }
    assert_true(n >= 50); /* 100 with XXH3-64 */
    return n;
}

/* Puts n more keys "k%05zu" among those not marked in stored, marking them. */
static void put_fillers(bool *stored, size_t n)
{
    char k[32];
    size_t i;

    for (i = 0; n > 0 && i < T_CANDIDATES; i++) {
        if (stored[i])
            continue;
        snprintf(k, sizeof k, "k%05zu", i);
        put(k, "v", 0);
        stored[i] = true;
        n--;
    }
    assert_int_equal(n, 0);
}

/* Asserts that each key marked in stored was seen once, the others never. */
static void assert_seen_once(const unsigned *seen, const bool *stored)
{
    size_t i;

    for (i = 0; i < T_CANDIDATES; i++)
        if (seen[i] != (stored[i] ? 1u : 0u))
            fail_msg("key k%05zu seen %u times", i, seen[i]);
}

TEST(keys__5000_keys__every_page_holds_at_most_limit_keys)
{
    static const size_t limits[] = {1, 7, 100};
    static unsigned seen[5000];
    size_t i, j, pages;
    put_numbered("k", 0, 5000);
    for (j = 0; j < sizeof limits / sizeof limits[0]; j++) {
        memset(seen, 0, sizeof seen);
        pages = scan_all("", limits[j], "k", seen, 5000, NULL);
        assert_true(pages >= 5000 / limits[j]);
        for (i = 0; i < 5000; i++)
            assert_int_equal(seen[i], 1);
    }
}

TEST(keys__many_keys_in_one_bucket__pages_hold_at_most_limit_keys)
{
    static const size_t limits[] = {1, 7, 100};
    static bool stored[T_CANDIDATES];
    static unsigned seen[T_CANDIDATES];
    size_t j, fill, n;
    memset(stored, 0, sizeof stored);
    n = put_one_bucket(stored); /* alone: a table of 128 buckets */
    for (fill = 0; fill < 2; fill++) {
        if (fill)
            put_fillers(stored, 400); /* 512 buckets: still one bucket */
        for (j = 0; j < sizeof limits / sizeof limits[0]; j++) {
            memset(seen, 0, sizeof seen);
            scan_all("k", limits[j], "k", seen, T_CANDIDATES, NULL);
            assert_seen_once(seen, stored);
        }
    }
    assert_int_equal(stats_of(t_b).keys, n + 400);
}

TEST(keys__resuming_mid_bucket_after_its_last_key_was_deleted__misses_none)
{
    static bool stored[T_CANDIDATES];
    static unsigned seen[T_CANDIDATES];
    char cursor[T_CURSOR_TEXT_MAX + 1], first[32], last[32];
    kv_req req = {.op = KV_OP_KEYS, .prefix = B("k"), .limit = 7};
    size_t i;
    memset(stored, 0, sizeof stored);
    memset(seen, 0, sizeof seen);
    put_one_bucket(stored);
    assert_int_equal(call(&req), 0);
    assert_int_equal(t_c.nkeys, 7); /* 7 of the 100 in bucket 0 */
    assert_true(t_c.cursor.len > 0 && t_c.cursor.len < sizeof cursor);
    for (i = 0; i < t_c.nkeys; i++)
        seen[strtoul(t_c.keys[i].ptr + 1, NULL, 10)]++;
    memcpy(cursor, t_c.cursor.ptr, t_c.cursor.len + 1);
    snprintf(first, sizeof first, "%s", t_c.keys[0].ptr);
    snprintf(last, sizeof last, "%s", t_c.keys[6].ptr);
    /* The key the cursor stopped at, then one already behind it. */
    assert_true(del(last));
    assert_true(del(first));
    scan_from(cursor, "k", 7, "k", seen, T_CANDIDATES, NULL);
    assert_seen_once(seen, stored); /* the two deleted: on page 1 only */
}

static void resize_between_pages(size_t page)
{
    char k[32];
    size_t i;

    if (page % 2 == 0) {
        put_numbered("f", 0, 3000); /* grows the table to 4096 buckets */
        return;
    }
    for (i = 0; i < 3000; i++) { /* shrinks it back to 512 */
        snprintf(k, sizeof k, "f%05zu", i);
        assert_true(del(k));
    }
}

TEST(keys__one_bucket_resized_between_every_page__returns_each_key_once)
{
    static const size_t limits[] = {1, 7};
    static bool stored[T_CANDIDATES];
    static unsigned seen[T_CANDIDATES];
    size_t j, pages;
    memset(stored, 0, sizeof stored);
    put_one_bucket(stored); /* a table of 128 buckets */
    for (j = 0; j < sizeof limits / sizeof limits[0]; j++) {
        memset(seen, 0, sizeof seen);
        pages = scan_all("k", limits[j], "k", seen, T_CANDIDATES,
                         resize_between_pages);
        if (pages % 2 == 0) /* the fillers are in: take them out again */
            resize_between_pages(1);
        assert_seen_once(seen, stored);
    }
}

TEST(keys__sparse_prefix__visits_bounded_buckets_and_may_return_empty_pages)
{
    unsigned seen[1] = {0};
    size_t pages;
    put_numbered("x", 0, 5000); /* a table of 8192 buckets */
    put("k00000", "v", 0);
    pages = scan_all("k", 1, "k", seen, 1, NULL);
    assert_int_equal(seen[0], 1);
    assert_true(pages >= 8192 / T_SCAN_BUCKETS_PER_KEY);
    assert_true(t_empty_pages > 0);
}

TEST(keys__default_limit__applies_when_zero)
{
    kv_req req = {.op = KV_OP_KEYS, .limit = 0};
    put_numbered("k", 0, 1000);
    assert_int_equal(call(&req), 0);
    assert_int_equal(t_c.nkeys, KV_KEYS_LIMIT_DEFAULT);
    assert_true(t_c.cursor.len > 0);
}

TEST(keys__bad_cursor__fails_with_ecursor)
{
    static const char *const bad[] = {
        "abc",
        "-1",
        "1x",
        " 1",
        "1 ",
        "+5",
        "01",
        "00",
        "0x10",
        "1-2-ff",
        "18446744073709551616",  /* 2^64 */
        "123456789012345678901", /* 21 digits */
    };
    static const char nul[] = {'1', '\0'};
    kv_req req = {.op = KV_OP_KEYS, .limit = 10};
    size_t i;
    put("k", "v", 0);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        req.cursor = B(bad[i]);
        assert_int_equal(call(&req), KV_ECURSOR);
    }
    req.cursor = (kv_bytes){nul, sizeof nul};
    assert_int_equal(call(&req), KV_ECURSOR);
}

TEST(keys__cursor_zero_or_last_position__is_accepted)
{
    kv_req req = {.op = KV_OP_KEYS, .cursor = B("0"), .limit = 100};
    put_numbered("k", 0, 10);
    assert_int_equal(call(&req), 0); /* "0" is the start, as "" is */
    assert_int_equal(t_c.nkeys, 10);
    assert_int_equal(t_c.cursor.len, 0);
    req.cursor = B("18446744073709551615");
    assert_int_equal(call(&req), 0);
    assert_true(t_c.nkeys <= 1);
    assert_int_equal(t_c.cursor.len, 0);
}

/* ------------------------------------------------------- clear, stats */

TEST(clear__empties_this_store_only)
{
    kv_backend *other = mem_new(NULL);
    kv_req req = {.op = KV_OP_CLEAR};
    kv_backend_stats st;
    put_numbered("k", 0, 100);
    put_on(other, B("k00001"), B("kept"), 0);
    assert_int_equal(call(&req), 0);
    st = stats_of(t_b);
    assert_int_equal(st.keys, 0);
    assert_int_equal(st.bytes, 0);
    assert_false(get("k00001"));
    assert_true(get_on(other, "k00001"));
    put("after", "clear", 0); /* still usable */
    assert_value("after", "clear");
    mem_free(other);
}

TEST(stats__count_keys_and_bytes)
{
    kv_backend_stats st, st2;
    st = stats_of(t_b);
    assert_int_equal(st.keys, 0);
    assert_int_equal(st.bytes, 0);
    put("key", "value", 0);
    st = stats_of(t_b);
    assert_int_equal(st.keys, 1);
    assert_true(st.bytes > strlen("key") + strlen("value"));
    put("key", "a value ten bytes longer", 0);
    st2 = stats_of(t_b);
    assert_int_equal(st2.keys, 1);
    assert_int_equal(st2.bytes - st.bytes,
                     strlen("a value ten bytes longer") - strlen("value"));
    assert_true(del("key"));
    st = stats_of(t_b);
    assert_int_equal(st.keys, 0);
    assert_int_equal(st.bytes, 0);
}

/* -------------------------------------------------------------- sweep */

TEST(sweep__reclaims_expired_entries_and_bytes_go_down)
{
    char k[32];
    kv_backend_stats before, after;
    size_t i, freed = 0;
    for (i = 0; i < 500; i++) {
        snprintf(k, sizeof k, "t%05zu", i);
        put(k, "expiring", 1);
    }
    put_numbered("k", 0, 100);
    advance_ms(1000);
    before = stats_of(t_b);
    assert_int_equal(before.keys, 600);
    freed += mem__sweep(t_b, 64); /* a bounded step */
    assert_true(freed < 500);
    for (i = 0; i < 64 && freed < 500; i++)
        freed += mem__sweep(t_b, 64);
    assert_int_equal(freed, 500);
    after = stats_of(t_b);
    assert_int_equal(after.keys, 100);
    assert_true(after.bytes < before.bytes);
    for (i = 0; i < 100; i++) {
        snprintf(k, sizeof k, "k%05zu", i);
        assert_true(get(k));
    }
    assert_int_equal(mem__sweep(t_b, 1 << 20), 0);
}

TEST(sweep__keeps_entries_not_yet_expired)
{
    put("soon", "v", 2);
    put("never", "v", 0);
    advance_ms(1999);
    assert_int_equal(mem__sweep(t_b, 1 << 20), 0);
    assert_int_equal(stats_of(t_b).keys, 2);
    advance_ms(1);
    assert_int_equal(mem__sweep(t_b, 1 << 20), 1);
    assert_int_equal(stats_of(t_b).keys, 1);
}

static void t_stop_timer(uv_timer_t *t)
{
    uv_close((uv_handle_t *)t, NULL);
}

TEST(open_with_loop__timer_sweeps_and_close_frees_it)
{
    uv_loop_t loop;
    uv_timer_t wait;
    kv_backend *b;
    char k[32];
    size_t i;
    assert_int_equal(uv_loop_init(&loop), 0);
    b = mem_new(&loop);
    for (i = 0; i < 50; i++) {
        snprintf(k, sizeof k, "t%05zu", i);
        put_on(b, B(k), B("v"), 1);
    }
    put_on(b, B("live"), B("v"), 0);
    advance_ms(1000);
    assert_int_equal(stats_of(b).keys, 51);
    /* The sweep timer does not keep the loop alive; this one does. */
    assert_int_equal(uv_timer_init(&loop, &wait), 0);
    assert_int_equal(uv_timer_start(&wait, t_stop_timer, 250, 0), 0);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(stats_of(b).keys, 1);
    mem_free(b); /* the core frees the instance right after close */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* -------------------------------------------------- allocation failure */

TEST(put__allocation_fails__returns_enomem_keeping_old)
{
    kv_req req = {
        .op = KV_OP_PUT, .key = B("k"), .value = B("longer"), .ttl_s = 0};
    kv_backend_stats st;
    put("k", "old", 9);
    st = stats_of(t_b);
    t_alloc_budget = 0;
    assert_int_equal(call(&req), KV_ENOMEM);
    req.key = B("new");
    assert_int_equal(call(&req), KV_ENOMEM);
    t_alloc_budget = -1;
    assert_int_equal(assert_value("k", "old"), 9);
    assert_false(get("new"));
    assert_int_equal(stats_of(t_b).bytes, st.bytes);
}

TEST(put__table_growth_fails__still_stores_every_key)
{
    char k[32];
    size_t i;
    put_numbered("k", 0, 16); /* fills the initial table */
    t_alloc_budget = 1;       /* the entry, not the bigger table */
    put("k00016", "v", 0);
    t_alloc_budget = -1;
    put_numbered("k", 17, 100);
    for (i = 0; i < 100; i++) {
        snprintf(k, sizeof k, "k%05zu", i);
        assert_true(get(k));
    }
}

TEST(cas_and_incr__allocation_fails__change_nothing)
{
    kv_req req = {.op = KV_OP_CAS,
                  .key = B("c"),
                  .has_expected = true,
                  .expected = B("v"),
                  .has_value = true,
                  .value = B("longer"),
                  .ttl_s = 0};
    put("c", "v", 5);
    put("n", "9", 5);
    t_alloc_budget = 0;
    assert_int_equal(call(&req), KV_ENOMEM);
    assert_int_equal(incr("n", 1), KV_ENOMEM);
    assert_int_equal(incr("fresh", 1), KV_ENOMEM);
    t_alloc_budget = -1;
    assert_int_equal(assert_value("c", "v"), 5);
    assert_int_equal(assert_value("n", "9"), 5);
    assert_false(get("fresh"));
}

TEST(mget_and_keys__allocation_fails__return_enomem)
{
    kv_bytes keys[] = {B("a")};
    kv_req mget = {.op = KV_OP_MGET, .keys = keys, .nkeys = 1};
    kv_req scan = {.op = KV_OP_KEYS, .limit = 10};
    put("a", "1", 0);
    t_alloc_budget = 0;
    assert_int_equal(call(&mget), KV_ENOMEM);
    assert_int_equal(call(&scan), KV_ENOMEM);
    t_alloc_budget = -1;
}

/* ---------------------------------------------------------- reentrancy */

static void delete_from_callback(int status, const kv_reply *r,
                                 const kv_err *err, void *ud)
{
    kv_req req = {.op = KV_OP_DEL, .key = B("k")};
    kv_err e2 = {0};
    int *calls = ud;

    (void)err;
    assert_int_equal(status, 0);
    assert_true(r->found);
    assert_int_equal(r->value.len, 1);
    (*calls)++;
    /* The core's ETag CAS calls back into the backend like this. */
    assert_int_equal(t_b->ops->del(t_b, &req, on_done, &t_c, &e2), 0);
}

TEST(get__callback_deleting_the_key__is_safe)
{
    kv_req req = {.op = KV_OP_GET, .key = B("k")};
    kv_err err = {0};
    int calls = 0;
    put("k", "v", 0);
    capture_reset();
    assert_int_equal(
        t_b->ops->get(t_b, &req, delete_from_callback, &calls, &err), 0);
    assert_int_equal(calls, 1);
    assert_true(t_c.found); /* the nested delete found it */
    assert_false(get("k"));
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(get__missing_key__is_absent),
        T(put__then_get__returns_value_without_ttl),
        T(put__existing_key__replaces_value),
        T(put__without_ttl__removes_earlier_ttl),
        T(put__with_ttl__sets_exactly_that_ttl),
        T(get__ttl_left__is_whole_seconds_rounded_up),
        T(get__expired_key__is_absent_at_once),
        T(put__binary_value_with_nul_bytes__round_trips),
        T(put__empty_value__is_present_not_absent),
        T(get__callback_deleting_the_key__is_safe),
        T(del__live_key__reports_found_and_removes_it),
        T(del__missing_or_expired_key__reports_not_found),
        T(set_ttl__missing_or_expired_key__reports_not_found),
        T(set_ttl__zero_on_key_without_ttl__reports_found),
        T(set_ttl__zero__removes_the_expiry),
        T(set_ttl__positive__replaces_the_expiry),
        T(cas__expected_absent_to_absent_key_absent__succeeds),
        T(cas__expected_absent_to_absent_key_present__fails),
        T(cas__expected_absent_key_absent__creates_with_ttl),
        T(cas__expected_absent_key_present__fails_keeping_all),
        T(cas__expected_absent_key_expired__creates),
        T(cas__expected_equal_to_absent__deletes),
        T(cas__expected_different_to_absent__fails_keeping_key),
        T(cas__expected_value_key_absent__fails),
        T(cas__expected_equal_to_value__replaces_and_sets_ttl),
        T(cas__expected_different_to_value__fails_keeping_all),
        T(cas__compares_bytes_exactly),
        T(incr__missing_key__counts_as_zero),
        T(incr__existing_value__stores_decimal_text),
        T(incr__keeps_existing_ttl),
        T(incr__expired_key__starts_from_zero_without_ttl),
        T(incr__reaches_both_limits_without_overflow),
        T(incr__overflow_upward__fails_changing_nothing),
        T(incr__overflow_downward__fails_changing_nothing),
        T(incr__non_canonical_value__fails_with_enotint),
        T(mget__answers_each_key_in_order_absent_as_null),
        T(mget__no_keys__answers_empty),
        T(keys__prefix__is_taken_literally),
        T(keys__empty_prefix__returns_live_keys_only),
        T(keys__5000_keys_with_growth_between_pages__misses_none),
        T(keys__with_shrinking_between_pages__misses_none),
        T(keys__5000_keys__every_page_holds_at_most_limit_keys),
        T(keys__many_keys_in_one_bucket__pages_hold_at_most_limit_keys),
        T(keys__resuming_mid_bucket_after_its_last_key_was_deleted__misses_none),
        T(keys__one_bucket_resized_between_every_page__returns_each_key_once),
        T(keys__sparse_prefix__visits_bounded_buckets_and_may_return_empty_pages),
        T(keys__default_limit__applies_when_zero),
        T(keys__bad_cursor__fails_with_ecursor),
        T(keys__cursor_zero_or_last_position__is_accepted),
        T(clear__empties_this_store_only),
        T(stats__count_keys_and_bytes),
        T(sweep__reclaims_expired_entries_and_bytes_go_down),
        T(sweep__keeps_entries_not_yet_expired),
        T(open_with_loop__timer_sweeps_and_close_frees_it),
        T(put__allocation_fails__returns_enomem_keeping_old),
        T(put__table_growth_fails__still_stores_every_key),
        T(cas_and_incr__allocation_fails__change_nothing),
        T(mget_and_keys__allocation_fails__return_enomem),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
