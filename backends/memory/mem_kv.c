/*
 * mem_kv.c - the memory backend: a store held in a hash table in this
 * process, answering every call at once on the event loop thread.
 *
 * The table is an array of 2^n singly linked buckets indexed by the low
 * bits of XXH3-64 of the key. It doubles when there are more entries than
 * buckets and halves again when it falls below an eighth full, rehashing
 * everything in one step. Each entry holds its key and value bytes inline
 * and an absolute expiry on b->now_ms's clock. Expiry is checked on every
 * read, so an expired key is absent at once; a lookup that meets an expired
 * entry frees it, and a timer on the loop sweeps a bounded number of
 * buckets per tick for the rest. keys() walks the entries in the order of
 * their bit-reversed hashes, which takes the buckets in Redis's
 * reverse-binary cursor order at any table size; its cursor is a position
 * in that order, so a page can end inside a bucket and never holds more
 * than `limit` keys (bar keys with equal 64-bit hashes), and a key present
 * for the whole scan is returned exactly once even when the table grows or
 * shrinks between pages.
 *
 * Left out: persistence, incremental rehashing (a resize is O(n) on the
 * loop), and any bound on total memory other than the per-value limits the
 * core enforces.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>
#include <xxhash.h>

#include "backends/memory/memory.h"

#define MEM_BUCKETS_MIN 16              /* smallest table, a power of two */
#define MEM_SHRINK_FILL_DIV 8           /* halve below 1/8 entry per bucket */
#define MEM_SWEEP_INTERVAL_MS 100       /* between two sweep ticks */
#define MEM_SWEEP_BUCKETS_PER_TICK 1024 /* examined per tick */
#define MEM_SCAN_BUCKETS_PER_KEY 10     /* keys(): buckets per key asked */
#define MEM_SCAN_ALLOC_MIN 16           /* keys(): first array capacity */
#define MEM_MS_PER_S 1000
#define MEM_CURSOR_TEXT_MAX 20 /* decimal digits of a uint64_t */

/* One key and its value, bytes inline: key_len key bytes, then value. */
struct mem_entry {
    struct mem_entry *next; /* bucket chain */
    uint64_t hash;          /* XXH3-64 of the key */
    uint64_t expires_ms;    /* absolute, on b->now_ms's clock; 0 = never */
    size_t key_len;
    size_t value_len;
    char data[]; /* key bytes, then value bytes; not NUL-terminated */
};

struct mem_backend {
    struct kv_backend base;     /* must be first */
    struct mem_entry **buckets; /* nbuckets chains */
    size_t nbuckets;            /* a power of two, >= MEM_BUCKETS_MIN */
    size_t count;               /* entries, expired ones not yet freed too */
    uint64_t bytes;             /* entries: overhead + key + value */
    size_t sweep_pos;           /* next bucket the sweep examines */
    uv_timer_t *sweep_timer;    /* own allocation; NULL without a loop */
};

void *(*mem__malloc)(size_t size) = malloc;

static inline struct mem_backend *mem_of(kv_backend *b)
{
    return (struct mem_backend *)b;
}

static inline const char *mem_entry_value(const struct mem_entry *e)
{
    return e->data + e->key_len;
}

static inline uint64_t mem_entry_bytes(const struct mem_entry *e)
{
    return sizeof(*e) + e->key_len + e->value_len;
}

static inline bool mem_expired(const struct mem_entry *e, uint64_t now)
{
    return e->expires_ms != 0 && now >= e->expires_ms;
}

/* The absolute expiry of a TTL given now; 0 (never) when ttl_s <= 0. */
static uint64_t mem_expiry(uint64_t now, int64_t ttl_s)
{
    return ttl_s > 0 ? now + (uint64_t)ttl_s * MEM_MS_PER_S : 0;
}

static uint64_t mem_hash(kv_bytes key)
{
    return XXH3_64bits(key.ptr, key.len);
}

