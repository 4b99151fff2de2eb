/*
 * broker.h -- where task operations wait: the interface the worker engine and the producer
 * client use, with two implementations, Redis (redis.c, with redis_int.h and its other
 * redis_*.c files) and the in-process memory scheduler (mem.c) that is the default when no
 * Redis is configured.
 *
 * Its operations come in two tables: bq_broker_ops, the queue work of producers and workers
 * (push, fetch, acknowledge, retry, lease, control channel), and bq_broker_admin_ops, what an
 * operator asks (lengths, ranges, dead-letter maintenance, the node, a raw command), on which
 * admin.h builds what the admin commands show.
 *
 * A broker is named by queue: every operation takes the queue name Q, and the broker derives
 * the other keys of Q itself (keys.h). Messages are opaque bytes to the broker; decoding them
 * is the handler state's job. All operations are thread-safe, except that only one thread at a
 * time may call fetch on a given broker (the worker's dispatcher).
 *
 * Ordering: every queue is FIFO. Which end producers push to is the queue's order (below):
 * by default the head (LPUSH) with fetches from the tail (BRPOP), as in Bindu's
 * documentation; or the tail (RPUSH) with fetches from the head (BLPOP), as Bindu's own
 * RedisScheduler does.
 */
#ifndef BINDUQ_BROKER_H
#define BINDUQ_BROKER_H

#include "../binduq.h"
#include "../net/pool.h"

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

/* ---- Order -----------------------------------------------------------------------------
 * Which end of a queue its producers push to; workers take from the other end (the front),
 * so either way the queue is FIFO. What matters is that a queue's producers and workers
 * agree, so the order belongs to the queue: a default, and overrides by queue name.
 *   BQ_ORDER_LPUSH (the default): the documentation's producers, LPUSH + BRPOP;
 *   BQ_ORDER_RPUSH: Bindu's RedisScheduler, RPUSH + BLPOP.
 * A message binduq puts back to be taken next (a retry come due, a task recovered from a
 * dead worker, a hand-back at shutdown) goes to the front; a requeued dead letter and every
 * push go to the back. The in-memory scheduler has only this process' producers: FIFO,
 * whatever the order says. */
enum bq_order { BQ_ORDER_LPUSH = 0, BQ_ORDER_RPUSH = 1 };

struct bq_orders {
    enum bq_order dflt;
    size_t n;
    char **queues;          /* owned */
    enum bq_order *order;   /* owned, one per queue */
};

/* "lpush" or "rpush" (any case); false for anything else. */
bool bq_order_parse(const char *s, enum bq_order *out);
const char *bq_order_name(enum bq_order o);
/* The order of `queue` (NULL `o`: the default, LPUSH). */
enum bq_order bq_orders_of(const struct bq_orders *o, const char *queue);
/* Adds or replaces the order of one queue. */
bq_status bq_orders_set(struct bq_orders *o, const char *queue, enum bq_order order);
/* dst (zeroed or freed) becomes a copy of src (NULL: the default). */
bq_status bq_orders_copy(struct bq_orders *dst, const struct bq_orders *src);
void bq_orders_free(struct bq_orders *o);

/* A borrowed byte string. */
struct bq_slice {
    const char *p;
    size_t len;
};

/* An owned message. */
struct bq_msg {
    char *data; /* owned, NUL-terminated for convenience (len excludes the NUL) */
    size_t len;
    int q;      /* fetched messages: index of the queue it came from in the lessee's list */
    bool sealed; /* fetched messages with a "#bq" header line: binduq wrote that header (see
                  * "Headers and seals" below); false for a header anyone else wrote */
    size_t oversize; /* 0, or a message longer than the fetch's max_size: its true length;
                      * data then holds only its first bytes (see "Oversized messages") */
    unsigned long long seq; /* fetched messages: its number among those the worker fetched
                             * (1, 2, ...), set as it enters the worker's ring; 0 elsewhere */
};

