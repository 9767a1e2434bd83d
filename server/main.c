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

#include "backends/memory/memory.h"
#include "kvstore/kvstore.h"
#include "server/srv_app.h"
#include "server/srv_config.h"
#include "server/srv_http.h"
#include "server/srv_log.h"

/* Every backend this binary can route a store to. */
static const struct kv_backend_ops *const backends[] = {
    &mem_backend_ops,
    NULL,
};

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
    srv_server_shutdown(d->app.http, d->app.cfg->shutdown_grace_ms,
                        on_drained, d);
}

static uint64_t wall_ms(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
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
    d.app.http = srv_server_new(&loop, &limits, srv_routes, srv_nroutes, &d.app);
    if (!d.app.reg || !d.app.http) {
        srv_error("out of memory at start-up");
        goto out;
    }
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
    kv_registry_free(d.app.reg);
    srv_server_free(d.app.http);
    uv_run(&loop, UV_RUN_DEFAULT); /* close callbacks of what was freed */
    if (uv_loop_close(&loop) != 0)
        srv_warn("shutdown: handles still open at exit");
    srv_config_free(&cfg);
    if (status == 0)
        srv_info("shutdown: done");
    return status;
}
