/*
 * test_pubsub.c - unit tests of the pub/sub core (pubsub/): the topic and
 * pattern rules, the bus with the memory provider and a fake one, the
 * local fan-out and its re-entrancy, the counters, and the bounded queue.
 *
 * Every test starts with a bus for node "node-a" on the memory provider,
 * a fake monotonic clock (ps__clock_ns) and a counting allocator
 * (ps__malloc). Test clients are ps_sub's whose callbacks record each call
 * as an event and may then run an action, which is how the re-entrant
 * cases (free, subscribe, unsubscribe, publish from a callback) are
 * driven. Nothing here runs the loop.
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
#include <uv.h>

#include "pubsub/pubsub.h"

#define T_NS_PER_S 1000000000ull
#define T_CLOCK_START_NS (1000 * T_NS_PER_S + T_NS_PER_S / 2) /* 1000.5 s */
#define T_EVENTS_MAX 4096 /* events one test may record */
#define T_CLIENTS_MAX 200 /* test clients one test may create */
#define T_DATA_MAX 64     /* payload bytes an event keeps */
#define T_FANOUT_SUBS 150 /* subscribers of the fan-out shape */
#define T_RATE_EPSILON 1e-9

/* A test case; cmocka's state is not used (setup fills the globals). */
#define TEST(name) static void name(void **state __attribute__((unused)))

enum t_kind { T_MESSAGE, T_RESET };

/* One callback made to a test client, copied out of its arguments. */
struct t_event {
    enum t_kind kind;
    int client;
    char topic[PS_TOPIC_MAX + 1]; /* message topic, or reset pattern */
    char data[T_DATA_MAX];        /* message payload, or reset reason */
    size_t len;
    char node[PS_NODE_ID_MAX + 1];
    uint64_t seq;
    uint64_t ts_ms;
};

struct t_client;
/* Runs after a client's callback recorded its event. */
typedef void (*t_action)(struct t_client *c, const ps_message *m);

struct t_client {
    int id;
    ps_sub *sub;           /* NULL once freed */
    t_action on_message;   /* NULL = just record */
    t_action on_reset;     /* m is NULL */
    struct t_client *peer; /* the other client an action works on */
    int messages;
    int resets;
};

static ps_bus *t_bus;
static struct t_event t_ev[T_EVENTS_MAX];
static size_t t_nev;
static struct t_client t_cl[T_CLIENTS_MAX];
static int t_ncl;
static uint64_t t_now_ns;
static long t_alloc_budget = -1; /* allocations before failing; -1 = none */

static uint64_t t_clock(void)
{
    return t_now_ns;
}

static void *t_malloc(size_t n)
{
    if (t_alloc_budget == 0)
        return NULL;
    if (t_alloc_budget > 0)
        t_alloc_budget--;
    return malloc(n);
}

static uint64_t t_wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static struct t_event *t_record(enum t_kind kind, const struct t_client *c)
{
    struct t_event *e;

    assert_true(t_nev < T_EVENTS_MAX);
    e = &t_ev[t_nev++];
    memset(e, 0, sizeof(*e));
    e->kind = kind;
    e->client = c->id;
    return e;
}

static void on_message(ps_sub *sub, const ps_message *m, void *ud)
{
    struct t_client *c = ud;
    struct t_event *e = t_record(T_MESSAGE, c);

    assert_ptr_equal(c->sub, sub);
    assert_true(m->topic_len <= PS_TOPIC_MAX);
    memcpy(e->topic, m->topic, m->topic_len);
    e->len = m->len;
    memcpy(e->data, m->data, m->len < T_DATA_MAX ? m->len : T_DATA_MAX);
    snprintf(e->node, sizeof(e->node), "%s", m->node);
    e->seq = m->seq;
    e->ts_ms = m->ts_ms;
    c->messages++;
    if (c->on_message)
        c->on_message(c, m);
}

static void on_reset(ps_sub *sub, const char *pattern, const char *reason,
                     void *ud)
{
    struct t_client *c = ud;
    struct t_event *e = t_record(T_RESET, c);

    assert_ptr_equal(c->sub, sub);
    snprintf(e->topic, sizeof(e->topic), "%s", pattern);
    snprintf(e->data, sizeof(e->data), "%s", reason);
    c->resets++;
    if (c->on_reset)
        c->on_reset(c, NULL);
}

static const ps_sub_cbs t_cbs = {.message = on_message, .reset = on_reset};

/* A new client with max_patterns patterns at most (0 = default). */
static struct t_client *client_max(size_t max_patterns)
{
    struct t_client *c;

    assert_true(t_ncl < T_CLIENTS_MAX);
    c = &t_cl[t_ncl];
    memset(c, 0, sizeof(*c));
    c->id = t_ncl++;
    c->sub = ps_sub_new(t_bus, &t_cbs, c, max_patterns);
    assert_non_null(c->sub);
    return c;
}

static struct t_client *client(void)
{
    return client_max(0);
}

static void client_free(struct t_client *c)
{
    ps_sub_free(c->sub);
    c->sub = NULL;
}

static void sub(struct t_client *c, const char *pattern)
{
    kv_err err = {0};

    assert_int_equal(ps_subscribe(c->sub, pattern, strlen(pattern), &err), 0);
}

static void pub(const char *topic, const char *data)
{
    kv_err err = {0};

    assert_int_equal(
        ps_publish(t_bus, topic, strlen(topic), data, strlen(data), NULL, &err),
        0);
}

/* A message from another node, as a provider hands it over. */
static void receive(const char *node, const char *topic, uint64_t seq)
{
    ps_message m = {.topic = topic,
                    .topic_len = strlen(topic),
                    .data = "remote",
                    .len = 6,
                    .node = node,
                    .seq = seq,
                    .ts_ms = 42};

    ps_bus_receive(t_bus, &m);
}

/* Events of kind recorded for client c with this topic (or pattern). */
static int events(enum t_kind kind, const struct t_client *c, const char *topic)
{
    int n = 0;

    for (size_t i = 0; i < t_nev; i++)
        if (t_ev[i].kind == kind && t_ev[i].client == c->id &&
            strcmp(t_ev[i].topic, topic) == 0)
            n++;
    return n;
}

/* The counters of a tracked name; false when it is not tracked. */
static bool topic_stats(const char *name, ps_topic_stats *out)
{
    ps_topic_stats st;

    for (size_t i = 0; ps_bus_topic_at(t_bus, i, &st); i++) {
        if (strcmp(st.name, name) == 0) {
            *out = st;
            return true;
        }
    }
    return false;
}

static size_t topic_count(void)
{
    ps_topic_stats st;
    size_t i = 0;

    while (ps_bus_topic_at(t_bus, i, &st))
        i++;
    return i;
}

static void assert_rate(double got, double want)
{
    double d = got - want;

    if (d < -T_RATE_EPSILON || d > T_RATE_EPSILON)
        fail_msg("rate %f, expected %f", got, want);
}

/* ---- a fake provider: counts calls, may fail on demand ---- */

struct t_prov {
    ps_provider base; /* must be first */
    char extra[32];   /* must arrive zeroed */
    int publishes;
    char last_topic[PS_TOPIC_MAX + 1];
    uint64_t last_seq;
};

