/*
 * memory.h - the embedded memory backend of kvbus.
 *
 * A store kept in this process: a power-of-two hash table (XXH3-64) with a
 * per-key expiry. Expiry is checked on every read; expired entries are
 * reclaimed lazily when a lookup meets them and incrementally by a timer on
 * the store's loop. Every method answers at once, calling done before it
 * returns. Nothing is persisted; memory use is reported through stats.
 * Runs on: the event loop thread only.
 *
 * keys pages hold at most `limit` keys; the one exception is distinct keys
 * with equal 64-bit hashes, which always share a page. The cursor is the
 * decimal text of a position in bit-reversed hash order, so a scan returns
 * a key at most once, and exactly once if the key is present throughout,
 * even when the table is resized between pages. A page may be short or
 * empty with a cursor to follow: each call visits a bounded number of
 * buckets.
 *
 * The two mem__ symbols below are internal, for the unit tests.
 */
#ifndef KVBUS_BACKEND_MEMORY_H
#define KVBUS_BACKEND_MEMORY_H

#include <stddef.h>

#include "kvstore/kvstore.h"

/* The method table the registry routes "memory" stores to. */
extern const struct kv_backend_ops mem_backend_ops;

/*
 * Runs one reclamation step by hand, as the sweep timer does on each tick:
 * examines the next `buckets` buckets (wrapping around the table), frees
 * the expired entries in them and returns how many it freed. For tests
 * that have no loop.
 */
size_t mem__sweep(kv_backend *b, size_t buckets);

/*
 * The allocator every allocation of this backend goes through (malloc by
 * default). Tests may point it at a failing one to check that an
 * allocation failure answers KV_ENOMEM and changes nothing. What it
 * returns is released with free(). Not thread-safe; tests only.
 */
extern void *(*mem__malloc)(size_t size);

#endif
