/*
 * ps_bus.c - the bus: node identity, stamping, the provider, subscribers,
 * the local fan-out, and the topic and bus counters.
 *
 * Each topic or pattern in use is a name in one XXH3 hash table (a pattern
 * "p*" is keyed by p under another seed). A name lists its subscribers and
 * each subscriber its names, each side knowing the other's index, so
 * unsubscribing is O(1). A message looks up its topic, then one prefix per
 * distinct prefix length in use. Matching subscribers are first collected
 * on a snapshot stack, deduplicated by stamping each with the fan-out's
 * number, then called back; so a callback may subscribe, unsubscribe, free
 * subscribers (itself included) or publish again. A subscriber freed
 * meanwhile is skipped as dead and, like a name left unused, released when
 * the outermost fan-out ends. A message reaches those subscribed when its
 * fan-out began. Rates are per-second rings read lazily: no timer.
 *
 * Left out: shrinking the table. Runs on: the event loop thread.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>
#include <xxhash.h>

#include "pubsub/pubsub.h"

#define PS_BUCKETS_MIN 64   /* initial table size, a power of two */
#define PS_GROW_MIN 4       /* first capacity of a growing array */
#define PS_RATE_WINDOW_S 10 /* rate = average over this many seconds */
#define PS_SEED_TOPIC 0     /* hash seed of exact topics */
#define PS_SEED_PREFIX 1    /* hash seed of the prefix of a pattern */
#define PS_NS_PER_S 1000000000ull
#define PS_NS_PER_MS 1000000ull
#define PS_MS_PER_S 1000ull
#define PS_UNTRACKED SIZE_MAX /* ps_name.track when not in bus->tracked */

void *(*ps__malloc)(size_t size) = malloc;
uint64_t (*ps__clock_ns)(void) = uv_hrtime;

struct ps_name;

/* One subscriber holding a name, in ps_name.links. */
struct ps_link {
    ps_sub *sub;
    size_t hold; /* index of the matching ps_hold in sub->holds */
};

/* One name a subscriber holds, in ps_sub.holds. */
struct ps_hold {
    struct ps_name *name;
    size_t link; /* index of the matching ps_link in name->links */
};

/* A topic or a pattern in use: its subscribers and counters. */
struct ps_name {
    struct ps_name *chain;  /* hash bucket */
    struct ps_name *doomed; /* bus->doomed list, valid while is_doomed */
    uint64_t hash;
    struct ps_link *links;
    size_t nlinks, cap_links;
    size_t track;   /* index in bus->tracked, or PS_UNTRACKED */
    bool is_doomed; /* on bus->doomed, released after the fan-out */
    bool prefix;    /* a pattern "...*" */
    uint64_t published;
    uint32_t rate_slot[PS_RATE_WINDOW_S]; /* hits, by second modulo window */
    uint64_t rate_last_s; /* monotonic second of the newest hit */
    size_t key_len;       /* bytes hashed: len, minus the '*' of a prefix */
    size_t len;
    char name[]; /* len bytes, NUL-terminated */
};

struct ps_sub {
    ps_bus *bus; /* NULL once detached by ps_bus_free */
    const ps_sub_cbs *cbs;
    void *ud;
    struct ps_hold *holds;
    size_t nholds, cap_holds, max_holds;
    uint64_t stamp;      /* the fan-out that last collected it */
    bool dead;           /* freed during a fan-out, memory kept until after */
    ps_sub *prev, *next; /* bus->subs while live, bus->dead once dead */
};

/* One callback to make: a message to sub, or a reset of name to sub. */
struct ps_snap {
    ps_sub *sub;
    struct ps_name *name; /* resets only */
};

