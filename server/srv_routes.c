/*
 * srv_routes.c - the HTTP routes of kvbusd and their handlers (SPEC 6).
 *
 * The route table at the bottom is the whole API surface. Each KV handler
 * decodes its store and key, turns the request into one kv_req and calls
 * kv_store_call(); the completion callback writes the answer, either at once
 * (memory) or later (network backends). The connection is the callback's
 * user data: it lives until the answer is given (srv_conn.c).
 *
 * Runs on: the event loop thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "server/dashboard/srv_dashboard.h"
#include "server/srv_app.h"
#include "server/srv_log.h"

#define KEY_STACK_BYTES 2048 /* decoded keys up to this skip malloc */
#define QUERY_VALUE_MAX 4096 /* longest query parameter value read */

static kv_registry *registry_of(srv_conn *c)
{
    return ((srv_app *)srv_conn_app(c))->reg;
}

/* Sends a JSON document and frees it. */
static void respond_json(srv_conn *c, int status, json_t *j)
{
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;

    if (body)
        srv_respond(c, status, "application/json", NULL, body, strlen(body));
    else
        srv_respond_error(c, 503, "no_memory", "out of memory");
    free(body);
    json_decref(j);
}

/* Finds the store named by route capture 0; answers the error itself. */
static kv_store *find_store(srv_conn *c)
{
    kv_bytes raw = srv_req_cap(c, 0);
    char name[KV_STORE_NAME_MAX * 3 + 1];
    kv_store *s = NULL;
    kv_err err = {0};
    long n;
    int rc;

    if (raw.len >= sizeof name) {
        srv_respond_error(c, 400, "bad_store",
                          "store name must be 1 to %d characters",
                          KV_STORE_NAME_MAX);
        return NULL;
    }
    n = srv_pct_decode(raw, false, name);
    if (n < 0) {
        srv_respond_error(c, 400, "bad_store",
                          "store name has a bad percent-escape");
        return NULL;
    }
    rc = kv_registry_find(registry_of(c), name, (size_t)n, &s, &err);
    if (rc != 0) {
        srv_respond_kv_error(c, rc, &err);
        return NULL;
    }
    return s;
}

/*
 * Reads integer query parameter name into *out (def when absent) within
 * [min, max]. Answers 400 itself and returns false when it is malformed.
 */
static bool query_int(srv_conn *c, const char *name, int64_t def, int64_t min,
                      int64_t max, int64_t *out)
{
    char v[KV_INT_TEXT_MAX + 1];
    long n = srv_query_param(srv_req_query(c), name, v, sizeof v);

    if (n == -1) {
        *out = def;
        return true;
    }
    if (n < 0 || !srv_parse_int(v, (size_t)n, min, max, out)) {
        srv_respond_error(c, 400, "bad_request",
                          "query parameter %s must be an integer from %lld "
                          "to %lld",
                          name, (long long)min, (long long)max);
        return false;
    }
    return true;
}

/* The registry's limits (max_mget_keys, max_page_keys...). */
static const kv_limits *app_limits(srv_conn *c)
{
    const srv_app *app = srv_conn_app(c);

    return kv_registry_limits(app->reg);
}

/* Answers a call that failed before it started (no callback follows). */
static void call_or_fail(srv_conn *c, kv_store *s, const kv_req *req,
                         kv_done_cb done)
{
    kv_err err = {0};
    int rc = kv_store_call(s, req, done, c, &err);

    if (rc != 0)
        srv_respond_kv_error(c, rc, &err);
}

/* ------------------------------------------------------------------ */
/* /v1/kv/{store}/{key}                                                 */

static void etag_header(kv_bytes value, char *out, size_t cap)
{
    char etag[KV_ETAG_HEX + 1];

    kv_etag(value, etag);
    snprintf(out, cap, "ETag: \"%s\"\r\n", etag);
}

static void get_done(int status, const kv_reply *rep, const kv_err *err,
                     void *ud)
{
    srv_conn *c = ud;
    char headers[96];
    int n;

    if (status != 0) {
        srv_respond_kv_error(c, status, err);
        return;
    }
    if (!rep->found) {
        srv_respond_error(c, 404, "not_found", "no such key");
        return;
    }
    etag_header(rep->value, headers, sizeof headers);
    if (rep->ttl_left_s > 0) {
        n = (int)strlen(headers);
        snprintf(headers + n, sizeof headers - (size_t)n,
                 "X-Kvbus-TTL: %lld\r\n", (long long)rep->ttl_left_s);
    }
    srv_respond(c, 200, "application/octet-stream", headers, rep->value.ptr,
                rep->value.len);
}

