/*
 * srv_auth.c - the tokens file and the checks of srv_auth.h.
 *
 * A table is an array of tokens, each a name, the SHA-256 digest of its
 * value and a list of grants (action + pattern). The file is parsed in one
 * pass, line by line; the first problem stops the parse and becomes one
 * line naming the file and line, and the token's name when it has one,
 * never its value. Lookups hash the presented token once and compare the
 * digest with every entry (no early exit), so the time taken does not
 * depend on which entry matched.
 *
 * Left out: hierarchical topic rules beyond a trailing '*', combining two
 * grants to cover one pattern (one grant must cover it alone), expiry.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "server/srv_auth.h"

#define SRV_AUTH_WORDS_MAX 256 /* permissions on one line, plus two */
#define SRV_AUTH_TOPIC_MAX 255 /* longest topic pattern, as pubsub's */
#define SRV_AUTH_STORE_MAX 64  /* longest store pattern, as kvstore's */

typedef struct srv_grant {
    enum srv_auth_action action;
    bool prefix; /* pattern ended in '*': match names starting with it */
    char *prefix_or_name; /* owned; without the '*' */
    size_t len;
} srv_grant;

struct srv_token {
    char name[SRV_AUTH_NAME_MAX + 1];
    unsigned char digest[SRV_AUTH_DIGEST_BYTES];
    bool admin;
    srv_grant *grants; /* owned */
    size_t ngrants;
    int line; /* in the file, for duplicate reports */
};

struct srv_auth {
    srv_token *tokens; /* owned */
    size_t ntokens;
};

static const struct {
    const char *prefix; /* "kv:read:" ...; the pattern follows */
    enum srv_auth_action action;
    bool topic; /* topic pattern rules, else store name rules */
} srv_perms[] = {
    {"kv:read:", SRV_AUTH_KV_READ, false},
    {"kv:write:", SRV_AUTH_KV_WRITE, false},
    {"topic:sub:", SRV_AUTH_TOPIC_SUB, true},
    {"topic:pub:", SRV_AUTH_TOPIC_PUB, true},
};

/* ------------------------------------------------------------------ */
/* Parsing                                                              */

typedef struct srv_parse {
    const char *path;
    int line;
    char *err;
    size_t errlen;
    srv_auth *a;
} srv_parse;

static int parse_fail(srv_parse *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Records "<path>:<line>: <message>" and returns -1. */
static int parse_fail(srv_parse *p, const char *fmt, ...)
{
    va_list ap;
    size_t n;

    if (p->errlen == 0)
        return -1;
    snprintf(p->err, p->errlen, "%s:%d: ", p->path, p->line);
    n = strlen(p->err);
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->errlen - n, fmt, ap);
    va_end(ap);
    return -1;
}

static bool store_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

/* Printable ASCII other than space and '*' (the topic rule of SPEC 7). */
static bool topic_char(char c)
{
    return c > ' ' && c <= '~' && c != '*';
}

/* Checks a pattern word and fills g; returns false when it is malformed. */
static bool parse_pattern(const char *w, size_t len, bool topic, srv_grant *g)
{
    size_t i, max = topic ? SRV_AUTH_TOPIC_MAX : SRV_AUTH_STORE_MAX;

    if (len == 0 || len > max)
        return false;
    g->prefix = w[len - 1] == '*';
    if (g->prefix)
        len--;
    for (i = 0; i < len; i++)
        if (!(topic ? topic_char(w[i]) : store_char(w[i])))
            return false;
    if (!g->prefix && len == 0)
        return false;
    g->prefix_or_name = malloc(len + 1);
    if (!g->prefix_or_name)
        return false;
    memcpy(g->prefix_or_name, w, len);
    g->prefix_or_name[len] = '\0';
    g->len = len;
    return true;
}

