/*
 * fuzz_net.h - drives a real kvbusd application over a loopback socket, for
 * the fuzz harnesses of the HTTP server (fuzz_http.c) and the WebSocket
 * feed (fuzz_ws.c).
 *
 * One session per fuzz input: a fresh loop and application (srv_app_open(),
 * memory store, in-process pub/sub, the real route table) listening on
 * 127.0.0.1 at a port the kernel picks; one client connection; the input's
 * bytes written in one or more segments, the loop turning between them so
 * the server reads each segment on its own; then the client half-closes
 * and reads every answer until the server closes. The session then checks
 * what must hold whatever the bytes were, and aborts (a libFuzzer crash)
 * when one does not:
 *   - the server closes the connection within FUZZ_NET_PROMPT_MS of the
 *     client's end of input, and forgets it (connections_open back to 0);
 *   - closing the application leaves no handle on the loop.
 * Memory errors, undefined behaviour and leaks are ASan's, UBSan's and
 * LeakSanitizer's to report, per input, since nothing outlives a session.
 *
 * Runs on: the fuzzer's thread, which is also the loop's.
 */
#ifndef FUZZ_NET_H
#define FUZZ_NET_H

#include <stdbool.h>
#include <stddef.h>

#include "kvstore/kvstore.h"

/* Longest a session waits for the server to close after the client's EOF. */
#define FUZZ_NET_DEADLINE_MS 10000

/*
 * The server must close sooner than this after the client's EOF. Nothing
 * it does then waits for a timer (the EOF ends a lingering connection at
 * once), so closing later means it missed the EOF; the margin is for a
 * busy machine, well under the server's 1 s linger.
 */
#define FUZZ_NET_PROMPT_MS 400

/*
 * Loads the configuration every session uses: kvbusd's defaults with small
 * limits (so inputs reach them), logs at error level only, store "default"
 * with notify = true. Call once, from LLVMFuzzerInitialize. Exits the
 * process when the configuration is refused.
 */
void fuzz_net_init(void);

/*
 * Opens the application and connects the client. With late_answers, the
 * stores answer on a later loop turn (fuzz_late_memory_ops) instead of at
 * once, as network backends do.
 */
void fuzz_net_begin(bool late_answers);

/* Writes len bytes to the server as one segment and lets it read them. */
void fuzz_net_send(const void *p, size_t len);

/* Half-closes, reads the answers, waits for the close, checks the
 * invariants above and frees everything. */
void fuzz_net_end(void);

/* The memory backend answering on the next loop turn (fuzz_backend.c). */
extern const struct kv_backend_ops fuzz_late_memory_ops;

#endif
