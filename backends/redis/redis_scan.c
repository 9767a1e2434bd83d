/*
 * redis_scan.c - the Redis backend's two methods that walk the keyspace
 * with SCAN: keys() (paging) and clear() (SCAN + UNLINK), with their pure
 * parts (glob escaping for MATCH, the cursor text, how much of a SCAN
 * batch a page takes). Both only ever look at keys under the store's
 * key_prefix: the MATCH pattern is the glob-escaped prefix, and every key
 * SCAN returns is checked against the prefix bytes again before use.
 *
 * SCAN returns batches whose size COUNT only suggests, and it cannot stop
 * inside one, while kvbus promises pages of at most `limit` keys. A page
 * therefore ends before a batch that does not fit, and a batch larger than
 * a whole page is cut by key hash: the cursor keeps the SCAN cursor of the
 * batch, the largest hash already returned and the next cursor SCAN gave,
 * and the next page re-runs the same SCAN step, skipping the keys at or
 * below the bound. A step re-run with the same answer covers the same part
 * of the keyspace, so keys added or removed meanwhile cannot make it miss
 * a key that stayed (the bound is on the keys, not on their position in
 * the reply). When the answer differs, Redis resized its table in between
 * and nothing is skipped: keys may repeat, none is missed.
 *
 * COUNT starts at the room left in the page, so that a batch usually fits,
 * and doubles after steps that matched little (a store that is a small part
 * of a shared database), up to REDIS_SCAN_COUNT_MAX; a page makes at most
 * REDIS_SCAN_STEPS_MAX SCAN calls and may therefore be short, even empty,
 * with a cursor to follow. Only a step run at the plain COUNT is ever cut,
 * so that its re-run gives the same batch.
 *
 * Runs on: the event loop thread (the pure functions on any).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "backends/redis/redis_int.h"

#define REDIS_SCAN_STEPS_MAX 16   /* SCAN round trips per keys() page */
#define REDIS_SCAN_COUNT_MIN 10   /* smallest COUNT hint of a keys() step */
#define REDIS_SCAN_COUNT_MAX 1000 /* largest, when matches are sparse */
#define REDIS_CLEAR_COUNT 1000    /* COUNT hint of a clear() step */
#define REDIS_COUNT_TEXT 24       /* decimal text of a 64-bit count */
#define REDIS_SCAN_DIGITS_MAX 20  /* decimal digits of a uint64_t */

