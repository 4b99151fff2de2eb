/*
 * client.h -- internals of bq_client shared with the Lua binding.
 */
#ifndef BINDUQ_CLIENT_H
#define BINDUQ_CLIENT_H

#include "../binduq.h"
#include "../broker/broker.h"
#include "../storage/storage.h"
#include "config.h"

#include <stdatomic.h>

struct bq_client {
    struct bq_config cfg;
    bq_broker *broker; /* owned */
    /* The producer side of bq_schedule_many (binduq.h); the Lua binding's clients have no
     * storage (binduq.scheduler keeps its own) and leave these zero. */
    bq_storage *store; /* one reference, or NULL */
    bool dedup;
    double dedup_ttl;
    const char *(*route)(const struct bq_task *task, void *ud);
    void *route_ud;
    atomic_llong scheduled, deduplicated;
    /* Task events read through this client (core.client's feed_read): the reader's own
     * connection, created by the first read; one thread at a time. */
    struct bq_feed_reader *feed_rd;
    /* The producer's own task events ("scheduled", ...), written by a thread of the poster
     * (feed_post.h); NULL when task events are off. */
    struct bq_feed_post *feed_post;
};

/* bq_client_new without a storage, for the Lua binding (core.client): binduq.scheduler
 * records tasks through its own storage handle, and workers only push. */
bq_status bq_client_new_broker(const struct bq_client_options *opts, bq_client **out,
                               bq_err *err);

/* Pushes already-encoded messages to `queue` (NULL: the client's queue) and logs one
 * "scheduled" line per message at debug level with the given task ids (may be NULL). */
bq_status bq_client_push(bq_client *c, const char *queue, const struct bq_slice *msgs,
                         const char *const *task_ids, size_t n, size_t *pushed, bq_err *err);

/* A push in two halves, so that the caller prepares its next messages while the server
 * works on these (core.push_runs): bq_client_push_send sends msgs[0..n) to `queue` (with
 * keys: deduplicated for ttl seconds, as bq_broker_ops.push_unique), and
 * bq_client_push_recv, which must follow a send that returned BQ_OK, reads the answer into
 * w->pushed (room for n, set by the caller). A broker without halves (memory, Cluster)
 * makes the push whole in the send. Logs as bq_client_push does. */
bq_status bq_client_push_send(bq_client *c, const char *queue, const struct bq_slice *msgs,
                              const char *const *keys, size_t n, double ttl,
                              struct bq_push_wait *w, bq_err *err);
bq_status bq_client_push_recv(bq_client *c, const char *queue, const char *const *task_ids,
                              struct bq_push_wait *w, bq_err *err);

/* The "scheduled" task events of the runs ids[0..n) that were pushed (pushed[i]), as
 * binduq.scheduler writes them, handed to the client's poster; nothing when task events are
 * off (core.push_runs). */
void bq_client_emit_runs(bq_client *c, const char *queue, const char *const *ids,
                         const bool *pushed, size_t n);

#endif