struct ps_bus {
    ps_provider *provider;
    char node_id[PS_NODE_ID_MAX + 1];
    uint64_t seq; /* the last sequence number published */
    struct ps_name **buckets;
    size_t nbuckets, nnames;
    size_t prefix_lens[PS_TOPIC_MAX]; /* prefix names by prefix length */
    struct ps_name **tracked;
    size_t ntracked, cap_tracked;
    ps_sub *subs;           /* live subscribers */
    ps_sub *dead;           /* freed during a fan-out */
    struct ps_name *doomed; /* left unused during a fan-out */
    struct ps_snap *snap;   /* callbacks of the fan-outs in progress */
    size_t snap_len, snap_cap;
    unsigned depth; /* fan-outs in progress (nesting) */
    uint64_t stamp; /* fan-outs started so far */
    ps_bus_stats stats;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                        */

/*
 * Grows an array of elem-byte items so it holds at least need, by
 * doubling; arr_ptr is the address of the array pointer (any T **), read
 * and written with memcpy so that one helper serves every element type.
 * Returns 0, or KV_ENOMEM leaving the array as it was.
 */
static int ps__grow(void *arr_ptr, size_t *cap, size_t need, size_t elem)
{
    size_t ncap = *cap ? *cap : PS_GROW_MIN;
    void *old, *n;

    if (need <= *cap)
        return 0;
    while (ncap < need)
        ncap *= 2;
    n = ps__malloc(ncap * elem);
    if (!n)
        return KV_ENOMEM;
    memcpy(&old, arr_ptr, sizeof(old));
    if (*cap)
        memcpy(n, old, *cap * elem);
    free(old);
    memcpy(arr_ptr, &n, sizeof(n));
    *cap = ncap;
    return 0;
}

/* size zeroed bytes from ps__malloc, or NULL. */
static void *ps__zalloc(size_t size)
{
    void *p = ps__malloc(size);

    if (p)
        memset(p, 0, size);
    return p;
}

static bool ps__printable(unsigned char c)
{
    return c > ' ' && c < 0x7f;
}

static uint64_t ps__wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * PS_MS_PER_S +
           (uint64_t)ts.tv_nsec / PS_NS_PER_MS;
}

/* ------------------------------------------------------------------ */
/* Rules                                                                */

int ps_check_topic(const char *topic, size_t len, kv_err *err)
{
    if (!topic || len == 0)
        return kv_err_set(err, KV_ETOPIC, "topic is empty");
    if (len > PS_TOPIC_MAX)
        return kv_err_set(err, KV_ETOPIC, "topic is %zu bytes, the limit is %d",
                          len, PS_TOPIC_MAX);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)topic[i];
        if (!ps__printable(c) || c == '*')
            return kv_err_set(err, KV_ETOPIC,
                              "topic byte %zu is not "
                              "printable ASCII, or is '*'",
                              i);
    }
    return 0;
}

/*
 * A pattern is at most PS_TOPIC_MAX bytes in all: a topic, or a topic
 * prefix (possibly empty) and one final '*'.
 */
int ps_check_pattern(const char *pattern, size_t len, kv_err *err)
{
    if (pattern && len > 0 && len <= PS_TOPIC_MAX && pattern[len - 1] == '*') {
        if (len == 1)
            return 0;
        if (ps_check_topic(pattern, len - 1, NULL) == 0)
            return 0;
        return kv_err_set(err, KV_ETOPIC,
                          "a pattern is a topic prefix and one final '*'");
    }
    return ps_check_topic(pattern, len, err);
}

bool ps_pattern_match(const char *pattern, size_t plen, const char *topic,
                      size_t tlen)
{
    if (plen > 0 && pattern[plen - 1] == '*') {
        plen--;
        return tlen >= plen && memcmp(pattern, topic, plen) == 0;
    }
    return plen == tlen && memcmp(pattern, topic, plen) == 0;
}

/*
 * True when some topic may match both a and b (patterns or topics): equal
 * topics, a topic under a prefix, or two prefixes one extending the other.
 */
static bool ps__overlap(const char *a, size_t alen, const char *b, size_t blen)
{
    bool ap = alen > 0 && a[alen - 1] == '*';
    bool bp = blen > 0 && b[blen - 1] == '*';

    if (ap && bp) {
        size_t n = alen < blen ? alen : blen;
        return memcmp(a, b, n - 1) == 0;
    }
    if (ap)
        return ps_pattern_match(a, alen, b, blen);
    return ps_pattern_match(b, blen, a, alen);
}

