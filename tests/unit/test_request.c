/*
 * test_request.c - unit tests of server/srv_request.c: splitting a request
 * target, percent-decoding, query parameters, integer parameters and route
 * matching. Everything under test is a pure function over borrowed bytes,
 * so the tests need no sockets and no loop. The route table mirrors
 * kvbusd's shape with NULL handlers. Left out: the handlers themselves
 * (the e2e suite speaks HTTP to them).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <http_parser.h>

#include "server/srv_request.h"

/* A test case; cmocka's state is not used. */
#define TEST(name) static void name(void **state __attribute__((unused)))

/* A string literal as kv_bytes (no NUL included). */
#define B(s) ((kv_bytes){(s), sizeof(s) - 1})

#define T_OUT_CAP 64 /* decode buffers, larger than any input here */

/* Asserts that b holds exactly the C string s. */
#define assert_bytes(b, s)                                                     \
    do {                                                                       \
        kv_bytes b_ = (b);                                                     \
        const char *s_ = (s);                                                  \
        assert_int_equal(b_.len, strlen(s_));                                  \
        assert_memory_equal(b_.ptr, s_, b_.len);                               \
    } while (0)

/* ------------------------------------------------------------------ */
/* srv_split_target                                                     */

TEST(split_target__without_query__is_all_path_and_empty_query)
{
    kv_bytes path, query;

    assert_true(srv_split_target(B("/v1/kv/s/k"), &path, &query));
    assert_bytes(path, "/v1/kv/s/k");
    assert_int_equal(query.len, 0);
    assert_true(srv_split_target(B("/"), &path, &query));
    assert_bytes(path, "/");
    assert_int_equal(query.len, 0);
}

TEST(split_target__with_query__splits_at_the_first_question_mark)
{
    kv_bytes path, query;

    assert_true(srv_split_target(B("/v1/kv/s/k?ttl=5&x=1"), &path, &query));
    assert_bytes(path, "/v1/kv/s/k");
    assert_bytes(query, "ttl=5&x=1");
    assert_true(srv_split_target(B("/a?b=?c"), &path, &query));
    assert_bytes(path, "/a");
    assert_bytes(query, "b=?c");
}

TEST(split_target__trailing_question_mark__gives_an_empty_query)
{
    kv_bytes path, query;

    assert_true(srv_split_target(B("/a?"), &path, &query));
    assert_bytes(path, "/a");
    assert_int_equal(query.len, 0);
}

TEST(split_target__not_starting_with_a_slash__is_rejected)
{
    kv_bytes path, query;

    assert_false(srv_split_target(B(""), &path, &query));
    assert_false(srv_split_target(B("v1/kv"), &path, &query));
    assert_false(srv_split_target(B("*"), &path, &query));
    assert_false(srv_split_target(B("?a=1"), &path, &query));
    assert_false(srv_split_target(B("http://host/v1/kv"), &path, &query));
}

/* ------------------------------------------------------------------ */
/* srv_pct_decode                                                       */

/* Decodes in and asserts the result is exactly want (want_len bytes). */
static void t_decode(kv_bytes in, bool plus_is_space, const char *want,
                     size_t want_len)
{
    char out[T_OUT_CAP];
    long n;

    assert_true(in.len <= sizeof out);
    n = srv_pct_decode(in, plus_is_space, out);
    assert_int_equal(n, (long)want_len);
    assert_memory_equal(out, want, want_len);
}

static long t_decode_rc(kv_bytes in)
{
    char out[T_OUT_CAP];

    return srv_pct_decode(in, false, out);
}

TEST(pct_decode__plain_text__is_unchanged)
{
    t_decode(B("abc-._~/x"), false, "abc-._~/x", 9);
    t_decode(B(""), false, "", 0);
}

TEST(pct_decode__encoded_slash__decodes)
{
    t_decode(B("a%2Fb"), false, "a/b", 3);
    t_decode(B("a%2fb"), false, "a/b", 3);
    t_decode(B("%2F"), false, "/", 1);
}

TEST(pct_decode__mixed_case_hex__decodes)
{
    t_decode(B("%2e%2E"), false, "..", 2);
    t_decode(B("%C3%a9"), false, "\xc3\xa9", 2);
    t_decode(B("%41%7a%7A"), false, "Azz", 3);
}

TEST(pct_decode__plus__stays_plus_in_paths_and_is_space_in_queries)
{
    t_decode(B("a+b"), false, "a+b", 3);
    t_decode(B("a+b"), true, "a b", 3);
    /* An encoded plus is a plus either way. */
    t_decode(B("a%2Bb"), true, "a+b", 3);
    t_decode(B("%20"), false, " ", 1);
}

