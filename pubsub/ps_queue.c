/*
 * ps_queue.c - the bounded outbound queue of one slow consumer: a FIFO of
 * byte frames that drops its oldest frames to make room for new ones.
 *
 * Frames are individually allocated (header and bytes in one block) on a
 * singly linked list with head and tail, so push, peek and pop are O(1)
 * and dropping costs O(1) per frame dropped. The head may be locked while
 * the user writes it; drops then take the frames behind it, and a new
 * frame that cannot fit beside the locked head alone is dropped itself,
 * which keeps the byte total within the bound at all times.
 *
 * Left out: any notion of message boundaries beyond frames, and writing.
 * Runs on: the event loop thread.
 */
#include <stdlib.h>
#include <string.h>

#include "pubsub/pubsub.h"

/* One frame; its bytes follow the header in the same allocation. */
struct ps_frame {
    struct ps_frame *next; /* toward the newest */
    size_t len;
    char data[];
};

struct ps_queue {
    struct ps_frame *head, *tail; /* oldest, newest */
    size_t count;
    size_t bytes; /* sum of frame lengths, <= max_bytes */
    size_t max_bytes;
    uint64_t dropped; /* since the last ps_queue_take_dropped */
    bool head_locked; /* the head is being written: never dropped */
};

ps_queue *ps_queue_new(size_t max_bytes)
{
    ps_queue *q = ps__malloc(sizeof(*q));

    if (!q)
        return NULL;
    memset(q, 0, sizeof(*q));
    q->max_bytes = max_bytes;
    return q;
}

void ps_queue_free(ps_queue *q)
{
    if (!q)
        return;
    while (q->head)
        ps_queue_pop(q);
    free(q);
}

/*
 * Unlinks and frees the oldest frame that may be dropped, counting it.
 * False when there is none (empty, or only the locked head).
 */
static bool ps__queue_drop_oldest(ps_queue *q)
{
    struct ps_frame *prev = q->head_locked ? q->head : NULL;
    struct ps_frame *f = prev ? prev->next : q->head;

    if (!f)
        return false;
    if (prev)
        prev->next = f->next;
    else
        q->head = f->next;
    if (q->tail == f)
        q->tail = prev;
    q->count--;
    q->bytes -= f->len;
    q->dropped++;
    free(f);
    return true;
}

/*
 * Copies the frame in, dropping the oldest droppable frames until it fits.
 * KV_ETOOBIG and KV_ENOMEM change nothing. When only a locked head is
 * left and the frame still does not fit, the frame is dropped (counted)
 * and 0 returned: it is a message the consumer misses like the others.
 */
int ps_queue_push(ps_queue *q, const void *frame, size_t len)
{
    struct ps_frame *f;

    if (len > q->max_bytes)
        return KV_ETOOBIG;
    f = ps__malloc(sizeof(*f) + len);
    if (!f)
        return KV_ENOMEM;
    f->next = NULL;
    f->len = len;
    if (len)
        memcpy(f->data, frame, len);
    while (q->bytes + len > q->max_bytes) {
        if (!ps__queue_drop_oldest(q)) {
            q->dropped++;
            free(f);
            return 0;
        }
    }
    if (q->tail)
        q->tail->next = f;
    else
        q->head = f;
    q->tail = f;
    q->count++;
    q->bytes += len;
    return 0;
}

bool ps_queue_peek(const ps_queue *q, const void **frame, size_t *len)
{
    if (!q->head)
        return false;
    *frame = q->head->data;
    *len = q->head->len;
    return true;
}

void ps_queue_lock_head(ps_queue *q, bool locked)
{
    q->head_locked = locked && q->head;
}

/* Frees the oldest frame and clears the lock; no-op when empty. */
void ps_queue_pop(ps_queue *q)
{
    struct ps_frame *f = q->head;

    if (!f)
        return;
    q->head = f->next;
    if (!q->head)
        q->tail = NULL;
    q->count--;
    q->bytes -= f->len;
    q->head_locked = false;
    free(f);
}

size_t ps_queue_bytes(const ps_queue *q)
{
    return q->bytes;
}

size_t ps_queue_count(const ps_queue *q)
{
    return q->count;
}

uint64_t ps_queue_take_dropped(ps_queue *q)
{
    uint64_t n = q->dropped;

    q->dropped = 0;
    return n;
}