/* ------------------------------------------------------------------ */
/* Names: the hash table, tracking and rates                            */

static uint64_t ps__hash(const char *key, size_t len, bool prefix)
{
    return XXH3_64bits_withSeed(key, len,
                                prefix ? PS_SEED_PREFIX : PS_SEED_TOPIC);
}

/* The name with this key (a topic, or a pattern without its '*'). */
static struct ps_name *ps__name_find(const ps_bus *bus, const char *key,
                                     size_t len, bool prefix)
{
    uint64_t h = ps__hash(key, len, prefix);
    struct ps_name *n = bus->buckets[h & (bus->nbuckets - 1)];

    for (; n; n = n->chain)
        if (n->hash == h && n->prefix == prefix && n->key_len == len &&
            memcmp(n->name, key, len) == 0)
            return n;
    return NULL;
}

/* The name of a pattern or topic of len > 0 bytes. */
static struct ps_name *ps__pattern_find(const ps_bus *bus, const char *p,
                                        size_t len)
{
    bool prefix = p[len - 1] == '*';

    return ps__name_find(bus, p, prefix ? len - 1 : len, prefix);
}

/* Doubles the table; on allocation failure it stays as it is. */
static void ps__table_grow(ps_bus *bus)
{
    size_t nb = bus->nbuckets * 2;
    struct ps_name **b = ps__zalloc(nb * sizeof(*b));

    if (!b)
        return;
    for (size_t i = 0; i < bus->nbuckets; i++) {
        struct ps_name *n = bus->buckets[i], *next;
        for (; n; n = next) {
            next = n->chain;
            n->chain = b[n->hash & (nb - 1)];
            b[n->hash & (nb - 1)] = n;
        }
    }
    free(bus->buckets);
    bus->buckets = b;
    bus->nbuckets = nb;
}

/* Adds name to the tracked list when there is room; false otherwise. */
static bool ps__name_track(ps_bus *bus, struct ps_name *n)
{
    if (n->track != PS_UNTRACKED)
        return true;
    if (bus->ntracked >= PS_TRACKED_TOPICS_MAX ||
        ps__grow(&bus->tracked, &bus->cap_tracked, bus->ntracked + 1,
                 sizeof(*bus->tracked)) != 0)
        return false;
    n->track = bus->ntracked;
    bus->tracked[bus->ntracked++] = n;
    return true;
}

/*
 * A new, untracked name for a topic or pattern already checked, in the
 * table. NULL when memory runs out.
 */
static struct ps_name *ps__name_new(ps_bus *bus, const char *name, size_t len)
{
    bool prefix = name[len - 1] == '*';
    struct ps_name *n = ps__zalloc(sizeof(*n) + len + 1);
    size_t b;

    if (!n)
        return NULL;
    memcpy(n->name, name, len);
    n->len = len;
    n->prefix = prefix;
    n->key_len = prefix ? len - 1 : len;
    n->hash = ps__hash(name, n->key_len, prefix);
    n->track = PS_UNTRACKED;
    if (bus->nnames >= bus->nbuckets)
        ps__table_grow(bus);
    b = n->hash & (bus->nbuckets - 1);
    n->chain = bus->buckets[b];
    bus->buckets[b] = n;
    bus->nnames++;
    if (prefix)
        bus->prefix_lens[n->key_len]++;
    return n;
}

/* Unlinks name from the table and the tracked list and frees it. */
static void ps__name_free(ps_bus *bus, struct ps_name *n)
{
    struct ps_name **pp = &bus->buckets[n->hash & (bus->nbuckets - 1)];

    while (*pp != n)
        pp = &(*pp)->chain;
    *pp = n->chain;
    bus->nnames--;
    if (n->prefix)
        bus->prefix_lens[n->key_len]--;
    if (n->track != PS_UNTRACKED) {
        struct ps_name *last = bus->tracked[--bus->ntracked];
        bus->tracked[n->track] = last;
        last->track = n->track;
    }
    free(n->links);
    free(n);
}

