/*
 * kv_errors.h - the error codes of the kvstore module.
 *
 * Every code comes from the one X-macro list below, which also generates
 * kv_strerror() and the HTTP status the server maps each code to, so a new
 * code is added in exactly one place. Success is 0; errors are negative.
 * "Absent" is never an error: lookups report it in their reply.
 */
#ifndef KV_ERRORS_H
#define KV_ERRORS_H

/* X(name, value, http_status, "api code", "message") */
#define KV_ERRNO_MAP(X)                                                        \
    X(EINVAL, -1, 400, "bad_request", "invalid argument")                      \
    X(EKEY, -2, 400, "bad_key", "invalid key")                                 \
    X(ESTORE, -3, 400, "bad_store", "invalid store name")                      \
    X(ETOOBIG, -4, 413, "too_large", "value too large")                        \
    X(ENOTINT, -5, 409, "not_integer", "value is not a 64-bit integer")        \
    X(EOVERFLOW, -6, 409, "overflow", "integer overflow")                      \
    X(EUNAVAIL, -7, 503, "unavailable", "backend unavailable")                 \
    X(ETIMEDOUT, -8, 503, "timeout", "backend call timed out")                 \
    X(ENOMEM, -9, 503, "no_memory", "out of memory")                           \
    X(ENOTSUP, -10, 405, "not_supported", "operation not supported")           \
    X(ELIMIT, -11, 400, "limit", "limit exceeded")                             \
    X(ECURSOR, -12, 400, "bad_cursor", "invalid cursor")                       \
    X(ETOPIC, -13, 400, "bad_topic", "invalid topic")

enum kv_errno {
#define KV__ERR_ENUM(name, value, status, code, msg) KV_##name = value,
    KV_ERRNO_MAP(KV__ERR_ENUM)
#undef KV__ERR_ENUM
};

/* A static English sentence for a code; "unknown error" for anything else. */
const char *kv_strerror(int err);
/* A short machine-readable code ("bad_key"); "internal" for unknown codes. */
const char *kv_errcode(int err);
/* The HTTP status a code maps to; 500 for unknown codes. */
int kv_errstatus(int err);

#define KV_ERR_MSG_BYTES 256

/*
 * Detail for an error, filled where it happens (a backend copies
 * PQerrorMessage or a Redis reply here). Caller-owned, usually on the stack.
 */
typedef struct kv_err {
    int code;                   /* a KV_E* value, 0 when none */
    char msg[KV_ERR_MSG_BYTES]; /* one human sentence, NUL-terminated */
} kv_err;

/* Records code and a printf-style message in err (err may be NULL). Returns
 * code, so a caller can write `return kv_err_set(err, KV_EKEY, ...)`. */
int kv_err_set(kv_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