/* The fallback clock when the core installed none: libuv's monotonic one. */
static uint64_t mem_default_now_ms(kv_backend *b)
{
    (void)b;
    return uv_hrtime() / 1000000u;
}

/*
 * A new entry holding copies of key and value, not yet in the table.
 * Returns NULL when allocation fails.
 */
static struct mem_entry *mem_entry_new(kv_bytes key, uint64_t hash,
                                       kv_bytes value, uint64_t expires_ms)
{
    struct mem_entry *e = mem__malloc(sizeof(*e) + key.len + value.len);

    if (!e)
        return NULL;
    e->next = NULL;
    e->hash = hash;
    e->expires_ms = expires_ms;
    e->key_len = key.len;
    e->value_len = value.len;
    memcpy(e->data, key.ptr, key.len);
    if (value.len)
        memcpy(e->data + key.len, value.ptr, value.len);
    return e;
}

/* Unlinks e, which *link points to, and frees it. */
static void mem_remove(struct mem_backend *mb, struct mem_entry **link,
                       struct mem_entry *e)
{
    *link = e->next;
    mb->count--;
    mb->bytes -= mem_entry_bytes(e);
    free(e);
}

/*
 * Finds the live entry for key. An expired entry for it is freed on the
 * way and reported absent. *linkp is set to the slot pointing to the entry
 * found, or to the head of its bucket when absent (where an insert goes).
 * The table is not resized.
 */
static struct mem_entry *mem_find(struct mem_backend *mb, kv_bytes key,
                                  uint64_t hash, uint64_t now,
                                  struct mem_entry ***linkp)
{
    struct mem_entry **head = &mb->buckets[hash & (mb->nbuckets - 1)];
    struct mem_entry **link, *e;

    for (link = head; (e = *link) != NULL; link = &e->next) {
        if (e->hash != hash || e->key_len != key.len ||
            memcmp(e->data, key.ptr, key.len) != 0)
            continue;
        if (mem_expired(e, now)) {
            mem_remove(mb, link, e);
            break;
        }
        *linkp = link;
        return e;
    }
    *linkp = head;
    return NULL;
}

/*
 * Rehashes every entry into a table of n buckets (a power of two). When
 * the new array cannot be allocated the table stays as it is, which is
 * still correct, only slower.
 */
static void mem_resize(struct mem_backend *mb, size_t n)
{
    struct mem_entry **nb = mem__malloc(n * sizeof(*nb));
    size_t i;

    if (!nb)
        return;
    memset(nb, 0, n * sizeof(*nb));
    for (i = 0; i < mb->nbuckets; i++) {
        struct mem_entry *e = mb->buckets[i], *next;
        for (; e; e = next) {
            struct mem_entry **slot = &nb[e->hash & (n - 1)];
            next = e->next;
            e->next = *slot;
            *slot = e;
        }
    }
    free(mb->buckets);
    mb->buckets = nb;
    mb->nbuckets = n;
    mb->sweep_pos &= n - 1;
}

/* Halves the table while it is less than 1/MEM_SHRINK_FILL_DIV full. */
static void mem_maybe_shrink(struct mem_backend *mb)
{
    size_t n = mb->nbuckets;

    while (n > MEM_BUCKETS_MIN && mb->count < n / MEM_SHRINK_FILL_DIV)
        n /= 2;
    if (n != mb->nbuckets)
        mem_resize(mb, n);
}

/*
 * Links a new entry at *head (from mem_find) and grows the table when it
 * then holds more entries than buckets. Invalidates every link.
 */
static void mem_insert(struct mem_backend *mb, struct mem_entry **head,
                       struct mem_entry *e)
{
    e->next = *head;
    *head = e;
    mb->count++;
    mb->bytes += mem_entry_bytes(e);
    if (mb->count > mb->nbuckets)
        mem_resize(mb, mb->nbuckets * 2);
}