TEST(pct_decode__bad_escapes__fail)
{
    assert_int_equal(t_decode_rc(B("%zz")), -1);
    assert_int_equal(t_decode_rc(B("a%zzb")), -1);
    assert_int_equal(t_decode_rc(B("%4")), -1);
    assert_int_equal(t_decode_rc(B("a%4")), -1);
    assert_int_equal(t_decode_rc(B("%")), -1);
    assert_int_equal(t_decode_rc(B("abc%")), -1);
    assert_int_equal(t_decode_rc(B("%g0")), -1);
    assert_int_equal(t_decode_rc(B("%0g")), -1);
    assert_int_equal(t_decode_rc(B("% 1")), -1);
    assert_int_equal(t_decode_rc(B("%%41")), -1);
}

TEST(pct_decode__percent_00__decodes_to_a_nul_byte)
{
    t_decode(B("a%00b"), false, "a\0b", 3);
    t_decode(B("%00"), true, "\0", 1);
}

/* ------------------------------------------------------------------ */
/* srv_query_param                                                      */

/* The value of name in query as a C string, or NULL with *rc set. */
static const char *t_param(const char *query, const char *name, size_t cap,
                           long *rc)
{
    static char out[T_OUT_CAP + 1];

    assert_true(cap <= T_OUT_CAP);
    memset(out, 0, sizeof out);
    *rc = srv_query_param((kv_bytes){query, strlen(query)}, name, out, cap);
    return *rc >= 0 ? out : NULL;
}

TEST(query_param__first_middle_and_last__are_found)
{
    const char *q = "op=incr&delta=5&ttl=30";
    long rc;

    assert_string_equal(t_param(q, "op", T_OUT_CAP, &rc), "incr");
    assert_int_equal(rc, 4);
    assert_string_equal(t_param(q, "delta", T_OUT_CAP, &rc), "5");
    assert_int_equal(rc, 1);
    assert_string_equal(t_param(q, "ttl", T_OUT_CAP, &rc), "30");
    assert_int_equal(rc, 2);
    assert_string_equal(t_param("only=1", "only", T_OUT_CAP, &rc), "1");
}

TEST(query_param__absent__is_minus_one)
{
    long rc;

    assert_null(t_param("op=incr&delta=5", "ttl", T_OUT_CAP, &rc));
    assert_int_equal(rc, -1);
    assert_null(t_param("", "ttl", T_OUT_CAP, &rc));
    assert_int_equal(rc, -1);
    assert_null(t_param("&&", "ttl", T_OUT_CAP, &rc));
    assert_int_equal(rc, -1);
    /* Names compare exactly: case and encoding count. */
    assert_null(t_param("TTL=1&t%74l=2", "ttl", T_OUT_CAP, &rc));
    assert_int_equal(rc, -1);
    /* A value that looks like the name is not the name. */
    assert_null(t_param("x=ttl", "ttl", T_OUT_CAP, &rc));
    assert_int_equal(rc, -1);
}

TEST(query_param__empty_value__is_zero_length)
{
    long rc;

    assert_string_equal(t_param("prefix=&limit=5", "prefix", T_OUT_CAP, &rc),
                        "");
    assert_int_equal(rc, 0);
    assert_string_equal(t_param("limit=5&prefix", "prefix", T_OUT_CAP, &rc),
                        "");
    assert_int_equal(rc, 0);
    assert_string_equal(t_param("prefix=", "prefix", 0, &rc), "");
    assert_int_equal(rc, 0);
}

TEST(query_param__value_longer_than_cap__is_minus_two)
{
    long rc;

    assert_null(t_param("prefix=abcd", "prefix", 3, &rc));
    assert_int_equal(rc, -2);
    assert_string_equal(t_param("prefix=abc", "prefix", 3, &rc), "abc");
    assert_int_equal(rc, 3);
    /* cap 0: only tells present from absent. */
    assert_null(t_param("ttl=5", "ttl", 0, &rc));
    assert_int_equal(rc, -2);
}

TEST(query_param__bad_escape__is_minus_two)
{
    long rc;

    assert_null(t_param("prefix=a%zz", "prefix", T_OUT_CAP, &rc));
    assert_int_equal(rc, -2);
    assert_null(t_param("a=1&prefix=%4&b=2", "prefix", T_OUT_CAP, &rc));
    assert_int_equal(rc, -2);
    assert_null(t_param("prefix=%", "prefix", T_OUT_CAP, &rc));
    assert_int_equal(rc, -2);
    /* A bad escape in another parameter does not matter. */
    assert_string_equal(t_param("a=%zz&prefix=ok", "prefix", T_OUT_CAP, &rc),
                        "ok");
}

