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

#include <uv.h>

#include "server/srv_app.h"
#include "server/srv_config.h"
#include "server/srv_http.h"
#include "server/srv_log.h"

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

int main(int argc, char **argv)
{
    extern char **environ;
    static daemon_t d;
    srv_config cfg;
    char err[SRV_CONFIG_ERR_BYTES];
    uv_loop_t loop;
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

    if (srv_app_open(&d.app, &loop, &cfg) != 0)
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
    srv_app_close(&d.app);
    if (uv_loop_close(&loop) != 0)
        srv_warn("shutdown: handles still open at exit");
    srv_config_free(&cfg);
    if (status == 0)
        srv_info("shutdown: done");
    return status;
}
