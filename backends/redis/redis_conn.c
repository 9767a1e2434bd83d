/*
 * redis_conn.c - a pipelined hiredis connection on the libuv loop, with
 * per-call deadlines and reconnection (contract in redis_conn.h).
 *
 * The socket is watched by redis_uv.c, whose cleanup hook tells us
 * (redis__conn_context_gone) when a hiredis context is gone, whatever the
 * reason. This file holds:
 * - calls: one record per command, in a list ordered by deadline (replies
 *   come in order and every call gets the same timeout, so the oldest call
 *   is always the first to expire and one timer serves them all). A record
 *   is freed by hiredis's callback for it, which always comes (with a NULL
 *   reply when the context is freed); a call answered earlier (timeout,
 *   close) is marked done and that callback only frees it. Calls made
 *   during the first attempt are held, formatted, until it ends;
 * - the connection's states: resolving (uv_getaddrinfo, for host names),
 *   connecting (TCP connect then AUTH, SELECT, SCRIPT LOAD, PING), ready,
 *   and down (waiting for the retry timer);
 * - subscriber connections, whose handshake ends with PSUBSCRIBE instead
 *   of PING. hiredis keeps that call's callback for the life of the
 *   context and calls it for the confirmation, for every message, and
 *   last with a NULL reply when the context goes, which frees the record.
 *
 * Lifetime: the connection holds a reference for its owner, one per timer
 * and per hiredis context (its poll handle), and one while a name is being
 * resolved; it is freed when the last one goes.
 *
 * Runs on: the event loop thread only.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <uv.h>

#include "backends/redis/redis_conn.h"
#include "backends/redis/redis_int.h"
#include "kvstore/kvstore.h"

#define REDIS_SHA_HEX 40         /* a script's SHA1 as hex */
#define REDIS_REASON_BYTES 160   /* why the last connection ended */
#define REDIS_ARGV_STACK 16      /* script arguments held on the stack */
#define REDIS_NO_SCRIPT SIZE_MAX /* redis_call.script of plain commands */
#define REDIS_EVALSHA_PREFIX 60  /* "$7\r\nEVALSHA\r\n$40\r\n" + sha + CRLF */
#define REDIS_EVAL_HEAD_MAX 48   /* "$4\r\nEVAL\r\n$<length>\r\n" */

enum conn_state {
    CONN_RESOLVING,  /* looking the host name up */
    CONN_CONNECTING, /* TCP connect and handshake under way */
    CONN_READY,      /* serving calls */
    CONN_DOWN,       /* waiting for the retry timer */
};

/* What an internal call of the handshake is for. */
enum handshake_step {
    HS_NONE, /* a user's call */
    HS_AUTH,
    HS_SELECT,
    HS_SCRIPT,
    HS_PING, /* the last one: its answer makes the connection ready */
    HS_PSUB, /* instead of PING on a subscriber: confirmed = ready */
};

struct redis_call {
    struct redis_call *prev, *next; /* waiting list, oldest first */
    redis_conn *conn;
    redis_reply_cb cb; /* the user's; NULL for the handshake */
    void *ud;
    uint64_t deadline_ms; /* loop time */
    char *cmd;            /* formatted command, while it may be sent again */
    size_t cmd_len;
    size_t script;          /* script index, or REDIS_NO_SCRIPT */
    bool by_sha;            /* sent as EVALSHA: NOSCRIPT means resend */
    bool sent;              /* handed to hiredis, which will call back */
    bool listed;            /* in the waiting list */
    bool done;              /* answered or abandoned: ignore the reply */
    enum handshake_step hs; /* HS_NONE for user calls */
};

/* A host name lookup in flight; outlives the connection if need be. */
struct redis_resolve {
    uv_getaddrinfo_t req;
    redis_conn *conn;
};

struct redis_conn {
    uv_loop_t *loop;
    char *label; /* "store sessions" */
    redis_url url;
    char addr[REDIS_ADDR_MAX + 1]; /* host:port for messages */
    bool numeric_host;             /* no lookup needed */
    uint32_t op_timeout_ms;
    const char *const *scripts;
    size_t nscripts;
    char (*shas)[REDIS_SHA_HEX + 1]; /* per script; "" until loaded */
    char *psub;                      /* subscriber's pattern, or NULL */
    redis_message_cb on_message;
    redis_state_cb on_state;
    void *ud; /* for on_message and on_state */

