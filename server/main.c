/*
 * main.c - kvbusd: reads the configuration, opens the stores, serves HTTP
 * on one libuv loop, and shuts down gracefully on SIGINT/SIGTERM (stop
 * accepting, finish answers in flight for up to shutdown_grace_ms, close
 * the backends, exit 0).
 *
 * Exit codes: 0 after a clean shutdown, 1 when the service cannot start
 * (port taken, backend refused), 2 for a bad configuration.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <uv.h>

#include <jansson.h>

#include "backends/kafka/kafka.h"
#include "backends/memory/memory.h"
#include "backends/mongodb/mongodb.h"
#include "backends/postgres/postgres.h"
#include "backends/redis/redis.h"
#include "kvstore/kvstore.h"
#include "pubsub/pubsub.h"
#include "server/srv_app.h"
#include "server/srv_config.h"
#include "server/srv_http.h"
#include "server/srv_log.h"

/* Every backend this binary can route a store to. */
static const struct kv_backend_ops *const backends[] = {
    &mem_backend_ops,
    &mongo_backend_ops,
    &pg_backend_ops,
    &redis_backend_ops,
    NULL,
};

/* Every pub/sub provider this binary can carry messages with. */
static const struct ps_provider_ops *const providers[] = {
    &ps_memory_provider_ops,
    &redis_provider_ops,
    &kafka_provider_ops,
    NULL,
};

/* Frames larger than a value plus its base64 and JSON overhead are refused. */
#define WS_FRAME_OVERHEAD_BYTES 4096

typedef struct daemon {
    srv_app app;
    uv_signal_t sigint, sigterm;
    bool stopping;
} daemon_t;

