/*
 * test_auth.c - unit tests of server/srv_auth.c: the tokens file parser
 * and its errors (which must never echo a token), token lookup, the
 * Bearer header, and the per-action checks with exact and prefix
 * patterns, including subscription pattern coverage. Pure functions: no
 * sockets, no loop. Left out: the HTTP and WebSocket wiring (e2e auth).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "server/srv_auth.h"

#define TEST(name) static void name(void **state __attribute__((unused)))

#define T_ERR_BYTES 512

#define ALICE "alice-0123456789abcdef"
#define BOB "bob-fedcba9876543210xx"
#define CAROL "carol-secret-token-0001"

static const char good_file[] =
    "# kvbus tokens\n"
    "\n"
    "alice " ALICE " kv:read:* kv:write:cache* topic:sub:news.* "
    "topic:pub:news.eu admin\n"
    "  bob\t" BOB " kv:read:cache\r\n"
    "carol " CAROL " topic:sub:* topic:pub:*\n";

/* Parses text (a string literal or buffer) into *a; asserts success. */
static srv_auth *parse_ok(const char *text)
{
    char err[T_ERR_BYTES];
    srv_auth *a = NULL;

    if (srv_auth_parse(text, strlen(text), "tokens", &a, err, sizeof err))
        fail_msg("unexpected parse error: %s", err);
    return a;
}

/* Parses text expecting a failure; returns the message in err. */
static void parse_bad(const char *text, char *err)
{
    srv_auth *a = (srv_auth *)1;

    assert_int_equal(
        srv_auth_parse(text, strlen(text), "tokens", &a, err, T_ERR_BYTES), -1);
    assert_null(a);
}

static const srv_token *find(const srv_auth *a, const char *tok)
{
    return srv_auth_find(a, tok, strlen(tok));
}

static bool allows(const srv_token *t, enum srv_auth_action act,
                   const char *name)
{
    return srv_token_allows(t, act, name, strlen(name));
}

/* ------------------------------------------------------------------ */
/* Parsing                                                              */

TEST(parse__good_file__has_three_tokens_named_as_written)
{
    srv_auth *a = parse_ok(good_file);

    assert_int_equal(srv_auth_count(a), 3);
    assert_string_equal(srv_token_name(find(a, ALICE)), "alice");
    assert_string_equal(srv_token_name(find(a, BOB)), "bob");
    assert_string_equal(srv_token_name(find(a, CAROL)), "carol");
    srv_auth_free(a);
}

TEST(parse__unknown_permission__fails_with_line_and_no_token)
{
    char err[T_ERR_BYTES];

    parse_bad("# c\nalice " ALICE " kv:read:a\nbob " BOB " kv:delete:x\n", err);
    assert_non_null(strstr(err, "tokens:3: "));
    assert_non_null(strstr(err, "unknown permission \"kv:delete:x\""));
    assert_null(strstr(err, BOB));
}

TEST(parse__unknown_permission_without_colon__is_not_echoed)
{
    char err[T_ERR_BYTES];

    parse_bad("alice " ALICE " " BOB "\n", err);
    assert_non_null(strstr(err, "tokens:1: "));
    assert_non_null(strstr(err, "unknown permission (a word without"));
    assert_null(strstr(err, BOB));
    assert_null(strstr(err, ALICE));
}

TEST(parse__short_token__fails_without_echoing_it)
{
    char err[T_ERR_BYTES];

    parse_bad("alice short-secret1 kv:read:*\n", err);
    assert_non_null(strstr(err, "tokens:1: "));
    assert_non_null(strstr(err, "13 characters"));
    assert_null(strstr(err, "short-secret1"));
}

TEST(parse__duplicate_token__fails_naming_both_and_no_token)
{
    char err[T_ERR_BYTES];

    parse_bad("alice " ALICE " kv:read:*\nbob " ALICE " kv:read:*\n", err);
    assert_non_null(strstr(err, "tokens:2: "));
    assert_non_null(strstr(err, "\"alice\" (line 1)"));
    assert_null(strstr(err, ALICE));
}

TEST(parse__duplicate_name__fails)
{
    char err[T_ERR_BYTES];

    parse_bad("alice " ALICE " kv:read:*\nalice " BOB " kv:read:*\n", err);
    assert_non_null(strstr(err, "tokens:2: "));
    assert_non_null(strstr(err, "name already used on line 1"));
}

TEST(parse__line_without_permissions__fails)
{
    char err[T_ERR_BYTES];

    parse_bad("alice " ALICE "\n", err);
    assert_non_null(strstr(err, "no permissions"));
    assert_null(strstr(err, ALICE));
}

TEST(parse__bad_patterns__fail)
{
    char err[T_ERR_BYTES];

    parse_bad("a " ALICE " kv:read:a*b\n", err);
    assert_non_null(strstr(err, "bad store pattern"));
    parse_bad("a " ALICE " kv:read:a/b\n", err);
    assert_non_null(strstr(err, "bad store pattern"));
    parse_bad("a " ALICE " topic:sub:\n", err);
    assert_non_null(strstr(err, "bad topic pattern"));
    parse_bad("a " ALICE " topic:pub:x**\n", err);
    assert_non_null(strstr(err, "bad topic pattern"));
}