/* ---- Oversized messages ---------------------------------------------------------------------
 * A fetch never brings a message longer than the lessee's max_size into memory whole (the
 * Redis broker caps bulk strings on its fetch connection, net/bulkcap.h): such a message
 * arrives as its first bytes with `oversize` set to its length. The worker never hands it to
 * a handler; it passes it to bury(), which for the Redis broker removes it from the in-flight
 * list server-side (burybig-3: found by length and first bytes, never sent back) and writes
 * a dead-letter entry holding its first BQ_DLQ_KEEP bytes, its length and its SHA1. An
 * at-most-once fetch had already popped it: the entry keeps the first bytes and the length,
 * without the hash. */
#define BQ_DLQ_KEEP 256
/* What marks such an entry's JSON line (never inside a JSON string, whose quotes are
 * escaped), and why dlq_requeue refuses it. */
#define BQ_DLQ_TRUNCATED "\"truncated\":true"
#define BQ_DLQ_NO_REQUEUE "a truncated dead-letter entry (a message too large to keep) cannot be requeued"

/* ---- Headers and seals -------------------------------------------------------------------
 * A message binduq queues again (a retry, a rate-limit deferral, a task recovered from a
 * dead worker, a requeued dead letter) starts with one line "#bq {json}" -- attempt,
 * redelivered, deferred, requeued -- then the original bytes. Those fields change what a
 * worker does (a redelivery may run a task whose state is "working"; attempts past
 * max_attempts fail the task; "requeued" reopens a failed one), and anyone who can push to
 * Q can write such a line. So each such message binduq queues is sealed: the SHA1 of its
 * bytes is counted in {Q}:seals (a hash), by the same server-side script that queues it, and
 * released by the script that is done with it (acknowledge, retry, defer, dead-letter,
 * recover). A fetch marks each header message with whether its seal is there (one
 * checkseal-1 round trip, only when the batch has such messages); the worker sets aside an
 * unsealed one as malformed, unrun and unchanged. The memory broker keeps the mark on the
 * message itself. The SHA1 binds the header to its body, so a copied header line on other
 * bytes is not sealed either. */
/* A message in Bindu's format that binduq queues again carries its header embedded, as its
 * last key "binduq", instead of on a "#bq" line: Bindu's own worker reads a message with
 * json.loads and takes operation, params, trace_id and span_id from it, so the message stays
 * one it can run (a "#bq" line would make it drop the message):
 *   {"operation": "run", "params": {...}, "trace_id": null, "span_id": null,"binduq":{"attempt":2}}
 * Binduq writes that form for an original starting {"operation" and ending '}', and finds it
 * in a message starting {"operation" and ending with a flat object (no braces inside, at most
 * BQ_EMBED_MAX bytes) after ,"binduq": and a final '}'. Returns the offset of that
 * ,"binduq": in p, or 0 when there is none. The original is p[0..offset) and '}'. */
#define BQ_EMBED_KEY ",\"binduq\":"
#define BQ_EMBED_MAX 1024
static inline bool bq_bindu_form(const char *p, size_t len)
{
    return len >= 14 && memcmp(p, "{\"operation\"", 12) == 0 && p[len - 1] == '}';
}

static inline size_t bq_embedded_header(const char *p, size_t len)
{
    if (!bq_bindu_form(p, len) || p[len - 2] != '}')
        return 0;
    size_t stop = len > BQ_EMBED_MAX + 2 ? len - BQ_EMBED_MAX - 2 : 12;
    for (size_t j = len - 2; j-- > stop;) {
        if (p[j] == '}')
            return 0;
        if (p[j] == '{')
            return j >= 22 && memcmp(p + j - 10, BQ_EMBED_KEY, 10) == 0 ? j - 10 : 0;
    }
    return 0;
}

static inline bool bq_msg_has_header(const struct bq_msg *m)
{
    return (m->len >= 4 && memcmp(m->data, "#bq ", 4) == 0) ||
           bq_embedded_header(m->data, m->len) > 0;
}

/* A growable array of owned messages. */
struct bq_batch {
    struct bq_msg *msgs;
    size_t n, cap;
};

