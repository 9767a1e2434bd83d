/*
 * redis_pubsub.c - the Redis pub/sub provider ("redis"): carries the
 * messages of one node's bus to the other nodes over Redis channels.
 *
 * Two connections from redis_conn.h: one publishes (PUBLISH channel
 * payload, pipelined, never waiting for the answer before the next), the
 * other only receives, subscribed with one PSUBSCRIBE <channel_prefix>*.
 * Each message it receives is decoded and handed to ps_bus_receive() in
 * the reply callback on the loop thread; the bus drops those from this
 * node (it delivered them when they were published), so local
 * subscribers get each message exactly once.
 *
 * Wire formats (docs/cluster.md):
 * - kvbus: channel = channel_prefix + topic, payload = the envelope
 *   "kvbus1 <node> <seq> <ts_ms>\n" followed by the payload bytes;
 * - nuxeo: channel = channel_prefix + topic, where the default prefix
 *   "kvbus:" (or none) means "nuxeo:", payload = "<node>:<payload>"; no
 *   sequence number (0), no timestamp (the time of receipt is used).
 *
 * Gaps: Redis pub/sub is at-most-once. When the subscribed connection
 * comes back after a loss, every local subscriber gets a reset; in the
 * kvbus format the last sequence number of each origin node is kept, and
 * a jump also resets every subscriber (the sequence is per node, not per
 * topic, so the topics of the missed messages are unknown).
 *
 * Left out: sharded pub/sub (SSUBSCRIBE), TLS, Redis Cluster.
 * Runs on: the event loop thread only.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backends/redis/redis.h"
#include "backends/redis/redis_conn.h"
#include "backends/redis/redis_int.h"
#include "pubsub/pubsub.h"

#define REDIS_PS_PREFIX_DEFAULT "kvbus:" /* config default */
#define REDIS_PS_PREFIX_NUXEO "nuxeo:"   /* Nuxeo's channel prefix */
#define REDIS_PS_U64_DIGITS 20           /* digits of UINT64_MAX */
#define REDIS_PS_REASON_BYTES 192        /* text of a reset reason */
#define REDIS_PS_MS_PER_S 1000ull
#define REDIS_PS_NS_PER_MS 1000000ull

typedef struct redis_provider {
    ps_provider base; /* must be first */
    redis_conn *pub;  /* PUBLISH */
    redis_conn *sub;  /* PSUBSCRIBE prefix*, receives only */
    char *prefix;     /* channel prefix, NUL-terminated */
    size_t prefix_len;
    bool nuxeo;            /* format = nuxeo */
    bool closing;          /* close was called */
    bool malformed_logged; /* one line per provider, not per message */
    bool pub_fail_logged;  /* per publisher outage */
    ps_origins origins;    /* last seq per origin, for gap detection */
} redis_provider;

/* ------------------------------------------------------------------ */
/* Wire formats (pure)                                                  */

/* True when id (len bytes) may be a node id: printable, no space or ':'. */
static bool ps_node_ok(const char *id, size_t len)
{
    if (len == 0 || len > PS_NODE_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)id[i] <= ' ' || (unsigned char)id[i] >= 0x7f ||
            id[i] == ':')
            return false;
    return true;
}

