/*
 * test_config.c - unit tests of kvbusd's configuration loader
 * (server/srv_config.c, server/srv_config_keys.c): defaults, the INI file,
 * KVBUS_* environment variables and flags, their precedence, and the
 * one-line error for each kind of bad configuration. Files are written with
 * mkstemp in /tmp; nothing else outside the process is touched.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "server/srv_config.h"
#include "server/srv_log.h"

typedef struct fixture {
    srv_config cfg;
    char err[SRV_CONFIG_ERR_BYTES];
    char path[64];  /* the temporary config file, "" when none */
    char where[96]; /* "<path>:<line>: " built by expect_bad_at() */
} fixture;

#define ARGV(...) ((char *[]){"kvbusd", __VA_ARGS__, NULL})
#define ENVP(...) ((char *[]){__VA_ARGS__, NULL})

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);

    assert_non_null(f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    srv_config_free(&f->cfg);
    if (f->path[0])
        unlink(f->path);
    free(f);
    return 0;
}

/* Writes text to a new temporary file whose path lands in f->path. */
static const char *write_conf(fixture *f, const char *text)
{
    size_t len = strlen(text);
    int fd;

    if (f->path[0])
        unlink(f->path);
    snprintf(f->path, sizeof f->path, "/tmp/kvbus-test-config-XXXXXX");
    fd = mkstemp(f->path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    return f->path;
}

/* Loads with argv (NULL = no flags) and envp (NULL = empty environment). */
static int load(fixture *f, char **argv, char **envp)
{
    static char *no_argv[] = {"kvbusd", NULL};
    static char *no_envp[] = {NULL};
    int argc = 0;

    if (!argv)
        argv = no_argv;
    while (argv[argc])
        argc++;
    srv_config_free(&f->cfg);
    return srv_config_load(&f->cfg, argc, argv, envp ? envp : no_envp, f->err,
                           sizeof f->err);
}

/* Loads the file holding text, with no environment and no other flag. */
static int load_text(fixture *f, const char *text)
{
    return load(f, ARGV("-c", (char *)write_conf(f, text)), NULL);
}

/* Asserts a SRV_CONFIG_BAD result whose one-line error holds every part. */
static void expect_bad_parts(fixture *f, int rc, const char *prefix, va_list ap)
{
    const char *part;

    if (rc != SRV_CONFIG_BAD)
        fail_msg("expected SRV_CONFIG_BAD, got %d (err \"%s\")", rc, f->err);
    assert_null(strchr(f->err, '\n'));
    if (prefix && strncmp(f->err, prefix, strlen(prefix)) != 0)
        fail_msg("error \"%s\" does not start with \"%s\"", f->err, prefix);
    while ((part = va_arg(ap, const char *)) != NULL)
        if (!strstr(f->err, part))
            fail_msg("error \"%s\" lacks \"%s\"", f->err, part);
}

/* Parts are NULL-terminated. */
static void expect_bad(fixture *f, int rc, ...)
{
    va_list ap;

    va_start(ap, rc);
    expect_bad_parts(f, rc, NULL, ap);
    va_end(ap);
}

/* Same, and the error starts with "<config file>:<line>: ". */
static void expect_bad_at(fixture *f, int line, int rc, ...)
{
    va_list ap;

    snprintf(f->where, sizeof f->where, "%s:%d: ", f->path, line);
    va_start(ap, rc);
    expect_bad_parts(f, rc, f->where, ap);
    va_end(ap);
}

static void expect_ok(fixture *f, int rc)
{
    if (rc != SRV_CONFIG_OK)
        fail_msg("expected SRV_CONFIG_OK, got %d: %s", rc, f->err);
}

static const kv_store_conf *store(const fixture *f, const char *name)
{
    size_t i;

    for (i = 0; i < f->cfg.nstores; i++)
        if (strcmp(f->cfg.stores[i].name, name) == 0)
            return &f->cfg.stores[i];
    fail_msg("no store %s", name);
    return NULL;
}

/* Runs a load with stdout sent to /dev/null (for --help and --version). */
static int load_quietly(fixture *f, char **argv)
{
    int saved, devnull, rc;

    fflush(stdout);
    saved = dup(STDOUT_FILENO);
    devnull = open("/dev/null", O_WRONLY);
    assert_true(saved >= 0 && devnull >= 0);
    dup2(devnull, STDOUT_FILENO);
    close(devnull);
    rc = load(f, argv, NULL);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Defaults                                                             */

static void defaults__no_sources__match_spec(void **state)
{
    fixture *f = *state;

    expect_ok(f, load(f, NULL, NULL));
    assert_null(f->cfg.config_path);
    assert_string_equal(f->cfg.listen_host, "127.0.0.1");
    assert_int_equal(f->cfg.listen_port, 7400);
    assert_int_equal(f->cfg.limits.max_key_bytes, KV_MAX_KEY_BYTES_DEFAULT);
    assert_int_equal(f->cfg.limits.max_value_bytes, KV_MAX_VALUE_BYTES_DEFAULT);
    assert_int_equal(f->cfg.limits.max_stores, KV_MAX_STORES_DEFAULT);
    assert_int_equal(f->cfg.max_uri_bytes, 8192);
    assert_int_equal(f->cfg.max_header_bytes, 16384);
    assert_int_equal(f->cfg.max_connections, 10000);
    assert_int_equal(f->cfg.ws_queue_bytes, 1048576);
    assert_int_equal(f->cfg.ws_stall_ms, 10000);
    assert_int_equal(f->cfg.shutdown_grace_ms, 5000);
    assert_int_equal(f->cfg.log_level, SRV_LOG_INFO);
    assert_null(f->cfg.tokens_file);
    assert_string_equal(f->cfg.pubsub.provider, "memory");
    assert_null(f->cfg.pubsub.url);
    assert_string_equal(f->cfg.pubsub.channel_prefix, "kvbus:");
    assert_string_equal(f->cfg.pubsub.kafka_topic, "kvbus-pubsub");
    assert_string_equal(f->cfg.pubsub.format, "kvbus");
}

static void defaults__no_sources__one_memory_store_called_default(void **state)
{
    fixture *f = *state;
    const kv_store_conf *s;

    expect_ok(f, load(f, NULL, NULL));
    assert_int_equal(f->cfg.nstores, 1);
    s = store(f, "default");
    assert_string_equal(s->backend, "memory");
    assert_null(s->url);
    assert_null(s->key_prefix);
    assert_null(s->table);
    assert_null(s->collection);
    assert_false(s->notify);
    assert_int_equal(s->op_timeout_ms, KV_OP_TIMEOUT_MS_DEFAULT);
}

static void defaults__node_id__is_hostname_dash_pid(void **state)
{
    fixture *f = *state;
    char host[256] = "", expected[64];
    const char *id;

    expect_ok(f, load(f, NULL, NULL));
    id = f->cfg.node_id;
    snprintf(expected, sizeof expected, "-%ld", (long)getpid());
    assert_true(strlen(id) > strlen(expected));
    assert_string_equal(id + strlen(id) - strlen(expected), expected);
    assert_null(strchr(id, ':'));
    assert_int_equal(gethostname(host, sizeof host - 1), 0);
    if (!strchr(host, ':'))
        assert_memory_equal(id, host, strlen(id) - strlen(expected));
}

/* ------------------------------------------------------------------ */
/* The file                                                             */

static void file__every_section_and_key__parsed(void **state)
{
    fixture *f = *state;
    const kv_store_conf *s;

    expect_ok(f, load_text(f, "; kvbusd test\n"
                              "[server]\n"
                              "listen = 0.0.0.0:8000\n"
                              "node_id = node-a\n"
                              "max_key_bytes = 512\n"
                              "max_value_bytes = 2048\n"
                              "max_stores = 16\n"
                              "max_uri_bytes = 4096\n"
                              "max_header_bytes = 8192\n"
                              "max_connections = 50\n"
                              "ws_queue_bytes = 65536\n"
                              "ws_stall_ms = 250\n"
                              "shutdown_grace_ms = 0\n"
                              "log_level = debug\n"
                              "[store.sessions]\n"
                              "backend = redis\n"
                              "url = redis://127.0.0.1:6379/0\n"
                              "key_prefix = kvbus:sessions:   ; comment\n"
                              "notify = yes\n"
                              "op_timeout_ms = 500\n"
                              "[store.durable]\n"
                              "backend = postgres\n"
                              "url = postgresql://kvbus@127.0.0.1/kvbus\n"
                              "table = kv_durable\n"
                              "[store.docs]\n"
                              "backend = mongodb\n"
                              "url = mongodb://127.0.0.1:27017/kvbus\n"
                              "collection = kv.docs\n"
                              "[pubsub]\n"
                              "provider = kafka\n"
                              "url = k1:9092,k2:9092\n"
                              "channel_prefix = inval:\n"
                              "kafka_topic = my-topic\n"
                              "format = nuxeo\n"));
    assert_string_equal(f->cfg.config_path, f->path);
    assert_string_equal(f->cfg.listen_host, "0.0.0.0");
    assert_int_equal(f->cfg.listen_port, 8000);
    assert_string_equal(f->cfg.node_id, "node-a");
    assert_int_equal(f->cfg.limits.max_key_bytes, 512);
    assert_int_equal(f->cfg.limits.max_value_bytes, 2048);
    assert_int_equal(f->cfg.limits.max_stores, 16);
    assert_int_equal(f->cfg.max_uri_bytes, 4096);
    assert_int_equal(f->cfg.max_header_bytes, 8192);
    assert_int_equal(f->cfg.max_connections, 50);
    assert_int_equal(f->cfg.ws_queue_bytes, 65536);
    assert_int_equal(f->cfg.ws_stall_ms, 250);
    assert_int_equal(f->cfg.shutdown_grace_ms, 0);
    assert_int_equal(f->cfg.log_level, SRV_LOG_DEBUG);

    assert_int_equal(f->cfg.nstores, 4);
    assert_string_equal(store(f, "default")->backend, "memory");
    s = store(f, "sessions");
    assert_string_equal(s->backend, "redis");
    assert_string_equal(s->url, "redis://127.0.0.1:6379/0");
    assert_string_equal(s->key_prefix, "kvbus:sessions:");
    assert_true(s->notify);
    assert_int_equal(s->op_timeout_ms, 500);
    s = store(f, "durable");
    assert_string_equal(s->backend, "postgres");
    assert_string_equal(s->url, "postgresql://kvbus@127.0.0.1/kvbus");
    assert_string_equal(s->table, "kv_durable");
    assert_false(s->notify);
    assert_int_equal(s->op_timeout_ms, KV_OP_TIMEOUT_MS_DEFAULT);
    s = store(f, "docs");
    assert_string_equal(s->backend, "mongodb");
    assert_string_equal(s->collection, "kv.docs");

    assert_string_equal(f->cfg.pubsub.provider, "kafka");
    assert_string_equal(f->cfg.pubsub.url, "k1:9092,k2:9092");
    assert_string_equal(f->cfg.pubsub.channel_prefix, "inval:");
    assert_string_equal(f->cfg.pubsub.kafka_topic, "my-topic");
    assert_string_equal(f->cfg.pubsub.format, "nuxeo");
}

static void file__spec_example__loads(void **state)
{
    fixture *f = *state;

    expect_ok(
        f, load_text(f, "[server]\n"
                        "listen = 127.0.0.1:7400        ; secure default\n"
                        "node_id = node-a               ; must not contain "
                        "':'\n"
                        "max_key_bytes = 1024\n"
                        "max_value_bytes = 1048576\n"
                        "[store.default]\n"
                        "backend = memory               ; memory | redis\n"
                        "[store.sessions]\n"
                        "backend = redis\n"
                        "url = redis://127.0.0.1:6379/0\n"
                        "key_prefix = kvbus:sessions:   ; default\n"
                        "notify = true                  ; publish\n"
                        "[store.durable]\n"
                        "backend = postgres\n"
                        "url = postgresql://kvbus@127.0.0.1/kvbus\n"
                        "table = kv_durable             ; default kv_<store>\n"
                        "[store.docs]\n"
                        "backend = mongodb\n"
                        "url = mongodb://127.0.0.1:27017/kvbus\n"
                        "collection = kv.docs           ; default kv.<store>\n"
                        "[pubsub]\n"
                        "provider = memory              ; memory | redis\n"
                        "url = redis://127.0.0.1:6379   ; or kafka\n"
                        "channel_prefix = kvbus:        ; redis\n"
                        "kafka_topic = kvbus-pubsub     ; kafka\n"
                        "format = kvbus                 ; kvbus | nuxeo\n"));
    assert_int_equal(f->cfg.nstores, 4);
    assert_string_equal(f->cfg.stores[0].name, "default");
    assert_string_equal(store(f, "sessions")->key_prefix, "kvbus:sessions:");
    assert_true(store(f, "sessions")->notify);
    assert_string_equal(f->cfg.pubsub.url, "redis://127.0.0.1:6379");
}

static void file__store_without_keys__is_memory_with_defaults(void **state)
{
    fixture *f = *state;
    const kv_store_conf *s;

    expect_ok(f, load_text(f, "[store.cache]\n"));
    assert_int_equal(f->cfg.nstores, 2);
    s = store(f, "cache");
    assert_string_equal(s->backend, "memory");
    assert_false(s->notify);
    assert_int_equal(s->op_timeout_ms, KV_OP_TIMEOUT_MS_DEFAULT);
}

static void
file__default_store_configured__replaces_memory_default(void **state)
{
    fixture *f = *state;

    expect_ok(f, load_text(f, "[store.default]\n"
                              "backend = redis\n"
                              "url = redis://r:6379\n"));
    assert_int_equal(f->cfg.nstores, 1);
    assert_string_equal(store(f, "default")->backend, "redis");
    assert_string_equal(store(f, "default")->url, "redis://r:6379");
}

static void file__duplicate_key__last_wins(void **state)
{
    fixture *f = *state;

    expect_ok(f, load_text(f, "[server]\n"
                              "listen = 127.0.0.1:1\n"
                              "listen = 127.0.0.1:2\n"
                              "[store.a]\n"
                              "url = redis://one\n"
                              "[store.a]\n"
                              "url = redis://two\n"));
    assert_int_equal(f->cfg.listen_port, 2);
    assert_int_equal(f->cfg.nstores, 2);
    assert_string_equal(store(f, "a")->url, "redis://two");
}

static void file__comments_blank_and_indented_lines__accepted(void **state)
{
    fixture *f = *state;

    expect_ok(f, load_text(f, "\xEF\xBB\xBF# hash comment\r\n"
                              "\n"
                              "  [server]\r\n"
                              "\tlisten = 127.0.0.1:9000\r\n"
                              "   ; indented comment\n"
                              "    log_level = warn\n"));
    assert_int_equal(f->cfg.listen_port, 9000);
    assert_int_equal(f->cfg.log_level, SRV_LOG_WARN);
}

static void file__long_store_name__kept_whole(void **state)
{
    fixture *f = *state;
    char name[KV_STORE_NAME_MAX + 1], text[256];

    memset(name, 'n', KV_STORE_NAME_MAX);
    name[KV_STORE_NAME_MAX] = '\0';
    snprintf(text, sizeof text, "[store.%s]\nnotify = on\n", name);
    expect_ok(f, load_text(f, text));
    assert_true(store(f, name)->notify);
}

static void file__listen_forms__parsed(void **state)
{
    static const struct {
        const char *listen, *host;
        int port;
    } cases[] = {
        {"127.0.0.1:7400", "127.0.0.1", 7400},
        {"[::1]:8080", "::1", 8080},
        {"[::]:1", "::", 1},
        {"localhost:65535", "localhost", 65535},
        {"kv-1.example.org:80", "kv-1.example.org", 80},
    };
    fixture *f = *state;
    char flag[64];
    size_t i;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(flag, sizeof flag, "--server.listen=%s", cases[i].listen);
        expect_ok(f, load(f, ARGV(flag), NULL));
        assert_string_equal(f->cfg.listen_host, cases[i].host);
        assert_int_equal(f->cfg.listen_port, cases[i].port);
    }
}

static void file__booleans__every_spelling_read(void **state)
{
    static const struct {
        const char *text;
        bool value;
    } cases[] = {
        {"true", true}, {"yes", true},  {"1", true},
        {"on", true},   {"TRUE", true}, {"false", false},
        {"no", false},  {"0", false},   {"off", false},
    };
    fixture *f = *state;
    char flag[64];
    size_t i;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(flag, sizeof flag, "--store.default.notify=%s", cases[i].text);
        expect_ok(f, load(f, ARGV(flag), NULL));
        assert_int_equal(store(f, "default")->notify, cases[i].value);
    }
}