static int t_prov_open_rc;
static int t_prov_publish_rc;
static bool t_prov_silent; /* fail without filling err */
static int t_prov_closes;
static struct t_prov *t_prov_now;
static const ps_provider_conf *t_prov_conf;

static const struct ps_provider_ops t_prov_ops;

static int t_prov_open(ps_provider *p, const ps_provider_conf *conf,
                       kv_err *err)
{
    struct t_prov *tp = (struct t_prov *)p;

    assert_ptr_equal(p->ops, &t_prov_ops);
    assert_non_null(p->bus);
    for (size_t i = 0; i < sizeof(tp->extra); i++)
        assert_int_equal(tp->extra[i], 0);
    t_prov_conf = conf;
    if (t_prov_open_rc)
        return kv_err_set(err, t_prov_open_rc, "fake open refused");
    t_prov_now = tp;
    return 0;
}

static void t_prov_close(ps_provider *p)
{
    (void)p;
    t_prov_closes++;
    t_prov_now = NULL;
}

static int t_prov_publish(ps_provider *p, const ps_message *m, kv_err *err)
{
    struct t_prov *tp = (struct t_prov *)p;

    tp->publishes++;
    snprintf(tp->last_topic, sizeof(tp->last_topic), "%.*s", (int)m->topic_len,
             m->topic);
    tp->last_seq = m->seq;
    if (t_prov_publish_rc && t_prov_silent)
        return t_prov_publish_rc;
    if (t_prov_publish_rc)
        return kv_err_set(err, t_prov_publish_rc, "fake provider down");
    return 0;
}

static bool t_prov_healthy(ps_provider *p)
{
    (void)p;
    return t_prov_publish_rc == 0;
}

static const struct ps_provider_ops t_prov_ops = {
    .version = PS_PROVIDER_OPS_VERSION,
    .name = "fake",
    .size = sizeof(struct t_prov),
    .open = t_prov_open,
    .close = t_prov_close,
    .publish = t_prov_publish,
    .healthy = t_prov_healthy,
};

/* Replaces the test bus by one on the fake provider. */
static void use_fake_provider(struct uv_loop_s *loop)
{
    static const ps_provider_conf conf = {.name = "fake"};
    kv_err err = {0};

    ps_bus_free(t_bus);
    t_bus = NULL;
    assert_int_equal(
        ps_bus_new(loop, "node-a", &t_prov_ops, &conf, &t_bus, &err), 0);
    assert_non_null(t_prov_now);
    assert_ptr_equal(t_prov_conf, &conf);
}

static int setup(void **state)
{
    kv_err err = {0};

    (void)state;
    t_now_ns = T_CLOCK_START_NS;
    ps__clock_ns = t_clock;
    t_alloc_budget = -1;
    ps__malloc = t_malloc;
    t_nev = 0;
    t_ncl = 0;
    t_prov_open_rc = 0;
    t_prov_publish_rc = 0;
    t_prov_silent = false;
    t_prov_closes = 0;
    t_prov_now = NULL;
    return ps_bus_new(NULL, "node-a", &ps_memory_provider_ops, NULL, &t_bus,
                      &err);
}

static int teardown(void **state)
{
    (void)state;
    t_alloc_budget = -1;
    for (int i = 0; i < t_ncl; i++)
        client_free(&t_cl[i]);
    ps_bus_free(t_bus);
    t_bus = NULL;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Topic and pattern rules                                              */

TEST(check_topic__empty__is_rejected)
{
    kv_err err = {0};

    assert_int_equal(ps_check_topic("", 0, &err), KV_ETOPIC);
    assert_int_equal(err.code, KV_ETOPIC);
    assert_true(err.msg[0] != '\0');
    assert_int_equal(ps_check_topic(NULL, 0, NULL), KV_ETOPIC);
}

TEST(check_topic__255_bytes_accepted__256_rejected)
{
    char t[PS_TOPIC_MAX + 1];

    memset(t, 'a', sizeof(t));
    assert_int_equal(ps_check_topic(t, PS_TOPIC_MAX, NULL), 0);
    assert_int_equal(ps_check_topic(t, PS_TOPIC_MAX + 1, NULL), KV_ETOPIC);
}

TEST(check_topic__space_star_control_and_non_ascii__are_rejected)
{
    static const char *const bad[] = {"a b",  "kv.*", "*",           "a\tb",
                                      "a\nb", "\x7f", "caf\xc3\xa9", "\x80"};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(ps_check_topic(bad[i], strlen(bad[i]), NULL),
                         KV_ETOPIC);
    assert_int_equal(ps_check_topic("a\0b", 3, NULL), KV_ETOPIC);
}

TEST(check_topic__printable_ascii__is_accepted)
{
    static const char t[] = "kv.users:42/a-b_c~!#$%&'()+,;<=>?@[]^`{|}\"\\";

    assert_int_equal(ps_check_topic(t, strlen(t), NULL), 0);
    assert_int_equal(ps_check_topic("x", 1, NULL), 0);
}

TEST(check_pattern__lone_star_and_prefix_star__are_accepted)
{
    assert_int_equal(ps_check_pattern("*", 1, NULL), 0);
    assert_int_equal(ps_check_pattern("kv.*", 4, NULL), 0);
    assert_int_equal(ps_check_pattern("cacheinval", 10, NULL), 0);
}

TEST(check_pattern__inner_double_or_bad_prefix__is_rejected)
{
    static const char *const bad[] = {"a*b", "**", "*a", "a**", "a b*", ""};
    kv_err err = {0};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(ps_check_pattern(bad[i], strlen(bad[i]), NULL),
                         KV_ETOPIC);
    assert_int_equal(ps_check_pattern("a*b", 3, &err), KV_ETOPIC);
    assert_int_equal(err.code, KV_ETOPIC);
}

TEST(check_pattern__longer_than_255_bytes__is_rejected)
{
    char p[PS_TOPIC_MAX + 1];

    memset(p, 'a', sizeof(p));
    p[PS_TOPIC_MAX - 1] = '*';
    assert_int_equal(ps_check_pattern(p, PS_TOPIC_MAX, NULL), 0);
    p[PS_TOPIC_MAX - 1] = 'a';
    p[PS_TOPIC_MAX] = '*';
    assert_int_equal(ps_check_pattern(p, PS_TOPIC_MAX + 1, NULL), KV_ETOPIC);
}

TEST(pattern_match__exact__matches_only_the_equal_topic)
{
    assert_true(ps_pattern_match("kv.a", 4, "kv.a", 4));
    assert_false(ps_pattern_match("kv.a", 4, "kv.ab", 5));
    assert_false(ps_pattern_match("kv.ab", 5, "kv.a", 4));
    assert_false(ps_pattern_match("kv.a", 4, "kv.b", 4));
}

TEST(pattern_match__prefix_star__matches_longer_topics)
{
    assert_true(ps_pattern_match("kv.*", 4, "kv.users", 8));
    assert_true(ps_pattern_match("kv.*", 4, "kv.", 3));
    assert_false(ps_pattern_match("kv.*", 4, "kv", 2));
    assert_false(ps_pattern_match("kv.*", 4, "kvx", 3));
    assert_false(ps_pattern_match("kv.*", 4, "other", 5));
}

TEST(pattern_match__lone_star__matches_every_topic)
{
    assert_true(ps_pattern_match("*", 1, "a", 1));
    assert_true(ps_pattern_match("*", 1, "kv.users", 8));
}

/* ------------------------------------------------------------------ */
/* The bus and its provider                                             */

TEST(bus_new__bad_node_id__fails_with_einval)
{
    static const char *const bad[] = {"", "a:b", "a b", "a\tb", "caf\xc3\xa9"};
    char longest[PS_NODE_ID_MAX + 2];
    ps_bus *bus = (ps_bus *)&bus;
    kv_err err = {0};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(
            ps_bus_new(NULL, bad[i], &ps_memory_provider_ops, NULL, &bus, &err),
            KV_EINVAL);
        assert_null(bus);
    }
    assert_int_equal(
        ps_bus_new(NULL, NULL, &ps_memory_provider_ops, NULL, &bus, &err),
        KV_EINVAL);
    memset(longest, 'n', sizeof(longest));
    longest[PS_NODE_ID_MAX + 1] = '\0';
    assert_int_equal(
        ps_bus_new(NULL, longest, &ps_memory_provider_ops, NULL, &bus, &err),
        KV_EINVAL);
    longest[PS_NODE_ID_MAX] = '\0';
    assert_int_equal(
        ps_bus_new(NULL, longest, &ps_memory_provider_ops, NULL, &bus, &err),
        0);
    assert_string_equal(ps_bus_node_id(bus), longest);
    ps_bus_free(bus);
}

