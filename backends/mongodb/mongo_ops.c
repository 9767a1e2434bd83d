/*
 * mongo_ops.c - the driver calls of the mongodb backend: each kvbus
 * operation as one (or, for incr, a few) commands on the store's
 * collection, run on a worker thread with a client of its own, and the
 * answer turned into the call's kv_reply.
 *
 * Layout (Nuxeo's): {_id: key, v: value, ttl: Date}. Time is kvbusd's
 * wall clock, read when the call runs: a document is live while it has no
 * `ttl` or its ttl is later than now, every read ignores the others, and
 * every write that creates a key replaces an expired document as if it
 * were absent. A put with ttl N stores ttl = now + N seconds.
 *
 * - get: find {_id, live}, limit 1.
 * - put: replace {_id} with {_id, v, ttl?}, upsert.
 * - del: delete {_id, live}; found = one deleted.
 * - set_ttl: update {_id, live} with $set ttl or $unset ttl; found =
 *   matched.
 * - cas: absent->absent: find {_id, live}; absent->v: replace {_id,
 *   ttl <= now} with upsert, a duplicate key error meaning the key is live
 *   (not swapped); e->v: replace {_id, v: e, live}; e->absent: delete
 *   {_id, v: e, live}. "v: e" is {$in: [...]} of every form the bytes of e
 *   can be stored in (Int64 5, "5", binary "5"), so the comparison is by
 *   the bytes a read returns, whoever wrote the document.
 * - incr: find {_id, live}; an Int64 v (checked for overflow here) gets
 *   findAndModify {_id, v: that value, live} with $inc, so the TTL stays
 *   (a string holding canonical decimal text, as Nuxeo may write, gets
 *   $set of the sum as an Int64 under the same filter);
 *   no live document: replace {_id, ttl <= now} with {v: delta}, upsert
 *   (a missing or expired key counts as 0 and gets no TTL). When the
 *   second step matches nothing or hits a duplicate key, the key changed
 *   in between: start again (MONGO_INCR_ATTEMPTS times).
 * - mget: find {_id: {$in: keys}, live}.
 * - keys: find {_id: {$gte: "" | $gt: after, $regex: ^prefix}, live},
 *   sorted by _id, limit + 1 to know whether another page follows.
 * - clear: delete every document (the TTL index stays).
 * - the TTL index: createIndexes {ttl: 1}, expireAfterSeconds 0.
 *
 * Runs on: worker threads (mongo__call_work), except mongo__call_clear
 * (the loop thread, after the work).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backends/mongodb/mongo_int.h"

#define MONGO_MS_PER_S 1000

/* kvbusd's wall clock in ms since the epoch, as BSON dates count. */
static int64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * MONGO_MS_PER_S + ts.tv_nsec / 1000000;
}

/* Records a driver or server error as the call's result. */
static void fail(struct mongo_call *c, const bson_error_t *e)
{
    mongo_job *j = &c->job;

    j->status = mongo_error_code(e, &j->down);
    kv_err_set(&j->err, j->status, "store %s: MongoDB: %s", c->store,
               e->message);
}

/* Records a result of kvbus's own as the call's result. */
static void fail_code(struct mongo_call *c, int code, const char *msg)
{
    c->job.status =
        kv_err_set(&c->job.err, code, "store %s: %s", c->store, msg);
}

static void fail_nomem(struct mongo_call *c)
{
    fail_code(c, KV_ENOMEM, "out of memory");
}

/* ------------------------------------------------------------------ */
/* Building documents                                                   */

static bool append_key(bson_t *d, const char *field, kv_bytes key)
{
    return bson_append_utf8(d, field, -1, key.len ? key.ptr : "", (int)key.len);
}