/* Answers a successful write: 204 with the ETag of what was written. */
static void write_done(int status, const kv_reply *rep, const kv_err *err,
                       void *ud)
{
    srv_conn *c = ud;
    kv_bytes body = srv_req_body(c);
    char headers[64];

    if (status != 0) {
        srv_respond_kv_error(c, status, err);
        return;
    }
    if (rep->op == KV_OP_CAS && !rep->found) {
        srv_respond_error(c, 412, "precondition_failed",
                          "the current value does not match the condition");
        return;
    }
    etag_header(body, headers, sizeof headers);
    srv_respond(c, 204, NULL, headers, NULL, 0);
}

/* DELETE: 204 when something was deleted, 404 or 412 when not. */
static void delete_done(int status, const kv_reply *rep, const kv_err *err,
                        void *ud)
{
    srv_conn *c = ud;

    if (status != 0)
        srv_respond_kv_error(c, status, err);
    else if (rep->found)
        srv_respond(c, 204, NULL, NULL, NULL, 0);
    else if (rep->op == KV_OP_CAS)
        srv_respond_error(c, 412, "precondition_failed",
                          "the current value does not match the condition");
    else
        srv_respond_error(c, 404, "not_found", "no such key");
}

static void ttl_done(int status, const kv_reply *rep, const kv_err *err,
                     void *ud)
{
    srv_conn *c = ud;

    if (status != 0)
        srv_respond_kv_error(c, status, err);
    else if (rep->found)
        srv_respond(c, 204, NULL, NULL, NULL, 0);
    else
        srv_respond_error(c, 404, "not_found", "no such key");
}

static void incr_done(int status, const kv_reply *rep, const kv_err *err,
                      void *ud)
{
    srv_conn *c = ud;
    char num[KV_INT_TEXT_MAX + 1];
    size_t n;

    if (status != 0) {
        srv_respond_kv_error(c, status, err);
        return;
    }
    n = kv_format_int64(rep->number, num);
    srv_respond(c, 200, "text/plain", NULL, num, n);
}

/*
 * Reads If-Match / If-None-Match into req as a CAS condition. Returns false
 * after answering 400 when a header is malformed. Accepted forms:
 * If-None-Match: * and If-Match: "<16 hex digits>".
 */
static bool read_condition(srv_conn *c, kv_req *req, bool *conditional)
{
    const char *im = srv_req_header(c, SRV_HDR_IF_MATCH);
    const char *inm = srv_req_header(c, SRV_HDR_IF_NONE_MATCH);
    size_t len;

    *conditional = im || inm;
    if (im && inm) {
        srv_respond_error(c, 400, "bad_request",
                          "send If-Match or If-None-Match, not both");
        return false;
    }
    if (inm) {
        if (strcmp(inm, "*") != 0 || srv_req_method(c) != SRV_PUT) {
            srv_respond_error(c, 400, "bad_request",
                              "only If-None-Match: * on PUT is supported");
            return false;
        }
        req->has_expected = false;
        return true;
    }
    if (im) {
        len = strlen(im);
        if (len != KV_ETAG_HEX + 2 || im[0] != '"' || im[len - 1] != '"') {
            srv_respond_error(c, 400, "bad_request",
                              "If-Match takes one quoted ETag, as GET "
                              "returns it");
            return false;
        }
        req->has_expected = true;
        req->expected_is_etag = true;
        req->expected = (kv_bytes){im + 1, KV_ETAG_HEX};
    }
    return true;
}

static void handle_key_post(srv_conn *c, kv_store *s, kv_req *req)
{
    char op[16];
    long n = srv_query_param(srv_req_query(c), "op", op, sizeof op - 1);

    if (n >= 0)
        op[n] = '\0';
    if (n >= 0 && strcmp(op, "ttl") == 0) {
        req->op = KV_OP_SET_TTL;
        if (srv_query_param(srv_req_query(c), "ttl", op, 0) == -1) {
            srv_respond_error(c, 400, "bad_request", "op=ttl needs ttl=N");
            return;
        }
        if (query_int(c, "ttl", 0, 0, KV_MAX_TTL_S, &req->ttl_s))
            call_or_fail(c, s, req, ttl_done);
    } else if (n >= 0 && strcmp(op, "incr") == 0) {
        req->op = KV_OP_INCR;
        if (query_int(c, "delta", 1, INT64_MIN, INT64_MAX, &req->delta))
            call_or_fail(c, s, req, incr_done);
    } else {
        srv_respond_error(c, 400, "bad_request",
                          "POST on a key takes op=ttl or op=incr");
    }
}

