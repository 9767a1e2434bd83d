/*
 * test_kvstore.c - unit tests of the kvstore module (kvstore/kvstore.c,
 * kvstore/kv_value.c and kvstore/kv_cursor.c).
 *
 * The value rules (keys, store names, integers, ETags, the error table) and
 * the keys cursor of the postgres and mongodb backends (round trips, the
 * fixed wire format, every kind of bad cursor) are tested as pure functions.
 * The registry and kv_store_call() are tested over the memory backend, the one
 * linked in, with no loop (the memory backend then runs no sweep timer) and a
 * fake clock, plus a tiny "fake" backend defined here that only opens, so that
 * the backend a store is created with can be told apart from the "memory"
 * fallback. Every call checks the kv_store_call contract: an error return never
 * calls done, a success calls it exactly once (the memory backend answers at
 * once). Left out: backend semantics in depth (test_memory.c covers them).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backends/memory/memory.h"
#include "kvstore/kvstore.h"

#define T_CLOCK_START_MS 1000000u /* the fake clock at the start of a test */
#define T_MAX_KEY_BYTES 32        /* registry limits used by the tests */
#define T_MAX_VALUE_BYTES 64
#define T_MAX_STORES 8
#define T_VALUE_CAP 256 /* bytes a capture keeps of one value */
#define T_MGET_CAP 8    /* values a capture keeps of one mget */
#define T_EVENTS_CAP 16 /* change events a test may record */

/* A test case; cmocka's state is not used (setup fills the globals). */
#define TEST(name) static void name(void **state __attribute__((unused)))

/* A NUL-terminated C string as kv_bytes (no NUL included). */
#define B(s) ((kv_bytes){(s), sizeof(s) - 1})

/* What one completion delivered, copied out of the reply. */
struct capture {
    int calls;
    int status;
    kv_op op;
    bool found;
    char value[T_VALUE_CAP];
    size_t value_len;
    int64_t ttl_left_s;
    int64_t number;
    size_t nvalues; /* mget: how many values[] answer (set before the call) */
    bool present[T_MGET_CAP];
    char values[T_MGET_CAP][T_VALUE_CAP];
    size_t nkeys; /* keys: entries in this page */
    size_t cursor_len;
};

/* One report of the change hook. */
struct change_event {
    const kv_store *store;
    kv_op op;
    char key[T_VALUE_CAP];
    size_t key_len;
    int calls_before; /* t_c.calls when the hook ran */
};

static uint64_t t_now_ms;
static kv_registry *t_reg;
static struct capture t_c;
static kv_err t_err;
static struct change_event t_events[T_EVENTS_CAP];
static size_t t_nevents;

static uint64_t t_clock(kv_backend *b)
{
    (void)b;
    return t_now_ms;
}

/* ------------------------------------------------------------------ */
/* A backend that only opens: tells "default's backend" from "memory".  */

static int fake_open(kv_backend *b, const kv_store_conf *conf, kv_err *err)
{
    (void)b;
    if (conf->url && strcmp(conf->url, "fail") == 0)
        return kv_err_set(err, KV_EUNAVAIL, "fake backend: refused");
    return 0;
}

static const struct kv_backend_ops fake_backend_ops = {
    .version = KV_BACKEND_OPS_VERSION,
    .name = "fake",
    .size = sizeof(struct kv_backend),
    .open = fake_open,
};

static const struct kv_backend_ops *const t_backends[] = {
    &mem_backend_ops, &fake_backend_ops, NULL};

/* ------------------------------------------------------------------ */
/* Helpers                                                              */

static void t_copy(char *dst, size_t *dst_len, kv_bytes b)
{
    assert_true(b.len <= T_VALUE_CAP);
    if (b.len)
        memcpy(dst, b.ptr, b.len);
    if (dst_len)
        *dst_len = b.len;
}

static void t_done(int status, const kv_reply *reply, const kv_err *err,
                   void *ud)
{
    struct capture *c = ud;
    size_t i;

    c->calls++;
    c->status = status;
    if (status != 0) {
        assert_null(reply);
        assert_non_null(err);
        return;
    }
    assert_non_null(reply);
    c->op = reply->op;
    c->found = reply->found;
    t_copy(c->value, &c->value_len, reply->value);
    c->ttl_left_s = reply->ttl_left_s;
    c->number = reply->number;
    for (i = 0; i < c->nvalues; i++) {
        c->present[i] = reply->values[i].ptr != NULL;
        if (c->present[i])
            t_copy(c->values[i], NULL, reply->values[i]);
    }
    c->nkeys = reply->nkeys;
    c->cursor_len = reply->cursor.len;
}

static void t_on_change(const kv_store *s, kv_op op, kv_bytes key, void *ud)
{
    struct change_event *ev;

    (void)ud;
    assert_true(t_nevents < T_EVENTS_CAP);
    ev = &t_events[t_nevents++];
    ev->store = s;
    ev->op = op;
    t_copy(ev->key, &ev->key_len, key);
    ev->calls_before = t_c.calls;
}

/*
 * Calls kv_store_call with a fresh capture and checks the callback
 * contract: exactly once on success, never on an error return.
 */
static int t_call(kv_store *s, const kv_req *req)
{
    size_t nvalues = t_c.nvalues;
    int rc;

    memset(&t_c, 0, sizeof t_c);
    t_c.nvalues = nvalues;
    memset(&t_err, 0, sizeof t_err);
    rc = kv_store_call(s, req, t_done, &t_c, &t_err);
    if (rc == 0) {
        assert_int_equal(t_c.calls, 1);
        assert_int_equal(t_c.status, 0);
    } else {
        assert_int_equal(t_c.calls, 0);
        assert_int_equal(t_err.code, rc);
    }
    t_c.nvalues = 0;
    return rc;
}

static void t_put(kv_store *s, kv_bytes key, kv_bytes value, int64_t ttl_s)
{
    kv_req req = {.op = KV_OP_PUT, .key = key, .value = value, .ttl_s = ttl_s};
    assert_int_equal(t_call(s, &req), 0);
}

/* Gets key into t_c; returns whether it was found. */
static bool t_get(kv_store *s, kv_bytes key)
{
    kv_req req = {.op = KV_OP_GET, .key = key};
    assert_int_equal(t_call(s, &req), 0);
    return t_c.found;
}

/* Asserts that key holds exactly value. */
static void t_assert_value(kv_store *s, kv_bytes key, kv_bytes value)
{
    assert_true(t_get(s, key));
    assert_int_equal(t_c.value_len, value.len);
    assert_memory_equal(t_c.value, value.ptr, value.len);
}

static kv_store *t_add(const char *name, const char *backend, bool notify)
{
    kv_store_conf conf = {.notify = notify};
    kv_store *s = NULL;

    snprintf(conf.name, sizeof conf.name, "%s", name);
    snprintf(conf.backend, sizeof conf.backend, "%s", backend);
    assert_int_equal(kv_registry_add(t_reg, &conf, &t_err), 0);
    assert_int_equal(kv_registry_find(t_reg, name, strlen(name), &s, &t_err),
                     0);
    return s;
}

static kv_store *t_find(const char *name)
{
    kv_store *s = NULL;

    assert_int_equal(kv_registry_find(t_reg, name, strlen(name), &s, &t_err),
                     0);
    assert_non_null(s);
    return s;
}

static int t_setup(void **state)
{
    kv_limits lim = {.max_key_bytes = T_MAX_KEY_BYTES,
                     .max_value_bytes = T_MAX_VALUE_BYTES,
                     .max_stores = T_MAX_STORES};

    (void)state;
    t_now_ms = T_CLOCK_START_MS;
    memset(&t_c, 0, sizeof t_c);
    memset(&t_err, 0, sizeof t_err);
    memset(t_events, 0, sizeof t_events);
    t_nevents = 0;
    t_reg = kv_registry_new(NULL, t_backends, &lim);
    if (!t_reg)
        return -1;
    kv_registry_set_clock(t_reg, t_clock);
    return 0;
}

static int t_teardown(void **state)
{
    (void)state;
    kv_registry_free(t_reg);
    t_reg = NULL;
    return 0;
}

/* ------------------------------------------------------------------ */
/* kv_check_key                                                         */

static int t_key_rc(kv_bytes key, size_t max)
{
    kv_err err = {0};
    int rc = kv_check_key(key, max, &err);

    if (rc != 0) {
        assert_int_equal(rc, KV_EKEY);
        assert_int_equal(err.code, KV_EKEY);
        assert_true(strlen(err.msg) > 0);
    }
    return rc;
}