/*
 * Gives the entry e (pointed to by *link) a new value and expiry. Reuses
 * e when the length is unchanged, otherwise swaps in a new entry. Returns
 * 0, or KV_ENOMEM with e untouched. value may point into e itself.
 */
static int mem_update(struct mem_backend *mb, struct mem_entry **link,
                      struct mem_entry *e, kv_bytes value, uint64_t expires_ms)
{
    struct mem_entry *ne;

    if (value.len == e->value_len) {
        if (value.len)
            memmove(e->data + e->key_len, value.ptr, value.len);
        e->expires_ms = expires_ms;
        return 0;
    }
    ne = mem_entry_new((kv_bytes){e->data, e->key_len}, e->hash, value,
                       expires_ms);
    if (!ne)
        return KV_ENOMEM;
    ne->next = e->next;
    *link = ne;
    mb->bytes += mem_entry_bytes(ne);
    mb->bytes -= mem_entry_bytes(e);
    free(e);
    return 0;
}

/*
 * Sets key to value with the given expiry, creating it when absent (e and
 * link come from mem_find). Returns 0 or KV_ENOMEM with nothing changed.
 */
static int mem_store(struct mem_backend *mb, kv_bytes key, uint64_t hash,
                     struct mem_entry **link, struct mem_entry *e,
                     kv_bytes value, uint64_t expires_ms)
{
    if (e)
        return mem_update(mb, link, e, value, expires_ms);
    e = mem_entry_new(key, hash, value, expires_ms);
    if (!e)
        return KV_ENOMEM;
    mem_insert(mb, link, e);
    return 0;
}

static int mem_err_nomem(kv_err *err, const char *what)
{
    return kv_err_set(err, KV_ENOMEM, "memory backend: out of memory (%s)",
                      what);
}

/* One sweep timer tick; data is NULL once close has begun. */
static void mem_sweep_tick(uv_timer_t *t)
{
    if (t->data)
        mem__sweep(t->data, MEM_SWEEP_BUCKETS_PER_TICK);
}

/* Frees the timer handle; must not touch the backend, already freed. */
static void mem_timer_closed(uv_handle_t *h)
{
    free(h);
}

/*
 * Allocates the initial table and, when the instance has a loop, starts
 * the sweep timer (unreferenced: it does not keep the loop alive). conf is
 * not used. On failure everything is released again and close is harmless.
 */
static int mem_open(kv_backend *b, const kv_store_conf *conf, kv_err *err)
{
    struct mem_backend *mb = mem_of(b);
    int rc;

    (void)conf;
    if (!b->now_ms)
        b->now_ms = mem_default_now_ms;
    mb->buckets = mem__malloc(MEM_BUCKETS_MIN * sizeof(*mb->buckets));
    if (!mb->buckets)
        return mem_err_nomem(err, "table");
    memset(mb->buckets, 0, MEM_BUCKETS_MIN * sizeof(*mb->buckets));
    mb->nbuckets = MEM_BUCKETS_MIN;
    if (!b->loop)
        return 0;

    mb->sweep_timer = mem__malloc(sizeof(*mb->sweep_timer));
    if (!mb->sweep_timer) {
        rc = mem_err_nomem(err, "sweep timer");
        goto fail;
    }
    rc = uv_timer_init(b->loop, mb->sweep_timer);
    if (rc != 0) {
        free(mb->sweep_timer);
        rc = kv_err_set(err, KV_EUNAVAIL, "memory backend: timer: %s",
                        uv_strerror(rc));
        goto fail;
    }
    mb->sweep_timer->data = mb;
    uv_timer_start(mb->sweep_timer, mem_sweep_tick, MEM_SWEEP_INTERVAL_MS,
                   MEM_SWEEP_INTERVAL_MS);
    uv_unref((uv_handle_t *)mb->sweep_timer);
    return 0;

fail:
    mb->sweep_timer = NULL;
    free(mb->buckets);
    mb->buckets = NULL;
    mb->nbuckets = 0;
    return rc;
}