/* Every method on /v1/kv/{store}/{key}. */
static void handle_key(srv_conn *c)
{
    kv_bytes raw = srv_req_cap(c, 1);
    char stack[KEY_STACK_BYTES], *key = stack;
    kv_req req = {0};
    bool conditional;
    kv_store *s;
    long n;

    if (!(s = find_store(c)))
        return;
    if (raw.len > sizeof stack && !(key = malloc(raw.len))) {
        srv_respond_error(c, 503, "no_memory", "out of memory");
        return;
    }
    n = srv_pct_decode(raw, false, key);
    if (n < 0) {
        srv_respond_error(c, 400, "bad_key", "key has a bad percent-escape");
        goto out;
    }
    req.key = (kv_bytes){key, (size_t)n};
    switch (srv_req_method(c)) {
    case SRV_GET:
    case SRV_HEAD:
        req.op = KV_OP_GET;
        call_or_fail(c, s, &req, get_done);
        break;
    case SRV_PUT:
        if (!query_int(c, "ttl", 0, 0, KV_MAX_TTL_S, &req.ttl_s) ||
            !read_condition(c, &req, &conditional))
            break;
        req.op = conditional ? KV_OP_CAS : KV_OP_PUT;
        req.value = srv_req_body(c);
        req.has_value = true;
        call_or_fail(c, s, &req, write_done);
        break;
    case SRV_DELETE:
        if (!read_condition(c, &req, &conditional))
            break;
        req.op = conditional ? KV_OP_CAS : KV_OP_DEL;
        call_or_fail(c, s, &req, delete_done);
        break;
    case SRV_POST:
        handle_key_post(c, s, &req);
        break;
    }
out:
    if (key != stack)
        free(key);
}

/* ------------------------------------------------------------------ */
/* /v1/kv/{store}                                                       */

static void keys_done(int status, const kv_reply *rep, const kv_err *err,
                      void *ud)
{
    srv_conn *c = ud;
    json_t *j, *arr;
    size_t i;

    if (status != 0) {
        srv_respond_kv_error(c, status, err);
        return;
    }
    j = json_object();
    arr = json_array();
    for (i = 0; j && arr && i < rep->nkeys; i++)
        json_array_append_new(arr,
                              json_stringn(rep->keys[i].ptr, rep->keys[i].len));
    json_object_set_new(j, "keys", arr);
    if (rep->cursor.len)
        json_object_set_new(j, "cursor",
                            json_stringn(rep->cursor.ptr, rep->cursor.len));
    respond_json(c, 200, j);
}

/* Base64 of bytes as a new JSON string (EVP_EncodeBlock, no newlines). */
static json_t *base64_string(kv_bytes v)
{
    size_t cap = 4 * ((v.len + 2) / 3) + 1;
    unsigned char *out = malloc(cap);
    json_t *s;
    int n;

    if (!out)
        return NULL;
    n = EVP_EncodeBlock(out, (const unsigned char *)v.ptr, (int)v.len);
    s = json_stringn((const char *)out, (size_t)n);
    free(out);
    return s;
}

static void mget_done(int status, const kv_reply *rep, const kv_err *err,
                      void *ud)
{
    srv_conn *c = ud;
    json_t *j, *values;
    size_t i, nkeys;
    json_t *doc, *keys;

    if (status != 0) {
        srv_respond_kv_error(c, status, err);
        return;
    }
    /* the request body still holds the keys, in the order asked */
    doc = json_loadb(srv_req_body(c).ptr, srv_req_body(c).len, 0, NULL);
    keys = json_object_get(doc, "keys");
    nkeys = json_array_size(keys);
    j = json_object();
    values = json_object();
    for (i = 0; j && values && i < nkeys; i++) {
        json_t *k = json_array_get(keys, i);
        if (rep->values[i].ptr)
            json_object_setn_new(values, json_string_value(k),
                                 json_string_length(k),
                                 base64_string(rep->values[i]));
    }
    json_decref(doc);
    json_object_set_new(j, "values", values);
    respond_json(c, 200, j);
}

