/*
 * fuzz_config.c - libFuzzer harness of kvbusd's configuration loader,
 * srv_config_load(): the INI file through libinih and our line reader,
 * KVBUS_* environment variables and command-line flags, with every key's
 * parser and the final checks.
 *
 * Input: the INI file's text, then optionally a NUL byte and NUL-separated
 * entries, each an argv flag when it starts with '-' and an environment
 * entry otherwise. The file is written to a memfd and named to the loader
 * as /proc/self/fd/N with -c, which the harness always passes first; the
 * entries cannot name another file (-c, --config and KVBUS_CONFIG are
 * dropped, so the fuzzer never reads the machine's files) nor ask for
 * --help or --version.
 *
 * Checked whatever the input: the loader returns OK or BAD; on BAD, err
 * is one non-empty line without control characters; on OK, the result is
 * usable (a listen port, a node id without ':', a "default" store or some
 * store, valid store names). srv_config_free() then frees everything
 * (LeakSanitizer checks it).
 *
 * Runs on: the fuzzer's thread.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "server/srv_config.h"

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "fuzz_config: %s:%d: check failed: %s\n",          \
                    __FILE__, __LINE__, #cond);                                \
            abort();                                                           \
        }                                                                      \
    } while (0)

#define MAX_ENTRIES 32 /* argv and envp entries taken from one input */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int file_fd = -1;
static char file_path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    file_fd = memfd_create("fuzz_config.ini", 0);
    if (file_fd < 0) {
        perror("fuzz_config: memfd_create");
        exit(1);
    }
    snprintf(file_path, sizeof file_path, "/proc/self/fd/%d", file_fd);
    return 0;
}

/* Entries that would read another file or print and exit. */
static bool dropped(const char *e)
{
    return strncmp(e, "-c", 2) == 0 || strncmp(e, "--config", 8) == 0 ||
           strncmp(e, "KVBUS_CONFIG", 12) == 0 || strcmp(e, "-h") == 0 ||
           strcmp(e, "--help") == 0 || strcmp(e, "--version") == 0;
}

static void check_result(int rc, const srv_config *cfg, const char *err)
{
    size_t i;

    CHECK(rc == SRV_CONFIG_OK || rc == SRV_CONFIG_BAD);
    if (rc == SRV_CONFIG_BAD) {
        CHECK(err[0] != '\0');
        for (i = 0; err[i]; i++)
            CHECK((unsigned char)err[i] >= 0x20 && err[i] != 0x7f);
        return;
    }
    CHECK(err[0] == '\0');
    CHECK(cfg->listen_port != 0 && cfg->listen_host[0] != '\0');
    CHECK(cfg->node_id[0] != '\0' && !strchr(cfg->node_id, ':'));
    CHECK(cfg->nstores >= 1 && cfg->stores);
    for (i = 0; i < cfg->nstores; i++)
        CHECK(kv_check_store_name(cfg->stores[i].name,
                                  strlen(cfg->stores[i].name), NULL) == 0);
    CHECK(cfg->max_uri_bytes > 0 && cfg->max_header_bytes > 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    const uint8_t *nul = memchr(data, '\0', size);
    size_t file_len = nul ? (size_t)(nul - data) : size;
    char *argv[MAX_ENTRIES + 4], *envp[MAX_ENTRIES + 1];
    char *rest = NULL, *e, *end;
    char err[SRV_CONFIG_ERR_BYTES];
    int argc = 0, nenv = 0;
    srv_config cfg;
    int rc;

    if (ftruncate(file_fd, 0) != 0 ||
        pwrite(file_fd, text, file_len, 0) != (ssize_t)file_len)
        abort();
    argv[argc++] = "kvbusd";
    argv[argc++] = "-c";
    argv[argc++] = file_path;
    if (nul) {
        /* the entries, NUL-terminated, in one copy freed at the end */
        size_t n = size - file_len - 1;
        rest = malloc(n + 1);
        memcpy(rest, nul + 1, n);
        rest[n] = '\0';
        end = rest + n;
        for (e = rest; e < end; e += strlen(e) + 1) {
            if (dropped(e))
                continue;
            if (e[0] == '-' && argc < MAX_ENTRIES + 3)
                argv[argc++] = e;
            else if (e[0] != '-' && nenv < MAX_ENTRIES)
                envp[nenv++] = e;
        }
    }
    argv[argc] = NULL;
    envp[nenv] = NULL;

    rc = srv_config_load(&cfg, argc, argv, envp, err, sizeof err);
    check_result(rc, &cfg, err);
    srv_config_free(&cfg);
    free(rest);
    return 0;
}