    enum conn_state state;
    bool starting;      /* the first attempt has not ended: calls may wait */
    bool closing;       /* close was called */
    bool outage_logged; /* the current outage has been logged */
    bool ever_ready;
    unsigned failures;      /* failed attempts since the last ready */
    uint64_t reconnects;    /* times ready again after having been ready */
    uint64_t down_since_ms; /* loop time the connection was lost */
    uint64_t backoff_ms;    /* delay before the next attempt */
    redisAsyncContext *ac;
    bool dropping;   /* redisAsyncFree was asked for ac */
    bool reason_set; /* reason was set for the current attempt */
    char reason[REDIS_REASON_BYTES]; /* why the last one failed or ended */

    struct redis_call *head, *tail; /* waiting calls */
    uv_timer_t op_timer;            /* deadline of head */
    uv_timer_t retry_timer;         /* next attempt while down */
    struct redis_resolve *resolve;  /* lookup in flight, or NULL */
    unsigned refs;
};

static void conn_attempt(redis_conn *c);
static void on_op_timer(uv_timer_t *t);
static void on_retry_timer(uv_timer_t *t);

/* ------------------------------------------------------------------ */
/* Lifetime                                                             */

void redis__conn_unref(redis_conn *c)
{
    if (--c->refs > 0)
        return;
    redis__url_clear(&c->url);
    free(c->shas);
    free(c->psub);
    free(c->label);
    free(c);
}

void redis__conn_ref(redis_conn *c)
{
    c->refs++;
}

static void on_timer_closed(uv_handle_t *h)
{
    redis__conn_unref(h->data);
}

static uint64_t conn_now(const redis_conn *c)
{
    return uv_now(c->loop);
}

