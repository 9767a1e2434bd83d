/*
 * fuzz_http.c - libFuzzer harness of kvbusd's HTTP server: srv_http.c's
 * parsing, limits and pipelining, srv_response.c's response writing, the
 * route table and every handler of srv_routes.c on the memory backend, with
 * the real application around them (fuzz_net.h).
 *
 * An input is the raw byte stream a client sends on one connection, so a
 * corpus file is readable HTTP (`nc 127.0.0.1 7400 < file` replays it on a
 * running kvbusd). The harness cuts it into up to four segments at places
 * taken from a hash of the bytes, so requests also arrive split inside
 * the request line, a header name or value, or a chunk; the same input
 * always splits the same way. Another bit of the hash makes the stores
 * answer on a later loop turn (fuzz_backend.c), for the paths that wait.
 *
 * Runs on: the fuzzer's thread.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "tests/fuzz/fuzz_net.h"

#define FUZZ_HTTP_MAX_CUTS 3

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_net_init();
    return 0;
}

/* FNV-1a: a stable hash of the input that picks the cut points. */
static uint64_t input_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 14695981039346656037ull;

    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;

    return x < y ? -1 : x > y;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t cuts[FUZZ_HTTP_MAX_CUTS + 1], ncuts, at = 0, i;
    uint64_t h = input_hash(data, size);

    ncuts = size > 1 ? (size_t)(h % (FUZZ_HTTP_MAX_CUTS + 1)) : 0;
    for (i = 0; i < ncuts; i++) {
        h = h * 6364136223846793005ull + 1442695040888963407ull;
        cuts[i] = 1 + (size_t)((h >> 33) % (size - 1));
    }
    qsort(cuts, ncuts, sizeof cuts[0], cmp_size);
    cuts[ncuts] = size;

    fuzz_net_begin((h >> 61) & 1);
    for (i = 0; i <= ncuts; i++) {
        fuzz_net_send(data + at, cuts[i] - at);
        at = cuts[i];
    }
    fuzz_net_end();
    return 0;
}