/* Parses one permission word into t. */
static int parse_perm(srv_parse *p, srv_token *t, const char *w, size_t len)
{
    size_t i, plen;
    srv_grant *g;

    if (len == 5 && memcmp(w, "admin", 5) == 0) {
        t->admin = true;
        return 0;
    }
    for (i = 0; i < sizeof srv_perms / sizeof srv_perms[0]; i++) {
        plen = strlen(srv_perms[i].prefix);
        if (len < plen || memcmp(w, srv_perms[i].prefix, plen) != 0)
            continue;
        g = &t->grants[t->ngrants];
        g->action = srv_perms[i].action;
        if (!parse_pattern(w + plen, len - plen, srv_perms[i].topic, g))
            return parse_fail(
                p,
                "token \"%s\": bad %s pattern \"%.*s\" "
                "(expected a %s, or a prefix ending in '*')",
                t->name, srv_perms[i].topic ? "topic" : "store",
                (int)(len - plen > SRV_AUTH_SHOWN_MAX ? SRV_AUTH_SHOWN_MAX
                                                      : len - plen),
                w + plen, srv_perms[i].topic ? "topic" : "store name");
        t->ngrants++;
        return 0;
    }
    /* a word without ':' may be a misplaced secret: it is not echoed */
    if (!memchr(w, ':', len))
        return parse_fail(p,
                          "token \"%s\": unknown permission (a word without "
                          "':', not shown; expected kv:read:<store>, "
                          "kv:write:<store>, topic:sub:<topic>, "
                          "topic:pub:<topic> or admin)",
                          t->name);
    return parse_fail(
        p,
        "token \"%s\": unknown permission \"%.*s\" (expected "
        "kv:read:<store>, kv:write:<store>, topic:sub:<topic>, "
        "topic:pub:<topic> or admin)",
        t->name, (int)(len > SRV_AUTH_SHOWN_MAX ? SRV_AUTH_SHOWN_MAX : len), w);
}

static void token_free(srv_token *t)
{
    size_t i;

    for (i = 0; i < t->ngrants; i++)
        free(t->grants[i].prefix_or_name);
    free(t->grants);
}

/* Splits line into at most max words at spaces and tabs. */
static size_t split_words(const char *line, size_t len, const char **w,
                          size_t *wl, size_t max)
{
    size_t n = 0, i = 0, start;

    while (i < len) {
        while (i < len && (line[i] == ' ' || line[i] == '\t'))
            i++;
        if (i == len)
            break;
        start = i;
        while (i < len && line[i] != ' ' && line[i] != '\t')
            i++;
        if (n < max) {
            w[n] = line + start;
            wl[n] = i - start;
        }
        n++;
    }
    return n;
}

/* Parses one non-blank, non-comment line into a new token of p->a. */
static int parse_line(srv_parse *p, const char *line, size_t len)
{
    const char *w[SRV_AUTH_WORDS_MAX];
    size_t wl[SRV_AUTH_WORDS_MAX], n, i;
    srv_auth *a = p->a;
    srv_token *t, *grown;

    n = split_words(line, len, w, wl, SRV_AUTH_WORDS_MAX);
    if (n > SRV_AUTH_WORDS_MAX)
        return parse_fail(p, "more than %d permissions on one line",
                          SRV_AUTH_WORDS_MAX - 2);
    if (wl[0] > SRV_AUTH_NAME_MAX)
        return parse_fail(p, "token name longer than %d characters",
                          SRV_AUTH_NAME_MAX);
    for (i = 0; i < wl[0]; i++)
        if (!store_char(w[0][i]))
            return parse_fail(p,
                              "bad token name \"%.*s\" (expected 1-%d of "
                              "A-Z a-z 0-9 _ . -)",
                              (int)wl[0], w[0], SRV_AUTH_NAME_MAX);
    if (n < 2)
        return parse_fail(p, "token \"%.*s\": missing token value", (int)wl[0],
                          w[0]);
    if (wl[1] < SRV_AUTH_TOKEN_MIN || wl[1] > SRV_AUTH_TOKEN_MAX)
        return parse_fail(p,
                          "token \"%.*s\": the token is %zu characters "
                          "(expected %d to %d)",
                          (int)wl[0], w[0], wl[1], SRV_AUTH_TOKEN_MIN,
                          SRV_AUTH_TOKEN_MAX);
    for (i = 0; i < wl[1]; i++)
        if ((unsigned char)w[1][i] < 0x21 || (unsigned char)w[1][i] > 0x7e)
            return parse_fail(p,
                              "token \"%.*s\": the token must be printable "
                              "ASCII without spaces",
                              (int)wl[0], w[0]);
    if (n < 3)
        return parse_fail(p, "token \"%.*s\": no permissions", (int)wl[0],
                          w[0]);

    grown = realloc(a->tokens, (a->ntokens + 1) * sizeof *grown);
    if (!grown)
        return parse_fail(p, "out of memory");
    a->tokens = grown;
    t = &a->tokens[a->ntokens];
    memset(t, 0, sizeof *t);
    memcpy(t->name, w[0], wl[0]);
    t->line = p->line;
    SHA256((const unsigned char *)w[1], wl[1], t->digest);
    t->grants = calloc(n - 2, sizeof *t->grants);
    if (!t->grants)
        return parse_fail(p, "out of memory");
    a->ntokens++; /* owned by the table from here, freed with it */
    for (i = 0; i + 1 < a->ntokens; i++) {
        if (strcmp(a->tokens[i].name, t->name) == 0)
            return parse_fail(p, "token \"%s\": name already used on line %d",
                              t->name, a->tokens[i].line);
        if (CRYPTO_memcmp(a->tokens[i].digest, t->digest,
                          SRV_AUTH_DIGEST_BYTES) == 0)
            return parse_fail(p,
                              "token \"%s\": same token value as \"%s\" "
                              "(line %d); every token must be different",
                              t->name, a->tokens[i].name, a->tokens[i].line);
    }
    for (i = 2; i < n; i++)
        if (parse_perm(p, t, w[i], wl[i]) != 0)
            return -1;
    return 0;
}

