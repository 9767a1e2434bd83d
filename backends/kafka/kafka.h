/*
 * kafka.h - the Kafka pub/sub provider of kvbus ("kafka").
 *
 * Carries the messages of one node's bus to the other nodes through one
 * Kafka topic (pubsub.kafka_topic, default kvbus-pubsub) on the brokers of
 * pubsub.url (a bootstrap list host:port,...). Record key = the pubsub
 * topic (so one pubsub topic stays in one partition, in order), value =
 * the payload bytes, headers node / seq / ts (decimal text). Each node
 * consumes with its own consumer group "kvbus-<node_id>" and a new group
 * starts at the end of the log. Wire format, guarantees and configuration:
 * docs/cluster.md ("Running a cluster on Kafka").
 *
 * Runs on: the event loop thread (librdkafka's own threads never call into
 * kvbus except for its log lines).
 */
#ifndef KVBUS_BACKEND_KAFKA_H
#define KVBUS_BACKEND_KAFKA_H

#include "pubsub/pubsub.h"

/* The pub/sub provider "kafka" (pubsub.provider = kafka). */
extern const struct ps_provider_ops kafka_provider_ops;

#endif
