/*
 * test_tls.c - unit tests of server/srv_tls.c: loading and matching the
 * certificate and key, and a server session driven through its memory
 * BIOs against an OpenSSL client that is also on memory BIOs, so no socket
 * is involved. The certificates are made in the process (EC P-256,
 * self-signed) and written with mkstemp under /tmp.
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
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "server/srv_tls.h"

#define PUMP_ROUNDS_MAX 16 /* handshake flights exchanged at most */
#define IO_BYTES 16384

typedef struct pem_pair {
    char cert[64]; /* temporary file paths */
    char key[64];
} pem_pair;

typedef struct fixture {
    pem_pair a, b; /* two unrelated certificate/key pairs */
    srv_tls_ctx *ctx;
    srv_tls *srv;
    SSL_CTX *client_ctx;
    SSL *client;
    BIO *client_in, *client_out; /* owned by client */
    char plain[IO_BYTES];        /* what the server session passed on */
    size_t plain_len;
    char err[256];
} fixture;

/* A self-signed P-256 certificate for CN=127.0.0.1 and its key, as PEM
 * files in p. */
static void make_pem_pair(pem_pair *p)
{
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *name;
    FILE *f;
    int fd;

    assert_non_null(pkey);
    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, pkey);
    name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               (const unsigned char *)"127.0.0.1", -1, -1, 0);
    X509_set_issuer_name(x, name);
    assert_true(X509_sign(x, pkey, EVP_sha256()) > 0);

    snprintf(p->cert, sizeof p->cert, "/tmp/kvbus-test-tls-XXXXXX");
    fd = mkstemp(p->cert);
    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509(f, x), 1);
    fclose(f);
    snprintf(p->key, sizeof p->key, "/tmp/kvbus-test-tls-XXXXXX");
    fd = mkstemp(p->key);
    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL),
                     1);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(pkey);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);

    assert_non_null(f);
    make_pem_pair(&f->a);
    make_pem_pair(&f->b);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    SSL_free(f->client);
    SSL_CTX_free(f->client_ctx);
    srv_tls_free(f->srv);
    srv_tls_ctx_free(f->ctx);
    unlink(f->a.cert);
    unlink(f->a.key);
    unlink(f->b.cert);
    unlink(f->b.key);
    free(f);
    return 0;
}

/* A client trusting ca_path, offering TLS up to max_version. */
static void client_new(fixture *f, const char *ca_path, int max_version)
{
    f->client_ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(f->client_ctx);
    SSL_CTX_set_max_proto_version(f->client_ctx, max_version);
    assert_int_equal(
        SSL_CTX_load_verify_locations(f->client_ctx, ca_path, NULL), 1);
    SSL_CTX_set_verify(f->client_ctx, SSL_VERIFY_PEER, NULL);
    f->client = SSL_new(f->client_ctx);
    f->client_in = BIO_new(BIO_s_mem());
    f->client_out = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(f->client_in, -1);
    SSL_set_bio(f->client, f->client_in, f->client_out);
    SSL_set_connect_state(f->client);
}

static bool keep_plain(void *ud, const char *p, size_t n)
{
    fixture *f = ud;

    assert_true(f->plain_len + n <= sizeof f->plain);
    memcpy(f->plain + f->plain_len, p, n);
    f->plain_len += n;
    return true;
}

/* Moves the client's output to the server session; returns its status. */
static int client_to_server(fixture *f)
{
    char buf[IO_BYTES];
    int n, rc = SRV_TLS_OK;

    while ((n = BIO_read(f->client_out, buf, sizeof buf)) > 0) {
        rc = srv_tls_read(f->srv, buf, (size_t)n, keep_plain, f, f->err,
                          sizeof f->err);
        if (rc != SRV_TLS_OK)
            break;
    }
    return rc;
}

/* Moves the server session's output to the client. */
static void server_to_client(fixture *f)
{
    char buf[IO_BYTES];
    size_t n;

    while ((n = srv_tls_take_out(f->srv, buf, sizeof buf)) > 0)
        assert_int_equal(BIO_write(f->client_in, buf, (int)n), (int)n);
}

/* Runs the handshake; returns the server's last status. */
static int handshake(fixture *f)
{
    int i, rc = SRV_TLS_OK;

    for (i = 0; i < PUMP_ROUNDS_MAX; i++) {
        SSL_do_handshake(f->client);
        rc = client_to_server(f);
        server_to_client(f);
        if (rc != SRV_TLS_OK ||
            (SSL_is_init_finished(f->client) && srv_tls_established(f->srv)))
            break;
    }
    return rc;
}

/* ------------------------------------------------------------------ */

static void ctx__matching_cert_and_key__loads(void **state)
{
    fixture *f = *state;

    f->ctx = srv_tls_ctx_new(f->a.cert, f->a.key, "1.2", f->err, sizeof f->err);
    assert_non_null(f->ctx);
}

static void ctx__key_of_another_cert__names_tls_key(void **state)
{
    fixture *f = *state;

    f->ctx = srv_tls_ctx_new(f->a.cert, f->b.key, "1.2", f->err, sizeof f->err);
    assert_null(f->ctx);
    assert_non_null(strstr(f->err, "[server] tls_key: "));
    assert_non_null(strstr(f->err, f->b.key));
    assert_null(strchr(f->err, '\n'));
}

static void ctx__key_file_as_certificate__names_tls_cert(void **state)
{
    fixture *f = *state;

    f->ctx = srv_tls_ctx_new(f->a.key, f->a.key, "1.2", f->err, sizeof f->err);
    assert_null(f->ctx);
    assert_non_null(strstr(f->err, "[server] tls_cert: "));
    assert_non_null(strstr(f->err, "not a usable PEM certificate"));
}