static void file__log_levels__map_to_srv_log(void **state)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    static const int levels[] = {SRV_LOG_ERROR, SRV_LOG_WARN, SRV_LOG_INFO,
                                 SRV_LOG_DEBUG};
    fixture *f = *state;
    size_t i;

    for (i = 0; i < 4; i++) {
        expect_ok(f,
                  load(f, ARGV("--server.log_level", (char *)names[i]), NULL));
        assert_int_equal(f->cfg.log_level, levels[i]);
    }
}

static void tokens_file__from_file_env_or_flag__kept_as_given(void **state)
{
    static char *env[] = {"KVBUS_SERVER_TOKENS_FILE=/etc/env-tokens", NULL};
    fixture *f = *state;

    expect_ok(f, load_text(f, "[server]\ntokens_file = /etc/kvbus/tokens\n"));
    assert_string_equal(f->cfg.tokens_file, "/etc/kvbus/tokens");
    expect_ok(f, load(f, NULL, env));
    assert_string_equal(f->cfg.tokens_file, "/etc/env-tokens");
    expect_ok(f, load(f, ARGV("--server.tokens_file="), env));
    assert_string_equal(f->cfg.tokens_file, "");
}

/* ------------------------------------------------------------------ */
/* Precedence                                                           */

static void env__overrides_file(void **state)
{
    fixture *f = *state;

    write_conf(f, "[server]\nlisten = 127.0.0.1:1000\nnode_id = file\n"
                  "[pubsub]\nprovider = redis\nurl = redis://file\n");
    expect_ok(f, load(f, ARGV("-c", f->path),
                      ENVP("KVBUS_SERVER_LISTEN=127.0.0.1:2000",
                           "KVBUS_PUBSUB_URL=redis://env", "PATH=/bin",
                           "KVBUS_URL=http://ignored")));
    assert_int_equal(f->cfg.listen_port, 2000);
    assert_string_equal(f->cfg.node_id, "file");
    assert_string_equal(f->cfg.pubsub.provider, "redis");
    assert_string_equal(f->cfg.pubsub.url, "redis://env");
}