/* Frees every entry, leaving all buckets empty. */
static void mem_free_entries(struct mem_backend *mb)
{
    size_t i;

    for (i = 0; i < mb->nbuckets; i++) {
        struct mem_entry *e = mb->buckets[i], *next;
        for (; e; e = next) {
            next = e->next;
            free(e);
        }
        mb->buckets[i] = NULL;
    }
    mb->count = 0;
    mb->bytes = 0;
}

/*
 * Stops the sweep and frees the table. The timer handle is closed
 * asynchronously and freed by its close callback, after the core has
 * freed the instance. Safe on an instance whose open failed.
 */
static void mem_close(kv_backend *b)
{
    struct mem_backend *mb = mem_of(b);

    if (mb->sweep_timer) {
        uv_timer_stop(mb->sweep_timer);
        mb->sweep_timer->data = NULL;
        uv_close((uv_handle_t *)mb->sweep_timer, mem_timer_closed);
        mb->sweep_timer = NULL;
    }
    mem_free_entries(mb);
    free(mb->buckets);
    mb->buckets = NULL;
    mb->nbuckets = 0;
}

/*
 * See memory.h. Resumes where the previous step stopped, frees what has
 * expired by b->now_ms, then shrinks the table if that emptied it enough.
 */
size_t mem__sweep(kv_backend *b, size_t buckets)
{
    struct mem_backend *mb = mem_of(b);
    uint64_t now = b->now_ms(b);
    size_t freed = 0, i;

    if (buckets > mb->nbuckets)
        buckets = mb->nbuckets;
    for (i = 0; i < buckets; i++) {
        struct mem_entry **link = &mb->buckets[mb->sweep_pos], *e;
        while ((e = *link) != NULL) {
            if (mem_expired(e, now)) {
                mem_remove(mb, link, e);
                freed++;
            } else {
                link = &e->next;
            }
        }
        mb->sweep_pos = (mb->sweep_pos + 1) & (mb->nbuckets - 1);
    }
    if (freed)
        mem_maybe_shrink(mb);
    return freed;
}

/* get: the value and whole seconds left (rounded up), or found = false. */
static int mem_get(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                   kv_err *err)
{
    struct mem_backend *mb = mem_of(b);
    uint64_t now = b->now_ms(b);
    struct mem_entry **link, *e;
    kv_reply r = {.op = req->op};

    (void)err;
    e = mem_find(mb, req->key, mem_hash(req->key), now, &link);
    if (e) {
        r.found = true;
        r.value = (kv_bytes){mem_entry_value(e), e->value_len};
        if (e->expires_ms)
            r.ttl_left_s = (int64_t)((e->expires_ms - now + MEM_MS_PER_S - 1) /
                                     MEM_MS_PER_S);
    }
    done(0, &r, NULL, ud);
    return 0;
}

/* put: stores the value; the TTL becomes exactly req->ttl_s. */
static int mem_put(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                   kv_err *err)
{
    struct mem_backend *mb = mem_of(b);
    uint64_t now = b->now_ms(b), hash = mem_hash(req->key);
    struct mem_entry **link, *e;
    kv_reply r = {.op = req->op};

    e = mem_find(mb, req->key, hash, now, &link);
    if (mem_store(mb, req->key, hash, link, e, req->value,
                  mem_expiry(now, req->ttl_s)) != 0)
        return mem_err_nomem(err, "put");
    done(0, &r, NULL, ud);
    return 0;
}

/* del: found says whether a live key was removed. */
static int mem_del(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                   kv_err *err)
{
    struct mem_backend *mb = mem_of(b);
    struct mem_entry **link, *e;
    kv_reply r = {.op = req->op};

    (void)err;
    e = mem_find(mb, req->key, mem_hash(req->key), b->now_ms(b), &link);
    if (e) {
        mem_remove(mb, link, e);
        mem_maybe_shrink(mb);
        r.found = true;
    }
    done(0, &r, NULL, ud);
    return 0;
}

