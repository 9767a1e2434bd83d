/*
 * srv_metrics.c - the Prometheus text exposition of /metrics.
 *
 * Reads the counters the modules keep (per store and op in kvstore, per
 * status class in srv_http) and renders them; it keeps no state of its own.
 * Ops a store has never served are left out to keep the page short.
 *
 * Runs on: the event loop thread.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server/srv_app.h"

typedef struct text {
    char *data;
    size_t len, cap;
    bool failed;
} text;

static void put(text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void put(text *t, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (t->failed)
        return;
    for (;;) {
        va_start(ap, fmt);
        /* NULL + 0 is undefined in C: the first call measures only. */
        n = vsnprintf(t->data ? t->data + t->len : NULL, t->cap - t->len, fmt,
                      ap);
        va_end(ap);
        if (n < 0) {
            t->failed = true;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = (t->cap ? t->cap * 2 : 4096) + (size_t)n;
        char *grown = realloc(t->data, cap);
        if (!grown) {
            t->failed = true;
            return;
        }
        t->data = grown;
        t->cap = cap;
    }
}

/* The per-op families; every family's samples stay together, as the text
 * format requires. Ops a store never served are left out. */
static void render_ops(text *t, const kv_registry *reg)
{
    const kv_store *s;
    size_t i;
    int op, b;

    put(t, "# HELP kvbus_requests_total Key/value calls by store and op.\n"
           "# TYPE kvbus_requests_total counter\n");
    for (i = 0; (s = kv_registry_at(reg, i)); i++)
        for (op = 0; op < KV_OP__COUNT; op++)
            if (kv_store_op_stats(s, (kv_op)op)->calls)
                put(t, "kvbus_requests_total{store=\"%s\",op=\"%s\"} %llu\n",
                    kv_store_name(s), kv_op_name((kv_op)op),
                    (unsigned long long)kv_store_op_stats(s, (kv_op)op)->calls);
    put(t, "# HELP kvbus_request_errors_total Calls that failed.\n"
           "# TYPE kvbus_request_errors_total counter\n");
    for (i = 0; (s = kv_registry_at(reg, i)); i++)
        for (op = 0; op < KV_OP__COUNT; op++)
            if (kv_store_op_stats(s, (kv_op)op)->calls)
                put(t,
                    "kvbus_request_errors_total{store=\"%s\",op=\"%s\"} "
                    "%llu\n",
                    kv_store_name(s), kv_op_name((kv_op)op),
                    (unsigned long long)kv_store_op_stats(s, (kv_op)op)
                        ->errors);
    put(t, "# HELP kvbus_request_duration_seconds Time to answer a call.\n"
           "# TYPE kvbus_request_duration_seconds histogram\n");
    for (i = 0; (s = kv_registry_at(reg, i)); i++) {
        for (op = 0; op < KV_OP__COUNT; op++) {
            const kv_op_stats *st = kv_store_op_stats(s, (kv_op)op);
            const char *name = kv_store_name(s), *opn = kv_op_name((kv_op)op);
            uint64_t cum = 0;

            if (!st->calls)
                continue;
            for (b = 0; b < KV_LATENCY_BUCKETS; b++) {
                cum += st->buckets[b];
                put(t,
                    "kvbus_request_duration_seconds_bucket{store=\"%s\","
                    "op=\"%s\",le=\"%g\"} %llu\n",
                    name, opn, kv_latency_bounds_us[b] / 1e6,
                    (unsigned long long)cum);
            }
            put(t,
                "kvbus_request_duration_seconds_bucket{store=\"%s\",op=\"%s\","
                "le=\"+Inf\"} %llu\n"
                "kvbus_request_duration_seconds_sum{store=\"%s\",op=\"%s\"} "
                "%.6f\n"
                "kvbus_request_duration_seconds_count{store=\"%s\",op=\"%s\"} "
                "%llu\n",
                name, opn, (unsigned long long)st->calls, name, opn,
                (double)st->latency_us_sum / 1e6, name, opn,
                (unsigned long long)st->calls);
        }
    }
}

