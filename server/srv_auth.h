/*
 * srv_auth.h - API tokens and what each may do: the tokens file parser, the
 * lookup of a presented token, and the check of one action on one store or
 * topic name. Pure functions over borrowed bytes and a table the caller
 * owns; no sockets, no loop, no logging (the caller logs, never a token).
 *
 * File format (docs/security.md): one token per line,
 *     <name> <token> <permission> [<permission>...]
 * blank lines and lines whose first non-blank character is '#' ignored.
 * Permissions: kv:read:<store-pattern>, kv:write:<store-pattern>,
 * topic:sub:<topic-pattern>, topic:pub:<topic-pattern>, admin. A pattern is
 * a name, or a prefix followed by one final '*' ("*" alone: every name).
 *
 * Tokens are kept only as SHA-256 digests and a presented token is compared
 * with every digest with CRYPTO_memcmp, so neither the file's bytes nor the
 * time taken tell which token came close.
 *
 * Runs on: any thread; a table is read-only once parsed.
 */
#ifndef SRV_AUTH_H
#define SRV_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SRV_AUTH_TOKEN_MIN 16    /* shortest token accepted, in bytes */
#define SRV_AUTH_TOKEN_MAX 256   /* longest token, within a header value */
#define SRV_AUTH_NAME_MAX 64     /* token names: [A-Za-z0-9_.-]{1,64} */
#define SRV_AUTH_DIGEST_BYTES 32 /* SHA-256 */
#define SRV_AUTH_FILE_MAX_BYTES (1024 * 1024)
#define SRV_AUTH_SHOWN_MAX 64 /* bytes of a name echoed in a message */

typedef struct srv_auth srv_auth;   /* a parsed tokens file */
typedef struct srv_token srv_token; /* one of its tokens */

/* What a request wants to do. */
enum srv_auth_action {
    SRV_AUTH_ANY,       /* anything: a valid token is enough (/readyz) */
    SRV_AUTH_KV_READ,   /* read store `name` */
    SRV_AUTH_KV_WRITE,  /* change store `name` */
    SRV_AUTH_TOPIC_SUB, /* subscribe to topic or pattern `name` */
    SRV_AUTH_TOPIC_PUB, /* publish on topic `name` */
    SRV_AUTH_ADMIN,     /* operator routes: /metrics, /v1/stats, ... */
};

/* The outcome of a check; the order is the metric label order. */
enum srv_auth_result {
    SRV_AUTH_OK = 0,
    SRV_AUTH_MISSING,   /* no token presented: 401 */
    SRV_AUTH_INVALID,   /* not a token of the table: 401 */
    SRV_AUTH_FORBIDDEN, /* a valid token without the right: 403 */
    SRV_AUTH__COUNT
};

/* Failures by reason, for /metrics (index = enum srv_auth_result). */
typedef struct srv_auth_stats {
    uint64_t failures[SRV_AUTH__COUNT];
} srv_auth_stats;

/*
 * Parses the text of a tokens file (len bytes, need not end in NUL). path
 * only names the file in errors. Returns 0 and a new table in *out, or -1
 * with one line in err ("<path>:<line>: <problem>"), which never contains a
 * token. Errors: unknown permission, bad pattern or name, token shorter
 * than SRV_AUTH_TOKEN_MIN or with a space or control byte, a line without
 * permissions, a repeated name or token, no token at all.
 */
int srv_auth_parse(const char *text, size_t len, const char *path,
                   srv_auth **out, char *err, size_t errlen);

/* Reads path and parses it (the same errors, plus "cannot read"). */
int srv_auth_load(const char *path, srv_auth **out, char *err, size_t errlen);

/* Frees a table. Accepts NULL. */
void srv_auth_free(srv_auth *a);

size_t srv_auth_count(const srv_auth *a);

/*
 * The token of the table whose value is token (len bytes), or NULL. Every
 * entry is compared, in constant time per entry.
 */
const srv_token *srv_auth_find(const srv_auth *a, const char *token,
                               size_t len);

/* The token whose SHA-256 digest is digest, or NULL (for connections that
 * keep the digest and look their token up again after a reload). */
const srv_token *srv_auth_find_digest(const srv_auth *a,
                                      const unsigned char *digest);

const char *srv_token_name(const srv_token *t);
const unsigned char *srv_token_digest(const srv_token *t);

/*
 * Whether t may do action on name (len bytes): a store name for kv
 * actions, a topic for publish, a topic or pattern for subscribe (allowed
 * only when one of t's patterns matches every topic the requested pattern
 * can match). name is ignored for SRV_AUTH_ANY and SRV_AUTH_ADMIN.
 */
bool srv_token_allows(const srv_token *t, enum srv_auth_action action,
                      const char *name, size_t len);

/*
 * The value of an "Authorization: Bearer <token>" header (NULL = absent).
 * Sets *token and *len to the token bytes inside header and returns true;
 * returns false for another scheme or an empty token.
 */
bool srv_auth_bearer(const char *header, const char **token, size_t *len);

/*
 * The whole check for one request: finds the bearer token of header (NULL
 * = no header) in a and checks action on name. *who (may be NULL) gets the
 * token when it is valid, even when forbidden.
 */
enum srv_auth_result srv_auth_check(const srv_auth *a, const char *header,
                                    enum srv_auth_action action,
                                    const char *name, size_t len,
                                    const srv_token **who);

/*
 * Copies at most SRV_AUTH_SHOWN_MAX bytes of a client-sent name (len
 * bytes) into out (SRV_AUTH_SHOWN_MAX + 1 bytes, NUL-terminated), each
 * byte outside printable ASCII as '?', so that a log line stays one line.
 */
void srv_auth_shown(const char *name, size_t len, char *out);

/* "missing", "invalid", "forbidden" (metric labels), or "ok". */
const char *srv_auth_result_name(enum srv_auth_result r);

/* "kv:read", "topic:sub", "admin", ... for messages. */
const char *srv_auth_action_name(enum srv_auth_action action);

#endif