/* set_ttl: found when the key is live; ttl 0 removes its expiry. */
static int mem_set_ttl(kv_backend *b, const kv_req *req, kv_done_cb done,
                       void *ud, kv_err *err)
{
    struct mem_backend *mb = mem_of(b);
    uint64_t now = b->now_ms(b);
    struct mem_entry **link, *e;
    kv_reply r = {.op = req->op};

    (void)err;
    e = mem_find(mb, req->key, mem_hash(req->key), now, &link);
    if (e) {
        e->expires_ms = mem_expiry(now, req->ttl_s);
        r.found = true;
    }
    done(0, &r, NULL, ud);
    return 0;
}

/*
 * cas: compares the current value with req->expected byte for byte (or
 * checks absence when !has_expected); on a match stores req->value with
 * TTL req->ttl_s, or deletes when !has_value. found = swapped. KV_ENOMEM
 * when the new value cannot be stored, with nothing changed.
 */
static int mem_cas(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                   kv_err *err)
{
    struct mem_backend *mb = mem_of(b);
    uint64_t now = b->now_ms(b), hash = mem_hash(req->key);
    struct mem_entry **link, *e;
    kv_reply r = {.op = req->op};
    bool match;

    e = mem_find(mb, req->key, hash, now, &link);
    if (!req->has_expected)
        match = e == NULL;
    else
        match =
            e && e->value_len == req->expected.len &&
            (e->value_len == 0 ||
             memcmp(mem_entry_value(e), req->expected.ptr, e->value_len) == 0);
    if (match && req->has_value) {
        if (mem_store(mb, req->key, hash, link, e, req->value,
                      mem_expiry(now, req->ttl_s)) != 0)
            return mem_err_nomem(err, "cas");
    } else if (match && e) {
        mem_remove(mb, link, e);
        mem_maybe_shrink(mb);
    }
    r.found = match;
    done(0, &r, NULL, ud);
    return 0;
}

/*
 * incr: adds req->delta to the integer the key holds (0 when absent),
 * keeping its TTL, and answers the new value. KV_ENOTINT when the value is
 * not canonical decimal text, KV_EOVERFLOW when the sum leaves int64,
 * KV_ENOMEM; each changes nothing.
 */
static int mem_incr(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                    kv_err *err)
{
    struct mem_backend *mb = mem_of(b);
    uint64_t hash = mem_hash(req->key);
    struct mem_entry **link, *e;
    kv_reply r = {.op = req->op};
    int64_t cur = 0, delta = req->delta;
    char text[KV_INT_TEXT_MAX + 1];
    kv_bytes v;

    e = mem_find(mb, req->key, hash, b->now_ms(b), &link);
    if (e &&
        kv_parse_int64((kv_bytes){mem_entry_value(e), e->value_len}, &cur) != 0)
        return kv_err_set(err, KV_ENOTINT,
                          "value is not a 64-bit decimal integer");
    if ((delta > 0 && cur > INT64_MAX - delta) ||
        (delta < 0 && cur < INT64_MIN - delta))
        return kv_err_set(err, KV_EOVERFLOW,
                          "incrementing %lld by %lld overflows 64 bits",
                          (long long)cur, (long long)delta);
    r.number = cur + delta;
    v = (kv_bytes){text, kv_format_int64(r.number, text)};
    if (mem_store(mb, req->key, hash, link, e, v, e ? e->expires_ms : 0) != 0)
        return mem_err_nomem(err, "incr");
    done(0, &r, NULL, ud);
    return 0;
}

/*
 * mget: values[i] answers keys[i], ptr NULL when absent or expired. The
 * array lives until done returns. KV_ENOMEM when it cannot be allocated.
 */
