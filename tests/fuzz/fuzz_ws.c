/*
 * fuzz_ws.c - libFuzzer harness of kvbusd's WebSocket feed: srv_ws.c's
 * framing on wslay, the JSON ops table (subscribe, unsubscribe, publish,
 * ping), the bounded outbound queue and the close handshake, behind the
 * real HTTP upgrade (fuzz_net.h).
 *
 * Every session starts with a valid upgrade request to /v1/ws. The input
 * then describes what the client sends after it, as records, so that most
 * mutations still reach the ops table inside well-formed frames while some
 * break the framing itself. Each record starts with a header byte h:
 *
 *   h & 3 == 0  a data message: length L (one byte, or two big-endian when
 *               h & 4), then L payload bytes, usually JSON. Sent masked as
 *               one text frame; h & 8 splits it into a text and a
 *               continuation frame, with a ping between them when h & 16;
 *               h & 32 leaves it unmasked (a protocol error); h & 64 makes
 *               it binary.
 *   h & 3 == 1  a control frame: opcode ping, pong, close or the reserved
 *               0x3 by (h >> 2) & 3, one length byte and the payload (over
 *               125 bytes is a protocol error); h & 16 clears FIN, h & 32
 *               leaves it unmasked.
 *   h & 3 == 2  raw bytes: length as for data, then the bytes verbatim.
 *   h & 3 == 3  a segment boundary: what was built so far is written now,
 *               so the server reads the rest separately.
 *
 * A record cut short by the end of the input takes what is left.
 * tests/fuzz/ws_seed.py writes inputs in this format from JSON lines.
 *
 * Runs on: the fuzzer's thread.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/fuzz_net.h"

#define WS_OP_CONT 0x0
#define WS_OP_TEXT 0x1
#define WS_OP_BINARY 0x2
#define WS_OP_RESERVED 0x3
#define WS_OP_CLOSE 0x8
#define WS_OP_PING 0x9
#define WS_OP_PONG 0xA
#define WS_FIN 0x80
#define WS_MASKED 0x80
#define WS_LEN7_MAX 125
#define WS_LEN16 126
#define WS_LEN16_MAX 0xFFFF
#define WS_FRAME_HEAD_MAX 14 /* 2 + 8 length bytes + 4 mask bytes */

static const char upgrade[] = "GET /v1/ws HTTP/1.1\r\n"
                              "Host: 127.0.0.1\r\n"
                              "Upgrade: websocket\r\n"
                              "Connection: Upgrade\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                              "Sec-WebSocket-Version: 13\r\n"
                              "\r\n";

static const uint8_t mask_key[4] = {0x37, 0xfa, 0x21, 0x3d};

/* The bytes of the segment being built. */
typedef struct wbuf {
    uint8_t *data;
    size_t len, cap;
} wbuf;

static void wbuf_put(wbuf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n)
            cap *= 2;
        b->data = realloc(b->data, cap);
        if (!b->data)
            abort();
        b->cap = cap;
    }
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void wbuf_flush(wbuf *b)
{
    fuzz_net_send(b->data, b->len);
    b->len = 0;
}

/* Appends one frame: byte0 (FIN, opcode), then length, mask and payload. */
static void put_frame(wbuf *b, uint8_t byte0, bool masked, const uint8_t *p,
                      size_t n)
{
    uint8_t head[WS_FRAME_HEAD_MAX];
    size_t h = 0, i, start;

    head[h++] = byte0;
    if (n <= WS_LEN7_MAX) {
        head[h++] = (uint8_t)((masked ? WS_MASKED : 0) | n);
    } else {
        head[h++] = (uint8_t)((masked ? WS_MASKED : 0) | WS_LEN16);
        head[h++] = (uint8_t)(n >> 8);
        head[h++] = (uint8_t)n;
    }
    if (masked) {
        memcpy(head + h, mask_key, sizeof mask_key);
        h += sizeof mask_key;
    }
    wbuf_put(b, head, h);
    start = b->len;
    wbuf_put(b, p, n);
    if (masked)
        for (i = 0; i < n; i++)
            b->data[start + i] ^= mask_key[i % 4];
}

/* Reads a record's length (one or two bytes) and clips it to what is left. */
static size_t take_len(const uint8_t **p, const uint8_t *end, bool wide)
{
    size_t n = 0;

    if (*p < end)
        n = *(*p)++;
    if (wide && *p < end)
        n = n << 8 | *(*p)++;
    if (n > (size_t)(end - *p))
        n = (size_t)(end - *p);
    return n;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_net_init();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t control_ops[4] = {WS_OP_PING, WS_OP_PONG, WS_OP_CLOSE,
                                           WS_OP_RESERVED};
    const uint8_t *p = data, *end = data + size, *payload;
    wbuf b = {0};
    uint8_t h, op;
    size_t n, half;
    bool masked;

    fuzz_net_begin(false);
    fuzz_net_send(upgrade, sizeof upgrade - 1);
    while (p < end) {
        h = *p++;
        switch (h & 3) {
        case 0:
            n = take_len(&p, end, h & 4);
            payload = p;
            p += n;
            masked = !(h & 32);
            op = (h & 64) ? WS_OP_BINARY : WS_OP_TEXT;
            if (!(h & 8)) {
                put_frame(&b, WS_FIN | op, masked, payload, n);
                break;
            }
            half = n / 2;
            put_frame(&b, op, masked, payload, half);
            if (h & 16)
                put_frame(&b, WS_FIN | WS_OP_PING, true, payload, 0);
            put_frame(&b, WS_FIN | WS_OP_CONT, masked, payload + half,
                      n - half);
            break;
        case 1:
            n = take_len(&p, end, false);
            put_frame(
                &b,
                (uint8_t)(((h & 16) ? 0 : WS_FIN) | control_ops[(h >> 2) & 3]),
                !(h & 32), p, n);
            p += n;
            break;
        case 2:
            n = take_len(&p, end, h & 4);
            wbuf_put(&b, p, n);
            p += n;
            break;
        default:
            wbuf_flush(&b);
            break;
        }
    }
    wbuf_flush(&b);
    free(b.data);
    fuzz_net_end();
    return 0;
}
