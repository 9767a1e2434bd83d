/*
 * test_kafka.c - unit tests of the Kafka pub/sub provider
 * (backends/kafka/kafka_pubsub.c) against librdkafka's in-process mock
 * cluster: what a record must carry to be delivered, that own and
 * malformed records are dropped, that a sequence jump resets every
 * subscriber, what a publish puts on the wire, and the consumer lag.
 *
 * One bus (node "u1") on one mock cluster serves the whole group: joining
 * a consumer group takes seconds, so the provider is opened once in the
 * group setup. Each test uses its own origin node ids and topics, so the
 * order of the tests does not matter. A prepare handle keeps the loop
 * alive (kvbusd's server does that; the provider's timer never does).
 * Records are written by a raw
 * librdkafka producer and read back by a raw consumer; the loop is run
 * until the expected events arrive, bounded by T_WAIT_MS.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <uv.h>

#include "backends/kafka/kafka.h"
#include "pubsub/pubsub.h"

#define T_TOPIC "kvbus-unit"
#define T_NODE "u1"
#define T_WAIT_MS 15000 /* bound of one wait for events */
#define T_QUIET_MS 300  /* after the expected events: nothing else comes */
#define T_STEP_MS 5     /* loop step while waiting */
#define T_EVENTS_MAX 64
#define T_DATA_MAX 64
#define T_ERRSTR_BYTES 512

#define TEST(name) static void name(void **state __attribute__((unused)))

/* One callback of the test subscriber. */
struct t_event {
    bool reset;
    char topic[PS_TOPIC_MAX + 1]; /* message topic, or reset pattern */
    char data[T_DATA_MAX];        /* payload, or reset reason */
    char node[PS_NODE_ID_MAX + 1];
    uint64_t seq, ts_ms;
};

static rd_kafka_t *mock_rk; /* carries the mock cluster */
static rd_kafka_mock_cluster_t *mock;
static rd_kafka_t *raw_producer;
static uv_loop_t loop;
static uv_prepare_t keep_alive; /* the provider's timer is unref'd */
static ps_bus *bus;
static ps_sub *sub;
static struct t_event events[T_EVENTS_MAX];
static size_t nevents;

static void on_message(ps_sub *s, const ps_message *m, void *ud)
{
    struct t_event *e = &events[nevents < T_EVENTS_MAX ? nevents++ : 0];

    (void)s;
    (void)ud;
    memset(e, 0, sizeof *e);
    snprintf(e->topic, sizeof e->topic, "%.*s", (int)m->topic_len, m->topic);
    snprintf(e->data, sizeof e->data, "%.*s", (int)m->len, m->data);
    snprintf(e->node, sizeof e->node, "%s", m->node);
    e->seq = m->seq;
    e->ts_ms = m->ts_ms;
}

static void on_reset(ps_sub *s, const char *pattern, const char *reason,
                     void *ud)
{
    struct t_event *e = &events[nevents < T_EVENTS_MAX ? nevents++ : 0];

    (void)s;
    (void)ud;
    memset(e, 0, sizeof *e);
    e->reset = true;
    snprintf(e->topic, sizeof e->topic, "%s", pattern);
    snprintf(e->data, sizeof e->data, "%s", reason);
}