TEST(check_key__empty__is_bad_key)
{
    assert_int_equal(t_key_rc((kv_bytes){"", 0}, 16), KV_EKEY);
    assert_int_equal(t_key_rc((kv_bytes){NULL, 0}, 16), KV_EKEY);
}

TEST(check_key__exactly_max_bytes__is_accepted)
{
    assert_int_equal(t_key_rc(B("abcd"), 4), 0);
    assert_int_equal(t_key_rc(B("\xc3\xa9\xc3\xa9"), 4), 0); /* "éé" */
}

TEST(check_key__one_byte_over_max__is_bad_key)
{
    assert_int_equal(t_key_rc(B("abcde"), 4), KV_EKEY);
    /* The limit counts bytes, not characters. */
    assert_int_equal(t_key_rc(B("\xc3\xa9\xc3\xa9"), 3), KV_EKEY);
}

TEST(check_key__overlong_encodings__are_bad_keys)
{
    assert_int_equal(t_key_rc(B("\xc0\xaf"), 16), KV_EKEY); /* '/' */
    assert_int_equal(t_key_rc(B("\xc1\xbf"), 16), KV_EKEY);
    assert_int_equal(t_key_rc(B("\xe0\x80\xaf"), 16), KV_EKEY);     /* '/' */
    assert_int_equal(t_key_rc(B("\xe0\x9f\xbf"), 16), KV_EKEY);     /* U+07FF */
    assert_int_equal(t_key_rc(B("\xf0\x80\x80\xaf"), 16), KV_EKEY); /* '/' */
    assert_int_equal(t_key_rc(B("\xf0\x8f\xbf\xbf"), 16), KV_EKEY); /* FFFF */
}

TEST(check_key__surrogates__are_bad_keys)
{
    assert_int_equal(t_key_rc(B("\xed\xa0\x80"), 16), KV_EKEY); /* D800 */
    assert_int_equal(t_key_rc(B("\xed\xbf\xbf"), 16), KV_EKEY); /* DFFF */
    assert_int_equal(t_key_rc(B("\xed\xa0\xbd\xed\xb8\x80"), 16), KV_EKEY);
    /* The code points either side of the surrogate range are fine. */
    assert_int_equal(t_key_rc(B("\xed\x9f\xbf"), 16), 0); /* D7FF */
    assert_int_equal(t_key_rc(B("\xee\x80\x80"), 16), 0); /* E000 */
}

TEST(check_key__truncated_or_stray_bytes__are_bad_keys)
{
    assert_int_equal(t_key_rc(B("a\xc3"), 16), KV_EKEY);
    assert_int_equal(t_key_rc(B("a\xe2\x82"), 16), KV_EKEY);
    assert_int_equal(t_key_rc(B("\xf0\x9f\x98"), 16), KV_EKEY);
    assert_int_equal(t_key_rc(B("\xe2\x82x"), 16), KV_EKEY);
    assert_int_equal(t_key_rc(B("\x80"), 16), KV_EKEY); /* continuation */
    assert_int_equal(t_key_rc(B("\xff"), 16), KV_EKEY);
    assert_int_equal(t_key_rc(B("\xf4\x90\x80\x80"), 16), KV_EKEY); /* 110000 */
    assert_int_equal(t_key_rc(B("\xf5\x80\x80\x80"), 16), KV_EKEY);
}

TEST(check_key__control_characters__are_bad_keys)
{
    assert_int_equal(t_key_rc(B("a\0b"), 16), KV_EKEY); /* U+0000 */
    assert_int_equal(t_key_rc(B("\0"), 16), KV_EKEY);
    assert_int_equal(t_key_rc(B("a\x1f"), 16), KV_EKEY); /* U+001F */
    assert_int_equal(t_key_rc(B("a\tb"), 16), KV_EKEY);
    assert_int_equal(t_key_rc(B("a\nb"), 16), KV_EKEY);
    assert_int_equal(t_key_rc(B("\x7f"), 16), KV_EKEY);      /* U+007F */
    assert_int_equal(t_key_rc(B("a\xc2\x85"), 16), KV_EKEY); /* U+0085 */
    assert_int_equal(t_key_rc(B("\xc2\x80"), 16), KV_EKEY);  /* U+0080 */
    assert_int_equal(t_key_rc(B("\xc2\x9f"), 16), KV_EKEY);  /* U+009F */
    /* Their neighbours are ordinary characters. */
    assert_int_equal(t_key_rc(B(" "), 16), 0);        /* U+0020 */
    assert_int_equal(t_key_rc(B("~"), 16), 0);        /* U+007E */
    assert_int_equal(t_key_rc(B("\xc2\xa0"), 16), 0); /* U+00A0 */
}

TEST(check_key__multibyte_and_emoji__are_accepted)
{
    assert_int_equal(t_key_rc(B("caf\xc3\xa9"), 16), 0);  /* é */
    assert_int_equal(t_key_rc(B("\xe2\x82\xac"), 16), 0); /* € */
    assert_int_equal(t_key_rc(B("\xe6\x97\xa5\xe6\x9c\xac"), 16), 0);
    assert_int_equal(t_key_rc(B("\xf0\x9f\x98\x80"), 16), 0); /* 😀 */
    assert_int_equal(t_key_rc(B("\xf4\x8f\xbf\xbf"), 16), 0); /* 10FFFF */
    assert_int_equal(t_key_rc(B("a/b:c"), 16), 0);
}

TEST(check_key__glob_and_like_characters__are_ordinary)
{
    assert_int_equal(t_key_rc(B("*?[%_\\."), 16), 0);
    assert_int_equal(t_key_rc(B("*"), 16), 0);
    assert_int_equal(t_key_rc(B("\\"), 16), 0);
}

TEST(check_key__null_err__still_returns_the_code)
{
    assert_int_equal(kv_check_key(B("\x7f"), 16, NULL), KV_EKEY);
    assert_int_equal(kv_check_key(B("ok"), 16, NULL), 0);
}

/* ------------------------------------------------------------------ */
/* kv_check_store_name                                                  */

static int t_name_rc(const char *name)
{
    kv_err err = {0};
    int rc = kv_check_store_name(name, strlen(name), &err);

    if (rc != 0) {
        assert_int_equal(rc, KV_ESTORE);
        assert_int_equal(err.code, KV_ESTORE);
    }
    return rc;
}