/* Per-store gauges and counters, one family after the other. */
static void render_stores(text *t, const kv_registry *reg)
{
    kv_backend_stats bs;
    const kv_store *s;
    size_t i;

    put(t, "# HELP kvbus_store_up 1 while the store's backend answers.\n"
           "# TYPE kvbus_store_up gauge\n");
    for (i = 0; (s = kv_registry_at(reg, i)); i++)
        put(t, "kvbus_store_up{store=\"%s\",backend=\"%s\"} %d\n",
            kv_store_name(s), kv_store_backend_name(s),
            kv_store_healthy(s) ? 1 : 0);
    put(t, "# HELP kvbus_store_reconnects_total Connections the store's "
           "backend re-established after losing them.\n"
           "# TYPE kvbus_store_reconnects_total counter\n");
    for (i = 0; (s = kv_registry_at(reg, i)); i++) {
        kv_store_stats(s, &bs);
        put(t,
            "kvbus_store_reconnects_total{store=\"%s\",backend=\"%s\"} "
            "%llu\n",
            kv_store_name(s), kv_store_backend_name(s),
            (unsigned long long)bs.reconnects);
    }
    put(t, "# HELP kvbus_store_keys Keys held, where the backend knows.\n"
           "# TYPE kvbus_store_keys gauge\n");
    for (i = 0; (s = kv_registry_at(reg, i)); i++) {
        kv_store_stats(s, &bs);
        if (bs.known)
            put(t, "kvbus_store_keys{store=\"%s\"} %llu\n", kv_store_name(s),
                (unsigned long long)bs.keys);
    }
    put(t, "# HELP kvbus_store_bytes Bytes held, where the backend knows.\n"
           "# TYPE kvbus_store_bytes gauge\n");
    for (i = 0; (s = kv_registry_at(reg, i)); i++) {
        kv_store_stats(s, &bs);
        if (bs.known)
            put(t, "kvbus_store_bytes{store=\"%s\"} %llu\n", kv_store_name(s),
                (unsigned long long)bs.bytes);
    }
}

/* Bus and WebSocket counters. */
static void render_pubsub(text *t, const srv_app *app)
{
    const srv_ws_stats *ws = srv_ws_hub_stats(app->ws);
    ps_bus_stats bs;

    ps_bus_stats_get(app->bus, &bs);
    put(t,
        "# HELP kvbus_pubsub_published_total Messages published here.\n"
        "# TYPE kvbus_pubsub_published_total counter\n"
        "kvbus_pubsub_published_total %llu\n"
        "# HELP kvbus_pubsub_received_total Messages from other nodes.\n"
        "# TYPE kvbus_pubsub_received_total counter\n"
        "kvbus_pubsub_received_total %llu\n"
        "# HELP kvbus_pubsub_delivered_total Deliveries to subscribers.\n"
        "# TYPE kvbus_pubsub_delivered_total counter\n"
        "kvbus_pubsub_delivered_total %llu\n"
        "# HELP kvbus_pubsub_dropped_total Messages dropped for slow "
        "consumers.\n"
        "# TYPE kvbus_pubsub_dropped_total counter\n"
        "kvbus_pubsub_dropped_total %llu\n"
        "# HELP kvbus_pubsub_subscriptions Patterns held by subscribers.\n"
        "# TYPE kvbus_pubsub_subscriptions gauge\n"
        "kvbus_pubsub_subscriptions %llu\n"
        "# HELP kvbus_pubsub_consumer_lag Messages in the provider not yet "
        "received by this node (Kafka; 0 otherwise).\n"
        "# TYPE kvbus_pubsub_consumer_lag gauge\n"
        "kvbus_pubsub_consumer_lag %llu\n"
        "# HELP kvbus_pubsub_provider_up 1 while the provider answers.\n"
        "# TYPE kvbus_pubsub_provider_up gauge\n"
        "kvbus_pubsub_provider_up{provider=\"%s\"} %d\n"
        "# HELP kvbus_ws_connections_open Open WebSocket connections.\n"
        "# TYPE kvbus_ws_connections_open gauge\n"
        "kvbus_ws_connections_open %llu\n"
        "# HELP kvbus_ws_connections_total WebSocket connections accepted.\n"
        "# TYPE kvbus_ws_connections_total counter\n"
        "kvbus_ws_connections_total %llu\n"
        "# HELP kvbus_ws_slow_closed_total Connections closed with 1008.\n"
        "# TYPE kvbus_ws_slow_closed_total counter\n"
        "kvbus_ws_slow_closed_total %llu\n",
        (unsigned long long)bs.published, (unsigned long long)bs.received,
        (unsigned long long)bs.delivered, (unsigned long long)ws->dropped,
        (unsigned long long)bs.subscriptions, (unsigned long long)bs.lag,
        ps_bus_provider_name(app->bus), ps_bus_healthy(app->bus) ? 1 : 0,
        (unsigned long long)ws->connections_open,
        (unsigned long long)ws->connections_total,
        (unsigned long long)ws->closed_slow);
}