static const ps_sub_cbs t_cbs = {.message = on_message, .reset = on_reset};

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Runs the loop (the provider's poll timer) for about ms. */
static void run_for(uint64_t ms)
{
    uint64_t end = now_ms() + ms;
    struct timespec step = {0, T_STEP_MS * 1000000L};

    while (now_ms() < end) {
        uv_run(&loop, UV_RUN_NOWAIT);
        nanosleep(&step, NULL);
    }
}

/* Runs the loop until n events are recorded; fails after T_WAIT_MS. */
static void wait_events(size_t n)
{
    uint64_t end = now_ms() + T_WAIT_MS;
    struct timespec step = {0, T_STEP_MS * 1000000L};

    while (nevents < n && now_ms() < end) {
        uv_run(&loop, UV_RUN_NOWAIT);
        nanosleep(&step, NULL);
    }
    assert_int_equal(nevents, n);
    run_for(T_QUIET_MS);
    assert_int_equal(nevents, n);
}

/* Writes one record to the topic; NULL header values are left out. */
static void produce(const char *key, const char *value, const char *node,
                    const char *seq, const char *ts)
{
    rd_kafka_headers_t *h = rd_kafka_headers_new(3);

    if (node)
        rd_kafka_header_add(h, "node", -1, node, -1);
    if (seq)
        rd_kafka_header_add(h, "seq", -1, seq, -1);
    if (ts)
        rd_kafka_header_add(h, "ts", -1, ts, -1);
    assert_int_equal(
        rd_kafka_producev(raw_producer, RD_KAFKA_V_TOPIC(T_TOPIC),
                          RD_KAFKA_V_KEY(key, strlen(key)),
                          RD_KAFKA_V_VALUE((void *)value, strlen(value)),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                          RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END),
        RD_KAFKA_RESP_ERR_NO_ERROR);
    assert_int_equal(rd_kafka_flush(raw_producer, T_WAIT_MS), 0);
}

static rd_kafka_t *raw_handle(rd_kafka_type_t type, const char *group)
{
    char errstr[T_ERRSTR_BYTES];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_t *rk;

    rd_kafka_conf_set(c, "bootstrap.servers",
                      rd_kafka_mock_cluster_bootstraps(mock), errstr,
                      sizeof errstr);
    if (group) {
        rd_kafka_conf_set(c, "group.id", group, errstr, sizeof errstr);
        rd_kafka_conf_set(c, "auto.offset.reset", "earliest", errstr,
                          sizeof errstr);
    }
    rk = rd_kafka_new(type, c, errstr, sizeof errstr);
    assert_non_null(rk);
    return rk;
}

static void on_prepare(uv_prepare_t *h)
{
    (void)h;
}

static int group_setup(void **state)
{
    char errstr[T_ERRSTR_BYTES];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    ps_provider_conf pc = {.name = "kafka", .kafka_topic = T_TOPIC};
    kv_err err = {0};
    uint64_t end;

    (void)state;
    rd_kafka_conf_set(c, "log_level", "3", errstr, sizeof errstr);
    mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, errstr, sizeof errstr);
    if (!mock_rk)
        return -1;
    mock = rd_kafka_mock_cluster_new(mock_rk, 1);
    if (!mock || rd_kafka_mock_topic_create(mock, T_TOPIC, 1, 1))
        return -1;
    raw_producer = raw_handle(RD_KAFKA_PRODUCER, NULL);
    uv_loop_init(&loop);
    uv_prepare_init(&loop, &keep_alive);
    uv_prepare_start(&keep_alive, on_prepare);
    pc.url = rd_kafka_mock_cluster_bootstraps(mock);
    if (ps_bus_new(&loop, T_NODE, &kafka_provider_ops, &pc, &bus, &err)) {
        fprintf(stderr, "ps_bus_new: %s\n", err.msg);
        return -1;
    }
    sub = ps_sub_new(bus, &t_cbs, NULL, 0);
    if (!sub || ps_subscribe(sub, "*", 1, &err))
        return -1;
    end = now_ms() + T_WAIT_MS;
    while (!ps_bus_healthy(bus) && now_ms() < end)
        run_for(T_STEP_MS * 10);
    return ps_bus_healthy(bus) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    ps_sub_free(sub);
    ps_bus_free(bus);
    uv_close((uv_handle_t *)&keep_alive, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    rd_kafka_destroy(raw_producer);
    rd_kafka_mock_cluster_destroy(mock);
    rd_kafka_destroy(mock_rk);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    nevents = 0;
    return 0;
}

TEST(receive__well_formed_record__delivered_with_its_stamp)
{
    produce("a.topic", "hello", "other1", "1", "1732233600123");
    wait_events(1);
    assert_false(events[0].reset);
    assert_string_equal(events[0].topic, "a.topic");
    assert_string_equal(events[0].data, "hello");
    assert_string_equal(events[0].node, "other1");
    assert_int_equal(events[0].seq, 1);
    assert_int_equal(events[0].ts_ms, 1732233600123ull);
}

TEST(receive__malformed_records__are_dropped)
{
    produce("m", "no headers", NULL, NULL, NULL);
    produce("m", "no seq", "other2", NULL, "1");
    produce("m", "leading zero", "other2", "01", "1");
    produce("m", "node with colon", "oth:er", "1", "1");
    produce("bad topic", "space in key", "other2", "1", "1");
    produce("m", "good", "other2", "1", "5");
    wait_events(1);
    assert_string_equal(events[0].data, "good");
}

TEST(receive__own_node_record__is_ignored)
{
    produce("own", "mine", T_NODE, "1", "1");
    produce("own", "theirs", "other3", "1", "1");
    wait_events(1);
    assert_string_equal(events[0].data, "theirs");
}

TEST(receive__sequence_jump__resets_every_subscriber_first)
{
    produce("g", "s1", "other4", "1", "1");
    produce("g", "s4", "other4", "4", "1");
    wait_events(3);
    assert_string_equal(events[0].data, "s1");
    assert_true(events[1].reset);
    assert_string_equal(events[1].topic, "*");
    assert_string_equal(events[1].data, "sequence gap from node other4 (2 "
                                        "missed)");
    assert_string_equal(events[2].data, "s4");
}

TEST(publish__record_carries_key_value_and_headers)
{
    rd_kafka_t *c = raw_handle(RD_KAFKA_CONSUMER, "unit-reader");
    rd_kafka_topic_partition_list_t *parts =
        rd_kafka_topic_partition_list_new(1);
    rd_kafka_message_t *rkm = NULL;
    rd_kafka_headers_t *h;
    const void *v;
    size_t len;
    kv_err err = {0};
    uint64_t end = now_ms() + T_WAIT_MS;

    rd_kafka_topic_partition_list_add(parts, T_TOPIC, 0)->offset =
        RD_KAFKA_OFFSET_BEGINNING;
    assert_int_equal(rd_kafka_assign(c, parts), 0);
    rd_kafka_topic_partition_list_destroy(parts);
    assert_int_equal(ps_publish(bus, "pub.t", 5, "payload", 7, NULL, &err), 0);
    wait_events(1); /* delivered locally, once */
    while (now_ms() < end) {
        run_for(T_STEP_MS);
        rkm = rd_kafka_consumer_poll(c, 100);
        if (rkm && !rkm->err && rkm->key_len == 5 &&
            memcmp(rkm->key, "pub.t", 5) == 0)
            break;
        if (rkm)
            rd_kafka_message_destroy(rkm);
        rkm = NULL;
    }
    assert_non_null(rkm);
    assert_int_equal(rkm->len, 7);
    assert_memory_equal(rkm->payload, "payload", 7);
    assert_int_equal(rd_kafka_message_headers(rkm, &h), 0);
    assert_int_equal(rd_kafka_header_get_last(h, "node", &v, &len), 0);
    assert_int_equal(len, strlen(T_NODE));
    assert_memory_equal(v, T_NODE, len);
    assert_int_equal(rd_kafka_header_get_last(h, "seq", &v, &len), 0);
    assert_memory_equal(v, "1", len);
    assert_int_equal(rd_kafka_header_get_last(h, "ts", &v, &len), 0);
    assert_true(len >= 13);
    rd_kafka_message_destroy(rkm);
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
}

TEST(stats__records_not_yet_polled__count_as_lag_until_polled)
{
    struct timespec pause = {1, 200 * 1000000L}; /* > 2 statistics periods */
    ps_bus_stats st;
    uint64_t most = 0, end;

    produce("lag", "l1", "other5", "1", "1");
    produce("lag", "l2", "other5", "2", "1");
    produce("lag", "l3", "other5", "3", "1");
    nanosleep(&pause, NULL); /* fetched and measured, nothing polled */
    end = now_ms() + T_WAIT_MS;
    while (now_ms() < end) {
        run_for(T_STEP_MS);
        ps_bus_stats_get(bus, &st);
        if (st.lag > most)
            most = st.lag;
        if (most && st.lag == 0)
            break;
    }
    assert_int_equal(most, 3);
    assert_int_equal(st.lag, 0);
    assert_int_equal(nevents, 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(
            receive__well_formed_record__delivered_with_its_stamp, setup),
        cmocka_unit_test_setup(receive__malformed_records__are_dropped, setup),
        cmocka_unit_test_setup(receive__own_node_record__is_ignored, setup),
        cmocka_unit_test_setup(
            receive__sequence_jump__resets_every_subscriber_first, setup),
        cmocka_unit_test_setup(publish__record_carries_key_value_and_headers,
                               setup),
        cmocka_unit_test_setup(
            stats__records_not_yet_polled__count_as_lag_until_polled, setup),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