/* Appends a copy of data (from queue 0). */
bq_status bq_batch_add(struct bq_batch *b, const char *data, size_t len);
/* Appends a copy of data that came from queue q. */
bq_status bq_batch_add_q(struct bq_batch *b, const char *data, size_t len, int q);
/* Appends by taking ownership of m.data. */
bq_status bq_batch_take(struct bq_batch *b, struct bq_msg m);
/* Frees the messages, keeps the array. */
void bq_batch_clear(struct bq_batch *b);
void bq_batch_free(struct bq_batch *b);

/* Which structure of a queue to measure or read. */
enum bq_list {
    BQ_LIST_READY = 0,  /* Q itself: operations waiting to be fetched */
    BQ_LIST_DEAD,       /* {Q}:dlq, the dead-letter list */
    BQ_LIST_DELAYED,    /* {Q}:delayed, retries and delayed operations waiting for their
                         * time (length only) */
    BQ_LIST_INFLIGHT,   /* all {Q}:wip:<worker> lists together (length only) */
};

/* The key of Q's structure `which` (BQ_KEY_MAX bytes): {Q}:dlq, {Q}:delayed, or Q itself for
 * READY and INFLIGHT (checked as a queue name). */
bq_status bq_list_key(const char *queue, enum bq_list which, char *out, bq_err *err);

/* How fetched operations are held.
 *   AT_LEAST_ONCE: a fetch moves each message into the worker's in-flight list {Q}:wip:<id>
 *   in the same atomic step; the worker's heartbeat in {Q}:workers is the lease of all of
 *   them; an ack removes the message; a worker whose lease runs out has its in-flight list
 *   moved back to Q by any other worker (reap).
 *   AT_MOST_ONCE: a plain pop, as Bindu's own BRPOP scheduler; acks do nothing. */
enum bq_delivery {
    BQ_AT_LEAST_ONCE = 0,
    BQ_AT_MOST_ONCE,
};

/* Who fetches: the queues (in priority order), the worker, the delivery mode. Each queue
 * keeps its own in-flight list and lease record for the worker, so everything about a
 * message stays within its queue's keys (one Cluster slot). */
struct bq_lessee {
    const char *const *queues;
    int nqueues;
    const int *weights;  /* NULL: strict priority; else one positive weight per queue */
    const char *worker;  /* worker id, part of the in-flight list's key */
    enum bq_delivery delivery;
    size_t max_size;     /* longer messages arrive as their first bytes (0: no limit) */
    size_t max_bytes;    /* a fetch of several messages stops once they pass this many bytes
                          * (the first is taken whatever its size; 0: no limit), so what a
                          * worker holds is bounded by bytes as well as by count */
};

/* What one round trip of the fetch loop asks for, and what it got. */
struct bq_fetch_req {
    size_t max;                  /* messages to take, at most (0: none) */
    double timeout;              /* seconds to wait for the first one (0: do not wait) */
    const struct bq_msg *acks;   /* finished messages to acknowledge first */
    size_t nacks;
    bool promote;                /* move due retries to the queue first */
    double lease;                /* > 0: renew the worker's lease for this long first */
    bool exact;                  /* the wait must end on time (a promotion is due then): the
                                  * Redis broker cuts it short itself, since the server's
                                  * blocking timeouts are as coarse as its hz (100 ms) */
    const struct bq_slice *feed; /* task events to write first (feed_add's entries), */
    const int *feed_q;           /* each to the stream of queue feed_q[i] of the lessee */
    size_t nfeed;
};

struct bq_fetch_res {
    size_t acked;          /* acks whose lease was still held */
    size_t promoted;       /* retries moved to the queue */
    double next_due;       /* seconds until the next retry is due; -1: none (if promoted) */
    bool renewed;          /* the lease was renewed */
    bool recheck;          /* an operation may have been added to a delayed set meanwhile
                            * (a bell rang with nothing to take): promote in the next one */
    struct bq_batch dead;  /* ids of workers whose lease ran out (if renewed), each with the
                            * index of the queue it was found in (q); caller frees */
};

typedef struct bq_broker bq_broker;