/*
 * Frees name once unused (during a fan-out, after it): a name is kept
 * while held, and for good once tracked with traffic.
 */
static void ps__name_release(ps_bus *bus, struct ps_name *n)
{
    if (n->nlinks > 0 || (n->track != PS_UNTRACKED && n->published > 0))
        return;
    if (bus->depth == 0) {
        ps__name_free(bus, n);
    } else if (!n->is_doomed) {
        n->is_doomed = true;
        n->doomed = bus->doomed;
        bus->doomed = n;
    }
}

/* Counts one message on name at monotonic time now_ns. */
static void ps__name_hit(struct ps_name *n, uint64_t now_ns)
{
    uint64_t s = now_ns / PS_NS_PER_S;

    if (n->published == 0 || s - n->rate_last_s >= PS_RATE_WINDOW_S) {
        memset(n->rate_slot, 0, sizeof(n->rate_slot));
    } else {
        for (uint64_t k = n->rate_last_s + 1; k <= s; k++)
            n->rate_slot[k % PS_RATE_WINDOW_S] = 0;
    }
    if (s > n->rate_last_s || n->published == 0)
        n->rate_last_s = s;
    n->rate_slot[n->rate_last_s % PS_RATE_WINDOW_S]++;
    n->published++;
}

/*
 * Messages per second on name: the hits of the last PS_RATE_WINDOW_S
 * seconds at now_ns (the current one partly elapsed) over that time.
 */
static double ps__name_rate(const struct ps_name *n, uint64_t now_ns)
{
    uint64_t s = now_ns / PS_NS_PER_S;
    uint64_t lo = s >= PS_RATE_WINDOW_S - 1 ? s - (PS_RATE_WINDOW_S - 1) : 0;
    uint64_t sum = 0;

    if (n->published == 0 || s - n->rate_last_s >= PS_RATE_WINDOW_S)
        return 0.0;
    for (uint64_t k = lo; k <= n->rate_last_s; k++)
        sum += n->rate_slot[k % PS_RATE_WINDOW_S];
    return (double)sum / ((double)(PS_RATE_WINDOW_S - 1) +
                          (double)(now_ns % PS_NS_PER_S) / PS_NS_PER_S);
}

/*
 * Counts a message on topic, creating and tracking its name when there is
 * room; past PS_TRACKED_TOPICS_MAX, or out of memory, it goes uncounted.
 */
static void ps__topic_hit(ps_bus *bus, const char *topic, size_t len,
                          uint64_t now_ns)
{
    struct ps_name *n = ps__name_find(bus, topic, len, false);

    if (!n) {
        if (bus->ntracked >= PS_TRACKED_TOPICS_MAX)
            return;
        n = ps__name_new(bus, topic, len);
        if (!n)
            return;
    }
    if (!ps__name_track(bus, n)) {
        ps__name_release(bus, n);
        return;
    }
    ps__name_hit(n, now_ns);
}

/* ------------------------------------------------------------------ */
/* Fan-out                                                              */

/* Room for need more callbacks on the snapshot stack; 0 or KV_ENOMEM. */
static int ps__snap_reserve(ps_bus *bus, size_t need)
{
    return ps__grow(&bus->snap, &bus->snap_cap, bus->snap_len + need,
                    sizeof(*bus->snap));
}

/* Frees what was freed or left unused during the fan-outs just ended. */
static void ps__sweep(ps_bus *bus)
{
    while (bus->dead) {
        ps_sub *s = bus->dead;
        bus->dead = s->next;
        free(s->holds);
        free(s);
    }
    while (bus->doomed) {
        struct ps_name *n = bus->doomed;
        bus->doomed = n->doomed;
        n->is_doomed = false;
        ps__name_release(bus, n);
    }
}

/*
 * Makes the callbacks stacked from base: messages (m) or resets (m NULL),
 * skipping dead subscribers, then pops them; the outermost fan-out frees
 * what died or fell unused meanwhile. Entries are read by index because a
 * nested fan-out may move the stack.
 */