TEST(query_param__name_that_prefixes_another__is_not_confused)
{
    long rc;

    assert_null(t_param("ttl=5", "t", T_OUT_CAP, &rc));
    assert_int_equal(rc, -1);
    assert_string_equal(t_param("ttl=5&t=1", "t", T_OUT_CAP, &rc), "1");
    assert_string_equal(t_param("t=1&ttl=5", "ttl", T_OUT_CAP, &rc), "5");
    assert_null(t_param("t=1", "ttl", T_OUT_CAP, &rc));
    assert_int_equal(rc, -1);
}

TEST(query_param__value__is_decoded_with_plus_as_space)
{
    long rc;

    assert_string_equal(t_param("prefix=a+b%2Fc", "prefix", T_OUT_CAP, &rc),
                        "a b/c");
    assert_int_equal(rc, 5);
    assert_string_equal(t_param("k=x%3Dy%26z", "k", T_OUT_CAP, &rc), "x=y&z");
    /* Only the first '=' separates name from value. */
    assert_string_equal(t_param("k=a=b", "k", T_OUT_CAP, &rc), "a=b");
}

TEST(query_param__repeated_name__gives_the_first)
{
    long rc;

    assert_string_equal(t_param("ttl=1&ttl=2", "ttl", T_OUT_CAP, &rc), "1");
}

/* ------------------------------------------------------------------ */
/* srv_parse_int                                                        */

static bool t_int(const char *s, int64_t min, int64_t max, int64_t *out)
{
    return srv_parse_int(s, strlen(s), min, max, out);
}

TEST(parse_int__bounds__are_inclusive)
{
    int64_t v = 42;

    assert_true(t_int("0", 0, 10, &v));
    assert_true(v == 0);
    assert_true(t_int("10", 0, 10, &v));
    assert_true(v == 10);
    assert_true(t_int("-5", -5, 5, &v));
    assert_true(v == -5);
    assert_true(t_int("9223372036854775807", INT64_MIN, INT64_MAX, &v));
    assert_true(v == INT64_MAX);
    assert_true(t_int("-9223372036854775808", INT64_MIN, INT64_MAX, &v));
    assert_true(v == INT64_MIN);
}

TEST(parse_int__outside_bounds__fails_and_leaves_out_alone)
{
    int64_t v = 42;

    assert_false(t_int("11", 0, 10, &v));
    assert_false(t_int("-1", 0, 10, &v));
    assert_false(t_int("0", 1, 10000, &v));
    assert_false(t_int("10001", 1, 10000, &v));
    assert_false(t_int("9223372036854775808", INT64_MIN, INT64_MAX, &v));
    assert_true(v == 42);
}

TEST(parse_int__non_canonical_text__fails)
{
    int64_t v = 42;

    assert_false(t_int("", 0, 10, &v));
    assert_false(t_int("+1", 0, 10, &v));
    assert_false(t_int(" 1", 0, 10, &v));
    assert_false(t_int("1 ", 0, 10, &v));
    assert_false(t_int("01", 0, 10, &v));
    assert_false(t_int("-0", -10, 10, &v));
    assert_false(t_int("1.5", 0, 10, &v));
    assert_false(t_int("5s", 0, 10, &v));
    assert_true(v == 42);
    /* The length bounds the text, not a NUL. */
    assert_true(srv_parse_int("123", 2, 0, 100, &v));
    assert_true(v == 12);
}

/* ------------------------------------------------------------------ */
/* srv_route_find                                                       */

static const srv_route t_routes[] = {
    {"/v1/kv", SRV_GET | SRV_HEAD, NULL},
    {"/v1/kv/{store}", SRV_GET | SRV_HEAD | SRV_POST | SRV_DELETE, NULL},
    {"/v1/kv/{store}/{key*}",
     SRV_GET | SRV_HEAD | SRV_PUT | SRV_POST | SRV_DELETE, NULL},
    {"/healthz", SRV_GET, NULL},
    {"/", SRV_GET, NULL},
};
#define T_NROUTES (sizeof t_routes / sizeof t_routes[0])

static const srv_route *t_route;
static kv_bytes t_caps[SRV_ROUTE_CAPS];

static srv_match t_find(unsigned method, const char *path)
{
    t_route = NULL;
    memset(t_caps, 0, sizeof t_caps);
    return srv_route_find(t_routes, T_NROUTES, method,
                          (kv_bytes){path, strlen(path)}, &t_route, t_caps);
}