/* ---- Task events ------------------------------------------------------------------------
 * Each queue Q has a capped stream of task events, {Q}:events (docs/events.md). An entry is
 * one field "e" whose value is a JSON array of events (objects), all of Q: a writer puts what
 * it has together into one entry, so a batch of tasks costs one XADD, not one per event. An
 * entry's id is the stream's ("<ms>-<seq>", the server's clock); a reader asks for the
 * entries after an id and so follows from any point that is still kept (at-least-once: a
 * reader that resumes from the last id it saw misses nothing still in the stream). The stream
 * keeps about `feed_max` entries (XADD MAXLEN ~). */
#define BQ_FEED_ID_MAX 48

struct bq_feed_entry {
    char id[BQ_FEED_ID_MAX]; /* "<ms>-<seq>" */
    char *json;              /* owned: the JSON array, NUL-terminated */
    size_t len;
};

struct bq_feed_out {
    struct bq_feed_entry *e;
    size_t n, cap;
};

/* Frees the entries, keeps the array; bq_feed_out_free frees both. */
void bq_feed_out_clear(struct bq_feed_out *o);
void bq_feed_out_free(struct bq_feed_out *o);
/* Appends an entry (copies json). */
bq_status bq_feed_out_add(struct bq_feed_out *o, const char *id, const char *json, size_t len);

/* A reader's own connection for blocking reads (Redis); opaque. */
struct bq_feed_reader;

/* "<ms>-<seq>" with both parts decimal; what a reader may ask to read after. */
bool bq_feed_id_valid(const char *id);
/* 1 if a comes after b, -1 before, 0 the same (both valid ids). */
int bq_feed_id_cmp(const char *a, const char *b);

/* A push sent and not yet answered (bq_broker_ops.push_send, push_recv). */
struct bq_push_wait {
    bool *pushed;   /* in: room for n; out (push_recv): which messages were pushed */
    size_t n;
    void *conn;     /* the connection the answers come on; NULL: push_send made it whole */
    bool unique;    /* sent as a MULTI with dedup-N (else a plain LPUSH) */
    size_t ncmds;   /* replies to read */
    double deadline;
};

/* One operation to queue later (bq_broker_ops.push_delayed). */
struct bq_delayed {
    struct bq_slice msg;
    const char *key;  /* its deduplication key (as push_unique's), or NULL for none */
    double delay;     /* seconds after now by the server's clock, when run_at is 0 */
    double run_at;    /* > 0: due at this time, seconds since the epoch */
};

/* One message's rate-limit admission (bq_broker_ops.rate_limit): the request, then the
 * answer. */
struct bq_admission {
    const struct bq_msg *msg; /* the message (its queue) */
    const char *key;          /* its bucket */
    int verdict;              /* out: 1 admitted, 0 not (yet) */
    double value;             /* out: admitted, when (epoch s); else the wait (s) */
};

/* ---- Recurring schedules (docs/recurring.md) ----------------------------------------------
 * Each schedule of Q has a state in Redis that every worker of Q shares ({Q}:cron): the last
 * tick claimed, its declaration, paused or removed. A worker claims a tick and queues its run
 * in one atomic step that succeeds only for a tick later than the last claimed, so each tick
 * runs once whichever workers try it, and none is a leader. */
enum bq_cron_action { BQ_CRON_FIRE = 0, BQ_CRON_PAUSE, BQ_CRON_RESUME, BQ_CRON_REMOVE, };

/* One tick to claim. */
struct bq_tick {
    long long tick;      /* the tick, seconds since the epoch */
    double due;          /* when its run is due, seconds since the epoch (past: at once) */
    struct bq_slice msg; /* the run to queue */
};

/* What a schedule's state was left as. */
enum bq_cron_state { BQ_CRON_ACTIVE = 0, BQ_CRON_PAUSED, BQ_CRON_REMOVED, BQ_CRON_UNKNOWN, };

struct bq_cron_res {
    long long fired;          /* runs queued */
    long long last;           /* the last tick claimed (-1: none) */
    enum bq_cron_state state;
};

