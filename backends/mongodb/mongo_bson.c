/*
 * mongo_bson.c - the pure helpers of the mongodb backend (mongo_int.h):
 * how a value is typed in `v` and read back, the literal-prefix regex of
 * a listing, the mapping of driver and server errors to kvbus codes, the
 * connection URI with kvbusd's timeouts, and names.
 *
 * The canonical rules themselves (integers, UTF-8, keys) are those of
 * kvstore/kv_value.c, called, never restated. No state; any thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/mongodb/mongo_int.h"

/* ------------------------------------------------------------------ */
/* Values                                                               */

mongo_vtype mongo_classify(kv_bytes value, int64_t *num)
{
    int64_t n;

    if (kv_parse_int64(value, &n) == 0) {
        if (num)
            *num = n;
        return MONGO_V_INT64;
    }
    if (kv_utf8_valid(value.ptr, value.len) &&
        (value.len == 0 || !memchr(value.ptr, '\0', value.len)))
        return MONGO_V_STRING;
    return MONGO_V_BINARY;
}

bool mongo_append_value(bson_t *doc, const char *field, kv_bytes value)
{
    int64_t n = 0;

    if (value.len > INT32_MAX)
        return false;
    switch (mongo_classify(value, &n)) {
    case MONGO_V_INT64:
        return bson_append_int64(doc, field, -1, n);
    case MONGO_V_STRING:
        return bson_append_utf8(doc, field, -1, value.len ? value.ptr : "",
                                (int)value.len);
    case MONGO_V_BINARY:
        break;
    }
    return bson_append_binary(doc, field, -1, BSON_SUBTYPE_BINARY,
                              (const uint8_t *)value.ptr, (uint32_t)value.len);
}

bool mongo_append_value_match(bson_t *doc, const char *field, kv_bytes value)
{
    bson_t cond, in;
    mongo_vtype type = mongo_classify(value, NULL);
    bool ok;

    if (value.len > INT32_MAX)
        return false;
    ok = BSON_APPEND_DOCUMENT_BEGIN(doc, field, &cond) &&
         BSON_APPEND_ARRAY_BEGIN(&cond, "$in", &in) &&
         mongo_append_value(&in, "0", value);
    if (ok && type == MONGO_V_INT64)
        ok =
            bson_append_utf8(&in, "1", -1, value.ptr, (int)value.len) &&
            bson_append_binary(&in, "2", -1, BSON_SUBTYPE_BINARY,
                               (const uint8_t *)value.ptr, (uint32_t)value.len);
    else if (ok && type == MONGO_V_STRING)
        ok = bson_append_binary(&in, "1", -1, BSON_SUBTYPE_BINARY,
                                (const uint8_t *)(value.len ? value.ptr : ""),
                                (uint32_t)value.len);
    return ok && bson_append_array_end(&cond, &in) &&
           bson_append_document_end(doc, &cond);
}

int mongo_read_value(const bson_iter_t *it, char *num, kv_bytes *out,
                     kv_bytes key, kv_err *err)
{
    const uint8_t *data = NULL;
    bson_subtype_t subtype;
    uint32_t len = 0;
    const char *s;

    switch (bson_iter_type(it)) {
    case BSON_TYPE_UTF8:
        s = bson_iter_utf8(it, &len);
        *out = (kv_bytes){s, len};
        return 0;
    case BSON_TYPE_INT64:
        *out = (kv_bytes){num, kv_format_int64(bson_iter_int64(it), num)};
        return 0;
    case BSON_TYPE_INT32:
        *out = (kv_bytes){num, kv_format_int64(bson_iter_int32(it), num)};
        return 0;
    case BSON_TYPE_BINARY:
        bson_iter_binary(it, &subtype, &len, &data);
        *out = (kv_bytes){data ? (const char *)data : "", len};
        return 0;
    default:
        break;
    }
    return kv_err_set(err, KV_EINVAL,
                      "the value of key %.*s has BSON type 0x%02x, which is "
                      "not a kvbus value (string, Int64 or binary)",
                      key.len > 64 ? 64 : (int)key.len, key.ptr,
                      (unsigned)bson_iter_type(it));
}