static long resident_bytes(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");

    if (!f)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = 0;
    fclose(f);
    return rss * sysconf(_SC_PAGESIZE);
}

char *srv_metrics_render(const srv_app *app, size_t *len)
{
    const srv_http_stats *hs = srv_server_stats(app->http);
    text t = {0};
    int cls, r;

    render_ops(&t, app->reg);
    render_stores(&t, app->reg);

    put(&t,
        "# HELP kvbus_http_connections_open Open client connections.\n"
        "# TYPE kvbus_http_connections_open gauge\n"
        "kvbus_http_connections_open %llu\n"
        "# HELP kvbus_http_connections_total Connections accepted.\n"
        "# TYPE kvbus_http_connections_total counter\n"
        "kvbus_http_connections_total %llu\n"
        "# HELP kvbus_http_rejected_total Requests refused while parsing.\n"
        "# TYPE kvbus_http_rejected_total counter\n"
        "kvbus_http_rejected_total %llu\n"
        "# HELP kvbus_http_responses_total Responses by status class.\n"
        "# TYPE kvbus_http_responses_total counter\n",
        (unsigned long long)hs->connections_open,
        (unsigned long long)hs->connections_total,
        (unsigned long long)hs->requests_rejected);
    for (cls = 1; cls <= 5; cls++)
        put(&t, "kvbus_http_responses_total{code=\"%dxx\"} %llu\n", cls,
            (unsigned long long)hs->responses[cls]);
    put(&t,
        "# HELP kvbus_http_timeouts_total Requests whose headers or body "
        "came too slowly (408 or closed).\n"
        "# TYPE kvbus_http_timeouts_total counter\n"
        "kvbus_http_timeouts_total %llu\n"
        "# HELP kvbus_http_idle_closed_total Keep-alive connections closed "
        "after idle_timeout_ms.\n"
        "# TYPE kvbus_http_idle_closed_total counter\n"
        "kvbus_http_idle_closed_total %llu\n"
        "# HELP kvbus_http_evicted_total Slow connections closed to make "
        "room at max_connections.\n"
        "# TYPE kvbus_http_evicted_total counter\n"
        "kvbus_http_evicted_total %llu\n"
        "# HELP kvbus_tls_handshakes_total TLS handshakes completed.\n"
        "# TYPE kvbus_tls_handshakes_total counter\n"
        "kvbus_tls_handshakes_total %llu\n"
        "# HELP kvbus_tls_handshake_failures_total TLS handshakes that "
        "failed or timed out.\n"
        "# TYPE kvbus_tls_handshake_failures_total counter\n"
        "kvbus_tls_handshake_failures_total %llu\n",
        (unsigned long long)hs->timeouts, (unsigned long long)hs->idle_closed,
        (unsigned long long)hs->evicted, (unsigned long long)hs->tls_handshakes,
        (unsigned long long)hs->tls_handshake_failures);
    render_pubsub(&t, app);
    put(&t, "# HELP kvbus_auth_failures_total Requests and WebSocket frames "
            "refused by API token checks.\n"
            "# TYPE kvbus_auth_failures_total counter\n");
    for (r = SRV_AUTH_MISSING; r < SRV_AUTH__COUNT; r++)
        put(&t, "kvbus_auth_failures_total{reason=\"%s\"} %llu\n",
            srv_auth_result_name((enum srv_auth_result)r),
            (unsigned long long)app->auth_stats.failures[r]);
    put(&t,
        "# HELP kvbus_uptime_seconds Seconds since start.\n"
        "# TYPE kvbus_uptime_seconds gauge\n"
        "kvbus_uptime_seconds %llu\n"
        "# HELP kvbus_resident_memory_bytes Resident set size.\n"
        "# TYPE kvbus_resident_memory_bytes gauge\n"
        "kvbus_resident_memory_bytes %ld\n",
        (unsigned long long)(time(NULL) - (time_t)(app->started_ms / 1000)),
        resident_bytes());
    if (t.failed) {
        free(t.data);
        return NULL;
    }
    *len = t.len;
    return t.data;
}
