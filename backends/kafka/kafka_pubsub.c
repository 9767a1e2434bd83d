/*
 * kafka_pubsub.c - the Kafka pub/sub provider ("kafka"): carries the
 * messages of one node's bus to the other nodes through one Kafka topic.
 *
 * Two librdkafka handles: a producer (rd_kafka_producev, never waiting:
 * librdkafka batches and sends from its own threads) and a high-level
 * consumer subscribed to the one topic in the group "kvbus-<node_id>"
 * (one group per node, so every node reads every record) with
 * auto.offset.reset = latest, so a new node starts at the end of the log.
 *
 * Records: key = pubsub topic (one topic maps to one partition and keeps
 * its order), value = payload bytes, headers "node" (origin node id),
 * "seq" and "ts" (canonical decimal: per-origin sequence number, wall
 * clock ms). Records that are not exactly this are dropped (logged once).
 *
 * Handing records to the loop: librdkafka writes a byte to a non-blocking
 * pipe whenever the consumer's queue or the producer's main queue goes
 * from empty to non-empty (rd_kafka_queue_io_event_enable); a uv_poll on
 * the pipe's read end drains it and polls both handles with timeout 0
 * (never blocking), taking at most KAFKA_POLL_BATCH_MAX records per turn.
 * Because the event fires only on the empty -> non-empty edge, a turn that
 * stops at the batch limit schedules the next one itself (a 0 ms timer)
 * instead of waiting for a byte that will not come. An idle node has no
 * wake-ups at all. Polling serves the rebalance, error, statistics and
 * delivery callbacks on the loop thread too. Each record is handed to
 * ps_bus_receive(); the bus drops those from this node (it delivered them
 * when they were published), so local subscribers get each message exactly
 * once. Both handles are unref'd: they never keep the loop alive on their
 * own, so kvbusd's loop ends at shutdown once its server and clients are
 * gone.
 *
 * Health: a handle is up when its statistics show a broker in state UP and
 * no error callback since said all brokers are down; the provider is
 * healthy when both handles are up, no fatal error happened, and every
 * partition assigned to the consumer is fetching (its start offset is
 * known, so nothing published from then on is skipped).
 *
 * Gaps: with one partition, the last sequence number of each origin is
 * kept and a jump resets every local subscriber, as the Redis provider
 * does; a new assignment after a rebalance resets them too. With several
 * partitions one origin's sequence is spread over them, so no gap
 * detection is done.
 *
 * Consumer lag (records in the log not yet handed to the bus) comes from
 * the consumer's statistics ("consumer_lag_stored": high watermark minus
 * the offset after the last record polled, summed over the partitions)
 * and is reported by the lag method (ps_bus_stats.lag).
 *
 * Left out: TLS/SASL settings, creating the Kafka topic (it must exist or
 * be auto-created by the brokers), the nuxeo format.
 * Runs on: the event loop thread, except on_log (any librdkafka thread).
 * close blocks for up to KAFKA_CLOSE_FLUSH_MS plus the consumer's leave of
 * its group.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <uv.h>

#include "backends/kafka/kafka.h"
#include "pubsub/pubsub.h"

#define KAFKA_TOPIC_DEFAULT "kvbus-pubsub" /* config default */
#define KAFKA_GROUP_PREFIX "kvbus-"        /* group id = prefix + node id */
#define KAFKA_POLL_BATCH_MAX 1000          /* records per loop turn */
#define KAFKA_WAKE_DRAIN_BYTES 64          /* pipe bytes read at a time */
#define KAFKA_STATS_INTERVAL_MS "500"      /* statistics.interval.ms */
#define KAFKA_LINGER_MS "1"                /* producer batching delay */
#define KAFKA_FETCH_WAIT_MAX_MS "50"       /* broker-side fetch wait */
#define KAFKA_CLOSE_FLUSH_MS 2000          /* wait for unsent records */
#define KAFKA_U64_DIGITS 20                /* digits of UINT64_MAX */
#define KAFKA_NUM_BYTES (KAFKA_U64_DIGITS + 1)
#define KAFKA_REASON_BYTES 192 /* text of a reset reason */
#define KAFKA_ERRSTR_BYTES 512 /* librdkafka's errstr buffers */
#define KAFKA_GROUP_BYTES (sizeof KAFKA_GROUP_PREFIX + PS_NODE_ID_MAX)
#define KAFKA_LOG_TEXT_MAX 400 /* librdkafka log text shown */