TEST(parse__bad_name_or_control_character__fails)
{
    char err[T_ERR_BYTES];

    parse_bad("al/ice " ALICE " admin\n", err);
    assert_non_null(strstr(err, "bad token name"));
    parse_bad("alice " ALICE " admin\x01\n", err);
    assert_non_null(strstr(err, "control character"));
}

TEST(parse__only_comments__fails_with_no_tokens)
{
    char err[T_ERR_BYTES];

    parse_bad("# nothing\n\n   \n", err);
    assert_non_null(strstr(err, "no tokens"));
}

TEST(load__missing_file__fails_with_cannot_read)
{
    char err[T_ERR_BYTES];
    srv_auth *a = (srv_auth *)1;

    assert_int_equal(
        srv_auth_load("/nonexistent/kvbus-tokens", &a, err, sizeof err), -1);
    assert_null(a);
    assert_non_null(strstr(err, "/nonexistent/kvbus-tokens: cannot read"));
}

TEST(load__file_on_disk__parses_like_text)
{
    char path[] = "/tmp/kvbus-test-auth-XXXXXX", err[T_ERR_BYTES];
    int fd = mkstemp(path);
    srv_auth *a = NULL;

    assert_true(fd >= 0);
    assert_int_equal(write(fd, good_file, strlen(good_file)),
                     (ssize_t)strlen(good_file));
    close(fd);
    assert_int_equal(srv_auth_load(path, &a, err, sizeof err), 0);
    unlink(path);
    assert_int_equal(srv_auth_count(a), 3);
    srv_auth_free(a);
}

/* ------------------------------------------------------------------ */
/* Lookup and Bearer                                                    */

TEST(find__unknown_or_prefix_of_a_token__is_null)
{
    srv_auth *a = parse_ok(good_file);

    assert_null(find(a, "alice-0123456789abcdeX"));
    assert_null(srv_auth_find(a, ALICE, strlen(ALICE) - 1));
    assert_null(find(a, ""));
    srv_auth_free(a);
}

TEST(find_digest__of_a_found_token__is_the_same_token)
{
    srv_auth *a = parse_ok(good_file);
    const srv_token *t = find(a, BOB);

    assert_ptr_equal(srv_auth_find_digest(a, srv_token_digest(t)), t);
    srv_auth_free(a);
}

TEST(bearer__scheme_any_case_and_spaces__gives_the_token)
{
    const char *tok;
    size_t len;

    assert_true(srv_auth_bearer("Bearer abc", &tok, &len));
    assert_int_equal(len, 3);
    assert_memory_equal(tok, "abc", 3);
    assert_true(srv_auth_bearer("  bEaReR \t abc  ", &tok, &len));
    assert_int_equal(len, 3);
    assert_false(srv_auth_bearer("Basic abc", &tok, &len));
    assert_false(srv_auth_bearer("Bearer", &tok, &len));
    assert_false(srv_auth_bearer("Bearer   ", &tok, &len));
    assert_false(srv_auth_bearer("Bearerabc", &tok, &len));
    assert_false(srv_auth_bearer(NULL, &tok, &len));
}

TEST(check__missing_invalid_forbidden_ok)
{
    srv_auth *a = parse_ok(good_file);
    const srv_token *who;

    assert_int_equal(srv_auth_check(a, NULL, SRV_AUTH_ANY, "", 0, &who),
                     SRV_AUTH_MISSING);
    assert_null(who);
    assert_int_equal(srv_auth_check(a, "Bearer nope-nope-nope-nope",
                                    SRV_AUTH_ANY, "", 0, &who),
                     SRV_AUTH_INVALID);
    assert_int_equal(srv_auth_check(a, "Basic " BOB, SRV_AUTH_ANY, "", 0, &who),
                     SRV_AUTH_INVALID);
    assert_int_equal(
        srv_auth_check(a, "Bearer " BOB, SRV_AUTH_KV_WRITE, "cache", 5, &who),
        SRV_AUTH_FORBIDDEN);
    assert_string_equal(srv_token_name(who), "bob");
    assert_int_equal(
        srv_auth_check(a, "Bearer " BOB, SRV_AUTH_KV_READ, "cache", 5, &who),
        SRV_AUTH_OK);
    assert_int_equal(
        srv_auth_check(a, "Bearer " BOB, SRV_AUTH_ANY, "", 0, NULL),
        SRV_AUTH_OK);
    srv_auth_free(a);
}

/* ------------------------------------------------------------------ */
/* Rights                                                               */

TEST(allows__kv_exact_and_prefix_patterns)
{
    srv_auth *a = parse_ok(good_file);
    const srv_token *alice = find(a, ALICE), *bob = find(a, BOB);

    assert_true(allows(alice, SRV_AUTH_KV_READ, "anything"));
    assert_true(allows(alice, SRV_AUTH_KV_WRITE, "cache"));
    assert_true(allows(alice, SRV_AUTH_KV_WRITE, "cache-2"));
    assert_false(allows(alice, SRV_AUTH_KV_WRITE, "cach"));
    assert_false(allows(alice, SRV_AUTH_KV_WRITE, "default"));
    assert_true(allows(bob, SRV_AUTH_KV_READ, "cache"));
    assert_false(allows(bob, SRV_AUTH_KV_READ, "cache2"));
    assert_false(allows(bob, SRV_AUTH_KV_WRITE, "cache"));
    srv_auth_free(a);
}

