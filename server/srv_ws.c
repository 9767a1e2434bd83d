/*
 * srv_ws.c - the WebSocket feed: handshake, framing (wslay), the JSON
 * protocol of SPEC 7, and the slow-consumer policy.
 *
 * Each connection is a pub/sub subscriber. Every frame for the client
 * (replies and messages alike) goes into the connection's bounded ps_queue;
 * frames move from there to the socket only while the socket keeps up
 * (less than WS_WRITE_WATERMARK bytes waiting in the kernel's stead). When
 * the queue is full, the oldest frames are dropped and the client is told
 * with {"type":"dropped","count":N} before the next frame it gets. A
 * connection that is still dropping ws_stall_ms after it started is closed
 * with 1008. So a stalled client costs at most queue_bytes plus the
 * watermark, and never slows the others: fan-out only copies into queues.
 *
 * A message going to many subscribers is encoded to JSON once (the hub
 * keeps the last encoding, keyed by origin node and sequence number).
 *
 * Runs on: the event loop thread.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <uv.h>
#include <wslay/wslay.h>

#include "kvstore/kvstore.h"
#include "server/srv_log.h"
#include "server/srv_ws.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_WRITE_WATERMARK                                                     \
    (64 * 1024)                  /* bytes waiting in uv before we hold         \
                                  */
#define WS_CHECK_INTERVAL_MS 250 /* stall and close-deadline checks */
#define WS_CLOSE_GRACE_MS 1000   /* time for a close frame to leave */
#define WS_HARD_FRAME_FACTOR 4   /* frames past limit*4 fail the conn */
#define WS_CLOSE_POLICY 1008
#define WS_CLOSE_GOING_AWAY 1001
#define WS_CLOSE_PROTOCOL_ERROR 1002
#define WS_CLOSE_HEADER_BYTES 2 /* FIN, opcode, unmasked length < 126 */
#define WS_CLOSE_STATUS_BYTES 2 /* the code before a close reason */

typedef struct ws_conn ws_conn;

struct srv_ws_hub {
    uv_loop_t *loop;
    ps_bus *bus;
    srv_ws_limits limits;
    srv_ws_stats stats;
    ws_conn *conns;
    uv_timer_t check_timer;
    srv_auth *const *auth;      /* NULL or *auth NULL: no tokens */
    srv_auth_stats *auth_stats; /* with auth */
    bool freeing;               /* srv_ws_hub_free was called */
    bool timer_closed;
    /* the last message encoded, reused for every subscriber of it */
    char cache_node[PS_NODE_ID_MAX + 1];
    uint64_t cache_seq;
    char *cache_json;
    size_t cache_len;
};

struct ws_conn {
    srv_ws_hub *hub;
    srv_conn *conn;
    ws_conn *prev, *next;
    wslay_event_context_ptr ws;
    ps_sub *sub;
    ps_queue *queue;
    uint64_t dropped_pending; /* to report in the next dropped frame */
    uint64_t stalled_since;   /* ms; 0 = not dropping */
    uint64_t close_deadline;  /* ms; 0 = not closing */
    const char *in;           /* bytes being fed to wslay */
    size_t in_len;
    bool authed; /* a token was accepted, or auth is off */
    unsigned char digest[SRV_AUTH_DIGEST_BYTES]; /* of that token */
    uint64_t auth_deadline;                      /* ms; 0 = authenticated */
    unsigned auth_failures; /* frames refused before authenticating */
};

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static void ws_pump(ws_conn *w);

/* ------------------------------------------------------------------ */
/* Outbound                                                             */

/* Queues one text frame for the client, dropping the oldest when full. */
static void ws_enqueue(ws_conn *w, const char *json, size_t len)
{
    uint64_t dropped;

    if (w->close_deadline)
        return;
    if (ps_queue_push(w->queue, json, len) != 0) {
        w->dropped_pending++; /* larger than the whole queue, or no memory */
        w->hub->stats.dropped++;
    }
    dropped = ps_queue_take_dropped(w->queue);
    if (dropped) {
        w->dropped_pending += dropped;
        w->hub->stats.dropped += dropped;
    }
    if (w->dropped_pending && !w->stalled_since)
        w->stalled_since = now_ms();
    ws_pump(w);
}