/* Parses canonical decimal (p, len) into *out; false if it is not. */
static bool ps_parse_u64(const char *p, size_t len, uint64_t *out)
{
    uint64_t v = 0;

    if (len == 0 || len > REDIS_PS_U64_DIGITS || (len > 1 && p[0] == '0'))
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned d = (unsigned)(p[i] - '0');
        if (d > 9 || v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

size_t redis__ps_envelope_head(const ps_message *m, char *buf)
{
    int n = snprintf(buf, REDIS_PS_HEAD_MAX, "%s %s %" PRIu64 " %" PRIu64 "\n",
                     REDIS_PS_MAGIC, m->node, m->seq, m->ts_ms);

    return n < 0 ? 0 : (size_t)n;
}

/* The next space-separated field of [*p, end) before stop; false if none. */
static bool ps_field(const char **p, const char *end, char stop, const char **f,
                     size_t *flen)
{
    const char *s = *p, *e = memchr(s, stop, (size_t)(end - s));

    if (!e)
        return false;
    *f = s;
    *flen = (size_t)(e - s);
    *p = e + 1;
    return true;
}

int redis__ps_envelope_parse(const char *p, size_t len, redis_ps_stamp *out)
{
    const char *cur = p, *end = p + len, *f;
    const char *lf = memchr(p, '\n', len);
    size_t flen;

    memset(out, 0, sizeof *out);
    if (!lf)
        return -1;
    if (!ps_field(&cur, lf, ' ', &f, &flen) ||
        flen != sizeof REDIS_PS_MAGIC - 1 || memcmp(f, REDIS_PS_MAGIC, flen))
        return -1;
    if (!ps_field(&cur, lf, ' ', &f, &flen) || !ps_node_ok(f, flen))
        return -1;
    memcpy(out->node, f, flen);
    out->node[flen] = '\0';
    if (!ps_field(&cur, lf, ' ', &f, &flen) ||
        !ps_parse_u64(f, flen, &out->seq))
        return -1;
    if (!ps_field(&cur, end, '\n', &f, &flen) || cur != lf + 1 ||
        !ps_parse_u64(f, flen, &out->ts_ms))
        return -1;
    out->data = lf + 1;
    out->len = (size_t)(end - (lf + 1));
    return 0;
}

int redis__ps_nuxeo_parse(const char *p, size_t len, redis_ps_stamp *out)
{
    const char *colon = memchr(p, ':', len);
    size_t nlen;

    memset(out, 0, sizeof *out);
    if (!colon)
        return -1;
    nlen = (size_t)(colon - p);
    if (!ps_node_ok(p, nlen))
        return -1;
    memcpy(out->node, p, nlen);
    out->node[nlen] = '\0';
    out->data = colon + 1;
    out->len = len - nlen - 1;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Receiving                                                            */

static uint64_t ps_wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * REDIS_PS_MS_PER_S +
           (uint64_t)ts.tv_nsec / REDIS_PS_NS_PER_MS;
}

/* A message from the subscribed connection: decode, check, deliver. */
static void on_sub_message(const char *channel, size_t channel_len,
                           const char *payload, size_t len, void *ud)
{
    redis_provider *rp = ud;
    redis_ps_stamp st;
    ps_message m;
    char reason[REDIS_PS_REASON_BYTES];
    uint64_t missed;
    int rc;

    if (rp->closing || channel_len <= rp->prefix_len ||
        memcmp(channel, rp->prefix, rp->prefix_len) != 0)
        return;
    rc = rp->nuxeo ? redis__ps_nuxeo_parse(payload, len, &st)
                   : redis__ps_envelope_parse(payload, len, &st);
    if (rc != 0) {
        if (!rp->malformed_logged)
            redis__log(
                REDIS_LOG_WARN,
                "pubsub: redis: dropped a malformed %s message on "
                "channel %.*s (%zu bytes); further ones are dropped "
                "silently",
                rp->nuxeo ? "nuxeo" : "kvbus",
                (int)(channel_len > PS_TOPIC_MAX ? PS_TOPIC_MAX : channel_len),
                channel, len);
        rp->malformed_logged = true;
        return;
    }
    if (strcmp(st.node, ps_bus_node_id(rp->base.bus)) == 0)
        return; /* our own, delivered when published */
    m.topic = channel + rp->prefix_len;
    m.topic_len = channel_len - rp->prefix_len;
    if (ps_check_topic(m.topic, m.topic_len, NULL) != 0)
        return;
    m.data = st.data;
    m.len = st.len;
    m.node = st.node;
    m.seq = st.seq;
    m.ts_ms = rp->nuxeo ? ps_wall_ms() : st.ts_ms;
    if (!rp->nuxeo) {
        missed = ps_origins_note(&rp->origins, st.node, st.seq);
        if (missed) {
            snprintf(reason, sizeof reason,
                     "sequence gap from node %s (%" PRIu64 " missed)", st.node,
                     missed);
            redis__log(REDIS_LOG_WARN, "pubsub: redis: %s", reason);
            ps_bus_reset(rp->base.bus, NULL, reason);
        }
    }
    ps_bus_receive(rp->base.bus, &m);
}

/* The subscription is up again after a loss: anything may have been
 * missed meanwhile, so every local subscriber starts over. */
static void on_sub_state(bool ready, bool reconnected, void *ud)
{
    redis_provider *rp = ud;

    if (rp->closing || !ready || !reconnected)
        return;
    ps_origins_clear(&rp->origins);
    ps_bus_reset(rp->base.bus, NULL, "provider reconnected");
}

static void on_pub_state(bool ready, bool reconnected, void *ud)
{
    redis_provider *rp = ud;

    (void)reconnected;
    if (ready)
        rp->pub_fail_logged = false;
}

/* ------------------------------------------------------------------ */
/* Publishing                                                           */

/* The answer to a PUBLISH: nothing to do unless it failed. */
static void on_published(int status, const redisReply *reply, const kv_err *err,
                         void *ud)
{
    redis_provider *rp = ud;

    if (rp->closing || rp->pub_fail_logged)
        return;
    if (status != 0) {
        redis__log(REDIS_LOG_WARN, "pubsub: redis: a message may be lost: %s",
                   err->msg);
        rp->pub_fail_logged = true;
    } else if (reply->type == REDIS_REPLY_ERROR) {
        redis__log(REDIS_LOG_WARN, "pubsub: redis: PUBLISH failed: %.*s",
                   (int)(reply->len > 100 ? 100 : reply->len), reply->str);
        rp->pub_fail_logged = true;
    }
}

/*
 * Sends m on channel prefix + topic in the configured format. Returns 0
 * once the command is handed to the connection, KV_EUNAVAIL while it is
 * down, KV_ENOMEM.
 */
static int redis_ps_publish(ps_provider *p, const ps_message *m, kv_err *err)
{
    redis_provider *rp = (redis_provider *)p;
    char head[REDIS_PS_HEAD_MAX];
    size_t hlen, clen = rp->prefix_len + m->topic_len;
    char *channel, *payload;
    const char *argv[3];
    size_t argvlen[3];
    int rc;

    if (!redis_conn_ready(rp->pub))
        return kv_err_set(err, KV_EUNAVAIL,
                          "pubsub: redis %s is unavailable: publisher not "
                          "connected",
                          redis_conn_addr(rp->pub));
    if (rp->nuxeo)
        hlen = (size_t)snprintf(head, sizeof head, "%s:", m->node);
    else
        hlen = redis__ps_envelope_head(m, head);
    channel = malloc(clen);
    payload = malloc(hlen + m->len + 1);
    if (!channel || !payload) {
        free(channel);
        free(payload);
        return kv_err_set(err, KV_ENOMEM, "pubsub: redis: out of memory");
    }
    memcpy(channel, rp->prefix, rp->prefix_len);
    memcpy(channel + rp->prefix_len, m->topic, m->topic_len);
    memcpy(payload, head, hlen);
    if (m->len)
        memcpy(payload + hlen, m->data, m->len);
    argv[0] = "PUBLISH";
    argvlen[0] = 7;
    argv[1] = channel;
    argvlen[1] = clen;
    argv[2] = payload;
    argvlen[2] = hlen + m->len;
    rc = redis_conn_command(rp->pub, 3, argv, argvlen, on_published, rp, err);
    free(channel);
    free(payload);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Lifetime                                                             */

/*
 * Checks the configuration and opens both connections; a server that
 * cannot be reached yet is not an error (they keep retrying and the
 * provider reports unhealthy). Errors: KV_EINVAL (no or bad URL, unknown
 * format, bad prefix), KV_ENOMEM.
 */
static int redis_ps_open(ps_provider *p, const ps_provider_conf *conf,
                         kv_err *err)
{
    redis_provider *rp = (redis_provider *)p;
    const char *prefix = conf->channel_prefix;
    redis_conn_conf cc = {0};
    char *pattern = NULL;
    size_t plen;
    int rc;

    if (!conf->url || !conf->url[0])
        return kv_err_set(err, KV_EINVAL,
                          "pubsub.url is required for the redis provider");
    if (conf->format && strcmp(conf->format, "nuxeo") == 0)
        rp->nuxeo = true;
    else if (conf->format && strcmp(conf->format, "kvbus") != 0)
        return kv_err_set(err, KV_EINVAL,
                          "pubsub.format must be kvbus or "
                          "nuxeo");
    /* The config loader fills in "kvbus:"; Nuxeo's channels are "nuxeo:". */
    if (!prefix || (rp->nuxeo && strcmp(prefix, REDIS_PS_PREFIX_DEFAULT) == 0))
        prefix = rp->nuxeo ? REDIS_PS_PREFIX_NUXEO : REDIS_PS_PREFIX_DEFAULT;
    if (strlen(prefix) > PS_TOPIC_MAX)
        return kv_err_set(err, KV_EINVAL,
                          "pubsub.channel_prefix is longer than %d bytes",
                          PS_TOPIC_MAX);
    rp->prefix = strdup(prefix);
    rp->prefix_len = strlen(prefix);
    pattern = malloc(2 * rp->prefix_len + 2);
    if (!rp->prefix || !pattern) {
        rc = kv_err_set(err, KV_ENOMEM, "out of memory");
        goto fail;
    }
    plen = redis__glob_escape(rp->prefix, rp->prefix_len, pattern);
    pattern[plen++] = '*';
    pattern[plen] = '\0';

    cc.url = conf->url;
    cc.label = "pubsub publisher";
    cc.on_state = on_pub_state;
    cc.ud = rp;
    rc = redis_conn_open(p->loop, &cc, &rp->pub, err);
    if (rc)
        goto fail;
    cc.label = "pubsub subscriber";
    cc.psubscribe = pattern;
    cc.on_message = on_sub_message;
    cc.on_state = on_sub_state;
    rc = redis_conn_open(p->loop, &cc, &rp->sub, err);
    if (rc)
        goto fail;
    free(pattern);
    return 0;

fail:
    rp->closing = true;
    redis_conn_close(rp->pub);
    rp->pub = NULL;
    free(pattern);
    free(rp->prefix);
    rp->prefix = NULL;
    return rc;
}

static void redis_ps_close(ps_provider *p)
{
    redis_provider *rp = (redis_provider *)p;

    rp->closing = true;
    redis_conn_close(rp->sub);
    redis_conn_close(rp->pub);
    ps_origins_clear(&rp->origins);
    free(rp->prefix);
}

/* Up when both connections are: a node that cannot receive is not. */
static bool redis_ps_healthy(ps_provider *p)
{
    redis_provider *rp = (redis_provider *)p;

    return redis_conn_ready(rp->pub) && redis_conn_ready(rp->sub);
}

const struct ps_provider_ops redis_provider_ops = {
    .version = PS_PROVIDER_OPS_VERSION,
    .name = "redis",
    .size = sizeof(redis_provider),
    .open = redis_ps_open,
    .close = redis_ps_close,
    .publish = redis_ps_publish,
    .healthy = redis_ps_healthy,
};
