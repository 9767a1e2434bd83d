/*
 * Loopback network helpers shared by the backend unit tests (postgres,
 * mongodb, redis): a port nothing listens on, and a listener that accepts
 * and never answers. Static inline functions, so a test may use only some;
 * include after <cmocka.h>. Everything here runs on the test's own thread.
 */
#ifndef KVBUS_TESTS_UNIT_T_NET_H
#define KVBUS_TESTS_UNIT_T_NET_H

#include <string.h>

#include <uv.h>

#define T_MUTE_CLIENTS 16 /* connections a mute listener keeps open */

/* A TCP port on 127.0.0.1 with nothing listening (bound, then closed). */
static inline int t_refusing_port(void)
{
    uv_loop_t loop;
    uv_tcp_t tcp;
    struct sockaddr_in addr;
    struct sockaddr_storage got;
    int len = sizeof got, port;

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &addr), 0);
    assert_int_equal(uv_tcp_init(&loop, &tcp), 0);
    assert_int_equal(uv_tcp_bind(&tcp, (struct sockaddr *)&addr, 0), 0);
    assert_int_equal(uv_tcp_getsockname(&tcp, (struct sockaddr *)&got, &len),
                     0);
    port = ntohs(((struct sockaddr_in *)&got)->sin_port);
    uv_close((uv_handle_t *)&tcp, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return port;
}

/* A listener that accepts connections and never says anything. */
struct t_mute {
    uv_tcp_t server;
    uv_tcp_t clients[T_MUTE_CLIENTS];
    int nclients;
    int port; /* bound on 127.0.0.1 by t_mute_start */
};

static inline void t_mute_on_conn(uv_stream_t *srv, int status)
{
    struct t_mute *m = srv->data;

    if (status != 0 || m->nclients == T_MUTE_CLIENTS)
        return;
    uv_tcp_init(srv->loop, &m->clients[m->nclients]);
    if (uv_accept(srv, (uv_stream_t *)&m->clients[m->nclients]) == 0)
        m->nclients++;
}

/* Starts m listening on an ephemeral loopback port of loop. */
static inline void t_mute_start(struct t_mute *m, uv_loop_t *loop)
{
    struct sockaddr_in addr;
    struct sockaddr_storage got;
    int len = sizeof got;

    memset(m, 0, sizeof *m);
    uv_tcp_init(loop, &m->server);
    m->server.data = m;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    assert_int_equal(uv_tcp_bind(&m->server, (struct sockaddr *)&addr, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&m->server, 16, t_mute_on_conn),
                     0);
    uv_tcp_getsockname(&m->server, (struct sockaddr *)&got, &len);
    m->port = ntohs(((struct sockaddr_in *)&got)->sin_port);
}

/* Closes m's handles; the caller's loop finishes closing them. */
static inline void t_mute_stop(struct t_mute *m)
{
    int i;

    for (i = 0; i < m->nclients; i++)
        uv_close((uv_handle_t *)&m->clients[i], NULL);
    uv_close((uv_handle_t *)&m->server, NULL);
}

#endif