struct bq_broker_ops {
    /* Adds msgs[0..n) to Q in order, in as few round trips as possible, and rings Q's bell
     * (workers fetching from several queues block on the bells). *pushed counts the messages
     * the server confirmed (all of them on success). */
    bq_status (*push)(bq_broker *b, const char *queue, const struct bq_slice *msgs, size_t n,
                      size_t *pushed, bq_err *err);
    /* The same with deduplication: msgs[i] is pushed only if keys[i] ({Q}:dedup:<key>) is
     * free, and takes it for `ttl` seconds, in one atomic step. pushed[i] says which. */
    bq_status (*push_unique)(bq_broker *b, const char *queue, const struct bq_slice *msgs,
                             const char *const *keys, size_t n, double ttl, bool *pushed,
                             bq_err *err);
    /* Optional (NULL: a caller pushes whole, with push or push_unique). The same push in
     * two halves (keys NULL: push's, else push_unique's), so that the caller can prepare its
     * next messages while the server works on these: push_send sends the commands and
     * returns without their answers, which push_recv, called next with the same `w`, reads
     * into w->pushed. A push that cannot be split (too few messages for a transaction, a
     * server that refuses MULTI) is made whole by push_send, and push_recv has nothing to
     * read. A push_send that returned BQ_OK must be followed by its push_recv: the
     * connection stays borrowed until then. */
    bq_status (*push_send)(bq_broker *b, const char *queue, const struct bq_slice *msgs,
                           const char *const *keys, size_t n, double ttl,
                           struct bq_push_wait *w, bq_err *err);
    bq_status (*push_recv)(bq_broker *b, struct bq_push_wait *w, bq_err *err);
    /* Queues ops[0..n) on Q for later, in one atomic step (delay-N): each waits in
     * {Q}:delayed, its score its due time in ms by the server's clock (a delay is added to
     * the server's TIME), until a promotion moves it to Q like a retry; one already due is
     * pushed to Q at once. One with a key is queued only if the key is free, and takes it
     * for `ttl` seconds after its due time; one whose exact bytes already wait in
     * {Q}:delayed is a duplicate too. pushed[i] says which were queued. When the earliest
     * due time of {Q}:delayed moves earlier, Q's workers are told so they promote on time:
     * "due <ms>" on Q's control channel and a ring of Q's bell (Redis), or a mark their
     * fetches see (memory: bq_fetch_res.recheck). */
    bq_status (*push_delayed)(bq_broker *b, const char *queue, const struct bq_delayed *ops,
                              size_t n, double ttl, bool *pushed, bq_err *err);
    /* One round trip of the fetch loop, in this order: renew who's lease (req->lease > 0),
     * acknowledge req->acks, promote due retries (req->promote), then take up to req->max
     * messages for `who` into out. timeout 0 returns at once; otherwise waits up to
     * req->timeout seconds for the first message. Returns BQ_OK with nothing added on
     * timeout. After bq_broker_interrupt the wait is cut short, but messages already there
     * are still taken. Only one thread at a time fetches on a broker. */
    bq_status (*fetch)(bq_broker *b, const struct bq_lessee *who,
                       const struct bq_fetch_req *req, struct bq_fetch_res *res,
                       struct bq_batch *out, bq_err *err);
    /* Makes a fetch in progress (or the next one) return promptly. Any thread. */
    void (*interrupt)(bq_broker *b);
    /* Acknowledges msgs[0..n) (pipelined). *acked counts those still leased. */
    bq_status (*ack)(bq_broker *b, const struct bq_lessee *who, const struct bq_msg *msgs,
                     size_t n, size_t *acked, bq_err *err);
    /* Releases `leased` and schedules `next` (its retry form) to be queued on the same queue
     * after `delay` seconds, by the server's clock. *held is false if the lease had been lost
     * (then nothing is scheduled). */
    bq_status (*retry)(bq_broker *b, const struct bq_lessee *who, const struct bq_msg *leased,
                       struct bq_slice next, double delay, bool *held, bq_err *err);
    /* Releases `leased` and adds `entry` (see bq_dlq_entry) to its queue's dead-letter list. */
    bq_status (*bury)(bq_broker *b, const struct bq_lessee *who, const struct bq_msg *leased,
                      struct bq_slice entry, bool *held, bq_err *err);
    /* Reads `who`'s in-flight lists (every queue), each message with the index of its queue.
     * After a fetch whose reply was lost, the worker compares them with what it holds. */
    bq_status (*held)(bq_broker *b, const struct bq_lessee *who, struct bq_batch *out,
                      bq_err *err);
    /* Returns leased messages to the front of their queues at once (graceful shutdown);
     * *count: how many went back. Handled from the last to the first, and stopped at the
     * first error: at-most-once (nothing leased, so nothing tells a push made from one not
     * made) what went back is the last *count of msgs, and a retry sends only the rest. */
    bq_status (*handback)(bq_broker *b, const struct bq_lessee *who, const struct bq_msg *msgs,
                          size_t n, size_t *count, bq_err *err);
    /* Admits each reqs[i].msg under "at most `limit` per `period` seconds" for the bucket
     * reqs[i].key of its queue, by the server's clock, in order, in one atomic step (one
     * round trip for the batch): verdict 1 and value the admission time (seconds since the
     * epoch, the server's clock), or verdict 0 and value the seconds until the limiter would
     * admit it. A message not admitted is left as it is: its worker defers it (retry). */
    bq_status (*rate_limit)(bq_broker *b, const struct bq_lessee *who, long limit,
                            double period, struct bq_admission *reqs, size_t n, bq_err *err);
    /* Reports the cancel and pause operations waiting among the newest `window` entries of
     * Q that no call reported before, as "cancel <id>" / "pause <id>" lines appended to out,
     * scanning Q at most once per `interval` seconds across all its workers (controls-3.lua
     * says which are reported). The operations stay queued. NULL for the memory broker,
     * whose producers reach running tasks through the control channel. */
    bq_status (*controls)(bq_broker *b, const char *queue, double interval, size_t window,
                          struct bq_batch *out, bq_err *err);
    /* Moves due delayed messages to Q. *next_due is seconds until the next one (-1: none). */
    bq_status (*promote)(bq_broker *b, const char *queue, size_t *moved, double *next_due,
                         bq_err *err);
    /* Renews `who`'s lease for `lease` seconds; adds to `dead` the ids of up to 16 workers
     * whose lease ran out. */
    bq_status (*heartbeat)(bq_broker *b, const struct bq_lessee *who, double lease,
                           struct bq_batch *dead, bq_err *err);
    /* A worker's report (report-N.lua): its description `info` (JSON) kept on each of its
     * queues for `ttl` seconds (0: deleted, the worker is leaving), and done[i] / failed[i],
     * the tasks it finished on queue i since its last report, added to that queue's counts
     * per minute. NULL for the memory broker (its one process has the figures itself). */
    bq_status (*report)(bq_broker *b, const struct bq_lessee *who, struct bq_slice info,
                        double ttl, const long long *done, const long long *failed, bq_err *err);
    /* Moves the in-flight messages of worker `dead_id` back to Q, if its lease has indeed run
     * out, counting in each message's header the attempt it used up. *recovered counts
     * them (-1: the lease was still valid). */
    bq_status (*reap)(bq_broker *b, const char *queue, const char *dead_id, long long *recovered,
                      bq_err *err);
    /* Drops `who`'s lease record if its in-flight list is empty (clean exit). */
    bq_status (*unregister)(bq_broker *b, const struct bq_lessee *who, bq_err *err);
    /* Publishes msg on Q's control channel ({Q}:control), which every worker of Q listens
     * to (cancel and pause of running tasks). *receivers counts the listeners reached. */
    bq_status (*publish)(bq_broker *b, const char *queue, struct bq_slice msg,
                         long long *receivers, bq_err *err);
    /* Listens on Q's control channel on a connection of its own, calling cb for each
     * message, until `stopfd` becomes readable (BQ_EINTR) or the connection fails. `ready`
     * (may be NULL) is called once the subscription holds. One thread per call. */
    bq_status (*listen)(bq_broker *b, const char *queue,
                        void (*cb)(void *ud, const char *msg, size_t len),
                        void (*ready)(void *ud), void *ud, int stopfd, bq_err *err);
    /* Task events (see "Task events" above). Adds entries[0..n) (each a JSON array) to Q's
     * stream, in one round trip. */
    bq_status (*feed_add)(bq_broker *b, const char *queue, const struct bq_slice *entries,
                          size_t n, bq_err *err);
    /* Reads up to `count` entries of Q's stream after `after` ("0-0": from the oldest kept)
     * into out, waiting up to `timeout` seconds for the first when there are none (0: do not
     * wait). *rd is the caller's reader (NULL at first; the broker may set it: it holds the
     * connection a wait needs); one thread at a time per reader; feed_close frees it. A wait
     * cut short by feed_wake returns BQ_EINTR. */
    bq_status (*feed_read)(bq_broker *b, struct bq_feed_reader **rd, const char *queue,
                           const char *after, size_t count, double timeout,
                           struct bq_feed_out *out, bq_err *err);
    /* The id of Q's newest entry into id (BQ_FEED_ID_MAX bytes), "0-0" when there is none:
     * reading after it gives what comes from now on. */
    bq_status (*feed_last)(bq_broker *b, const char *queue, char *id, bq_err *err);
    /* Cuts a wait of rd's short (any thread; rd may be NULL: every wait of this broker's
     * memory readers); frees a reader. */
    void (*feed_wake)(bq_broker *b, struct bq_feed_reader *rd);
    void (*feed_close)(bq_broker *b, struct bq_feed_reader *rd);
    /* A recurring schedule `name` of Q (cron-4, "Recurring schedules" above). FIRE: `decl`
     * (len 0: none) declares it first; then each of ticks[0..n) (ascending) later than the
     * last claimed is claimed and, unless the schedule is paused, its run queued as
     * push_delayed queues one. PAUSE, RESUME, REMOVE change a declared schedule. NULL for
     * the memory broker: its one process keeps its schedules' claims itself
     * (lua/binduq/recurring.lua). */
    bq_status (*cron)(bq_broker *b, const char *queue, const char *name,
                      enum bq_cron_action action, struct bq_slice decl,
                      const struct bq_tick *ticks, size_t n, struct bq_cron_res *res,
                      bq_err *err);
    /* Round trip to the server in seconds (0 for memory). */
    bq_status (*ping)(bq_broker *b, double *rtt, bq_err *err);
    void (*free)(bq_broker *b);
};