/* $or: [{ttl: {$exists: false}}, {ttl: {$gt: now}}] */
static void append_live(bson_t *d, int64_t now)
{
    bson_t or, alt, cond;

    BSON_APPEND_ARRAY_BEGIN(d, "$or", & or);
    BSON_APPEND_DOCUMENT_BEGIN(& or, "0", &alt);
    BSON_APPEND_DOCUMENT_BEGIN(&alt, MONGO_F_TTL, &cond);
    BSON_APPEND_BOOL(&cond, "$exists", false);
    bson_append_document_end(&alt, &cond);
    bson_append_document_end(& or, &alt);
    BSON_APPEND_DOCUMENT_BEGIN(& or, "1", &alt);
    BSON_APPEND_DOCUMENT_BEGIN(&alt, MONGO_F_TTL, &cond);
    BSON_APPEND_DATE_TIME(&cond, "$gt", now);
    bson_append_document_end(&alt, &cond);
    bson_append_document_end(& or, &alt);
    bson_append_array_end(d, & or);
}

/* {_id: key, $or: live} */
static void filter_live(bson_t *f, kv_bytes key, int64_t now)
{
    append_key(f, MONGO_F_ID, key);
    append_live(f, now);
}

/* {_id: key, ttl: {$lte: now}}: the key's document only when expired. */
static void filter_expired(bson_t *f, kv_bytes key, int64_t now)
{
    bson_t cond;

    append_key(f, MONGO_F_ID, key);
    BSON_APPEND_DOCUMENT_BEGIN(f, MONGO_F_TTL, &cond);
    BSON_APPEND_DATE_TIME(&cond, "$lte", now);
    bson_append_document_end(f, &cond);
}

/* {_id: key, v: value, ttl: now + ttl_s} (no ttl when ttl_s is 0). */
static bool value_doc(bson_t *d, kv_bytes key, kv_bytes value, int64_t ttl_s,
                      int64_t now)
{
    if (!append_key(d, MONGO_F_ID, key) ||
        !mongo_append_value(d, MONGO_F_VALUE, value))
        return false;
    if (ttl_s > 0)
        BSON_APPEND_DATE_TIME(d, MONGO_F_TTL, now + ttl_s * MONGO_MS_PER_S);
    return true;
}

/* The int32 or int64 field of a write reply, 0 when missing. */
static int64_t reply_count(const bson_t *reply, const char *field)
{
    bson_iter_t it;

    if (bson_iter_init_find(&it, reply, field) &&
        (BSON_ITER_HOLDS_INT32(&it) || BSON_ITER_HOLDS_INT64(&it)))
        return bson_iter_as_int64(&it);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Reading documents                                                    */

/*
 * Reads `v` of doc into a new allocation at *copy (the caller frees it).
 * Returns 1 when found, 0 when the document has no `v` (absent), or -1
 * with the call's error set.
 */
static int doc_value(struct mongo_call *c, const bson_t *doc, kv_bytes key,
                     char **copy, size_t *len)
{
    char num[KV_INT_TEXT_MAX + 1];
    kv_bytes v;
    bson_iter_t it;
    kv_err err = {0};

    if (!bson_iter_init_find(&it, doc, MONGO_F_VALUE))
        return 0;
    if (mongo_read_value(&it, num, &v, key, &err) != 0) {
        c->job.status = err.code;
        c->job.err = err;
        return -1;
    }
    *copy = malloc(v.len ? v.len : 1);
    if (!*copy) {
        fail_nomem(c);
        return -1;
    }
    if (v.len)
        memcpy(*copy, v.ptr, v.len);
    *len = v.len;
    return 1;
}

/* Runs find and hands each document to each_doc until it returns false
 * (enough, or an error it recorded in the call). Returns false when the
 * call has an error, from the find or from each_doc. */
static bool find_each(struct mongo_call *c, mongoc_collection_t *coll,
                      const bson_t *filter, const bson_t *opts,
                      bool (*each_doc)(struct mongo_call *c, const bson_t *doc,
                                       void *ud),
                      void *ud)
{
    mongoc_cursor_t *cur =
        mongoc_collection_find_with_opts(coll, filter, opts, NULL);
    const bson_t *doc;
    bson_error_t error;
    bool more = true;

    while (more && mongoc_cursor_next(cur, &doc))
        more = each_doc(c, doc, ud);
    if (more && mongoc_cursor_error(cur, &error))
        fail(c, &error);
    mongoc_cursor_destroy(cur);
    return c->job.status == 0;
}

/* ------------------------------------------------------------------ */
/* Operations                                                           */

struct get_state {
    int64_t now;
    bool seen;
};

static bool get_doc(struct mongo_call *c, const bson_t *doc, void *ud)
{
    struct get_state *st = ud;
    bson_iter_t it;
    size_t len = 0;
    int found;

    st->seen = true;
    found = doc_value(c, doc, c->key, &c->out, &len);
    if (found < 0)
        return false;
    c->reply.found = found == 1;
    if (!c->reply.found)
        return false; /* a document without a value is absent */
    c->reply.value = (kv_bytes){c->out, len};
    if (bson_iter_init_find(&it, doc, MONGO_F_TTL) &&
        BSON_ITER_HOLDS_DATE_TIME(&it)) {
        int64_t left = bson_iter_date_time(&it) - st->now;
        c->reply.ttl_left_s =
            left > 0 ? (left + MONGO_MS_PER_S - 1) / MONGO_MS_PER_S : 1;
    }
    return false;
}

static void op_get(struct mongo_call *c, mongoc_collection_t *coll, int64_t now)
{
    bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, proj;
    struct get_state st = {.now = now};

    filter_live(&filter, c->key, now);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, MONGO_F_VALUE, 1);
    BSON_APPEND_INT32(&proj, MONGO_F_TTL, 1);
    bson_append_document_end(&opts, &proj);
    BSON_APPEND_INT64(&opts, "limit", 1);
    BSON_APPEND_BOOL(&opts, "singleBatch", true);
    find_each(c, coll, &filter, &opts, get_doc, &st);
    bson_destroy(&filter);
    bson_destroy(&opts);
}