static void flags__override_env_and_file(void **state)
{
    fixture *f = *state;

    write_conf(f, "[server]\nlisten = 127.0.0.1:1000\nmax_stores = 10\n");
    expect_ok(f, load(f,
                      ARGV("--config", f->path, "--server.listen=[::1]:3000",
                           "--server.max_connections", "7"),
                      ENVP("KVBUS_SERVER_LISTEN=127.0.0.1:2000",
                           "KVBUS_SERVER_MAX_CONNECTIONS=99",
                           "KVBUS_SERVER_MAX_STORES=20")));
    assert_string_equal(f->cfg.listen_host, "::1");
    assert_int_equal(f->cfg.listen_port, 3000);
    assert_int_equal(f->cfg.max_connections, 7);
    assert_int_equal(f->cfg.limits.max_stores, 20);
}

static void flags__equals_and_space_spellings__both_work(void **state)
{
    fixture *f = *state;

    expect_ok(
        f, load(f,
                ARGV("--server.node_id=eq", "--pubsub.format", "nuxeo",
                     "--store.s.backend", "redis", "--store.s.url=redis://x=y"),
                NULL));
    assert_string_equal(f->cfg.node_id, "eq");
    assert_string_equal(f->cfg.pubsub.format, "nuxeo");
    assert_string_equal(store(f, "s")->backend, "redis");
    assert_string_equal(store(f, "s")->url, "redis://x=y");
}

