/*
 * srv_config.c - kvbusd's configuration loader: defaults, then an INI file
 * (parsed by libinih), then KVBUS_* environment variables, then command-line
 * flags, each later source overriding the earlier ones key by key.
 *
 * Every key is one row of srv_keys[] below: section, name, setter, field,
 * limits, default and help. Defaults, the file, the environment and flags all
 * set values through key_apply(), and srv_config_usage() prints the same
 * rows, so a key is defined exactly once. The first problem found stops the
 * load and becomes one line naming its source (file:line, environment
 * variable or flag), the section, the key and what is wrong.
 *
 * libinih is used for what it is good at (comments, "key = value", syntax
 * errors). Our line reader feeds it one line at a time so that we know the
 * line number, strips leading whitespace (inih would otherwise glue an
 * indented line onto the previous value), refuses lines longer than inih's
 * buffer (inih would split them silently) and tracks section headers itself
 * (inih truncates long section names and reports nothing for an empty one).
 *
 * Left out: reloading at run time, includes, variable interpolation.
 * Runs on: the main thread at start-up, before the event loop exists. No
 * global mutable state: everything lives in the caller's srv_config and in
 * a loader allocated for the call.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <ini.h>

#include "server/srv_config.h"
#include "server/srv_log.h"

#define SRV_WHERE_BYTES 320    /* "path:line", "environment X", "flag --x" */
#define SRV_WHY_BYTES 256      /* a setter's reason */
#define SRV_SHOWN_VALUE_MAX 64 /* bytes of a bad value echoed in an error */
#define SRV_HOSTNAME_MAX 253   /* DNS name, without the port */
#define SRV_PORT_MAX 65535
#define SRV_KIB 1024ull
#define SRV_MIB (1024ull * 1024ull)
#define SRV_GIB (1024ull * 1024ull * 1024ull)
#define SRV_SEC_STORECAP_FIRST 4

enum srv_section {
    SRV_SEC_NONE,   /* before the first [section] of a file */
    SRV_SEC_SERVER, /* [server] */
    SRV_SEC_STORE,  /* [store.<name>] */
    SRV_SEC_PUBSUB, /* [pubsub] */
};

typedef struct srv_key srv_key;

/*
 * Parses text and stores it in the key's field of base (a srv_config, or a
 * kv_store_conf for store keys). Returns 0, or -1 with a short reason in why
 * that names neither the source nor the key (the caller adds both). On
 * error the field is left as it was.
 */
typedef int (*srv_setter)(const srv_key *k, void *base, const char *text,
                          char *why, size_t whylen);

struct srv_key {
    enum srv_section section;
    const char *name; /* as in the file; flags and env derive */
    srv_setter set;
    size_t offset;              /* of the field in base */
    size_t size;                /* fixed char array fields: bytes with NUL */
    bool number;                /* default is def_num, not def */
    uint64_t min, max;          /* numbers: inclusive range */
    uint64_t def_num;           /* numbers: the default */
    const char *def;            /* default as text; NULL = none or computed */
    const char *doc_def;        /* usage text when def is NULL */
    const char *const *choices; /* enumerations: NULL-terminated */
    bool nonempty;              /* strings: "" is refused */
    const char *arg;            /* usage metavariable; NULL = the choices */
    const char *help;
};

static int set_listen(const srv_key *k, void *base, const char *text, char *why,
                      size_t whylen);
static int set_node_id(const srv_key *k, void *base, const char *text,
                       char *why, size_t whylen);
static int set_size(const srv_key *k, void *base, const char *text, char *why,
                    size_t whylen);
static int set_ms(const srv_key *k, void *base, const char *text, char *why,
                  size_t whylen);
static int set_bool(const srv_key *k, void *base, const char *text, char *why,
                    size_t whylen);
static int set_choice(const srv_key *k, void *base, const char *text, char *why,
                      size_t whylen);
static int set_choice_index(const srv_key *k, void *base, const char *text,
                            char *why, size_t whylen);
static int set_string(const srv_key *k, void *base, const char *text, char *why,
                      size_t whylen);

static const char *const srv_backends[] = {"memory", "redis", "postgres",
                                           "mongodb", NULL};
static const char *const srv_providers[] = {"memory", "redis", "kafka", NULL};
static const char *const srv_formats[] = {"kvbus", "nuxeo", NULL};
static const char *const srv_tls_versions[] = {"1.2", "1.3", NULL};
/* Index = SRV_LOG_* value. */
static const char *const srv_levels[] = {"error", "warn", "info", "debug",
                                         NULL};
_Static_assert(SRV_LOG_ERROR == 0 && SRV_LOG_WARN == 1 && SRV_LOG_INFO == 2 &&
                   SRV_LOG_DEBUG == 3,
               "srv_levels[] is indexed by SRV_LOG_*");

#define SRV_CFG(field) offsetof(srv_config, field)
#define SRV_STORE(field) offsetof(kv_store_conf, field)
#define SRV_FIELD_SIZE(type, field) sizeof(((type *)0)->field)

/*
 * Row makers for srv_keys[], one per kind of value, so that each key reads
 * as one line of data: section, name, field, limits or choices, default,
 * usage metavariable, help.
 */
#define SRV_KEY_SIZE(sec, key, field, lo, hi, dflt, meta, text)                \
    {                                                                          \
        .section = sec, .name = key, .set = set_size, .offset = field,         \
        .number = true, .min = lo, .max = hi, .def_num = dflt, .arg = meta,    \
        .help = text                                                           \
    }
#define SRV_KEY_MS(sec, key, field, lo, hi, dflt, text)                        \
    {                                                                          \
        .section = sec, .name = key, .set = set_ms, .offset = field,           \
        .number = true, .min = lo, .max = hi, .def_num = dflt, .arg = "MS",    \
        .help = text                                                           \
    }
#define SRV_KEY_CHOICE(sec, key, field, size_bytes, list, dflt, text)          \
    {                                                                          \
        .section = sec, .name = key, .set = set_choice, .offset = field,       \
        .size = size_bytes, .choices = list, .def = dflt, .help = text         \
    }
#define SRV_KEY_STRING(sec, key, field, not_empty, dflt, doc, meta, text)      \
    {                                                                          \
        .section = sec, .name = key, .set = set_string, .offset = field,       \
        .nonempty = not_empty, .def = dflt, .doc_def = doc, .arg = meta,       \
        .help = text                                                           \
    }

