/*
 * pubsub.h - topics, subscriptions, local fan-out and the provider table.
 *
 * A bus (ps_bus) is one node's pub/sub: it stamps every message published
 * here with the node id, a per-node sequence number and a timestamp, hands
 * it to the provider (which carries it to other nodes: memory = nowhere,
 * redis, kafka), and fans it out to the local subscribers. Messages from
 * other nodes come back through ps_bus_receive() and are fanned out the same
 * way, so local subscribers see each message exactly once.
 *
 * A subscriber (ps_sub) is one consumer, such as a WebSocket connection,
 * with a set of patterns: an exact topic or a prefix ending in '*' ("kv.*",
 * "*"). A message matching several of its patterns is delivered once.
 *
 * Topics are 1..255 bytes of printable ASCII without space or '*'.
 * Errors use the kvbus codes of kvstore/kv_errors.h (KV_ETOPIC, ...).
 *
 * Runs on: the event loop thread, everything here.
 */
#ifndef PUBSUB_H
#define PUBSUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvstore/kv_errors.h"

struct uv_loop_s;

#define PS_TOPIC_MAX 255            /* bytes */
#define PS_NODE_ID_MAX 128          /* bytes */
#define PS_SUBS_PER_SUB_DEFAULT 256 /* patterns one subscriber may hold */
#define PS_TRACKED_TOPICS_MAX 10000 /* topics whose counters are kept */

/* One message. All pointers are borrowed for the duration of a call. */
typedef struct ps_message {
    const char *topic;
    size_t topic_len;
    const char *data; /* payload bytes, binary-safe */
    size_t len;
    const char *node; /* origin node id, NUL-terminated */
    uint64_t seq;     /* per-origin sequence number, from 1 */
    uint64_t ts_ms;   /* wall clock at publish, ms since the epoch */
} ps_message;

typedef struct ps_bus ps_bus;
typedef struct ps_sub ps_sub;
typedef struct ps_provider ps_provider;

/* ------------------------------------------------------------------ */
/* Providers: how messages reach other nodes                            */

typedef struct ps_provider_conf {
    const char *name;           /* "memory", "redis", "kafka" */
    const char *url;            /* NULL for memory */
    const char *channel_prefix; /* redis */
    const char *kafka_topic;    /* kafka */
    const char *format;         /* "kvbus" | "nuxeo" */
} ps_provider_conf;

#define PS_PROVIDER_OPS_VERSION 1

/*
 * The method table every provider implements (append only). The bus
 * allocates `size` zeroed bytes whose first member is struct ps_provider,
 * fills the base, then calls open. publish carries a message stamped by
 * this node to the others; it returns 0 or an error (KV_EUNAVAIL while the
 * provider is down) and never delivers locally (the bus does).
 */
struct ps_provider_ops {
    int version;
    const char *name;
    size_t size;
    int (*open)(ps_provider *p, const ps_provider_conf *conf, kv_err *err);
    void (*close)(ps_provider *p);
    int (*publish)(ps_provider *p, const ps_message *m, kv_err *err);
    bool (*healthy)(ps_provider *p); /* NULL = always */
    /* Messages in the carrier not yet received by this node (a Kafka
     * consumer's lag), as last known; NULL = never any (0). */
    uint64_t (*lag)(ps_provider *p);
};

struct ps_provider {
    const struct ps_provider_ops *ops;
    struct uv_loop_s *loop;
    ps_bus *bus;
};

/* The in-process provider: one node, nothing to carry. */
extern const struct ps_provider_ops ps_memory_provider_ops;

/* ------------------------------------------------------------------ */
/* The bus                                                              */

/*
 * A bus for node node_id on loop, carried by provider (opened with conf).
 * Returns 0 and *out, or an error with err filled (the provider's open
 * error, KV_EINVAL for a bad node id, KV_ENOMEM).
 */
int ps_bus_new(struct uv_loop_s *loop, const char *node_id,
               const struct ps_provider_ops *provider,
               const ps_provider_conf *conf, ps_bus **out, kv_err *err);

/* Closes the provider and frees the bus. Every ps_sub must be freed
 * first. Accepts NULL. */
void ps_bus_free(ps_bus *bus);

const char *ps_bus_node_id(const ps_bus *bus);
const char *ps_bus_provider_name(const ps_bus *bus);
bool ps_bus_healthy(const ps_bus *bus);

/*
 * Publishes data on topic from this node: stamps it, hands it to the
 * provider, then delivers it to local subscribers. When the provider
 * refuses (down), nothing is delivered and the error is returned.
 * If out is not NULL it receives the stamped envelope (pointers valid only
 * until the call returns).
 */
int ps_publish(ps_bus *bus, const char *topic, size_t topic_len,
               const void *data, size_t len, ps_message *out, kv_err *err);

/* For providers: a message from another node, delivered locally. Messages
 * whose origin is this node are ignored (already delivered). */
void ps_bus_receive(ps_bus *bus, const ps_message *m);

/* For providers: subscribers of topics matching pattern (NULL = all) may
 * have missed messages; each gets one reset per matching pattern. One of
 * its patterns matches when some topic could match both ("*" and "kv.*"
 * match "kv.users"); an invalid pattern counts as NULL. */
void ps_bus_reset(ps_bus *bus, const char *pattern, const char *reason);

/* ------------------------------------------------------------------ */
/* Subscribers                                                          */

typedef struct ps_sub_cbs {
    /* A message matching one of the subscriber's patterns. */
    void (*message)(ps_sub *sub, const ps_message *m, void *ud);
    /* The subscriber may have missed messages on pattern. */
    void (*reset)(ps_sub *sub, const char *pattern, const char *reason,
                  void *ud);
} ps_sub_cbs;