/* POST /v1/kv/{store}?op=mget with {"keys": ["a", ...]}. */
static void handle_mget(srv_conn *c, kv_store *s)
{
    kv_bytes body = srv_req_body(c);
    json_error_t jerr;
    json_t *doc = json_loadb(body.ptr, body.len, 0, &jerr);
    json_t *keys = json_object_get(doc, "keys");
    kv_req req = {.op = KV_OP_MGET};
    kv_bytes *list = NULL;
    size_t i, n = json_array_size(keys);
    size_t max_keys = app_limits(c)->max_mget_keys;

    if (!doc) {
        srv_respond_error(c, 400, "bad_json", "body is not JSON: %s",
                          jerr.text);
        goto out;
    }
    if (!json_is_array(keys)) {
        srv_respond_error(c, 400, "bad_request",
                          "body must be {\"keys\": [\"key\", ...]}");
        goto out;
    }
    if (n > max_keys) {
        srv_respond_error(c, 400, "limit",
                          "mget takes at most %zu keys (max_mget_keys)",
                          max_keys);
        goto out;
    }
    list = calloc(n ? n : 1, sizeof *list);
    if (!list) {
        srv_respond_error(c, 503, "no_memory", "out of memory");
        goto out;
    }
    for (i = 0; i < n; i++) {
        json_t *k = json_array_get(keys, i);
        if (!json_is_string(k)) {
            srv_respond_error(c, 400, "bad_request",
                              "keys must be an array of strings");
            goto out;
        }
        list[i] = (kv_bytes){json_string_value(k), json_string_length(k)};
    }
    req.keys = list;
    req.nkeys = n;
    call_or_fail(c, s, &req, mget_done);
out:
    free(list);
    json_decref(doc);
}

static void clear_done(int status, const kv_reply *rep, const kv_err *err,
                       void *ud)
{
    (void)rep;
    if (status != 0)
        srv_respond_kv_error(ud, status, err);
    else
        srv_respond(ud, 204, NULL, NULL, NULL, 0);
}

/* Every method on /v1/kv/{store}. */
static void handle_store(srv_conn *c)
{
    char prefix[QUERY_VALUE_MAX], cursor[QUERY_VALUE_MAX], op[16];
    kv_req req = {0};
    kv_store *s;
    int64_t limit, max_page;
    long n;

    if (!(s = find_store(c)))
        return;
    switch (srv_req_method(c)) {
    case SRV_GET:
    case SRV_HEAD:
        req.op = KV_OP_KEYS;
        n = srv_query_param(srv_req_query(c), "prefix", prefix, sizeof prefix);
        if (n == -2) {
            srv_respond_error(c, 400, "bad_request",
                              "prefix is badly encoded or too long");
            return;
        }
        req.prefix = (kv_bytes){prefix, n < 0 ? 0 : (size_t)n};
        n = srv_query_param(srv_req_query(c), "cursor", cursor, sizeof cursor);
        if (n == -2) {
            srv_respond_error(c, 400, "bad_cursor", "invalid cursor");
            return;
        }
        req.cursor = (kv_bytes){cursor, n < 0 ? 0 : (size_t)n};
        max_page = (int64_t)app_limits(c)->max_page_keys;
        if (!query_int(c, "limit",
                       max_page < KV_KEYS_LIMIT_DEFAULT ? max_page
                                                        : KV_KEYS_LIMIT_DEFAULT,
                       1, max_page, &limit))
            return;
        req.limit = (size_t)limit;
        call_or_fail(c, s, &req, keys_done);
        break;
    case SRV_POST:
        n = srv_query_param(srv_req_query(c), "op", op, sizeof op - 1);
        if (n < 0 || (op[n] = '\0', strcmp(op, "mget") != 0)) {
            srv_respond_error(c, 400, "bad_request",
                              "POST on a store takes op=mget");
            return;
        }
        handle_mget(c, s);
        break;
    case SRV_DELETE:
        req.op = KV_OP_CLEAR;
        call_or_fail(c, s, &req, clear_done);
        break;
    }
}

/* ------------------------------------------------------------------ */
/* Pub/sub                                                              */