TEST(check_store_name__letters_digits_underscore_dot_dash__are_accepted)
{
    assert_int_equal(t_name_rc("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), 0);
    assert_int_equal(t_name_rc("abcdefghijklmnopqrstuvwxyz"), 0);
    assert_int_equal(t_name_rc("0123456789"), 0);
    assert_int_equal(t_name_rc("_.-"), 0);
    assert_int_equal(t_name_rc("my-store_1.v2"), 0);
    assert_int_equal(t_name_rc("x"), 0);
}

TEST(check_store_name__64_characters__are_accepted)
{
    char name[KV_STORE_NAME_MAX + 1];

    memset(name, 'n', KV_STORE_NAME_MAX);
    name[KV_STORE_NAME_MAX] = '\0';
    assert_int_equal(t_name_rc(name), 0);
}

TEST(check_store_name__65_characters__are_bad_store)
{
    char name[KV_STORE_NAME_MAX + 2];

    memset(name, 'n', KV_STORE_NAME_MAX + 1);
    name[KV_STORE_NAME_MAX + 1] = '\0';
    assert_int_equal(t_name_rc(name), KV_ESTORE);
}

TEST(check_store_name__space_slash_star_or_empty__are_bad_store)
{
    assert_int_equal(t_name_rc(""), KV_ESTORE);
    assert_int_equal(t_name_rc("a b"), KV_ESTORE);
    assert_int_equal(t_name_rc("a/b"), KV_ESTORE);
    assert_int_equal(t_name_rc("*"), KV_ESTORE);
    assert_int_equal(t_name_rc("a*"), KV_ESTORE);
    assert_int_equal(t_name_rc("caf\xc3\xa9"), KV_ESTORE);
    assert_int_equal(t_name_rc("a%2Fb"), KV_ESTORE);
    assert_int_equal(kv_check_store_name("a\0b", 3, NULL), KV_ESTORE);
}

/* ------------------------------------------------------------------ */
/* kv_parse_int64 / kv_format_int64                                     */

static int t_parse(const char *text, int64_t *out)
{
    return kv_parse_int64((kv_bytes){text, strlen(text)}, out);
}

TEST(parse_int64__canonical_text__parses)
{
    int64_t v = 42;

    assert_int_equal(t_parse("0", &v), 0);
    assert_true(v == 0);
    assert_int_equal(t_parse("-1", &v), 0);
    assert_true(v == -1);
    assert_int_equal(t_parse("579", &v), 0);
    assert_true(v == 579);
    assert_int_equal(t_parse("9223372036854775807", &v), 0);
    assert_true(v == INT64_MAX);
    assert_int_equal(t_parse("-9223372036854775808", &v), 0);
    assert_true(v == INT64_MIN);
}

TEST(parse_int64__one_past_either_bound__is_not_an_integer)
{
    int64_t v = 42;

    assert_int_equal(t_parse("9223372036854775808", &v), KV_ENOTINT);
    assert_int_equal(t_parse("-9223372036854775809", &v), KV_ENOTINT);
    assert_int_equal(t_parse("9999999999999999999", &v), KV_ENOTINT);
    assert_int_equal(t_parse("-9999999999999999999", &v), KV_ENOTINT);
    assert_int_equal(t_parse("18446744073709551616", &v), KV_ENOTINT);
    assert_true(v == 42);
}

TEST(parse_int64__non_canonical_text__is_not_an_integer)
{
    static const char *const bad[] = {
        "01",
        "-0",
        "+1",
        " 1",
        "1 ",
        "",
        "-",
        "00",
        "-01",
        "1a",
        "a",
        "0x10",
        "1e3",
        "1.0",
        "--1",
        "- 1",
        "000000000000000000001", /* 21 characters */
        "-00000000000000000001", /* 21 characters */
    };
    int64_t v = 42;
    size_t i;

    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (t_parse(bad[i], &v) != KV_ENOTINT)
            fail_msg("\"%s\" parsed as an integer", bad[i]);
    }
    assert_int_equal(kv_parse_int64(B("1\0"), &v), KV_ENOTINT);
    assert_true(v == 42);
}

TEST(format_int64__values__round_trip_through_parse)
{
    static const int64_t values[] = {
        0,
        1,
        -1,
        9,
        10,
        -10,
        579,
        1234567890123LL,
        INT64_MAX,
        INT64_MIN,
        INT64_MAX - 1,
        INT64_MIN + 1,
    };
    char buf[KV_INT_TEXT_MAX + 1];
    size_t i, n;
    int64_t back;

    for (i = 0; i < sizeof values / sizeof values[0]; i++) {
        memset(buf, 'x', sizeof buf);
        n = kv_format_int64(values[i], buf);
        assert_int_equal(n, strlen(buf));
        assert_int_equal(kv_parse_int64((kv_bytes){buf, n}, &back), 0);
        assert_true(back == values[i]);
    }
    n = kv_format_int64(INT64_MIN, buf);
    assert_int_equal(n, KV_INT_TEXT_MAX);
    assert_string_equal(buf, "-9223372036854775808");
    n = kv_format_int64(0, buf);
    assert_string_equal(buf, "0");
}

/* ------------------------------------------------------------------ */
/* kv_etag                                                              */

static void t_assert_lower_hex(const char *tag)
{
    size_t i;

    assert_int_equal(strlen(tag), KV_ETAG_HEX);
    for (i = 0; i < KV_ETAG_HEX; i++)
        assert_true((tag[i] >= '0' && tag[i] <= '9') ||
                    (tag[i] >= 'a' && tag[i] <= 'f'));
}

TEST(etag__empty_value__is_xxh3_64_of_empty_input)
{
    char tag[KV_ETAG_HEX + 1];

    kv_etag((kv_bytes){"", 0}, tag);
    assert_string_equal(tag, "2d06800538d394c2");
    kv_etag((kv_bytes){NULL, 0}, tag);
    assert_string_equal(tag, "2d06800538d394c2");
}

TEST(etag__same_bytes__give_the_same_tag)
{
    char a[KV_ETAG_HEX + 1], b[KV_ETAG_HEX + 1], c[KV_ETAG_HEX + 1];
    char copy[] = "hello\0world";

    kv_etag(B("hello\0world"), a);
    kv_etag((kv_bytes){copy, sizeof copy - 1}, b);
    assert_string_equal(a, b);
    kv_etag(B("hello\0worle"), c);
    assert_string_not_equal(a, c);
    kv_etag(B("hello"), c); /* a prefix of the bytes is other bytes */
    assert_string_not_equal(a, c);
}

TEST(etag__any_value__is_16_lowercase_hex_digits)
{
    char tag[KV_ETAG_HEX + 1];
    char big[1000];
    int i;

    memset(big, 0xAB, sizeof big);
    kv_etag((kv_bytes){big, sizeof big}, tag);
    t_assert_lower_hex(tag);
    for (i = 0; i < 64; i++) {
        char v[4];
        int n = snprintf(v, sizeof v, "%d", i);
        kv_etag((kv_bytes){v, (size_t)n}, tag);
        t_assert_lower_hex(tag);
    }
}

/* ------------------------------------------------------------------ */
/* Keys cursors (kv_cursor.c)                                           */

/* Bytes of a cursor for any key up to one byte past KV_CURSOR_KEY_MAX. */
#define T_CURSOR_TEXT_MAX                                                      \
    (KV_CURSOR_TAG_LEN + (KV_CURSOR_KEY_MAX + 3) / 3 * 4 + 1)

/* Large enough for the longest keys and cursors the tests make. */
static char t_cursor_key[KV_CURSOR_KEY_MAX + 1];
static char t_cursor_text[T_CURSOR_TEXT_MAX];
static char t_cursor_back[T_CURSOR_TEXT_MAX];

/* Encodes key, checks the text, decodes it and checks the key came back. */
static void t_cursor_round_trip(kv_bytes key)
{
    size_t n, len = 0;
    kv_err err = {0};

    assert_true(kv_cursor_len(key.len) < sizeof t_cursor_text);
    n = kv_cursor_encode(key, t_cursor_text);
    assert_int_equal(n, kv_cursor_len(key.len));
    assert_int_equal(strlen(t_cursor_text), n);
    assert_memory_equal(t_cursor_text, KV_CURSOR_TAG, KV_CURSOR_TAG_LEN);
    assert_int_equal(kv_cursor_decode((kv_bytes){t_cursor_text, n},
                                      t_cursor_back, &len, &err),
                     0);
    assert_int_equal(len, key.len);
    assert_memory_equal(t_cursor_back, key.ptr, key.len);
}

TEST(cursor__round_trips_keys_of_every_length_mod_3)
{
    t_cursor_round_trip(B("a"));
    t_cursor_round_trip(B("ab"));
    t_cursor_round_trip(B("abc"));
    t_cursor_round_trip(B("p/007"));
    t_cursor_round_trip(B("user/42?x=[1]"));
    t_cursor_round_trip(B("\xc3\xa9\xe2\x98\x83~"));
    t_cursor_round_trip(B("é€😀 a+b/c?d"));
    memset(t_cursor_key, 'k', sizeof t_cursor_key);
    t_cursor_round_trip((kv_bytes){t_cursor_key, KV_MAX_KEY_BYTES_DEFAULT});
    t_cursor_round_trip((kv_bytes){t_cursor_key, KV_CURSOR_KEY_MAX});
}

/* The wire format: these cursors were given to clients by earlier
 * versions (postgres and mongodb alike) and must keep meaning their key. */
TEST(cursor__fixed_keys__give_the_cursors_already_handed_out)
{
    static const struct {
        const char *key;
        const char *cursor;
    } known[] = {
        {"a", "k.YQ"},
        {"ab", "k.YWI"},
        {"user:42", "k.dXNlcjo0Mg"},
        {"u>~", "k.dT5-"},       /* 62 is '-', not '+' */
        {"\xc3\xb8?", "k.w7g_"}, /* 63 is '_', not '/' */
        {"é€😀 a+b/c?d", "k.w6nigqzwn5iAIGErYi9jP2Q"},
    };
    char out[64];
    size_t i, len;
    kv_err err = {0};

    for (i = 0; i < sizeof known / sizeof *known; i++) {
        kv_bytes key = {known[i].key, strlen(known[i].key)};
        kv_bytes cursor = {known[i].cursor, strlen(known[i].cursor)};

        assert_int_equal(kv_cursor_encode(key, out), cursor.len);
        assert_string_equal(out, known[i].cursor);
        len = 0;
        assert_int_equal(kv_cursor_decode(cursor, out, &len, &err), 0);
        assert_int_equal(len, key.len);
        assert_memory_equal(out, key.ptr, key.len);
    }
}

TEST(cursor__is_url_safe_and_short_enough_for_a_default_key)
{
    size_t i, n;

    /* Not a key, but the bytes with every bit set. */
    memset(t_cursor_key, 0xff, KV_MAX_KEY_BYTES_DEFAULT);
    n = kv_cursor_encode((kv_bytes){t_cursor_key, KV_MAX_KEY_BYTES_DEFAULT},
                         t_cursor_text);
    assert_int_equal(n, 1368);
    assert_int_equal(kv_cursor_len(KV_MAX_KEY_BYTES_DEFAULT), 1368);
    for (i = 0; i < n; i++)
        assert_non_null(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstu"
                               "vwxyz0123456789-_.",
                               t_cursor_text[i]));
}