/* What an operator asks of a broker, apart from the queue work above: lengths and ranges, the
 * dead-letter list's maintenance, the node, a raw command, the pool's counters. The admin
 * commands reach these through src/broker/admin.h, which builds on them. */
struct bq_broker_admin_ops {
    /* The length of one structure of Q (enum bq_list). */
    bq_status (*length)(bq_broker *b, const char *queue, enum bq_list which, long long *out,
                        bq_err *err);
    /* Reads entries [start, stop] of Q (READY) or its dead-letter list (DEAD), newest first
     * (LRANGE semantics). */
    bq_status (*range)(bq_broker *b, const char *queue, enum bq_list which, long start,
                       long stop, struct bq_batch *out, bq_err *err);
    /* Dead-letter list maintenance, each entry matched exactly: requeue moves the original
     * message back to Q, remove deletes the entry; *done is false when it was not there.
     * purge deletes the whole list and counts what it held. */
    bq_status (*dlq_requeue)(bq_broker *b, const char *queue, struct bq_slice entry, bool *done,
                             bq_err *err);
    bq_status (*dlq_remove)(bq_broker *b, const char *queue, struct bq_slice entry, bool *done,
                            bq_err *err);
    bq_status (*dlq_purge)(bq_broker *b, const char *queue, long long *count, bq_err *err);
    /* The node a pooled connection talks to: its ROLE ("master", "slave", ...; "memory")
     * and address (for Sentinel URLs, the master the sentinels named). */
    bq_status (*node)(bq_broker *b, char *role, size_t rsize, char *addr, size_t asize,
                      bq_err *err);
    /* One plain command on the node of `queue` (admin tools: LRANGE, ZRANGE, ...); *out is
     * a hiredis reply owned by the caller (freeReplyObject). Memory: BQ_EUNSUPPORTED. */
    bq_status (*command)(bq_broker *b, const char *queue, int argc, const char **argv,
                         const size_t *lens, void **out, bq_err *err);
    /* Connection pool counters; false when the broker has no pool (memory). */
    bool (*pool_stats)(bq_broker *b, struct bq_pool_stats *out);
};

