/*
 * srv_app.c - assembles one kvbusd application on a loop: the store
 * registry with the configured stores, the pub/sub bus with the configured
 * provider, the HTTP server with kvbusd's route table and the WebSocket
 * hub, wired together (change notifications, limits from the
 * configuration). Listening, signals and the process lifetime stay with the
 * caller: main.c for the daemon, tests/fuzz/ for the fuzz harnesses, which
 * open and close one application per input.
 *
 * Runs on: the event loop thread.
 */
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

int srv_app_open(srv_app *app, uv_loop_t *loop, const srv_config *cfg)
{
    return srv_app_open_with(app, loop, cfg, backends);
}

int srv_app_open_with(srv_app *app, uv_loop_t *loop, const srv_config *cfg,
                      const struct kv_backend_ops *const *store_backends)
{
    srv_limits limits;
    srv_ws_limits ws_limits;

    memset(app, 0, sizeof *app);
    app->loop = loop;
    app->cfg = cfg;
    app->started_ms = wall_ms();
    app->reg = kv_registry_new(loop, store_backends, &cfg->limits);
    limits = (srv_limits){
        .max_uri_bytes = cfg->max_uri_bytes,
        .max_header_bytes = cfg->max_header_bytes,
        .max_body_bytes = cfg->limits.max_value_bytes,
        .max_connections = cfg->max_connections,
        .header_timeout_ms = cfg->header_timeout_ms,
        .body_timeout_ms = cfg->body_timeout_ms,
        .idle_timeout_ms = cfg->idle_timeout_ms,
    };
    app->http = srv_server_new(loop, &limits, srv_routes, srv_nroutes, app);
    if (!app->reg || !app->http) {
        srv_error("out of memory at start-up");
        return -1;
    }
    srv_server_set_guard(app->http, srv_route_guard);
    if (open_bus(app, cfg) != 0)
        return -1;
    ws_limits = (srv_ws_limits){
        .queue_bytes = cfg->ws_queue_bytes,
        .stall_ms = cfg->ws_stall_ms,
        .max_frame_bytes =
            cfg->max_ws_frame_bytes
                ? cfg->max_ws_frame_bytes
                : cfg->limits.max_value_bytes / 3 * 4 + WS_FRAME_OVERHEAD_BYTES,
        .max_patterns = cfg->max_subscriptions_per_conn,
        .max_payload_bytes = cfg->limits.max_value_bytes,
    };
    app->ws = srv_ws_hub_new(loop, app->bus, &ws_limits);
    if (!app->ws) {
        srv_error("out of memory at start-up");
        return -1;
    }
    srv_ws_hub_set_auth(app->ws, &app->auth, &app->auth_stats);
    kv_registry_on_change(app->reg, on_store_change, app);
    return open_stores(app->reg, cfg);
}

void srv_app_close(srv_app *app)
{
    srv_ws_hub_free(app->ws);
    kv_registry_free(app->reg);
    srv_server_free(app->http);
    if (app->loop)
        uv_run(app->loop, UV_RUN_DEFAULT); /* close callbacks of the above */
    ps_bus_free(app->bus);                 /* after every subscriber has gone */
    if (app->loop)
        uv_run(app->loop, UV_RUN_DEFAULT);
    srv_auth_free(app->auth);
    memset(app, 0, sizeof *app);
}
