/*
 * fuzz_net.c - one kvbusd application and one loopback client per fuzz
 * input; see fuzz_net.h for what a session does and checks.
 *
 * The client is a libuv TCP handle on the server's own loop, so a session
 * is one thread and one poll set: writing a segment, then turning the loop
 * without blocking, hands the server exactly that segment in its next read.
 * The client reads (and discards) every answer from the moment it is
 * connected, so the server never stalls on a full socket.
 *
 * Runs on: the fuzzer's thread, which is also the loop's.
 */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "server/srv_app.h"
#include "server/srv_config.h"
#include "server/srv_log.h"
#include "tests/fuzz/fuzz_net.h"

#define FUZZ_NET_TURNS 3          /* loop turns after each segment */
#define FUZZ_NET_CONNECT_TRIES 30 /* 3 s: TIME_WAIT ports free after 1 s */
#define FUZZ_NET_RETRY_DELAY_US 100000
#define FUZZ_NET_READ_BUF_BYTES 65536

/* The session's state. Static: one session at a time, by construction. */
static struct {
    srv_config cfg;
    uv_loop_t loop;
    srv_app app;
    uv_tcp_t client;
    uv_connect_t connect_req;
    uv_shutdown_t shutdown_req;
    uv_timer_t deadline;
    int connect_status; /* 1 = pending, else the connect callback's */
    bool client_closing;
    bool client_closed;
    bool timed_out;
    char rbuf[FUZZ_NET_READ_BUF_BYTES];
} net;

/* One client write and its own copy of the bytes. */
typedef struct fuzz_write {
    uv_write_t req;
    char data[];
} fuzz_write;

/* The flags of the session configuration: small limits, quiet logs. */
static char *cfg_argv[] = {
    "fuzz",
    "--server.node_id=fuzz-node",
    "--server.log_level=error",
    "--server.max_key_bytes=64",
    "--server.max_value_bytes=1024",
    "--server.max_uri_bytes=256",
    "--server.max_header_bytes=1024",
    "--server.max_stores=8",
    "--server.ws_queue_bytes=1024",
    "--store.default.notify=true",
    NULL,
};

void fuzz_net_init(void)
{
    char *envp[] = {NULL};
    char err[SRV_CONFIG_ERR_BYTES];
    int argc = (int)(sizeof cfg_argv / sizeof cfg_argv[0]) - 1;

    /* kvbusd ignores SIGPIPE too: writes to a gone peer fail, not kill. */
    signal(SIGPIPE, SIG_IGN);
    if (srv_config_load(&net.cfg, argc, cfg_argv, envp, err, sizeof err) !=
        SRV_CONFIG_OK) {
        fprintf(stderr, "fuzz_net: configuration refused: %s\n", err);
        exit(2);
    }
    srv_log_set_level(net.cfg.log_level);
}

/* ------------------------------------------------------------------ */
/* The client                                                           */

static void on_client_closed(uv_handle_t *h)
{
    (void)h;
    net.client_closed = true;
}

static void client_close(void)
{
    if (net.client_closing)
        return;
    net.client_closing = true;
    uv_close((uv_handle_t *)&net.client, on_client_closed);
}

static void on_client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(net.rbuf, sizeof net.rbuf);
}

/* Answers are discarded; the server's EOF or an error ends the client. */
static void on_client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)s;
    (void)buf;
    if (n < 0)
        client_close();
}

static void on_client_connect(uv_connect_t *req, int status)
{
    (void)req;
    net.connect_status = status;
    if (status == 0 && uv_read_start((uv_stream_t *)&net.client,
                                     on_client_alloc, on_client_read) != 0)
        client_close();
}

static void on_client_write(uv_write_t *req, int status)
{
    (void)status; /* the server may close first: not the client's problem */
    free(req);
}

static void on_client_shutdown(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
}

static void on_deadline(uv_timer_t *t)
{
    (void)t;
    net.timed_out = true;
}

/* The port the application's listener got: the only TCP handle so far. */
static void find_listener_port(uv_handle_t *h, void *arg)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;

    if (h->type != UV_TCP ||
        uv_tcp_getsockname((uv_tcp_t *)h, (struct sockaddr *)&ss, &len) != 0 ||
        ss.ss_family != AF_INET)
        return;
    *(int *)arg = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void turn_loop(void)
{
    for (int i = 0; i < FUZZ_NET_TURNS; i++)
        uv_run(&net.loop, UV_RUN_NOWAIT);
}

/* ------------------------------------------------------------------ */
/* Sessions                                                             */

/*
 * Opens the application and listens on port (0 = any free one); returns
 * the port, or 0 after closing the application again.
 */
