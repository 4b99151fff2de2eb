/*
 * pool.h -- a bounded pool of Redis connections shared by threads.
 *
 * At most `max` connections exist at once. bq_pool_borrow hands out an idle connection,
 * opens a new one while under the bound, and otherwise waits (up to its deadline) for one to
 * come back, so a burst of callers larger than the pool queues instead of failing. Idle
 * connections are checked before they are lent (a peek at the socket catches a server that
 * closed them, e.g. after a restart) and replaced when dead. Connections are opened lazily.
 *
 * Blocking commands (BRPOP, BLMPOP, ...) must not use the pool: they hold a connection for the
 * whole wait. The worker's fetch loop owns its connection outright.
 */
#ifndef BINDUQ_POOL_H
#define BINDUQ_POOL_H

#include "conn.h"

typedef struct bq_pool bq_pool;

struct bq_pool_stats {
    long long borrows;     /* successful borrows */
    long long waits;       /* borrows that had to wait for a connection to come back */
    long long timeouts;    /* borrows that gave up */
    long long opened;      /* connections opened */
    long long discarded;   /* connections closed as broken or dead */
    int total;             /* connections in existence now */
    int idle;              /* of which idle */
};

/* Creates a pool for `url` (copied). `max` >= 1. */
bq_status bq_pool_new(const struct bq_url *url, const struct bq_conn_opts *opts, int max,
                      double borrow_timeout, bq_pool **out, bq_err *err);
void bq_pool_free(bq_pool *p);

/* Lends a connection, waiting at most the pool's borrow timeout. Returns BQ_ETIMEDOUT when
 * none came free, or the connect error when a new connection could not be opened. */
bq_status bq_pool_borrow(bq_pool *p, bq_conn **out, bq_err *err);

/* Gives a connection back. A broken connection is closed and its place freed. */
void bq_pool_return(bq_pool *p, bq_conn *c);

void bq_pool_stats(bq_pool *p, struct bq_pool_stats *out);

/* The pool's URL (for brokers that open extra connections to the same server). */
const struct bq_url *bq_pool_url(const bq_pool *p);
const struct bq_conn_opts *bq_pool_conn_opts(const bq_pool *p);

#endif