TEST(cursor__anything_not_encoded_by_us__is_bad_cursor)
{
    const char *bad[] = {
        "",         "k.",      "not-a-cursor", "-1",
        "\xff\xfe", "abc",                               /* no tag */
        "x.YQ",     "K.YQ",                              /* another tag */
        "k.Y",      "k.YWJjZ",                           /* length */
        "k.YQ=",    "k.Y!Q",   "k.Y+Q",        "k.!!!!", /* character */
        "k.YR", /* non-zero padding bits */
        "k.AA", /* decodes to a NUL byte: not a key */
        "k._w", /* 0xff: not UTF-8 */
        "k.fw", /* 0x7f: a control character */
        "k.w4", /* 0xc3 alone: truncated UTF-8 */
    };
    char out[64];
    size_t i, len;
    kv_err err = {0};

    for (i = 0; i < sizeof bad / sizeof *bad; i++) {
        err.code = 0;
        assert_int_equal(kv_cursor_decode((kv_bytes){bad[i], strlen(bad[i])},
                                          out, &len, &err),
                         KV_ECURSOR);
        assert_int_equal(err.code, KV_ECURSOR);
    }
    assert_int_equal(kv_cursor_decode((kv_bytes){NULL, 0}, out, &len, NULL),
                     KV_ECURSOR);
}

TEST(cursor__key_longer_than_the_cursor_limit__is_bad_cursor)
{
    size_t n, len = 0;
    kv_err err = {0};

    memset(t_cursor_key, 'k', KV_CURSOR_KEY_MAX + 1);
    n = kv_cursor_encode((kv_bytes){t_cursor_key, KV_CURSOR_KEY_MAX + 1},
                         t_cursor_text);
    assert_int_equal(kv_cursor_decode((kv_bytes){t_cursor_text, n},
                                      t_cursor_back, &len, &err),
                     KV_ECURSOR);
    assert_int_equal(len, 0);
}

TEST(cursor__bad_cursor__says_what_is_wrong)
{
    char out[64];
    size_t len;
    kv_err err = {0};

    kv_cursor_decode(B("x.YQ"), out, &len, &err);
    assert_string_equal(err.msg, "invalid cursor");
    kv_cursor_decode(B("k.YWJjZ"), out, &len, &err);
    assert_string_equal(err.msg, "invalid cursor (length)");
    kv_cursor_decode(B("k.Y!Q"), out, &len, &err);
    assert_string_equal(err.msg, "invalid cursor (character)");
    kv_cursor_decode(B("k.YR"), out, &len, &err);
    assert_string_equal(err.msg, "invalid cursor (padding)");
    kv_cursor_decode(B("k._w"), out, &len, &err);
    assert_string_equal(err.msg,
                        "invalid cursor (key is not valid UTF-8 (byte 0))");
}

/* ------------------------------------------------------------------ */
/* The error table                                                      */

TEST(errors__known_codes__map_to_message_code_and_status)
{
    assert_int_equal(kv_errstatus(KV_ENOTINT), 409);
    assert_string_equal(kv_errcode(KV_ENOTINT), "not_integer");
    assert_string_equal(kv_strerror(KV_ENOTINT),
                        "value is not a 64-bit integer");
    assert_int_equal(kv_errstatus(KV_ETOOBIG), 413);
    assert_string_equal(kv_errcode(KV_ETOOBIG), "too_large");
    assert_int_equal(kv_errstatus(KV_EUNAVAIL), 503);
    assert_string_equal(kv_errcode(KV_EUNAVAIL), "unavailable");
    assert_int_equal(kv_errstatus(KV_EKEY), 400);
    assert_string_equal(kv_errcode(KV_EKEY), "bad_key");
    assert_string_equal(kv_strerror(KV_EKEY), "invalid key");
    assert_int_equal(kv_errstatus(KV_ENOTSUP), 405);
}

TEST(errors__unknown_code__is_internal_500)
{
    assert_int_equal(kv_errstatus(-999), 500);
    assert_string_equal(kv_errcode(-999), "internal");
    assert_string_equal(kv_strerror(-999), "unknown error");
    assert_int_equal(kv_errstatus(1), 500);
}

TEST(errors__err_set__records_code_and_message_and_returns_code)
{
    kv_err err = {0};

    assert_int_equal(kv_err_set(&err, KV_ELIMIT, "at most %d", 3), KV_ELIMIT);
    assert_int_equal(err.code, KV_ELIMIT);
    assert_string_equal(err.msg, "at most 3");
    assert_int_equal(kv_err_set(NULL, KV_EINVAL, "ignored"), KV_EINVAL);
}

TEST(op_name__each_op__has_its_metric_name)
{
    assert_string_equal(kv_op_name(KV_OP_GET), "get");
    assert_string_equal(kv_op_name(KV_OP_DEL), "delete");
    assert_string_equal(kv_op_name(KV_OP_SET_TTL), "ttl");
    assert_string_equal(kv_op_name(KV_OP_CLEAR), "clear");
    assert_string_equal(kv_op_name(KV_OP__COUNT), "unknown");
}

/* ------------------------------------------------------------------ */
/* The registry                                                         */

TEST(registry__configured_store__is_found_by_name)
{
    kv_store_conf conf = {.name = "alpha",
                          .backend = "memory",
                          .notify = true,
                          .op_timeout_ms = 500};
    kv_store *s = NULL, *again = NULL;

    assert_int_equal(kv_registry_add(t_reg, &conf, &t_err), 0);
    assert_int_equal(kv_registry_find(t_reg, "alpha", 5, &s, &t_err), 0);
    assert_non_null(s);
    assert_string_equal(kv_store_name(s), "alpha");
    assert_string_equal(kv_store_backend_name(s), "memory");
    assert_true(kv_store_conf_of(s)->notify);
    assert_int_equal(kv_store_conf_of(s)->op_timeout_ms, 500);
    assert_true(kv_store_healthy(s));
    /* The name is (pointer, length): a longer buffer is fine. */
    assert_int_equal(kv_registry_find(t_reg, "alphabet", 5, &again, &t_err), 0);
    assert_ptr_equal(again, s);
    assert_non_null(kv_registry_at(t_reg, 0));
    assert_null(kv_registry_at(t_reg, 1));
}

TEST(registry__unconfigured_name__is_created_with_the_default_backend)
{
    kv_store *s;

    t_add("default", "fake", false);
    s = t_find("fresh");
    assert_string_equal(kv_store_name(s), "fresh");
    assert_string_equal(kv_store_backend_name(s), "fake");
    assert_ptr_equal(kv_registry_at(t_reg, 1), s);
    /* Found, not created again, the second time. */
    assert_ptr_equal(t_find("fresh"), s);
    assert_null(kv_registry_at(t_reg, 2));
}

TEST(registry__unconfigured_name_without_default__uses_memory)
{
    kv_store *s;

    t_add("other", "fake", false);
    s = t_find("fresh");
    assert_string_equal(kv_store_backend_name(s), "memory");
    assert_false(kv_store_conf_of(s)->notify);
}

TEST(registry__same_key_in_two_stores__holds_different_values)
{
    kv_store *a, *b;

    t_add("default", "memory", false);
    a = t_find("one");
    b = t_find("two");
    assert_ptr_not_equal(a, b);
    t_put(a, B("k"), B("from one"), 0);
    t_put(b, B("k"), B("from two"), 0);
    t_assert_value(a, B("k"), B("from one"));
    t_assert_value(b, B("k"), B("from two"));
    assert_false(t_get(t_find("default"), B("k")));
}

TEST(registry__bad_store_name__is_bad_store_and_creates_nothing)
{
    kv_store *s = NULL;
    char long_name[KV_STORE_NAME_MAX + 1];

    memset(long_name, 'n', sizeof long_name);
    assert_int_equal(kv_registry_find(t_reg, "a b", 3, &s, &t_err), KV_ESTORE);
    assert_int_equal(t_err.code, KV_ESTORE);
    assert_int_equal(kv_registry_find(t_reg, "", 0, &s, &t_err), KV_ESTORE);
    assert_int_equal(kv_registry_find(t_reg, "a/b", 3, &s, &t_err), KV_ESTORE);
    assert_int_equal(
        kv_registry_find(t_reg, long_name, sizeof long_name, &s, &t_err),
        KV_ESTORE);
    assert_null(kv_registry_at(t_reg, 0));
}