size_t redis__glob_escape(const char *p, size_t len, char *out)
{
    size_t i, n = 0;

    for (i = 0; i < len; i++) {
        char c = p[i];
        if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\')
            out[n++] = '\\';
        out[n++] = c;
    }
    return n;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Parses canonical decimal (p, len) into *out; -1 if it is not. */
static int parse_u64(const char *p, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    size_t i;

    if (len == 0 || len > REDIS_SCAN_DIGITS_MAX || (p[0] == '0' && len > 1))
        return -1;
    for (i = 0; i < len; i++) {
        unsigned d = (unsigned)(unsigned char)p[i] - '0';
        if (d > 9 || v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int redis__cursor_decode(kv_bytes text, redis_cursor *out, kv_err *err)
{
    const char *p = text.ptr, *end = text.ptr + text.len, *dot, *dot2;
    size_t i;

    memset(out, 0, sizeof *out);
    if (text.len == 0)
        return 0;
    if (text.len > REDIS_CURSOR_MAX)
        return kv_err_set(err, KV_ECURSOR, "cursor is too long");
    dot = memchr(p, '.', text.len);
    if (parse_u64(p, (size_t)((dot ? dot : end) - p), &out->scan) != 0)
        goto bad;
    if (!dot)
        return 0;
    /* measured before forming dot2: a pointer past end is undefined */
    if ((size_t)(end - dot) <= 1 + REDIS_CURSOR_HASH_HEX)
        goto bad;
    dot2 = dot + 1 + REDIS_CURSOR_HASH_HEX;
    if (*dot2 != '.')
        goto bad;
    for (i = 0; i < REDIS_CURSOR_HASH_HEX; i++) {
        int h = hex_digit(dot[1 + i]);
        if (h < 0)
            goto bad;
        out->after = out->after << 4 | (uint64_t)h;
    }
    if (parse_u64(dot2 + 1, (size_t)(end - dot2 - 1), &out->next) != 0)
        goto bad;
    out->bounded = true;
    return 0;

bad:
    memset(out, 0, sizeof *out);
    return kv_err_set(err, KV_ECURSOR,
                      "cursor was not made by this store's keys listing");
}

/* Writes v in decimal at buf; returns the length. */
static size_t format_u64(uint64_t v, char *buf)
{
    char digits[REDIS_SCAN_DIGITS_MAX];
    size_t n = 0, i = 0;

    do {
        digits[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i)
        buf[n++] = digits[--i];
    return n;
}

size_t redis__cursor_encode(const redis_cursor *c, char *buf)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = format_u64(c->scan, buf);
    int k;

    if (c->bounded) {
        buf[n++] = '.';
        for (k = REDIS_CURSOR_HASH_HEX - 1; k >= 0; k--)
            buf[n++] = hex[(c->after >> (4 * k)) & 0xF];
        buf[n++] = '.';
        n += format_u64(c->next, buf + n);
    }
    buf[n] = '\0';
    return n;
}

uint64_t redis__key_hash(const char *p, size_t len)
{
    return XXH3_64bits(p, len);
}

static int scan_key_cmp(const void *a, const void *b)
{
    const redis_scan_key *x = a, *y = b;

    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

size_t redis__scan_pick(redis_scan_key *keys, size_t n, size_t room,
                        bool may_split)
{
    size_t take;

    if (n <= room)
        return n;
    if (!may_split)
        return 0;
    qsort(keys, n, sizeof *keys, scan_key_cmp);
    /* Never split one hash value between two pages. */
    take = room;
    while (take > 0 && keys[take - 1].hash == keys[take].hash)
        take--;
    if (take == 0) {
        take = room;
        while (take < n && keys[take].hash == keys[room - 1].hash)
            take++;
    }
    return take;
}

/* A keys() page being gathered over one or more SCAN steps. */
struct redis_keys {
    struct redis_op base; /* must be first */
    redis_cursor cur;     /* the step being run */
    size_t limit;
    char *match; /* key_prefix + prefix: what every key starts with */
    size_t match_len;
    char *pattern; /* match glob-escaped, then '*' */
    size_t pattern_len;
    kv_bytes *keys; /* copies without key_prefix, this page */
    size_t nkeys, cap;
    unsigned steps;
    size_t growth; /* COUNT factor: doubles while steps match little */
    size_t count;  /* COUNT of the step in flight */
    char cursor[REDIS_CURSOR_MAX + 1];
};

/* A clear() under way: SCAN, UNLINK what it found, until SCAN ends. */
struct redis_clear {
    struct redis_op base; /* must be first */
    uint64_t next;        /* SCAN cursor to issue after the UNLINK */
    char *pattern;        /* escaped key_prefix, then '*' */
    size_t pattern_len;
};

/* ------------------------------------------------------------------ */
/* keys                                                                 */

/*
 * A MATCH pattern for keys starting with the bytes a (alen) then b (blen):
 * both glob-escaped, then '*'. NUL-terminated in *out; NULL on ENOMEM.
 */
static char *pattern_new(const char *a, size_t alen, const char *b, size_t blen,
                         size_t *out_len)
{
    char *p = malloc(2 * (alen + blen) + 2);
    size_t n;

    if (!p)
        return NULL;
    n = redis__glob_escape(a, alen, p);
    n += redis__glob_escape(b, blen, p + n);
    p[n++] = '*';
    p[n] = '\0';
    *out_len = n;
    return p;
}

static void keys_free(struct redis_keys *k)
{
    size_t i;

    for (i = 0; i < k->nkeys; i++)
        free((char *)k->keys[i].ptr);
    free(k->keys);
    free(k->match);
    free(k->pattern);
    free(k);
}

/* Answers the page gathered so far; with a cursor when more may follow. */
static void keys_finish(struct redis_keys *k, bool more)
{
    kv_reply r = {.op = KV_OP_KEYS};

    r.keys = k->keys;
    r.nkeys = k->nkeys;
    if (more)
        r.cursor =
            (kv_bytes){k->cursor, redis__cursor_encode(&k->cur, k->cursor)};
    k->base.done(0, &r, NULL, k->base.ud);
    keys_free(k);
}

static void keys_fail(struct redis_keys *k, int status, const kv_err *err)
{
    k->base.done(status, NULL, err, k->base.ud);
    keys_free(k);
}

static void on_keys_scan(int status, const redisReply *reply, const kv_err *err,
                         void *ud);

/*
 * Issues the SCAN step k->cur.scan with COUNT = the room left (at least
 * REDIS_SCAN_COUNT_MIN) times the growth factor, at most
 * REDIS_SCAN_COUNT_MAX. 0 or an error (the callback is not called).
 */
static int keys_step(struct redis_keys *k, kv_err *err)
{
    size_t room = k->limit - k->nkeys;
    char scan[REDIS_COUNT_TEXT], count[REDIS_COUNT_TEXT];
    const char *argv[] = {"SCAN", scan, "MATCH", k->pattern, "COUNT", count};
    size_t lens[] = {4, 0, 5, k->pattern_len, 5, 0};

    k->count = room < REDIS_SCAN_COUNT_MIN ? REDIS_SCAN_COUNT_MIN : room;
    if (k->growth > 1)
        k->count = k->count > REDIS_SCAN_COUNT_MAX / k->growth
                       ? REDIS_SCAN_COUNT_MAX
                       : k->count * k->growth;
    if (k->count < room)
        k->count = room; /* a page larger than COUNT_MAX */
    lens[1] = (size_t)snprintf(scan, sizeof scan, "%llu",
                               (unsigned long long)k->cur.scan);
    lens[5] = (size_t)snprintf(count, sizeof count, "%zu", k->count);
    return redis_conn_command(k->base.rb->conn, 6, argv, lens, on_keys_scan, k,
                              err);
}

/* Reads SCAN's reply: the next cursor and the array of keys. */
static bool scan_reply_parse(const redisReply *reply, uint64_t *next,
                             const redisReply **batch)
{
    const redisReply *c;
    redis_cursor parsed;
    kv_err ignored;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2)
        return false;
    c = reply->element[0];
    *batch = reply->element[1];
    if (c->type != REDIS_REPLY_STRING || (*batch)->type != REDIS_REPLY_ARRAY ||
        memchr(c->str, '.', c->len) ||
        redis__cursor_decode((kv_bytes){c->str, c->len}, &parsed, &ignored) !=
            0)
        return false;
    *next = parsed.scan;
    return true;
}

/* True when e is a key of the listing (SCAN's MATCH already said so). */
static bool keys_match(const struct redis_keys *k, const redisReply *e)
{
    return e->type == REDIS_REPLY_STRING && e->len >= k->match_len &&
           memcmp(e->str, k->match, k->match_len) == 0;
}

/* Copies the keys chosen (sel[0..take)) of batch into the page. */
static int keys_take(struct redis_keys *k, const redisReply *batch,
                     const redis_scan_key *sel, size_t take)
{
    size_t strip = k->base.rb->prefix_len, i;

    if (k->nkeys + take > k->cap) { /* only past limit, see scan_pick */
        kv_bytes *grown = realloc(k->keys, (k->nkeys + take) * sizeof *grown);
        if (!grown)
            return KV_ENOMEM;
        k->keys = grown;
        k->cap = k->nkeys + take;
    }
    for (i = 0; i < take; i++) {
        const redisReply *e = batch->element[sel[i].index];
        size_t len = e->len - strip;
        char *copy = malloc(len ? len : 1);
        if (!copy)
            return KV_ENOMEM;
        memcpy(copy, e->str + strip, len);
        k->keys[k->nkeys++] = (kv_bytes){copy, len};
    }
    return 0;
}

/*
 * One SCAN step answered: the page takes what redis__scan_pick allows,
 * then ends or runs the next step.
 */
static void on_keys_scan(int status, const redisReply *reply, const kv_err *err,
                         void *ud)
{
    struct redis_keys *k = ud;
    size_t strip = k->base.rb->prefix_len, n = 0, take, i;
    const redisReply *batch;
    redis_scan_key *sel = NULL;
    uint64_t next, last = 0;
    kv_err e = {0};
    bool skip;
    int rc;

    if (status != 0) {
        keys_fail(k, status, err);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        keys_fail(k, redis__reply_error(&k->base, reply, &e), &e);
        return;
    }
    if (!scan_reply_parse(reply, &next, &batch)) {
        kv_err_set(&e, KV_EUNAVAIL, "%s: redis %s: unexpected reply to SCAN",
                   k->base.rb->label, redis_conn_addr(k->base.rb->conn));
        keys_fail(k, KV_EUNAVAIL, &e);
        return;
    }
    /* Skip what an earlier page took, if the step still covers the same
     * part of the keyspace (same next cursor). */
    skip = k->cur.bounded && k->cur.next == next;
    if (batch->elements && !(sel = malloc(batch->elements * sizeof *sel)))
        goto nomem;
    for (i = 0; i < batch->elements; i++) {
        const redisReply *key = batch->element[i];
        uint64_t h;
        if (!keys_match(k, key))
            continue;
        h = redis__key_hash(key->str + strip, key->len - strip);
        if (skip && h <= k->cur.after)
            continue;
        sel[n++] = (redis_scan_key){h, i};
    }
    /* A cut is only safe when a re-run uses the same COUNT: an empty
     * page and no growth (COUNT then depends on limit alone). */
    take = redis__scan_pick(sel, n, k->limit - k->nkeys,
                            k->nkeys == 0 && k->growth == 1);
    if (take)
        last = sel[take - 1].hash;
    rc = keys_take(k, batch, sel, take);
    free(sel);
    if (rc != 0)
        goto nomem;

    if (take == 0 && n > 0 && k->nkeys == 0 &&
        ++k->steps < REDIS_SCAN_STEPS_MAX) {
        /* Too much for an empty page at a grown COUNT: run the step again
         * at the plain COUNT, which may be cut. */
        k->growth = 1;
        goto next_step;
    }
    if (take < n) {
        /* The batch did not fit: re-run this step for the next page,
         * skipping what this one took (when it took anything). */
        if (take > 0)
            k->cur = (redis_cursor){.scan = k->cur.scan,
                                    .bounded = true,
                                    .after = last,
                                    .next = next};
        keys_finish(k, true);
        return;
    }
    if (next == 0) {
        keys_finish(k, false);
        return;
    }
    k->cur = (redis_cursor){.scan = next};
    if (n < k->count / 2 && k->growth < REDIS_SCAN_COUNT_MAX)
        k->growth *= 2; /* sparse: look further per step */
    if (k->nkeys >= k->limit || ++k->steps >= REDIS_SCAN_STEPS_MAX) {
        keys_finish(k, true);
        return;
    }
next_step:
    rc = keys_step(k, &e);
    if (rc != 0)
        keys_fail(k, rc, &e);
    return;

nomem:
    redis__err_nomem(k->base.rb, &e);
    keys_fail(k, KV_ENOMEM, &e);
}

int redis__kv_keys(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                   kv_err *err)
{
    struct redis_backend *rb = (struct redis_backend *)b;
    struct redis_keys *k;
    int rc;

    k = (struct redis_keys *)redis__op_new(rb, req, sizeof *k, done, ud);
    if (!k)
        return redis__err_nomem(rb, err);
    rc = redis__cursor_decode(req->cursor, &k->cur, err);
    if (rc != 0) {
        free(k);
        return rc;
    }
    k->limit = req->limit ? req->limit : KV_KEYS_LIMIT_DEFAULT;
    k->growth = 1;
    k->match_len = rb->prefix_len + req->prefix.len;
    k->match = malloc(k->match_len);
    k->keys = malloc(k->limit * sizeof *k->keys);
    k->cap = k->limit;
    k->pattern = pattern_new(rb->prefix, rb->prefix_len, req->prefix.ptr,
                             req->prefix.len, &k->pattern_len);
    if (!k->match || !k->keys || !k->pattern) {
        keys_free(k);
        return redis__err_nomem(rb, err);
    }
    memcpy(k->match, rb->prefix, rb->prefix_len);
    if (req->prefix.len)
        memcpy(k->match + rb->prefix_len, req->prefix.ptr, req->prefix.len);
    rc = keys_step(k, err);
    if (rc != 0)
        keys_free(k);
    return rc;
}

/* ------------------------------------------------------------------ */
/* clear                                                                */

static void clear_free(struct redis_clear *cl)
{
    free(cl->pattern);
    free(cl);
}

static void clear_fail(struct redis_clear *cl, int status, const kv_err *err)
{
    cl->base.done(status, NULL, err, cl->base.ud);
    clear_free(cl);
}

static void on_clear_scan(int status, const redisReply *reply,
                          const kv_err *err, void *ud);

/* Issues SCAN cl->next. */
static int clear_scan(struct redis_clear *cl, kv_err *err)
{
    char scan[REDIS_COUNT_TEXT], count[REDIS_COUNT_TEXT];
    const char *argv[] = {"SCAN", scan, "MATCH", cl->pattern, "COUNT", count};
    size_t lens[] = {4, 0, 5, cl->pattern_len, 5, 0};

    lens[1] = (size_t)snprintf(scan, sizeof scan, "%llu",
                               (unsigned long long)cl->next);
    lens[5] = (size_t)snprintf(count, sizeof count, "%d", REDIS_CLEAR_COUNT);
    return redis_conn_command(cl->base.rb->conn, 6, argv, lens, on_clear_scan,
                              cl, err);
}

/* Runs the next SCAN, or answers when the last one ended the walk. */
static void clear_continue(struct redis_clear *cl)
{
    kv_reply r = {.op = KV_OP_CLEAR};
    kv_err e = {0};
    int rc;

    if (cl->next == 0) {
        cl->base.done(0, &r, NULL, cl->base.ud);
        clear_free(cl);
        return;
    }
    rc = clear_scan(cl, &e);
    if (rc != 0)
        clear_fail(cl, rc, &e);
}

/* UNLINK answered. */
static void on_clear_unlink(int status, const redisReply *reply,
                            const kv_err *err, void *ud)
{
    struct redis_clear *cl = ud;
    kv_err e = {0};

    if (status != 0) {
        clear_fail(cl, status, err);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        clear_fail(cl, redis__reply_error(&cl->base, reply, &e), &e);
        return;
    }
    clear_continue(cl);
}

/* SCAN answered: UNLINK the keys under this store's prefix, if any. */
static void on_clear_scan(int status, const redisReply *reply,
                          const kv_err *err, void *ud)
{
    struct redis_clear *cl = ud;
    const struct redis_backend *rb = cl->base.rb;
    const redisReply *batch;
    const char **argv = NULL;
    size_t *lens = NULL, n = 1, i;
    kv_err e = {0};
    int rc;

    if (status != 0) {
        clear_fail(cl, status, err);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        clear_fail(cl, redis__reply_error(&cl->base, reply, &e), &e);
        return;
    }
    if (!scan_reply_parse(reply, &cl->next, &batch)) {
        kv_err_set(&e, KV_EUNAVAIL, "%s: redis %s: unexpected reply to SCAN",
                   rb->label, redis_conn_addr(rb->conn));
        clear_fail(cl, KV_EUNAVAIL, &e);
        return;
    }
    if (batch->elements == 0) {
        clear_continue(cl);
        return;
    }
    argv = malloc((batch->elements + 1) * sizeof *argv);
    lens = malloc((batch->elements + 1) * sizeof *lens);
    if (!argv || !lens) {
        free(argv);
        free(lens);
        redis__err_nomem(rb, &e);
        clear_fail(cl, KV_ENOMEM, &e);
        return;
    }
    argv[0] = "UNLINK";
    lens[0] = 6;
    for (i = 0; i < batch->elements; i++) {
        const redisReply *key = batch->element[i];
        /* Never anything outside this store's prefix. */
        if (key->type != REDIS_REPLY_STRING || key->len < rb->prefix_len ||
            memcmp(key->str, rb->prefix, rb->prefix_len) != 0)
            continue;
        argv[n] = key->str;
        lens[n++] = key->len;
    }
    if (n == 1) {
        free(argv);
        free(lens);
        clear_continue(cl);
        return;
    }
    rc = redis_conn_command(rb->conn, (int)n, argv, lens, on_clear_unlink, cl,
                            &e);
    free(argv);
    free(lens);
    if (rc != 0)
        clear_fail(cl, rc, &e);
}

int redis__kv_clear(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                    kv_err *err)
{
    struct redis_backend *rb = (struct redis_backend *)b;
    struct redis_clear *cl;
    int rc;

    cl = (struct redis_clear *)redis__op_new(rb, req, sizeof *cl, done, ud);
    if (!cl)
        return redis__err_nomem(rb, err);
    cl->pattern =
        pattern_new(rb->prefix, rb->prefix_len, "", 0, &cl->pattern_len);
    if (!cl->pattern) {
        clear_free(cl);
        return redis__err_nomem(rb, err);
    }
    rc = clear_scan(cl, err);
    if (rc != 0)
        clear_free(cl);
    return rc;
}
