/*
 * redis_conn.h - one connection to a Redis server on the libuv loop, shared
 * by the Redis KV backend and the Redis pub/sub provider.
 *
 * A connection is opened from a redis:// URL (see redis_int.h for the
 * grammar) and runs on hiredis's asynchronous API attached to the loop.
 * Every command is written at once and its reply comes back in order, so
 * many calls are in flight together (pipelining). On connect it sends AUTH
 * and SELECT when the URL asks for them and loads the Lua scripts its user
 * registered (SCRIPT LOAD), then PING; only once all of these answered is
 * the connection ready.
 *
 * Failure behaviour:
 * - every call has a deadline (op_timeout_ms). A call not answered in time
 *   completes with KV_ETIMEDOUT, and the connection is dropped, failing the
 *   calls behind it with KV_EUNAVAIL: a late reply is never delivered.
 * - a lost or failed connection is retried after 100 ms, doubling up to
 *   5 s, until it is ready again. Meanwhile calls fail at once with
 *   KV_EUNAVAIL and a message naming the user and the address; they are
 *   never queued. The one exception is the very first attempt after open:
 *   calls made then wait (within their deadline) until it succeeds or
 *   fails, so a store opened on first use can serve the request that
 *   opened it.
 * - each change of state (connected, lost, unreachable, reconnected) is
 *   logged once, naming the user and the address, never a password.
 *
 * Memory: the connection object outlives redis_conn_close() until libuv
 * and hiredis are done with it (its timers, poll handle and resolver
 * request are closed asynchronously); the caller may free its own state as
 * soon as close returns, because close first completes every pending call.
 * The loop is not kept alive by an idle connection.
 *
 * Subscriber connections: a conf with `psubscribe` set makes the last step
 * of every handshake PSUBSCRIBE <pattern> instead of PING; the connection
 * is ready once Redis confirms the subscription, and from then on only
 * receives: every published message matching the pattern is handed to
 * on_message on the loop thread, and redis_conn_command refuses calls
 * (KV_EINVAL). It reconnects and re-subscribes like any connection.
 *
 * Runs on: the event loop thread only.
 */
#ifndef KVBUS_BACKEND_REDIS_CONN_H
#define KVBUS_BACKEND_REDIS_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "kvstore/kv_errors.h"

struct uv_loop_s;

#define REDIS_BACKOFF_MIN_MS 100  /* first reconnect delay */
#define REDIS_BACKOFF_MAX_MS 5000 /* the delay doubles up to this */

typedef struct redis_conn redis_conn;

/*
 * A message received by a subscriber connection, on the loop thread:
 * channel and payload are binary-safe and valid until the callback
 * returns. The callback must not close the connection.
 */
typedef void (*redis_message_cb)(const char *channel, size_t channel_len,
                                 const char *payload, size_t len, void *ud);

/*
 * A change of state, on the loop thread: ready is true when the
 * connection (for a subscriber: the subscription) is up, false when it was
 * lost. reconnected is true when ready follows an earlier ready state
 * (something may have been missed in between). Not called by close.
 */
typedef void (*redis_state_cb)(bool ready, bool reconnected, void *ud);

typedef struct redis_conn_conf {
    const char *url;            /* redis://[[user:]password@]host[:port][/db] */
    const char *label;          /* who uses it, for logs: "store sessions" */
    uint32_t op_timeout_ms;     /* per call; 0 = KV_OP_TIMEOUT_MS_DEFAULT */
    const char *const *scripts; /* Lua bodies loaded on every connect */
    size_t nscripts;            /* entries in scripts */
    const char *psubscribe;     /* pattern: a subscriber connection; or NULL */
    redis_message_cb on_message; /* subscriber: each message received */
    redis_state_cb on_state;     /* optional: ready / lost */
    void *ud;                    /* for on_message and on_state */
} redis_conn_conf;

/*
 * Completion of a call, on the loop thread. status 0: reply is the
 * server's answer, which may be an error reply (REDIS_REPLY_ERROR) for the
 * caller to interpret. Otherwise KV_ETIMEDOUT or KV_EUNAVAIL, reply NULL,
 * and err says why. reply and err are valid until the callback returns.
 */
typedef void (*redis_reply_cb)(int status, const redisReply *reply,
                               const kv_err *err, void *ud);

/*
 * Parses conf->url, starts connecting and returns the connection in *out.
 * conf and the strings it points to are copied, except scripts, which must
 * outlive the connection (static text). A server that cannot be reached is
 * not an error here: the connection keeps retrying. Errors: KV_EINVAL for
 * a bad URL (err never quotes it), KV_ENOMEM.
 */
int redis_conn_open(struct uv_loop_s *loop, const redis_conn_conf *conf,
                    redis_conn **out, kv_err *err);

/*
 * Closes the connection: completes every pending call with KV_EUNAVAIL
 * (their callbacks run before close returns), stops retrying and releases
 * everything once libuv and hiredis let go. Accepts NULL.
 */
void redis_conn_close(redis_conn *c);

/* True while the connection is up and its handshake done. */
bool redis_conn_ready(const redis_conn *c);

/* "host:port" of the server, for messages. */
const char *redis_conn_addr(const redis_conn *c);

/*
 * How many times the connection became ready again after having been ready
 * once (lost, or dropped after a timeout, then re-established). The first
 * connection does not count, even after failed attempts.
 */
uint64_t redis_conn_reconnects(const redis_conn *c);

/*
 * Sends one command (argc arguments, binary-safe, borrowed for the call)
 * and calls cb with its reply. Returns 0 and calls cb exactly once, later;
 * or returns KV_EUNAVAIL (not connected), KV_EINVAL (a subscriber
 * connection) or KV_ENOMEM with err set and never calls cb.
 */
int redis_conn_command(redis_conn *c, int argc, const char **argv,
                       const size_t *argvlen, redis_reply_cb cb, void *ud,
                       kv_err *err);

/*
 * Runs registered script number `script` with the arguments that follow
 * the script in EVAL (numkeys, the keys, the other arguments): EVALSHA
 * once the script is loaded, resent as EVAL if the server answers NOSCRIPT
 * (its script cache was flushed). Same contract as redis_conn_command.
 */
int redis_conn_script(redis_conn *c, size_t script, int argc, const char **argv,
                      const size_t *argvlen, redis_reply_cb cb, void *ud,
                      kv_err *err);

#endif