/* Sends a JSON object (consumed) as a frame, with the request's id. */
static void ws_reply(ws_conn *w, json_t *obj, json_t *id)
{
    char *s;

    if (!obj)
        return;
    if (id)
        json_object_set(obj, "id", id);
    s = json_dumps(obj, JSON_COMPACT);
    if (s)
        ws_enqueue(w, s, strlen(s));
    free(s);
    json_decref(obj);
}

static void ws_error(ws_conn *w, json_t *id, const char *code, const char *msg)
{
    ws_reply(w,
             json_pack("{s:s, s:s, s:s}", "type", "error", "error", code,
                       "message", msg),
             id);
}

/* ------------------------------------------------------------------ */
/* Tokens                                                               */

static srv_auth *hub_auth(const srv_ws_hub *hub)
{
    return hub->auth ? *hub->auth : NULL;
}

/* Whether the connection's token may do action on name (always when
 * tokens are off). The token is looked up again by digest, so a reload
 * that removed it takes effect at once. */
static bool ws_allows(ws_conn *w, enum srv_auth_action action, const char *name,
                      size_t len)
{
    srv_auth *a = hub_auth(w->hub);

    if (!a)
        return true;
    return srv_token_allows(srv_auth_find_digest(a, w->digest), action, name,
                            len);
}

/* A `forbidden` error frame naming the topic or pattern refused. */
static void ws_forbidden(ws_conn *w, json_t *id, enum srv_auth_action action,
                         const char *topic, size_t len)
{
    srv_auth *a = hub_auth(w->hub);
    const srv_token *t = srv_auth_find_digest(a, w->digest);
    char msg[160], shown[SRV_AUTH_SHOWN_MAX + 1];

    w->hub->auth_stats->failures[SRV_AUTH_FORBIDDEN]++;
    snprintf(msg, sizeof msg, "token %s has no %s permission on this topic",
             t ? srv_token_name(t) : "(revoked)", srv_auth_action_name(action));
    srv_auth_shown(topic, len, shown);
    srv_info("auth: ws token %s denied %s on %s",
             t ? srv_token_name(t) : "(revoked)", srv_auth_action_name(action),
             shown);
    ws_reply(w,
             json_pack("{s:s, s:s, s:s, s:s#}", "type", "error", "error",
                       "forbidden", "message", msg, "topic", topic, (int)len),
             id);
}

static void ws_close(ws_conn *w, uint16_t code, const char *reason);

/* Refuses a frame of a connection not yet authenticated; closes the
 * connection after SRV_WS_AUTH_MAX_FAILURES refusals. */
static void ws_unauthorized(ws_conn *w, json_t *id, enum srv_auth_result r,
                            const char *msg)
{
    w->hub->auth_stats->failures[r]++;
    ws_error(w, id, "unauthorized", msg);
    if (++w->auth_failures >= SRV_WS_AUTH_MAX_FAILURES) {
        srv_info("auth: ws connection closed after %u refused frames",
                 w->auth_failures);
        ws_close(w, WS_CLOSE_POLICY, "authentication failed");
    }
}

/* Moves queued frames to the socket while it keeps up. */
static void ws_pump(ws_conn *w)
{
    struct wslay_event_msg msg = {.opcode = WSLAY_TEXT_FRAME};
    const void *frame;
    size_t len;
    char note[64];

    while (srv_conn_queued_bytes(w->conn) < WS_WRITE_WATERMARK) {
        if (w->dropped_pending) {
            len = (size_t)snprintf(note, sizeof note,
                                   "{\"type\":\"dropped\",\"count\":%llu}",
                                   (unsigned long long)w->dropped_pending);
            msg.msg = (const uint8_t *)note;
            msg.msg_length = len;
            w->dropped_pending = 0;
        } else if (ps_queue_peek(w->queue, &frame, &len)) {
            msg.msg = frame;
            msg.msg_length = len;
        } else {
            break;
        }
        if (wslay_event_queue_msg(w->ws, &msg) != 0)
            break; /* closing: nothing more goes out */
        if (msg.msg != (const uint8_t *)note)
            ps_queue_pop(w->queue);
        w->hub->stats.frames_out++;
        if (wslay_event_send(w->ws) != 0)
            break;
    }
    if (wslay_event_want_write(w->ws))
        wslay_event_send(w->ws);
    if (!ps_queue_count(w->queue) && !w->dropped_pending)
        w->stalled_since = 0;
}