static bool seen_doc(struct mongo_call *c, const bson_t *doc, void *ud)
{
    struct get_state *st = ud;

    (void)c;
    (void)doc;
    st->seen = true;
    return false;
}

/* Sets *exists when a live document of the key exists. Returns false
 * (the call's error set) when the find failed. */
static bool live_exists(struct mongo_call *c, mongoc_collection_t *coll,
                        int64_t now, bool *exists)
{
    bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, proj;
    struct get_state st = {.now = now};
    bool ok;

    filter_live(&filter, c->key, now);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, MONGO_F_ID, 1);
    bson_append_document_end(&opts, &proj);
    BSON_APPEND_INT64(&opts, "limit", 1);
    BSON_APPEND_BOOL(&opts, "singleBatch", true);
    ok = find_each(c, coll, &filter, &opts, seen_doc, &st);
    bson_destroy(&filter);
    bson_destroy(&opts);
    *exists = st.seen;
    return ok;
}

/* replace filter with doc (upserting when asked); *matched and
 * *upserted from the reply. Returns false with error set on failure. */
static bool replace(mongoc_collection_t *coll, const bson_t *filter,
                    const bson_t *doc, bool upsert, int64_t *matched,
                    bson_error_t *error)
{
    bson_t opts = BSON_INITIALIZER, reply;
    bool ok;

    if (upsert)
        BSON_APPEND_BOOL(&opts, "upsert", true);
    ok = mongoc_collection_replace_one(coll, filter, doc, &opts, &reply, error);
    if (ok && matched)
        *matched = reply_count(&reply, "matchedCount") +
                   reply_count(&reply, "upsertedCount");
    bson_destroy(&reply);
    bson_destroy(&opts);
    return ok;
}

static void op_put(struct mongo_call *c, mongoc_collection_t *coll, int64_t now)
{
    bson_t filter = BSON_INITIALIZER, doc = BSON_INITIALIZER;
    bson_error_t error;

    append_key(&filter, MONGO_F_ID, c->key);
    if (!value_doc(&doc, c->key, c->value, c->ttl_s, now))
        fail_code(c, KV_ETOOBIG, "value does not fit in a BSON document");
    else if (!replace(coll, &filter, &doc, true, NULL, &error))
        fail(c, &error);
    bson_destroy(&filter);
    bson_destroy(&doc);
}

