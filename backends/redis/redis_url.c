/*
 * redis_url.c - parsing of redis:// URLs and the backend's log line.
 *
 * The URL grammar is the one redis-cli accepts,
 * redis://[[user:]password@]host[:port][/db], with percent-decoding of the
 * userinfo. Hosts are names, IPv4 addresses or [IPv6] addresses; they are
 * not resolved here. Error messages never quote the URL, which may hold a
 * password. Left out: TLS (rediss://, not in Debian's hiredis 0.14),
 * unix sockets and query parameters; each is refused with a message.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "backends/redis/redis_int.h"

#define REDIS_SCHEME "redis://"
#define REDIS_SCHEME_TLS "rediss://"
#define REDIS_SCHEME_UNIX "unix://"
#define REDIS_PORT_DIGITS_MAX 5
#define REDIS_DB_DIGITS_MAX 9
#define REDIS_PORT_MAX 65535

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * A NUL-terminated, percent-decoded copy of p (len bytes) in *out, or NULL
 * when len is 0. what names the part in error messages. KV_EINVAL for a bad
 * or NUL escape, KV_ENOMEM.
 */
static int url_decode(const char *p, size_t len, const char *what, char **out,
                      kv_err *err)
{
    char *s;
    size_t i, n = 0;

    *out = NULL;
    if (len == 0)
        return 0;
    s = malloc(len + 1);
    if (!s)
        return kv_err_set(err, KV_ENOMEM, "out of memory");
    for (i = 0; i < len; i++) {
        if (p[i] == '%') {
            int hi = len - i > 2 ? hex_value(p[i + 1]) : -1;
            int lo = len - i > 2 ? hex_value(p[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                free(s);
                return kv_err_set(err, KV_EINVAL,
                                  "redis url: bad percent escape in the %s",
                                  what);
            }
            s[n++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            s[n++] = p[i];
        }
    }
    s[n] = '\0';
    *out = s;
    return 0;
}

/* Parses 1..max_digits decimal digits (p, len) into *out; -1 if not. */
static int parse_digits(const char *p, size_t len, size_t max_digits, long *out)
{
    long v = 0;
    size_t i;

    if (len == 0 || len > max_digits)
        return -1;
    for (i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 0;
}

/* True for the characters of a host name or IPv4 address. */
static bool host_char(char c)
{
    return isalnum((unsigned char)c) || c == '.' || c == '-' || c == '_';
}

/* True for the characters inside [...]: an IPv6 address (no zone id). */
static bool ipv6_char(char c)
{
    return isxdigit((unsigned char)c) || c == ':' || c == '.';
}

/*
 * Parses host[:port] (p, len) into u. Errors are KV_EINVAL.
 */
static int parse_hostport(const char *p, size_t len, redis_url *u, kv_err *err)
{
    const char *end = p + len, *h, *colon;
    size_t hlen, i;
    long port;

    if (len > 0 && p[0] == '[') {
        const char *close = memchr(p, ']', len);
        if (!close)
            return kv_err_set(err, KV_EINVAL,
                              "redis url: '[' without ']' in the host");
        h = p + 1;
        hlen = (size_t)(close - h);
        for (i = 0; i < hlen; i++)
            if (!ipv6_char(h[i]))
                return kv_err_set(err, KV_EINVAL,
                                  "redis url: bad IPv6 address in the host");
        u->ipv6 = true;
        colon = close + 1 < end ? close + 1 : NULL;
        if (colon && *colon != ':')
            return kv_err_set(err, KV_EINVAL,
                              "redis url: unexpected text after ']'");
    } else {
        h = p;
        colon = memchr(p, ':', len);
        hlen = colon ? (size_t)(colon - p) : len;
        for (i = 0; i < hlen; i++)
            if (!host_char(h[i]))
                return kv_err_set(err, KV_EINVAL,
                                  "redis url: bad character in the host");
    }
    if (hlen == 0)
        return kv_err_set(err, KV_EINVAL, "redis url: the host is missing");
    if (hlen > REDIS_HOST_MAX)
        return kv_err_set(err, KV_EINVAL,
                          "redis url: the host is longer than %d bytes",
                          REDIS_HOST_MAX);
    memcpy(u->host, h, hlen);
    u->host[hlen] = '\0';

    u->port = REDIS_DEFAULT_PORT;
    if (colon) {
        if (parse_digits(colon + 1, (size_t)(end - colon - 1),
                         REDIS_PORT_DIGITS_MAX, &port) != 0 ||
            port < 1 || port > REDIS_PORT_MAX)
            return kv_err_set(err, KV_EINVAL,
                              "redis url: the port must be 1 to %d",
                              REDIS_PORT_MAX);
        u->port = (uint16_t)port;
    }
    return 0;
}

/* Splits userinfo (p, len) into user and password, redis-cli style. */
static int parse_userinfo(const char *p, size_t len, redis_url *u, kv_err *err)
{
    const char *colon = memchr(p, ':', len);
    int rc;

    if (!colon)
        return url_decode(p, len, "password", &u->password, err);
    rc = url_decode(p, (size_t)(colon - p), "user", &u->user, err);
    if (rc == 0)
        rc = url_decode(colon + 1, len - (size_t)(colon - p) - 1, "password",
                        &u->password, err);
    if (rc == 0 && u->user && !u->password)
        rc = kv_err_set(err, KV_EINVAL,
                        "redis url: a user needs a password (user:password@)");
    return rc;
}

int redis__url_parse(const char *text, redis_url *out, kv_err *err)
{
    const char *p, *at, *slash, *end;
    long db;
    int rc;

    memset(out, 0, sizeof *out);
    if (!text || !*text)
        return kv_err_set(err, KV_EINVAL, "redis url: missing");
    if (strncasecmp(text, REDIS_SCHEME_TLS, strlen(REDIS_SCHEME_TLS)) == 0)
        return kv_err_set(err, KV_EINVAL,
                          "redis url: rediss:// (TLS) is not supported by "
                          "this build");
    if (strncasecmp(text, REDIS_SCHEME_UNIX, strlen(REDIS_SCHEME_UNIX)) == 0)
        return kv_err_set(err, KV_EINVAL,
                          "redis url: unix sockets are not supported; use "
                          "redis://host:port");
    if (strncasecmp(text, REDIS_SCHEME, strlen(REDIS_SCHEME)) != 0)
        return kv_err_set(err, KV_EINVAL,
                          "redis url: must start with redis://");
    p = text + strlen(REDIS_SCHEME);
    end = p + strlen(p);
    if (strpbrk(p, "?#"))
        return kv_err_set(err, KV_EINVAL,
                          "redis url: query strings and fragments are not "
                          "supported");
    for (const char *q = p; q < end; q++)
        if ((unsigned char)*q <= ' ' || (unsigned char)*q == 0x7f)
            return kv_err_set(err, KV_EINVAL,
                              "redis url: contains a space or control "
                              "character");

    /* The last '@' ends the userinfo: a password may hold '@' or '/'. */
    at = strrchr(p, '@');
    if (at) {
        rc = parse_userinfo(p, (size_t)(at - p), out, err);
        if (rc != 0)
            goto fail;
        p = at + 1;
    }
    slash = strchr(p, '/');
    rc = parse_hostport(p, (size_t)((slash ? slash : end) - p), out, err);
    if (rc != 0)
        goto fail;
    if (slash && slash + 1 < end) {
        if (parse_digits(slash + 1, (size_t)(end - slash - 1),
                         REDIS_DB_DIGITS_MAX, &db) != 0) {
            rc = kv_err_set(err, KV_EINVAL,
                            "redis url: the path must be a database number "
                            "(/0 to /%d)",
                            REDIS_DB_MAX);
            goto fail;
        }
        out->db = (int)db;
    }
    return 0;

fail:
    redis__url_clear(out);
    return rc;
}

void redis__url_clear(redis_url *u)
{
    if (!u)
        return;
    if (u->password)
        memset(u->password, 0, strlen(u->password));
    free(u->user);
    free(u->password);
    memset(u, 0, sizeof *u);
}

int redis__url_addr(const redis_url *u, char *buf, size_t size)
{
    return snprintf(buf, size, u->ipv6 ? "[%s]:%u" : "%s:%u", u->host,
                    (unsigned)u->port);
}

void redis__log(int level, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warn", "info"};
    char stamp[32];
    struct timespec ts;
    struct tm tm;
    va_list ap;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %s ", stamp, ts.tv_nsec / 1000000L,
            names[level < REDIS_LOG_ERROR  ? REDIS_LOG_ERROR
                  : level > REDIS_LOG_INFO ? REDIS_LOG_INFO
                                           : level]);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}