/* Records why the connection is about to end (first reason wins). */
static void conn_reason(redis_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void conn_reason(redis_conn *c, const char *fmt, ...)
{
    va_list ap;

    if (c->reason_set)
        return;
    va_start(ap, fmt);
    vsnprintf(c->reason, sizeof c->reason, fmt, ap);
    va_end(ap);
    c->reason_set = true;
}

/* Fills err with KV_EUNAVAIL naming the user, the server and why. */
static int conn_err_down(const redis_conn *c, kv_err *err)
{
    if (c->closing)
        return kv_err_set(err, KV_EUNAVAIL, "%s: redis %s: closing", c->label,
                          c->addr);
    return kv_err_set(err, KV_EUNAVAIL, "%s: redis %s is unavailable: %s",
                      c->label, c->addr,
                      c->reason[0] ? c->reason : "not connected yet");
}

/* ------------------------------------------------------------------ */
/* Calls                                                                */

static void call_free(struct redis_call *call)
{
    free(call->cmd);
    free(call);
}

static void conn_arm_timer(redis_conn *c)
{
    uint64_t now = conn_now(c);

    if (c->closing)
        return;
    if (!c->head) {
        uv_timer_stop(&c->op_timer);
        return;
    }
    uv_timer_start(&c->op_timer, on_op_timer,
                   c->head->deadline_ms > now ? c->head->deadline_ms - now : 0,
                   0);
}

static void list_append(redis_conn *c, struct redis_call *call)
{
    bool was_empty = c->head == NULL;

    call->prev = c->tail;
    call->next = NULL;
    if (c->tail)
        c->tail->next = call;
    else
        c->head = call;
    c->tail = call;
    call->listed = true;
    if (was_empty)
        conn_arm_timer(c);
}

static void list_remove(redis_conn *c, struct redis_call *call)
{
    bool was_head = c->head == call;

    if (!call->listed)
        return;
    if (call->prev)
        call->prev->next = call->next;
    else
        c->head = call->next;
    if (call->next)
        call->next->prev = call->prev;
    else
        c->tail = call->prev;
    call->prev = call->next = NULL;
    call->listed = false;
    if (was_head)
        conn_arm_timer(c);
}

/* The oldest waiting call not yet handed to hiredis, or NULL. */
static struct redis_call *list_first_held(const redis_conn *c)
{
    struct redis_call *call = c->head;

    while (call && call->sent)
        call = call->next;
    return call;
}

/*
 * Takes call out of the waiting list and completes it with an error. A
 * call hiredis still holds is freed by hiredis's callback, others here.
 */
static void call_fail(redis_conn *c, struct redis_call *call, const kv_err *e)
{
    redis_reply_cb cb = call->cb;
    void *ud = call->ud;

    list_remove(c, call);
    call->done = true;
    if (!call->sent)
        call_free(call);
    if (cb)
        cb(e->code, NULL, e, ud);
}

static void on_reply(redisAsyncContext *ac, void *r, void *priv);

/*
 * Hands call->cmd to hiredis. Keeps the command only when a NOSCRIPT
 * answer may make us send it again. 0, or KV_EUNAVAIL (context closing).
 */
static int call_send(redis_conn *c, struct redis_call *call)
{
    if (redisAsyncFormattedCommand(c->ac, on_reply, call, call->cmd,
                                   call->cmd_len) != REDIS_OK)
        return KV_EUNAVAIL;
    call->sent = true;
    if (!call->by_sha) {
        free(call->cmd);
        call->cmd = NULL;
    }
    return 0;
}

/*
 * Queues a formatted command (cmd, owned from now on) as a call: sent at
 * once when ready, held while the first attempt is under way. Returns 0,
 * or an error with cmd freed and cb never called.
 */
static int conn_issue(redis_conn *c, char *cmd, size_t len, size_t script,
                      bool by_sha, enum handshake_step hs, redis_reply_cb cb,
                      void *ud, kv_err *err)
{
    struct redis_call *call = calloc(1, sizeof *call);

    if (!call) {
        free(cmd);
        return kv_err_set(err, KV_ENOMEM, "%s: out of memory", c->label);
    }
    call->conn = c;
    call->cb = cb;
    call->ud = ud;
    call->cmd = cmd;
    call->cmd_len = len;
    call->script = script;
    call->by_sha = by_sha;
    call->hs = hs;
    call->deadline_ms = conn_now(c) + c->op_timeout_ms;
    if (c->ac && (c->state == CONN_READY || hs != HS_NONE) &&
        call_send(c, call) != 0) {
        call_free(call);
        return conn_err_down(c, err);
    }
    list_append(c, call);
    return 0;
}

/* True when a user call may be made now. */
static bool conn_accepts(const redis_conn *c)
{
    if (c->closing || c->dropping)
        return false;
    return c->state == CONN_READY ||
           (c->starting &&
            (c->state == CONN_RESOLVING || c->state == CONN_CONNECTING));
}

int redis_conn_command(redis_conn *c, int argc, const char **argv,
                       const size_t *argvlen, redis_reply_cb cb, void *ud,
                       kv_err *err)
{
    char *cmd = NULL;
    int len;

    if (c->psub)
        return kv_err_set(err, KV_EINVAL,
                          "%s: a subscriber connection only "
                          "receives",
                          c->label);
    if (!conn_accepts(c))
        return conn_err_down(c, err);
    len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    if (len < 0)
        return kv_err_set(err, KV_ENOMEM, "%s: out of memory", c->label);
    return conn_issue(c, cmd, (size_t)len, REDIS_NO_SCRIPT, false, HS_NONE, cb,
                      ud, err);
}

int redis_conn_script(redis_conn *c, size_t script, int argc, const char **argv,
                      const size_t *argvlen, redis_reply_cb cb, void *ud,
                      kv_err *err)
{
    const char *stack_argv[REDIS_ARGV_STACK + 2];
    size_t stack_len[REDIS_ARGV_STACK + 2];
    const char **av = stack_argv;
    size_t *al = stack_len;
    bool by_sha;
    char *cmd = NULL;
    int len;

    if (!conn_accepts(c))
        return conn_err_down(c, err);
    if (script >= c->nscripts || argc < 1)
        return kv_err_set(err, KV_EINVAL, "%s: no such script", c->label);
    if (argc > REDIS_ARGV_STACK) {
        av = malloc((size_t)(argc + 2) * sizeof *av);
        al = malloc((size_t)(argc + 2) * sizeof *al);
        if (!av || !al) {
            if (av != stack_argv)
                free(av);
            if (al != stack_len)
                free(al);
            return kv_err_set(err, KV_ENOMEM, "%s: out of memory", c->label);
        }
    }
    /* Until the script was loaded once, send it whole. */
    by_sha = c->shas[script][0] != '\0';
    av[0] = by_sha ? "EVALSHA" : "EVAL";
    al[0] = strlen(av[0]);
    av[1] = by_sha ? c->shas[script] : c->scripts[script];
    al[1] = strlen(av[1]);
    memcpy(av + 2, argv, (size_t)argc * sizeof *av);
    memcpy(al + 2, argvlen, (size_t)argc * sizeof *al);
    len = redisFormatCommandArgv(&cmd, argc + 2, av, al);
    if (av != stack_argv)
        free(av);
    if (al != stack_len)
        free(al);
    if (len < 0)
        return kv_err_set(err, KV_ENOMEM, "%s: out of memory", c->label);
    return conn_issue(c, cmd, (size_t)len, script, by_sha, HS_NONE, cb, ud,
                      err);
}

/*
 * Rewrites an EVALSHA call as EVAL of the script's text (same arguments)
 * and sends it again, at the end of the list with a new deadline. Returns
 * true when sent, false when the call must be completed as it is.
 */
static bool call_resend_eval(redis_conn *c, struct redis_call *call)
{
    const char *body = c->scripts[call->script];
    const char *eol = memchr(call->cmd, '\n', call->cmd_len);
    size_t head, tail_off, blen = strlen(body), n;
    char *cmd;

    if (!c->ac || c->dropping || !eol)
        return false;
    head = (size_t)(eol - call->cmd) + 1; /* "*N\r\n" */
    tail_off = head + REDIS_EVALSHA_PREFIX;
    if (tail_off > call->cmd_len)
        return false;
    cmd = malloc(head + REDIS_EVAL_HEAD_MAX + blen + 2 +
                 (call->cmd_len - tail_off));
    if (!cmd)
        return false;
    memcpy(cmd, call->cmd, head);
    n = head + (size_t)sprintf(cmd + head, "$4\r\nEVAL\r\n$%zu\r\n", blen);
    memcpy(cmd + n, body, blen);
    n += blen;
    memcpy(cmd + n, "\r\n", 2);
    n += 2;
    memcpy(cmd + n, call->cmd + tail_off, call->cmd_len - tail_off);
    n += call->cmd_len - tail_off;

    free(call->cmd);
    call->cmd = cmd;
    call->cmd_len = n;
    call->by_sha = false;
    if (call_send(c, call) != 0)
        return false;
    list_remove(c, call);
    call->deadline_ms = conn_now(c) + c->op_timeout_ms;
    list_append(c, call);
    return true;
}

static bool reply_is_noscript(const redisReply *r)
{
    return r->type == REDIS_REPLY_ERROR && r->len >= 8 &&
           memcmp(r->str, "NOSCRIPT", 8) == 0;
}

static void conn_handshake_reply(redis_conn *c, redisAsyncContext *ac,
                                 struct redis_call *call,
                                 const redisReply *reply);
static void conn_psub_reply(redis_conn *c, redisAsyncContext *ac,
                            struct redis_call *call, const redisReply *reply);

/* hiredis's callback for every command: the reply, or NULL on teardown.
 * It is hiredis's last word on the call unless we send it again. */
static void on_reply(redisAsyncContext *ac, void *r, void *priv)
{
    struct redis_call *call = priv;
    redis_conn *c = call->conn;
    const redisReply *reply = r;
    kv_err e = {0};

    if (call->hs == HS_PSUB) {
        conn_psub_reply(c, ac, call, reply);
        return;
    }
    call->sent = false;
    if (call->done) {
        call_free(call); /* answered already (timeout, close) */
        return;
    }
    if (reply && call->by_sha && reply_is_noscript(reply) &&
        call_resend_eval(c, call))
        return;
    list_remove(c, call);
    call->done = true;
    if (call->hs != HS_NONE) {
        conn_handshake_reply(c, ac, call, reply);
    } else if (reply) {
        call->cb(0, reply, NULL, call->ud);
    } else {
        conn_reason(c, "%s", ac->errstr[0] ? ac->errstr : "connection closed");
        kv_err_set(&e, KV_EUNAVAIL, "%s: redis %s: connection lost: %s",
                   c->label, c->addr, c->reason);
        call->cb(e.code, NULL, &e, call->ud);
    }
    call_free(call);
}

/* Asks hiredis to free the live context, recording why. */
static void conn_drop(redis_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void conn_drop(redis_conn *c, const char *fmt, ...)
{
    va_list ap;

    if (!c->ac || c->dropping)
        return;
    if (!c->reason_set) {
        va_start(ap, fmt);
        vsnprintf(c->reason, sizeof c->reason, fmt, ap);
        va_end(ap);
        c->reason_set = true;
    }
    c->dropping = true;
    redisAsyncFree(c->ac); /* deferred by hiredis inside its callbacks */
}

/* Expires calls whose deadline passed, then drops the connection. */
static void on_op_timer(uv_timer_t *t)
{
    redis_conn *c = t->data;
    uint64_t now = conn_now(c);
    bool expired = false;
    kv_err e = {0};

    while (!c->closing && c->head && c->head->deadline_ms <= now) {
        struct redis_call *call = c->head;
        expired = true;
        if (call->hs != HS_NONE) {
            conn_reason(c, "no answer to the connection handshake in %u ms",
                        c->op_timeout_ms);
            list_remove(c, call);
            call->done = true; /* freed by hiredis's callback */
            continue;
        }
        kv_err_set(&e, KV_ETIMEDOUT, "%s: redis %s did not answer within %u ms",
                   c->label, c->addr, c->op_timeout_ms);
        call_fail(c, call, &e);
    }
    if (expired && !c->closing)
        conn_drop(c, "a call got no answer within %u ms", c->op_timeout_ms);
}

/* ------------------------------------------------------------------ */
/* States                                                               */

/* Completes the calls still held unsent (first attempt) with an error. */
static void conn_fail_held(redis_conn *c)
{
    struct redis_call *call;
    kv_err e = {0};

    conn_err_down(c, &e);
    while ((call = list_first_held(c)) != NULL)
        call_fail(c, call, &e);
}

/* Starts the retry timer for the next attempt and doubles the delay. */
static void conn_schedule_retry(redis_conn *c)
{
    c->state = CONN_DOWN;
    if (c->closing)
        return;
    uv_timer_start(&c->retry_timer, on_retry_timer, c->backoff_ms, 0);
    c->backoff_ms *= 2;
    if (c->backoff_ms > REDIS_BACKOFF_MAX_MS)
        c->backoff_ms = REDIS_BACKOFF_MAX_MS;
}

/*
 * The attempt or the connection ended (no live context any more): logs
 * the change of state, fails what waited for the first attempt and
 * schedules the next attempt.
 */
static void conn_attempt_over(redis_conn *c)
{
    bool was_ready = c->state == CONN_READY;

    if (!c->reason_set)
        conn_reason(c, "connection closed");
    c->state = CONN_DOWN;
    if (was_ready) {
        c->backoff_ms = REDIS_BACKOFF_MIN_MS;
        c->down_since_ms = conn_now(c);
        redis__log(REDIS_LOG_WARN,
                   "%s: redis %s connection lost (%s); reconnecting", c->label,
                   c->addr, c->reason);
        c->outage_logged = true;
        if (c->on_state)
            c->on_state(false, false, c->ud);
    } else {
        c->failures++;
        if (!c->outage_logged) {
            redis__log(REDIS_LOG_WARN,
                       "%s: redis %s cannot connect (%s); retrying every %u to "
                       "%u ms",
                       c->label, c->addr, c->reason, REDIS_BACKOFF_MIN_MS,
                       REDIS_BACKOFF_MAX_MS);
            c->outage_logged = true;
        }
    }
    c->starting = false;
    conn_fail_held(c);
    conn_schedule_retry(c);
}

/* See redis_int.h: hiredis is letting go of ac. */
void redis__conn_context_gone(redis_conn *c, redisAsyncContext *ac)
{
    if (ac != c->ac)
        return;
    if (ac->err && ac->errstr[0])
        conn_reason(c, "%s", ac->errstr);
    c->ac = NULL;
    c->dropping = false;
    if (c->closing)
        return;
    conn_attempt_over(c);
}

/* The handshake answered: the connection serves calls from now on. */
static void conn_ready(redis_conn *c)
{
    struct redis_call *call;
    kv_err e = {0};

    c->state = CONN_READY;
    c->backoff_ms = REDIS_BACKOFF_MIN_MS;
    if (!c->ever_ready) {
        redis__log(REDIS_LOG_INFO, "%s: redis %s connected (db %d)", c->label,
                   c->addr, c->url.db);
    } else {
        c->reconnects++;
        redis__log(REDIS_LOG_INFO, "%s: redis %s reconnected after %llu ms",
                   c->label, c->addr,
                   (unsigned long long)(conn_now(c) - c->down_since_ms));
    }
    c->ever_ready = true;
    c->starting = false;
    c->outage_logged = false;
    c->failures = 0;
    c->reason_set = false;
    c->reason[0] = '\0';

    /* Send what waited for the first attempt, in order. */
    while ((call = list_first_held(c)) != NULL) {
        if (call_send(c, call) != 0) {
            conn_err_down(c, &e);
            call_fail(c, call, &e);
        }
    }
    if (c->on_state)
        c->on_state(true, c->reconnects > 0, c->ud);
}

/* True when element i of array r is a string equal to text. */
static bool reply_elem_is(const redisReply *r, size_t i, const char *text)
{
    size_t n = strlen(text);

    return r->type == REDIS_REPLY_ARRAY && i < r->elements &&
           (r->element[i]->type == REDIS_REPLY_STRING ||
            r->element[i]->type == REDIS_REPLY_STATUS) &&
           r->element[i]->len == n && memcmp(r->element[i]->str, text, n) == 0;
}

/*
 * hiredis's callback of a subscriber's PSUBSCRIBE: the confirmation (the
 * connection becomes ready), then one call per message, then NULL when
 * the context goes, hiredis's last word on the record, which frees it.
 */
static void conn_psub_reply(redis_conn *c, redisAsyncContext *ac,
                            struct redis_call *call, const redisReply *reply)
{
    const redisReply *ch, *payload;

    if (!reply) {
        list_remove(c, call);
        call_free(call);
        return;
    }
    if (call->done || ac != c->ac || c->dropping || c->closing)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        conn_drop(c, "PSUBSCRIBE failed: %.*s",
                  (int)(reply->len > 100 ? 100 : reply->len), reply->str);
        return;
    }
    if (call->listed) {
        if (!reply_elem_is(reply, 0, "psubscribe")) {
            conn_drop(c, "PSUBSCRIBE gave an unexpected answer");
            return;
        }
        list_remove(c, call);
        conn_ready(c);
        return;
    }
    if (!reply_elem_is(reply, 0, "pmessage") || reply->elements != 4)
        return; /* another confirmation: nothing to do */
    ch = reply->element[2];
    payload = reply->element[3];
    if (ch->type != REDIS_REPLY_STRING || payload->type != REDIS_REPLY_STRING)
        return;
    if (c->on_message)
        c->on_message(ch->str, ch->len, payload->str, payload->len, c->ud);
}

static void conn_handshake_reply(redis_conn *c, redisAsyncContext *ac,
                                 struct redis_call *call,
                                 const redisReply *reply)
{
    static const char *const names[] = {
        "", "AUTH", "SELECT", "SCRIPT LOAD", "PING", "PSUBSCRIBE"};

    if (ac != c->ac || c->dropping)
        return;
    if (!reply)
        return; /* the context is going: conn_context_gone handles it */
    if (reply->type == REDIS_REPLY_ERROR) {
        conn_drop(c, "%s failed: %.*s", names[call->hs],
                  (int)(reply->len > 100 ? 100 : reply->len), reply->str);
        return;
    }
    if (call->hs == HS_SCRIPT) {
        if (reply->type != REDIS_REPLY_STRING || reply->len != REDIS_SHA_HEX) {
            conn_drop(c, "SCRIPT LOAD gave an unexpected answer");
            return;
        }
        memcpy(c->shas[call->script], reply->str, REDIS_SHA_HEX);
        c->shas[call->script][REDIS_SHA_HEX] = '\0';
    } else if (call->hs == HS_PING) {
        conn_ready(c);
    }
}

/* Sends one internal command of the handshake; false if it failed. */
static bool conn_handshake_send(redis_conn *c, enum handshake_step hs,
                                size_t script, int argc, const char **argv)
{
    size_t lens[4];
    char *cmd = NULL;
    kv_err e = {0};
    int i, len;

    for (i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    len = redisFormatCommandArgv(&cmd, argc, argv, lens);
    if (len < 0)
        return false;
    return conn_issue(c, cmd, (size_t)len, script, false, hs, NULL, NULL, &e) ==
           0;
}

/* TCP connected, or failed to. */
static void on_connect(const redisAsyncContext *ac, int status)
{
    redis_conn *c = ac->data;

    if (status != REDIS_OK && c)
        conn_reason(c, "%s", ac->errstr[0] ? ac->errstr : "connect failed");
}

/* Connects to ip (numeric) and queues the handshake. */
static void conn_connect(redis_conn *c, const char *ip)
{
    redisAsyncContext *ac = redisAsyncConnect(ip, c->url.port);
    char db[16];
    const char *argv[3];
    bool ok = true;
    size_t i;

    if (!ac || ac->err) {
        conn_reason(c, "%s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        conn_attempt_over(c);
        return;
    }
    if (redis__uv_attach(c->loop, ac, c) != 0) {
        conn_reason(c, "cannot watch the socket");
        redisAsyncFree(ac);
        conn_attempt_over(c);
        return;
    }
    ac->data = c;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisEnableKeepAlive(&ac->c); /* notice a dead peer while idle */
    c->ac = ac;
    c->state = CONN_CONNECTING;

    if (c->url.password) {
        argv[0] = "AUTH";
        argv[1] = c->url.user ? c->url.user : c->url.password;
        argv[2] = c->url.password;
        ok = conn_handshake_send(c, HS_AUTH, 0, c->url.user ? 3 : 2, argv);
    }
    if (ok && c->url.db != 0) {
        snprintf(db, sizeof db, "%d", c->url.db);
        argv[0] = "SELECT";
        argv[1] = db;
        ok = conn_handshake_send(c, HS_SELECT, 0, 2, argv);
    }
    for (i = 0; ok && i < c->nscripts; i++) {
        argv[0] = "SCRIPT";
        argv[1] = "LOAD";
        argv[2] = c->scripts[i];
        ok = conn_handshake_send(c, HS_SCRIPT, i, 3, argv);
    }
    if (ok && c->psub) {
        argv[0] = "PSUBSCRIBE";
        argv[1] = c->psub;
        ok = conn_handshake_send(c, HS_PSUB, 0, 2, argv);
    } else if (ok) {
        argv[0] = "PING";
        ok = conn_handshake_send(c, HS_PING, 0, 1, argv);
    }
    if (!ok)
        conn_drop(c, "cannot send the connection handshake");
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct redis_resolve *rs = req->data;
    redis_conn *c = rs->conn;
    char ip[INET6_ADDRSTRLEN] = "";

    free(rs);
    c->resolve = NULL;
    if (!c->closing && status == 0) {
        /* Each failed attempt tries the next address of the name. */
        struct addrinfo *ai = res;
        size_t n = 0, i;
        for (; ai; ai = ai->ai_next)
            n++;
        for (ai = res, i = 0; n && i < c->failures % n; i++)
            ai = ai->ai_next;
        if (ai && ai->ai_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)ai->ai_addr, ip, sizeof ip);
        else if (ai && ai->ai_family == AF_INET)
            uv_ip4_name((struct sockaddr_in *)ai->ai_addr, ip, sizeof ip);
    }
    if (!c->closing) {
        if (ip[0]) {
            conn_connect(c, ip);
        } else {
            conn_reason(c, "cannot resolve %s: %s", c->url.host,
                        status ? uv_strerror(status) : "no address");
            conn_attempt_over(c);
        }
    }
    uv_freeaddrinfo(res);
    redis__conn_unref(c);
}

/* Starts one connection attempt: a lookup first unless the host is an
 * address. */
static void conn_attempt(redis_conn *c)
{
    struct addrinfo hints;
    struct redis_resolve *rs;
    int rc;

    c->reason_set = false;
    if (c->numeric_host) {
        c->state = CONN_CONNECTING;
        conn_connect(c, c->url.host);
        return;
    }
    rs = calloc(1, sizeof *rs);
    if (!rs) {
        conn_reason(c, "out of memory");
        conn_attempt_over(c);
        return;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    rs->conn = c;
    rs->req.data = rs;
    c->state = CONN_RESOLVING;
    rc = uv_getaddrinfo(c->loop, &rs->req, on_resolved, c->url.host, NULL,
                        &hints);
    if (rc != 0) {
        free(rs);
        conn_reason(c, "cannot resolve %s: %s", c->url.host, uv_strerror(rc));
        conn_attempt_over(c);
        return;
    }
    c->resolve = rs;
    redis__conn_ref(c);
}

static void on_retry_timer(uv_timer_t *t)
{
    redis_conn *c = t->data;

    if (!c->closing && c->state == CONN_DOWN)
        conn_attempt(c);
}

/* ------------------------------------------------------------------ */
/* Public entry points                                                  */

int redis_conn_open(uv_loop_t *loop, const redis_conn_conf *conf,
                    redis_conn **out, kv_err *err)
{
    redis_conn *c = calloc(1, sizeof *c);
    unsigned char addr6[16];
    int rc;

    *out = NULL;
    if (!c)
        return kv_err_set(err, KV_ENOMEM, "out of memory");
    rc = redis__url_parse(conf->url, &c->url, err);
    if (rc != 0) {
        free(c);
        return rc;
    }
    c->loop = loop;
    c->label = strdup(conf->label ? conf->label : "redis");
    c->shas = calloc(conf->nscripts ? conf->nscripts : 1, sizeof *c->shas);
    c->psub = conf->psubscribe ? strdup(conf->psubscribe) : NULL;
    if (!c->label || !c->shas || (conf->psubscribe && !c->psub)) {
        redis__url_clear(&c->url);
        free(c->label);
        free(c->shas);
        free(c->psub);
        free(c);
        return kv_err_set(err, KV_ENOMEM, "out of memory");
    }
    redis__url_addr(&c->url, c->addr, sizeof c->addr);
    c->numeric_host = uv_inet_pton(AF_INET, c->url.host, addr6) == 0 ||
                      uv_inet_pton(AF_INET6, c->url.host, addr6) == 0;
    c->op_timeout_ms =
        conf->op_timeout_ms ? conf->op_timeout_ms : KV_OP_TIMEOUT_MS_DEFAULT;
    c->scripts = conf->scripts;
    c->nscripts = conf->nscripts;
    c->on_message = conf->on_message;
    c->on_state = conf->on_state;
    c->ud = conf->ud;
    c->backoff_ms = REDIS_BACKOFF_MIN_MS;
    c->starting = true;
    c->refs = 3; /* the owner and the two timers */
    uv_timer_init(loop, &c->op_timer);
    uv_timer_init(loop, &c->retry_timer);
    c->op_timer.data = c->retry_timer.data = c;
    uv_unref((uv_handle_t *)&c->op_timer);
    uv_unref((uv_handle_t *)&c->retry_timer);
    conn_attempt(c);
    *out = c;
    return 0;
}

void redis_conn_close(redis_conn *c)
{
    kv_err e = {0};

    if (!c)
        return;
    c->closing = true;
    conn_err_down(c, &e);
    while (c->head)
        call_fail(c, c->head, &e);
    uv_timer_stop(&c->op_timer);
    uv_timer_stop(&c->retry_timer);
    uv_close((uv_handle_t *)&c->op_timer, on_timer_closed);
    uv_close((uv_handle_t *)&c->retry_timer, on_timer_closed);
    if (c->resolve)
        uv_cancel((uv_req_t *)&c->resolve->req);
    if (c->ac && !c->dropping) {
        c->dropping = true;
        redisAsyncFree(c->ac);
    }
    redis__conn_unref(c);
}

bool redis_conn_ready(const redis_conn *c)
{
    return c->state == CONN_READY && !c->closing;
}

const char *redis_conn_addr(const redis_conn *c)
{
    return c->addr;
}

uint64_t redis_conn_reconnects(const redis_conn *c)
{
    return c->reconnects;
}
