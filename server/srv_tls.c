/*
 * srv_tls.c - OpenSSL behind memory BIOs for kvbusd's connections. See
 * srv_tls.h for the contract and docs/architecture.md for why TLS is done
 * here rather than by a library owning the socket.
 *
 * Each session has two memory BIOs: ciphertext read from the socket is
 * written into `in`, OpenSSL's records to send accumulate in `out`. OpenSSL
 * never sees a file descriptor, so it never blocks and never reads or writes
 * behind libuv's back; "want read" only means "feed me more bytes".
 *
 * Settings: TLS 1.2 or 1.3 (configurable floor), forward-secret AEAD
 * ciphers only for TLS 1.2 (OpenSSL's defaults for 1.3), no compression,
 * no renegotiation, server cipher preference, buffers released while a
 * connection is idle.
 *
 * Runs on: the event loop thread (srv_tls_ctx_new also at start-up).
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "server/srv_tls.h"

#define SRV_TLS_PLAIN_CHUNK 16384 /* one TLS record of plaintext */
#define SRV_TLS_CIPHERS_12                                                     \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"               \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"               \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

struct srv_tls_ctx {
    SSL_CTX *ssl_ctx;
};

struct srv_tls {
    SSL *ssl;
    BIO *in;  /* ciphertext from the peer; owned by ssl */
    BIO *out; /* ciphertext for the peer; owned by ssl */
    bool shutdown_sent;
};

/* OpenSSL's first queued error as text, or fallback; clears the queue. */
static void ssl_reason(char *buf, size_t len, const char *fallback)
{
    unsigned long e = ERR_get_error();

    if (!buf || len == 0)
        return;
    if (e)
        ERR_error_string_n(e, buf, len);
    else
        snprintf(buf, len, "%s", fallback);
    ERR_clear_error();
}

srv_tls_ctx *srv_tls_ctx_new(const char *cert_path, const char *key_path,
                             const char *min_version, char *err, size_t errlen)
{
    srv_tls_ctx *ctx = calloc(1, sizeof *ctx);
    char why[256];
    int floor =
        strcmp(min_version, "1.3") == 0 ? TLS1_3_VERSION : TLS1_2_VERSION;

    ERR_clear_error();
    if (!ctx || !(ctx->ssl_ctx = SSL_CTX_new(TLS_server_method()))) {
        snprintf(err, errlen, "TLS: out of memory");
        goto fail;
    }
    SSL_CTX_set_min_proto_version(ctx->ssl_ctx, floor);
    SSL_CTX_set_options(ctx->ssl_ctx, SSL_OP_NO_COMPRESSION |
                                          SSL_OP_NO_RENEGOTIATION |
                                          SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx->ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_set_cipher_list(ctx->ssl_ctx, SRV_TLS_CIPHERS_12) != 1) {
        ssl_reason(why, sizeof why, "no usable cipher");
        snprintf(err, errlen, "TLS: cipher list refused: %s", why);
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx->ssl_ctx, cert_path) != 1) {
        ssl_reason(why, sizeof why, "unreadable");
        snprintf(err, errlen,
                 "[server] tls_cert: %s is not a usable PEM certificate: %s",
                 cert_path, why);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx->ssl_ctx, key_path, SSL_FILETYPE_PEM) !=
        1) {
        ssl_reason(why, sizeof why, "unreadable");
        snprintf(err, errlen,
                 "[server] tls_key: %s is not a usable PEM private key, or "
                 "not the key of tls_cert %s: %s",
                 key_path, cert_path, why);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx->ssl_ctx) != 1) {
        ssl_reason(why, sizeof why, "mismatch");
        snprintf(err, errlen,
                 "[server] tls_key: %s does not match the certificate in %s: "
                 "%s",
                 key_path, cert_path, why);
        goto fail;
    }
    return ctx;
fail:
    srv_tls_ctx_free(ctx);
    return NULL;
}

void srv_tls_ctx_free(srv_tls_ctx *ctx)
{
    if (!ctx)
        return;
    SSL_CTX_free(ctx->ssl_ctx);
    free(ctx);
}

srv_tls *srv_tls_new(srv_tls_ctx *ctx)
{
    srv_tls *t = calloc(1, sizeof *t);

    if (!t)
        return NULL;
    t->ssl = SSL_new(ctx->ssl_ctx);
    t->in = BIO_new(BIO_s_mem());
    t->out = BIO_new(BIO_s_mem());
    if (!t->ssl || !t->in || !t->out) {
        SSL_free(t->ssl);
        BIO_free(t->in);
        BIO_free(t->out);
        free(t);
        return NULL;
    }
    /* An empty input BIO means "retry later", not end of file. */
    BIO_set_mem_eof_return(t->in, -1);
    BIO_set_mem_eof_return(t->out, -1);
    SSL_set_bio(t->ssl, t->in, t->out); /* ssl owns both now */
    SSL_set_accept_state(t->ssl);
    return t;
}

void srv_tls_free(srv_tls *t)
{
    if (!t)
        return;
    SSL_free(t->ssl);
    free(t);
}

bool srv_tls_established(const srv_tls *t)
{
    return SSL_is_init_finished(t->ssl);
}

int srv_tls_read(srv_tls *t, const char *data, size_t len,
                 bool (*on_plain)(void *ud, const char *p, size_t n), void *ud,
                 char *reason, size_t reasonlen)
{
    char plain[SRV_TLS_PLAIN_CHUNK];
    int n, e;

    ERR_clear_error();
    if (len > 0 && BIO_write(t->in, data, (int)len) != (int)len)
        return SRV_TLS_NOMEM;
    if (!SSL_is_init_finished(t->ssl)) {
        n = SSL_do_handshake(t->ssl);
        if (n <= 0) {
            e = SSL_get_error(t->ssl, n);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return SRV_TLS_OK;
            ssl_reason(reason, reasonlen, "handshake failed");
            return SRV_TLS_FAILED;
        }
    }
    for (;;) {
        n = SSL_read(t->ssl, plain, sizeof plain);
        if (n > 0) {
            if (!on_plain(ud, plain, (size_t)n))
                return SRV_TLS_STOPPED;
            continue;
        }
        e = SSL_get_error(t->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return SRV_TLS_OK;
        if (e == SSL_ERROR_ZERO_RETURN)
            return SRV_TLS_CLOSED;
        ssl_reason(reason, reasonlen, "record error");
        return SRV_TLS_FAILED;
    }
}

int srv_tls_write(srv_tls *t, const void *data, size_t len)
{
    if (len == 0)
        return 0;
    if (len > (size_t)INT_MAX)
        return -1;
    ERR_clear_error();
    /* A memory BIO never pushes back, so one call takes everything. */
    if (SSL_write(t->ssl, data, (int)len) != (int)len) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}

void srv_tls_close_notify(srv_tls *t)
{
    if (t->shutdown_sent || !SSL_is_init_finished(t->ssl))
        return;
    t->shutdown_sent = true;
    ERR_clear_error();
    SSL_shutdown(t->ssl); /* queues the alert; we do not wait for the peer's */
    ERR_clear_error();
}

size_t srv_tls_out_len(const srv_tls *t)
{
    return BIO_ctrl_pending(t->out);
}

size_t srv_tls_take_out(srv_tls *t, char *buf, size_t cap)
{
    int n;

    if (cap > (size_t)INT_MAX)
        cap = (size_t)INT_MAX;
    n = BIO_read(t->out, buf, (int)cap);
    return n > 0 ? (size_t)n : 0;
}