struct bq_broker {
    const struct bq_broker_ops *ops;           /* the queue work */
    const struct bq_broker_admin_ops *admin;   /* what an operator asks */
    const char *kind;   /* "redis" or "memory" */
    char address[128];  /* host:port, socket path or "memory"; never credentials */
    struct bq_orders orders; /* each queue's order, set by bq_broker_open */
    long feed_max;           /* entries each queue's event stream keeps, about */
};

/* The end of `queue` workers take from: 'L' (RPUSH order) or 'R' (LPUSH order), as the
 * broker's scripts take it in ARGV. */
static inline const char *bq_broker_front(const bq_broker *b, const char *queue)
{
    return bq_orders_of(&b->orders, queue) == BQ_ORDER_RPUSH ? "L" : "R";
}

struct bq_broker_config {
    const char *url;          /* NULL: the in-memory scheduler */
    const char *url_source;   /* names the URL in error messages ("REDIS_URL") */
    int max_connections;
    double connect_timeout;
    double command_timeout;
    double pool_timeout;
    struct bq_tls_config tls;    /* for rediss:// (strings borrowed for the open only) */
    const char *tls_server_name; /* NULL: the host's name */
    int wait_replicas;           /* > 0: pushes WAIT for this many replicas */
    double wait_timeout;         /* seconds */
    const struct bq_orders *orders; /* NULL: every queue LPUSH; copied by bq_broker_open */
    long feed_max;               /* entries a queue's event stream keeps, about (<= 0:
                                  * BQ_FEED_MAX_DEFAULT) */
};

