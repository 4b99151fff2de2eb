/*
 * admin.h -- what an operator asks of a queue: its figures and worker records, the next
 * operations to be taken, a purge, the queues that exist. The admin commands
 * (lua/binduq/cli.lua: stats, workers, top, queue) call these through the Lua client; they do
 * not send Redis commands of their own, so the key layout stays known in one place
 * (keys.h) and the memory broker answers the same questions.
 *
 * On Redis (and Cluster: every call goes to the node of the queue's slot) they are read with
 * plain commands through bq_broker_ops.command; the memory broker answers from its own table
 * (it keeps no worker records: leases need none in one process). Nothing here changes a queue
 * except bq_admin_purge_ready.
 */
#ifndef BINDUQ_ADMIN_H
#define BINDUQ_ADMIN_H

#include "broker.h"

/* One worker's record in {Q}:workers, with what it holds. */
struct bq_worker_rec {
    char *id;          /* owned; byte for byte as stored (anyone may have written it) */
    size_t id_len;
    double lease_left; /* seconds until its lease runs out, by the server's clock; < 0: ran out */
    long long inflight;
    char *first;       /* owned, or NULL: the oldest message it holds (detail only) */
    size_t first_len;
};

struct bq_queue_stats {
    long long ready, delayed, inflight, dead;
    long long live;                /* workers whose lease still holds */
    bool seen;                     /* some key of the queue exists */
    struct bq_worker_rec *workers; /* detail only; owned */
    size_t nworkers;
};

void bq_queue_stats_free(struct bq_queue_stats *s);

/* The figures of `queue`; with `detail`, each worker record and the oldest message it holds. */
bq_status bq_admin_stats(bq_broker *b, const char *queue, bool detail, struct bq_queue_stats *out,
                         bq_err *err);

/* The next `limit` operations to be taken from `queue`, oldest first, into out. */
bq_status bq_admin_peek(bq_broker *b, const char *queue, long limit, struct bq_batch *out,
                        bq_err *err);

/* Deletes the waiting operations of `queue`, `chunk` at a time (so Redis is never blocked
 * long), calling progress(ud, removed so far, left) between chunks (may be NULL). */
bq_status bq_admin_purge_ready(bq_broker *b, const char *queue, long chunk, long long *removed,
                               void (*progress)(void *ud, long long done, long long left),
                               void *ud, bq_err *err);

/* The queues with keys on the node of `queue`, found by one SCAN of at most `max_keys` keys:
 * their names sorted in out (msgs' data), *partial when the scan stopped before the end.
 * BQ_EUNSUPPORTED for the memory broker. */
bq_status bq_admin_queues(bq_broker *b, const char *queue, long max_keys, struct bq_batch *out,
                          bool *partial, bq_err *err);

#endif
