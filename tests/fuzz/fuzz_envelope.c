/*
 * fuzz_envelope.c - libFuzzer harness of the decoders of what other nodes
 * and clients send the pub/sub providers and the Redis backend:
 *   - the kvbus envelope "kvbus1 <node> <seq> <ts>\n<payload>" and the
 *     Nuxeo message "<node>:<payload>" (redis__ps_envelope_parse,
 *     redis__ps_nuxeo_parse, backends/redis/redis_int.h);
 *   - the Kafka record headers' node id and decimal numbers
 *     (kafka_node_ok, kafka_parse_u64: static in kafka_pubsub.c, which this
 *     file includes to reach them, as they have no header);
 *   - the keys listing cursor a client sends back (redis__cursor_decode)
 *     and the redis:// URL of the configuration (redis__url_parse).
 * Every decoder sees every input.
 *
 * Checked besides memory errors, leaks and undefined behaviour: what a
 * decoder accepts is exactly what its encoder writes (the envelope head
 * and the cursor print back to the same bytes, a Nuxeo message splits and
 * joins back), the two node id checks and the two decimal parsers of the
 * Redis and Kafka providers agree, and an envelope built from the input's
 * bytes parses back to the same stamp.
 *
 * Runs on: the fuzzer's thread.
 */
#include "backends/kafka/kafka_pubsub.c"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/redis/redis_int.h"

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "fuzz_envelope: %s:%d: check failed: %s\n",        \
                    __FILE__, __LINE__, #cond);                                \
            abort();                                                           \
        }                                                                      \
    } while (0)

#define FZ_U64_TEXT_BYTES 21 /* UINT64_MAX in decimal, and a NUL */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The kvbus envelope: parse, then re-encode the stamp and compare. */
static void fz_kvbus(const char *p, size_t n)
{
    redis_ps_stamp st;
    ps_message m = {0};
    char head[REDIS_PS_HEAD_MAX];
    size_t hlen;

    if (redis__ps_envelope_parse(p, n, &st) != 0)
        return;
    CHECK(kafka_node_ok(st.node, strlen(st.node)));
    CHECK(st.data >= p && st.data + st.len == p + n);
    m.node = st.node;
    m.seq = st.seq;
    m.ts_ms = st.ts_ms;
    hlen = redis__ps_envelope_head(&m, head);
    CHECK(hlen == (size_t)(st.data - p) && memcmp(head, p, hlen) == 0);
}

/* The Nuxeo message: node before the first ':', the rest is the payload. */
static void fz_nuxeo(const char *p, size_t n)
{
    const char *colon = memchr(p, ':', n);
    redis_ps_stamp st;
    bool ok = redis__ps_nuxeo_parse(p, n, &st) == 0;

    CHECK(ok == (colon && kafka_node_ok(p, (size_t)(colon - p))));
    if (!ok)
        return;
    CHECK(strlen(st.node) == (size_t)(colon - p) &&
          memcmp(st.node, p, strlen(st.node)) == 0);
    CHECK(st.data == colon + 1 && st.len == n - (size_t)(colon - p) - 1);
    CHECK(st.seq == 0 && st.ts_ms == 0);
}

/*
 * The Kafka header numbers against the Redis envelope's parser: p is a
 * valid seq for one exactly when "kvbus1 n <p> 0\n" is a valid envelope.
 */
static void fz_numbers(const char *p, size_t n)
{
    char env[64];
    uint64_t v = 0;
    redis_ps_stamp st;
    bool kafka_ok, redis_ok;
    int len;

    if (n > 32 || memchr(p, '\0', n))
        return;
    kafka_ok = kafka_parse_u64(p, n, &v);
    len = snprintf(env, sizeof env, "kvbus1 n %.*s 0\n", (int)n, p);
    redis_ok = !memchr(p, '\n', n) &&
               redis__ps_envelope_parse(env, (size_t)len, &st) == 0;
    CHECK(kafka_ok == redis_ok);
    if (kafka_ok)
        CHECK(st.seq == v);
}

/* An envelope made from the input's bytes parses back to the same. */
static void fz_roundtrip(const uint8_t *d, size_t n)
{
    char node[PS_NODE_ID_MAX + 1], head[REDIS_PS_HEAD_MAX + 8];
    ps_message m = {0};
    redis_ps_stamp st;
    size_t i, nlen, hlen;

    if (n < 17)
        return;
    memcpy(&m.seq, d, 8);
    memcpy(&m.ts_ms, d + 8, 8);
    nlen = d[16] % PS_NODE_ID_MAX + 1;
    for (i = 0; i < nlen; i++)
        node[i] = (char)('!' + (i + 17 < n ? d[i + 17] : i) % ('~' - '!'));
    for (i = 0; i < nlen; i++)
        if (node[i] == ':')
            node[i] = '_';
    node[nlen] = '\0';
    m.node = node;
    hlen = redis__ps_envelope_head(&m, head);
    CHECK(hlen > 0 && hlen < REDIS_PS_HEAD_MAX);
    memcpy(head + hlen, "payload", 7);
    CHECK(redis__ps_envelope_parse(head, hlen + 7, &st) == 0);
    CHECK(strcmp(st.node, node) == 0 && st.seq == m.seq &&
          st.ts_ms == m.ts_ms && st.len == 7 &&
          memcmp(st.data, "payload", 7) == 0);
}

/* A keys listing cursor: what decodes encodes back to the same text. */
static void fz_cursor(const char *p, size_t n)
{
    redis_cursor c;
    char text[REDIS_CURSOR_MAX + 1];
    kv_err err = {0};
    size_t len;

    if (redis__cursor_decode((kv_bytes){p, n}, &c, &err) != 0) {
        CHECK(err.code == KV_ECURSOR);
        return;
    }
    if (n == 0)
        return; /* the start, written "0" */
    len = redis__cursor_encode(&c, text);
    CHECK(len == n && memcmp(text, p, n) == 0);
}

/* A redis:// URL: parsed or refused, never leaking or overrunning. */
static void fz_url(const char *p, size_t n)
{
    char *text = malloc(n + 1), addr[REDIS_HOST_MAX + 16];
    redis_url u;
    kv_err err = {0};

    memcpy(text, p, n);
    text[n] = '\0';
    if (redis__url_parse(text, &u, &err) == 0) {
        CHECK(u.host[0] != '\0' && u.port >= 1 && u.db >= 0);
        CHECK(redis__url_addr(&u, addr, sizeof addr) > 0);
        redis__url_clear(&u);
    } else {
        CHECK(err.code != 0);
    }
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a copy of exactly the input's size, so ASan sees any overread */
    char *p = malloc(size ? size : 1);

    memcpy(p, data, size);
    fz_kvbus(p, size);
    fz_nuxeo(p, size);
    fz_numbers(p, size);
    fz_roundtrip(data, size);
    fz_cursor(p, size);
    fz_url(p, size);
    free(p);
    return 0;
}