/* ------------------------------------------------------------------ */
/* Prefix regex                                                         */

size_t mongo_regex_prefix(kv_bytes prefix, char *out)
{
    static const char special[] = "\\^$.|?*+()[]{}/";
    size_t i, n = 0;

    out[n++] = '^';
    for (i = 0; i < prefix.len; i++) {
        char c = prefix.ptr[i];
        if (c != '\0' && strchr(special, c))
            out[n++] = '\\';
        out[n++] = c;
    }
    out[n] = '\0';
    return n;
}

/* ------------------------------------------------------------------ */
/* Errors                                                               */

/*
 * Server codes that mean "this node cannot serve now" (the state change
 * errors of the driver specifications, and network errors a mongos
 * reports): HostUnreachable 6, HostNotFound 7, NetworkTimeout 89,
 * ShutdownInProgress 91, PrimarySteppedDown 189, SocketException 9001,
 * NotWritablePrimary 10107, InterruptedAtShutdown 11600,
 * InterruptedDueToReplStateChange 11602, NotPrimaryNoSecondaryOk 13435,
 * NotPrimaryOrSecondary 13436.
 */
static bool server_code_down(uint32_t code)
{
    static const uint32_t codes[] = {6,     7,     89,    91,    189,  9001,
                                     10107, 11600, 11602, 13435, 13436};
    size_t i;

    for (i = 0; i < sizeof codes / sizeof *codes; i++)
        if (codes[i] == code)
            return true;
    return false;
}

bool mongo_error_duplicate(const bson_error_t *e)
{
    return e->domain != MONGOC_ERROR_STREAM &&
           e->domain != MONGOC_ERROR_SERVER_SELECTION &&
           (e->code == MONGO_CODE_DUPLICATE_KEY ||
            e->code == MONGO_CODE_DUPLICATE_KEY_OLD);
}

int mongo_error_code(const bson_error_t *e, bool *down)
{
    bool d = false;
    int code = KV_EUNAVAIL;

    switch (e->domain) {
    case MONGOC_ERROR_STREAM:
    case MONGOC_ERROR_SERVER_SELECTION:
    case MONGOC_ERROR_PROTOCOL:
    case MONGOC_ERROR_SASL:
    case MONGOC_ERROR_SCRAM:
        d = true;
        break;
    case MONGOC_ERROR_CLIENT:
        d = e->code == MONGOC_ERROR_CLIENT_NOT_READY ||
            e->code == MONGOC_ERROR_CLIENT_AUTHENTICATE ||
            e->code == MONGOC_ERROR_CLIENT_NO_ACCEPTABLE_PEER ||
            e->code == MONGOC_ERROR_CLIENT_GETNONCE;
        break;
    default:
        if (server_code_down(e->code))
            d = true;
        else if (e->code == MONGO_CODE_MAX_TIME_EXPIRED)
            code = KV_ETIMEDOUT;
        else if (e->code == MONGO_CODE_TYPE_MISMATCH)
            code = KV_ENOTINT;
        break;
    }
    if (down)
        *down = d;
    return code;
}

/* ------------------------------------------------------------------ */
/* URI and names                                                        */