/* delete_one of filter; found = one document deleted. */
static void delete_found(struct mongo_call *c, mongoc_collection_t *coll,
                         const bson_t *filter)
{
    bson_t reply;
    bson_error_t error;

    if (mongoc_collection_delete_one(coll, filter, NULL, &reply, &error))
        c->reply.found = reply_count(&reply, "deletedCount") > 0;
    else
        fail(c, &error);
    bson_destroy(&reply);
}

static void op_del(struct mongo_call *c, mongoc_collection_t *coll, int64_t now)
{
    bson_t filter = BSON_INITIALIZER;

    filter_live(&filter, c->key, now);
    delete_found(c, coll, &filter);
    bson_destroy(&filter);
}

static void op_set_ttl(struct mongo_call *c, mongoc_collection_t *coll,
                       int64_t now)
{
    bson_t filter = BSON_INITIALIZER, update = BSON_INITIALIZER, op, reply;
    bson_error_t error;

    filter_live(&filter, c->key, now);
    if (c->ttl_s > 0) {
        BSON_APPEND_DOCUMENT_BEGIN(&update, "$set", &op);
        BSON_APPEND_DATE_TIME(&op, MONGO_F_TTL,
                              now + c->ttl_s * MONGO_MS_PER_S);
    } else {
        BSON_APPEND_DOCUMENT_BEGIN(&update, "$unset", &op);
        BSON_APPEND_UTF8(&op, MONGO_F_TTL, "");
    }
    bson_append_document_end(&update, &op);
    if (mongoc_collection_update_one(coll, &filter, &update, NULL, &reply,
                                     &error))
        c->reply.found = reply_count(&reply, "matchedCount") > 0;
    else
        fail(c, &error);
    bson_destroy(&reply);
    bson_destroy(&filter);
    bson_destroy(&update);
}

static void op_cas(struct mongo_call *c, mongoc_collection_t *coll, int64_t now)
{
    bson_t filter = BSON_INITIALIZER, doc = BSON_INITIALIZER;
    bson_error_t error;
    int64_t matched = 0;
    bool exists = false;

    if (!c->has_expected && !c->has_value) {
        if (live_exists(c, coll, now, &exists))
            c->reply.found = !exists;
        goto out;
    }
    if (c->has_value && !value_doc(&doc, c->key, c->value, c->ttl_s, now)) {
        fail_code(c, KV_ETOOBIG, "value does not fit in a BSON document");
        goto out;
    }
    if (!c->has_expected) {
        filter_expired(&filter, c->key, now);
        if (replace(coll, &filter, &doc, true, &matched, &error))
            c->reply.found = true;
        else if (mongo_error_duplicate(&error))
            c->reply.found = false; /* a live document holds the key */
        else
            fail(c, &error);
        goto out;
    }
    filter_live(&filter, c->key, now);
    if (!mongo_append_value_match(&filter, MONGO_F_VALUE, c->expected)) {
        fail_code(c, KV_ETOOBIG, "expected value does not fit in BSON");
        goto out;
    }
    if (!c->has_value) {
        delete_found(c, coll, &filter);
    } else if (replace(coll, &filter, &doc, false, &matched, &error)) {
        c->reply.found = matched > 0;
    } else {
        fail(c, &error);
    }
out:
    bson_destroy(&filter);
    bson_destroy(&doc);
}

/* What incr found under the key. */
struct incr_state {
    bool seen;     /* a live document */
    bool integer;  /* its value is a 64-bit integer */
    bool int_type; /* stored as Int64 (or Int32): $inc; else text: $set */
    int64_t value;
    bson_t *doc; /* the document, to filter on v exactly as it is */
};

/* Takes the live document: an Int64 or Int32 v is an integer, and so is a
 * string or binary v holding canonical decimal text (what Nuxeo writes
 * through put(key, "42"); kvbus itself stores those as Int64). */