static int app_listen(int port, bool late_answers)
{
    static const struct kv_backend_ops *const late[] = {
        &fuzz_late_memory_ops,
        NULL,
    };
    char err[SRV_CONFIG_ERR_BYTES];
    int bound = 0;
    int rc = late_answers
                 ? srv_app_open_with(&net.app, &net.loop, &net.cfg, late)
                 : srv_app_open(&net.app, &net.loop, &net.cfg);

    if (rc != 0) {
        fprintf(stderr, "fuzz_net: cannot open the application\n");
        abort();
    }
    if (srv_server_listen(net.app.http, "127.0.0.1", (unsigned)port, err,
                          sizeof err) == 0)
        uv_walk(&net.loop, find_listener_port, &bound);
    if (bound == 0)
        srv_app_close(&net.app);
    return bound;
}

void fuzz_net_begin(bool late_answers)
{
    static int port; /* kept: binding port 0 gets slow with many TIME_WAITs */
    struct sockaddr_in addr;
    int tries;

    uv_loop_init(&net.loop);
    if (port == 0 || app_listen(port, late_answers) != port)
        port = app_listen(0, late_answers);
    if (port == 0) {
        fprintf(stderr, "fuzz_net: cannot listen on 127.0.0.1\n");
        abort();
    }
    uv_ip4_addr("127.0.0.1", port, &addr);
    for (tries = 0; tries < FUZZ_NET_CONNECT_TRIES; tries++) {
        net.client_closing = net.client_closed = false;
        net.connect_status = 1;
        uv_tcp_init(&net.loop, &net.client);
        if (uv_tcp_connect(&net.connect_req, &net.client,
                           (const struct sockaddr *)&addr,
                           on_client_connect) != 0)
            net.connect_status = -1;
        while (net.connect_status == 1)
            uv_run(&net.loop, UV_RUN_ONCE);
        if (net.connect_status == 0)
            break;
        /* out of local ports for a moment (TIME_WAIT): close, retry */
        client_close();
        while (!net.client_closed)
            uv_run(&net.loop, UV_RUN_ONCE);
        usleep(FUZZ_NET_RETRY_DELAY_US);
    }
    if (net.connect_status != 0) {
        fprintf(stderr, "fuzz_net: cannot connect to 127.0.0.1:%d: %s\n", port,
                uv_strerror(net.connect_status));
        abort();
    }
    net.timed_out = false;
    uv_timer_init(&net.loop, &net.deadline);
    turn_loop(); /* the server accepts and starts reading */
}

void fuzz_net_send(const void *p, size_t len)
{
    fuzz_write *w;
    uv_buf_t b;

    if (net.client_closing || len == 0)
        return;
    w = malloc(sizeof *w + len);
    if (!w)
        abort();
    memcpy(w->data, p, len);
    b = uv_buf_init(w->data, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&net.client, &b, 1, on_client_write) !=
        0) {
        free(w);
        client_close();
        return;
    }
    turn_loop();
}

/* Names the handles left on the loop, for the report of a failed check. */
static void print_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    fprintf(stderr, "fuzz_net:   %s handle %p%s\n",
            uv_handle_type_name(h->type), (void *)h,
            uv_is_closing(h) ? " (closing)" : "");
}

static bool server_done(void)
{
    return net.client_closed &&
           srv_server_stats(net.app.http)->connections_open == 0 &&
           srv_ws_hub_stats(net.app.ws)->connections_open == 0;
}

void fuzz_net_end(void)
{
    uint64_t eof_ms;

    if (!net.client_closing &&
        uv_shutdown(&net.shutdown_req, (uv_stream_t *)&net.client,
                    on_client_shutdown) != 0)
        client_close();
    uv_timer_start(&net.deadline, on_deadline, FUZZ_NET_DEADLINE_MS, 0);
    uv_update_time(&net.loop);
    eof_ms = uv_now(&net.loop);
    while (!server_done() && !net.timed_out)
        uv_run(&net.loop, UV_RUN_ONCE);
    if (!net.timed_out && uv_now(&net.loop) - eof_ms >= FUZZ_NET_PROMPT_MS) {
        fprintf(stderr,
                "fuzz_net: the server closed the connection %llu ms after "
                "the client's EOF: it waited for a timer, not for the "
                "EOF\n",
                (unsigned long long)(uv_now(&net.loop) - eof_ms));
        abort();
    }
    if (net.timed_out) {
        fprintf(
            stderr,
            "fuzz_net: the server did not close the connection within "
            "%d ms of the client's EOF (client %s, %llu HTTP and %llu "
            "WebSocket connections open)\n",
            FUZZ_NET_DEADLINE_MS, net.client_closed ? "closed" : "open",
            (unsigned long long)srv_server_stats(net.app.http)
                ->connections_open,
            (unsigned long long)srv_ws_hub_stats(net.app.ws)->connections_open);
        abort();
    }
    uv_close((uv_handle_t *)&net.deadline, NULL);
    srv_app_close(&net.app);
    if (uv_loop_close(&net.loop) != 0) {
        fprintf(stderr, "fuzz_net: handles left on the loop after "
                        "srv_app_close():\n");
        uv_walk(&net.loop, print_handle, NULL);
        abort();
    }
}
