/*
 * ps_memory.c - the in-process pub/sub provider ("memory"): one node and
 * nothing to carry between nodes.
 *
 * The bus already delivers every message published here to the local
 * subscribers, so publishing is a successful no-op and the provider is
 * always healthy. It never calls ps_bus_receive or ps_bus_reset.
 * Runs on: the event loop thread.
 */
#include "pubsub/pubsub.h"

static int ps__memory_open(ps_provider *p, const ps_provider_conf *conf,
                           kv_err *err)
{
    (void)p;
    (void)conf;
    (void)err;
    return 0;
}

static void ps__memory_close(ps_provider *p)
{
    (void)p;
}

static int ps__memory_publish(ps_provider *p, const ps_message *m, kv_err *err)
{
    (void)p;
    (void)m;
    (void)err;
    return 0;
}

static bool ps__memory_healthy(ps_provider *p)
{
    (void)p;
    return true;
}

const struct ps_provider_ops ps_memory_provider_ops = {
    .version = PS_PROVIDER_OPS_VERSION,
    .name = "memory",
    .size = sizeof(ps_provider),
    .open = ps__memory_open,
    .close = ps__memory_close,
    .publish = ps__memory_publish,
    .healthy = ps__memory_healthy,
};