static void flags__config_path__three_spellings_read(void **state)
{
    fixture *f = *state;
    char eq[96];

    write_conf(f, "[server]\nlisten = 127.0.0.1:4321\n");
    snprintf(eq, sizeof eq, "--config=%s", f->path);
    expect_ok(f, load(f, ARGV("-c", f->path), NULL));
    assert_int_equal(f->cfg.listen_port, 4321);
    expect_ok(f, load(f, ARGV("--config", f->path), NULL));
    assert_int_equal(f->cfg.listen_port, 4321);
    expect_ok(f, load(f, ARGV(eq), NULL));
    assert_int_equal(f->cfg.listen_port, 4321);
    assert_string_equal(f->cfg.config_path, f->path);
}

static void env__kvbus_config__names_the_file(void **state)
{
    fixture *f = *state;
    char var[96];

    write_conf(f, "[server]\nlisten = 127.0.0.1:4444\n");
    snprintf(var, sizeof var, "KVBUS_CONFIG=%s", f->path);
    expect_ok(f, load(f, NULL, ENVP(var)));
    assert_int_equal(f->cfg.listen_port, 4444);
}

static void flags__config_path__wins_over_kvbus_config(void **state)
{
    fixture *f = *state;

    write_conf(f, "[server]\nlisten = 127.0.0.1:5555\n");
    expect_ok(f, load(f, ARGV("-c", f->path),
                      ENVP("KVBUS_CONFIG=/nonexistent/kvbusd.conf")));
    assert_int_equal(f->cfg.listen_port, 5555);
}

static void env__store_keys__create_store_named_as_written(void **state)
{
    fixture *f = *state;
    const kv_store_conf *s;

    expect_ok(f, load(f, NULL,
                      ENVP("KVBUS_STORE_my_Cache_BACKEND=redis",
                           "KVBUS_STORE_my_Cache_URL=redis://r",
                           "KVBUS_STORE_my_Cache_KEY_PREFIX=p:",
                           "KVBUS_STORE_my_Cache_NOTIFY=on",
                           "KVBUS_STORE_my_Cache_OP_TIMEOUT_MS=75")));
    assert_int_equal(f->cfg.nstores, 2);
    s = store(f, "my_Cache");
    assert_string_equal(s->backend, "redis");
    assert_string_equal(s->url, "redis://r");
    assert_string_equal(s->key_prefix, "p:");
    assert_true(s->notify);
    assert_int_equal(s->op_timeout_ms, 75);
}

static void env__store_url__completes_store_from_file(void **state)
{
    fixture *f = *state;

    write_conf(f, "[store.durable]\nbackend = postgres\n");
    expect_ok(f, load(f, ARGV("-c", f->path),
                      ENVP("KVBUS_STORE_durable_URL=postgresql://h/db")));
    assert_string_equal(store(f, "durable")->url, "postgresql://h/db");
}

static void flags__store_keys__create_store_with_dotted_name(void **state)
{
    fixture *f = *state;
    const kv_store_conf *s;

    expect_ok(
        f, load(f,
                ARGV("--store.app.docs.backend=mongodb", "--store.app.docs.url",
                     "mongodb://m/db", "--store.app.docs.collection=c.d"),
                ENVP("KVBUS_STORE_app.docs_BACKEND=redis")));
    s = store(f, "app.docs");
    assert_string_equal(s->backend, "mongodb");
    assert_string_equal(s->url, "mongodb://m/db");
    assert_string_equal(s->collection, "c.d");
}