/* Every configuration key, once. */
static const srv_key srv_keys[] = {
    /* [server] */
    {.section = SRV_SEC_SERVER,
     .name = "listen",
     .set = set_listen,
     .offset = SRV_CFG(listen_host),
     .def = SRV_LISTEN_DEFAULT,
     .arg = "HOST:PORT",
     .help = "address to serve HTTP on: IPv4, [IPv6] or hostname, then "
             ":port (1-65535)"},
    {.section = SRV_SEC_SERVER,
     .name = "node_id",
     .set = set_node_id,
     .offset = SRV_CFG(node_id),
     .size = SRV_FIELD_SIZE(srv_config, node_id),
     .doc_def = "hostname-pid",
     .arg = "ID",
     .help = "this node's name in pub/sub messages; 1-128 printable ASCII "
             "characters, no space, no ':'"},
    SRV_KEY_SIZE(SRV_SEC_SERVER, "max_key_bytes", SRV_CFG(limits.max_key_bytes),
                 1, 64 * SRV_KIB, KV_MAX_KEY_BYTES_DEFAULT, "BYTES",
                 "longest key accepted"),
    SRV_KEY_SIZE(SRV_SEC_SERVER, "max_value_bytes",
                 SRV_CFG(limits.max_value_bytes), 1, 512 * SRV_MIB,
                 KV_MAX_VALUE_BYTES_DEFAULT, "BYTES",
                 "largest value accepted (and request body)"),
    SRV_KEY_SIZE(SRV_SEC_SERVER, "max_stores", SRV_CFG(limits.max_stores), 1,
                 1000000, KV_MAX_STORES_DEFAULT, "N",
                 "most stores, configured or created on first use"),
    SRV_KEY_SIZE(SRV_SEC_SERVER, "max_uri_bytes", SRV_CFG(max_uri_bytes), 256,
                 SRV_MIB, 8192, "BYTES",
                 "longest request target; longer gets 414"),
    SRV_KEY_SIZE(SRV_SEC_SERVER, "max_header_bytes", SRV_CFG(max_header_bytes),
                 SRV_KIB, SRV_MIB, 16384, "BYTES",
                 "largest request header block; larger gets 431"),
    SRV_KEY_SIZE(SRV_SEC_SERVER, "max_connections", SRV_CFG(max_connections), 1,
                 1000000, 10000, "N", "most open client connections"),
    SRV_KEY_SIZE(SRV_SEC_SERVER, "ws_queue_bytes", SRV_CFG(ws_queue_bytes),
                 SRV_KIB, SRV_GIB, SRV_MIB, "BYTES",
                 "outbound queue of one WebSocket client"),
    SRV_KEY_MS(SRV_SEC_SERVER, "ws_stall_ms", SRV_CFG(ws_stall_ms), 1, 3600000,
               10000,
               "a WebSocket client whose queue stays full this long is "
               "closed (1008)"),
    SRV_KEY_MS(SRV_SEC_SERVER, "shutdown_grace_ms", SRV_CFG(shutdown_grace_ms),
               0, 3600000, 5000,
               "time to drain requests on SIGTERM; 0 closes at once"),
    SRV_KEY_STRING(SRV_SEC_SERVER, "tokens_file", SRV_CFG(tokens_file), false,
                   NULL, "none (no authentication)", "PATH",
                   "API tokens file (docs/security.md); when set, every "
                   "route but /healthz and the dashboard needs a token"),
    SRV_KEY_SIZE(SRV_SEC_SERVER, "max_mget_keys", SRV_CFG(limits.max_mget_keys),
                 1, 1000000, KV_KEYS_LIMIT_MAX, "N",
                 "most keys in one mget; more gets 400"),
    SRV_KEY_SIZE(SRV_SEC_SERVER, "max_page_keys", SRV_CFG(limits.max_page_keys),
                 1, 1000000, KV_KEYS_LIMIT_MAX, "N",
                 "largest keys page (limit=); larger gets 400"),
    SRV_KEY_SIZE(SRV_SEC_SERVER, "max_ws_frame_bytes",
                 SRV_CFG(max_ws_frame_bytes), 0, SRV_GIB, 0, "BYTES",
                 "largest WebSocket frame read (error frame past it, close "
                 "1009 past 4 times it); 0 = max_value_bytes * 4 / 3 + 4096"),
    SRV_KEY_SIZE(SRV_SEC_SERVER, "max_subscriptions_per_conn",
                 SRV_CFG(max_subscriptions_per_conn), 1, 1000000, 256, "N",
                 "most topics one WebSocket may subscribe to"),
    SRV_KEY_MS(SRV_SEC_SERVER, "header_timeout_ms", SRV_CFG(header_timeout_ms),
               100, 3600000, 10000,
               "request line and headers must arrive within this from the "
               "connection or the request's first byte (TLS handshake "
               "included); 408 and close"),
    SRV_KEY_MS(SRV_SEC_SERVER, "body_timeout_ms", SRV_CFG(body_timeout_ms), 100,
               3600000, 30000,
               "longest wait between two reads of a request body; 408 and "
               "close"),
    SRV_KEY_MS(SRV_SEC_SERVER, "idle_timeout_ms", SRV_CFG(idle_timeout_ms), 100,
               86400000, 60000,
               "a keep-alive connection with no request in progress is "
               "closed after this"),
    SRV_KEY_STRING(SRV_SEC_SERVER, "tls_cert", SRV_CFG(tls_cert), true, NULL,
                   "none", "PATH",
                   "PEM certificate chain; with tls_key the listener speaks "
                   "TLS only"),
    SRV_KEY_STRING(SRV_SEC_SERVER, "tls_key", SRV_CFG(tls_key), true, NULL,
                   "none", "PATH", "PEM private key of tls_cert"),
    SRV_KEY_CHOICE(SRV_SEC_SERVER, "tls_min_version", SRV_CFG(tls_min_version),
                   SRV_FIELD_SIZE(srv_config, tls_min_version),
                   srv_tls_versions, "1.2", "oldest TLS version accepted"),
    {.section = SRV_SEC_SERVER,
     .name = "log_level",
     .set = set_choice_index,
     .offset = SRV_CFG(log_level),
     .choices = srv_levels,
     .def = "info",
     .help = "least severe log lines written"},

    /* [store.<name>] */
    SRV_KEY_CHOICE(SRV_SEC_STORE, "backend", SRV_STORE(backend),
                   SRV_FIELD_SIZE(kv_store_conf, backend), srv_backends,
                   "memory", "where the store keeps its data"),
    SRV_KEY_STRING(SRV_SEC_STORE, "url", SRV_STORE(url), true, NULL, "none",
                   "URL",
                   "server to connect to; required by redis, postgres and "
                   "mongodb"),
    SRV_KEY_STRING(SRV_SEC_STORE, "key_prefix", SRV_STORE(key_prefix), true,
                   NULL, "kvbus:<store>:", "TEXT",
                   "redis: prefix of every key of the store"),
    SRV_KEY_STRING(SRV_SEC_STORE, "table", SRV_STORE(table), true, NULL,
                   "kv_<store>", "NAME", "postgres: table holding the store"),
    SRV_KEY_STRING(SRV_SEC_STORE, "collection", SRV_STORE(collection), true,
                   NULL, "kv.<store>", "NAME",
                   "mongodb: collection holding the store"),
    {.section = SRV_SEC_STORE,
     .name = "notify",
     .set = set_bool,
     .offset = SRV_STORE(notify),
     .def = "false",
     .arg = "BOOL",
     .help = "publish each change on topic kv.<store>"},
    SRV_KEY_MS(SRV_SEC_STORE, "op_timeout_ms", SRV_STORE(op_timeout_ms), 1,
               600000, KV_OP_TIMEOUT_MS_DEFAULT,
               "a backend call taking longer fails with a timeout"),

    /* [pubsub] */
    SRV_KEY_CHOICE(SRV_SEC_PUBSUB, "provider", SRV_CFG(pubsub.provider),
                   SRV_FIELD_SIZE(srv_config, pubsub.provider), srv_providers,
                   "memory",
                   "carrier of messages between nodes; memory = this node "
                   "only"),
    SRV_KEY_STRING(SRV_SEC_PUBSUB, "url", SRV_CFG(pubsub.url), true, NULL,
                   "none", "URL",
                   "redis URL, or kafka bootstrap list host:port,...; "
                   "required by redis and kafka"),
    SRV_KEY_STRING(SRV_SEC_PUBSUB, "channel_prefix",
                   SRV_CFG(pubsub.channel_prefix), false, "kvbus:", NULL,
                   "TEXT", "redis: channel = prefix + topic (may be empty)"),
    SRV_KEY_STRING(SRV_SEC_PUBSUB, "kafka_topic", SRV_CFG(pubsub.kafka_topic),
                   true, "kvbus-pubsub", NULL, "NAME",
                   "kafka: the one topic carrying every message"),
    SRV_KEY_CHOICE(SRV_SEC_PUBSUB, "format", SRV_CFG(pubsub.format),
                   SRV_FIELD_SIZE(srv_config, pubsub.format), srv_formats,
                   "kvbus", "message envelope on the wire"),
};