static int mem_mget(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                    kv_err *err)
{
    struct mem_backend *mb = mem_of(b);
    uint64_t now = b->now_ms(b);
    kv_reply r = {.op = req->op};
    size_t i;

    if (req->nkeys) {
        r.values = mem__malloc(req->nkeys * sizeof(*r.values));
        if (!r.values)
            return mem_err_nomem(err, "mget");
    }
    for (i = 0; i < req->nkeys; i++) {
        struct mem_entry **link;
        struct mem_entry *e =
            mem_find(mb, req->keys[i], mem_hash(req->keys[i]), now, &link);
        r.values[i] = e ? (kv_bytes){mem_entry_value(e), e->value_len}
                        : (kv_bytes){NULL, 0};
    }
    done(0, &r, NULL, ud);
    free(r.values);
    return 0;
}

/*
 * The keys scan. An entry's scan position is its hash with the bits
 * reversed. The low n bits of the hash pick its bucket in a table of 2^n
 * buckets, so the positions of one bucket share their top n bits and fill
 * one contiguous range, and taking the buckets in Redis's reverse-binary
 * cursor order walks those ranges in ascending order, at any table size.
 * A cursor is the position the next page starts at: each page returns the
 * live matching entries whose positions lie in [start, next), so the pages
 * of a scan cover disjoint ranges whatever the table did between them.
 */

/* One candidate for a keys page. */
struct mem_scan_item {
    uint64_t pos; /* scan position: mem_rev64(e->hash) */
    const struct mem_entry *e;
};

/* The working state of one keys call. */
struct mem_scan {
    kv_bytes prefix;             /* borrowed from the request */
    uint64_t now;                /* expiry is judged against this */
    struct mem_scan_item *items; /* the current bucket's candidates */
    size_t nitems, items_cap;
    kv_bytes *keys; /* the page, pointing into the entries */
    size_t nkeys, keys_cap;
};

/* Reverses the bits of v: a hash to its scan position and back. */
static uint64_t mem_rev64(uint64_t v)
{
    v = ((v >> 1) & 0x5555555555555555ULL) | ((v & 0x5555555555555555ULL) << 1);
    v = ((v >> 2) & 0x3333333333333333ULL) | ((v & 0x3333333333333333ULL) << 2);
    v = ((v >> 4) & 0x0F0F0F0F0F0F0F0FULL) | ((v & 0x0F0F0F0F0F0F0F0FULL) << 4);
    v = ((v >> 8) & 0x00FF00FF00FF00FFULL) | ((v & 0x00FF00FF00FF00FFULL) << 8);
    v = ((v >> 16) & 0x0000FFFF0000FFFFULL) |
        ((v & 0x0000FFFF0000FFFFULL) << 16);
    return (v >> 32) | (v << 32);
}

/*
 * Parses a cursor into a scan position: empty = 0 (start), else the
 * canonical decimal text of a uint64_t (no sign, no leading zero).
 */