TEST(route_find__exact_paths__match_their_routes)
{
    assert_int_equal(t_find(SRV_GET, "/v1/kv"), SRV_MATCH_OK);
    assert_ptr_equal(t_route, &t_routes[0]);
    assert_int_equal(t_find(SRV_HEAD, "/v1/kv"), SRV_MATCH_OK);
    assert_ptr_equal(t_route, &t_routes[0]);
    assert_int_equal(t_find(SRV_GET, "/healthz"), SRV_MATCH_OK);
    assert_ptr_equal(t_route, &t_routes[3]);
    assert_int_equal(t_find(SRV_GET, "/"), SRV_MATCH_OK);
    assert_ptr_equal(t_route, &t_routes[4]);
}

TEST(route_find__store_path__captures_the_store)
{
    assert_int_equal(t_find(SRV_DELETE, "/v1/kv/sessions"), SRV_MATCH_OK);
    assert_ptr_equal(t_route, &t_routes[1]);
    assert_bytes(t_caps[0], "sessions");
    assert_int_equal(t_find(SRV_POST, "/v1/kv/a%20b"), SRV_MATCH_OK);
    assert_ptr_equal(t_route, &t_routes[1]);
    assert_bytes(t_caps[0], "a%20b");
}

TEST(route_find__key_path__captures_store_and_raw_key)
{
    assert_int_equal(t_find(SRV_PUT, "/v1/kv/s/k"), SRV_MATCH_OK);
    assert_ptr_equal(t_route, &t_routes[2]);
    assert_bytes(t_caps[0], "s");
    assert_bytes(t_caps[1], "k");
    assert_int_equal(t_find(SRV_GET, "/v1/kv/s/a%2Fb/c"), SRV_MATCH_OK);
    assert_ptr_equal(t_route, &t_routes[2]);
    assert_bytes(t_caps[0], "s");
    assert_bytes(t_caps[1], "a%2Fb/c");
}

TEST(route_find__key_with_dots_and_double_slashes__is_captured_verbatim)
{
    assert_int_equal(t_find(SRV_GET, "/v1/kv/s/../../etc"), SRV_MATCH_OK);
    assert_ptr_equal(t_route, &t_routes[2]);
    assert_bytes(t_caps[0], "s");
    assert_bytes(t_caps[1], "../../etc");
    assert_int_equal(t_find(SRV_GET, "/v1/kv/s/a//b/"), SRV_MATCH_OK);
    assert_bytes(t_caps[1], "a//b/");
    assert_int_equal(t_find(SRV_GET, "/v1/kv/s//a"), SRV_MATCH_OK);
    assert_bytes(t_caps[0], "s");
    assert_bytes(t_caps[1], "/a");
    assert_int_equal(t_find(SRV_GET, "/v1/kv/s/%2e%2e"), SRV_MATCH_OK);
    assert_bytes(t_caps[1], "%2e%2e");
}

TEST(route_find__empty_key__is_no_route)
{
    assert_int_equal(t_find(SRV_GET, "/v1/kv/s/"), SRV_MATCH_NO_ROUTE);
    assert_int_equal(t_find(SRV_PUT, "/v1/kv/s/"), SRV_MATCH_NO_ROUTE);
}

TEST(route_find__empty_store__is_no_route)
{
    assert_int_equal(t_find(SRV_GET, "/v1/kv/"), SRV_MATCH_NO_ROUTE);
    assert_int_equal(t_find(SRV_GET, "/v1/kv//k"), SRV_MATCH_NO_ROUTE);
}

TEST(route_find__patch_on_a_key__is_bad_method)
{
    assert_int_equal(t_find(SRV_OTHER, "/v1/kv/s/k"), SRV_MATCH_BAD_METHOD);
    assert_int_equal(t_find(srv_method_bit(HTTP_PATCH), "/v1/kv/s/k"),
                     SRV_MATCH_BAD_METHOD);
}

TEST(route_find__method_a_path_does_not_take__is_bad_method)
{
    assert_int_equal(t_find(SRV_PUT, "/v1/kv/s"), SRV_MATCH_BAD_METHOD);
    assert_int_equal(t_find(SRV_DELETE, "/v1/kv"), SRV_MATCH_BAD_METHOD);
    assert_int_equal(t_find(SRV_HEAD, "/healthz"), SRV_MATCH_BAD_METHOD);
    assert_int_equal(t_find(SRV_POST, "/"), SRV_MATCH_BAD_METHOD);
}

