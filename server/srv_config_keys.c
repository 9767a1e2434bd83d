/*
 * srv_config_keys.c - every key of kvbusd's configuration, once: the rows
 * of srv__keys[] (section, name, setter, field, limits, default and help),
 * the setters that parse and check each kind of value, and the usage text
 * printed from the same rows. The loader that applies them from the
 * defaults, the file, the environment and the flags is srv_config.c.
 *
 * Runs on: the main thread at start-up, before the event loop exists. No
 * global mutable state: the table is constant.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "server/srv_config_int.h"
#include "server/srv_log.h"

#define SRV_HOSTNAME_MAX 253 /* DNS name, without the port */
#define SRV_PORT_MAX 65535
#define SRV_KIB 1024ull
#define SRV_MIB (1024ull * 1024ull)
#define SRV_GIB (1024ull * 1024ull * 1024ull)

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
 * Row makers for srv__keys[], one per kind of value, so that each key reads
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
const srv_key srv__keys[] = {
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

_Static_assert(sizeof srv__keys / sizeof srv__keys[0] == SRV__NKEYS,
               "SRV__NKEYS counts the rows of srv__keys[]");

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

/* The default of k as text (numbers formatted into buf), or NULL. */
const char *srv__key_default(const srv_key *k, char *buf, size_t buflen)
{
    if (!k->number)
        return k->def;
    snprintf(buf, buflen, "%llu", (unsigned long long)k->def_num);
    return buf;
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
    const char *def = srv__key_default(k, buf, sizeof buf), *p;
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
        for (i = 0; i < SRV__NKEYS; i++)
            if (srv__keys[i].section == sections[s].sec)
                usage_key(out, &srv__keys[i]);
    }
}