static void ps__deliver(ps_bus *bus, size_t base, const ps_message *m,
                        const char *reason)
{
    size_t end = bus->snap_len;

    bus->depth++;
    for (size_t i = base; i < end; i++) {
        ps_sub *s = bus->snap[i].sub;
        if (s->dead)
            continue;
        if (m && s->cbs->message) {
            bus->stats.delivered++;
            s->cbs->message(s, m, s->ud);
        } else if (!m && s->cbs->reset) {
            s->cbs->reset(s, bus->snap[i].name->name, reason, s->ud);
        }
    }
    bus->depth--;
    bus->snap_len = base;
    if (bus->depth == 0)
        ps__sweep(bus);
}

/* Adds the subscribers of name not yet collected by this fan-out. */
static void ps__collect(ps_bus *bus, const struct ps_name *n)
{
    for (size_t i = 0; i < n->nlinks; i++) {
        ps_sub *s = n->links[i].sub;
        if (s->stamp != bus->stamp) {
            s->stamp = bus->stamp;
            bus->snap[bus->snap_len++].sub = s;
        }
    }
}

/*
 * Delivers m (topic checked) to every local subscriber with a matching
 * pattern, once each, and counts it on its topic and patterns. Returns 0,
 * or KV_ENOMEM having delivered and counted nothing.
 */
static int ps__fanout(ps_bus *bus, const ps_message *m)
{
    size_t base = bus->snap_len;
    size_t max_prefix =
        m->topic_len < PS_TOPIC_MAX ? m->topic_len : PS_TOPIC_MAX - 1;
    uint64_t now_ns = ps__clock_ns();
    struct ps_name *n;

    if (ps__snap_reserve(bus, bus->stats.subscribers) != 0)
        return KV_ENOMEM;
    ps__topic_hit(bus, m->topic, m->topic_len, now_ns);
    bus->stamp++;
    n = ps__name_find(bus, m->topic, m->topic_len, false);
    if (n)
        ps__collect(bus, n);
    for (size_t len = 0; len <= max_prefix; len++) {
        if (bus->prefix_lens[len] == 0)
            continue;
        n = ps__name_find(bus, m->topic, len, true);
        if (n) {
            if (n->track != PS_UNTRACKED)
                ps__name_hit(n, now_ns);
            ps__collect(bus, n);
        }
    }
    ps__deliver(bus, base, m, NULL);
    return 0;
}

/* ------------------------------------------------------------------ */
/* The bus                                                              */

/* Returns rc, giving err a message when the provider left it without. */
static int ps__provider_err(const ps_provider *p, int rc, kv_err *err)
{
    if (err && err->code == 0)
        kv_err_set(err, rc, "%s provider: %s", p->ops->name, kv_strerror(rc));
    return rc;
}

/* 0 when id is 1..PS_NODE_ID_MAX printable ASCII bytes without ':'. */
static int ps__check_node_id(const char *id, kv_err *err)
{
    size_t len = id ? strlen(id) : 0;

    if (len == 0 || len > PS_NODE_ID_MAX)
        return kv_err_set(err, KV_EINVAL, "node id must be 1..%d bytes",
                          PS_NODE_ID_MAX);
    for (size_t i = 0; i < len; i++)
        if (!ps__printable((unsigned char)id[i]) || id[i] == ':')
            return kv_err_set(err, KV_EINVAL,
                              "node id byte %zu is not "
                              "printable ASCII, or is ':'",
                              i);
    return 0;
}

/*
 * Checks the node id and the provider table, allocates the bus and the
 * provider's ops->size zeroed bytes, fills the provider's base and calls
 * its open. When open fails the provider's memory is freed without a call
 * to close (open cleans up after itself) and its error is returned.
 */