#define SRV_NKEYS (sizeof srv_keys / sizeof srv_keys[0])

/* The state of one srv_config_load() call. */
typedef struct srv_loader {
    srv_config *cfg;
    char *err;
    size_t errlen;
    bool failed;                 /* err holds the first problem */
    int fail_line;               /* file line of it; 0 = not file */
    char where[SRV_WHERE_BYTES]; /* source of the value at hand */
    char key_where[SRV_NKEYS][SRV_WHERE_BYTES]; /* server/pubsub: last set */
    char (*store_where)[SRV_WHERE_BYTES]; /* per store: backend last set */
    size_t store_cap;                     /* entries in stores, store_where */
    FILE *file;                           /* while reading the file */
    const char *path;
    int lineno;
    char *line; /* getline buffer */
    size_t linecap;
    enum srv_section section; /* of the line at hand */
    size_t store;             /* section == SRV_SEC_STORE: its index */
} srv_loader;

/* ------------------------------------------------------------------ */
/* Errors                                                               */

/*
 * Records the first problem as "<where>: <message>" in the caller's buffer,
 * with control characters replaced so it stays one line. Returns -1.
 */
static int fail(srv_loader *ld, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int fail(srv_loader *ld, const char *fmt, ...)
{
    va_list ap;
    size_t n;
    char *p;

    if (ld->failed)
        return -1;
    ld->failed = true;
    ld->fail_line = ld->file ? ld->lineno : 0;
    if (ld->errlen == 0)
        return -1;
    snprintf(ld->err, ld->errlen, "%s: ", ld->where);
    n = strlen(ld->err);
    va_start(ap, fmt);
    vsnprintf(ld->err + n, ld->errlen - n, fmt, ap);
    va_end(ap);
    for (p = ld->err; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return -1;
}

static void set_where(srv_loader *ld, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_where(srv_loader *ld, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(ld->where, sizeof ld->where, fmt, ap);
    va_end(ap);
}

/* "[server]", "[pubsub]" or "[store.<name>]" into buf. */
static const char *section_label(enum srv_section sec, const char *store,
                                 size_t len, char *buf, size_t buflen)
{
    switch (sec) {
    case SRV_SEC_SERVER:
        return "[server]";
    case SRV_SEC_PUBSUB:
        return "[pubsub]";
    case SRV_SEC_STORE:
        snprintf(buf, buflen, "[store.%.*s]", (int)len, store);
        return buf;
    case SRV_SEC_NONE:
        break;
    }
    return "[]";
}

/* "a, b or c" from a NULL-terminated list. */
static void join_choices(const char *const *choices, char *buf, size_t buflen)
{
    size_t i, n = 0, used = 0;

    while (choices[n])
        n++;
    buf[0] = '\0';
    for (i = 0; i < n && used < buflen; i++) {
        const char *sep = i == 0 ? "" : i + 1 == n ? " or " : ", ";
        int w = snprintf(buf + used, buflen - used, "%s%s", sep, choices[i]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

/* ------------------------------------------------------------------ */
/* Setters                                                              */

static void *field_of(const srv_key *k, void *base)
{
    return (char *)base + k->offset;
}

/* Strict decimal: digits only, within [k->min, k->max]. */
static int parse_number(const srv_key *k, const char *text, uint64_t *out,
                        char *why, size_t whylen)
{
    const char *p;
    uint64_t v = 0;

    if (*text == '\0')
        goto bad;
    for (p = text; *p; p++) {
        if (*p < '0' || *p > '9')
            goto bad;
        if (v <= k->max) /* k->max is far from UINT64_MAX / 10 */
            v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v < k->min || v > k->max) {
        snprintf(why, whylen, "%.*s is out of range (expected %llu to %llu)",
                 SRV_SHOWN_VALUE_MAX, text, (unsigned long long)k->min,
                 (unsigned long long)k->max);
        return -1;
    }
    *out = v;
    return 0;
bad:
    snprintf(why, whylen,
             "bad number \"%.*s\" (expected a whole number from %llu to %llu)",
             SRV_SHOWN_VALUE_MAX, text, (unsigned long long)k->min,
             (unsigned long long)k->max);
    return -1;
}

static int set_size(const srv_key *k, void *base, const char *text, char *why,
                    size_t whylen)
{
    uint64_t v;

    if (parse_number(k, text, &v, why, whylen) != 0)
        return -1;
    *(size_t *)field_of(k, base) = (size_t)v;
    return 0;
}

static int set_ms(const srv_key *k, void *base, const char *text, char *why,
                  size_t whylen)
{
    uint64_t v;

    if (parse_number(k, text, &v, why, whylen) != 0)
        return -1;
    *(uint32_t *)field_of(k, base) = (uint32_t)v;
    return 0;
}

static int set_bool(const srv_key *k, void *base, const char *text, char *why,
                    size_t whylen)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    size_t i;

    for (i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(text, yes[i]) == 0) {
            *(bool *)field_of(k, base) = true;
            return 0;
        }
        if (strcasecmp(text, no[i]) == 0) {
            *(bool *)field_of(k, base) = false;
            return 0;
        }
    }
    snprintf(why, whylen,
             "bad boolean \"%.*s\" (expected true, false, yes, no, on, off, "
             "1 or 0)",
             SRV_SHOWN_VALUE_MAX, text);
    return -1;
}

/* Index of text in k->choices, or -1 with the reason in why. */
static int find_choice(const srv_key *k, const char *text, char *why,
                       size_t whylen)
{
    char list[128];
    int i;

    for (i = 0; k->choices[i]; i++)
        if (strcmp(text, k->choices[i]) == 0)
            return i;
    join_choices(k->choices, list, sizeof list);
    snprintf(why, whylen, "unknown %s \"%.*s\" (expected %s)", k->name,
             SRV_SHOWN_VALUE_MAX, text, list);
    return -1;
}

/* An enumeration kept as its name, in a char array of k->size bytes. */
static int set_choice(const srv_key *k, void *base, const char *text, char *why,
                      size_t whylen)
{
    int i = find_choice(k, text, why, whylen);

    if (i < 0)
        return -1;
    snprintf(field_of(k, base), k->size, "%s", k->choices[i]);
    return 0;
}

/* An enumeration kept as its index in k->choices, in an int. */
static int set_choice_index(const srv_key *k, void *base, const char *text,
                            char *why, size_t whylen)
{
    int i = find_choice(k, text, why, whylen);

    if (i < 0)
        return -1;
    *(int *)field_of(k, base) = i;
    return 0;
}

/* An owned copy in a char * field; the previous value is freed. */
static int set_string(const srv_key *k, void *base, const char *text, char *why,
                      size_t whylen)
{
    char **slot = field_of(k, base);
    char *copy;

    if (k->nonempty && *text == '\0') {
        snprintf(why, whylen, "must not be empty");
        return -1;
    }
    copy = strdup(text);
    if (!copy) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    free(*slot);
    *slot = copy;
    return 0;
}

static int set_node_id(const srv_key *k, void *base, const char *text,
                       char *why, size_t whylen)
{
    size_t i, len = strlen(text);

    if (strchr(text, ':')) {
        snprintf(why, whylen, "\"%.*s\" must not contain ':'",
                 SRV_SHOWN_VALUE_MAX, text);
        return -1;
    }
    for (i = 0; i < len; i++)
        if (text[i] <= ' ' || text[i] > '~')
            break;
    if (len == 0 || len > SRV_NODE_ID_MAX || i < len) {
        snprintf(why, whylen,
                 "\"%.*s\" must be 1 to %d printable ASCII characters "
                 "without spaces",
                 SRV_SHOWN_VALUE_MAX, text, SRV_NODE_ID_MAX);
        return -1;
    }
    snprintf(field_of(k, base), k->size, "%s", text);
    return 0;
}

/* A DNS name or dotted IPv4 address (the latter checked by inet_pton). */
static bool host_name_valid(const char *host, size_t len)
{
    char buf[INET_ADDRSTRLEN];
    bool dotted = true;
    size_t i;

    if (len == 0 || len > SRV_HOSTNAME_MAX)
        return false;
    for (i = 0; i < len; i++) {
        char c = host[i];
        if (!isalnum((unsigned char)c) && c != '.' && c != '-' && c != '_')
            return false;
        if (!isdigit((unsigned char)c) && c != '.')
            dotted = false;
    }
    if (!dotted)
        return true;
    if (len >= sizeof buf)
        return false;
    memcpy(buf, host, len);
    buf[len] = '\0';
    return inet_pton(AF_INET, buf, &(struct in_addr){0}) == 1;
}

/*
 * listen = host:port, [ipv6]:port or hostname:port. Fills listen_host (IPv6
 * without its brackets) and listen_port.
 */
static int set_listen(const srv_key *k, void *base, const char *text, char *why,
                      size_t whylen)
{
    static const srv_key port_key = {
        .name = "port", .min = 1, .max = SRV_PORT_MAX};
    srv_config *cfg = base;
    const char *host, *port, *colon, *problem;
    char v6[INET6_ADDRSTRLEN];
    struct in6_addr a6;
    size_t hlen;
    uint64_t p;

    (void)k;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        problem = "expected [IPv6 address]:port";
        if (!close || close[1] != ':')
            goto bad;
        host = text + 1;
        hlen = (size_t)(close - host);
        port = close + 2;
        problem = "bad IPv6 address";
        if (hlen == 0 || hlen >= sizeof v6)
            goto bad;
        memcpy(v6, host, hlen);
        v6[hlen] = '\0';
        if (inet_pton(AF_INET6, v6, &a6) != 1)
            goto bad;
    } else {
        colon = strrchr(text, ':');
        problem = "missing port (expected host:port)";
        if (!colon)
            goto bad;
        host = text;
        hlen = (size_t)(colon - text);
        port = colon + 1;
        problem = "IPv6 addresses need brackets, as in [::1]:7400";
        if (memchr(host, ':', hlen))
            goto bad;
        problem = "bad host (expected an IPv4 address or a hostname)";
        if (!host_name_valid(host, hlen))
            goto bad;
    }
    if (parse_number(&port_key, port, &p, why, whylen) != 0) {
        char reason[SRV_WHY_BYTES];
        snprintf(reason, sizeof reason, "%s", why);
        snprintf(why, whylen, "bad listen address \"%.*s\": port %s",
                 SRV_SHOWN_VALUE_MAX, text, reason);
        return -1;
    }
    memcpy(cfg->listen_host, host, hlen);
    cfg->listen_host[hlen] = '\0';
    cfg->listen_port = (uint16_t)p;
    return 0;
bad:
    snprintf(why, whylen, "bad listen address \"%.*s\": %s",
             SRV_SHOWN_VALUE_MAX, text, problem);
    return -1;
}

/* ------------------------------------------------------------------ */
/* Keys and stores                                                      */

static const srv_key *find_key(enum srv_section sec, const char *name,
                               size_t len)
{
    size_t i;

    for (i = 0; i < SRV_NKEYS; i++)
        if (srv_keys[i].section == sec && strlen(srv_keys[i].name) == len &&
            memcmp(srv_keys[i].name, name, len) == 0)
            return &srv_keys[i];
    return NULL;
}

/* True when upper (len bytes) is k->name in upper case. */
static bool key_is_upper(const srv_key *k, const char *upper, size_t len)
{
    size_t i;

    if (strlen(k->name) != len)
        return false;
    for (i = 0; i < len; i++)
        if (toupper((unsigned char)k->name[i]) != (unsigned char)upper[i])
            return false;
    return true;
}

static const srv_key *find_key_upper(enum srv_section sec, const char *upper,
                                     size_t len)
{
    size_t i;

    for (i = 0; i < SRV_NKEYS; i++)
        if (srv_keys[i].section == sec &&
            key_is_upper(&srv_keys[i], upper, len))
            return &srv_keys[i];
    return NULL;
}

/* The default of k as text (numbers formatted into buf), or NULL. */
static const char *key_default(const srv_key *k, char *buf, size_t buflen)
{
    if (!k->number)
        return k->def;
    snprintf(buf, buflen, "%llu", (unsigned long long)k->def_num);
    return buf;
}

/*
 * The one place a value is set, whatever its source: runs the key's setter
 * on the field and remembers where the value came from (for the checks
 * made once every source is applied).
 */
static int key_apply(srv_loader *ld, const srv_key *k, size_t store,
                     const char *value)
{
    char why[SRV_WHY_BYTES], label[KV_STORE_NAME_MAX + 16];
    void *base = ld->cfg;
    const char *name = "";

    if (k->section == SRV_SEC_STORE) {
        base = &ld->cfg->stores[store];
        name = ld->cfg->stores[store].name;
    }
    if (k->set(k, base, value, why, sizeof why) != 0)
        return fail(
            ld, "%s %s: %s",
            section_label(k->section, name, strlen(name), label, sizeof label),
            k->name, why);
    if (k->section != SRV_SEC_STORE)
        memcpy(ld->key_where[k - srv_keys], ld->where, sizeof ld->where);
    else if (strcmp(k->name, "backend") == 0)
        memcpy(ld->store_where[store], ld->where, sizeof ld->where);
    return 0;
}

/* Applies the default of every key of sec that has one. */
static int section_defaults(srv_loader *ld, enum srv_section sec, size_t store)
{
    char buf[32];
    const char *def;
    size_t i;

    for (i = 0; i < SRV_NKEYS; i++) {
        if (srv_keys[i].section != sec)
            continue;
        def = key_default(&srv_keys[i], buf, sizeof buf);
        if (def && key_apply(ld, &srv_keys[i], store, def) != 0)
            return -1;
    }
    return 0;
}

/*
 * The index of the store called name (len bytes), added with the store
 * defaults when it is new. Fails on a bad name or out of memory.
 */
static int store_get(srv_loader *ld, const char *name, size_t len, size_t *out)
{
    srv_config *cfg = ld->cfg;
    char label[KV_STORE_NAME_MAX + 16];
    kv_err kerr = {0};
    size_t i;

    if (kv_check_store_name(name, len, &kerr) != 0)
        return fail(
            ld, "[store.%.*s]: bad store name: %s",
            (int)(len > SRV_SHOWN_VALUE_MAX ? SRV_SHOWN_VALUE_MAX : len), name,
            kerr.msg);
    for (i = 0; i < cfg->nstores; i++) {
        if (strlen(cfg->stores[i].name) == len &&
            memcmp(cfg->stores[i].name, name, len) == 0) {
            *out = i;
            return 0;
        }
    }
    if (cfg->nstores == ld->store_cap) {
        size_t cap = ld->store_cap ? ld->store_cap * 2 : SRV_SEC_STORECAP_FIRST;
        kv_store_conf *stores = realloc(cfg->stores, cap * sizeof *stores);
        char(*where)[SRV_WHERE_BYTES];

        if (stores)
            cfg->stores = stores;
        where = stores ? realloc(ld->store_where, cap * sizeof *where) : NULL;
        if (!where)
            return fail(
                ld, "%s: out of memory",
                section_label(SRV_SEC_STORE, name, len, label, sizeof label));
        ld->store_where = where;
        ld->store_cap = cap;
    }
    i = cfg->nstores++;
    memset(&cfg->stores[i], 0, sizeof cfg->stores[i]);
    memcpy(cfg->stores[i].name, name, len);
    memcpy(ld->store_where[i], ld->where, sizeof ld->where);
    *out = i;
    return section_defaults(ld, SRV_SEC_STORE, i);
}

static void store_conf_free(kv_store_conf *s)
{
    free(s->url);
    free(s->key_prefix);
    free(s->table);
    free(s->collection);
    s->url = s->key_prefix = s->table = s->collection = NULL;
}

/* ------------------------------------------------------------------ */
/* The file                                                             */

/*
 * A section header line (p starts with '['): switches the current section,
 * creating a store on [store.<name>]. A header without ']' is left to inih,
 * which reports it as a syntax error.
 */
static int section_begin(srv_loader *ld, const char *p)
{
    const char *name = p + 1, *close = strchr(p, ']');
    size_t len;

    ld->section = SRV_SEC_NONE;
    if (!close)
        return 0;
    len = (size_t)(close - name);
    if (len == 6 && memcmp(name, "server", 6) == 0)
        ld->section = SRV_SEC_SERVER;
    else if (len == 6 && memcmp(name, "pubsub", 6) == 0)
        ld->section = SRV_SEC_PUBSUB;
    else if (len >= 6 && memcmp(name, "store.", 6) == 0) {
        if (store_get(ld, name + 6, len - 6, &ld->store) != 0)
            return -1;
        ld->section = SRV_SEC_STORE;
    } else
        return fail(
            ld,
            "[%.*s]: unknown section (expected [server], "
            "[store.<name>] or [pubsub])",
            (int)(len > SRV_SHOWN_VALUE_MAX ? SRV_SHOWN_VALUE_MAX : len), name);
    return 0;
}

/*
 * inih's line reader: gives inih one line of the file per call (without
 * leading whitespace), so that ld->lineno is the line inih is on. Returns
 * NULL at the end of the file or after the first problem, which ends the
 * parse.
 */
static char *file_reader(char *str, int num, void *stream)
{
    srv_loader *ld = stream;
    ssize_t n;
    size_t len;
    char *p;

    if (ld->failed)
        return NULL;
    errno = 0;
    n = getline(&ld->line, &ld->linecap, ld->file);
    if (n < 0) {
        if (ferror(ld->file)) {
            set_where(ld, "%s", ld->path);
            fail(ld, "cannot read: %s", strerror(errno ? errno : EIO));
        }
        return NULL;
    }
    ld->lineno++;
    set_where(ld, "%s:%d", ld->path, ld->lineno);
    len = (size_t)n;
    if (memchr(ld->line, '\0', len)) {
        fail(ld, "line contains a NUL byte");
        return NULL;
    }
    while (len > 0 && (ld->line[len - 1] == '\n' || ld->line[len - 1] == '\r'))
        ld->line[--len] = '\0';
    p = ld->line;
    if (ld->lineno == 1 && len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
        p += 3; /* UTF-8 byte order mark */
    while (*p == ' ' || *p == '\t')
        p++;
    len = strlen(p);
    if (num < 1 || len >= (size_t)num) {
        fail(ld,
             "line too long (%zu bytes, at most %d); set long values with "
             "KVBUS_* variables or flags",
             len, num > 0 ? num - 1 : 0);
        return NULL;
    }
    if (*p == '[' && section_begin(ld, p) != 0)
        return NULL;
    memcpy(str, p, len + 1);
    return str;
}

/*
 * inih's handler, called for each "key = value" of the line just read.
 * The section argument is ignored: the reader tracked it untruncated.
 */
static int file_handler(void *user, const char *section, const char *name,
                        const char *value)
{
    srv_loader *ld = user;
    char label[KV_STORE_NAME_MAX + 16];
    const char *store = "";
    const srv_key *k;

    (void)section;
    if (ld->failed)
        return 0;
    if (ld->section == SRV_SEC_NONE) {
        fail(ld,
             "%s: key outside any section (start with [server], "
             "[store.<name>] or [pubsub])",
             name);
        return 0;
    }
    if (ld->section == SRV_SEC_STORE)
        store = ld->cfg->stores[ld->store].name;
    k = find_key(ld->section, name, strlen(name));
    if (!k) {
        fail(ld, "%s %s: unknown key",
             section_label(ld->section, store, strlen(store), label,
                           sizeof label),
             name);
        return 0;
    }
    return key_apply(ld, k, ld->store, value) == 0;
}

static int load_file(srv_loader *ld, const char *path)
{
    int r;

    set_where(ld, "%s", path);
    ld->cfg->config_path = strdup(path);
    if (!ld->cfg->config_path)
        return fail(ld, "out of memory");
    ld->file = fopen(path, "r");
    if (!ld->file)
        return fail(ld, "cannot read: %s", strerror(errno));
    ld->path = path;
    ld->lineno = 0;
    ld->section = SRV_SEC_NONE;
    r = ini_parse_stream(file_reader, ld, file_handler, ld);
    fclose(ld->file);
    ld->file = NULL;
    free(ld->line);
    ld->line = NULL;
    ld->linecap = 0;
    if (r > 0 && (!ld->failed || r < ld->fail_line)) {
        /* inih found a syntax error before any problem of ours. */
        ld->failed = false;
        set_where(ld, "%s:%d", path, r);
        return fail(ld, "syntax error (expected [section], key = value or a "
                        "; comment)");
    }
    if (r < 0 && !ld->failed)
        return fail(ld, "cannot parse (inih error %d)", r);
    return ld->failed ? -1 : 0;
}

/* ------------------------------------------------------------------ */
/* Environment and flags                                                */

/*
 * KVBUS_STORE_<name>_<KEY>: finds the store key whose upper-case name ends
 * rest (the longest one wins), and the store name before it.
 */
static const srv_key *match_store_env(const char *rest, size_t len,
                                      size_t *name_len)
{
    const srv_key *best = NULL;
    size_t i, klen;

    for (i = 0; i < SRV_NKEYS; i++) {
        if (srv_keys[i].section != SRV_SEC_STORE)
            continue;
        klen = strlen(srv_keys[i].name);
        if (len < klen + 2 || rest[len - klen - 1] != '_' ||
            !key_is_upper(&srv_keys[i], rest + len - klen, klen))
            continue;
        if (!best || klen > strlen(best->name)) {
            best = &srv_keys[i];
            *name_len = len - klen - 1;
        }
    }
    return best;
}

/* Applies every KVBUS_SERVER_*, KVBUS_STORE_* and KVBUS_PUBSUB_* entry. */
static int apply_env(srv_loader *ld, char **envp)
{
    static const struct {
        const char *prefix;
        enum srv_section sec;
    } sections[] = {
        {"KVBUS_SERVER_", SRV_SEC_SERVER},
        {"KVBUS_STORE_", SRV_SEC_STORE},
        {"KVBUS_PUBSUB_", SRV_SEC_PUBSUB},
    };
    char label[KV_STORE_NAME_MAX + 16];
    char **e;

    for (e = envp; e && *e; e++) {
        const char *eq = strchr(*e, '='), *rest, *value;
        const srv_key *k;
        size_t i, len, name_len = 0, store = 0, plen = 0;
        enum srv_section sec = SRV_SEC_NONE;

        if (!eq || strncmp(*e, "KVBUS_", 6) != 0)
            continue;
        for (i = 0; i < sizeof sections / sizeof sections[0]; i++) {
            plen = strlen(sections[i].prefix);
            if (strncmp(*e, sections[i].prefix, plen) == 0) {
                sec = sections[i].sec;
                break;
            }
        }
        if (sec == SRV_SEC_NONE)
            continue; /* KVBUS_CONFIG, or not ours */
        set_where(ld, "environment %.*s", (int)(eq - *e), *e);
        rest = *e + plen;
        len = (size_t)(eq - rest);
        value = eq + 1;
        if (sec == SRV_SEC_STORE) {
            k = match_store_env(rest, len, &name_len);
            if (!k)
                return fail(ld, "unknown store variable (expected "
                                "KVBUS_STORE_<name>_<KEY>; see kvbusd --help)");
            if (store_get(ld, rest, name_len, &store) != 0)
                return -1;
        } else {
            k = find_key_upper(sec, rest, len);
            if (!k)
                return fail(ld, "%s %.*s: unknown key",
                            section_label(sec, "", 0, label, sizeof label),
                            (int)len, rest);
        }
        if (key_apply(ld, k, store, value) != 0)
            return -1;
    }
    return 0;
}

/*
 * Resolves the flag name "server.<key>", "pubsub.<key>" or
 * "store.<name>.<key>" (len bytes, without "--") to its key and, for a
 * store, its name. Fails naming the flag when it is not one.
 */
static const srv_key *resolve_flag(srv_loader *ld, const char *flag, size_t len,
                                   const char **store, size_t *store_len)
{
    char label[KV_STORE_NAME_MAX + 16];
    enum srv_section sec;
    const char *key;
    const srv_key *k;
    size_t klen;

    *store = "";
    *store_len = 0;
    if (len > 7 && memcmp(flag, "server.", 7) == 0) {
        sec = SRV_SEC_SERVER;
        key = flag + 7;
    } else if (len > 7 && memcmp(flag, "pubsub.", 7) == 0) {
        sec = SRV_SEC_PUBSUB;
        key = flag + 7;
    } else if (len > 6 && memcmp(flag, "store.", 6) == 0) {
        const char *dot = flag + len;
        while (dot > flag + 6 && dot[-1] != '.')
            dot--;
        if (dot == flag + 6) {
            fail(ld, "unknown flag (stores take --store.<name>.<key>)");
            return NULL;
        }
        sec = SRV_SEC_STORE;
        *store = flag + 6;
        *store_len = (size_t)(dot - 1 - *store);
        key = dot;
    } else {
        fail(ld, "unknown flag (see kvbusd --help)");
        return NULL;
    }
    klen = (size_t)(flag + len - key);
    k = find_key(sec, key, klen);
    if (!k) {
        fail(ld, "%s %.*s: unknown key",
             section_label(sec, *store, *store_len, label, sizeof label),
             (int)klen, key);
        return NULL;
    }
    if (sec == SRV_SEC_STORE) {
        kv_err kerr = {0};
        if (kv_check_store_name(*store, *store_len, &kerr) != 0) {
            fail(ld, "%s: bad store name: %s",
                 section_label(sec, *store, *store_len, label, sizeof label),
                 kerr.msg);
            return NULL;
        }
    }
    return k;
}

static bool is_exit_flag(const char *a)
{
    return strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0 ||
           strcmp(a, "--version") == 0;
}

/*
 * Walks argv. With apply false it only checks every flag and finds the
 * config file (-c PATH, --config PATH, --config=PATH; the last wins); with
 * apply true it sets each key. Help and version flags are skipped (they
 * were handled first).
 */
static int walk_flags(srv_loader *ld, int argc, char **argv, bool apply,
                      const char **config)
{
    int i;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *eq, *value, *store;
        const srv_key *k;
        size_t nlen, store_len, store_index = 0;

        if (is_exit_flag(a))
            continue;
        if (a[0] != '-') {
            set_where(ld, "argument \"%.*s\"", SRV_SHOWN_VALUE_MAX, a);
            return fail(ld, "unexpected (kvbusd takes only flags; see "
                            "kvbusd --help)");
        }
        eq = strchr(a, '=');
        nlen = eq ? (size_t)(eq - a) : strlen(a);
        set_where(ld, "flag %.*s", (int)nlen, a);
        if (strncmp(a, "--", 2) != 0 && strcmp(a, "-c") != 0)
            return fail(ld, "unknown flag (see kvbusd --help)");
        if (eq)
            value = eq + 1;
        else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0)
            value = argv[++i];
        else
            return fail(ld, "missing value");
        if ((nlen == 2 && memcmp(a, "-c", 2) == 0) ||
            (nlen == 8 && memcmp(a, "--config", 8) == 0)) {
            if (*value == '\0')
                return fail(ld, "empty file path");
            *config = value;
            continue;
        }
        k = resolve_flag(ld, a + 2, nlen - 2, &store, &store_len);
        if (!k)
            return -1;
        if (!apply)
            continue;
        if (k->section == SRV_SEC_STORE &&
            store_get(ld, store, store_len, &store_index) != 0)
            return -1;
        if (key_apply(ld, k, store_index, value) != 0)
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Defaults and final checks                                            */

/* hostname-pid, made valid as a node_id whatever the hostname holds. */
static void default_node_id(char *out, size_t outlen)
{
    char host[256] = "";
    size_t i;

    if (gethostname(host, sizeof host - 1) != 0 || host[0] == '\0')
        snprintf(host, sizeof host, "kvbusd");
    host[sizeof host - 1] = '\0';
    for (i = 0; host[i]; i++)
        if (host[i] <= ' ' || host[i] > '~' || host[i] == ':')
            host[i] = '-';
    /* Room for "-" and the longest pid within SRV_NODE_ID_MAX. */
    snprintf(out, outlen, "%.*s-%ld", SRV_NODE_ID_MAX - 21, host,
             (long)getpid());
}

static int apply_defaults(srv_loader *ld)
{
    char node_id[SRV_NODE_ID_MAX + 1];
    size_t store;

    set_where(ld, "default");
    if (section_defaults(ld, SRV_SEC_SERVER, 0) != 0 ||
        section_defaults(ld, SRV_SEC_PUBSUB, 0) != 0)
        return -1;
    default_node_id(node_id, sizeof node_id);
    if (key_apply(ld, find_key(SRV_SEC_SERVER, "node_id", 7), 0, node_id))
        return -1;
    return store_get(ld, "default", 7, &store);
}

static bool needs_url(const char *backend_or_provider)
{
    return strcmp(backend_or_provider, "memory") != 0;
}

/*
 * tls_cert and tls_key: both or neither, each a readable file. Whether they
 * are PEM and match each other is checked by srv_tls_ctx_new() at start-up.
 */
static int check_tls(srv_loader *ld)
{
    const srv_config *cfg = ld->cfg;
    const char *names[2] = {"tls_cert", "tls_key"};
    const char *paths[2] = {cfg->tls_cert, cfg->tls_key};
    const srv_key *k;
    FILE *f;
    int i;

    for (i = 0; i < 2; i++) {
        k = find_key(SRV_SEC_SERVER, names[i], strlen(names[i]));
        if (!paths[i] && !paths[1 - i])
            return 0;
        if (!paths[i]) {
            k = find_key(SRV_SEC_SERVER, names[1 - i], strlen(names[1 - i]));
            memcpy(ld->where, ld->key_where[k - srv_keys], sizeof ld->where);
            return fail(ld,
                        "[server] %s: missing; %s needs it (set both or "
                        "neither)",
                        names[i], names[1 - i]);
        }
        memcpy(ld->where, ld->key_where[k - srv_keys], sizeof ld->where);
        f = fopen(paths[i], "r");
        if (!f)
            return fail(ld, "[server] %s: cannot read %s: %s", names[i],
                        paths[i], strerror(errno));
        fclose(f);
    }
    return 0;
}

/* The checks that need every source applied. */
static int check_final(srv_loader *ld)
{
    srv_config *cfg = ld->cfg;
    const srv_key *k;
    size_t i;

    for (i = 0; i < cfg->nstores; i++) {
        const kv_store_conf *s = &cfg->stores[i];
        if (needs_url(s->backend) && !s->url) {
            memcpy(ld->where, ld->store_where[i], sizeof ld->where);
            return fail(ld, "[store.%s] url: missing; backend %s needs one",
                        s->name, s->backend);
        }
    }
    if (needs_url(cfg->pubsub.provider) && !cfg->pubsub.url) {
        k = find_key(SRV_SEC_PUBSUB, "provider", 8);
        memcpy(ld->where, ld->key_where[k - srv_keys], sizeof ld->where);
        return fail(ld, "[pubsub] url: missing; provider %s needs one",
                    cfg->pubsub.provider);
    }
    if (check_tls(ld) != 0)
        return -1;
    if (cfg->nstores > cfg->limits.max_stores) {
        k = find_key(SRV_SEC_SERVER, "max_stores", 10);
        memcpy(ld->where, ld->key_where[k - srv_keys], sizeof ld->where);
        return fail(ld,
                    "[server] max_stores: %zu stores are configured (with "
                    "\"default\"), more than max_stores = %zu",
                    cfg->nstores, cfg->limits.max_stores);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Public API                                                           */

int srv_config_load(srv_config *cfg, int argc, char **argv, char **envp,
                    char *err, size_t errlen)
{
    srv_loader *ld;
    const char *config = NULL;
    char **e;
    int i, rc = SRV_CONFIG_BAD;

    memset(cfg, 0, sizeof *cfg);
    if (errlen > 0)
        err[0] = '\0';
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--version") == 0) {
            printf("kvbusd %s\n", SRV_VERSION);
            return SRV_CONFIG_EXIT;
        }
        if (is_exit_flag(argv[i])) {
            srv_config_usage(stdout);
            return SRV_CONFIG_EXIT;
        }
    }
    /* The loader holds a where per key: too big for a small stack frame. */
    ld = calloc(1, sizeof *ld);
    if (!ld) {
        snprintf(err, errlen, "out of memory");
        return SRV_CONFIG_BAD;
    }
    ld->cfg = cfg;
    ld->err = err;
    ld->errlen = errlen;
    if (walk_flags(ld, argc, argv, false, &config) != 0)
        goto done;
    for (e = envp; !config && e && *e; e++) {
        if (strncmp(*e, "KVBUS_CONFIG=", 13) == 0) {
            set_where(ld, "environment KVBUS_CONFIG");
            if ((*e)[13] == '\0') {
                fail(ld, "empty file path");
                goto done;
            }
            config = *e + 13;
        }
    }
    if (apply_defaults(ld) != 0)
        goto done;
    if (config && load_file(ld, config) != 0)
        goto done;
    if (apply_env(ld, envp) != 0 ||
        walk_flags(ld, argc, argv, true, &config) != 0 || check_final(ld) != 0)
        goto done;
    rc = SRV_CONFIG_OK;
done:
    if (rc != SRV_CONFIG_OK && !ld->failed)
        snprintf(err, errlen, "configuration: unknown error");
    free(ld->store_where);
    free(ld);
    return rc;
}

void srv_config_free(srv_config *cfg)
{
    size_t i;

    if (!cfg)
        return;
    free(cfg->config_path);
    free(cfg->tokens_file);
    for (i = 0; i < cfg->nstores; i++)
        store_conf_free(&cfg->stores[i]);
    free(cfg->stores);
    free(cfg->pubsub.url);
    free(cfg->pubsub.channel_prefix);
    free(cfg->pubsub.kafka_topic);
    free(cfg->tls_cert);
    free(cfg->tls_key);
    memset(cfg, 0, sizeof *cfg);
}

/* "--server.listen=HOST:PORT" and "KVBUS_SERVER_LISTEN" for k. */
static void usage_key(FILE *out, const srv_key *k)
{
    static const char *const sec_flag[] = {[SRV_SEC_SERVER] = "server.",
                                           [SRV_SEC_STORE] = "store.NAME.",
                                           [SRV_SEC_PUBSUB] = "pubsub."};
    static const char *const sec_env[] = {[SRV_SEC_SERVER] = "SERVER_",
                                          [SRV_SEC_STORE] = "STORE_<NAME>_",
                                          [SRV_SEC_PUBSUB] = "PUBSUB_"};
    char arg[128], buf[32];
    const char *def = key_default(k, buf, sizeof buf), *p;
    size_t i;

    arg[0] = '\0';
    if (k->arg)
        snprintf(arg, sizeof arg, "%s", k->arg);
    for (i = 0; !k->arg && k->choices[i]; i++)
        snprintf(arg + strlen(arg), sizeof arg - strlen(arg), "%s%s",
                 i ? "|" : "", k->choices[i]);
    fprintf(out, "  --%s%s=%s\n      KVBUS_%s", sec_flag[k->section], k->name,
            arg, sec_env[k->section]);
    for (p = k->name; *p; p++)
        fputc(toupper((unsigned char)*p), out);
    fprintf(out, "; default %s\n", def ? def : k->doc_def);
    fprintf(out, "      %s\n", k->help);
}

void srv_config_usage(void *out_file)
{
    static const struct {
        enum srv_section sec;
        const char *title;
    } sections[] = {
        {SRV_SEC_SERVER, "[server]"},
        {SRV_SEC_STORE, "[store.NAME]  one section per store; NAME is 1-64 "
                        "of A-Z a-z 0-9 _ . -"},
        {SRV_SEC_PUBSUB, "[pubsub]"},
    };
    FILE *out = out_file;
    size_t s, i;

    fprintf(out,
            "usage: kvbusd [-c FILE] [--SECTION.KEY=VALUE ...]\n"
            "\n"
            "  -c, --config FILE   read this INI file (also KVBUS_CONFIG)\n"
            "  -h, --help          print this help and exit\n"
            "      --version       print the version and exit\n"
            "\n"
            "Every key is set in the file as [section] key = value, in the\n"
            "environment as KVBUS_<SECTION>_<KEY>, or by flag as\n"
            "--section.key=VALUE or --section.key VALUE. Flags win over the\n"
            "environment, which wins over the file. Bad configuration is\n"
            "reported on one line and kvbusd exits with status 2.\n");
    for (s = 0; s < sizeof sections / sizeof sections[0]; s++) {
        fprintf(out, "\n%s\n", sections[s].title);
        for (i = 0; i < SRV_NKEYS; i++)
            if (srv_keys[i].section == sections[s].sec)
                usage_key(out, &srv_keys[i]);
    }
}
