/*
 * broker.h -- where task operations wait: the interface the worker engine and the producer
 * client use, with two implementations, Redis (redis.c) and the in-process memory scheduler
 * (mem.c) that is the default when no Redis is configured.
 *
 * A broker is named by queue: every operation takes the queue name Q, and the broker derives
 * the other keys of Q itself (keys.h). Messages are opaque bytes to the broker; decoding them
 * is the handler state's job. All operations are thread-safe, except that only one thread at a
 * time may call fetch on a given broker (the worker's dispatcher).
 *
 * Ordering: push adds at the head (LPUSH), fetch takes from the tail (BRPOP), so a queue is
 * FIFO, as in Bindu's documentation.
 */
#ifndef BINDUQ_BROKER_H
#define BINDUQ_BROKER_H

#include "../binduq.h"
#include "../net/pool.h"

#include <stdbool.h>
#include <stddef.h>

/* A borrowed byte string. */
struct bq_slice {
    const char *p;
    size_t len;
};

/* An owned message. */
struct bq_msg {
    char *data; /* owned, NUL-terminated for convenience (len excludes the NUL) */
    size_t len;
};

/* A growable array of owned messages. */
struct bq_batch {
    struct bq_msg *msgs;
    size_t n, cap;
};

/* Appends a copy of data. */
bq_status bq_batch_add(struct bq_batch *b, const char *data, size_t len);
/* Appends by taking ownership of m.data. */
bq_status bq_batch_take(struct bq_batch *b, struct bq_msg m);
/* Frees the messages, keeps the array. */
void bq_batch_clear(struct bq_batch *b);
void bq_batch_free(struct bq_batch *b);

/* Which list of a queue to measure or read. */
enum bq_list {
    BQ_LIST_READY = 0,  /* Q itself: operations waiting to be fetched */
    BQ_LIST_DEAD,       /* Q's dead-letter list */
};

typedef struct bq_broker bq_broker;

struct bq_broker_ops {
    /* Adds msgs[0..n) to Q in order, in as few round trips as possible. *pushed counts the
     * messages the server confirmed (all of them on success). */
    bq_status (*push)(bq_broker *b, const char *queue, const struct bq_slice *msgs, size_t n,
                      size_t *pushed, bq_err *err);
    /* Takes up to `max` messages from Q into out. timeout 0 returns at once; otherwise waits
     * up to `timeout` seconds for the first message. Returns BQ_OK with nothing added on
     * timeout. After bq_broker_interrupt the wait is cut short, but messages already there
     * are still taken. */
    bq_status (*fetch)(bq_broker *b, const char *queue, size_t max, double timeout,
                       struct bq_batch *out, bq_err *err);
    /* Makes a fetch in progress (or the next one) return promptly. Any thread. */
    void (*interrupt)(bq_broker *b);
    bq_status (*length)(bq_broker *b, const char *queue, enum bq_list which, long long *out,
                        bq_err *err);
    /* Adds a dead-letter entry (see bq_dlq_entry) to Q's dead-letter list. */
    bq_status (*dead_letter)(bq_broker *b, const char *queue, const char *entry, size_t len,
                             bq_err *err);
    /* Reads entries [start, stop] of one of Q's lists, newest first (LRANGE semantics). */
    bq_status (*range)(bq_broker *b, const char *queue, enum bq_list which, long start,
                       long stop, struct bq_batch *out, bq_err *err);
    /* Round trip to the server in seconds (0 for memory). */
    bq_status (*ping)(bq_broker *b, double *rtt, bq_err *err);
    /* Connection pool counters; false when the broker has no pool (memory). */
    bool (*pool_stats)(bq_broker *b, struct bq_pool_stats *out);
    void (*free)(bq_broker *b);
};

struct bq_broker {
    const struct bq_broker_ops *ops;
    const char *kind;   /* "redis" or "memory" */
    char address[128];  /* host:port, socket path or "memory"; never credentials */
};

struct bq_broker_config {
    const char *url;          /* NULL: the in-memory scheduler */
    const char *url_source;   /* names the URL in error messages ("REDIS_URL") */
    int max_connections;
    double connect_timeout;
    double command_timeout;
    double pool_timeout;
};

/* Opens a broker. Redis connections are opened lazily, so this fails only on a bad URL. */
bq_status bq_broker_open(const struct bq_broker_config *cfg, bq_broker **out, bq_err *err);

bq_status bq_broker_open_redis(const struct bq_broker_config *cfg, bq_broker **out,
                               bq_err *err);
bq_status bq_broker_open_memory(bq_broker **out, bq_err *err);

/* Empties every list of the in-memory scheduler (tests). */
void bq_memory_reset(void);

static inline void bq_broker_free(bq_broker *b)
{
    if (b != NULL)
        b->ops->free(b);
}

/* ---- Dead-letter entries ----------------------------------------------------------------
 * An entry is one line of JSON describing why the message was set aside, a newline, then the
 * original message byte for byte (it may not even be valid UTF-8, so it is not embedded in
 * the JSON):
 *
 *   {"reason":"invalid JSON: ...","queue":"bindu:tasks","worker":"h:12:ab","attempts":0,
 *    "failed_at":"2026-11-28T05:11:20.123Z"}\n<original bytes>
 */
struct bq_dlq_info {
    const char *reason;     /* required, UTF-8 */
    const char *error_json; /* optional: a JSON object with code, message, traceback */
    const char *task_id;    /* optional */
    const char *type;       /* optional */
    const char *queue;
    const char *worker;
    int attempts;
};

/* Builds an entry into out (cleared first). Returns BQ_ENOMEM on allocation failure. */
bq_status bq_dlq_entry(const struct bq_dlq_info *info, const char *raw, size_t len,
                       struct bq_msg *out);

#endif