static int mem_parse_cursor(kv_bytes text, uint64_t *out, kv_err *err)
{
    uint64_t v = 0;
    size_t i;

    if (text.len > MEM_CURSOR_TEXT_MAX)
        return kv_err_set(err, KV_ECURSOR, "cursor is too long");
    if (text.len > 1 && text.ptr[0] == '0')
        return kv_err_set(err, KV_ECURSOR, "cursor has a leading zero");
    for (i = 0; i < text.len; i++) {
        unsigned d = (unsigned)(unsigned char)text.ptr[i] - '0';
        if (d > 9)
            return kv_err_set(err, KV_ECURSOR, "cursor is not a number");
        if (v > (UINT64_MAX - d) / 10)
            return kv_err_set(err, KV_ECURSOR, "cursor is out of range");
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/*
 * Moves the first used elements (of size bytes) of arr, which holds *cap,
 * into a new array of at least need > *cap elements (capacity doubled from
 * MEM_SCAN_ALLOC_MIN), frees arr, updates *cap and returns the new array.
 * NULL when allocation fails, arr then untouched.
 */
static void *mem_grow(void *arr, size_t used, size_t *cap, size_t need,
                      size_t size)
{
    size_t ncap = *cap ? *cap : MEM_SCAN_ALLOC_MIN;
    void *na;

    while (ncap < need) {
        if (ncap > SIZE_MAX / 2 / size)
            return NULL;
        ncap *= 2;
    }
    na = mem__malloc(ncap * size);
    if (!na)
        return NULL;
    if (used)
        memcpy(na, arr, used * size);
    free(arr);
    *cap = ncap;
    return na;
}

/*
 * Replaces s->items with the live entries of the chain e that start with
 * s->prefix and lie at or after position from, unordered. 0 or KV_ENOMEM.
 */
static int mem_scan_bucket(struct mem_scan *s, const struct mem_entry *e,
                           uint64_t from)
{
    s->nitems = 0;
    for (; e; e = e->next) {
        uint64_t pos = mem_rev64(e->hash);
        if (pos < from || e->key_len < s->prefix.len ||
            mem_expired(e, s->now) ||
            (s->prefix.len &&
             memcmp(e->data, s->prefix.ptr, s->prefix.len) != 0))
            continue;
        if (s->nitems == s->items_cap) {
            void *na = mem_grow(s->items, s->nitems, &s->items_cap,
                                s->nitems + 1, sizeof(*s->items));
            if (!na)
                return KV_ENOMEM;
            s->items = na;
        }
        s->items[s->nitems++] = (struct mem_scan_item){pos, e};
    }
    return 0;
}

/* Appends the keys of the first n candidates to the page. 0 or KV_ENOMEM. */
static int mem_scan_take(struct mem_scan *s, size_t n)
{
    size_t i;

    if (s->nkeys + n > s->keys_cap) {
        void *na = mem_grow(s->keys, s->nkeys, &s->keys_cap, s->nkeys + n,
                            sizeof(*s->keys));
        if (!na)
            return KV_ENOMEM;
        s->keys = na;
    }
    for (i = 0; i < n; i++) {
        const struct mem_entry *e = s->items[i].e;
        s->keys[s->nkeys++] = (kv_bytes){e->data, e->key_len};
    }
    return 0;
}

static int mem_scan_item_cmp(const void *a, const void *b)
{
    uint64_t x = ((const struct mem_scan_item *)a)->pos;
    uint64_t y = ((const struct mem_scan_item *)b)->pos;

    return (x > y) - (x < y);
}

/*
 * How many of the n candidates (sorted by position, n > room >= 1) a page
 * with room places left takes, so that a page never ends between two
 * entries of equal position (equal hashes): room, less the entries sharing
 * the position of the first one left out. When that leaves none and the
 * page is empty, the whole first run of equal positions instead, more than
 * room, so that the scan moves on.
 */
static size_t mem_scan_cut(const struct mem_scan_item *it, size_t n,
                           size_t room, bool page_empty)
{
    size_t k = room;

    while (k > 0 && it[k].pos == it[k - 1].pos)
        k--;
    if (k == 0 && page_empty) {
        k = room;
        while (k < n && it[k].pos == it[k - 1].pos)
            k++;
    }
    return k;
}

/*
 * keys: one page of the live keys starting with req->prefix (bytes
 * compared literally), continuing from req->cursor in scan-position order
 * (see above). Buckets are taken whole while they fit in the page; the
 * bucket that does not is sorted by position and only its first entries
 * that fit are taken, the cursor then pointing just past the last one.
 * So a page holds at most `limit` keys (0 = KV_KEYS_LIMIT_DEFAULT), with
 * one exception: distinct keys with equal 64-bit hashes share a position
 * and always land on the same page, so a page starting with more than
 * `limit` of them holds them all. A page may also hold fewer keys, even
 * none, with a cursor still to follow: a call visits at most limit *
 * MEM_SCAN_BUCKETS_PER_KEY buckets. Cursor len 0 means the scan is
 * complete. Over one scan a key is returned at most once, and exactly once
 * if it is present from the first page to the last, however the table
 * grows or shrinks between pages. The keys point into the table and stay
 * valid until done returns. Errors: KV_ECURSOR for cursor text that is not
 * the canonical decimal form of a position, KV_ENOMEM.
 */
static int mem_keys(kv_backend *b, const kv_req *req, kv_done_cb done, void *ud,
                    kv_err *err)
{
    struct mem_backend *mb = mem_of(b);
    uint64_t mask = mb->nbuckets - 1, pos = 0;
    uint64_t span = ~mem_rev64(mask); /* low bits of a bucket's positions */
    size_t limit = req->limit ? req->limit : KV_KEYS_LIMIT_DEFAULT;
    size_t visits = 0, max_visits;
    struct mem_scan s = {.prefix = req->prefix, .now = b->now_ms(b)};
    kv_reply r = {.op = req->op};
    char cursor[MEM_CURSOR_TEXT_MAX + 1];
    bool complete = false;
    int rc;

    rc = mem_parse_cursor(req->cursor, &pos, err);
    if (rc != 0)
        return rc;
    max_visits = limit > SIZE_MAX / MEM_SCAN_BUCKETS_PER_KEY
                     ? SIZE_MAX
                     : limit * MEM_SCAN_BUCKETS_PER_KEY;
    for (;;) {
        uint64_t last = pos | span; /* the last position of pos's bucket */
        size_t room = limit - s.nkeys, k;

        if (mem_scan_bucket(&s, mb->buckets[mem_rev64(pos) & mask], pos) != 0)
            goto fail;
        k = s.nitems;
        if (k > room) {
            qsort(s.items, s.nitems, sizeof(*s.items), mem_scan_item_cmp);
            k = mem_scan_cut(s.items, s.nitems, room, s.nkeys == 0);
        }
        if (mem_scan_take(&s, k) != 0)
            goto fail;
        if (k < s.nitems) { /* the page ends inside this bucket */
            if (k > 0)
                pos = s.items[k - 1].pos + 1;
            break;
        }
        if (last == UINT64_MAX) {
            complete = true;
            break;
        }
        pos = last + 1;
        if (s.nkeys >= limit || ++visits >= max_visits)
            break;
    }
    free(s.items);

    r.keys = s.keys;
    r.nkeys = s.nkeys;
    if (!complete) {
        int n =
            snprintf(cursor, sizeof cursor, "%llu", (unsigned long long)pos);
        r.cursor = (kv_bytes){cursor, (size_t)n};
    }
    done(0, &r, NULL, ud);
    free(s.keys);
    return 0;

fail:
    free(s.items);
    free(s.keys);
    return mem_err_nomem(err, "keys");
}

/* clear: frees every entry and returns the table to its smallest size. */
static int mem_clear(kv_backend *b, const kv_req *req, kv_done_cb done,
                     void *ud, kv_err *err)
{
    struct mem_backend *mb = mem_of(b);
    kv_reply r = {.op = req->op};

    (void)err;
    mem_free_entries(mb);
    mem_maybe_shrink(mb);
    done(0, &r, NULL, ud);
    return 0;
}

/* stats: entries held (expired ones not yet reclaimed count) and bytes. */
static void mem_stats(kv_backend *b, kv_backend_stats *out)
{
    struct mem_backend *mb = mem_of(b);

    out->known = true;
    out->keys = mb->count;
    out->bytes = mb->bytes;
}

const struct kv_backend_ops mem_backend_ops = {
    .version = KV_BACKEND_OPS_VERSION,
    .name = "memory",
    .size = sizeof(struct mem_backend),
    .open = mem_open,
    .close = mem_close,
    .get = mem_get,
    .put = mem_put,
    .del = mem_del,
    .set_ttl = mem_set_ttl,
    .cas = mem_cas,
    .incr = mem_incr,
    .mget = mem_mget,
    .keys = mem_keys,
    .clear = mem_clear,
    .stats = mem_stats,
    .healthy = NULL,
};