static void on_drained(void *ud)
{
    daemon_t *d = ud;

    srv_info("shutdown: connections drained");
    uv_close((uv_handle_t *)&d->sigint, NULL);
    uv_close((uv_handle_t *)&d->sigterm, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    daemon_t *d = h->data;

    if (d->stopping) {
        srv_warn("shutdown: second signal, exiting now");
        exit(1);
    }
    d->stopping = true;
    srv_info("shutdown: %s received, draining connections",
             signum == SIGINT ? "SIGINT" : "SIGTERM");
    srv_ws_hub_shutdown(d->app.ws);
    srv_server_shutdown(d->app.http, d->app.cfg->shutdown_grace_ms, on_drained,
                        d);
}

static uint64_t wall_ms(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
}

/*
 * The change hook of the registry: publishes {"store","op","key"} on topic
 * kv.<store> after a successful mutation of a store with notify = true.
 */
static void on_store_change(const kv_store *s, kv_op op, kv_bytes key, void *ud)
{
    srv_app *app = ud;
    char topic[PS_TOPIC_MAX + 1];
    kv_err err = {0};
    json_t *j;
    char *payload;
    int n;

    n = snprintf(topic, sizeof topic, "kv.%s", kv_store_name(s));
    j = json_pack("{s:s, s:s, s:s#}", "store", kv_store_name(s), "op",
                  kv_op_name(op), "key", key.ptr, (int)key.len);
    payload = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (!payload || ps_publish(app->bus, topic, (size_t)n, payload,
                               strlen(payload), NULL, &err) != 0)
        srv_warn("notify: store %s: change not published: %s", kv_store_name(s),
                 payload ? err.msg : "out of memory");
    free(payload);
    json_decref(j);
}

/* Creates the bus with the configured provider; logs why not. */
static int open_bus(srv_app *app, const srv_config *cfg)
{
    const srv_pubsub_conf *pc = &cfg->pubsub;
    const struct ps_provider_ops *const *p;
    ps_provider_conf conf = {
        .name = pc->provider,
        .url = pc->url,
        .channel_prefix = pc->channel_prefix,
        .kafka_topic = pc->kafka_topic,
        .format = pc->format,
    };
    kv_err err = {0};

    for (p = providers; *p; p++)
        if (strcmp((*p)->name, pc->provider) == 0)
            break;
    if (!*p) {
        srv_error("pubsub: provider %s is not available in this build",
                  pc->provider);
        return -1;
    }
    if (ps_bus_new(app->loop, cfg->node_id, *p, &conf, &app->bus, &err)) {
        srv_error("pubsub: provider %s: %s", pc->provider, err.msg);
        return -1;
    }
    return 0;
}

/* Opens every configured store; logs and returns non-zero on the first
 * failure. */
static int open_stores(kv_registry *reg, const srv_config *cfg)
{
    kv_err err = {0};
    size_t i;

    for (i = 0; i < cfg->nstores; i++) {
        if (kv_registry_add(reg, &cfg->stores[i], &err) != 0) {
            srv_error("store %s: %s", cfg->stores[i].name, err.msg);
            return -1;
        }
        srv_info("store %s: backend %s", cfg->stores[i].name,
                 cfg->stores[i].backend);
    }
    return 0;
}

int main(int argc, char **argv)
{
    extern char **environ;
    static daemon_t d;
    srv_config cfg;
    char err[SRV_CONFIG_ERR_BYTES];
    uv_loop_t loop;
    srv_limits limits;
    srv_ws_limits ws_limits;
    int rc, status = 1;

    rc = srv_config_load(&cfg, argc, argv, environ, err, sizeof err);
    if (rc != SRV_CONFIG_OK) {
        if (rc == SRV_CONFIG_BAD)
            fprintf(stderr, "kvbusd: %s\n", err);
        srv_config_free(&cfg);
        return rc == SRV_CONFIG_EXIT ? 0 : 2;
    }
    srv_log_set_level(cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);

    d.app.loop = &loop;
    d.app.cfg = &cfg;
    d.app.started_ms = wall_ms();
    d.app.reg = kv_registry_new(&loop, backends, &cfg.limits);
    limits = (srv_limits){
        .max_uri_bytes = cfg.max_uri_bytes,
        .max_header_bytes = cfg.max_header_bytes,
        .max_body_bytes = cfg.limits.max_value_bytes,
        .max_connections = cfg.max_connections,
    };
    d.app.http =
        srv_server_new(&loop, &limits, srv_routes, srv_nroutes, &d.app);
    if (!d.app.reg || !d.app.http) {
        srv_error("out of memory at start-up");
        goto out;
    }
    if (open_bus(&d.app, &cfg) != 0)
        goto out;
    ws_limits = (srv_ws_limits){
        .queue_bytes = cfg.ws_queue_bytes,
        .stall_ms = cfg.ws_stall_ms,
        .max_frame_bytes =
            cfg.limits.max_value_bytes / 3 * 4 + WS_FRAME_OVERHEAD_BYTES,
        .max_patterns = PS_SUBS_PER_SUB_DEFAULT,
        .max_payload_bytes = cfg.limits.max_value_bytes,
    };
    d.app.ws = srv_ws_hub_new(&loop, d.app.bus, &ws_limits);
    if (!d.app.ws) {
        srv_error("out of memory at start-up");
        goto out;
    }
    kv_registry_on_change(d.app.reg, on_store_change, &d.app);
    if (open_stores(d.app.reg, &cfg) != 0)
        goto out;
    if (srv_server_listen(d.app.http, cfg.listen_host, cfg.listen_port, err,
                          sizeof err) != 0) {
        srv_error("%s", err);
        goto out;
    }
    uv_signal_init(&loop, &d.sigint);
    uv_signal_init(&loop, &d.sigterm);
    d.sigint.data = d.sigterm.data = &d;
    uv_signal_start(&d.sigint, on_signal, SIGINT);
    uv_signal_start(&d.sigterm, on_signal, SIGTERM);
    srv_info("kvbusd %s node %s listening on http://%s:%u/", SRV_VERSION,
             cfg.node_id, cfg.listen_host, cfg.listen_port);

    uv_run(&loop, UV_RUN_DEFAULT);
    status = 0;

out:
    srv_ws_hub_free(d.app.ws);
    kv_registry_free(d.app.reg);
    srv_server_free(d.app.http);
    uv_run(&loop, UV_RUN_DEFAULT); /* close callbacks of what was freed */
    ps_bus_free(d.app.bus);        /* after every subscriber has gone */
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0)
        srv_warn("shutdown: handles still open at exit");
    srv_config_free(&cfg);
    if (status == 0)
        srv_info("shutdown: done");
    return status;
}