/* A new subscriber with no patterns; NULL when memory runs out. cbs is
 * borrowed and must outlive the subscriber. max_patterns 0 means
 * PS_SUBS_PER_SUB_DEFAULT. */
ps_sub *ps_sub_new(ps_bus *bus, const ps_sub_cbs *cbs, void *ud,
                   size_t max_patterns);

/* Drops every pattern and frees the subscriber. Accepts NULL. Safe to call
 * from inside its own message callback: it is freed after the fan-out. */
void ps_sub_free(ps_sub *sub);

/* Adds a pattern (idempotent). Errors: KV_ETOPIC for a bad pattern,
 * KV_ELIMIT past max_patterns, KV_ENOMEM. */
int ps_subscribe(ps_sub *sub, const char *pattern, size_t len, kv_err *err);

/* Removes a pattern; false when the subscriber did not hold it. */
bool ps_unsubscribe(ps_sub *sub, const char *pattern, size_t len);

size_t ps_sub_pattern_count(const ps_sub *sub);

/* ------------------------------------------------------------------ */
/* Rules and statistics                                                 */

/* 0 when topic is 1..255 bytes of printable ASCII, no space, no '*'. */
int ps_check_topic(const char *topic, size_t len, kv_err *err);
/* 0 for a valid topic, or a valid topic prefix followed by one final '*'
 * (a lone "*" matches every topic). */
int ps_check_pattern(const char *pattern, size_t len, kv_err *err);
/* True when topic matches pattern (exact, or prefix for "...*"). */
bool ps_pattern_match(const char *pattern, size_t plen, const char *topic,
                      size_t tlen);

/* Counters of one topic or pattern, for GET /v1/topics and /metrics. */
typedef struct ps_topic_stats {
    const char *name;   /* topic, or pattern ending in '*' */
    size_t subscribers; /* local subscribers holding exactly this name */
    uint64_t published; /* messages published or received on it */
    double rate;        /* messages per second, recent average */
} ps_topic_stats;

/* The index-th tracked topic or pattern; false past the end. */
bool ps_bus_topic_at(const ps_bus *bus, size_t index, ps_topic_stats *out);

typedef struct ps_bus_stats {
    uint64_t published;     /* by this node */
    uint64_t received;      /* from other nodes */
    uint64_t delivered;     /* message callbacks made */
    uint64_t subscribers;   /* live ps_sub */
    uint64_t subscriptions; /* patterns held, all subscribers */
    uint64_t lag;           /* provider's consumer lag, messages (0 = none) */
} ps_bus_stats;

void ps_bus_stats_get(const ps_bus *bus, ps_bus_stats *out);

/* ------------------------------------------------------------------ */
/* Sequence tracking per origin, for providers' gap detection          */

#define PS_ORIGINS_MAX 1024 /* origins whose last sequence number is kept */

/* The last sequence number seen from each origin node. Zero-initialise;
 * free with ps_origins_clear(). */
typedef struct ps_origins {
    struct ps__origin *head;
    size_t count;
} ps_origins;

/*
 * Records seq from node and returns how many messages were missed before
 * it: 0 when none, or when the origin is new or restarted at 1; 1 for a
 * sequence that went back. Out of memory, the origin is not tracked (0).
 */
uint64_t ps_origins_note(ps_origins *o, const char *node, uint64_t seq);

/* Forgets every origin (after a reconnect). */
void ps_origins_clear(ps_origins *o);

/* ------------------------------------------------------------------ */
/* A bounded outbound queue with drop-oldest, per slow consumer         */

/*
 * A FIFO of byte frames bounded by max_bytes. Pushing past the bound drops
 * the oldest frames (never the one being written) until the new one fits,
 * counting them; a frame larger than the bound on its own is refused.
 *
 * "The one being written" is the oldest frame once the user locks it with
 * ps_queue_lock_head() for an asynchronous write: peek, lock, write the
 * borrowed bytes, pop when the write completes (pop clears the lock). While
 * the head is locked, pushes drop the frames behind it; when the new frame
 * cannot fit beside the locked head alone, the new frame is the one dropped
 * (and counted). So ps_queue_bytes() never exceeds max_bytes. Bytes count
 * frame payloads only.
 */
typedef struct ps_queue ps_queue;

ps_queue *ps_queue_new(size_t max_bytes);
void ps_queue_free(ps_queue *q); /* accepts NULL */
/* Copies the frame in. Returns 0, KV_ETOOBIG (frame > max_bytes) or
 * KV_ENOMEM. */
int ps_queue_push(ps_queue *q, const void *frame, size_t len);
/* The oldest frame, or false when empty. Borrowed until the next pop, or
 * until the next push unless the head is locked. */
bool ps_queue_peek(const ps_queue *q, const void **frame, size_t *len);
/* Marks the oldest frame as being written (locked = true), so pushes never
 * drop it, or clears the mark. No-op on an empty queue. */
void ps_queue_lock_head(ps_queue *q, bool locked);
void ps_queue_pop(ps_queue *q);
size_t ps_queue_bytes(const ps_queue *q);
size_t ps_queue_count(const ps_queue *q);
/* Frames dropped since the last call (and resets the count). */
uint64_t ps_queue_take_dropped(ps_queue *q);

/* ------------------------------------------------------------------ */
/* Internal, for the unit tests. Not thread-safe.                      */

/* The allocator of this module (malloc by default); tests may make it
 * fail to check that errors change nothing. Released with free(). */
extern void *(*ps__malloc)(size_t size);
/* The monotonic clock of the rates, ns (uv_hrtime by default). */
extern uint64_t (*ps__clock_ns)(void);

#endif
