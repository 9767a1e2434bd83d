/*
 * redis.h - the Redis backend of kvbus.
 *
 * A store kept in a Redis server: key = key_prefix + key (default
 * "kvbus:<store>:"), value = the raw bytes, TTLs native (SET EX, EXPIRE,
 * PERSIST). get reads the value and its PTTL in one Lua script; CAS is one
 * Lua script that also sets the TTL; incr is INCRBY, whose own parsing is
 * exactly kvbus's canonical 64-bit decimal; mget is MGET; keys pages with
 * SCAN over the glob-escaped prefix (never KEYS); clear is SCAN + UNLINK of
 * this store's prefix only. Each store has one pipelined connection on the
 * kvbusd loop (backends/redis/redis_conn.h) with a per-call timeout
 * (op_timeout_ms) and reconnection with backoff; while Redis is down, calls
 * fail at once with KV_EUNAVAIL (503) and the store reports unhealthy.
 * Statistics are unknown (a Redis server is shared). Configuration, layout
 * and failure behaviour: docs/backends-redis.md.
 *
 * The same folder holds the Redis pub/sub provider (redis_pubsub.c): one
 * publishing and one PSUBSCRIBEd connection per node, in the kvbus or the
 * Nuxeo wire format (docs/cluster.md).
 *
 * Runs on: the event loop thread only.
 */
#ifndef KVBUS_BACKEND_REDIS_H
#define KVBUS_BACKEND_REDIS_H

#include "kvstore/kvstore.h"
#include "pubsub/pubsub.h"

/* The method table the registry routes "redis" stores to. */
extern const struct kv_backend_ops redis_backend_ops;

/* The pub/sub provider "redis" (pubsub.provider = redis). */
extern const struct ps_provider_ops redis_provider_ops;

#endif