static ssize_t on_ws_send(wslay_event_context_ptr ctx, const uint8_t *data,
                          size_t len, int flags, void *ud)
{
    ws_conn *w = ud;

    (void)flags;
    if (srv_conn_send(w->conn, data, len) != 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static ssize_t on_ws_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                          int flags, void *ud)
{
    ws_conn *w = ud;

    (void)flags;
    if (w->in_len == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (len > w->in_len)
        len = w->in_len;
    memcpy(buf, w->in, len);
    w->in += len;
    w->in_len -= len;
    return (ssize_t)len;
}

/* Starts closing with code; the socket goes after WS_CLOSE_GRACE_MS at
 * the latest, even when the client reads nothing. */
static void ws_close(ws_conn *w, uint16_t code, const char *reason)
{
    if (w->close_deadline)
        return;
    w->close_deadline = now_ms() + WS_CLOSE_GRACE_MS;
    wslay_event_queue_close(w->ws, code, (const uint8_t *)reason,
                            strlen(reason));
    wslay_event_send(w->ws);
    srv_conn_close_after_write(w->conn);
}

/*
 * Closes with 1002 once wslay_event_recv() has failed. When the error is in
 * a frame header (a control frame longer than 125 bytes or fragmented, a
 * length not in its shortest form: 0xff 0xff is one), wslay has queued a
 * close frame with no status code before returning, and ws_close() could
 * then queue nothing. wslay writes only in wslay_event_send(), so that
 * frame has not left: wslay's output is stopped instead and the close
 * frame with 1002 is written here. Every frame wslay wrote before is
 * whole, since on_ws_send() takes all the bytes it is given.
 */
static void ws_protocol_error(ws_conn *w)
{
    static const char reason[] = "protocol error";
    uint8_t frame[WS_CLOSE_HEADER_BYTES + WS_CLOSE_STATUS_BYTES +
                  sizeof reason - 1];

    if (w->close_deadline || wslay_event_get_close_sent(w->ws))
        return;
    wslay_event_shutdown_write(w->ws);
    frame[0] = 0x80 | WSLAY_CONNECTION_CLOSE; /* FIN; a server never masks */
    frame[1] = WS_CLOSE_STATUS_BYTES + sizeof reason - 1;
    frame[2] = WS_CLOSE_PROTOCOL_ERROR >> 8;
    frame[3] = WS_CLOSE_PROTOCOL_ERROR & 0xff;
    memcpy(frame + WS_CLOSE_HEADER_BYTES + WS_CLOSE_STATUS_BYTES, reason,
           sizeof reason - 1);
    w->close_deadline = now_ms() + WS_CLOSE_GRACE_MS;
    srv_conn_send(w->conn, frame, sizeof frame);
    srv_conn_close_after_write(w->conn);
}

/* ------------------------------------------------------------------ */
/* Pub/sub deliveries                                                   */

/* The JSON message frame for m, from the hub's one-entry cache. */
static const char *encode_message(srv_ws_hub *hub, const ps_message *m,
                                  size_t *len)
{
    json_t *o;
    json_t *data;
    char *b64 = NULL;
    const char *data_key = "data";

    if (hub->cache_json && hub->cache_seq == m->seq &&
        strcmp(hub->cache_node, m->node) == 0) {
        *len = hub->cache_len;
        return hub->cache_json;
    }
    free(hub->cache_json);
    hub->cache_json = NULL;
    if (kv_utf8_valid(m->data, m->len)) {
        data = json_stringn(m->data, m->len);
    } else {
        b64 = malloc(4 * ((m->len + 2) / 3) + 1);
        if (!b64)
            return NULL;
        EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)m->data,
                        (int)m->len);
        data = json_string(b64);
        data_key = "data_b64";
        free(b64);
    }
    o = json_pack("{s:s, s:s#, s:o, s:s, s:I, s:I}", "type", "message", "topic",
                  m->topic, (int)m->topic_len, data_key, data, "node", m->node,
                  "seq", (json_int_t)m->seq, "ts", (json_int_t)m->ts_ms);
    hub->cache_json = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!hub->cache_json)
        return NULL;
    hub->cache_len = strlen(hub->cache_json);
    hub->cache_seq = m->seq;
    snprintf(hub->cache_node, sizeof hub->cache_node, "%s", m->node);
    *len = hub->cache_len;
    return hub->cache_json;
}

