/*
 * mongodb.h - the MongoDB backend of kvbus.
 *
 * A store is one collection in Nuxeo's MongoDBKeyValueStore layout:
 * documents {_id: key, v: value, ttl: Date}, with `v` an Int64 for the
 * canonical decimal text of a 64-bit integer, a string for other UTF-8
 * without NUL, and binary (subtype 0) otherwise; `ttl` is the absolute
 * expiry, absent when the key has none. The collection is the store's
 * `collection` setting or "kv.<store>", in the database the URL names
 * ("kvbus" when it names none); a TTL index on `ttl` (expireAfterSeconds
 * 0) is created when the store opens. Reads ignore expired documents at
 * once; the server's TTL monitor only reclaims their space.
 *
 * mongo-c-driver is blocking: every call runs on libuv's worker pool with
 * a client taken from a mongoc_client_pool_t, and its answer comes back to
 * the loop thread. Stores with the same url and op_timeout_ms share one
 * pool. See docs/backends-mongodb.md.
 *
 * Configuration read: url (a mongodb:// URI, passed to the driver), the
 * optional collection, op_timeout_ms.
 * Runs on: the event loop thread (the methods); worker threads run the
 * driver calls (mongo_ops.c).
 */
#ifndef KVBUS_BACKEND_MONGODB_H
#define KVBUS_BACKEND_MONGODB_H

#include "kvstore/kvstore.h"

/* The method table the registry routes "mongodb" stores to. */
extern const struct kv_backend_ops mongo_backend_ops;

#endif
