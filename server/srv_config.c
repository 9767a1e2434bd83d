/*
 * srv_config.c - kvbusd's configuration loader: defaults, then an INI file
 * (parsed by libinih), then KVBUS_* environment variables, then command-line
 * flags, each later source overriding the earlier ones key by key.
 *
 * Every key is one row of srv__keys[] (srv_config_keys.c): section, name,
 * setter, field, limits, default and help. Defaults, the file, the environment
 * and flags all set values through key_apply(), and srv_config_usage() prints
 * the same rows, so a key is defined exactly once. The first problem found
 * stops the load and becomes one line naming its source (file:line, environment
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

#include "server/srv_config_int.h"
#include "server/srv_log.h"

#define SRV_WHERE_BYTES 320 /* "path:line", "environment X", "flag --x" */
#define SRV_SEC_STORECAP_FIRST 4

/* The state of one srv_config_load() call. */
typedef struct srv_loader {
    srv_config *cfg;
    char *err;
    size_t errlen;
    bool failed;                 /* err holds the first problem */
    int fail_line;               /* file line of it; 0 = not file */
    char where[SRV_WHERE_BYTES]; /* source of the value at hand */
    char key_where[SRV__NKEYS][SRV_WHERE_BYTES]; /* server/pubsub: last set */
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

/* ------------------------------------------------------------------ */
/* Keys and stores                                                      */

static const srv_key *find_key(enum srv_section sec, const char *name,
                               size_t len)
{
    size_t i;

    for (i = 0; i < SRV__NKEYS; i++)
        if (srv__keys[i].section == sec && strlen(srv__keys[i].name) == len &&
            memcmp(srv__keys[i].name, name, len) == 0)
            return &srv__keys[i];
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

    for (i = 0; i < SRV__NKEYS; i++)
        if (srv__keys[i].section == sec &&
            key_is_upper(&srv__keys[i], upper, len))
            return &srv__keys[i];
    return NULL;
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
        memcpy(ld->key_where[k - srv__keys], ld->where, sizeof ld->where);
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

    for (i = 0; i < SRV__NKEYS; i++) {
        if (srv__keys[i].section != sec)
            continue;
        def = srv__key_default(&srv__keys[i], buf, sizeof buf);
        if (def && key_apply(ld, &srv__keys[i], store, def) != 0)
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

    for (i = 0; i < SRV__NKEYS; i++) {
        if (srv__keys[i].section != SRV_SEC_STORE)
            continue;
        klen = strlen(srv__keys[i].name);
        if (len < klen + 2 || rest[len - klen - 1] != '_' ||
            !key_is_upper(&srv__keys[i], rest + len - klen, klen))
            continue;
        if (!best || klen > strlen(best->name)) {
            best = &srv__keys[i];
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
            memcpy(ld->where, ld->key_where[k - srv__keys], sizeof ld->where);
            return fail(ld,
                        "[server] %s: missing; %s needs it (set both or "
                        "neither)",
                        names[i], names[1 - i]);
        }
        memcpy(ld->where, ld->key_where[k - srv__keys], sizeof ld->where);
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
        memcpy(ld->where, ld->key_where[k - srv__keys], sizeof ld->where);
        return fail(ld, "[pubsub] url: missing; provider %s needs one",
                    cfg->pubsub.provider);
    }
    if (check_tls(ld) != 0)
        return -1;
    if (cfg->nstores > cfg->limits.max_stores) {
        k = find_key(SRV_SEC_SERVER, "max_stores", 10);
        memcpy(ld->where, ld->key_where[k - srv__keys], sizeof ld->where);
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