static bool incr_doc(struct mongo_call *c, const bson_t *doc, void *ud)
{
    struct incr_state *st = ud;
    char num[KV_INT_TEXT_MAX + 1];
    bson_iter_t it;
    kv_bytes v;

    st->seen = true;
    if (!bson_iter_init_find(&it, doc, MONGO_F_VALUE))
        return false;
    if (BSON_ITER_HOLDS_INT64(&it) || BSON_ITER_HOLDS_INT32(&it)) {
        st->integer = st->int_type = true;
        st->value = bson_iter_as_int64(&it);
    } else if ((BSON_ITER_HOLDS_UTF8(&it) || BSON_ITER_HOLDS_BINARY(&it)) &&
               mongo_read_value(&it, num, &v, c->key, NULL) == 0 &&
               kv_parse_int64(v, &st->value) == 0) {
        st->integer = true;
    }
    if (st->integer && !(st->doc = bson_copy(doc)))
        fail_nomem(c);
    return false;
}

/* Reads the live document of the key into st. False on error. */
static bool incr_read(struct mongo_call *c, mongoc_collection_t *coll,
                      int64_t now, struct incr_state *st)
{
    bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, proj;
    bool ok;

    filter_live(&filter, c->key, now);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, MONGO_F_VALUE, 1);
    bson_append_document_end(&opts, &proj);
    BSON_APPEND_INT64(&opts, "limit", 1);
    BSON_APPEND_BOOL(&opts, "singleBatch", true);
    ok = find_each(c, coll, &filter, &opts, incr_doc, st);
    bson_destroy(&filter);
    bson_destroy(&opts);
    return ok;
}

/*
 * Adds delta to the live document whose v is still the one st read: $inc
 * of an Int64, $set of the sum as an Int64 over canonical text. Returns 1
 * with c->reply.number set, 0 when it changed meanwhile, -1 on error.
 */
static int incr_in_place(struct mongo_call *c, mongoc_collection_t *coll,
                         int64_t now, const struct incr_state *st)
{
    mongoc_find_and_modify_opts_t *opts = mongoc_find_and_modify_opts_new();
    bson_t query = BSON_INITIALIZER, update = BSON_INITIALIZER, fields, reply;
    bson_t op;
    bson_iter_t it, v;
    bson_error_t error;
    int64_t sum = st->value + c->delta; /* the caller checked the range */
    int rc = 0;

    filter_live(&query, c->key, now);
    if (bson_iter_init_find(&it, st->doc, MONGO_F_VALUE))
        bson_append_iter(&query, MONGO_F_VALUE, -1, &it);
    if (st->int_type) {
        BSON_APPEND_DOCUMENT_BEGIN(&update, "$inc", &op);
        BSON_APPEND_INT64(&op, MONGO_F_VALUE, c->delta);
    } else {
        BSON_APPEND_DOCUMENT_BEGIN(&update, "$set", &op);
        BSON_APPEND_INT64(&op, MONGO_F_VALUE, sum);
    }
    bson_append_document_end(&update, &op);
    bson_init(&fields);
    BSON_APPEND_INT32(&fields, MONGO_F_VALUE, 1);
    mongoc_find_and_modify_opts_set_update(opts, &update);
    mongoc_find_and_modify_opts_set_fields(opts, &fields);
    mongoc_find_and_modify_opts_set_flags(opts,
                                          MONGOC_FIND_AND_MODIFY_RETURN_NEW);
    if (!mongoc_collection_find_and_modify_with_opts(coll, &query, opts, &reply,
                                                     &error)) {
        fail(c, &error);
        rc = -1;
    } else if (bson_iter_init_find(&it, &reply, "value") &&
               BSON_ITER_HOLDS_DOCUMENT(&it) && bson_iter_recurse(&it, &v) &&
               bson_iter_find(&v, MONGO_F_VALUE)) {
        if (BSON_ITER_HOLDS_INT64(&v) && bson_iter_int64(&v) == sum) {
            c->reply.number = sum;
            rc = 1;
        } else {
            fail_code(c, KV_EUNAVAIL, "unexpected answer to an increment");
            rc = -1;
        }
    }
    bson_destroy(&reply);
    bson_destroy(&fields);
    bson_destroy(&update);
    bson_destroy(&query);
    mongoc_find_and_modify_opts_destroy(opts);
    return rc;
}