/* POST /v1/pub/{topic}: the body is the payload; 202 once handed on. */
static void handle_publish(srv_conn *c)
{
    srv_app *app = srv_conn_app(c);
    kv_bytes raw = srv_req_cap(c, 0), body = srv_req_body(c);
    char topic[PS_TOPIC_MAX * 3 + 1];
    kv_err err = {0};
    ps_message m;
    long n;

    if (raw.len >= sizeof topic) {
        srv_respond_error(c, 400, "bad_topic", "topic is longer than %d bytes",
                          PS_TOPIC_MAX);
        return;
    }
    n = srv_pct_decode(raw, false, topic);
    if (n < 0) {
        srv_respond_error(c, 400, "bad_topic",
                          "topic has a bad percent-escape");
        return;
    }
    if (ps_publish(app->bus, topic, (size_t)n, body.ptr, body.len, &m, &err)) {
        srv_respond_kv_error(c, err.code, &err);
        return;
    }
    respond_json(c, 202,
                 json_pack("{s:s#, s:s, s:I}", "topic", m.topic,
                           (int)m.topic_len, "node", m.node, "seq",
                           (json_int_t)m.seq));
}

/* GET /v1/topics: every tracked topic and pattern with its counters. */
static void handle_topics(srv_conn *c)
{
    srv_app *app = srv_conn_app(c);
    json_t *arr = json_array();
    ps_topic_stats ts;
    size_t i;

    for (i = 0; arr && ps_bus_topic_at(app->bus, i, &ts); i++)
        json_array_append_new(
            arr,
            json_pack("{s:s, s:I, s:I, s:f}", "name", ts.name, "subscribers",
                      (json_int_t)ts.subscribers, "published",
                      (json_int_t)ts.published, "rate", ts.rate));
    respond_json(c, 200,
                 json_pack("{s:o, s:s, s:s}", "topics", arr, "node",
                           ps_bus_node_id(app->bus), "provider",
                           ps_bus_provider_name(app->bus)));
}

static void handle_ws(srv_conn *c)
{
    srv_ws_accept(((srv_app *)srv_conn_app(c))->ws, c);
}

/* ------------------------------------------------------------------ */
/* Stores, health, metrics                                              */

/* [{"name":..,"backend":..,"healthy":..}, ...] for every open store. */
static json_t *stores_json(kv_registry *reg, bool *all_healthy)
{
    json_t *arr = json_array();
    kv_store *s;
    size_t i;

    *all_healthy = true;
    for (i = 0; arr && (s = kv_registry_at(reg, i)); i++) {
        bool ok = kv_store_healthy(s);
        *all_healthy = *all_healthy && ok;
        json_array_append_new(
            arr, json_pack("{s:s, s:s, s:b}", "name", kv_store_name(s),
                           "backend", kv_store_backend_name(s), "healthy", ok));
    }
    return arr;
}

static void handle_stores(srv_conn *c)
{
    bool healthy;

    respond_json(
        c, 200,
        json_pack("{s:o}", "stores", stores_json(registry_of(c), &healthy)));
}

static void handle_healthz(srv_conn *c)
{
    static const char ok[] = "{\"status\":\"ok\"}";

    srv_respond(c, 200, "application/json", NULL, ok, sizeof ok - 1);
}

/* 200 when every store's backend answers, else 503 naming each state. */
static void handle_readyz(srv_conn *c)
{
    srv_app *app = srv_conn_app(c);
    bool healthy, bus_ok = ps_bus_healthy(app->bus);
    json_t *stores = stores_json(app->reg, &healthy);
    json_t *pubsub =
        json_pack("{s:s, s:b}", "provider", ps_bus_provider_name(app->bus),
                  "healthy", bus_ok);

    healthy = healthy && bus_ok;

    respond_json(c, healthy ? 200 : 503,
                 json_pack("{s:b, s:o, s:o}", "ready", healthy, "stores",
                           stores, "pubsub", pubsub));
}

static void handle_metrics(srv_conn *c)
{
    size_t len;
    char *text = srv_metrics_render(srv_conn_app(c), &len);

    if (!text) {
        srv_respond_error(c, 503, "no_memory", "out of memory");
        return;
    }
    srv_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, text,
                len);
    free(text);
}

/* GET /v1/stats: this node, its provider and every store with its
 * counters, for the dashboard (which derives ops/s from ops_total). */