TEST(route_find__unknown_path__is_no_route)
{
    assert_int_equal(t_find(SRV_GET, "/nope"), SRV_MATCH_NO_ROUTE);
    assert_int_equal(t_find(SRV_GET, "/v1"), SRV_MATCH_NO_ROUTE);
    assert_int_equal(t_find(SRV_GET, "/v1/kvx"), SRV_MATCH_NO_ROUTE);
    assert_int_equal(t_find(SRV_GET, "/v1/kv2/s/k"), SRV_MATCH_NO_ROUTE);
    assert_int_equal(t_find(SRV_GET, "/healthz/x"), SRV_MATCH_NO_ROUTE);
    assert_int_equal(t_find(SRV_GET, "/healthzz"), SRV_MATCH_NO_ROUTE);
    assert_int_equal(t_find(SRV_GET, ""), SRV_MATCH_NO_ROUTE);
    /* An unknown path is 404 whatever the method. */
    assert_int_equal(t_find(SRV_OTHER, "/nope"), SRV_MATCH_NO_ROUTE);
}

TEST(route_find__root__does_not_match_other_paths)
{
    assert_int_equal(t_find(SRV_GET, "/x"), SRV_MATCH_NO_ROUTE);
    assert_int_equal(t_find(SRV_GET, "//"), SRV_MATCH_NO_ROUTE);
}

TEST(method_bit__http_parser_methods__map_to_their_bits)
{
    assert_int_equal(srv_method_bit(HTTP_GET), SRV_GET);
    assert_int_equal(srv_method_bit(HTTP_HEAD), SRV_HEAD);
    assert_int_equal(srv_method_bit(HTTP_PUT), SRV_PUT);
    assert_int_equal(srv_method_bit(HTTP_POST), SRV_POST);
    assert_int_equal(srv_method_bit(HTTP_DELETE), SRV_DELETE);
    assert_int_equal(srv_method_bit(HTTP_PATCH), SRV_OTHER);
    assert_int_equal(srv_method_bit(HTTP_OPTIONS), SRV_OTHER);
}

/* ------------------------------------------------------------------ */

#define T(name) cmocka_unit_test(name)

/* The Allow header of a 405 lists what every matching route accepts. */
static void
route_allowed__key_path__is_the_union_of_matching_routes(void **state)
{
    (void)state;
    assert_int_equal(srv_route_allowed(t_routes, T_NROUTES, B("/v1/kv/s/k")),
                     SRV_GET | SRV_HEAD | SRV_PUT | SRV_POST | SRV_DELETE);
    assert_int_equal(srv_route_allowed(t_routes, T_NROUTES, B("/healthz")),
                     SRV_GET);
    assert_int_equal(srv_route_allowed(t_routes, T_NROUTES, B("/nope")), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(route_allowed__key_path__is_the_union_of_matching_routes),
        T(split_target__without_query__is_all_path_and_empty_query),
        T(split_target__with_query__splits_at_the_first_question_mark),
        T(split_target__trailing_question_mark__gives_an_empty_query),
        T(split_target__not_starting_with_a_slash__is_rejected),
        T(pct_decode__plain_text__is_unchanged),
        T(pct_decode__encoded_slash__decodes),
        T(pct_decode__mixed_case_hex__decodes),
        T(pct_decode__plus__stays_plus_in_paths_and_is_space_in_queries),
        T(pct_decode__bad_escapes__fail),
        T(pct_decode__percent_00__decodes_to_a_nul_byte),
        T(query_param__first_middle_and_last__are_found),
        T(query_param__absent__is_minus_one),
        T(query_param__empty_value__is_zero_length),
        T(query_param__value_longer_than_cap__is_minus_two),
        T(query_param__bad_escape__is_minus_two),
        T(query_param__name_that_prefixes_another__is_not_confused),
        T(query_param__value__is_decoded_with_plus_as_space),
        T(query_param__repeated_name__gives_the_first),
        T(parse_int__bounds__are_inclusive),
        T(parse_int__outside_bounds__fails_and_leaves_out_alone),
        T(parse_int__non_canonical_text__fails),
        T(route_find__exact_paths__match_their_routes),
        T(route_find__store_path__captures_the_store),
        T(route_find__key_path__captures_store_and_raw_key),
        T(route_find__key_with_dots_and_double_slashes__is_captured_verbatim),
        T(route_find__empty_key__is_no_route),
        T(route_find__empty_store__is_no_route),
        T(route_find__patch_on_a_key__is_bad_method),
        T(route_find__method_a_path_does_not_take__is_bad_method),
        T(route_find__unknown_path__is_no_route),
        T(route_find__root__does_not_match_other_paths),
        T(method_bit__http_parser_methods__map_to_their_bits),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
