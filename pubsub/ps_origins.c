/*
 * ps_origins.c - the last sequence number seen from each origin node, for
 * the gap detection of cluster providers (SPEC 7: a jump in an origin's
 * sequence means this node may have missed messages, so its subscribers get
 * a reset). A short list, most recently seen first, bounded by
 * PS_ORIGINS_MAX: the least recently seen origin is forgotten first.
 *
 * Runs on: the event loop thread (called from providers' receive paths).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pubsub/pubsub.h"

struct ps__origin {
    struct ps__origin *next; /* most recently seen first */
    uint64_t last_seq;
    char node[PS_NODE_ID_MAX + 1];
};

void ps_origins_clear(ps_origins *o)
{
    struct ps__origin *e, *next;

    for (e = o->head; e; e = next) {
        next = e->next;
        free(e);
    }
    o->head = NULL;
    o->count = 0;
}

uint64_t ps_origins_note(ps_origins *o, const char *node, uint64_t seq)
{
    struct ps__origin **pp, *e;
    uint64_t missed = 0;

    for (pp = &o->head; (e = *pp) != NULL; pp = &e->next)
        if (strcmp(e->node, node) == 0)
            break;
    if (e) {
        *pp = e->next; /* moved to the front below */
        if (seq > e->last_seq + 1)
            missed = seq - e->last_seq - 1;
        else if (seq <= e->last_seq && seq != 1)
            missed = 1;
    } else {
        if (o->count >= PS_ORIGINS_MAX && o->head) {
            /* Reuse the least recently seen origin, the list's tail. */
            struct ps__origin **tp = &o->head;
            while ((*tp)->next)
                tp = &(*tp)->next;
            e = *tp;
            *tp = NULL;
        } else {
            e = malloc(sizeof *e);
            if (!e)
                return 0; /* not tracked: no reset rather than a false one */
            o->count++;
        }
        snprintf(e->node, sizeof e->node, "%s", node);
    }
    e->last_seq = seq;
    e->next = o->head;
    o->head = e;
    return missed;
}
