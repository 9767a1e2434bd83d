/*
 * postgres.h - the PostgreSQL backend of kvbus.
 *
 * A store is one table in Nuxeo's SQLKeyValueStore layout (`key` text
 * primary key, `long` bigint, `string` text, `bytes` bytea, `ttl` bigint
 * absolute expiry in epoch seconds, indexed), named by the store's `table`
 * setting or "kv_<store>", created if missing when the store opens. Every
 * operation is one SQL statement sent without blocking over libpq on the
 * store's loop; expiry is checked on read against the database clock and
 * expired rows are swept every minute. Stores with the same url share a
 * pool of connections. See docs/backends-postgres.md.
 *
 * Configuration read: url (a libpq connection string or postgresql:// URL,
 * passed to libpq as is), table, op_timeout_ms.
 * Runs on: the event loop thread only.
 */
#ifndef KVBUS_BACKEND_POSTGRES_H
#define KVBUS_BACKEND_POSTGRES_H

#include "kvstore/kvstore.h"

/* The method table the registry routes "postgres" stores to. */
extern const struct kv_backend_ops pg_backend_ops;

#endif
