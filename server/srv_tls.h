/*
 * srv_tls.h - TLS for kvbusd's listener, with OpenSSL driven through
 * memory BIOs so that the socket stays in libuv's hands.
 *
 * One srv_tls_ctx holds the certificate, key and settings of the listener;
 * each connection has one srv_tls session. The connection code reads
 * ciphertext from the socket and hands it to srv_tls_read(), which runs the
 * handshake and passes the plaintext on; it queues plaintext with
 * srv_tls_write() and takes the ciphertext to send with srv_tls_take_out(),
 * so everything written during one loop turn leaves in one socket write.
 * Nothing here touches a socket, a timer or the loop.
 *
 * Left out: client certificates, session tickets across restarts, ALPN
 * (kvbusd speaks HTTP/1.1 only), reloading the certificate at run time.
 *
 * Runs on: the event loop thread (srv_tls_ctx_new also at start-up).
 */
#ifndef SRV_TLS_H
#define SRV_TLS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct srv_tls_ctx srv_tls_ctx;
typedef struct srv_tls srv_tls;

/* What srv_tls_read() found. */
enum srv_tls_status {
    SRV_TLS_OK = 0,       /* all input consumed; more may come */
    SRV_TLS_CLOSED = 1,   /* the peer sent close_notify */
    SRV_TLS_FAILED = -1,  /* handshake or record error: close the socket */
    SRV_TLS_NOMEM = -2,   /* out of memory */
    SRV_TLS_STOPPED = -3, /* on_plain asked to stop (the caller closes) */
};

/*
 * A context serving the PEM certificate chain at cert_path with the private
 * key at key_path, refusing protocol versions below min_version ("1.2" or
 * "1.3"). Checks that both files load and that the key matches the
 * certificate. Returns NULL with one line in err (naming the file and
 * OpenSSL's reason) otherwise.
 */
srv_tls_ctx *srv_tls_ctx_new(const char *cert_path, const char *key_path,
                             const char *min_version, char *err, size_t errlen);

/* Frees the context; sessions made from it must be gone. Accepts NULL. */
void srv_tls_ctx_free(srv_tls_ctx *ctx);

/* A server-side session for one accepted connection; NULL when memory
 * runs out. */
srv_tls *srv_tls_new(srv_tls_ctx *ctx);

/* Frees the session. Accepts NULL. */
void srv_tls_free(srv_tls *t);

/*
 * Feeds len bytes of ciphertext, advances the handshake, and calls
 * on_plain(ud, bytes, n) for every run of decrypted application data, in
 * order. on_plain returns false to stop (then SRV_TLS_STOPPED is
 * returned and the rest is dropped). Handshake records to send are left
 * for srv_tls_take_out(). On SRV_TLS_FAILED, reason (when non-NULL) gets a
 * short description for a debug log line.
 */
int srv_tls_read(srv_tls *t, const char *data, size_t len,
                 bool (*on_plain)(void *ud, const char *p, size_t n), void *ud,
                 char *reason, size_t reasonlen);

/* Encrypts len bytes of application data for srv_tls_take_out(). Call only
 * once srv_tls_established(). Returns 0, or -1 on an error. */
int srv_tls_write(srv_tls *t, const void *data, size_t len);

/* Queues a close_notify alert (once). */
void srv_tls_close_notify(srv_tls *t);

/* Ciphertext waiting to be sent, in bytes. */
size_t srv_tls_out_len(const srv_tls *t);

/*
 * Moves up to cap bytes of waiting ciphertext into buf; returns how many.
 */
size_t srv_tls_take_out(srv_tls *t, char *buf, size_t cap);

/* True once the handshake has completed. */
bool srv_tls_established(const srv_tls *t);

#endif