static void on_sub_message(ps_sub *sub, const ps_message *m, void *ud)
{
    ws_conn *w = ud;
    size_t len;
    const char *frame = encode_message(w->hub, m, &len);

    (void)sub;
    if (frame)
        ws_enqueue(w, frame, len);
}

static void on_sub_reset(ps_sub *sub, const char *pattern, const char *reason,
                         void *ud)
{
    (void)sub;
    ws_reply(ud,
             json_pack("{s:s, s:s, s:s}", "type", "reset", "topic", pattern,
                       "reason", reason),
             NULL);
}

static const ps_sub_cbs sub_cbs = {
    .message = on_sub_message,
    .reset = on_sub_reset,
};

/* ------------------------------------------------------------------ */
/* Client frames                                                        */

/*
 * Reads "topics": [..] of a (un)subscribe frame; every entry must be a
 * valid pattern before any is applied. Answers the error itself.
 */
static json_t *frame_topics(ws_conn *w, json_t *frame, json_t *id)
{
    json_t *topics = json_object_get(frame, "topics");
    kv_err err = {0};
    size_t i;
    json_t *t;

    if (!json_is_array(topics) || json_array_size(topics) == 0) {
        ws_error(w, id, "bad_request",
                 "\"topics\" must be a non-empty array of strings");
        return NULL;
    }
    json_array_foreach(topics, i, t)
    {
        if (!json_is_string(t) ||
            ps_check_pattern(json_string_value(t), json_string_length(t),
                             &err) != 0) {
            ws_error(w, id, "bad_topic",
                     json_is_string(t) ? err.msg
                                       : "every topic must be a string");
            return NULL;
        }
    }
    return topics;
}

static void op_subscribe(ws_conn *w, json_t *frame, json_t *id)
{
    json_t *topics = frame_topics(w, frame, id), *t;
    kv_err err = {0};
    size_t i;

    if (!topics)
        return;
    json_array_foreach(topics, i, t)
    {
        if (!ws_allows(w, SRV_AUTH_TOPIC_SUB, json_string_value(t),
                       json_string_length(t))) {
            ws_forbidden(w, id, SRV_AUTH_TOPIC_SUB, json_string_value(t),
                         json_string_length(t));
            return;
        }
    }
    if (ps_sub_pattern_count(w->sub) + json_array_size(topics) >
        w->hub->limits.max_patterns) {
        ws_error(w, id, "limit", "too many subscriptions on this connection");
        return;
    }
    json_array_foreach(topics, i, t)
    {
        if (ps_subscribe(w->sub, json_string_value(t), json_string_length(t),
                         &err) != 0) {
            ws_error(w, id, kv_errcode(err.code), err.msg);
            return;
        }
    }
    ws_reply(w, json_pack("{s:s, s:O}", "type", "subscribed", "topics", topics),
             id);
}

static void op_unsubscribe(ws_conn *w, json_t *frame, json_t *id)
{
    json_t *topics = frame_topics(w, frame, id), *t;
    size_t i;

    if (!topics)
        return;
    json_array_foreach(topics, i, t)
        ps_unsubscribe(w->sub, json_string_value(t), json_string_length(t));
    ws_reply(w,
             json_pack("{s:s, s:O}", "type", "unsubscribed", "topics", topics),
             id);
}