#define KAFKA_HDR_NODE "node"
#define KAFKA_HDR_SEQ "seq"
#define KAFKA_HDR_TS "ts"

enum { KAFKA_LOG_ERROR, KAFKA_LOG_WARN, KAFKA_LOG_INFO };

typedef struct kafka_provider {
    ps_provider base;     /* must be first */
    rd_kafka_t *producer; /* NULL until open succeeds */
    rd_kafka_t *consumer;
    char *topic;          /* the Kafka topic, NUL-terminated */
    int wake_fds[2];      /* pipe librdkafka writes to; -1 when closed */
    rd_kafka_queue_t *cq; /* the consumer's queue, with the io event */
    rd_kafka_queue_t *pq; /* the producer's main queue, likewise */
    uv_poll_t *wake;      /* reads wake_fds[0]; freed in its close cb */
    uv_timer_t *backlog;  /* the next turn after a full batch; likewise */
    bool handles_live;    /* wake and backlog initialised on the loop */
    bool closing;         /* close was called */
    bool fatal;           /* a fatal error: unhealthy for good */
    bool producer_up;     /* a broker UP in the producer's statistics */
    bool consumer_up;     /* the same for the consumer */
    bool assigned;        /* the consumer holds an assignment */
    bool ever_assigned;
    bool fetching;         /* every assigned partition is fetching */
    int partitions;        /* assigned partitions */
    bool malformed_logged; /* one line per provider, not per record */
    bool pub_fail_logged;  /* per outage of delivery */
    bool recv_fail_logged;
    uint64_t lag;       /* records not yet consumed, from statistics */
    ps_origins origins; /* last seq per origin, for gap detection */
} kafka_provider;

/* ------------------------------------------------------------------ */
/* Small helpers                                                        */

/* One line on stderr in the server's log format. Runs on: any thread. */
static void kafka_log(int level, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warn", "info"};
    char stamp[32], line[KAFKA_LOG_TEXT_MAX + 64];
    struct timespec ts;
    struct tm tm;
    va_list ap;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* One fprintf, so lines of several threads do not interleave. */
    fprintf(stderr, "%s.%03ldZ %s %s\n", stamp, ts.tv_nsec / 1000000L,
            names[level], line);
}