static void handle_stats(srv_conn *c)
{
    srv_app *app = srv_conn_app(c);
    const srv_ws_stats *ws = srv_ws_hub_stats(app->ws);
    json_t *stores = json_array();
    kv_backend_stats bs;
    ps_bus_stats ps;
    uint64_t now_ms = (uint64_t)time(NULL) * 1000, calls, errors;
    kv_store *s;
    size_t i;
    int op;

    for (i = 0; stores && (s = kv_registry_at(app->reg, i)); i++) {
        json_t *row;

        calls = errors = 0;
        for (op = 0; op < KV_OP__COUNT; op++) {
            calls += kv_store_op_stats(s, (kv_op)op)->calls;
            errors += kv_store_op_stats(s, (kv_op)op)->errors;
        }
        kv_store_stats(s, &bs);
        row = json_pack("{s:s, s:s, s:b, s:I, s:I}", "name", kv_store_name(s),
                        "backend", kv_store_backend_name(s), "healthy",
                        kv_store_healthy(s), "ops_total", (json_int_t)calls,
                        "errors_total", (json_int_t)errors);
        if (row && bs.known) {
            json_object_set_new(row, "keys", json_integer((json_int_t)bs.keys));
            json_object_set_new(row, "bytes",
                                json_integer((json_int_t)bs.bytes));
        }
        json_array_append_new(stores, row);
    }
    ps_bus_stats_get(app->bus, &ps);
    respond_json(
        c, 200,
        json_pack("{s:s, s:I, s:{s:s, s:b, s:I}, s:o, s:{s:I, s:I, s:I, s:I}, "
                  "s:{s:I}}",
                  "node", ps_bus_node_id(app->bus), "uptime_s",
                  (json_int_t)(now_ms > app->started_ms
                                   ? (now_ms - app->started_ms) / 1000
                                   : 0),
                  "provider", "name", ps_bus_provider_name(app->bus), "healthy",
                  ps_bus_healthy(app->bus), "lag", (json_int_t)ps.lag, "stores",
                  stores, "pubsub", "published", (json_int_t)ps.published,
                  "received", (json_int_t)ps.received, "delivered",
                  (json_int_t)ps.delivered, "dropped", (json_int_t)ws->dropped,
                  "ws", "open", (json_int_t)ws->connections_open));
}

/* ------------------------------------------------------------------ */
/* The dashboard (server/dashboard/, compiled in)                       */

/* Answers 200 with the named compiled-in file, or 404. */
static void respond_asset(srv_conn *c, const char *name, size_t len)
{
    static const char headers[] = "Cache-Control: no-cache\r\n"
                                  "X-Content-Type-Options: nosniff\r\n";
    const srv_asset *a;
    size_t i;

    for (i = 0; i < srv_dashboard_nassets; i++) {
        a = &srv_dashboard_assets[i];
        if (strlen(a->name) == len && memcmp(a->name, name, len) == 0) {
            srv_respond(c, 200, a->content_type, headers, a->data, a->len);
            return;
        }
    }
    srv_respond_error(c, 404, "not_found", "no such dashboard file");
}

/* GET /: the dashboard page. */
static void handle_index(srv_conn *c)
{
    respond_asset(c, "index.html", strlen("index.html"));
}

/* GET /dashboard/{file}: its stylesheet and script. */
static void handle_asset(srv_conn *c)
{
    kv_bytes name = srv_req_cap(c, 0);

    respond_asset(c, name.ptr, name.len);
}

const srv_route srv_routes[] = {
    {"/v1/kv", SRV_GET | SRV_HEAD, handle_stores, SRV_NEED_ADMIN},
    {"/v1/kv/{store}", SRV_GET | SRV_HEAD | SRV_POST | SRV_DELETE, handle_store,
     SRV_NEED_KV},
    {"/v1/kv/{store}/{key*}",
     SRV_GET | SRV_HEAD | SRV_PUT | SRV_POST | SRV_DELETE, handle_key,
     SRV_NEED_KV},
    {"/v1/pub/{topic}", SRV_POST, handle_publish, SRV_NEED_PUB},
    {"/v1/topics", SRV_GET | SRV_HEAD, handle_topics, SRV_NEED_ADMIN},
    {"/v1/ws", SRV_GET, handle_ws, SRV_NEED_WS},
    {"/v1/stats", SRV_GET | SRV_HEAD, handle_stats, SRV_NEED_ADMIN},
    {"/healthz", SRV_GET | SRV_HEAD, handle_healthz, SRV_NEED_OPEN},
    {"/readyz", SRV_GET | SRV_HEAD, handle_readyz, SRV_NEED_TOKEN},
    {"/metrics", SRV_GET | SRV_HEAD, handle_metrics, SRV_NEED_ADMIN},
    {"/", SRV_GET | SRV_HEAD, handle_index, SRV_NEED_OPEN},
    {"/dashboard/{file}", SRV_GET | SRV_HEAD, handle_asset, SRV_NEED_OPEN},
};
const size_t srv_nroutes = sizeof srv_routes / sizeof srv_routes[0];