static void help__prints_usage__exits(void **state)
{
    fixture *f = *state;

    assert_int_equal(load_quietly(f, ARGV("-h")), SRV_CONFIG_EXIT);
    assert_int_equal(load_quietly(f, ARGV("--server.listen=x", "--help")),
                     SRV_CONFIG_EXIT);
    assert_int_equal(load_quietly(f, ARGV("--version")), SRV_CONFIG_EXIT);
}

static void version__prints_name_and_version(void **state)
{
    fixture *f = *state;
    char out[64] = "";
    FILE *tmp = tmpfile();
    int saved, rc;

    assert_non_null(tmp);
    fflush(stdout);
    saved = dup(STDOUT_FILENO);
    dup2(fileno(tmp), STDOUT_FILENO);
    rc = load(f, ARGV("--version"), NULL);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    rewind(tmp);
    assert_non_null(fgets(out, sizeof out, tmp));
    fclose(tmp);
    assert_int_equal(rc, SRV_CONFIG_EXIT);
    assert_string_equal(out, "kvbusd " SRV_VERSION "\n");
}

static void usage__lists_every_key_with_its_env_name_and_default(void **state)
{
    static const char *const expected[] = {
        "--server.listen=HOST:PORT",
        "KVBUS_SERVER_LISTEN; default "
        "127.0.0.1:7400",
        "--server.node_id",
        "--server.max_key_bytes",
        "KVBUS_SERVER_MAX_"
        "VALUE_BYTES; default "
        "1048576",
        "--server.max_stores",
        "--server.max_uri_bytes",
        "--server.max_header_bytes",
        "--server.max_connections",
        "--server.ws_queue_bytes",
        "--server.ws_stall_ms",
        "--server.shutdown_grace_ms",
        "KVBUS_SERVER_MAX_MGET_KEYS; default 10000",
        "KVBUS_SERVER_MAX_PAGE_KEYS; default 10000",
        "KVBUS_SERVER_MAX_WS_FRAME_BYTES; default 0",
        "KVBUS_SERVER_MAX_SUBSCRIPTIONS_PER_CONN; default 256",
        "KVBUS_SERVER_HEADER_TIMEOUT_MS; default 10000",
        "KVBUS_SERVER_BODY_TIMEOUT_MS; default 30000",
        "KVBUS_SERVER_IDLE_TIMEOUT_MS; default 60000",
        "--server.tls_cert=PATH",
        "--server.tls_key=PATH",
        "--server.tls_min_version=1.2|1.3",
        "--server.log_level=error|warn|info|debug",
        "--store.NAME.backend=memory|redis|postgres|mongodb",
        "KVBUS_STORE_<NAME>_OP_TIMEOUT_MS; default 2000",
        "--store.NAME.url",
        "--store.NAME.key_prefix",
        "--store.NAME.table",
        "--store.NAME.collection",
        "--store.NAME.notify",
        "--pubsub.provider=memory|redis|kafka",
        "--pubsub.url",
        "--pubsub.channel_prefix",
        "KVBUS_PUBSUB_KAFKA_TOPIC; default "
        "kvbus-pubsub",
        "--pubsub.format=kvbus|nuxeo",
        "-c, --config FILE",
        "--version"};
    char *text = NULL;
    size_t len = 0, i;
    FILE *out = open_memstream(&text, &len);

    (void)state;
    assert_non_null(out);
    srv_config_usage(out);
    fclose(out);
    for (i = 0; i < sizeof expected / sizeof expected[0]; i++)
        if (!strstr(text, expected[i]))
            fail_msg("usage lacks \"%s\"", expected[i]);
    free(text);
}

/* ------------------------------------------------------------------ */
/* Hostile-input limits and TLS                                         */

static void limits__no_sources__defaults_as_documented(void **state)
{
    fixture *f = *state;

    expect_ok(f, load(f, NULL, NULL));
    assert_int_equal(f->cfg.limits.max_mget_keys, 10000);
    assert_int_equal(f->cfg.limits.max_page_keys, 10000);
    assert_int_equal(f->cfg.max_ws_frame_bytes, 0);
    assert_int_equal(f->cfg.max_subscriptions_per_conn, 256);
    assert_int_equal(f->cfg.header_timeout_ms, 10000);
    assert_int_equal(f->cfg.body_timeout_ms, 30000);
    assert_int_equal(f->cfg.idle_timeout_ms, 60000);
    assert_null(f->cfg.tls_cert);
    assert_null(f->cfg.tls_key);
    assert_string_equal(f->cfg.tls_min_version, "1.2");
}

static void limits__every_key_in_file__parsed(void **state)
{
    fixture *f = *state;

    expect_ok(f, load_text(f, "[server]\n"
                              "max_mget_keys = 5\n"
                              "max_page_keys = 7\n"
                              "max_ws_frame_bytes = 4096\n"
                              "max_subscriptions_per_conn = 3\n"
                              "header_timeout_ms = 1500\n"
                              "body_timeout_ms = 2500\n"
                              "idle_timeout_ms = 3500\n"
                              "tls_min_version = 1.3\n"));
    assert_int_equal(f->cfg.limits.max_mget_keys, 5);
    assert_int_equal(f->cfg.limits.max_page_keys, 7);
    assert_int_equal(f->cfg.max_ws_frame_bytes, 4096);
    assert_int_equal(f->cfg.max_subscriptions_per_conn, 3);
    assert_int_equal(f->cfg.header_timeout_ms, 1500);
    assert_int_equal(f->cfg.body_timeout_ms, 2500);
    assert_int_equal(f->cfg.idle_timeout_ms, 3500);
    assert_string_equal(f->cfg.tls_min_version, "1.3");
}