/* True when id (len bytes) may be a node id: printable, no space or ':'. */
static bool kafka_node_ok(const char *id, size_t len)
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
static bool kafka_parse_u64(const char *p, size_t len, uint64_t *out)
{
    uint64_t v = 0;

    if (!p || len == 0 || len > KAFKA_U64_DIGITS || (len > 1 && p[0] == '0'))
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

/* Sets name = value on conf; KV_EINVAL with librdkafka's errstr if not. */
static int conf_set(rd_kafka_conf_t *conf, const char *name, const char *value,
                    kv_err *err)
{
    char errstr[KAFKA_ERRSTR_BYTES];

    if (rd_kafka_conf_set(conf, name, value, errstr, sizeof errstr) !=
        RD_KAFKA_CONF_OK)
        return kv_err_set(err, KV_EINVAL, "pubsub: kafka: %s = %s: %s", name,
                          value, errstr);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Receiving                                                            */

/* The value of header name as (pointer, length); false when absent. */
static bool header_get(rd_kafka_headers_t *hdrs, const char *name,
                       const char **val, size_t *len)
{
    const void *v = NULL;

    if (!hdrs ||
        rd_kafka_header_get_last(hdrs, name, &v, len) !=
            RD_KAFKA_RESP_ERR_NO_ERROR ||
        !v)
        return false;
    *val = v;
    return true;
}

/* One record from the consumer: decode, check, deliver. */
static void on_record(kafka_provider *kp, rd_kafka_message_t *rkm)
{
    rd_kafka_headers_t *hdrs = NULL;
    char node[PS_NODE_ID_MAX + 1], reason[KAFKA_REASON_BYTES];
    const char *v;
    size_t vlen;
    ps_message m;
    uint64_t missed;

    if (rd_kafka_message_headers(rkm, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
        hdrs = NULL;
    m.topic = rkm->key;
    m.topic_len = rkm->key_len;
    if (!header_get(hdrs, KAFKA_HDR_NODE, &v, &vlen) ||
        !kafka_node_ok(v, vlen) ||
        !header_get(hdrs, KAFKA_HDR_SEQ, &m.data, &m.len) ||
        !kafka_parse_u64(m.data, m.len, &m.seq) ||
        !header_get(hdrs, KAFKA_HDR_TS, &m.data, &m.len) ||
        !kafka_parse_u64(m.data, m.len, &m.ts_ms) || !m.topic ||
        ps_check_topic(m.topic, m.topic_len, NULL) != 0) {
        if (!kp->malformed_logged)
            kafka_log(
                KAFKA_LOG_WARN,
                "pubsub: kafka: dropped a malformed record at %s [%" PRId32
                "] offset %" PRId64 " (%zu bytes); further ones are "
                "dropped silently",
                kp->topic, rkm->partition, rkm->offset, rkm->len);
        kp->malformed_logged = true;
        return;
    }
    memcpy(node, v, vlen);
    node[vlen] = '\0';
    if (strcmp(node, ps_bus_node_id(kp->base.bus)) == 0)
        return; /* our own, delivered when published */
    m.node = node;
    m.data = rkm->payload;
    m.len = rkm->len;
    if (kp->partitions == 1) {
        missed = ps_origins_note(&kp->origins, node, m.seq);
        if (missed) {
            snprintf(reason, sizeof reason,
                     "sequence gap from node %s (%" PRIu64 " missed)", node,
                     missed);
            kafka_log(KAFKA_LOG_WARN, "pubsub: kafka: %s", reason);
            ps_bus_reset(kp->base.bus, NULL, reason);
        }
    }
    ps_bus_receive(kp->base.bus, &m);
}

/* An event (not a record) from the consumer's poll. */
static void on_consumer_error(kafka_provider *kp, rd_kafka_message_t *rkm)
{
    if (rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
        return;
    if (!kp->recv_fail_logged)
        kafka_log(KAFKA_LOG_WARN, "pubsub: kafka: consumer of %s: %s",
                  kp->topic, rd_kafka_message_errstr(rkm));
    kp->recv_fail_logged = true;
}

/*
 * The group gave or took partitions. Assignments are applied here (eager
 * protocol). A new assignment after the first may have skipped or
 * repeated records, so every local subscriber starts over.
 */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    kafka_provider *kp = opaque;

    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        rd_kafka_assign(rk, parts);
        kp->assigned = true;
        kp->fetching = false;
        kp->partitions = parts->cnt;
        kafka_log(KAFKA_LOG_INFO,
                  "pubsub: kafka: consumer of %s assigned %d partition(s)",
                  kp->topic, parts->cnt);
        if (kp->ever_assigned && !kp->closing) {
            ps_origins_clear(&kp->origins);
            ps_bus_reset(kp->base.bus, NULL, "provider reassigned");
        }
        kp->ever_assigned = true;
    } else {
        rd_kafka_assign(rk, NULL);
        kp->assigned = false;
        kp->fetching = false;
        kp->partitions = 0;
    }
}

/* ------------------------------------------------------------------ */
/* Health: errors and statistics                                        */

/* An error from either handle: all brokers down, or fatal. */
static void on_error(rd_kafka_t *rk, int code, const char *reason, void *opaque)
{
    kafka_provider *kp = opaque;
    bool is_producer = rk == kp->producer;
    char errstr[KAFKA_ERRSTR_BYTES];

    if (kp->closing)
        return;
    if (code == RD_KAFKA_RESP_ERR__FATAL) {
        rd_kafka_fatal_error(rk, errstr, sizeof errstr);
        kafka_log(KAFKA_LOG_ERROR, "pubsub: kafka: fatal error: %s", errstr);
        kp->fatal = true;
        return;
    }
    if (code == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        if (is_producer ? kp->producer_up : kp->consumer_up)
            kafka_log(KAFKA_LOG_WARN, "pubsub: kafka: %s: %s",
                      is_producer ? "producer" : "consumer", reason);
        if (is_producer)
            kp->producer_up = false;
        else
            kp->consumer_up = false;
    }
}

/*
 * The statistics of one handle (JSON, see librdkafka's STATISTICS.md):
 * whether a broker is UP, and for the consumer whether every assigned
 * partition of the topic is fetching and how far behind it is.
 */
static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    kafka_provider *kp = opaque;
    json_t *root = json_loadb(json, len, 0, NULL), *b, *parts, *pt;
    const char *name;
    bool up = false, fetching = true;
    uint64_t lag = 0;
    size_t nfetch = 0;

    if (!root || kp->closing) {
        json_decref(root);
        return 0;
    }
    json_object_foreach(json_object_get(root, "brokers"), name, b)
    {
        const char *state = json_string_value(json_object_get(b, "state"));
        if (state && strcmp(state, "UP") == 0)
            up = true;
    }
    if (rk == kp->producer) {
        kp->producer_up = up;
    } else {
        kp->consumer_up = up;
        parts = json_object_get(
            json_object_get(json_object_get(root, "topics"), kp->topic),
            "partitions");
        json_object_foreach(parts, name, pt)
        {
            const char *fs;
            json_int_t l;

            if (strcmp(name, "-1") == 0)
                continue; /* messages not yet partitioned */
            fs = json_string_value(json_object_get(pt, "fetch_state"));
            if (!fs || strcmp(fs, "none") == 0)
                continue; /* not assigned to this consumer */
            nfetch++;
            if (strcmp(fs, "active") != 0)
                fetching = false;
            l = json_integer_value(json_object_get(pt, "consumer_lag_stored"));
            if (l > 0)
                lag += (uint64_t)l;
        }
        kp->lag = lag;
        kp->fetching =
            kp->assigned && fetching && nfetch >= (size_t)kp->partitions;
    }
    json_decref(root);
    return 0; /* librdkafka frees json */
}

/* librdkafka's own log lines, in ours. Runs on: any librdkafka thread. */
static void on_log(const rd_kafka_t *rk, int level, const char *fac,
                   const char *buf)
{
    (void)rk;
    kafka_log(level <= 3   ? KAFKA_LOG_ERROR
              : level <= 5 ? KAFKA_LOG_WARN
                           : KAFKA_LOG_INFO,
              "pubsub: kafka: %s: %.*s", fac, KAFKA_LOG_TEXT_MAX, buf);
}

/* ------------------------------------------------------------------ */
/* Waking the loop                                                      */

static void on_backlog(uv_timer_t *t);

/* Serves both handles without blocking: callbacks, then records. When the
 * batch limit stops the turn, the next one is scheduled (see the top). */
static void serve_queues(kafka_provider *kp)
{
    rd_kafka_message_t *rkm;
    int i;

    if (kp->closing)
        return;
    rd_kafka_poll(kp->producer, 0);
    for (i = 0; i < KAFKA_POLL_BATCH_MAX && !kp->closing; i++) {
        rkm = rd_kafka_consumer_poll(kp->consumer, 0);
        if (!rkm)
            return;
        if (rkm->err)
            on_consumer_error(kp, rkm);
        else {
            kp->recv_fail_logged = false;
            on_record(kp, rkm);
        }
        rd_kafka_message_destroy(rkm);
    }
    if (!kp->closing)
        uv_timer_start(kp->backlog, on_backlog, 0, 0);
}

static void on_backlog(uv_timer_t *t)
{
    serve_queues(t->data);
}

/* librdkafka wrote to the pipe: empty it, then serve the queues. */
static void on_wake(uv_poll_t *h, int status, int events)
{
    kafka_provider *kp = h->data;
    char drain[KAFKA_WAKE_DRAIN_BYTES];

    (void)status;
    (void)events;
    while (read(kp->wake_fds[0], drain, sizeof drain) > 0)
        ;
    serve_queues(kp);
}

static void on_handle_closed(uv_handle_t *h)
{
    free(h);
}

/* The pipe and both queues' io events, then the poll and backlog handles
 * on the loop. The librdkafka handles must exist. On failure wake_close
 * undoes whatever was done. Errors: KV_EUNAVAIL (no pipe), KV_ENOMEM. */
static int wake_open(kafka_provider *kp, uv_loop_t *loop, kv_err *err)
{
    static const char byte = 1;

    if (pipe2(kp->wake_fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        kp->wake_fds[0] = kp->wake_fds[1] = -1;
        return kv_err_set(err, KV_EUNAVAIL, "pubsub: kafka: pipe: %s",
                          strerror(errno));
    }
    kp->wake = malloc(sizeof *kp->wake);
    kp->backlog = malloc(sizeof *kp->backlog);
    if (!kp->wake || !kp->backlog)
        return kv_err_set(err, KV_ENOMEM, "out of memory");
    if (uv_poll_init(loop, kp->wake, kp->wake_fds[0]) != 0)
        return kv_err_set(err, KV_EUNAVAIL,
                          "pubsub: kafka: cannot poll a pipe");
    uv_timer_init(loop, kp->backlog);
    kp->handles_live = true;
    kp->wake->data = kp->backlog->data = kp;
    uv_unref((uv_handle_t *)kp->wake);
    uv_unref((uv_handle_t *)kp->backlog);

    kp->cq = rd_kafka_queue_get_consumer(kp->consumer);
    kp->pq = rd_kafka_queue_get_main(kp->producer);
    if (!kp->cq || !kp->pq)
        return kv_err_set(err, KV_ENOMEM, "out of memory");
    rd_kafka_queue_io_event_enable(kp->cq, kp->wake_fds[1], &byte, 1);
    rd_kafka_queue_io_event_enable(kp->pq, kp->wake_fds[1], &byte, 1);
    uv_poll_start(kp->wake, UV_READABLE, on_wake);
    /* Whatever was queued before the io events were on sent no byte. */
    uv_timer_start(kp->backlog, on_backlog, 0, 0);
    return 0;
}

/* Turns the io events off and closes the loop handles. The pipe stays
 * open until wake_close_pipe, after the librdkafka handles are destroyed:
 * their threads may write to it until then. */
static void wake_close(kafka_provider *kp)
{
    rd_kafka_queue_t **queues[] = {&kp->cq, &kp->pq};

    for (size_t i = 0; i < sizeof queues / sizeof queues[0]; i++) {
        if (!*queues[i])
            continue;
        rd_kafka_queue_io_event_enable(*queues[i], -1, NULL, 0);
        rd_kafka_queue_destroy(*queues[i]);
        *queues[i] = NULL;
    }
    if (kp->handles_live) {
        uv_close((uv_handle_t *)kp->wake, on_handle_closed);
        uv_close((uv_handle_t *)kp->backlog, on_handle_closed);
    } else {
        free(kp->wake);
        free(kp->backlog);
    }
    kp->wake = NULL;
    kp->backlog = NULL;
    kp->handles_live = false;
}

static void wake_close_pipe(kafka_provider *kp)
{
    for (int i = 0; i < 2; i++) {
        if (kp->wake_fds[i] >= 0)
            close(kp->wake_fds[i]);
        kp->wake_fds[i] = -1;
    }
}

/* ------------------------------------------------------------------ */
/* Publishing                                                           */

/* A delivery report: nothing to do unless the record was lost. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *rkm,
                        void *opaque)
{
    kafka_provider *kp = opaque;

    (void)rk;
    if (kp->closing)
        return;
    if (!rkm->err) {
        kp->pub_fail_logged = false;
        return;
    }
    if (!kp->pub_fail_logged)
        kafka_log(KAFKA_LOG_WARN, "pubsub: kafka: a message may be lost: %s",
                  rd_kafka_err2str(rkm->err));
    kp->pub_fail_logged = true;
}

/*
 * Hands m to the producer as one record (copied). Returns 0 once queued,
 * KV_EUNAVAIL while the brokers are down or the local queue is full,
 * KV_ETOOBIG for a record past message.max.bytes.
 */
static int kafka_ps_publish(ps_provider *p, const ps_message *m, kv_err *err)
{
    kafka_provider *kp = (kafka_provider *)p;
    char seq[KAFKA_NUM_BYTES], ts[KAFKA_NUM_BYTES];
    rd_kafka_resp_err_t rerr;

    if (kp->fatal || !kp->producer_up)
        return kv_err_set(err, KV_EUNAVAIL, "pubsub: kafka is unavailable: %s",
                          kp->fatal ? "fatal error" : "no broker up");
    snprintf(seq, sizeof seq, "%" PRIu64, m->seq);
    snprintf(ts, sizeof ts, "%" PRIu64, m->ts_ms);
    rerr = rd_kafka_producev(
        kp->producer, RD_KAFKA_V_TOPIC(kp->topic),
        RD_KAFKA_V_KEY(m->topic, m->topic_len),
        RD_KAFKA_V_VALUE((void *)m->data, m->len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADER(KAFKA_HDR_NODE, m->node, (ssize_t)strlen(m->node)),
        RD_KAFKA_V_HEADER(KAFKA_HDR_SEQ, seq, (ssize_t)strlen(seq)),
        RD_KAFKA_V_HEADER(KAFKA_HDR_TS, ts, (ssize_t)strlen(ts)),
        RD_KAFKA_V_END);
    if (rerr == RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    if (rerr == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE)
        return kv_err_set(err, KV_ETOOBIG, "pubsub: kafka: %s",
                          rd_kafka_err2str(rerr));
    return kv_err_set(err, KV_EUNAVAIL, "pubsub: kafka is unavailable: %s",
                      rd_kafka_err2str(rerr));
}

/* ------------------------------------------------------------------ */
/* Lifetime                                                             */

/* The settings both handles share; KV_EINVAL on a bad one. */
static rd_kafka_conf_t *conf_common(kafka_provider *kp, const char *url,
                                    kv_err *err)
{
    rd_kafka_conf_t *c = rd_kafka_conf_new();

    if (conf_set(c, "bootstrap.servers", url, err) ||
        conf_set(c, "statistics.interval.ms", KAFKA_STATS_INTERVAL_MS, err)) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    rd_kafka_conf_set_opaque(c, kp);
    rd_kafka_conf_set_error_cb(c, on_error);
    rd_kafka_conf_set_stats_cb(c, on_stats);
    rd_kafka_conf_set_log_cb(c, on_log);
    return c;
}

/*
 * Checks the configuration, creates both handles and the loop wake-up;
 * brokers that cannot be reached yet are not an error (librdkafka keeps
 * retrying and the provider reports unhealthy). Errors: KV_EINVAL (no
 * URL, format other than kvbus, a setting librdkafka refuses), KV_ENOMEM.
 */
static int kafka_ps_open(ps_provider *p, const ps_provider_conf *conf,
                         kv_err *err)
{
    kafka_provider *kp = (kafka_provider *)p;
    const char *node = ps_bus_node_id(p->bus);
    char errstr[KAFKA_ERRSTR_BYTES], group[KAFKA_GROUP_BYTES];
    rd_kafka_conf_t *pc = NULL, *cc = NULL;
    rd_kafka_topic_partition_list_t *subs = NULL;
    rd_kafka_resp_err_t rerr;
    int rc;

    if (!conf->url || !conf->url[0])
        return kv_err_set(err, KV_EINVAL,
                          "pubsub.url (bootstrap servers host:port,...) is "
                          "required for the kafka provider");
    if (conf->format && strcmp(conf->format, "kvbus") != 0)
        return kv_err_set(err, KV_EINVAL,
                          "pubsub.format must be kvbus for the kafka "
                          "provider");
    kp->topic =
        strdup(conf->kafka_topic && conf->kafka_topic[0] ? conf->kafka_topic
                                                         : KAFKA_TOPIC_DEFAULT);
    kp->wake_fds[0] = kp->wake_fds[1] = -1;
    subs = rd_kafka_topic_partition_list_new(1);
    if (!kp->topic || !subs) {
        rc = kv_err_set(err, KV_ENOMEM, "out of memory");
        goto fail;
    }
    snprintf(group, sizeof group, "%s%s", KAFKA_GROUP_PREFIX, node);

    rc = KV_EINVAL;
    pc = conf_common(kp, conf->url, err);
    if (!pc || conf_set(pc, "client.id", group, err) ||
        conf_set(pc, "linger.ms", KAFKA_LINGER_MS, err) ||
        conf_set(pc, "enable.idempotence", "true", err))
        goto fail;
    rd_kafka_conf_set_dr_msg_cb(pc, on_delivery);
    kp->producer = rd_kafka_new(RD_KAFKA_PRODUCER, pc, errstr, sizeof errstr);
    if (!kp->producer) {
        rc = kv_err_set(err, KV_EINVAL, "pubsub: kafka producer: %s", errstr);
        goto fail;
    }
    pc = NULL; /* owned by the handle */

    cc = conf_common(kp, conf->url, err);
    if (!cc || conf_set(cc, "client.id", group, err) ||
        conf_set(cc, "group.id", group, err) ||
        conf_set(cc, "auto.offset.reset", "latest", err) ||
        conf_set(cc, "fetch.wait.max.ms", KAFKA_FETCH_WAIT_MAX_MS, err))
        goto fail;
    rd_kafka_conf_set_rebalance_cb(cc, on_rebalance);
    kp->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, cc, errstr, sizeof errstr);
    if (!kp->consumer) {
        rc = kv_err_set(err, KV_EINVAL, "pubsub: kafka consumer: %s", errstr);
        goto fail;
    }
    cc = NULL;
    rd_kafka_poll_set_consumer(kp->consumer);
    rd_kafka_topic_partition_list_add(subs, kp->topic, RD_KAFKA_PARTITION_UA);
    rerr = rd_kafka_subscribe(kp->consumer, subs);
    if (rerr) {
        rc = kv_err_set(err, KV_EINVAL, "pubsub: kafka: subscribe to %s: %s",
                        kp->topic, rd_kafka_err2str(rerr));
        goto fail;
    }
    rd_kafka_topic_partition_list_destroy(subs);
    subs = NULL;

    rc = wake_open(kp, p->loop, err);
    if (rc)
        goto fail;
    kafka_log(KAFKA_LOG_INFO,
              "pubsub: kafka: topic %s on %s, consumer group %s", kp->topic,
              conf->url, group);
    return 0;

fail:
    kp->closing = true;
    if (pc)
        rd_kafka_conf_destroy(pc);
    if (cc)
        rd_kafka_conf_destroy(cc);
    if (subs)
        rd_kafka_topic_partition_list_destroy(subs);
    wake_close(kp);
    if (kp->consumer)
        rd_kafka_destroy(kp->consumer);
    if (kp->producer)
        rd_kafka_destroy(kp->producer);
    kp->consumer = kp->producer = NULL;
    wake_close_pipe(kp);
    free(kp->topic);
    kp->topic = NULL;
    return rc;
}

/* Leaves the group, sends what is queued (bounded), frees everything. */
static void kafka_ps_close(ps_provider *p)
{
    kafka_provider *kp = (kafka_provider *)p;

    kp->closing = true;
    wake_close(kp);
    rd_kafka_consumer_close(kp->consumer);
    rd_kafka_destroy(kp->consumer);
    if (rd_kafka_flush(kp->producer, KAFKA_CLOSE_FLUSH_MS) != 0)
        kafka_log(KAFKA_LOG_WARN,
                  "pubsub: kafka: %d message(s) not sent at close",
                  rd_kafka_outq_len(kp->producer));
    rd_kafka_destroy(kp->producer);
    wake_close_pipe(kp);
    ps_origins_clear(&kp->origins);
    free(kp->topic);
}

/* Up when both handles reach a broker and the consumer is fetching: a
 * node that cannot receive is not. */
static bool kafka_ps_healthy(ps_provider *p)
{
    kafka_provider *kp = (kafka_provider *)p;

    return !kp->fatal && kp->producer_up && kp->consumer_up && kp->fetching;
}

/* Records of the topic this node has not consumed yet, as of the last
 * statistics of the consumer (0 while unknown). */
static uint64_t kafka_ps_lag(ps_provider *p)
{
    return ((kafka_provider *)p)->lag;
}

const struct ps_provider_ops kafka_provider_ops = {
    .version = PS_PROVIDER_OPS_VERSION,
    .name = "kafka",
    .size = sizeof(kafka_provider),
    .open = kafka_ps_open,
    .close = kafka_ps_close,
    .publish = kafka_ps_publish,
    .healthy = kafka_ps_healthy,
    .lag = kafka_ps_lag,
};