TEST(registry__add_with_bad_name__is_bad_store)
{
    kv_store_conf conf = {.name = "a b", .backend = "memory"};

    assert_int_equal(kv_registry_add(t_reg, &conf, &t_err), KV_ESTORE);
    assert_null(kv_registry_at(t_reg, 0));
}

TEST(registry__past_max_stores__is_limit)
{
    kv_store *s = NULL;
    char name[KV_STORE_NAME_MAX + 1];
    unsigned i;

    t_add("configured", "memory", false);
    for (i = 1; i < T_MAX_STORES; i++) {
        snprintf(name, sizeof name, "s%u", i);
        t_find(name);
    }
    assert_non_null(kv_registry_at(t_reg, T_MAX_STORES - 1));
    assert_int_equal(kv_registry_find(t_reg, "one-more", 8, &s, &t_err),
                     KV_ELIMIT);
    assert_int_equal(t_err.code, KV_ELIMIT);
    assert_null(kv_registry_at(t_reg, T_MAX_STORES));
    /* Stores that exist are still found. */
    assert_ptr_equal(t_find("s1"), kv_registry_at(t_reg, 1));
    assert_ptr_equal(t_find("configured"), kv_registry_at(t_reg, 0));
}

TEST(registry__duplicate_configured_name__is_bad_store)
{
    kv_store_conf conf = {.name = "twice", .backend = "memory"};

    assert_int_equal(kv_registry_add(t_reg, &conf, &t_err), 0);
    assert_int_equal(kv_registry_add(t_reg, &conf, &t_err), KV_ESTORE);
    assert_int_equal(t_err.code, KV_ESTORE);
    assert_null(kv_registry_at(t_reg, 1));
}

TEST(registry__unknown_backend__is_invalid)
{
    kv_store_conf conf = {.name = "x", .backend = "cassandra"};
    kv_store *s = NULL;

    assert_int_equal(kv_registry_add(t_reg, &conf, &t_err), KV_EINVAL);
    assert_int_equal(t_err.code, KV_EINVAL);
    assert_null(kv_registry_at(t_reg, 0));
    /* Not configured, so a find creates it afresh on memory. */
    assert_int_equal(kv_registry_find(t_reg, "x", 1, &s, &t_err), 0);
    assert_string_equal(kv_store_backend_name(s), "memory");
}

TEST(registry__backend_open_failure__is_reported_and_adds_nothing)
{
    kv_store_conf conf = {.name = "refused", .backend = "fake"};
    char url[] = "fail";

    conf.url = url;
    assert_int_equal(kv_registry_add(t_reg, &conf, &t_err), KV_EUNAVAIL);
    assert_int_equal(t_err.code, KV_EUNAVAIL);
    assert_null(kv_registry_at(t_reg, 0));
}

TEST(registry__at__iterates_in_creation_order)
{
    t_add("zeta", "memory", false);
    t_add("alpha", "fake", false);
    t_find("mid");
    assert_string_equal(kv_store_name(kv_registry_at(t_reg, 0)), "zeta");
    assert_string_equal(kv_store_name(kv_registry_at(t_reg, 1)), "alpha");
    assert_string_equal(kv_store_name(kv_registry_at(t_reg, 2)), "mid");
    assert_null(kv_registry_at(t_reg, 3));
    assert_null(kv_registry_at(t_reg, 1000));
}

TEST(registry__limits__default_when_zero)
{
    kv_registry *reg = kv_registry_new(NULL, t_backends, NULL);
    const kv_limits *lim;

    assert_non_null(reg);
    lim = kv_registry_limits(reg);
    assert_int_equal(lim->max_key_bytes, KV_MAX_KEY_BYTES_DEFAULT);
    assert_int_equal(lim->max_value_bytes, KV_MAX_VALUE_BYTES_DEFAULT);
    assert_int_equal(lim->max_stores, KV_MAX_STORES_DEFAULT);
    kv_registry_free(reg);
    kv_registry_free(NULL);
}

/* ------------------------------------------------------------------ */
/* kv_store_call: validation                                            */

TEST(store_call__key_over_limit__is_bad_key_without_callback)
{
    char key[T_MAX_KEY_BYTES + 1];
    kv_store *s = t_find("s");
    kv_req req = {.op = KV_OP_PUT, .value = B("v")};

    memset(key, 'k', sizeof key);
    req.key = (kv_bytes){key, T_MAX_KEY_BYTES + 1};
    assert_int_equal(t_call(s, &req), KV_EKEY);
    req.op = KV_OP_GET;
    assert_int_equal(t_call(s, &req), KV_EKEY);
    /* Exactly the limit is fine. */
    req.op = KV_OP_PUT;
    req.key.len = T_MAX_KEY_BYTES;
    assert_int_equal(t_call(s, &req), 0);
}

TEST(store_call__empty_or_invalid_key__is_bad_key_without_callback)
{
    kv_store *s = t_find("s");
    kv_req req = {.op = KV_OP_GET};

    assert_int_equal(t_call(s, &req), KV_EKEY);
    req.key = B("a\xc0\xaf");
    assert_int_equal(t_call(s, &req), KV_EKEY);
    req.op = KV_OP_DEL;
    req.key = B("a\x01");
    assert_int_equal(t_call(s, &req), KV_EKEY);
}

TEST(store_call__value_over_limit__is_too_big_and_keeps_old_value)
{
    char big[T_MAX_VALUE_BYTES + 1];
    kv_store *s = t_find("s");
    kv_req req = {.op = KV_OP_PUT, .key = B("k")};

    t_put(s, B("k"), B("old"), 0);
    memset(big, 'v', sizeof big);
    req.value = (kv_bytes){big, sizeof big};
    assert_int_equal(t_call(s, &req), KV_ETOOBIG);
    t_assert_value(s, B("k"), B("old"));
    /* The same through a CAS that would store it. */
    req = (kv_req){.op = KV_OP_CAS,
                   .key = B("k"),
                   .has_expected = true,
                   .expected = B("old"),
                   .has_value = true,
                   .value = {big, sizeof big}};
    assert_int_equal(t_call(s, &req), KV_ETOOBIG);
    t_assert_value(s, B("k"), B("old"));
    /* Exactly the limit is stored. */
    t_put(s, B("k"), (kv_bytes){big, T_MAX_VALUE_BYTES}, 0);
    t_assert_value(s, B("k"), (kv_bytes){big, T_MAX_VALUE_BYTES});
}

TEST(store_call__negative_ttl__is_invalid)
{
    kv_store *s = t_find("s");
    kv_req req = {.op = KV_OP_PUT, .key = B("k"), .value = B("v"), .ttl_s = -1};

    assert_int_equal(t_call(s, &req), KV_EINVAL);
    assert_false(t_get(s, B("k")));
    t_put(s, B("k"), B("v"), 0);
    req = (kv_req){.op = KV_OP_SET_TTL, .key = B("k"), .ttl_s = -1};
    assert_int_equal(t_call(s, &req), KV_EINVAL);
    req = (kv_req){.op = KV_OP_CAS,
                   .key = B("k"),
                   .has_expected = true,
                   .expected = B("v"),
                   .has_value = true,
                   .value = B("w"),
                   .ttl_s = -1};
    assert_int_equal(t_call(s, &req), KV_EINVAL);
    t_assert_value(s, B("k"), B("v"));
    assert_int_equal(t_c.ttl_left_s, 0);
}

TEST(store_call__ttl_over_max__is_invalid)
{
    kv_store *s = t_find("s");
    kv_req req = {.op = KV_OP_PUT,
                  .key = B("k"),
                  .value = B("v"),
                  .ttl_s = KV_MAX_TTL_S + 1};

    assert_int_equal(t_call(s, &req), KV_EINVAL);
    assert_false(t_get(s, B("k")));
    req.ttl_s = KV_MAX_TTL_S;
    assert_int_equal(t_call(s, &req), 0);
    assert_true(t_get(s, B("k")));
    assert_true(t_c.ttl_left_s == KV_MAX_TTL_S);
    req =
        (kv_req){.op = KV_OP_SET_TTL, .key = B("k"), .ttl_s = KV_MAX_TTL_S + 1};
    assert_int_equal(t_call(s, &req), KV_EINVAL);
}