/* Decodes standard base64 (with padding) into a new buffer. */
static unsigned char *base64_decode(const char *in, size_t len, size_t *out_len)
{
    unsigned char *out;
    size_t i, pad = 0;
    int n;

    if (len % 4 != 0)
        return NULL;
    /* EVP_DecodeBlock is lenient about '=' inside; accept it only last */
    for (i = 0; i < len; i++) {
        if (in[i] == '=')
            pad++;
        else if (pad)
            return NULL;
    }
    if (pad > 2)
        return NULL;
    out = malloc(len / 4 * 3 + 1);
    if (!out)
        return NULL;
    n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)len);
    if (n < 0) {
        free(out);
        return NULL;
    }
    n -= (int)pad;
    *out_len = (size_t)n;
    return out;
}

static void op_publish(ws_conn *w, json_t *frame, json_t *id)
{
    json_t *topic = json_object_get(frame, "topic");
    json_t *data = json_object_get(frame, "data");
    json_t *b64 = json_object_get(frame, "data_b64");
    unsigned char *bytes = NULL;
    const void *payload;
    size_t len;
    ps_message m;
    kv_err err = {0};

    if (!json_is_string(topic)) {
        ws_error(w, id, "bad_request", "publish needs \"topic\"");
        return;
    }
    if (!ws_allows(w, SRV_AUTH_TOPIC_PUB, json_string_value(topic),
                   json_string_length(topic))) {
        ws_forbidden(w, id, SRV_AUTH_TOPIC_PUB, json_string_value(topic),
                     json_string_length(topic));
        return;
    }
    if (json_is_string(data) && !b64) {
        payload = json_string_value(data);
        len = json_string_length(data);
    } else if (json_is_string(b64) && !data) {
        bytes = base64_decode(json_string_value(b64), json_string_length(b64),
                              &len);
        if (!bytes) {
            ws_error(w, id, "bad_request", "\"data_b64\" is not base64");
            return;
        }
        payload = bytes;
    } else {
        ws_error(w, id, "bad_request",
                 "publish needs one of \"data\" (text) or \"data_b64\"");
        return;
    }
    if (len > w->hub->limits.max_payload_bytes) {
        ws_error(w, id, "too_large",
                 "the payload is larger than max_value_bytes");
        free(bytes);
        return;
    }
    if (ps_publish(w->hub->bus, json_string_value(topic),
                   json_string_length(topic), payload, len, &m, &err) != 0)
        ws_error(w, id, kv_errcode(err.code), err.msg);
    else
        ws_reply(w,
                 json_pack("{s:s, s:s#, s:I}", "type", "published", "topic",
                           m.topic, (int)m.topic_len, "seq", (json_int_t)m.seq),
                 id);
    free(bytes);
}

static void op_ping(ws_conn *w, json_t *frame, json_t *id)
{
    (void)frame;
    ws_reply(w, json_pack("{s:s}", "type", "pong"), id);
}

/*
 * {"op":"auth","token":"..."}: authenticates the connection. Answered
 * {"type":"authenticated","name":...} (no name when tokens are off), or
 * an `unauthorized` error. A connection authenticates once.
 */
static void op_auth(ws_conn *w, json_t *frame, json_t *id)
{
    json_t *token = json_object_get(frame, "token");
    srv_auth *a = hub_auth(w->hub);
    const srv_token *t;

    if (!a) {
        ws_reply(w, json_pack("{s:s}", "type", "authenticated"), id);
        return;
    }
    if (w->authed) {
        ws_error(w, id, "bad_request", "this connection is authenticated");
        return;
    }
    if (!json_is_string(token)) {
        ws_unauthorized(w, id, SRV_AUTH_MISSING,
                        "auth needs \"token\": the API token, a string");
        return;
    }
    t = srv_auth_find(a, json_string_value(token), json_string_length(token));
    if (!t) {
        srv_info("auth: ws auth frame with an invalid token refused");
        ws_unauthorized(w, id, SRV_AUTH_INVALID, "the API token is not valid");
        return;
    }
    w->authed = true;
    w->auth_deadline = 0;
    memcpy(w->digest, srv_token_digest(t), sizeof w->digest);
    ws_reply(w,
             json_pack("{s:s, s:s}", "type", "authenticated", "name",
                       srv_token_name(t)),
             id);
}

