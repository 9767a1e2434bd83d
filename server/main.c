/*
 * main.c - kvbusd: reads the configuration, opens the stores, serves HTTP
 * on one libuv loop, and shuts down gracefully on SIGINT/SIGTERM (stop
 * accepting, finish answers in flight for up to shutdown_grace_ms, close
 * the backends, exit 0).
 *
 * Exit codes: 0 after a clean shutdown, 1 when the service cannot start
 * (port taken, backend refused), 2 for a bad configuration (including a
 * TLS certificate or key that does not load or match).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <uv.h>

#include "server/srv_app.h"
#include "server/srv_config.h"
#include "server/srv_http.h"
#include "server/srv_log.h"

typedef struct daemon {
    srv_app app;
    uv_signal_t sigint, sigterm, sighup;
    bool stopping;
} daemon_t;

static void on_drained(void *ud)
{
    daemon_t *d = ud;

    srv_info("shutdown: connections drained");
    uv_close((uv_handle_t *)&d->sigint, NULL);
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sighup, NULL);
}

/*
 * Reads the tokens file (when tokens_file is set) into *auth (left NULL
 * otherwise). Returns 0, or -1 with the one-line reason in err (which never
 * holds a token). Warns when the file can be read by other users.
 */
static int load_tokens(srv_auth **auth, const srv_config *cfg, char *err,
                       size_t errlen)
{
    struct stat st;

    if (!cfg->tokens_file || !cfg->tokens_file[0])
        return 0;
    if (srv_auth_load(cfg->tokens_file, auth, err, errlen) != 0)
        return -1;
    if (stat(cfg->tokens_file, &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)))
        srv_warn("auth: %s can be read by other users; chmod 600 it",
                 cfg->tokens_file);
    srv_info("auth: %zu API tokens from %s", srv_auth_count(*auth),
             cfg->tokens_file);
    return 0;
}

/* SIGHUP: reads the tokens file again. A bad file is logged and the
 * tokens in use are kept; WebSocket connections of removed tokens close. */
static void on_sighup(uv_signal_t *h, int signum)
{
    daemon_t *d = h->data;
    char err[SRV_CONFIG_ERR_BYTES];
    srv_auth *fresh;

    (void)signum;
    if (!d->app.auth) {
        srv_info("auth: SIGHUP ignored: no tokens_file configured");
        return;
    }
    if (srv_auth_load(d->app.cfg->tokens_file, &fresh, err, sizeof err)) {
        srv_error("auth: reload refused, keeping the current tokens: %s", err);
        return;
    }
    srv_auth_free(d->app.auth);
    d->app.auth = fresh;
    srv_ws_hub_auth_changed(d->app.ws);
    srv_info("auth: reloaded %zu API tokens from %s", srv_auth_count(fresh),
             d->app.cfg->tokens_file);
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
    srv_tls_ctx *tls = NULL;
    srv_auth *auth = NULL;
    int rc, status = 1;

    rc = srv_config_load(&cfg, argc, argv, environ, err, sizeof err);
    if (rc != SRV_CONFIG_OK) {
        if (rc == SRV_CONFIG_BAD)
            fprintf(stderr, "kvbusd: %s\n", err);
        srv_config_free(&cfg);
        return rc == SRV_CONFIG_EXIT ? 0 : 2;
    }
    if (cfg.tls_cert) {
        tls = srv_tls_ctx_new(cfg.tls_cert, cfg.tls_key, cfg.tls_min_version,
                              err, sizeof err);
        if (!tls) {
            fprintf(stderr, "kvbusd: %s\n", err);
            srv_config_free(&cfg);
            return 2;
        }
    }
    srv_log_set_level(cfg.log_level);
    if (load_tokens(&auth, &cfg, err, sizeof err) != 0) {
        fprintf(stderr, "kvbusd: %s\n", err);
        srv_config_free(&cfg);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);

    rc = srv_app_open(&d.app, &loop, &cfg);
    d.app.auth = auth; /* owned by the app from here on */
    if (rc != 0)
        goto out;
    if (tls)
        srv_server_set_tls(d.app.http, tls);
    if (srv_server_listen(d.app.http, cfg.listen_host, cfg.listen_port, err,
                          sizeof err) != 0) {
        srv_error("%s", err);
        goto out;
    }
    uv_signal_init(&loop, &d.sigint);
    uv_signal_init(&loop, &d.sigterm);
    uv_signal_init(&loop, &d.sighup);
    d.sigint.data = d.sigterm.data = d.sighup.data = &d;
    uv_signal_start(&d.sigint, on_signal, SIGINT);
    uv_signal_start(&d.sigterm, on_signal, SIGTERM);
    uv_signal_start(&d.sighup, on_sighup, SIGHUP);
    if (!d.app.auth && strcmp(cfg.listen_host, "127.0.0.1") != 0 &&
        strcmp(cfg.listen_host, "::1") != 0 &&
        strcmp(cfg.listen_host, "localhost") != 0)
        srv_warn("auth: no tokens_file: anyone who reaches %s:%u can read "
                 "and change every store (docs/security.md)",
                 cfg.listen_host, cfg.listen_port);
    srv_info("kvbusd %s node %s listening on %s://%s:%u/", SRV_VERSION,
             cfg.node_id, tls ? "https" : "http", cfg.listen_host,
             cfg.listen_port);

    uv_run(&loop, UV_RUN_DEFAULT);
    status = 0;

out:
    srv_app_close(&d.app);
    if (uv_loop_close(&loop) != 0)
        srv_warn("shutdown: handles still open at exit");
    srv_tls_ctx_free(tls); /* every connection, and its session, is gone */
    srv_config_free(&cfg);
    if (status == 0)
        srv_info("shutdown: done");
    return status;
}
