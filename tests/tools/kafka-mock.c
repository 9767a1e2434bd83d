/*
 * kafka-mock.c - a throwaway Kafka cluster for the tests, from librdkafka's
 * mock broker (rdkafka_mock.h): no JVM, no ZooKeeper, in-memory only.
 *
 *   kafka-mock [topic [partitions]]      (defaults: kvbus-pubsub 1)
 *
 * Creates a one-broker mock cluster, creates the topic, prints
 *   KAFKA_BOOTSTRAP=<host:port>
 * on stdout, flushes, and serves until SIGTERM or SIGINT, then exits 0.
 * SIGUSR1 takes every broker down (connections dropped, new ones refused,
 * no leader change); SIGUSR2 brings them back up. Each prints
 * "KAFKA_BROKERS=down" or "KAFKA_BROKERS=up" on stdout once applied.
 * Everything is lost at exit. Errors go to stderr with exit status 1.
 *
 * Build: cc -std=c11 -o kafka-mock tests/tools/kafka-mock.c \
 *            $(pkg-config --cflags --libs rdkafka)
 */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MOCK_TOPIC_DEFAULT "kvbus-pubsub"
#define MOCK_BROKERS 1
#define MOCK_REPLICATION 1
#define MOCK_ERRSTR_BYTES 512

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t down_requested;
static volatile sig_atomic_t up_requested;

static void on_stop(int signum)
{
    (void)signum;
    stop_requested = 1;
}

static void on_outage(int signum)
{
    if (signum == SIGUSR1)
        down_requested = 1;
    else
        up_requested = 1;
}

/* Applies one down or up request to all brokers (-1), outside the handler. */
static void set_brokers(rd_kafka_mock_cluster_t *mc, int down)
{
    rd_kafka_resp_err_t err = down ? rd_kafka_mock_broker_set_down(mc, -1)
                                   : rd_kafka_mock_broker_set_up(mc, -1);

    if (err)
        fprintf(stderr, "kafka-mock: brokers %s: %s\n", down ? "down" : "up",
                rd_kafka_err2str(err));
    printf("KAFKA_BROKERS=%s\n", down ? "down" : "up");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    const char *topic = argc > 1 ? argv[1] : MOCK_TOPIC_DEFAULT;
    int partitions = argc > 2 ? atoi(argv[2]) : 1;
    char errstr[MOCK_ERRSTR_BYTES];
    struct sigaction sa;
    rd_kafka_conf_t *conf;
    rd_kafka_t *rk;
    rd_kafka_mock_cluster_t *mc;
    rd_kafka_resp_err_t rerr;
    sigset_t mask, old;

    if (partitions < 1) {
        fprintf(stderr, "kafka-mock: bad partition count %s\n", argv[2]);
        return 1;
    }
    /* The handle only carries the mock cluster; it never produces. */
    conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr) !=
        RD_KAFKA_CONF_OK) {
        fprintf(stderr, "kafka-mock: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        return 1;
    }
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        fprintf(stderr, "kafka-mock: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        return 1;
    }
    mc = rd_kafka_mock_cluster_new(rk, MOCK_BROKERS);
    if (!mc) {
        fprintf(stderr, "kafka-mock: cannot create the mock cluster\n");
        rd_kafka_destroy(rk);
        return 1;
    }
    rerr = rd_kafka_mock_topic_create(mc, topic, partitions, MOCK_REPLICATION);
    if (rerr) {
        fprintf(stderr, "kafka-mock: topic %s: %s\n", topic,
                rd_kafka_err2str(rerr));
        rd_kafka_mock_cluster_destroy(mc);
        rd_kafka_destroy(rk);
        return 1;
    }

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_outage;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGUSR1);
    sigaddset(&mask, SIGUSR2);
    sigprocmask(SIG_BLOCK, &mask, &old);

    printf("KAFKA_BOOTSTRAP=%s\n", rd_kafka_mock_cluster_bootstraps(mc));
    fflush(stdout);

    /* The flags are read with the signals blocked, so none is lost. */
    while (!stop_requested) {
        if (down_requested) {
            down_requested = 0;
            set_brokers(mc, 1);
            continue;
        }
        if (up_requested) {
            up_requested = 0;
            set_brokers(mc, 0);
            continue;
        }
        sigsuspend(&old);
    }

    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return 0;
}