static const struct ws_op {
    const char *name;
    void (*handler)(ws_conn *w, json_t *frame, json_t *id);
    bool before_auth; /* allowed before the connection authenticated */
} ws_ops[] = {
    {"auth", op_auth, true},
    {"subscribe", op_subscribe, false},
    {"unsubscribe", op_unsubscribe, false},
    {"publish", op_publish, false},
    {"ping", op_ping, false},
};

static const char ws_auth_first[] =
    "authenticate first: send {\"op\":\"auth\",\"token\":\"...\"}";

/* One text frame from the client: a JSON object with "op". */
static void handle_frame(ws_conn *w, const char *data, size_t len)
{
    json_error_t jerr;
    json_t *frame, *id;
    const char *op;
    size_t i;

    if (len > w->hub->limits.max_frame_bytes) {
        ws_error(w, NULL, "too_large", "frame is larger than the limit");
        return;
    }
    frame = json_loadb(data, len, JSON_ALLOW_NUL, &jerr);
    if (!w->authed && !json_is_object(frame)) {
        ws_unauthorized(w, NULL, SRV_AUTH_MISSING, ws_auth_first);
        json_decref(frame);
        return;
    }
    if (!json_is_object(frame)) {
        ws_error(w, NULL, "bad_json",
                 frame ? "a frame must be a JSON object" : jerr.text);
        json_decref(frame);
        return;
    }
    id = json_object_get(frame, "id");
    op = json_string_value(json_object_get(frame, "op"));
    for (i = 0; op && i < sizeof ws_ops / sizeof ws_ops[0]; i++) {
        if (strcmp(op, ws_ops[i].name) == 0) {
            if (w->authed || ws_ops[i].before_auth)
                ws_ops[i].handler(w, frame, id);
            else
                ws_unauthorized(w, id, SRV_AUTH_MISSING, ws_auth_first);
            json_decref(frame);
            return;
        }
    }
    if (!w->authed)
        ws_unauthorized(w, id, SRV_AUTH_MISSING, ws_auth_first);
    else
        ws_error(w, id, "bad_op",
                 "\"op\" must be auth, subscribe, unsubscribe, publish or "
                 "ping");
    json_decref(frame);
}

static void on_ws_msg(wslay_event_context_ptr ctx,
                      const struct wslay_event_on_msg_recv_arg *arg, void *ud)
{
    ws_conn *w = ud;

    (void)ctx;
    if (arg->opcode == WSLAY_TEXT_FRAME) {
        w->hub->stats.frames_in++;
        handle_frame(w, (const char *)arg->msg, arg->msg_length);
    } else if (arg->opcode == WSLAY_BINARY_FRAME) {
        w->hub->stats.frames_in++;
        if (!w->authed)
            ws_unauthorized(w, NULL, SRV_AUTH_MISSING, ws_auth_first);
        else
            ws_error(w, NULL, "bad_frame",
                     "frames are JSON text; send bytes as data_b64");
    }
}

static const struct wslay_event_callbacks ws_callbacks = {
    .recv_callback = on_ws_recv,
    .send_callback = on_ws_send,
    .on_msg_recv_callback = on_ws_msg,
};

/* ------------------------------------------------------------------ */
/* Connection lifecycle                                                 */