TEST(store_call__mget_with_a_bad_key__is_bad_key)
{
    kv_store *s = t_find("s");
    kv_bytes keys[] = {B("good"), B("bad\x7f"), B("fine")};
    kv_req req = {.op = KV_OP_MGET, .keys = keys, .nkeys = 3};

    assert_int_equal(t_call(s, &req), KV_EKEY);
    keys[1] = (kv_bytes){"", 0};
    assert_int_equal(t_call(s, &req), KV_EKEY);
}

TEST(store_call__mget_over_the_key_limit__is_limit)
{
    kv_store *s = t_find("s");
    kv_bytes *keys = calloc(KV_KEYS_LIMIT_MAX + 1, sizeof *keys);
    kv_req req = {.op = KV_OP_MGET};
    size_t i;

    assert_non_null(keys);
    for (i = 0; i <= KV_KEYS_LIMIT_MAX; i++)
        keys[i] = B("k");
    req.keys = keys;
    req.nkeys = KV_KEYS_LIMIT_MAX + 1;
    assert_int_equal(t_call(s, &req), KV_ELIMIT);
    req.nkeys = KV_KEYS_LIMIT_MAX;
    assert_int_equal(t_call(s, &req), 0);
    free(keys);
}

TEST(store_call__mget__answers_present_keys_and_leaves_out_absent_ones)
{
    kv_store *s = t_find("s");
    kv_bytes keys[] = {B("a"), B("missing"), B("b")};
    kv_req req = {.op = KV_OP_MGET, .keys = keys, .nkeys = 3};

    t_put(s, B("a"), B("1"), 0);
    t_put(s, B("b"), B("2"), 0);
    t_c.nvalues = 3;
    assert_int_equal(t_call(s, &req), 0);
    assert_true(t_c.present[0]);
    assert_memory_equal(t_c.values[0], "1", 1);
    assert_false(t_c.present[1]);
    assert_true(t_c.present[2]);
    assert_memory_equal(t_c.values[2], "2", 1);
}

TEST(store_call__keys_limit_over_max__is_invalid)
{
    kv_store *s = t_find("s");
    kv_req req = {.op = KV_OP_KEYS, .limit = KV_KEYS_LIMIT_MAX + 1};

    t_put(s, B("a"), B("1"), 0);
    assert_int_equal(t_call(s, &req), KV_EINVAL);
    req.limit = KV_KEYS_LIMIT_MAX;
    assert_int_equal(t_call(s, &req), 0);
    assert_int_equal(t_c.nkeys, 1);
    assert_int_equal(t_c.cursor_len, 0);
}

TEST(store_call__keys_with_a_bad_prefix__is_invalid)
{
    kv_store *s = t_find("s");
    kv_req req = {.op = KV_OP_KEYS, .prefix = B("a\x01")};

    assert_int_equal(t_call(s, &req), KV_EINVAL);
    req.prefix = B("\xff");
    assert_int_equal(t_call(s, &req), KV_EINVAL);
}

TEST(store_call__keys_with_a_bad_prefix__says_why_once)
{
    kv_store *s = t_find("s");
    kv_req req = {.op = KV_OP_KEYS, .prefix = B("a\x01")};
    const char *lead = "bad prefix: ";

    assert_int_equal(t_call(s, &req), KV_EINVAL);
    if (strncmp(t_err.msg, lead, strlen(lead)) != 0 ||
        strstr(t_err.msg + strlen(lead), lead) ||
        !strstr(t_err.msg, "key contains control character U+0001"))
        fail_msg("message is \"%s\"", t_err.msg);
}

TEST(store_call__cas_with_a_malformed_etag__is_invalid)
{
    static const kv_bytes bad[] = {
        {"2d06800538d394c", 15},    {"2d06800538d394c22", 17},
        {"2D06800538D394C2", 16},   {"2d06800538d394cg", 16},
        {"\"2d06800538d394\"", 16}, {"", 0},
    };
    kv_store *s = t_find("s");
    kv_req req = {.op = KV_OP_CAS,
                  .key = B("k"),
                  .has_expected = true,
                  .expected_is_etag = true,
                  .has_value = true,
                  .value = B("new")};
    size_t i;

    t_put(s, B("k"), (kv_bytes){"", 0}, 0);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        req.expected = bad[i];
        if (t_call(s, &req) != KV_EINVAL)
            fail_msg("ETag #%zu was accepted", i);
    }
    t_assert_value(s, B("k"), (kv_bytes){"", 0});
}

/* ------------------------------------------------------------------ */
/* CAS by ETag                                                          */

TEST(cas_by_etag__matching_etag__swaps_and_sets_ttl)
{
    kv_store *s = t_find("s");
    char tag[KV_ETAG_HEX + 1];
    kv_req req = {.op = KV_OP_CAS,
                  .key = B("k"),
                  .has_expected = true,
                  .expected_is_etag = true,
                  .has_value = true,
                  .value = B("new"),
                  .ttl_s = 30};

    t_put(s, B("k"), B("old"), 0);
    kv_etag(B("old"), tag);
    req.expected = (kv_bytes){tag, KV_ETAG_HEX};
    assert_int_equal(t_call(s, &req), 0);
    assert_true(t_c.found);
    assert_int_equal(t_c.op, KV_OP_CAS);
    t_assert_value(s, B("k"), B("new"));
    assert_true(t_c.ttl_left_s == 30);
    /* The TTL is real: the key is gone once it runs out. */
    t_now_ms += 30 * 1000;
    assert_false(t_get(s, B("k")));
}

TEST(cas_by_etag__matching_etag_with_ttl_zero__removes_the_ttl)
{
    kv_store *s = t_find("s");
    char tag[KV_ETAG_HEX + 1];
    kv_req req = {.op = KV_OP_CAS,
                  .key = B("k"),
                  .has_expected = true,
                  .expected_is_etag = true,
                  .has_value = true,
                  .value = B("new")};

    t_put(s, B("k"), B("old"), 10);
    kv_etag(B("old"), tag);
    req.expected = (kv_bytes){tag, KV_ETAG_HEX};
    assert_int_equal(t_call(s, &req), 0);
    assert_true(t_c.found);
    t_assert_value(s, B("k"), B("new"));
    assert_true(t_c.ttl_left_s == 0);
}

TEST(cas_by_etag__wrong_etag__fails_and_keeps_value)
{
    kv_store *s = t_find("s");
    char tag[KV_ETAG_HEX + 1];
    kv_req req = {.op = KV_OP_CAS,
                  .key = B("k"),
                  .has_expected = true,
                  .expected_is_etag = true,
                  .has_value = true,
                  .value = B("new"),
                  .ttl_s = 30};

    t_put(s, B("k"), B("old"), 0);
    kv_etag(B("other"), tag);
    req.expected = (kv_bytes){tag, KV_ETAG_HEX};
    assert_int_equal(t_call(s, &req), 0);
    assert_false(t_c.found);
    t_assert_value(s, B("k"), B("old"));
    assert_true(t_c.ttl_left_s == 0);
}

TEST(cas_by_etag__absent_key__fails_and_creates_nothing)
{
    kv_store *s = t_find("s");
    kv_req req = {.op = KV_OP_CAS,
                  .key = B("k"),
                  .has_expected = true,
                  .expected_is_etag = true,
                  .expected = B("2d06800538d394c2"),
                  .has_value = true,
                  .value = B("new")};

    assert_int_equal(t_call(s, &req), 0);
    assert_false(t_c.found);
    assert_false(t_get(s, B("k")));
}

TEST(cas_by_etag__empty_value__matches_the_etag_of_empty_input)
{
    kv_store *s = t_find("s");
    kv_req req = {.op = KV_OP_CAS,
                  .key = B("k"),
                  .has_expected = true,
                  .expected_is_etag = true,
                  .expected = B("2d06800538d394c2"),
                  .has_value = true,
                  .value = B("filled")};

    t_put(s, B("k"), (kv_bytes){"", 0}, 0);
    assert_int_equal(t_call(s, &req), 0);
    assert_true(t_c.found);
    t_assert_value(s, B("k"), B("filled"));
}

TEST(cas_by_etag__matching_etag_without_value__deletes)
{
    kv_store *s = t_find("s");
    char tag[KV_ETAG_HEX + 1];
    kv_req req = {.op = KV_OP_CAS,
                  .key = B("k"),
                  .has_expected = true,
                  .expected_is_etag = true};

    t_put(s, B("k"), B("old"), 0);
    kv_etag(B("old"), tag);
    req.expected = (kv_bytes){tag, KV_ETAG_HEX};
    assert_int_equal(t_call(s, &req), 0);
    assert_true(t_c.found);
    assert_false(t_get(s, B("k")));
}