static void session__handshake_then_data__both_ways(void **state)
{
    fixture *f = *state;
    char buf[64];
    int n;

    f->ctx = srv_tls_ctx_new(f->a.cert, f->a.key, "1.2", f->err, sizeof f->err);
    assert_non_null(f->ctx);
    f->srv = srv_tls_new(f->ctx);
    client_new(f, f->a.cert, TLS1_3_VERSION);
    assert_false(srv_tls_established(f->srv));
    assert_int_equal(handshake(f), SRV_TLS_OK);
    assert_true(srv_tls_established(f->srv));
    assert_int_equal(SSL_get_verify_result(f->client), X509_V_OK);

    assert_int_equal(SSL_write(f->client, "GET / HTTP/1.1\r\n", 16), 16);
    assert_int_equal(client_to_server(f), SRV_TLS_OK);
    assert_int_equal(f->plain_len, 16);
    assert_memory_equal(f->plain, "GET / HTTP/1.1\r\n", 16);

    assert_int_equal(srv_tls_write(f->srv, "HTTP/1.1 200 OK\r\n", 17), 0);
    assert_true(srv_tls_out_len(f->srv) > 17); /* framed and encrypted */
    server_to_client(f);
    assert_int_equal(srv_tls_out_len(f->srv), 0);
    n = SSL_read(f->client, buf, sizeof buf);
    assert_int_equal(n, 17);
    assert_memory_equal(buf, "HTTP/1.1 200 OK\r\n", 17);
}

static void session__close_notify_from_client__reported_closed(void **state)
{
    fixture *f = *state;

    f->ctx = srv_tls_ctx_new(f->a.cert, f->a.key, "1.2", f->err, sizeof f->err);
    f->srv = srv_tls_new(f->ctx);
    client_new(f, f->a.cert, TLS1_3_VERSION);
    assert_int_equal(handshake(f), SRV_TLS_OK);
    SSL_shutdown(f->client);
    assert_int_equal(client_to_server(f), SRV_TLS_CLOSED);
}

static void session__server_close_notify__client_sees_it(void **state)
{
    fixture *f = *state;
    char buf[8];

    f->ctx = srv_tls_ctx_new(f->a.cert, f->a.key, "1.2", f->err, sizeof f->err);
    f->srv = srv_tls_new(f->ctx);
    client_new(f, f->a.cert, TLS1_3_VERSION);
    assert_int_equal(handshake(f), SRV_TLS_OK);
    srv_tls_close_notify(f->srv);
    srv_tls_close_notify(f->srv); /* once only */
    server_to_client(f);
    assert_int_equal(SSL_read(f->client, buf, sizeof buf), 0);
    assert_int_equal(SSL_get_error(f->client, 0), SSL_ERROR_ZERO_RETURN);
}

static void session__plain_http__fails_with_a_reason(void **state)
{
    fixture *f = *state;
    static const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

    f->ctx = srv_tls_ctx_new(f->a.cert, f->a.key, "1.2", f->err, sizeof f->err);
    f->srv = srv_tls_new(f->ctx);
    assert_int_equal(srv_tls_read(f->srv, req, sizeof req - 1, keep_plain, f,
                                  f->err, sizeof f->err),
                     SRV_TLS_FAILED);
    assert_true(strlen(f->err) > 0);
    assert_false(srv_tls_established(f->srv));
    assert_int_equal(f->plain_len, 0);
}

static void session__partial_client_hello__waits_for_more(void **state)
{
    fixture *f = *state;
    static const char part[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01};

    f->ctx = srv_tls_ctx_new(f->a.cert, f->a.key, "1.2", f->err, sizeof f->err);
    f->srv = srv_tls_new(f->ctx);
    assert_int_equal(srv_tls_read(f->srv, part, sizeof part, keep_plain, f,
                                  f->err, sizeof f->err),
                     SRV_TLS_OK);
    assert_false(srv_tls_established(f->srv));
    assert_int_equal(srv_tls_out_len(f->srv), 0);
}

static void session__min_version_13__refuses_a_tls12_client(void **state)
{
    fixture *f = *state;

    f->ctx = srv_tls_ctx_new(f->a.cert, f->a.key, "1.3", f->err, sizeof f->err);
    f->srv = srv_tls_new(f->ctx);
    client_new(f, f->a.cert, TLS1_2_VERSION);
    assert_int_equal(handshake(f), SRV_TLS_FAILED);
    assert_false(srv_tls_established(f->srv));
}

static void session__client_trusting_another_ca__fails_verify(void **state)
{
    fixture *f = *state;

    f->ctx = srv_tls_ctx_new(f->a.cert, f->a.key, "1.2", f->err, sizeof f->err);
    f->srv = srv_tls_new(f->ctx);
    client_new(f, f->b.cert, TLS1_3_VERSION);
    handshake(f);
    assert_false(SSL_is_init_finished(f->client));
    assert_int_not_equal(SSL_get_verify_result(f->client), X509_V_OK);
}

static void free__null__is_harmless(void **state)
{
    (void)state;
    srv_tls_free(NULL);
    srv_tls_ctx_free(NULL);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(ctx__matching_cert_and_key__loads),
        T(ctx__key_of_another_cert__names_tls_key),
        T(ctx__key_file_as_certificate__names_tls_cert),
        T(session__handshake_then_data__both_ways),
        T(session__close_notify_from_client__reported_closed),
        T(session__server_close_notify__client_sees_it),
        T(session__plain_http__fails_with_a_reason),
        T(session__partial_client_hello__waits_for_more),
        T(session__min_version_13__refuses_a_tls12_client),
        T(session__client_trusting_another_ca__fails_verify),
        cmocka_unit_test(free__null__is_harmless),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