static void on_conn_data(void *ud, const char *data, size_t len)
{
    ws_conn *w = ud;

    w->in = data;
    w->in_len = len;
    if (wslay_event_recv(w->ws) != 0) {
        ws_protocol_error(w);
        return;
    }
    wslay_event_send(w->ws); /* pongs and the close reply wslay queued */
    /* A close from the client, or one wslay sent itself on a framing
     * error (1002): the socket goes once it is written. */
    if ((wslay_event_get_close_received(w->ws) ||
         wslay_event_get_close_sent(w->ws)) &&
        !w->close_deadline) {
        w->close_deadline = now_ms() + WS_CLOSE_GRACE_MS;
        srv_conn_close_after_write(w->conn);
    }
    ws_pump(w);
}

static void on_conn_writable(void *ud)
{
    ws_conn *w = ud;

    ws_pump(w);
}

/* Frees the hub once it was asked to and nothing refers to it. */
static void hub_maybe_free(srv_ws_hub *hub)
{
    if (hub->freeing && hub->timer_closed && !hub->conns) {
        free(hub->cache_json);
        free(hub);
    }
}

static void on_conn_close(void *ud)
{
    ws_conn *w = ud;
    srv_ws_hub *hub = w->hub;

    if (w->prev)
        w->prev->next = w->next;
    else
        hub->conns = w->next;
    if (w->next)
        w->next->prev = w->prev;
    hub->stats.connections_open--;
    ps_sub_free(w->sub);
    ps_queue_free(w->queue);
    wslay_event_context_free(w->ws);
    free(w);
    hub_maybe_free(hub);
}

static const srv_proto ws_proto = {
    .on_data = on_conn_data,
    .on_writable = on_conn_writable,
    .on_close = on_conn_close,
};

/* Closes connections past their close deadline or stalled too long. */
static void on_check(uv_timer_t *t)
{
    srv_ws_hub *hub = t->data;
    uint64_t now = now_ms();
    ws_conn *w, *next;

    for (w = hub->conns; w; w = next) {
        next = w->next;
        if (w->close_deadline && now > w->close_deadline) {
            srv_conn_abort(w->conn);
        } else if (w->auth_deadline && !w->close_deadline &&
                   now > w->auth_deadline) {
            srv_info("auth: ws connection closed: no auth frame within %d ms",
                     SRV_WS_AUTH_TIMEOUT_MS);
            w->auth_deadline = 0;
            ws_close(w, WS_CLOSE_POLICY, "authentication timeout");
        } else if (w->stalled_since && !w->close_deadline &&
                   now - w->stalled_since > hub->limits.stall_ms) {
            hub->stats.closed_slow++;
            srv_warn("ws: closing a consumer that stayed full for %u ms",
                     hub->limits.stall_ms);
            ws_close(w, WS_CLOSE_POLICY, "slow consumer");
        }
    }
}