/* Creates the key with v = delta when it is missing or expired. Returns 1
 * when created, 0 when a live document holds it (created meanwhile), -1
 * on error. */
static int incr_create(struct mongo_call *c, mongoc_collection_t *coll,
                       int64_t now)
{
    bson_t filter = BSON_INITIALIZER, doc = BSON_INITIALIZER;
    bson_error_t error;
    int rc = 1;

    filter_expired(&filter, c->key, now);
    append_key(&doc, MONGO_F_ID, c->key);
    BSON_APPEND_INT64(&doc, MONGO_F_VALUE, c->delta);
    if (replace(coll, &filter, &doc, true, NULL, &error)) {
        c->reply.number = c->delta;
    } else if (mongo_error_duplicate(&error)) {
        rc = 0;
    } else {
        fail(c, &error);
        rc = -1;
    }
    bson_destroy(&filter);
    bson_destroy(&doc);
    return rc;
}

/*
 * incr: reads the live value, then changes it only if it is still the
 * same (a findAndModify filtered on it), or creates the key when there is
 * none; a concurrent change in between makes that step match nothing, and
 * the whole is tried again. Not an integer: KV_ENOTINT; a sum out of range:
 * KV_EOVERFLOW; neither changes anything. The TTL of a live key is kept;
 * a created key has none.
 */
static void op_incr(struct mongo_call *c, mongoc_collection_t *coll)
{
    struct incr_state st;
    int attempt, rc;
    int64_t now;

    for (attempt = 0; attempt < MONGO_INCR_ATTEMPTS; attempt++) {
        now = wall_ms();
        st = (struct incr_state){0};
        if (!incr_read(c, coll, now, &st)) {
            rc = -1;
        } else if (!st.seen) {
            rc = incr_create(c, coll, now);
        } else if (!st.integer) {
            fail_code(c, KV_ENOTINT, "value is not a 64-bit decimal integer");
            rc = -1;
        } else if ((c->delta > 0 && st.value > INT64_MAX - c->delta) ||
                   (c->delta < 0 && st.value < INT64_MIN - c->delta)) {
            fail_code(c, KV_EOVERFLOW, "the sum overflows a 64-bit integer");
            rc = -1;
        } else {
            rc = incr_in_place(c, coll, now, &st);
        }
        if (st.doc)
            bson_destroy(st.doc);
        if (rc != 0)
            return;
    }
    fail_code(c, KV_EUNAVAIL,
              "the key changed under every attempt to increment it");
}

/* mget: the keys, sorted, to find the indexes a document answers. */
struct mget_entry {
    kv_bytes key;
    size_t index;
};

static int bytes_cmp(kv_bytes a, kv_bytes b)
{
    size_t n = a.len < b.len ? a.len : b.len;
    int d = n ? memcmp(a.ptr, b.ptr, n) : 0;

    if (d != 0)
        return d;
    return a.len < b.len ? -1 : a.len > b.len;
}

static int mget_entry_cmp(const void *x, const void *y)
{
    return bytes_cmp(((const struct mget_entry *)x)->key,
                     ((const struct mget_entry *)y)->key);
}

struct mget_state {
    struct mget_entry *sorted;
    size_t n;
};

