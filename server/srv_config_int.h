/*
 * srv_config_int.h - what the two files of kvbusd's configuration loader
 * share: the key table's row type and the table itself (srv_config_keys.c:
 * every key, how its value is parsed, its help text) used by the loader
 * (srv_config.c: the sources, their order, the final checks).
 *
 * Runs on: the main thread at start-up, before the event loop exists.
 */
#ifndef SRV_CONFIG_INT_H
#define SRV_CONFIG_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server/srv_config.h"

#define SRV_WHY_BYTES 256      /* a setter's reason */
#define SRV_SHOWN_VALUE_MAX 64 /* bytes of a bad value echoed in an error */

enum srv_section {
    SRV_SEC_NONE,   /* before the first [section] of a file */
    SRV_SEC_SERVER, /* [server] */
    SRV_SEC_STORE,  /* [store.<name>] */
    SRV_SEC_PUBSUB, /* [pubsub] */
};

typedef struct srv_key srv_key;

/*
 * Parses text and stores it in the key's field of base (a srv_config, or a
 * kv_store_conf for store keys). Returns 0, or -1 with a short reason in why
 * that names neither the source nor the key (the caller adds both). On
 * error the field is left as it was.
 */
typedef int (*srv_setter)(const srv_key *k, void *base, const char *text,
                          char *why, size_t whylen);

struct srv_key {
    enum srv_section section;
    const char *name; /* as in the file; flags and env derive */
    srv_setter set;
    size_t offset;              /* of the field in base */
    size_t size;                /* fixed char array fields: bytes with NUL */
    bool number;                /* default is def_num, not def */
    uint64_t min, max;          /* numbers: inclusive range */
    uint64_t def_num;           /* numbers: the default */
    const char *def;            /* default as text; NULL = none or computed */
    const char *doc_def;        /* usage text when def is NULL */
    const char *const *choices; /* enumerations: NULL-terminated */
    bool nonempty;              /* strings: "" is refused */
    const char *arg;            /* usage metavariable; NULL = the choices */
    const char *help;
};

/* Rows of srv__keys[]; the compiler checks it against the table. */
#define SRV__NKEYS 35

/* Every configuration key, once (srv_config_keys.c). */
extern const srv_key srv__keys[SRV__NKEYS];

/* The default of k as text (numbers formatted into buf), or NULL. */
const char *srv__key_default(const srv_key *k, char *buf, size_t buflen);

#endif