void srv_ws_accept(srv_ws_hub *hub, srv_conn *c)
{
    const char *upgrade = srv_req_header(c, SRV_HDR_UPGRADE);
    const char *key = srv_req_header(c, SRV_HDR_SEC_WS_KEY);
    const char *version = srv_req_header(c, SRV_HDR_SEC_WS_VERSION);
    unsigned char digest[SHA_DIGEST_LENGTH];
    char accept[64], headers[160];
    char keyed[128];
    ws_conn *w;

    if (!upgrade || strcasecmp(upgrade, "websocket") != 0 || !key) {
        srv_respond_error(c, 400, "bad_request",
                          "/v1/ws is a WebSocket endpoint: send an upgrade "
                          "request");
        return;
    }
    if (!version || strcmp(version, "13") != 0) {
        srv_respond_error_with(c, 426, "Sec-WebSocket-Version: 13\r\n",
                               "upgrade_required",
                               "only WebSocket version 13 is supported");
        return;
    }
    if (strlen(key) + sizeof WS_GUID > sizeof keyed) {
        srv_respond_error(c, 400, "bad_request", "bad Sec-WebSocket-Key");
        return;
    }
    w = calloc(1, sizeof *w);
    if (!w || wslay_event_context_server_init(&w->ws, &ws_callbacks, w) ||
        !(w->queue = ps_queue_new(hub->limits.queue_bytes)) ||
        !(w->sub =
              ps_sub_new(hub->bus, &sub_cbs, w, hub->limits.max_patterns))) {
        if (w) {
            ps_queue_free(w->queue);
            if (w->ws)
                wslay_event_context_free(w->ws);
            free(w);
        }
        srv_respond_error(c, 503, "no_memory", "out of memory");
        return;
    }
    wslay_event_config_set_max_recv_msg_length(
        w->ws, (uint64_t)hub->limits.max_frame_bytes * WS_HARD_FRAME_FACTOR);
    snprintf(keyed, sizeof keyed, "%s%s", key, WS_GUID);
    SHA1((const unsigned char *)keyed, strlen(keyed), digest);
    EVP_EncodeBlock((unsigned char *)accept, digest, SHA_DIGEST_LENGTH);
    snprintf(headers, sizeof headers,
             "Upgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Accept: %s\r\n",
             accept);
    srv_respond(c, 101, NULL, headers, NULL, 0);

    w->hub = hub;
    w->conn = c;
    w->authed = !hub_auth(hub);
    if (!w->authed) {
        /* the route's guard let a header through only when it is valid */
        const char *tok;
        size_t tlen;
        const srv_token *t =
            srv_auth_bearer(srv_req_header(c, SRV_HDR_AUTHORIZATION), &tok,
                            &tlen)
                ? srv_auth_find(hub_auth(hub), tok, tlen)
                : NULL;
        if (t) {
            w->authed = true;
            memcpy(w->digest, srv_token_digest(t), sizeof w->digest);
        } else {
            w->auth_deadline = now_ms() + SRV_WS_AUTH_TIMEOUT_MS;
        }
    }
    w->next = hub->conns;
    if (hub->conns)
        hub->conns->prev = w;
    hub->conns = w;
    hub->stats.connections_open++;
    hub->stats.connections_total++;
    srv_conn_upgrade(c, &ws_proto, w);
}

/* ------------------------------------------------------------------ */
/* The hub                                                              */

srv_ws_hub *srv_ws_hub_new(uv_loop_t *loop, ps_bus *bus,
                           const srv_ws_limits *limits)
{
    srv_ws_hub *hub = calloc(1, sizeof *hub);

    if (!hub)
        return NULL;
    hub->loop = loop;
    hub->bus = bus;
    hub->limits = *limits;
    uv_timer_init(loop, &hub->check_timer);
    hub->check_timer.data = hub;
    uv_timer_start(&hub->check_timer, on_check, WS_CHECK_INTERVAL_MS,
                   WS_CHECK_INTERVAL_MS);
    uv_unref((uv_handle_t *)&hub->check_timer);
    return hub;
}

static void on_hub_timer_closed(uv_handle_t *h)
{
    srv_ws_hub *hub = h->data;

    hub->timer_closed = true;
    hub_maybe_free(hub);
}

void srv_ws_hub_free(srv_ws_hub *hub)
{
    ws_conn *w, *next;

    if (!hub)
        return;
    hub->freeing = true;
    for (w = hub->conns; w; w = next) {
        next = w->next;
        srv_conn_abort(w->conn); /* on_conn_close unlinks and frees w */
    }
    uv_close((uv_handle_t *)&hub->check_timer, on_hub_timer_closed);
}

void srv_ws_hub_shutdown(srv_ws_hub *hub)
{
    ws_conn *w;

    for (w = hub->conns; w; w = w->next)
        ws_close(w, WS_CLOSE_GOING_AWAY, "server shutting down");
}

const srv_ws_stats *srv_ws_hub_stats(const srv_ws_hub *hub)
{
    return &hub->stats;
}

void srv_ws_hub_set_auth(srv_ws_hub *hub, srv_auth *const *auth,
                         srv_auth_stats *stats)
{
    hub->auth = auth;
    hub->auth_stats = stats;
}

void srv_ws_hub_auth_changed(srv_ws_hub *hub)
{
    srv_auth *a = hub_auth(hub);
    ws_conn *w;

    for (w = hub->conns; w; w = w->next)
        if (a && w->authed && !srv_auth_find_digest(a, w->digest))
            ws_close(w, WS_CLOSE_POLICY, "token revoked");
}