int srv_auth_parse(const char *text, size_t len, const char *path,
                   srv_auth **out, char *err, size_t errlen)
{
    srv_parse p = {.path = path, .err = err, .errlen = errlen};
    const char *line, *end = text + len, *nl;
    size_t n, i;

    *out = NULL;
    if (errlen)
        err[0] = '\0';
    p.a = calloc(1, sizeof *p.a);
    if (!p.a) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    for (line = text; line < end; line = nl + 1) {
        p.line++;
        nl = memchr(line, '\n', (size_t)(end - line));
        if (!nl)
            nl = end;
        n = (size_t)(nl - line);
        if (n && line[n - 1] == '\r')
            n--;
        for (i = 0; i < n; i++)
            if (line[i] != '\t' && ((unsigned char)line[i] < 0x20 ||
                                    (unsigned char)line[i] == 0x7f))
                break;
        if (i < n) {
            parse_fail(&p, "control character in the line");
            goto fail;
        }
        for (i = 0; i < n && (line[i] == ' ' || line[i] == '\t'); i++)
            ;
        if (i == n || line[i] == '#')
            continue;
        if (parse_line(&p, line + i, n - i) != 0)
            goto fail;
    }
    if (p.a->ntokens == 0) {
        snprintf(err, errlen,
                 "%s: no tokens (expected lines \"<name> <token> "
                 "<permission>...\")",
                 path);
        goto fail;
    }
    *out = p.a;
    return 0;
fail:
    srv_auth_free(p.a);
    return -1;
}

int srv_auth_load(const char *path, srv_auth **out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len;
    int rc;

    *out = NULL;
    if (!f) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        return -1;
    }
    buf = malloc(SRV_AUTH_FILE_MAX_BYTES + 1);
    if (!buf) {
        fclose(f);
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    len = fread(buf, 1, SRV_AUTH_FILE_MAX_BYTES + 1, f);
    if (ferror(f)) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        rc = -1;
    } else if (len > SRV_AUTH_FILE_MAX_BYTES) {
        snprintf(err, errlen, "%s: larger than %d bytes", path,
                 SRV_AUTH_FILE_MAX_BYTES);
        rc = -1;
    } else {
        rc = srv_auth_parse(buf, len, path, out, err, errlen);
    }
    OPENSSL_cleanse(buf, SRV_AUTH_FILE_MAX_BYTES + 1);
    free(buf);
    fclose(f);
    return rc;
}

void srv_auth_free(srv_auth *a)
{
    size_t i;

    if (!a)
        return;
    for (i = 0; i < a->ntokens; i++)
        token_free(&a->tokens[i]);
    free(a->tokens);
    free(a);
}

size_t srv_auth_count(const srv_auth *a)
{
    return a ? a->ntokens : 0;
}

/* ------------------------------------------------------------------ */
/* Lookups and checks                                                   */

const srv_token *srv_auth_find_digest(const srv_auth *a,
                                      const unsigned char *digest)
{
    const srv_token *found = NULL;
    size_t i;

    for (i = 0; a && i < a->ntokens; i++)
        if (CRYPTO_memcmp(a->tokens[i].digest, digest, SRV_AUTH_DIGEST_BYTES) ==
            0)
            found = &a->tokens[i]; /* no early exit: same time for all */
    return found;
}

const srv_token *srv_auth_find(const srv_auth *a, const char *token, size_t len)
{
    unsigned char digest[SRV_AUTH_DIGEST_BYTES];
    const srv_token *t;

    if (!a || len < SRV_AUTH_TOKEN_MIN || len > SRV_AUTH_TOKEN_MAX)
        return NULL;
    SHA256((const unsigned char *)token, len, digest);
    t = srv_auth_find_digest(a, digest);
    OPENSSL_cleanse(digest, sizeof digest);
    return t;
}