int ps_bus_new(struct uv_loop_s *loop, const char *node_id,
               const struct ps_provider_ops *provider,
               const ps_provider_conf *conf, ps_bus **out, kv_err *err)
{
    ps_bus *bus = NULL;
    int rc;

    *out = NULL;
    rc = ps__check_node_id(node_id, err);
    if (rc)
        return rc;
    if (!provider || provider->version < 1 ||
        provider->size < sizeof(ps_provider) || !provider->open ||
        !provider->publish)
        return kv_err_set(err, KV_EINVAL, "invalid pub/sub provider table");
    bus = ps__zalloc(sizeof(*bus));
    if (!bus)
        goto nomem;
    strcpy(bus->node_id, node_id);
    bus->buckets = ps__zalloc(PS_BUCKETS_MIN * sizeof(*bus->buckets));
    bus->nbuckets = PS_BUCKETS_MIN;
    bus->provider = ps__zalloc(provider->size);
    if (!bus->buckets || !bus->provider)
        goto nomem;
    bus->provider->ops = provider;
    bus->provider->loop = loop;
    bus->provider->bus = bus;
    rc = provider->open(bus->provider, conf, err);
    if (rc) {
        ps__provider_err(bus->provider, rc, err);
        goto fail;
    }
    *out = bus;
    return 0;

nomem:
    rc = kv_err_set(err, KV_ENOMEM, "out of memory creating the bus");
fail:
    if (bus) {
        free(bus->provider);
        free(bus->buckets);
        free(bus);
    }
    return rc;
}

/* Removes hold j of sub from both sides and releases its name. */
static void ps__unhold(ps_sub *sub, size_t j)
{
    ps_bus *bus = sub->bus;
    struct ps_hold h = sub->holds[j];
    struct ps_name *n = h.name;
    struct ps_link moved = n->links[--n->nlinks];
    struct ps_hold hmoved = sub->holds[--sub->nholds];

    if (h.link != n->nlinks) {
        n->links[h.link] = moved;
        moved.sub->holds[moved.hold].link = h.link;
    }
    if (j != sub->nholds) {
        sub->holds[j] = hmoved;
        hmoved.name->links[hmoved.link].hold = j;
    }
    bus->stats.subscriptions--;
    ps__name_release(bus, n);
}

/* Drops every pattern of sub and takes it off the live list. */
static void ps__sub_detach(ps_sub *sub)
{
    ps_bus *bus = sub->bus;

    while (sub->nholds > 0)
        ps__unhold(sub, sub->nholds - 1);
    if (sub->prev)
        sub->prev->next = sub->next;
    else
        bus->subs = sub->next;
    if (sub->next)
        sub->next->prev = sub->prev;
    sub->prev = sub->next = NULL;
    bus->stats.subscribers--;
    sub->bus = NULL;
}

/*
 * Closes the provider and frees everything. Subscribers still alive (a
 * caller bug) are detached: they hold no pattern and receive nothing, and
 * ps_sub_free still frees them. Must not be called from a callback.
 */
void ps_bus_free(ps_bus *bus)
{
    if (!bus)
        return;
    if (bus->provider->ops->close)
        bus->provider->ops->close(bus->provider);
    free(bus->provider);
    while (bus->subs)
        ps__sub_detach(bus->subs);
    ps__sweep(bus);
    for (size_t i = 0; i < bus->nbuckets; i++) {
        struct ps_name *n = bus->buckets[i], *next;
        for (; n; n = next) {
            next = n->chain;
            free(n->links);
            free(n);
        }
    }
    free(bus->buckets);
    free(bus->tracked);
    free(bus->snap);
    free(bus);
}

const char *ps_bus_node_id(const ps_bus *bus)
{
    return bus->node_id;
}

const char *ps_bus_provider_name(const ps_bus *bus)
{
    return bus->provider->ops->name;
}

bool ps_bus_healthy(const ps_bus *bus)
{
    const struct ps_provider_ops *ops = bus->provider->ops;

    return !ops->healthy || ops->healthy(bus->provider);
}

/*
 * Checks the topic (KV_ETOPIC), reserves the fan-out (KV_ENOMEM), stamps
 * the message with the next sequence number, which is only consumed when
 * the provider accepts it, hands it to the provider (its error is returned
 * as is and nothing is delivered), then fans it out locally.
 */