int mongo_uri_prepare(const char *url, uint32_t timeout_ms, mongoc_uri_t **out,
                      kv_err *err)
{
    static const char *const timeouts[] = {
        MONGOC_URI_SERVERSELECTIONTIMEOUTMS,
        MONGOC_URI_CONNECTTIMEOUTMS,
        MONGOC_URI_SOCKETTIMEOUTMS,
    };
    bson_error_t error;
    mongoc_uri_t *uri;
    size_t i;

    *out = NULL;
    if (!url || !*url)
        return kv_err_set(err, KV_EINVAL,
                          "url is missing: the mongodb backend needs a "
                          "mongodb:// URI");
    if (timeout_ms == 0 || timeout_ms > INT32_MAX)
        return kv_err_set(err, KV_EINVAL, "op_timeout_ms is out of range");
    uri = mongoc_uri_new_with_error(url, &error);
    if (!uri)
        return kv_err_set(err, KV_EINVAL,
                          "url is not a MongoDB connection string the "
                          "driver accepts");
    for (i = 0; i < sizeof timeouts / sizeof *timeouts; i++)
        if (!mongoc_uri_has_option(uri, timeouts[i]) &&
            !mongoc_uri_set_option_as_int32(uri, timeouts[i],
                                            (int32_t)timeout_ms)) {
            mongoc_uri_destroy(uri);
            return kv_err_set(err, KV_EINVAL, "cannot set %s on the url",
                              timeouts[i]);
        }
    if (!mongoc_uri_get_appname(uri))
        mongoc_uri_set_appname(uri, MONGO_APPNAME);
    *out = uri;
    return 0;
}

const char *mongo_uri_database(const mongoc_uri_t *uri)
{
    const char *db = mongoc_uri_get_database(uri);

    return db && *db ? db : MONGO_DB_DEFAULT;
}

void mongo_uri_where(const mongoc_uri_t *uri, char *out, size_t cap)
{
    const mongoc_host_list_t *h = mongoc_uri_get_hosts(uri);
    const char *srv = mongoc_uri_get_srv_hostname(uri);
    const mongoc_host_list_t *x;
    int more = 0;

    if (h) {
        for (x = h->next; x; x = x->next)
            more++;
        if (more)
            snprintf(out, cap, "%s+%d/%s", h->host_and_port, more,
                     mongo_uri_database(uri));
        else
            snprintf(out, cap, "%s/%s", h->host_and_port,
                     mongo_uri_database(uri));
    } else {
        snprintf(out, cap, "srv:%s/%s", srv ? srv : "?",
                 mongo_uri_database(uri));
    }
}

int mongo_collection_name(const char *store, const char *collection, char *out,
                          kv_err *err)
{
    size_t len;

    if (!collection) {
        snprintf(out, MONGO_COLLECTION_MAX + 1, "%s%s", MONGO_COLLECTION_PREFIX,
                 store);
        return 0;
    }
    len = strlen(collection);
    if (len == 0 || len > MONGO_COLLECTION_MAX)
        return kv_err_set(err, KV_EINVAL,
                          "store %s: collection must be 1 to %d bytes", store,
                          MONGO_COLLECTION_MAX);
    if (strchr(collection, '$') || strncmp(collection, "system.", 7) == 0)
        return kv_err_set(err, KV_EINVAL,
                          "store %s: collection may neither contain '$' nor "
                          "start with \"system.\"",
                          store);
    memcpy(out, collection, len + 1);
    return 0;
}

uint32_t mongo_backoff_next(uint32_t cur)
{
    if (cur < MONGO_BACKOFF_MIN_MS)
        return MONGO_BACKOFF_MIN_MS;
    if (cur >= MONGO_BACKOFF_MAX_MS / 2)
        return MONGO_BACKOFF_MAX_MS;
    return cur * 2;
}

unsigned mongo_workers_for(const char *uv_threadpool_size)
{
    unsigned long n = MONGO_THREADPOOL_DEFAULT;
    char *end = NULL;

    if (uv_threadpool_size && *uv_threadpool_size) {
        n = strtoul(uv_threadpool_size, &end, 10);
        if (*end != '\0' || n == 0)
            n = MONGO_THREADPOOL_DEFAULT;
    }
    if (n > MONGO_THREADPOOL_MAX)
        n = MONGO_THREADPOOL_MAX;
    return n > 1 ? (unsigned)n - 1 : 1;
}