static void limits__out_of_range__name_line_key_and_range(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 2, load_text(f, "[server]\nmax_mget_keys = 0\n"),
                  "[server] max_mget_keys", "out of range", "1 to 1000000",
                  NULL);
    expect_bad_at(f, 3, load_text(f, "[server]\n\nmax_page_keys = 1000001\n"),
                  "[server] max_page_keys", "out of range", NULL);
    expect_bad_at(f, 2,
                  load_text(f, "[server]\nmax_subscriptions_per_conn = 0\n"),
                  "[server] max_subscriptions_per_conn", "out of range", NULL);
    expect_bad_at(f, 2, load_text(f, "[server]\nheader_timeout_ms = 99\n"),
                  "[server] header_timeout_ms", "out of range",
                  "100 to 3600000", NULL);
    expect_bad_at(f, 2, load_text(f, "[server]\nidle_timeout_ms = 10s\n"),
                  "[server] idle_timeout_ms", "bad number", NULL);
    expect_bad(f, load(f, ARGV("--server.body_timeout_ms=0"), NULL),
               "flag --server.body_timeout_ms", "out of range", NULL);
}

static void tls__bad_min_version__names_the_choices(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 2, load_text(f, "[server]\ntls_min_version = 1.1\n"),
                  "[server] tls_min_version", "1.2 or 1.3", NULL);
}

static void tls__cert_without_key__names_both_keys(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 2, load_text(f, "[server]\ntls_cert = /etc/hostname\n"),
                  "[server] tls_key: missing", "tls_cert needs it", NULL);
    expect_bad(f, load(f, ARGV("--server.tls_key=/etc/hostname"), NULL),
               "flag --server.tls_key", "[server] tls_cert: missing",
               "tls_key needs it", NULL);
}

static void tls__unreadable_file__names_key_path_and_strerror(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 3,
                  load_text(f, "[server]\ntls_cert = /etc/hostname\n"
                               "tls_key = /nonexistent/key.pem\n"),
                  "[server] tls_key: cannot read /nonexistent/key.pem",
                  "No such file or directory", NULL);
    expect_bad(f,
               load(f, NULL,
                    ENVP("KVBUS_SERVER_TLS_CERT=/nonexistent/cert.pem",
                         "KVBUS_SERVER_TLS_KEY=/etc/hostname")),
               "environment KVBUS_SERVER_TLS_CERT",
               "[server] tls_cert: cannot read /nonexistent/cert.pem", NULL);
}

static void tls__both_readable__paths_kept(void **state)
{
    fixture *f = *state;

    expect_ok(f, load(f,
                      ARGV("--server.tls_cert=/etc/hostname",
                           "--server.tls_key", "/etc/passwd"),
                      NULL));
    assert_string_equal(f->cfg.tls_cert, "/etc/hostname");
    assert_string_equal(f->cfg.tls_key, "/etc/passwd");
}

/* ------------------------------------------------------------------ */
/* Errors                                                               */

static void file__unreadable__names_path_and_strerror(void **state)
{
    fixture *f = *state;

    expect_bad(f, load(f, ARGV("-c", "/nonexistent/kvbusd.conf"), NULL),
               "/nonexistent/kvbusd.conf: cannot read: No such file or "
               "directory",
               NULL);
    expect_bad(f, load(f, ARGV("-c", "/tmp"), NULL),
               "/tmp: cannot read: Is a directory", NULL);
}

static void file__syntax_error__names_file_and_line(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 3, load_text(f, "[server]\nlisten = 127.0.0.1:1\njunk\n"),
                  "syntax error", NULL);
    expect_bad_at(f, 1, load_text(f, "[server\nlisten = x\n"), "syntax error",
                  NULL);
}

static void file__syntax_error_before_bad_key__reports_first_line(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 2,
                  load_text(f, "[server]\nnot an assignment\nbogus = 1\n"),
                  "syntax error", NULL);
}

static void file__unknown_section__names_file_line_and_section(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 3,
                  load_text(f, "[server]\nlisten = 127.0.0.1:1\n[sever]\n"),
                  "[sever]", "unknown section", NULL);
}

static void file__unknown_key__names_file_line_and_key(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 3,
                  load_text(f, "[server]\nlisten = 127.0.0.1:1\nlisen = x\n"),
                  "[server] lisen: unknown key", NULL);
    expect_bad_at(f, 3, load_text(f, "\n[store.s]\ntabel = t\n"),
                  "[store.s] tabel: unknown key", NULL);
}

static void file__key_outside_section__names_line_and_key(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 1, load_text(f, "listen = 127.0.0.1:1\n"),
                  "listen: key outside any section", NULL);
}

static void
file__unknown_backend__names_line_section_key_and_choices(void **state)
{
    fixture *f = *state;
    char expected[256];

    expect_bad(f, load_text(f, "[store.sessions]\n\nbackend = foo\n"), NULL);
    snprintf(expected, sizeof expected,
             "%s:3: [store.sessions] backend: unknown backend \"foo\" "
             "(expected memory, redis, postgres or mongodb)",
             f->path);
    assert_string_equal(f->err, expected);
}

static void file__bad_enums__name_the_choices(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 2, load_text(f, "[pubsub]\nprovider = nats\n"),
                  "[pubsub] provider: unknown provider \"nats\" (expected "
                  "memory, redis or kafka)",
                  NULL);
    expect_bad_at(f, 2, load_text(f, "[pubsub]\nformat = json\n"),
                  "[pubsub] format:", "kvbus or nuxeo", NULL);
    expect_bad_at(f, 2, load_text(f, "[server]\nlog_level = loud\n"),
                  "[server] log_level:", "error, warn, info or debug", NULL);
}

static void file__bad_number__names_line_key_and_range(void **state)
{
    static const char *const values[] = {"12k", "-1", "",    " ",
                                         "1.5", "+3", "0x10"};
    fixture *f = *state;
    char text[96];
    size_t i;

    for (i = 0; i < sizeof values / sizeof values[0]; i++) {
        snprintf(text, sizeof text, "[server]\nmax_value_bytes = %s\n",
                 values[i]);
        expect_bad_at(f, 2, load_text(f, text),
                      "[server] max_value_bytes: bad number",
                      "from 1 to 536870912", NULL);
    }
}

