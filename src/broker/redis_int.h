/*
 * redis_int.h -- what the Redis broker's files share; private to src/broker/redis*.c.
 *
 * The broker is one struct, redis_broker, whose operations are split by concern:
 *   redis.c          opening and freeing it, the server-side scripts (EVALSHA, EVAL on
 *                    NOSCRIPT), one command or script on a pooled connection, push and
 *                    push_unique, node, command, ping, pool stats
 *   redis_fetch.c    the fetch round trip (the lease renewed, acks, due retries promoted,
 *                    the take, the seals) on the fetcher's own connection, interrupt, ack,
 *                    held
 *   redis_lease.c    leased messages outside the fetch (retry, bury, handback, rate limit)
 *                    and the lease itself (heartbeat, reap, unregister); promote
 *   redis_admin.c    lengths, ranges and the dead-letter list's requeue, remove and purge
 *   redis_control.c  the control channel (publish, listen), the controls scan, the Sentinel
 *                    watcher
 *   redis_cron.c     recurring schedules' claims and state (cron-4)
 * Functions one file defines for the others are bq_redis_*; the helpers below are inline, as
 * the fetch path calls them.
 */
#ifndef BINDUQ_REDIS_INT_H
#define BINDUQ_REDIS_INT_H

#include "broker.h"
#include "keys.h"

#include "../core/err.h"
#include "../net/conn.h"
#include "../net/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define MAX_QUEUES 16 /* queues one worker fetches from */

/* ---- Scripts (redis.c) ----------------------------------------------------------------------- */

enum script_id {
    S_FETCH = 0,
    S_RETRY,
    S_BURY,
    S_PROMOTE,
    S_HEARTBEAT,
    S_REAP,
    S_HANDBACK,
    S_UNREGISTER,
    S_REQUEUE,
    S_FETCHM,
    S_ENQUEUE,
    S_RATELIMIT,
    S_CHECKSEAL,
    S_ACK,
    S_BURYBIG,
    S_CONTROLS,
    S_DELAY,
    S_CRON,
    S_REPORT,
    S_DEDUP,
    S_COUNT,
};

/* Queues "EVALSHA sha nkeys keys... args..." (or EVAL with the source when `eval`) on c.
 * arglens NULL: the arguments are NUL-terminated. */
bq_status bq_redis_append_script(bq_conn *c, enum script_id id, bool eval, int nkeys,
                                 const char *const *keys, int nargs, const char *const *args,
                                 const size_t *arglens, bq_err *err);

/* Runs a script on c (EVALSHA, then EVAL on NOSCRIPT) and returns its reply (caller frees).
 * Error replies become errors named after the script. */
bq_status bq_redis_run_script(bq_conn *c, enum script_id id, int nkeys, const char *const *keys,
                              int nargs, const char *const *args, const size_t *arglens,
                              double timeout, redisReply **out, bq_err *err);

/* Loads every script into the server's cache over c; errors are ignored (see redis.c). */
void bq_redis_load_scripts(bq_conn *c, double timeout);