static bool mget_doc(struct mongo_call *c, const bson_t *doc, void *ud)
{
    struct mget_state *st = ud;
    kv_bytes id;
    bson_iter_t it;
    uint32_t len;
    size_t lo = 0, hi = st->n, mid, vlen = 0;
    char *copy = NULL;
    int found;

    if (!bson_iter_init_find(&it, doc, MONGO_F_ID) ||
        !BSON_ITER_HOLDS_UTF8(&it))
        return true;
    id.ptr = bson_iter_utf8(&it, &len);
    id.len = len;
    while (lo < hi) { /* first entry >= id */
        mid = lo + (hi - lo) / 2;
        if (bytes_cmp(st->sorted[mid].key, id) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (; lo < st->n && bytes_cmp(st->sorted[lo].key, id) == 0; lo++) {
        found = doc_value(c, doc, id, &copy, &vlen);
        if (found < 0)
            return false;
        if (found == 0)
            break;
        c->reply.values[st->sorted[lo].index] = (kv_bytes){copy, vlen};
    }
    return true;
}

static void op_mget(struct mongo_call *c, mongoc_collection_t *coll,
                    int64_t now)
{
    bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, id, in, proj;
    struct mget_state st = {.n = c->nkeys};
    char idx[16];
    const char *ikey;
    uint32_t n = 0;
    size_t i;

    c->reply.values = calloc(c->nkeys, sizeof *c->reply.values);
    st.sorted = malloc(c->nkeys * sizeof *st.sorted);
    if (!c->reply.values || !st.sorted) {
        free(st.sorted);
        fail_nomem(c);
        return;
    }
    for (i = 0; i < c->nkeys; i++)
        st.sorted[i] = (struct mget_entry){c->keys[i], i};
    qsort(st.sorted, c->nkeys, sizeof *st.sorted, mget_entry_cmp);
    BSON_APPEND_DOCUMENT_BEGIN(&filter, MONGO_F_ID, &id);
    BSON_APPEND_ARRAY_BEGIN(&id, "$in", &in);
    for (i = 0; i < c->nkeys; i++) {
        if (i > 0 && bytes_cmp(st.sorted[i].key, st.sorted[i - 1].key) == 0)
            continue;
        bson_uint32_to_string(n++, &ikey, idx, sizeof idx);
        append_key(&in, ikey, st.sorted[i].key);
    }
    bson_append_array_end(&id, &in);
    bson_append_document_end(&filter, &id);
    append_live(&filter, now);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, MONGO_F_VALUE, 1);
    bson_append_document_end(&opts, &proj);
    find_each(c, coll, &filter, &opts, mget_doc, &st);
    free(st.sorted);
    bson_destroy(&filter);
    bson_destroy(&opts);
}

struct keys_state {
    size_t rows;
    size_t cap;
};

static bool keys_doc(struct mongo_call *c, const bson_t *doc, void *ud)
{
    struct keys_state *st = ud;
    bson_iter_t it;
    uint32_t len;
    const char *s;
    char *copy;

    if (!bson_iter_init_find(&it, doc, MONGO_F_ID) ||
        !BSON_ITER_HOLDS_UTF8(&it))
        return true;
    st->rows++;
    if (c->reply.nkeys >= c->limit)
        return true; /* one more than the page: another page follows */
    s = bson_iter_utf8(&it, &len);
    copy = malloc(len ? len : 1);
    if (!copy) {
        fail_nomem(c);
        return false;
    }
    memcpy(copy, s, len);
    c->reply.keys[c->reply.nkeys++] = (kv_bytes){copy, len};
    return true;
}

static void op_keys(struct mongo_call *c, mongoc_collection_t *coll,
                    int64_t now)
{
    bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, id, proj, sort;
    struct keys_state st = {0};
    kv_bytes last;

    c->reply.keys = malloc((c->limit ? c->limit : 1) * sizeof *c->reply.keys);
    if (!c->reply.keys) {
        fail_nomem(c);
        return;
    }
    BSON_APPEND_DOCUMENT_BEGIN(&filter, MONGO_F_ID, &id);
    if (c->after.len)
        append_key(&id, "$gt", c->after);
    else
        BSON_APPEND_UTF8(&id, "$gte", ""); /* strings only */
    if (c->regex)
        BSON_APPEND_UTF8(&id, "$regex", c->regex);
    bson_append_document_end(&filter, &id);
    append_live(&filter, now);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, MONGO_F_ID, 1);
    bson_append_document_end(&opts, &proj);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
    BSON_APPEND_INT32(&sort, MONGO_F_ID, 1);
    bson_append_document_end(&opts, &sort);
    BSON_APPEND_INT64(&opts, "limit", (int64_t)c->limit + 1);
    BSON_APPEND_INT64(&opts, "batchSize", (int64_t)c->limit + 1);
    if (find_each(c, coll, &filter, &opts, keys_doc, &st) &&
        st.rows > c->limit && c->reply.nkeys > 0) {
        last = c->reply.keys[c->reply.nkeys - 1];
        c->out = malloc(kv_cursor_len(last.len) + 1);
        if (!c->out)
            fail_nomem(c);
        else
            c->reply.cursor =
                (kv_bytes){c->out, kv_cursor_encode(last, c->out)};
    }
    bson_destroy(&filter);
    bson_destroy(&opts);
}

