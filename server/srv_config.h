/*
 * srv_config.h - kvbusd configuration: INI file, KVBUS_* environment, flags.
 *
 * Sources apply in order defaults < file < environment < flags, each key
 * through the same table of known keys (srv_config.c), so a key is defined
 * once with its type, limits and help. A bad key or value is reported as one
 * line naming where it came from (file and line, environment variable, or
 * flag), the section, the key and the problem; kvbusd prints it and exits 2.
 *
 * Names: file `[section] key = value`; environment
 * `KVBUS_<SECTION>_<KEY>` (upper case; for stores `KVBUS_STORE_<name>_<KEY>`
 * with the store name as written); flag `--<section>.<key>=value` or
 * `--<section>.<key> value` (stores: `--store.<name>.<key>`).
 */
#ifndef SRV_CONFIG_H
#define SRV_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvstore/kvstore.h"

#define SRV_VERSION "0.1.0" /* printed by kvbusd --version */
#define SRV_NODE_ID_MAX 128
#define SRV_LISTEN_DEFAULT "127.0.0.1:7400"
#define SRV_CONFIG_ERR_BYTES 512

typedef struct srv_pubsub_conf {
    char provider[16];    /* "memory" | "redis" | "kafka" */
    char *url;            /* owned; redis URL or kafka bootstrap list */
    char *channel_prefix; /* owned; default "kvbus:" */
    char *kafka_topic;    /* owned; default "kvbus-pubsub" */
    char format[16];      /* "kvbus" | "nuxeo" */
} srv_pubsub_conf;

typedef struct srv_config {
    char *config_path;     /* owned; NULL when no file */
    char listen_host[256]; /* from listen; IPv6 unbracketed */
    uint16_t listen_port;
    char node_id[SRV_NODE_ID_MAX + 1]; /* default hostname-pid; no ':' */
    kv_limits limits;                  /* key/value bytes, stores */
    size_t max_uri_bytes;              /* request line target; 414 past it */
    size_t max_header_bytes;           /* all headers; 431 past it */
    size_t max_connections;            /* open client connections */
    size_t ws_queue_bytes;             /* per WebSocket outbound queue */
    uint32_t ws_stall_ms;              /* full queue this long = close 1008 */
    uint32_t shutdown_grace_ms;        /* drain time on SIGTERM */
    size_t max_ws_frame_bytes;         /* 0 = from max_value_bytes */
    size_t max_subscriptions_per_conn; /* topics of one WebSocket */
    uint32_t header_timeout_ms;        /* open/first byte to end of headers */
    uint32_t body_timeout_ms;          /* longest gap between body bytes */
    uint32_t idle_timeout_ms;          /* keep-alive with no request */
    char *tls_cert;          /* owned; PEM chain path; NULL = no TLS */
    char *tls_key;           /* owned; PEM private key path */
    char tls_min_version[8]; /* "1.2" | "1.3" */
    int log_level;           /* 0 error, 1 warn, 2 info, 3 debug */
    char *tokens_file;       /* owned; NULL or "" = no auth */
    kv_store_conf *stores;   /* owned array */
    size_t nstores;
    srv_pubsub_conf pubsub;
} srv_config;

/* What srv_config_load() decided. */
enum srv_config_result {
    SRV_CONFIG_OK = 0,   /* cfg is ready */
    SRV_CONFIG_EXIT = 1, /* --help or --version was printed: exit 0 */
    SRV_CONFIG_BAD = 2,  /* err holds the one-line reason: exit 2 */
};

/*
 * Fills cfg from defaults, the file named by -c/--config (if any), envp
 * (KVBUS_* entries) and argv, in that order of precedence (flags win).
 * A store "default" with backend memory exists unless configured otherwise.
 * On SRV_CONFIG_BAD, err holds one line (no newline). cfg must be freed with
 * srv_config_free() whatever the result.
 */
int srv_config_load(srv_config *cfg, int argc, char **argv, char **envp,
                    char *err, size_t errlen);

/* Frees what cfg owns. Accepts NULL. */
void srv_config_free(srv_config *cfg);

/* Prints the usage text (every key, its default and its help) to out. */
void srv_config_usage(void *out_file);

#endif