static inline bool bq_redis_is_noscript(const redisReply *r)
{
    return r != NULL && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

/* ---- The broker ------------------------------------------------------------------------------ */

struct fetch_keys;

struct redis_broker {
    struct bq_broker base;
    bq_pool *pool;
    bq_conn *fetch_conn;     /* owned; used only by the fetching thread */
    size_t fetch_cap;        /* the lessee's max_size its bulk cap was set for */
    long long fetch_id;      /* CLIENT ID of fetch_conn, -1 if unknown */
    bool has_blmpop;
    int wakefd;              /* eventfd written by interrupt */
    bq_tls_ctx *tls;         /* owned; rediss:// only */
    int wait_replicas;       /* > 0: WAIT after pushes */
    double wait_timeout;
    /* Sentinel URLs: a thread follows +switch-master and bumps `epoch`, which makes every
     * connection to the old master count as broken (conn.h). */
    atomic_uint epoch;
    pthread_t watcher;
    bool watching;
    int watch_stopfd;
    double command_timeout;
    atomic_bool no_multi;    /* the server refused MULTI: deduplicated pushes use enqueue-N */
    long credit[MAX_QUEUES]; /* weighted fetching: the round robin's state (fetcher only) */
    struct fetch_keys *fk;   /* owned: the fetcher's keys, built for the lessee whose
                              * signature (worker id, queue names) is fk_sig (fetcher only) */
    char fk_sig[1024];
};

/* ---- One command or script on a pooled connection (redis.c) -------------------------------------
 * Borrow, call, return: the connection goes back to the pool on every path, and one the call
 * broke (I/O error, timeout) is closed by bq_pool_return. Pipelines, and operations that
 * need the connection itself, borrow and return for themselves. */

/* One command (bq_conn_call; lens NULL: NUL-terminated arguments). *out (may be NULL) as
 * bq_conn_call: the reply, caller frees; NULL on failure. */
bq_status bq_redis_call(struct redis_broker *r, redisReply **out, bq_err *err, int argc,
                        const char **argv, const size_t *lens);

/* One script (bq_redis_run_script): *out is its reply (caller frees), NULL on failure. */
bq_status bq_redis_script(struct redis_broker *r, enum script_id id, int nkeys,
                          const char *const *keys, int nargs, const char *const *args,
                          const size_t *arglens, redisReply **out, bq_err *err);

/* The same for a script whose reply is an integer: *result (may be NULL), 0 if it is not. */
bq_status bq_redis_script_int(struct redis_broker *r, enum script_id id, int nkeys,
                              const char *const *keys, int nargs, const char *const *args,
                              const size_t *arglens, long long *result, bq_err *err);

/* ---- Keys ------------------------------------------------------------------------------------ */

/* The queue a message came from. */
static inline const char *bq_redis_queue_of(const struct bq_lessee *who, int q)
{
    return who->queues[q >= 0 && q < who->nqueues ? q : 0];
}

/* The worker's in-flight list on queue q. */
static inline bq_status bq_redis_wip_key(const struct bq_lessee *who, int q, char *out,
                                         bq_err *err)
{
    char suffix[160];
    if (snprintf(suffix, sizeof suffix, "wip:%s", who->worker ? who->worker : "-") >=
        (int)sizeof suffix)
        return bq_err_set(err, BQ_EINVAL, "worker id too long");
    return bq_key_derive_err(bq_redis_queue_of(who, q), suffix, out, err);
}

/* The key arrays a fetch round trip needs, built once per lessee. */
struct fetch_keys {
    char wip[MAX_QUEUES][BQ_KEY_MAX], workers[MAX_QUEUES][BQ_KEY_MAX];
    char delayed[MAX_QUEUES][BQ_KEY_MAX], bell[MAX_QUEUES][BQ_KEY_MAX];
    const char *hb[MAX_QUEUES], *fm[2 * MAX_QUEUES], *bells[MAX_QUEUES + 2];
    char fronts[MAX_QUEUES + 1]; /* each queue's front, 'L' or 'R' (bq_broker_front) */
};

/* Builds k for `who` (1 to MAX_QUEUES queues, else BQ_EINVAL). */
bq_status bq_redis_build_keys(const struct redis_broker *r, const struct bq_lessee *who,
                              struct fetch_keys *k, bq_err *err);

/* ---- Replies (redis_fetch.c) --------------------------------------------------------------------
 * Messages come out of replies the same way wherever they are read. Each returns BQ_ENOMEM
 * (err not set) when out cannot grow. */

/* Adds the messages of an array reply (or a single one) to out, from queue q: strings, and
 * the fetch connection's markers of oversized messages (broker.h); anything else is
 * skipped. */
bq_status bq_redis_take_strings(const redisReply *rep, struct bq_batch *out, int q);

/* Adds the pairs of a flat {i, string, i, string, ...} reply (1-based queue indexes). */
bq_status bq_redis_take_pairs(const redisReply *rep, struct bq_batch *out);

/* Reads promote-2's reply {moved, next_due_in_ms}: seconds until the next one, -1: none. */
void bq_redis_promote_reply(const redisReply *rep, size_t *moved, double *next_due);

/* ---- The operations, by file --------------------------------------------------------------------
 * Each is its bq_broker_ops entry (broker.h). */

/* redis_fetch.c */
bq_status bq_redis_fetch(bq_broker *b, const struct bq_lessee *who,
                         const struct bq_fetch_req *req, struct bq_fetch_res *res,
                         struct bq_batch *out, bq_err *err);
void bq_redis_interrupt(bq_broker *b);
bq_status bq_redis_ack(bq_broker *b, const struct bq_lessee *who, const struct bq_msg *msgs,
                       size_t n, size_t *acked, bq_err *err);
bq_status bq_redis_held(bq_broker *b, const struct bq_lessee *who, struct bq_batch *out,
                        bq_err *err);

/* redis_lease.c */
bq_status bq_redis_retry(bq_broker *b, const struct bq_lessee *who, const struct bq_msg *leased,
                         struct bq_slice next, double delay, bool *held, bq_err *err);
bq_status bq_redis_bury(bq_broker *b, const struct bq_lessee *who, const struct bq_msg *leased,
                        struct bq_slice entry, bool *held, bq_err *err);
bq_status bq_redis_handback(bq_broker *b, const struct bq_lessee *who,
                            const struct bq_msg *msgs, size_t n, size_t *count, bq_err *err);
bq_status bq_redis_rate_limit(bq_broker *b, const struct bq_lessee *who, long limit,
                              double period, struct bq_admission *reqs, size_t n, bq_err *err);
bq_status bq_redis_promote(bq_broker *b, const char *queue, size_t *moved, double *next_due,
                           bq_err *err);
bq_status bq_redis_report(bq_broker *b, const struct bq_lessee *who, struct bq_slice info,
                          double ttl, const long long *done, const long long *failed, bq_err *err);
bq_status bq_redis_heartbeat(bq_broker *b, const struct bq_lessee *who, double lease,
                             struct bq_batch *dead, bq_err *err);
bq_status bq_redis_reap(bq_broker *b, const char *queue, const char *dead_id,
                        long long *recovered, bq_err *err);
bq_status bq_redis_unregister(bq_broker *b, const struct bq_lessee *who, bq_err *err);

/* redis_admin.c */
bq_status bq_redis_length(bq_broker *b, const char *queue, enum bq_list which, long long *out,
                          bq_err *err);
bq_status bq_redis_range(bq_broker *b, const char *queue, enum bq_list which, long start,
                         long stop, struct bq_batch *out, bq_err *err);
bq_status bq_redis_dlq_requeue(bq_broker *b, const char *queue, struct bq_slice entry,
                               bool *done, bq_err *err);
bq_status bq_redis_dlq_remove(bq_broker *b, const char *queue, struct bq_slice entry,
                              bool *done, bq_err *err);
bq_status bq_redis_dlq_purge(bq_broker *b, const char *queue, long long *count, bq_err *err);

/* redis_control.c */
bq_status bq_redis_publish(bq_broker *b, const char *queue, struct bq_slice msg,
                           long long *receivers, bq_err *err);
bq_status bq_redis_listen(bq_broker *b, const char *queue,
                          void (*cb)(void *ud, const char *msg, size_t len),
                          void (*ready)(void *ud), void *ud, int stopfd, bq_err *err);
bq_status bq_redis_controls(bq_broker *b, const char *queue, double interval, size_t window,
                            struct bq_batch *out, bq_err *err);
/* redis_cron.c: bq_broker_ops.cron (broker.h, "Recurring schedules"), one cron-4 call.
 * BQ_EINVAL for a malformed name, action or more than 10,000 ticks; the script's errors as
 * bq_redis_script's. */
bq_status bq_redis_cron(bq_broker *b, const char *queue, const char *name,
                        enum bq_cron_action action, struct bq_slice decl,
                        const struct bq_tick *ticks, size_t n, struct bq_cron_res *res,
                        bq_err *err);
/* redis_feed.c: the task events (broker.h). The fetch round trip writes its events with
 * append_feed (one XADD of entry e to Q's stream) and reads each reply with read_feed (a
 * refused XADD is logged, not an error: the pipeline stays in step). */
bq_status bq_redis_append_feed(bq_conn *c, long feed_max, const char *queue, struct bq_slice e,
                               bq_err *err);
bq_status bq_redis_read_feed(bq_conn *c, double deadline, const char *queue, bq_err *err);
bq_status bq_redis_feed_add(bq_broker *b, const char *queue, const struct bq_slice *entries,
                            size_t n, bq_err *err);
bq_status bq_redis_feed_read(bq_broker *b, struct bq_feed_reader **rd, const char *queue,
                             const char *after, size_t count, double timeout,
                             struct bq_feed_out *out, bq_err *err);
bq_status bq_redis_feed_last(bq_broker *b, const char *queue, char *id, bq_err *err);
void bq_redis_feed_wake(bq_broker *b, struct bq_feed_reader *rd);
void bq_redis_feed_close(bq_broker *b, struct bq_feed_reader *rd);

/* The Sentinel watcher's thread (arg: the broker), started by bq_broker_open_redis for
 * redis+sentinel:// URLs; returns once watch_stopfd is readable. */
void *bq_redis_watch_sentinels(void *arg);

#endif