int ps_publish(ps_bus *bus, const char *topic, size_t topic_len,
               const void *data, size_t len, ps_message *out, kv_err *err)
{
    ps_message m;
    int rc;

    if (!bus || (!data && len > 0))
        return kv_err_set(err, KV_EINVAL, "publish: no bus or no data");
    rc = ps_check_topic(topic, topic_len, err);
    if (rc)
        return rc;
    if (ps__snap_reserve(bus, bus->stats.subscribers) != 0)
        return kv_err_set(err, KV_ENOMEM, "out of memory publishing");
    m.topic = topic;
    m.topic_len = topic_len;
    m.data = data ? data : "";
    m.len = len;
    m.node = bus->node_id;
    m.seq = bus->seq + 1;
    m.ts_ms = ps__wall_ms();
    rc = bus->provider->ops->publish(bus->provider, &m, err);
    if (rc)
        return ps__provider_err(bus->provider, rc, err);
    bus->seq = m.seq;
    bus->stats.published++;
    (void)ps__fanout(bus, &m); /* room reserved above */
    if (out)
        *out = m;
    return 0;
}

/*
 * Delivers a message from another node. Ignored: messages from this node
 * (already delivered when published), bad topics, and, when memory runs
 * out for the fan-out, the whole message.
 */
void ps_bus_receive(ps_bus *bus, const ps_message *m)
{
    ps_message copy;

    if (!bus || !m)
        return;
    if (m->node && strcmp(m->node, bus->node_id) == 0)
        return;
    if (ps_check_topic(m->topic, m->topic_len, NULL) != 0)
        return;
    if (ps__snap_reserve(bus, bus->stats.subscribers) != 0)
        return;
    copy = *m;
    if (!copy.node)
        copy.node = "";
    bus->stats.received++;
    (void)ps__fanout(bus, &copy); /* room reserved above */
}

/*
 * Calls reset once for every (subscriber, pattern it holds) where the
 * pattern overlaps the given one (NULL or an invalid pattern: all), with
 * the same snapshot rules as messages. Out of memory, it resets nothing.
 */
void ps_bus_reset(ps_bus *bus, const char *pattern, const char *reason)
{
    size_t plen = pattern ? strlen(pattern) : 0;
    size_t base;

    if (!bus)
        return;
    if (pattern && ps_check_pattern(pattern, plen, NULL) != 0)
        pattern = NULL;
    if (ps__snap_reserve(bus, bus->stats.subscriptions) != 0)
        return;
    base = bus->snap_len;
    for (size_t b = 0; b < bus->nbuckets; b++) {
        for (struct ps_name *n = bus->buckets[b]; n; n = n->chain) {
            if (pattern && !ps__overlap(pattern, plen, n->name, n->len))
                continue;
            for (size_t i = 0; i < n->nlinks; i++) {
                bus->snap[bus->snap_len].sub = n->links[i].sub;
                bus->snap[bus->snap_len++].name = n;
            }
        }
    }
    ps__deliver(bus, base, NULL, reason ? reason : "");
}

/* ------------------------------------------------------------------ */
/* Subscribers                                                          */

ps_sub *ps_sub_new(ps_bus *bus, const ps_sub_cbs *cbs, void *ud,
                   size_t max_patterns)
{
    ps_sub *sub;

    if (!bus || !cbs)
        return NULL;
    sub = ps__zalloc(sizeof(*sub));
    if (!sub)
        return NULL;
    sub->bus = bus;
    sub->cbs = cbs;
    sub->ud = ud;
    sub->max_holds = max_patterns ? max_patterns : PS_SUBS_PER_SUB_DEFAULT;
    sub->next = bus->subs;
    if (bus->subs)
        bus->subs->prev = sub;
    bus->subs = sub;
    bus->stats.subscribers++;
    return sub;
}

/*
 * Drops the patterns at once, so nothing more is collected for sub; the
 * memory goes now, or after the fan-out when one is in progress (sub may
 * still sit in its snapshot, where it is skipped as dead).
 */