TEST(cas_by_etag__wrong_etag_without_value__keeps_the_key)
{
    kv_store *s = t_find("s");
    kv_req req = {.op = KV_OP_CAS,
                  .key = B("k"),
                  .has_expected = true,
                  .expected_is_etag = true,
                  .expected = B("0000000000000000")};

    t_put(s, B("k"), B("old"), 0);
    assert_int_equal(t_call(s, &req), 0);
    assert_false(t_c.found);
    t_assert_value(s, B("k"), B("old"));
}

/* ------------------------------------------------------------------ */
/* The change hook                                                      */

static kv_store *t_notify_store(void)
{
    kv_store *s = t_add("watched", "memory", true);

    kv_registry_on_change(t_reg, t_on_change, NULL);
    return s;
}

static void t_assert_event(size_t i, const kv_store *s, kv_op op, kv_bytes key)
{
    assert_true(i < t_nevents);
    assert_ptr_equal(t_events[i].store, s);
    assert_int_equal(t_events[i].op, op);
    assert_int_equal(t_events[i].key_len, key.len);
    if (key.len)
        assert_memory_equal(t_events[i].key, key.ptr, key.len);
}

TEST(change_hook__put__is_reported_after_the_callback)
{
    kv_store *s = t_notify_store();

    t_put(s, B("k"), B("v"), 0);
    assert_int_equal(t_nevents, 1);
    t_assert_event(0, s, KV_OP_PUT, B("k"));
    assert_int_equal(t_events[0].calls_before, 1);
}

TEST(change_hook__reads__are_not_reported)
{
    kv_store *s = t_notify_store();
    kv_bytes keys[] = {B("k")};
    kv_req mget = {.op = KV_OP_MGET, .keys = keys, .nkeys = 1};
    kv_req keys_req = {.op = KV_OP_KEYS};

    t_put(s, B("k"), B("v"), 0);
    t_nevents = 0;
    t_get(s, B("k"));
    assert_int_equal(t_call(s, &mget), 0);
    assert_int_equal(t_call(s, &keys_req), 0);
    assert_int_equal(t_nevents, 0);
}

TEST(change_hook__delete__is_reported_only_when_the_key_existed)
{
    kv_store *s = t_notify_store();
    kv_req req = {.op = KV_OP_DEL, .key = B("k")};

    assert_int_equal(t_call(s, &req), 0);
    assert_false(t_c.found);
    assert_int_equal(t_nevents, 0);
    t_put(s, B("k"), B("v"), 0);
    assert_int_equal(t_call(s, &req), 0);
    assert_true(t_c.found);
    assert_int_equal(t_nevents, 2);
    t_assert_event(1, s, KV_OP_DEL, B("k"));
}

TEST(change_hook__incr__is_reported)
{
    kv_store *s = t_notify_store();
    kv_req req = {.op = KV_OP_INCR, .key = B("n"), .delta = 5};

    assert_int_equal(t_call(s, &req), 0);
    assert_true(t_c.number == 5);
    assert_int_equal(t_nevents, 1);
    t_assert_event(0, s, KV_OP_INCR, B("n"));
}

TEST(change_hook__failed_incr__is_not_reported)
{
    kv_store *s = t_notify_store();
    kv_req req = {.op = KV_OP_INCR, .key = B("n"), .delta = 1};

    t_put(s, B("n"), B("not a number"), 0);
    t_nevents = 0;
    assert_int_equal(t_call(s, &req), KV_ENOTINT);
    assert_int_equal(t_nevents, 0);
    t_assert_value(s, B("n"), B("not a number"));
}

TEST(change_hook__set_ttl__is_reported_only_when_the_key_existed)
{
    kv_store *s = t_notify_store();
    kv_req req = {.op = KV_OP_SET_TTL, .key = B("k"), .ttl_s = 10};

    assert_int_equal(t_call(s, &req), 0);
    assert_false(t_c.found);
    assert_int_equal(t_nevents, 0);
    t_put(s, B("k"), B("v"), 0);
    assert_int_equal(t_call(s, &req), 0);
    assert_true(t_c.found);
    assert_int_equal(t_nevents, 2);
    t_assert_event(1, s, KV_OP_SET_TTL, B("k"));
}

TEST(change_hook__cas_success__is_reported_as_put_or_delete)
{
    kv_store *s = t_notify_store();
    char tag[KV_ETAG_HEX + 1];
    kv_req create = {
        .op = KV_OP_CAS, .key = B("k"), .has_value = true, .value = B("v1")};
    kv_req replace = {.op = KV_OP_CAS,
                      .key = B("k"),
                      .has_expected = true,
                      .expected = B("v1"),
                      .has_value = true,
                      .value = B("v2")};
    kv_req del = {.op = KV_OP_CAS,
                  .key = B("k"),
                  .has_expected = true,
                  .expected_is_etag = true};

    assert_int_equal(t_call(s, &create), 0);
    assert_true(t_c.found);
    assert_int_equal(t_call(s, &replace), 0);
    assert_true(t_c.found);
    kv_etag(B("v2"), tag);
    del.expected = (kv_bytes){tag, KV_ETAG_HEX};
    assert_int_equal(t_call(s, &del), 0);
    assert_true(t_c.found);
    assert_int_equal(t_nevents, 3);
    t_assert_event(0, s, KV_OP_PUT, B("k"));
    t_assert_event(1, s, KV_OP_PUT, B("k"));
    t_assert_event(2, s, KV_OP_DEL, B("k"));
}

TEST(change_hook__cas_failure__is_not_reported)
{
    kv_store *s = t_notify_store();
    kv_req create = {
        .op = KV_OP_CAS, .key = B("k"), .has_value = true, .value = B("v1")};
    kv_req replace = {.op = KV_OP_CAS,
                      .key = B("k"),
                      .has_expected = true,
                      .expected = B("nope"),
                      .has_value = true,
                      .value = B("v2")};
    kv_req by_etag = {.op = KV_OP_CAS,
                      .key = B("k"),
                      .has_expected = true,
                      .expected_is_etag = true,
                      .expected = B("0000000000000000"),
                      .has_value = true,
                      .value = B("v3")};
    kv_req absent_to_absent = {.op = KV_OP_CAS, .key = B("gone")};

    t_put(s, B("k"), B("v0"), 0);
    t_nevents = 0;
    assert_int_equal(t_call(s, &create), 0);
    assert_false(t_c.found);
    assert_int_equal(t_call(s, &replace), 0);
    assert_false(t_c.found);
    assert_int_equal(t_call(s, &by_etag), 0);
    assert_false(t_c.found);
    /* absent -> absent succeeds but changes nothing. */
    assert_int_equal(t_call(s, &absent_to_absent), 0);
    assert_true(t_c.found);
    assert_int_equal(t_nevents, 0);
}

TEST(change_hook__clear__is_reported_with_an_empty_key)
{
    kv_store *s = t_notify_store();
    kv_req req = {.op = KV_OP_CLEAR, .key = {"", 0}};

    t_put(s, B("a"), B("1"), 0);
    t_put(s, B("b"), B("2"), 0);
    t_nevents = 0;
    assert_int_equal(t_call(s, &req), 0);
    assert_int_equal(t_nevents, 1);
    t_assert_event(0, s, KV_OP_CLEAR, (kv_bytes){"", 0});
    assert_false(t_get(s, B("a")));
    assert_false(t_get(s, B("b")));
}

/*
 * A clear request as the server builds it, zero-initialized: no key at all
 * (key.ptr NULL). Run last: under UBSan with -fno-sanitize-recover a
 * failure here ends the binary.
 */
TEST(change_hook__clear_with_no_key_bytes__is_reported_with_an_empty_key)
{
    kv_store *s = t_notify_store();
    kv_req req = {.op = KV_OP_CLEAR};

    t_put(s, B("a"), B("1"), 0);
    t_nevents = 0;
    assert_int_equal(t_call(s, &req), 0);
    assert_int_equal(t_nevents, 1);
    t_assert_event(0, s, KV_OP_CLEAR, (kv_bytes){"", 0});
    assert_false(t_get(s, B("a")));
}

TEST(change_hook__store_without_notify__reports_nothing)
{
    kv_store *quiet = t_add("quiet", "memory", false);
    kv_store *fresh = t_find("fresh");
    kv_req del = {.op = KV_OP_DEL, .key = B("k")};
    kv_req incr = {.op = KV_OP_INCR, .key = B("n"), .delta = 1};
    kv_req clear = {.op = KV_OP_CLEAR};

    kv_registry_on_change(t_reg, t_on_change, NULL);
    t_put(quiet, B("k"), B("v"), 0);
    assert_int_equal(t_call(quiet, &del), 0);
    assert_int_equal(t_call(quiet, &incr), 0);
    assert_int_equal(t_call(quiet, &clear), 0);
    t_put(fresh, B("k"), B("v"), 0);
    assert_int_equal(t_nevents, 0);
}