const char *srv_token_name(const srv_token *t)
{
    return t->name;
}

const unsigned char *srv_token_digest(const srv_token *t)
{
    return t->digest;
}

/* Whether grant g matches the single name (a store or a topic). */
static bool grant_matches(const srv_grant *g, const char *name, size_t len)
{
    if (g->prefix)
        return len >= g->len && memcmp(name, g->prefix_or_name, g->len) == 0;
    return len == g->len && memcmp(name, g->prefix_or_name, len) == 0;
}

/*
 * Whether g matches every topic that subscription pattern name can match:
 * an exact topic must match g; a pattern "p*" needs g to be a prefix
 * pattern whose prefix starts p (every topic of "p*" starts with p).
 */
static bool grant_covers(const srv_grant *g, const char *name, size_t len)
{
    if (len == 0 || name[len - 1] != '*')
        return grant_matches(g, name, len);
    return g->prefix && len - 1 >= g->len &&
           memcmp(name, g->prefix_or_name, g->len) == 0;
}

bool srv_token_allows(const srv_token *t, enum srv_auth_action action,
                      const char *name, size_t len)
{
    size_t i;

    if (!t)
        return false;
    switch (action) {
    case SRV_AUTH_ANY:
        return true;
    case SRV_AUTH_ADMIN:
        return t->admin;
    default:
        break;
    }
    for (i = 0; i < t->ngrants; i++) {
        const srv_grant *g = &t->grants[i];
        if (g->action != action)
            continue;
        if (action == SRV_AUTH_TOPIC_SUB ? grant_covers(g, name, len)
                                         : grant_matches(g, name, len))
            return true;
    }
    return false;
}

bool srv_auth_bearer(const char *header, const char **token, size_t *len)
{
    const char *p = header, *end;

    if (!header)
        return false;
    while (*p == ' ' || *p == '\t')
        p++;
    if (strncasecmp(p, "bearer", 6) != 0 || (p[6] != ' ' && p[6] != '\t'))
        return false;
    p += 6;
    while (*p == ' ' || *p == '\t')
        p++;
    end = p + strlen(p);
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    if (end == p)
        return false;
    *token = p;
    *len = (size_t)(end - p);
    return true;
}

enum srv_auth_result srv_auth_check(const srv_auth *a, const char *header,
                                    enum srv_auth_action action,
                                    const char *name, size_t len,
                                    const srv_token **who)
{
    const srv_token *t;
    const char *tok;
    size_t tlen;

    if (who)
        *who = NULL;
    if (!header)
        return SRV_AUTH_MISSING;
    if (!srv_auth_bearer(header, &tok, &tlen))
        return SRV_AUTH_INVALID;
    t = srv_auth_find(a, tok, tlen);
    if (!t)
        return SRV_AUTH_INVALID;
    if (who)
        *who = t;
    return srv_token_allows(t, action, name, len) ? SRV_AUTH_OK
                                                  : SRV_AUTH_FORBIDDEN;
}

void srv_auth_shown(const char *name, size_t len, char *out)
{
    size_t i;

    if (len > SRV_AUTH_SHOWN_MAX)
        len = SRV_AUTH_SHOWN_MAX;
    for (i = 0; i < len; i++)
        out[i] = name[i] >= ' ' && name[i] <= '~' ? name[i] : '?';
    out[len] = '\0';
}

const char *srv_auth_result_name(enum srv_auth_result r)
{
    switch (r) {
    case SRV_AUTH_OK:
        return "ok";
    case SRV_AUTH_MISSING:
        return "missing";
    case SRV_AUTH_INVALID:
        return "invalid";
    case SRV_AUTH_FORBIDDEN:
        return "forbidden";
    default:
        return "unknown";
    }
}

const char *srv_auth_action_name(enum srv_auth_action action)
{
    switch (action) {
    case SRV_AUTH_ANY:
        return "any";
    case SRV_AUTH_KV_READ:
        return "kv:read";
    case SRV_AUTH_KV_WRITE:
        return "kv:write";
    case SRV_AUTH_TOPIC_SUB:
        return "topic:sub";
    case SRV_AUTH_TOPIC_PUB:
        return "topic:pub";
    case SRV_AUTH_ADMIN:
        return "admin";
    }
    return "unknown";
}