#define BQ_FEED_MAX_DEFAULT 1000

/* Opens a broker. Redis connections are opened lazily, so this fails only on a bad URL. */
bq_status bq_broker_open(const struct bq_broker_config *cfg, bq_broker **out, bq_err *err);

/* Rewrites a BQ_EAUTH error that Redis answered (NOAUTH, WRONGPASS, invalid password,
 * NOPERM) so it names the broker's address and says what was refused, keeping Redis' words
 * (and the command) in parentheses: "127.0.0.1:6379: authentication required: ...". Other
 * errors, and an error already rewritten, are left alone. Never adds credentials. */
void bq_broker_explain_auth(const bq_broker *b, bq_err *err);

bq_status bq_broker_open_redis(const struct bq_broker_config *cfg, bq_broker **out,
                               bq_err *err);
bq_status bq_broker_open_memory(bq_broker **out, bq_err *err);
/* redis+cluster://: one Redis broker per master, operations routed by their queue's slot
 * (cluster.c). */
bq_status bq_broker_open_cluster(const struct bq_broker_config *cfg, bq_broker **out,
                                 bq_err *err);

/* Empties every list of the in-memory scheduler (tests). */
void bq_memory_reset(void);

static inline void bq_broker_free(bq_broker *b)
{
    if (b != NULL) {
        bq_orders_free(&b->orders);
        b->ops->free(b);
    }
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
    const char *header;     /* optional: the whole JSON line, built by the caller; when set
                             * the fields below are ignored */
    const char *reason;     /* required, UTF-8 */
    const char *error_json; /* optional: a JSON object with code, message, traceback */
    const char *task_id;    /* optional */
    const char *type;       /* optional */
    const char *queue;
    const char *worker;
    int attempts;
    size_t size;            /* 0, or a message too large to keep: its length; the entry then
                             * holds "size" and "truncated":true and only the first
                             * BQ_DLQ_KEEP bytes of raw (the broker may add "sha1") */
};

/* Builds an entry into out (owned by the caller). Returns BQ_ENOMEM on allocation failure. */
bq_status bq_dlq_entry(const struct bq_dlq_info *info, const char *raw, size_t len,
                       struct bq_msg *out);

#endif