TEST(change_hook__removed__reports_nothing)
{
    kv_store *s = t_notify_store();

    kv_registry_on_change(t_reg, NULL, NULL);
    t_put(s, B("k"), B("v"), 0);
    assert_int_equal(t_nevents, 0);
}

/* ------------------------------------------------------------------ */
/* Per-op statistics                                                    */

static uint64_t t_bucket_sum(const kv_op_stats *st)
{
    uint64_t sum = 0;
    size_t i;

    for (i = 0; i <= KV_LATENCY_BUCKETS; i++)
        sum += st->buckets[i];
    return sum;
}

TEST(op_stats__calls_and_errors__are_counted_per_op)
{
    kv_store *s = t_find("s");
    kv_req incr = {.op = KV_OP_INCR, .key = B("n"), .delta = 1};
    const kv_op_stats *put = kv_store_op_stats(s, KV_OP_PUT);
    const kv_op_stats *inc = kv_store_op_stats(s, KV_OP_INCR);
    const kv_op_stats *get = kv_store_op_stats(s, KV_OP_GET);

    assert_true(put->calls == 0 && put->errors == 0);
    t_put(s, B("a"), B("1"), 0);
    t_put(s, B("b"), B("x"), 0);
    t_put(s, B("c"), B("3"), 0);
    assert_int_equal(t_call(s, &incr), 0); /* absent: counts from 0 */
    incr.key = B("b");
    assert_int_equal(t_call(s, &incr), KV_ENOTINT);
    assert_int_equal(t_call(s, &incr), KV_ENOTINT);
    t_get(s, B("a"));
    assert_true(put->calls == 3);
    assert_true(put->errors == 0);
    assert_true(inc->calls == 3);
    assert_true(inc->errors == 2);
    assert_true(get->calls == 1);
    assert_true(get->errors == 0);
    assert_true(kv_store_op_stats(s, KV_OP_DEL)->calls == 0);
}

TEST(op_stats__histogram_buckets__sum_to_calls)
{
    kv_store *s = t_find("s");
    kv_req incr = {.op = KV_OP_INCR, .key = B("x"), .delta = 1};
    kv_req cas = {.op = KV_OP_CAS,
                  .key = B("k"),
                  .has_expected = true,
                  .expected_is_etag = true,
                  .expected = B("0000000000000000")};
    kv_op op;
    int i;

    t_put(s, B("x"), B("x"), 0);
    for (i = 0; i < 20; i++) {
        t_put(s, B("k"), B("v"), 0);
        t_get(s, B("k"));
        assert_int_equal(t_call(s, &cas), 0);
    }
    assert_int_equal(t_call(s, &incr), KV_ENOTINT);
    for (op = 0; op < KV_OP__COUNT; op++) {
        const kv_op_stats *st = kv_store_op_stats(s, op);
        if (t_bucket_sum(st) != st->calls)
            fail_msg("%s: buckets sum to %llu, calls %llu", kv_op_name(op),
                     (unsigned long long)t_bucket_sum(st),
                     (unsigned long long)st->calls);
    }
    assert_true(kv_store_op_stats(s, KV_OP_PUT)->calls == 21);
    assert_true(kv_store_op_stats(s, KV_OP_GET)->calls == 20);
    /* A CAS by ETag is one CAS call, its read included. */
    assert_true(kv_store_op_stats(s, KV_OP_CAS)->calls == 20);
    assert_true(kv_store_op_stats(s, KV_OP_INCR)->calls == 1);
    assert_true(kv_store_op_stats(s, KV_OP_INCR)->errors == 1);
}

/* ------------------------------------------------------------------ */

#define T(name) cmocka_unit_test_setup_teardown(name, t_setup, t_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(check_key__empty__is_bad_key),
        T(check_key__exactly_max_bytes__is_accepted),
        T(check_key__one_byte_over_max__is_bad_key),
        T(check_key__overlong_encodings__are_bad_keys),
        T(check_key__surrogates__are_bad_keys),
        T(check_key__truncated_or_stray_bytes__are_bad_keys),
        T(check_key__control_characters__are_bad_keys),
        T(check_key__multibyte_and_emoji__are_accepted),
        T(check_key__glob_and_like_characters__are_ordinary),
        T(check_key__null_err__still_returns_the_code),
        T(check_store_name__letters_digits_underscore_dot_dash__are_accepted),
        T(check_store_name__64_characters__are_accepted),
        T(check_store_name__65_characters__are_bad_store),
        T(check_store_name__space_slash_star_or_empty__are_bad_store),
        T(parse_int64__canonical_text__parses),
        T(parse_int64__one_past_either_bound__is_not_an_integer),
        T(parse_int64__non_canonical_text__is_not_an_integer),
        T(format_int64__values__round_trip_through_parse),
        T(etag__empty_value__is_xxh3_64_of_empty_input),
        T(etag__same_bytes__give_the_same_tag),
        T(etag__any_value__is_16_lowercase_hex_digits),
        T(cursor__round_trips_keys_of_every_length_mod_3),
        T(cursor__fixed_keys__give_the_cursors_already_handed_out),
        T(cursor__is_url_safe_and_short_enough_for_a_default_key),
        T(cursor__anything_not_encoded_by_us__is_bad_cursor),
        T(cursor__key_longer_than_the_cursor_limit__is_bad_cursor),
        T(cursor__bad_cursor__says_what_is_wrong),
        T(errors__known_codes__map_to_message_code_and_status),
        T(errors__unknown_code__is_internal_500),
        T(errors__err_set__records_code_and_message_and_returns_code),
        T(op_name__each_op__has_its_metric_name),
        T(registry__configured_store__is_found_by_name),
        T(registry__unconfigured_name__is_created_with_the_default_backend),
        T(registry__unconfigured_name_without_default__uses_memory),
        T(registry__same_key_in_two_stores__holds_different_values),
        T(registry__bad_store_name__is_bad_store_and_creates_nothing),
        T(registry__add_with_bad_name__is_bad_store),
        T(registry__past_max_stores__is_limit),
        T(registry__duplicate_configured_name__is_bad_store),
        T(registry__unknown_backend__is_invalid),
        T(registry__backend_open_failure__is_reported_and_adds_nothing),
        T(registry__at__iterates_in_creation_order),
        T(registry__limits__default_when_zero),
        T(store_call__key_over_limit__is_bad_key_without_callback),
        T(store_call__empty_or_invalid_key__is_bad_key_without_callback),
        T(store_call__value_over_limit__is_too_big_and_keeps_old_value),
        T(store_call__negative_ttl__is_invalid),
        T(store_call__ttl_over_max__is_invalid),
        T(store_call__mget_with_a_bad_key__is_bad_key),
        T(store_call__mget_over_the_key_limit__is_limit),
        T(store_call__mget__answers_present_keys_and_leaves_out_absent_ones),
        T(store_call__keys_limit_over_max__is_invalid),
        T(store_call__keys_with_a_bad_prefix__is_invalid),
        T(store_call__keys_with_a_bad_prefix__says_why_once),
        T(store_call__cas_with_a_malformed_etag__is_invalid),
        T(cas_by_etag__matching_etag__swaps_and_sets_ttl),
        T(cas_by_etag__matching_etag_with_ttl_zero__removes_the_ttl),
        T(cas_by_etag__wrong_etag__fails_and_keeps_value),
        T(cas_by_etag__absent_key__fails_and_creates_nothing),
        T(cas_by_etag__empty_value__matches_the_etag_of_empty_input),
        T(cas_by_etag__matching_etag_without_value__deletes),
        T(cas_by_etag__wrong_etag_without_value__keeps_the_key),
        T(change_hook__put__is_reported_after_the_callback),
        T(change_hook__reads__are_not_reported),
        T(change_hook__delete__is_reported_only_when_the_key_existed),
        T(change_hook__incr__is_reported),
        T(change_hook__failed_incr__is_not_reported),
        T(change_hook__set_ttl__is_reported_only_when_the_key_existed),
        T(change_hook__cas_success__is_reported_as_put_or_delete),
        T(change_hook__cas_failure__is_not_reported),
        T(change_hook__clear__is_reported_with_an_empty_key),
        T(change_hook__store_without_notify__reports_nothing),
        T(change_hook__removed__reports_nothing),
        T(op_stats__calls_and_errors__are_counted_per_op),
        T(op_stats__histogram_buckets__sum_to_calls),
        T(change_hook__clear_with_no_key_bytes__is_reported_with_an_empty_key),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