TEST(bus_new__memory_provider__reports_its_name_and_health)
{
    assert_string_equal(ps_bus_provider_name(t_bus), "memory");
    assert_true(ps_bus_healthy(t_bus));
    assert_string_equal(ps_bus_node_id(t_bus), "node-a");
}

TEST(bus_new__fake_provider__gets_base_filled_and_is_closed_by_free)
{
    uv_loop_t loop;

    assert_int_equal(uv_loop_init(&loop), 0);
    use_fake_provider(&loop);
    assert_ptr_equal(t_prov_now->base.bus, t_bus);
    assert_ptr_equal(t_prov_now->base.loop, &loop);
    assert_string_equal(ps_bus_provider_name(t_bus), "fake");
    ps_bus_free(t_bus);
    t_bus = NULL;
    assert_int_equal(t_prov_closes, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
}

TEST(bus_new__invalid_provider_table__fails_with_einval)
{
    struct ps_provider_ops small = t_prov_ops, no_publish = t_prov_ops;
    ps_bus *bus = NULL;

    small.size = sizeof(ps_provider) - 1;
    no_publish.publish = NULL;
    assert_int_equal(ps_bus_new(NULL, "n", NULL, NULL, &bus, NULL), KV_EINVAL);
    assert_int_equal(ps_bus_new(NULL, "n", &small, NULL, &bus, NULL),
                     KV_EINVAL);
    assert_int_equal(ps_bus_new(NULL, "n", &no_publish, NULL, &bus, NULL),
                     KV_EINVAL);
    assert_null(bus);
}

TEST(bus_new__provider_open_fails__returns_its_error)
{
    ps_bus *bus = NULL;
    kv_err err = {0};

    t_prov_open_rc = KV_EUNAVAIL;
    assert_int_equal(ps_bus_new(NULL, "n", &t_prov_ops, NULL, &bus, &err),
                     KV_EUNAVAIL);
    assert_null(bus);
    assert_int_equal(err.code, KV_EUNAVAIL);
    assert_string_equal(err.msg, "fake open refused");
    assert_int_equal(t_prov_closes, 0);
}

TEST(bus_new__each_allocation_failing__fails_with_enomem_leaking_nothing)
{
    ps_bus *bus = NULL;
    kv_err err = {0};
    int rc = -1;

    for (long budget = 0; rc != 0; budget++) {
        t_alloc_budget = budget;
        rc = ps_bus_new(NULL, "n", &ps_memory_provider_ops, NULL, &bus, &err);
        assert_true(rc == 0 || rc == KV_ENOMEM);
        if (rc)
            assert_null(bus);
    }
    t_alloc_budget = -1;
    ps_bus_free(bus);
}

TEST(bus_free__with_a_live_subscriber__detaches_it)
{
    struct t_client *c = client();
    kv_err err = {0};

    sub(c, "a");
    ps_bus_free(t_bus);
    t_bus = NULL;
    assert_int_equal(ps_sub_pattern_count(c->sub), 0);
    assert_int_equal(ps_subscribe(c->sub, "b", 1, &err), KV_EINVAL);
    assert_false(ps_unsubscribe(c->sub, "a", 1));
    client_free(c);
}

TEST(free_functions__accept_null)
{
    ps_bus_free(NULL);
    ps_sub_free(NULL);
    ps_queue_free(NULL);
}

/* ------------------------------------------------------------------ */
/* Subscribing                                                          */

TEST(subscribe__same_pattern_twice__is_idempotent)
{
    struct t_client *c = client();
    ps_bus_stats st;

    sub(c, "a");
    sub(c, "a");
    sub(c, "a*");
    sub(c, "a*");
    assert_int_equal(ps_sub_pattern_count(c->sub), 2);
    ps_bus_stats_get(t_bus, &st);
    assert_int_equal(st.subscriptions, 2);
    pub("a", "x");
    assert_int_equal(c->messages, 1);
}

TEST(subscribe__bad_pattern__fails_with_etopic)
{
    struct t_client *c = client();
    kv_err err = {0};

    assert_int_equal(ps_subscribe(c->sub, "a*b", 3, &err), KV_ETOPIC);
    assert_int_equal(err.code, KV_ETOPIC);
    assert_int_equal(ps_subscribe(c->sub, "", 0, NULL), KV_ETOPIC);
    assert_int_equal(ps_subscribe(c->sub, "a b", 3, NULL), KV_ETOPIC);
    assert_int_equal(ps_sub_pattern_count(c->sub), 0);
}

TEST(subscribe__past_max_patterns__fails_with_elimit)
{
    struct t_client *c = client_max(2);
    kv_err err = {0};

    sub(c, "a");
    sub(c, "b*");
    assert_int_equal(ps_subscribe(c->sub, "c", 1, &err), KV_ELIMIT);
    assert_int_equal(err.code, KV_ELIMIT);
    sub(c, "a"); /* already held: not a new one */
    assert_int_equal(ps_sub_pattern_count(c->sub), 2);
    assert_true(ps_unsubscribe(c->sub, "a", 1));
    sub(c, "c");
}

TEST(subscribe__max_patterns_zero__allows_the_default)
{
    struct t_client *c = client();
    char p[16];

    for (int i = 0; i < PS_SUBS_PER_SUB_DEFAULT; i++) {
        snprintf(p, sizeof(p), "t.%d", i);
        sub(c, p);
    }
    assert_int_equal(ps_subscribe(c->sub, "one.more", 8, NULL), KV_ELIMIT);
    assert_int_equal(ps_sub_pattern_count(c->sub), PS_SUBS_PER_SUB_DEFAULT);
}

TEST(subscribe__each_allocation_failing__fails_with_enomem_changing_nothing)
{
    struct t_client *c;
    ps_topic_stats ts;
    ps_bus_stats st;
    int rc = -1;

    for (long budget = 0; rc != 0; budget++) {
        c = client(); /* fresh: nothing allocated for patterns yet */
        t_alloc_budget = budget;
        rc = ps_subscribe(c->sub, "a*", 2, NULL);
        t_alloc_budget = -1;
        if (rc == 0)
            break;
        assert_int_equal(rc, KV_ENOMEM);
        assert_int_equal(ps_sub_pattern_count(c->sub), 0);
        assert_false(topic_stats("a*", &ts));
        ps_bus_stats_get(t_bus, &st);
        assert_int_equal(st.subscriptions, 0);
        client_free(c);
    }
    pub("a.b", "x");
    assert_int_equal(c->messages, 1);
}

TEST(unsubscribe__held_pattern__stops_delivery)
{
    struct t_client *c = client();

    sub(c, "a");
    sub(c, "b*");
    assert_true(ps_unsubscribe(c->sub, "a", 1));
    assert_true(ps_unsubscribe(c->sub, "b*", 2));
    assert_int_equal(ps_sub_pattern_count(c->sub), 0);
    pub("a", "x");
    pub("b.c", "x");
    assert_int_equal(c->messages, 0);
}

TEST(unsubscribe__pattern_not_held__returns_false)
{
    struct t_client *a = client(), *b = client();

    sub(a, "t");
    assert_false(ps_unsubscribe(b->sub, "t", 1));
    assert_false(ps_unsubscribe(b->sub, "never", 5));
    assert_false(ps_unsubscribe(b->sub, "", 0));
    assert_false(ps_unsubscribe(a->sub, "t*", 2));
    pub("t", "x");
    assert_int_equal(a->messages, 1);
}

TEST(sub_new__allocation_fails__returns_null)
{
    ps_bus_stats st;

    t_alloc_budget = 0;
    assert_null(ps_sub_new(t_bus, &t_cbs, NULL, 0));
    t_alloc_budget = -1;
    ps_bus_stats_get(t_bus, &st);
    assert_int_equal(st.subscribers, 0);
}

/* ------------------------------------------------------------------ */
/* Publishing and delivery                                              */

TEST(publish__bad_topic__fails_with_etopic_delivering_nothing)
{
    struct t_client *c = client();
    kv_err err = {0};

    sub(c, "*");
    assert_int_equal(ps_publish(t_bus, "a*", 2, "x", 1, NULL, &err), KV_ETOPIC);
    assert_int_equal(err.code, KV_ETOPIC);
    assert_int_equal(ps_publish(t_bus, "", 0, "x", 1, NULL, NULL), KV_ETOPIC);
    assert_int_equal(c->messages, 0);
}

TEST(publish__exact_topic__reaches_only_its_subscribers)
{
    struct t_client *a = client(), *b = client(), *c = client();

    sub(a, "news");
    sub(b, "news");
    sub(c, "newsroom");
    pub("news", "hello");
    assert_int_equal(a->messages, 1);
    assert_int_equal(b->messages, 1);
    assert_int_equal(c->messages, 0);
    assert_int_equal(t_ev[0].len, 5);
    assert_memory_equal(t_ev[0].data, "hello", 5);
}

TEST(publish__prefix_pattern__reaches_matching_subscribers)
{
    struct t_client *kv = client(), *all = client(), *other = client();

    sub(kv, "kv.*");
    sub(all, "*");
    sub(other, "kx*");
    pub("kv.users", "1");
    pub("kv.", "2");
    pub("kv", "3");
    assert_int_equal(events(T_MESSAGE, kv, "kv.users"), 1);
    assert_int_equal(events(T_MESSAGE, kv, "kv."), 1);
    assert_int_equal(kv->messages, 2);
    assert_int_equal(all->messages, 3);
    assert_int_equal(other->messages, 0);
}

TEST(publish__overlapping_patterns__delivers_once_per_subscriber)
{
    struct t_client *a = client(), *b = client();

    sub(a, "kv.users");
    sub(a, "kv.*");
    sub(a, "kv.u*");
    sub(a, "*");
    sub(b, "k*");
    sub(b, "kv.users");
    pub("kv.users", "x");
    assert_int_equal(a->messages, 1);
    assert_int_equal(b->messages, 1);
}

TEST(publish__envelope__carries_node_seq_from_1_and_wall_clock_ts)
{
    struct t_client *c = client();
    ps_message out;
    uint64_t before = t_wall_ms(), after;

    sub(c, "*");
    pub("a", "1");
    pub("b", "2");
    assert_int_equal(ps_publish(t_bus, "c", 1, "3", 1, &out, NULL), 0);
    after = t_wall_ms();
    assert_int_equal(t_nev, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(t_ev[i].node, "node-a");
        assert_int_equal(t_ev[i].seq, i + 1);
        assert_true(t_ev[i].ts_ms >= before && t_ev[i].ts_ms <= after);
    }
    assert_int_equal(out.seq, 3);
    assert_string_equal(out.node, "node-a");
    assert_int_equal(out.topic_len, 1);
    assert_memory_equal(out.topic, "c", 1);
    assert_int_equal(out.len, 1);
    assert_int_equal(out.ts_ms, t_ev[2].ts_ms);
}

TEST(publish__binary_payload__is_delivered_byte_exact)
{
    static const char bin[] = {'a', '\0', '\xff', '\n', '\x80'};
    struct t_client *c = client();

    sub(c, "bin");
    assert_int_equal(ps_publish(t_bus, "bin", 3, bin, sizeof(bin), NULL, NULL),
                     0);
    assert_int_equal(ps_publish(t_bus, "bin", 3, NULL, 0, NULL, NULL), 0);
    assert_int_equal(t_ev[0].len, sizeof(bin));
    assert_memory_equal(t_ev[0].data, bin, sizeof(bin));
    assert_int_equal(t_ev[1].len, 0);
}

TEST(publish__provider_refuses__returns_its_error_delivering_nothing)
{
    struct t_client *c;
    kv_err err = {0};
    ps_bus_stats st;

    use_fake_provider(NULL);
    c = client();
    sub(c, "*");
    t_prov_publish_rc = KV_EUNAVAIL;
    assert_false(ps_bus_healthy(t_bus));
    assert_int_equal(ps_publish(t_bus, "a", 1, "x", 1, NULL, &err),
                     KV_EUNAVAIL);
    assert_int_equal(err.code, KV_EUNAVAIL);
    assert_int_equal(t_prov_now->publishes, 1);
    assert_int_equal(c->messages, 0);
    ps_bus_stats_get(t_bus, &st);
    assert_int_equal(st.published, 0);
    assert_int_equal(st.delivered, 0);

    t_prov_publish_rc = 0;
    pub("a", "x");
    assert_int_equal(c->messages, 1);
    assert_int_equal(t_ev[0].seq, 1); /* the refused one used no number */
}

TEST(publish__provider_fails_without_detail__error_names_the_provider)
{
    kv_err err = {0};

    use_fake_provider(NULL);
    t_prov_publish_rc = KV_ETIMEDOUT;
    t_prov_silent = true;
    assert_int_equal(ps_publish(t_bus, "a", 1, "x", 1, NULL, &err),
                     KV_ETIMEDOUT);
    assert_int_equal(err.code, KV_ETIMEDOUT);
    assert_non_null(strstr(err.msg, "fake provider"));
}

TEST(publish__null_data_with_a_length__fails_with_einval)
{
    assert_int_equal(ps_publish(t_bus, "a", 1, NULL, 3, NULL, NULL), KV_EINVAL);
}

TEST(publish__provider__is_handed_the_stamped_message_first)
{
    struct t_client *c;

    use_fake_provider(NULL);
    c = client();
    sub(c, "t");
    pub("t", "x");
    pub("u", "x");
    assert_int_equal(t_prov_now->publishes, 2);
    assert_string_equal(t_prov_now->last_topic, "u");
    assert_int_equal(t_prov_now->last_seq, 2);
    assert_int_equal(c->messages, 1);
}

TEST(publish__fanout_allocation_fails__returns_enomem_sending_nothing)
{
    struct t_client *c;

    use_fake_provider(NULL);
    c = client();
    sub(c, "t");
    t_alloc_budget = 0;
    assert_int_equal(ps_publish(t_bus, "t", 1, "x", 1, NULL, NULL), KV_ENOMEM);
    t_alloc_budget = -1;
    assert_int_equal(t_prov_now->publishes, 0);
    assert_int_equal(c->messages, 0);
    pub("t", "x");
    assert_int_equal(t_ev[0].seq, 1);
}

TEST(publish__one_topic_150_subscribers__each_gets_it_once)
{
    struct t_client *c[T_FANOUT_SUBS];
    ps_bus_stats st;

    for (int i = 0; i < T_FANOUT_SUBS; i++) {
        c[i] = client();
        sub(c[i], "hot");
        if (i % 3 == 0)
            sub(c[i], "h*");
        if (i % 5 == 0)
            sub(c[i], "*");
    }
    for (int n = 0; n < 10; n++)
        pub("hot", "x");
    for (int i = 0; i < T_FANOUT_SUBS; i++)
        assert_int_equal(c[i]->messages, 10);
    ps_bus_stats_get(t_bus, &st);
    assert_int_equal(st.delivered, 10 * T_FANOUT_SUBS);
}

TEST(receive__from_another_node__is_delivered_and_counted)
{
    struct t_client *c = client();
    ps_bus_stats st;

    sub(c, "kv.*");
    receive("node-b", "kv.users", 7);
    assert_int_equal(c->messages, 1);
    assert_string_equal(t_ev[0].node, "node-b");
    assert_int_equal(t_ev[0].seq, 7);
    assert_int_equal(t_ev[0].ts_ms, 42);
    assert_memory_equal(t_ev[0].data, "remote", 6);
    ps_bus_stats_get(t_bus, &st);
    assert_int_equal(st.received, 1);
    assert_int_equal(st.published, 0);
}

TEST(receive__own_node_message__is_ignored)
{
    struct t_client *c = client();
    ps_bus_stats st;

    sub(c, "*");
    receive("node-a", "t", 1);
    assert_int_equal(c->messages, 0);
    ps_bus_stats_get(t_bus, &st);
    assert_int_equal(st.received, 0);
}

TEST(receive__bad_topic_or_no_node__is_ignored_or_delivered_safely)
{
    struct t_client *c = client();

    sub(c, "*");
    receive("node-b", "a b", 1);
    receive("node-b", "", 1);
    assert_int_equal(c->messages, 0);
    receive(NULL, "t", 1);
    assert_int_equal(c->messages, 1);
    assert_string_equal(t_ev[0].node, "");
}

/* ------------------------------------------------------------------ */
/* Resets                                                               */

TEST(reset__pattern__reaches_each_overlapping_subscription_once)
{
    struct t_client *a = client(), *b = client(), *c = client();

    sub(a, "kv.users");
    sub(a, "kv.*");
    sub(b, "*");
    sub(b, "k*");
    sub(c, "other");
    sub(c, "kv.x*");
    ps_bus_reset(t_bus, "kv.users", "gap");
    assert_int_equal(events(T_RESET, a, "kv.users"), 1);
    assert_int_equal(events(T_RESET, a, "kv.*"), 1);
    assert_int_equal(events(T_RESET, b, "*"), 1);
    assert_int_equal(events(T_RESET, b, "k*"), 1);
    assert_int_equal(c->resets, 0);
    assert_string_equal(t_ev[0].data, "gap");

    ps_bus_reset(t_bus, "kv.*", "reconnect");
    assert_int_equal(a->resets, 4);
    assert_int_equal(b->resets, 4);
    assert_int_equal(events(T_RESET, c, "kv.x*"), 1);
    assert_int_equal(c->resets, 1);
    assert_int_equal(a->messages + b->messages + c->messages, 0);
}

TEST(reset__null__reaches_every_subscription)
{
    struct t_client *a = client(), *b = client(), *idle = client();

    sub(a, "x");
    sub(a, "y*");
    sub(b, "z");
    ps_bus_reset(t_bus, NULL, "reconnect");
    assert_int_equal(a->resets, 2);
    assert_int_equal(b->resets, 1);
    assert_int_equal(idle->resets, 0);
    assert_string_equal(t_ev[0].data, "reconnect");
}

TEST(reset__invalid_pattern__resets_everything)
{
    struct t_client *a = client();

    sub(a, "x");
    sub(a, "y*");
    ps_bus_reset(t_bus, "a*b", NULL);
    assert_int_equal(a->resets, 2);
    assert_string_equal(t_ev[0].data, "");
}

/* ------------------------------------------------------------------ */
/* Re-entrancy: callbacks that change the bus                           */

static void act_free_self(struct t_client *c, const ps_message *m)
{
    (void)m;
    client_free(c);
}

static void act_free_peer(struct t_client *c, const ps_message *m)
{
    (void)m;
    client_free(c->peer);
}

TEST(reentrancy__subscriber_frees_itself_in_callback__others_still_get_it)
{
    struct t_client *c[5];
    ps_bus_stats st;

    for (int i = 0; i < 5; i++) {
        c[i] = client();
        sub(c[i], "t");
        sub(c[i], "t*");
    }
    c[2]->on_message = act_free_self;
    pub("t", "1");
    for (int i = 0; i < 5; i++)
        assert_int_equal(c[i]->messages, 1);
    assert_null(c[2]->sub);
    pub("t", "2");
    assert_int_equal(c[2]->messages, 1);
    assert_int_equal(c[4]->messages, 2);
    ps_bus_stats_get(t_bus, &st);
    assert_int_equal(st.subscribers, 4);
    assert_int_equal(st.subscriptions, 8);
}

TEST(reentrancy__callback_frees_a_pending_subscriber__it_is_skipped)
{
    struct t_client *first = client(), *second = client();

    sub(first, "t");
    sub(second, "t");
    first->on_message = act_free_peer;
    first->peer = second;
    second->on_message = act_free_peer;
    second->peer = first;
    pub("t", "x");
    assert_int_equal(first->messages + second->messages, 1);
}

static void act_subscribe_others(struct t_client *c, const ps_message *m)
{
    struct t_client *fresh = client();

    (void)m;
    sub(c->peer, "t");
    sub(fresh, "t");
    sub(fresh, "*");
    c->on_message = NULL;
}

TEST(reentrancy__subscribe_in_callback__takes_effect_from_the_next_message)
{
    struct t_client *a = client(), *b = client(), *fresh;

    sub(a, "t");
    a->on_message = act_subscribe_others;
    a->peer = b;
    pub("t", "1");
    fresh = &t_cl[2];
    assert_int_equal(a->messages, 1);
    assert_int_equal(b->messages, 0);
    assert_int_equal(fresh->messages, 0);
    pub("t", "2");
    assert_int_equal(a->messages, 2);
    assert_int_equal(b->messages, 1);
    assert_int_equal(fresh->messages, 1);
}

static void act_unsubscribe_both(struct t_client *c, const ps_message *m)
{
    (void)m;
    assert_true(ps_unsubscribe(c->peer->sub, "t", 1));
    assert_true(ps_unsubscribe(c->sub, "t", 1));
    assert_true(ps_unsubscribe(c->sub, "u*", 2));
}

TEST(reentrancy__unsubscribe_in_callback__stops_later_messages)
{
    struct t_client *a = client(), *b = client();

    sub(a, "t");
    sub(a, "u*");
    sub(b, "t");
    a->on_message = act_unsubscribe_both;
    a->peer = b;
    pub("t", "1");
    assert_int_equal(a->messages, 1);
    assert_true(b->messages <= 1);
    pub("t", "2");
    pub("u.x", "3");
    assert_int_equal(a->messages, 1);
    assert_true(b->messages <= 1);
    assert_int_equal(ps_sub_pattern_count(a->sub), 0);
}

static void act_leave_names(struct t_client *c, const ps_message *m)
{
    (void)m;
    assert_true(ps_unsubscribe(c->sub, "v*", 2)); /* no traffic: unused */
    assert_true(ps_unsubscribe(c->sub, "w*", 2)); /* no traffic: unused */
    sub(c, "v*");                                 /* back on the same name */
    c->on_message = NULL;
}

TEST(reentrancy__names_left_unused_in_callback__are_released_after_it)
{
    struct t_client *a = client();
    ps_topic_stats ts;

    sub(a, "u.x");
    sub(a, "v*");
    sub(a, "w*");
    a->on_message = act_leave_names;
    pub("u.x", "1");
    assert_int_equal(a->messages, 1);
    assert_true(topic_stats("v*", &ts));
    assert_int_equal(ts.subscribers, 1);
    assert_false(topic_stats("w*", &ts));
    pub("v.1", "2");
    pub("w.1", "3");
    assert_int_equal(a->messages, 2);
    assert_int_equal(ps_sub_pattern_count(a->sub), 2);
}

static void act_publish_b_once(struct t_client *c, const ps_message *m)
{
    if (m->topic_len == 1 && m->topic[0] == 'a') {
        c->on_message = NULL;
        pub("b", "nested");
    }
}

TEST(reentrancy__nested_publish__each_subscriber_gets_each_message_once)
{
    struct t_client *a = client(), *b = client(), *all[60];
    ps_bus_stats st;

    sub(a, "a");
    sub(a, "a*");
    sub(a, "*");
    sub(b, "*");
    sub(b, "b");
    for (int i = 0; i < 60; i++) { /* grow the snapshot while nested */
        all[i] = client();
        sub(all[i], "*");
        sub(all[i], "a");
    }
    a->on_message = act_publish_b_once;
    pub("a", "outer");
    assert_int_equal(events(T_MESSAGE, a, "a"), 1);
    assert_int_equal(events(T_MESSAGE, a, "b"), 1);
    assert_int_equal(events(T_MESSAGE, b, "a"), 1);
    assert_int_equal(events(T_MESSAGE, b, "b"), 1);
    for (int i = 0; i < 60; i++) {
        assert_int_equal(events(T_MESSAGE, all[i], "a"), 1);
        assert_int_equal(events(T_MESSAGE, all[i], "b"), 1);
    }
    ps_bus_stats_get(t_bus, &st);
    assert_int_equal(st.published, 2);
    assert_int_equal(st.delivered, 2 * 62);
}

static void act_publish_y(struct t_client *c, const ps_message *m)
{
    (void)m;
    c->on_message = NULL;
    pub("y", "nested");
}

TEST(reentrancy__nested_callback_frees_a_sub_pending_outside__it_is_skipped)
{
    struct t_client *pubr = client(), *victim = client(), *killer = client();

    sub(pubr, "x");   /* first in line for "x" */
    sub(victim, "x"); /* after it */
    sub(killer, "y");
    pubr->on_message = act_publish_y;
    killer->on_message = act_free_peer;
    killer->peer = victim;
    pub("x", "outer");
    assert_int_equal(pubr->messages, 1);
    assert_int_equal(killer->messages, 1);
    assert_int_equal(victim->messages, 0);
    assert_null(victim->sub);
}

TEST(reentrancy__subscriber_frees_itself_on_reset__others_still_get_it)
{
    struct t_client *a = client(), *b = client();

    sub(a, "x");
    sub(a, "y");
    sub(b, "x");
    a->on_reset = act_free_self;
    ps_bus_reset(t_bus, NULL, "r");
    assert_int_equal(a->resets, 1);
    assert_int_equal(b->resets, 1);
    assert_null(a->sub);
}

/* ------------------------------------------------------------------ */
/* Counters                                                             */

TEST(topic_stats__subscriptions__list_topics_and_patterns_with_counts)
{
    struct t_client *a = client(), *b = client();
    ps_topic_stats ts;

    sub(a, "news");
    sub(b, "news");
    sub(b, "kv.*");
    assert_int_equal(topic_count(), 2);
    assert_true(topic_stats("news", &ts));
    assert_int_equal(ts.subscribers, 2);
    assert_int_equal(ts.published, 0);
    assert_rate(ts.rate, 0.0);
    assert_true(topic_stats("kv.*", &ts));
    assert_int_equal(ts.subscribers, 1);
    assert_false(ps_bus_topic_at(t_bus, 2, &ts));
}

TEST(topic_stats__messages__count_on_topics_and_matching_patterns)
{
    struct t_client *a = client();
    ps_topic_stats ts;

    sub(a, "kv.*");
    pub("news", "1");
    pub("news", "2");
    pub("kv.users", "3");
    receive("node-b", "kv.users", 1);
    assert_true(topic_stats("news", &ts));
    assert_int_equal(ts.subscribers, 0);
    assert_int_equal(ts.published, 2);
    assert_true(topic_stats("kv.users", &ts));
    assert_int_equal(ts.published, 2);
    assert_true(topic_stats("kv.*", &ts));
    assert_int_equal(ts.subscribers, 1);
    assert_int_equal(ts.published, 2);
}

TEST(topic_stats__unsubscribed_name__stays_only_if_it_had_traffic)
{
    struct t_client *a = client();
    ps_topic_stats ts;

    sub(a, "quiet");
    sub(a, "busy");
    pub("busy", "x");
    assert_true(ps_unsubscribe(a->sub, "quiet", 5));
    assert_true(ps_unsubscribe(a->sub, "busy", 4));
    assert_false(topic_stats("quiet", &ts));
    assert_true(topic_stats("busy", &ts));
    assert_int_equal(ts.subscribers, 0);
    assert_int_equal(ts.published, 1);
}

TEST(topic_stats__rate__averages_the_last_ten_seconds)
{
    ps_topic_stats ts;

    /* At 1000.5 s the window holds 9.5 s: 991..999 and half of 1000. */
    for (int i = 0; i < 10; i++)
        pub("r", "x");
    assert_true(topic_stats("r", &ts));
    assert_rate(ts.rate, 10.0 / 9.5);

    t_now_ns += 5 * T_NS_PER_S; /* 1005.5 s */
    for (int i = 0; i < 10; i++)
        pub("r", "x");
    assert_true(topic_stats("r", &ts));
    assert_rate(ts.rate, 20.0 / 9.5);

    t_now_ns += 7 * T_NS_PER_S; /* 1012.5 s: the first ten are out */
    assert_true(topic_stats("r", &ts));
    assert_rate(ts.rate, 10.0 / 9.5);
    assert_int_equal(ts.published, 20);

    t_now_ns += 4 * T_NS_PER_S; /* 1016.5 s: all out */
    assert_true(topic_stats("r", &ts));
    assert_rate(ts.rate, 0.0);

    pub("r", "x"); /* after a long silence the ring starts over */
    assert_true(topic_stats("r", &ts));
    assert_rate(ts.rate, 1.0 / 9.5);
}

TEST(topic_stats__rate__steady_traffic__reads_its_rate)
{
    ps_topic_stats ts;

    for (int s = 0; s < 30; s++) { /* 20 a second, spread evenly */
        for (int i = 0; i < 20; i++) {
            pub("steady", "x");
            t_now_ns += T_NS_PER_S / 20;
        }
    }
    assert_true(topic_stats("steady", &ts));
    assert_rate(ts.rate, 20.0);
}

TEST(topic_stats__past_the_cap__new_names_untracked_but_delivered)
{
    struct t_client *a = client();
    ps_topic_stats ts;
    char t[32];

    for (int i = 0; i < PS_TRACKED_TOPICS_MAX; i++) {
        snprintf(t, sizeof(t), "t.%d", i);
        pub(t, "x");
    }
    assert_int_equal(topic_count(), PS_TRACKED_TOPICS_MAX);
    sub(a, "late");
    sub(a, "late.*");
    pub("late", "x");
    pub("late.x", "x");
    pub("t.0", "x");
    assert_int_equal(a->messages, 2);
    assert_int_equal(topic_count(), PS_TRACKED_TOPICS_MAX);
    assert_false(topic_stats("late", &ts));
    assert_true(topic_stats("t.0", &ts));
    assert_int_equal(ts.published, 2);
    assert_true(ps_unsubscribe(a->sub, "late", 4));
    assert_true(ps_unsubscribe(a->sub, "late.*", 6));
}

TEST(bus_stats__count_messages_deliveries_and_subscriptions)
{
    struct t_client *a = client(), *b = client();
    ps_bus_stats st;

    client();
    sub(a, "t");
    sub(a, "*");
    sub(b, "t");
    pub("t", "1");             /* a, b */
    pub("u", "2");             /* a */
    receive("node-b", "t", 1); /* a, b */
    receive("node-a", "t", 3); /* ignored */
    ps_bus_stats_get(t_bus, &st);
    assert_int_equal(st.published, 2);
    assert_int_equal(st.received, 1);
    assert_int_equal(st.delivered, 5);
    assert_int_equal(st.subscribers, 3);
    assert_int_equal(st.subscriptions, 3);
    client_free(b);
    ps_bus_stats_get(t_bus, &st);
    assert_int_equal(st.subscribers, 2);
    assert_int_equal(st.subscriptions, 2);
}

/* ------------------------------------------------------------------ */
/* The bounded queue                                                    */

static void queue_push(ps_queue *q, const char *s)
{
    assert_int_equal(ps_queue_push(q, s, strlen(s)), 0);
}

static void queue_expect_head(ps_queue *q, const char *s)
{
    const void *f;
    size_t len;

    assert_true(ps_queue_peek(q, &f, &len));
    assert_int_equal(len, strlen(s));
    assert_memory_equal(f, s, len);
}

TEST(queue__within_the_bound__keeps_every_frame_in_fifo_order)
{
    ps_queue *q = ps_queue_new(10);
    const void *f;
    size_t len;

    assert_false(ps_queue_peek(q, &f, &len));
    queue_push(q, "abc");
    queue_push(q, "defg");
    queue_push(q, "hij");
    assert_int_equal(ps_queue_count(q), 3);
    assert_int_equal(ps_queue_bytes(q), 10);
    queue_expect_head(q, "abc");
    ps_queue_pop(q);
    queue_expect_head(q, "defg");
    ps_queue_pop(q);
    queue_expect_head(q, "hij");
    ps_queue_pop(q);
    assert_false(ps_queue_peek(q, &f, &len));
    ps_queue_pop(q); /* empty: no-op */
    assert_int_equal(ps_queue_take_dropped(q), 0);
    ps_queue_free(q);
}

TEST(queue__past_the_bound__drops_the_oldest_and_counts_them)
{
    ps_queue *q = ps_queue_new(10);

    queue_push(q, "aaaa");
    queue_push(q, "bbbb");
    queue_push(q, "cc");
    queue_push(q, "ddddd"); /* 15 bytes: drop "aaaa", then "bbbb" */
    assert_int_equal(ps_queue_take_dropped(q), 2);
    assert_int_equal(ps_queue_count(q), 2);
    assert_int_equal(ps_queue_bytes(q), 7);
    queue_expect_head(q, "cc");
    ps_queue_pop(q);
    queue_expect_head(q, "ddddd");
    ps_queue_free(q); /* frees what is left */
}

TEST(queue__frame_larger_than_the_bound__is_refused_changing_nothing)
{
    ps_queue *q = ps_queue_new(4);

    queue_push(q, "ab");
    assert_int_equal(ps_queue_push(q, "abcde", 5), KV_ETOOBIG);
    assert_int_equal(ps_queue_count(q), 1);
    assert_int_equal(ps_queue_bytes(q), 2);
    assert_int_equal(ps_queue_take_dropped(q), 0);
    queue_push(q, "cd"); /* exactly full */
    assert_int_equal(ps_queue_bytes(q), 4);
    ps_queue_free(q);
}

TEST(queue__bytes__follow_pushes_pops_and_drops)
{
    ps_queue *q = ps_queue_new(100);

    assert_int_equal(ps_queue_bytes(q), 0);
    assert_int_equal(ps_queue_push(q, "", 0), 0);
    assert_int_equal(ps_queue_count(q), 1);
    assert_int_equal(ps_queue_bytes(q), 0);
    for (int i = 0; i < 30; i++)
        queue_push(q, "0123456789");
    assert_int_equal(ps_queue_bytes(q), 100);
    assert_int_equal(ps_queue_count(q), 10);
    assert_int_equal(ps_queue_take_dropped(q), 21); /* the empty one too */
    ps_queue_pop(q);
    assert_int_equal(ps_queue_bytes(q), 90);
    assert_int_equal(ps_queue_count(q), 9);
    ps_queue_free(q);
}

TEST(queue__take_dropped__returns_the_count_and_resets_it)
{
    ps_queue *q = ps_queue_new(2);

    queue_push(q, "a");
    queue_push(q, "b");
    queue_push(q, "c");
    queue_push(q, "d");
    assert_int_equal(ps_queue_take_dropped(q), 2);
    assert_int_equal(ps_queue_take_dropped(q), 0);
    queue_push(q, "e");
    assert_int_equal(ps_queue_take_dropped(q), 1);
    ps_queue_free(q);
}

TEST(queue__locked_head__is_never_dropped)
{
    ps_queue *q = ps_queue_new(10);

    queue_push(q, "head");
    queue_push(q, "aaa");
    ps_queue_lock_head(q, true);
    queue_push(q, "bbbbbb"); /* drops "aaa", keeps the head */
    assert_int_equal(ps_queue_take_dropped(q), 1);
    queue_expect_head(q, "head");
    assert_int_equal(ps_queue_bytes(q), 10);
    ps_queue_pop(q); /* written: pop clears the lock */
    queue_expect_head(q, "bbbbbb");
    queue_push(q, "cccccc"); /* unlocked head goes */
    assert_int_equal(ps_queue_take_dropped(q), 1);
    queue_expect_head(q, "cccccc");
    assert_int_equal(ps_queue_count(q), 1);
    ps_queue_free(q);
}

TEST(queue__new_frame_not_fitting_beside_locked_head__is_dropped_itself)
{
    ps_queue *q = ps_queue_new(10);

    queue_push(q, "12345678");
    ps_queue_lock_head(q, true);
    queue_push(q, "abc");
    assert_int_equal(ps_queue_take_dropped(q), 1);
    assert_int_equal(ps_queue_count(q), 1);
    assert_int_equal(ps_queue_bytes(q), 8);
    queue_expect_head(q, "12345678");
    ps_queue_lock_head(q, false);
    queue_push(q, "abc");
    assert_int_equal(ps_queue_take_dropped(q), 1);
    queue_expect_head(q, "abc");
    ps_queue_free(q);
}

TEST(queue__lock_on_empty_queue__does_not_stick_to_the_next_frame)
{
    ps_queue *q = ps_queue_new(4);

    ps_queue_lock_head(q, true);
    queue_push(q, "abcd");
    queue_push(q, "efgh");
    assert_int_equal(ps_queue_take_dropped(q), 1);
    queue_expect_head(q, "efgh");
    ps_queue_free(q);
}

TEST(queue__allocation_fails__returns_enomem_changing_nothing)
{
    ps_queue *q;

    t_alloc_budget = 0;
    assert_null(ps_queue_new(8));
    t_alloc_budget = -1;
    q = ps_queue_new(8);
    assert_non_null(q);
    queue_push(q, "abcd");
    queue_push(q, "efgh");
    t_alloc_budget = 0;
    assert_int_equal(ps_queue_push(q, "ijkl", 4), KV_ENOMEM);
    t_alloc_budget = -1;
    assert_int_equal(ps_queue_count(q), 2);
    assert_int_equal(ps_queue_take_dropped(q), 0);
    queue_expect_head(q, "abcd");
    ps_queue_free(q);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(check_topic__empty__is_rejected),
        T(check_topic__255_bytes_accepted__256_rejected),
        T(check_topic__space_star_control_and_non_ascii__are_rejected),
        T(check_topic__printable_ascii__is_accepted),
        T(check_pattern__lone_star_and_prefix_star__are_accepted),
        T(check_pattern__inner_double_or_bad_prefix__is_rejected),
        T(check_pattern__longer_than_255_bytes__is_rejected),
        T(pattern_match__exact__matches_only_the_equal_topic),
        T(pattern_match__prefix_star__matches_longer_topics),
        T(pattern_match__lone_star__matches_every_topic),
        T(bus_new__bad_node_id__fails_with_einval),
        T(bus_new__memory_provider__reports_its_name_and_health),
        T(bus_new__fake_provider__gets_base_filled_and_is_closed_by_free),
        T(bus_new__invalid_provider_table__fails_with_einval),
        T(bus_new__provider_open_fails__returns_its_error),
        T(bus_new__each_allocation_failing__fails_with_enomem_leaking_nothing),
        T(bus_free__with_a_live_subscriber__detaches_it),
        T(free_functions__accept_null),
        T(subscribe__same_pattern_twice__is_idempotent),
        T(subscribe__bad_pattern__fails_with_etopic),
        T(subscribe__past_max_patterns__fails_with_elimit),
        T(subscribe__max_patterns_zero__allows_the_default),
        T(subscribe__each_allocation_failing__fails_with_enomem_changing_nothing),
        T(unsubscribe__held_pattern__stops_delivery),
        T(unsubscribe__pattern_not_held__returns_false),
        T(sub_new__allocation_fails__returns_null),
        T(publish__bad_topic__fails_with_etopic_delivering_nothing),
        T(publish__exact_topic__reaches_only_its_subscribers),
        T(publish__prefix_pattern__reaches_matching_subscribers),
        T(publish__overlapping_patterns__delivers_once_per_subscriber),
        T(publish__envelope__carries_node_seq_from_1_and_wall_clock_ts),
        T(publish__binary_payload__is_delivered_byte_exact),
        T(publish__provider_refuses__returns_its_error_delivering_nothing),
        T(publish__provider_fails_without_detail__error_names_the_provider),
        T(publish__null_data_with_a_length__fails_with_einval),
        T(publish__provider__is_handed_the_stamped_message_first),
        T(publish__fanout_allocation_fails__returns_enomem_sending_nothing),
        T(publish__one_topic_150_subscribers__each_gets_it_once),
        T(receive__from_another_node__is_delivered_and_counted),
        T(receive__own_node_message__is_ignored),
        T(receive__bad_topic_or_no_node__is_ignored_or_delivered_safely),
        T(reset__pattern__reaches_each_overlapping_subscription_once),
        T(reset__null__reaches_every_subscription),
        T(reset__invalid_pattern__resets_everything),
        T(reentrancy__subscriber_frees_itself_in_callback__others_still_get_it),
        T(reentrancy__callback_frees_a_pending_subscriber__it_is_skipped),
        T(reentrancy__subscribe_in_callback__takes_effect_from_the_next_message),
        T(reentrancy__unsubscribe_in_callback__stops_later_messages),
        T(reentrancy__names_left_unused_in_callback__are_released_after_it),
        T(reentrancy__nested_publish__each_subscriber_gets_each_message_once),
        T(reentrancy__nested_callback_frees_a_sub_pending_outside__it_is_skipped),
        T(reentrancy__subscriber_frees_itself_on_reset__others_still_get_it),
        T(topic_stats__subscriptions__list_topics_and_patterns_with_counts),
        T(topic_stats__messages__count_on_topics_and_matching_patterns),
        T(topic_stats__unsubscribed_name__stays_only_if_it_had_traffic),
        T(topic_stats__rate__averages_the_last_ten_seconds),
        T(topic_stats__rate__steady_traffic__reads_its_rate),
        T(topic_stats__past_the_cap__new_names_untracked_but_delivered),
        T(bus_stats__count_messages_deliveries_and_subscriptions),
        T(queue__within_the_bound__keeps_every_frame_in_fifo_order),
        T(queue__past_the_bound__drops_the_oldest_and_counts_them),
        T(queue__frame_larger_than_the_bound__is_refused_changing_nothing),
        T(queue__bytes__follow_pushes_pops_and_drops),
        T(queue__take_dropped__returns_the_count_and_resets_it),
        T(queue__locked_head__is_never_dropped),
        T(queue__new_frame_not_fitting_beside_locked_head__is_dropped_itself),
        T(queue__lock_on_empty_queue__does_not_stick_to_the_next_frame),
        T(queue__allocation_fails__returns_enomem_changing_nothing),
    };
#undef T

    return cmocka_run_group_tests(tests, NULL, NULL);
}