static void file__number_out_of_range__names_line_key_and_range(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 2, load_text(f, "[server]\nmax_value_bytes = 536870913\n"),
                  "[server] max_value_bytes: 536870913 is out of range "
                  "(expected 1 to 536870912)",
                  NULL);
    expect_bad_at(f, 2, load_text(f, "[server]\nmax_key_bytes = 0\n"),
                  "[server] max_key_bytes: 0 is out of range", NULL);
    expect_bad_at(f, 2,
                  load_text(f, "[store.x]\nop_timeout_ms = "
                               "99999999999999999999999999\n"),
                  "[store.x] op_timeout_ms:", "out of range", NULL);
}

static void file__bad_store_name__names_line_and_section(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 2,
                  load_text(f, "[server]\n[store.a/b]\nbackend = memory\n"),
                  "[store.a/b]: bad store name", NULL);
    expect_bad_at(f, 1, load_text(f, "[store.]\n"), "[store.]: bad store name",
                  NULL);
}

static void file__node_id_with_colon__names_line_and_key(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 2, load_text(f, "[server]\nnode_id = a:b\n"),
                  "[server] node_id:", "must not contain ':'", NULL);
    expect_bad_at(f, 2, load_text(f, "[server]\nnode_id = a b\n"),
                  "[server] node_id:", "printable ASCII", NULL);
}

static void file__bad_boolean__names_line_and_key(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 2, load_text(f, "[store.s]\nnotify = maybe\n"),
                  "[store.s] notify: bad boolean \"maybe\"", NULL);
}

static void file__bad_listen__names_line_key_and_problem(void **state)
{
    static const struct {
        const char *value, *problem;
    } cases[] = {
        {"127.0.0.1", "missing port"},
        {"127.0.0.1:0", "out of range"},
        {"127.0.0.1:65536", "out of range"},
        {"127.0.0.1:http", "bad number"},
        {":7400", "bad host"},
        {"::1:7400", "need brackets"},
        {"[::1]7400", "expected [IPv6 address]:port"},
        {"[zz::1]:7400", "bad IPv6 address"},
        {"999.1.1.1:80", "bad host"},
        {"bad host:80", "bad host"},
    };
    fixture *f = *state;
    char text[96];
    size_t i;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(text, sizeof text, "[server]\nlisten = %s\n", cases[i].value);
        expect_bad_at(f, 2, load_text(f, text),
                      "[server] listen: bad listen address", cases[i].problem,
                      NULL);
    }
}

static void file__empty_url__names_line_and_key(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 2, load_text(f, "[store.s]\nurl =\n"),
                  "[store.s] url: must not be empty", NULL);
}

static void file__line_too_long__names_line(void **state)
{
    fixture *f = *state;
    char text[600];

    snprintf(text, sizeof text, "[store.s]\nurl = redis://%0400d\n", 0);
    expect_bad_at(f, 2, load_text(f, text), "line too long", NULL);
}

static void store__backend_without_url__names_store_and_source(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 2, load_text(f, "[store.sessions]\nbackend = redis\n"),
                  "[store.sessions] url: missing; backend redis needs one",
                  NULL);
    expect_bad(f, load(f, ARGV("--store.docs.backend=mongodb"), NULL),
               "flag --store.docs.backend:", "[store.docs] url: missing", NULL);
    expect_bad(f, load(f, NULL, ENVP("KVBUS_STORE_pg_BACKEND=postgres")),
               "environment KVBUS_STORE_pg_BACKEND:", "[store.pg] url", NULL);
}

static void pubsub__redis_or_kafka_without_url__names_provider(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 2, load_text(f, "[pubsub]\nprovider = kafka\n"),
                  "[pubsub] url: missing; provider kafka needs one", NULL);
    expect_bad(f, load(f, ARGV("--pubsub.provider", "redis"), NULL),
               "flag --pubsub.provider:", "provider redis needs one", NULL);
}

static void max_stores__fewer_than_configured__names_key(void **state)
{
    fixture *f = *state;

    expect_bad_at(f, 2, load_text(f, "[server]\nmax_stores = 1\n[store.a]\n"),
                  "[server] max_stores: 2 stores", NULL);
}

static void env__bad_value__names_variable_section_and_key(void **state)
{
    fixture *f = *state;

    expect_bad(f, load(f, NULL, ENVP("KVBUS_SERVER_LISTEN=nowhere")),
               "environment KVBUS_SERVER_LISTEN: [server] listen: bad "
               "listen address \"nowhere\": missing port",
               NULL);
    expect_bad(f, load(f, NULL, ENVP("KVBUS_PUBSUB_FORMAT=xml")),
               "environment KVBUS_PUBSUB_FORMAT: [pubsub] format: unknown",
               NULL);
}

static void env__unknown_key__names_variable(void **state)
{
    fixture *f = *state;

    expect_bad(f, load(f, NULL, ENVP("KVBUS_SERVER_LISTN=1")),
               "environment KVBUS_SERVER_LISTN: [server] LISTN: unknown key",
               NULL);
    expect_bad(f, load(f, NULL, ENVP("KVBUS_STORE_s_COLOUR=red")),
               "environment KVBUS_STORE_s_COLOUR: unknown store variable",
               NULL);
    expect_bad(f, load(f, NULL, ENVP("KVBUS_STORE_a$b_URL=redis://x")),
               "environment KVBUS_STORE_a$b_URL: [store.a$b]: bad store name",
               NULL);
}

static void env__value_with_newline__error_stays_one_line(void **state)
{
    fixture *f = *state;

    expect_bad(f, load(f, NULL, ENVP("KVBUS_SERVER_NODE_ID=a\nb")),
               "environment KVBUS_SERVER_NODE_ID: [server] node_id:", NULL);
}