static void op_clear(struct mongo_call *c, mongoc_collection_t *coll)
{
    bson_t filter = BSON_INITIALIZER;
    bson_error_t error;

    if (!mongoc_collection_delete_many(coll, &filter, NULL, NULL, &error))
        fail(c, &error);
    bson_destroy(&filter);
}

/* The TTL index Nuxeo creates: {ttl: 1}, expireAfterSeconds 0. */
static void op_index(struct mongo_call *c, mongoc_client_t *client,
                     const char *db)
{
    bson_t cmd = BSON_INITIALIZER, indexes, index, key;
    bson_error_t error;

    BSON_APPEND_UTF8(&cmd, "createIndexes", c->collection);
    BSON_APPEND_ARRAY_BEGIN(&cmd, "indexes", &indexes);
    BSON_APPEND_DOCUMENT_BEGIN(&indexes, "0", &index);
    BSON_APPEND_DOCUMENT_BEGIN(&index, "key", &key);
    BSON_APPEND_INT32(&key, MONGO_F_TTL, 1);
    bson_append_document_end(&index, &key);
    BSON_APPEND_UTF8(&index, "name", MONGO_TTL_INDEX);
    BSON_APPEND_INT32(&index, "expireAfterSeconds", 0);
    bson_append_document_end(&indexes, &index);
    bson_append_array_end(&cmd, &indexes);
    if (!mongoc_client_write_command_with_opts(client, db, &cmd, NULL, NULL,
                                               &error)) {
        fail(c, &error);
        /* The server refused this index (one of the same name with other
         * options exists): final, unlike an unavailable server. */
        if (!c->job.down && error.domain != MONGOC_ERROR_CLIENT) {
            c->job.status = KV_EINVAL;
            c->job.err.code = KV_EINVAL;
        }
    }
    bson_destroy(&cmd);
}

/* ------------------------------------------------------------------ */

void mongo__call_work(mongo_job *j, mongoc_client_t *client, const char *db)
{
    struct mongo_call *c = (struct mongo_call *)j;
    mongoc_collection_t *coll;
    int64_t now = wall_ms();

    if (c->index_only) {
        op_index(c, client, db);
        return;
    }
    coll = mongoc_client_get_collection(client, db, c->collection);
    if (!coll) {
        fail_nomem(c);
        return;
    }
    switch (c->op) {
    case KV_OP_GET:
        op_get(c, coll, now);
        break;
    case KV_OP_PUT:
        op_put(c, coll, now);
        break;
    case KV_OP_DEL:
        op_del(c, coll, now);
        break;
    case KV_OP_SET_TTL:
        op_set_ttl(c, coll, now);
        break;
    case KV_OP_CAS:
        op_cas(c, coll, now);
        break;
    case KV_OP_INCR:
        op_incr(c, coll);
        break;
    case KV_OP_MGET:
        op_mget(c, coll, now);
        break;
    case KV_OP_KEYS:
        op_keys(c, coll, now);
        break;
    case KV_OP_CLEAR:
        op_clear(c, coll);
        break;
    case KV_OP__COUNT:
        fail_code(c, KV_ENOTSUP, "unknown operation");
        break;
    }
    mongoc_collection_destroy(coll);
}

void mongo__call_clear(struct mongo_call *c)
{
    size_t i;

    free(c->out);
    c->out = NULL;
    if (c->reply.values) {
        for (i = 0; i < c->nkeys; i++)
            free((void *)c->reply.values[i].ptr);
        free(c->reply.values);
        c->reply.values = NULL;
    }
    if (c->reply.keys) {
        for (i = 0; i < c->reply.nkeys; i++)
            free((void *)c->reply.keys[i].ptr);
        free(c->reply.keys);
        c->reply.keys = NULL;
    }
}