TEST(allows__admin_only_when_granted_and_any_for_every_token)
{
    srv_auth *a = parse_ok(good_file);

    assert_true(allows(find(a, ALICE), SRV_AUTH_ADMIN, ""));
    assert_false(allows(find(a, CAROL), SRV_AUTH_ADMIN, ""));
    assert_true(allows(find(a, BOB), SRV_AUTH_ANY, ""));
    assert_false(allows(NULL, SRV_AUTH_ANY, ""));
    srv_auth_free(a);
}

TEST(allows__publish_matches_topics)
{
    srv_auth *a = parse_ok(good_file);
    const srv_token *alice = find(a, ALICE), *carol = find(a, CAROL);

    assert_true(allows(alice, SRV_AUTH_TOPIC_PUB, "news.eu"));
    assert_false(allows(alice, SRV_AUTH_TOPIC_PUB, "news.us"));
    assert_false(allows(alice, SRV_AUTH_TOPIC_PUB, "news.eu.x"));
    assert_true(allows(carol, SRV_AUTH_TOPIC_PUB, "anything.at.all"));
    assert_false(allows(find(a, BOB), SRV_AUTH_TOPIC_PUB, "news.eu"));
    srv_auth_free(a);
}

TEST(allows__subscribe_pattern_only_when_covered)
{
    srv_auth *a = parse_ok(good_file);
    const srv_token *alice = find(a, ALICE), *carol = find(a, CAROL);

    /* alice holds topic:sub:news.* */
    assert_true(allows(alice, SRV_AUTH_TOPIC_SUB, "news.eu"));
    assert_true(allows(alice, SRV_AUTH_TOPIC_SUB, "news.*"));
    assert_true(allows(alice, SRV_AUTH_TOPIC_SUB, "news.eu.*"));
    assert_false(allows(alice, SRV_AUTH_TOPIC_SUB, "news*"));
    assert_false(allows(alice, SRV_AUTH_TOPIC_SUB, "*"));
    assert_false(allows(alice, SRV_AUTH_TOPIC_SUB, "kv.cache"));
    assert_true(allows(carol, SRV_AUTH_TOPIC_SUB, "*"));
    assert_true(allows(carol, SRV_AUTH_TOPIC_SUB, "kv.*"));
    srv_auth_free(a);
}

TEST(allows__exact_subscribe_grant_does_not_cover_a_pattern)
{
    srv_auth *a = parse_ok("d " ALICE " topic:sub:kv.cache\n");
    const srv_token *t = find(a, ALICE);

    assert_true(allows(t, SRV_AUTH_TOPIC_SUB, "kv.cache"));
    assert_false(allows(t, SRV_AUTH_TOPIC_SUB, "kv.cache*"));
    assert_false(allows(t, SRV_AUTH_TOPIC_SUB, "kv.*"));
    srv_auth_free(a);
}

TEST(shown__control_bytes_become_question_marks_and_long_names_are_cut)
{
    char out[SRV_AUTH_SHOWN_MAX + 1], longer[SRV_AUTH_SHOWN_MAX + 10];

    srv_auth_shown("a\nb\x7f\xc3\xa9"
                   "c",
                   7, out);
    assert_string_equal(out, "a?b???c");
    memset(longer, 'x', sizeof longer);
    srv_auth_shown(longer, sizeof longer, out);
    assert_int_equal(strlen(out), SRV_AUTH_SHOWN_MAX);
}

#define T(name) cmocka_unit_test(name)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(parse__good_file__has_three_tokens_named_as_written),
        T(parse__unknown_permission__fails_with_line_and_no_token),
        T(parse__unknown_permission_without_colon__is_not_echoed),
        T(parse__short_token__fails_without_echoing_it),
        T(parse__duplicate_token__fails_naming_both_and_no_token),
        T(parse__duplicate_name__fails),
        T(parse__line_without_permissions__fails),
        T(parse__bad_patterns__fail),
        T(parse__bad_name_or_control_character__fails),
        T(parse__only_comments__fails_with_no_tokens),
        T(load__missing_file__fails_with_cannot_read),
        T(load__file_on_disk__parses_like_text),
        T(find__unknown_or_prefix_of_a_token__is_null),
        T(find_digest__of_a_found_token__is_the_same_token),
        T(bearer__scheme_any_case_and_spaces__gives_the_token),
        T(check__missing_invalid_forbidden_ok),
        T(allows__kv_exact_and_prefix_patterns),
        T(allows__admin_only_when_granted_and_any_for_every_token),
        T(allows__publish_matches_topics),
        T(allows__subscribe_pattern_only_when_covered),
        T(allows__exact_subscribe_grant_does_not_cover_a_pattern),
        T(shown__control_bytes_become_question_marks_and_long_names_are_cut),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