static void env__empty_kvbus_config__is_an_error(void **state)
{
    fixture *f = *state;

    expect_bad(f, load(f, NULL, ENVP("KVBUS_CONFIG=")),
               "environment KVBUS_CONFIG: empty file path", NULL);
}

static void flag__unknown__names_flag(void **state)
{
    fixture *f = *state;

    expect_bad(f, load(f, ARGV("--bogus=1"), NULL),
               "flag --bogus: unknown flag", NULL);
    expect_bad(f, load(f, ARGV("-x"), NULL), "flag -x: unknown flag", NULL);
    expect_bad(f, load(f, ARGV("--server.lisen=1"), NULL),
               "flag --server.lisen: [server] lisen: unknown key", NULL);
    expect_bad(f, load(f, ARGV("--store.s=1"), NULL),
               "flag --store.s: unknown flag", NULL);
    expect_bad(f, load(f, ARGV("--store.a/b.url=redis://x"), NULL),
               "flag --store.a/b.url: [store.a/b]: bad store name", NULL);
}

static void flag__unknown__reported_before_the_file_is_read(void **state)
{
    fixture *f = *state;

    expect_bad(
        f, load(f, ARGV("-c", "/nonexistent/kvbusd.conf", "--nope=1"), NULL),
        "flag --nope: unknown flag", NULL);
}

static void flag__missing_value__names_flag(void **state)
{
    fixture *f = *state;

    expect_bad(f, load(f, ARGV("--server.listen"), NULL),
               "flag --server.listen: missing value", NULL);
    expect_bad(f, load(f, ARGV("--server.listen", "--pubsub.url=x"), NULL),
               "flag --server.listen: missing value", NULL);
    expect_bad(f, load(f, ARGV("-c"), NULL), "flag -c: missing value", NULL);
    expect_bad(f, load(f, ARGV("--config="), NULL),
               "flag --config: empty file path", NULL);
}

static void flag__bad_value__names_flag_section_and_key(void **state)
{
    fixture *f = *state;

    expect_bad(f, load(f, ARGV("--store.s.op_timeout_ms=soon"), NULL),
               "flag --store.s.op_timeout_ms: [store.s] op_timeout_ms: bad "
               "number \"soon\"",
               NULL);
}

static void argument__positional__rejected(void **state)
{
    fixture *f = *state;

    expect_bad(f, load(f, ARGV("kvbusd.conf"), NULL),
               "argument \"kvbusd.conf\": unexpected", NULL);
}

static void free__null_and_twice__are_harmless(void **state)
{
    fixture *f = *state;

    srv_config_free(NULL);
    expect_ok(f, load(f, ARGV("--store.s.url=redis://x"), NULL));
    srv_config_free(&f->cfg);
    srv_config_free(&f->cfg);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(defaults__no_sources__match_spec),
        T(defaults__no_sources__one_memory_store_called_default),
        T(defaults__node_id__is_hostname_dash_pid),
        T(file__every_section_and_key__parsed),
        T(file__spec_example__loads),
        T(file__store_without_keys__is_memory_with_defaults),
        T(file__default_store_configured__replaces_memory_default),
        T(file__duplicate_key__last_wins),
        T(file__comments_blank_and_indented_lines__accepted),
        T(file__long_store_name__kept_whole),
        T(file__listen_forms__parsed),
        T(file__booleans__every_spelling_read),
        T(file__log_levels__map_to_srv_log),
        T(tokens_file__from_file_env_or_flag__kept_as_given),
        T(env__overrides_file),
        T(flags__override_env_and_file),
        T(flags__equals_and_space_spellings__both_work),
        T(flags__config_path__three_spellings_read),
        T(env__kvbus_config__names_the_file),
        T(flags__config_path__wins_over_kvbus_config),
        T(env__store_keys__create_store_named_as_written),
        T(env__store_url__completes_store_from_file),
        T(flags__store_keys__create_store_with_dotted_name),
        T(help__prints_usage__exits),
        T(version__prints_name_and_version),
        T(usage__lists_every_key_with_its_env_name_and_default),
        T(limits__no_sources__defaults_as_documented),
        T(limits__every_key_in_file__parsed),
        T(limits__out_of_range__name_line_key_and_range),
        T(tls__bad_min_version__names_the_choices),
        T(tls__cert_without_key__names_both_keys),
        T(tls__unreadable_file__names_key_path_and_strerror),
        T(tls__both_readable__paths_kept),
        T(file__unreadable__names_path_and_strerror),
        T(file__syntax_error__names_file_and_line),
        T(file__syntax_error_before_bad_key__reports_first_line),
        T(file__unknown_section__names_file_line_and_section),
        T(file__unknown_key__names_file_line_and_key),
        T(file__key_outside_section__names_line_and_key),
        T(file__unknown_backend__names_line_section_key_and_choices),
        T(file__bad_enums__name_the_choices),
        T(file__bad_number__names_line_key_and_range),
        T(file__number_out_of_range__names_line_key_and_range),
        T(file__bad_store_name__names_line_and_section),
        T(file__node_id_with_colon__names_line_and_key),
        T(file__bad_boolean__names_line_and_key),
        T(file__bad_listen__names_line_key_and_problem),
        T(file__empty_url__names_line_and_key),
        T(file__line_too_long__names_line),
        T(store__backend_without_url__names_store_and_source),
        T(pubsub__redis_or_kafka_without_url__names_provider),
        T(max_stores__fewer_than_configured__names_key),
        T(env__bad_value__names_variable_section_and_key),
        T(env__unknown_key__names_variable),
        T(env__value_with_newline__error_stays_one_line),
        T(env__empty_kvbus_config__is_an_error),
        T(flag__unknown__names_flag),
        T(flag__unknown__reported_before_the_file_is_read),
        T(flag__missing_value__names_flag),
        T(flag__bad_value__names_flag_section_and_key),
        T(argument__positional__rejected),
        T(free__null_and_twice__are_harmless),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