void ps_sub_free(ps_sub *sub)
{
    ps_bus *bus;

    if (!sub || sub->dead)
        return;
    bus = sub->bus;
    if (bus)
        ps__sub_detach(sub);
    if (bus && bus->depth > 0) {
        sub->dead = true;
        sub->next = bus->dead;
        bus->dead = sub;
        return;
    }
    free(sub->holds);
    free(sub);
}

/* The index in sub->holds of name n, or SIZE_MAX. */
static size_t ps__hold_index(const ps_sub *sub, const struct ps_name *n)
{
    for (size_t j = 0; j < sub->nholds; j++)
        if (sub->holds[j].name == n)
            return j;
    return SIZE_MAX;
}

/*
 * Adds the pattern to sub, creating its name (tracked when there is
 * room). Errors change nothing: KV_EINVAL for a freed or detached sub,
 * KV_ETOPIC, KV_ELIMIT, KV_ENOMEM.
 */
int ps_subscribe(ps_sub *sub, const char *pattern, size_t len, kv_err *err)
{
    ps_bus *bus;
    struct ps_name *n;
    int rc;

    if (!sub || sub->dead || !sub->bus)
        return kv_err_set(err, KV_EINVAL, "subscriber is gone");
    bus = sub->bus;
    rc = ps_check_pattern(pattern, len, err);
    if (rc)
        return rc;
    n = ps__pattern_find(bus, pattern, len);
    if (n && ps__hold_index(sub, n) != SIZE_MAX)
        return 0;
    if (sub->nholds >= sub->max_holds)
        return kv_err_set(err, KV_ELIMIT, "more than %zu patterns",
                          sub->max_holds);
    if (ps__grow(&sub->holds, &sub->cap_holds, sub->nholds + 1,
                 sizeof(*sub->holds)) != 0)
        goto nomem;
    if (!n) {
        n = ps__name_new(bus, pattern, len);
        if (!n)
            goto nomem;
    }
    if (ps__grow(&n->links, &n->cap_links, n->nlinks + 1, sizeof(*n->links)) !=
        0) {
        ps__name_release(bus, n);
        goto nomem;
    }
    n->links[n->nlinks] = (struct ps_link){.sub = sub, .hold = sub->nholds};
    sub->holds[sub->nholds] = (struct ps_hold){.name = n, .link = n->nlinks};
    n->nlinks++;
    sub->nholds++;
    bus->stats.subscriptions++;
    ps__name_track(bus, n);
    return 0;

nomem:
    return kv_err_set(err, KV_ENOMEM, "out of memory subscribing");
}

bool ps_unsubscribe(ps_sub *sub, const char *pattern, size_t len)
{
    struct ps_name *n;
    size_t j = SIZE_MAX;

    if (sub && !sub->dead && sub->bus && pattern && len > 0) {
        n = ps__pattern_find(sub->bus, pattern, len);
        j = n ? ps__hold_index(sub, n) : SIZE_MAX;
    }
    if (j == SIZE_MAX)
        return false;
    ps__unhold(sub, j);
    return true;
}

size_t ps_sub_pattern_count(const ps_sub *sub)
{
    return sub ? sub->nholds : 0;
}

/* ------------------------------------------------------------------ */
/* Statistics                                                           */

/* Indexes are stable until the next subscribe, unsubscribe or message. */
bool ps_bus_topic_at(const ps_bus *bus, size_t index, ps_topic_stats *out)
{
    const struct ps_name *n;

    if (!bus || index >= bus->ntracked)
        return false;
    n = bus->tracked[index];
    out->name = n->name;
    out->subscribers = n->nlinks;
    out->published = n->published;
    out->rate = ps__name_rate(n, ps__clock_ns());
    return true;
}

void ps_bus_stats_get(const ps_bus *bus, ps_bus_stats *out)
{
    const struct ps_provider_ops *ops = bus->provider->ops;

    *out = bus->stats;
    out->lag = ops->lag ? ops->lag(bus->provider) : 0;
}
