/*
 * worker_int.h -- the worker engine's private header: struct bq_worker and what the files of
 * the engine share. Nothing outside src/engine/worker*.c includes it.
 *
 *   worker.c            the owner's side: new, start, stop, drain, abort, join, free, the
 *                       event queue, statistics
 *   worker_dispatch.c   the dispatcher thread: wait for room, fetch, hand out, recover
 *                       orphans, and the shutdown
 *   worker_slots.c      the slot threads, their control blocks, and what they do with an
 *                       outcome: ack, retry, dead-letter, hand back
 *   worker_heartbeat.c  the heartbeat thread: renews the lease, reaps dead workers
 *   worker_control.c    cancel and pause: the control channel and controls in the queue
 *
 * struct bq_worker groups its fields by owner, each group saying what guards it; the locking
 * is summed up above the struct, message ownership above struct worker_tasks. The slot
 * threads' path (worker_slots.c) and the dispatcher's (worker_dispatch.c) are the hot ones:
 * what they call per task lives in their own file or here as static inline.
 */
#ifndef BINDUQ_WORKER_INT_H
#define BINDUQ_WORKER_INT_H

#include "worker.h"

#include "../core/alloc.h"
#include "../core/backoff.h"
#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/log.h"
#include "../core/rand.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#define RECONNECT_BASE 0.1  /* seconds; first reconnect delay is 50-100 ms */
#define RECONNECT_CAP 5.0   /* seconds; the delay never exceeds this */
#define OP_ATTEMPTS 6       /* tries of a retry/dead-letter/hand-back write before giving up */
#define BATCH_MAX_HANDLE 0.002 /* seconds: tasks quicker than this on average are batched */
#define TRIM_AFTER (8u << 20) /* bytes: after freeing a message this large, malloc_trim */
#define CONTROL_SCAN 0.05   /* seconds between scans for controls in the queue while the
                             * dispatcher waits for room (worker_control.c) */

struct event_node; /* worker.c */

/* One slot thread and what it holds. w and index are set before the thread runs, thread is
 * the owner's (start, join); state is the slot thread's own; ctl has a mutex of its own
 * (struct bq_slot_ctl). */
struct slot {
    bq_worker *w;
    int index;
    pthread_t thread;
    void *state;           /* what bq_slot_ops.init built */
    struct bq_slot_ctl ctl;
    struct bq_msg current; /* the message being handled; guarded by w->mu */
    /* The chunk taken from the ring (see bq_slot_ops.prepare): chunk[chunk_at..chunk_n) wait
     * their turn, settled[i] if prepare decided message i's fate. Guarded by w->mu; prepare
     * reads the messages without it, and only shut_down reads them besides. */
    struct bq_msg chunk[BQ_CHUNK_MAX];
    bool settled[BQ_CHUNK_MAX];
    int chunk_at, chunk_n;
    /* Handled, their outcomes pending (bq_slot_ops.flush): still in flight. Guarded by
     * w->mu; shut_down reads them besides. */
    struct bq_msg pend[BQ_CHUNK_MAX];
    struct bq_outcome pend_out[BQ_CHUNK_MAX];
    double pend_took[BQ_CHUNK_MAX];
    int npend;
    /* Messages the slot carries out without the lock, out of every place above: a flush's
     * (flush_pending) and a direct ack's, until their broker write is made. An entry whose
     * ownership moves to the pending acks meanwhile has its data set to NULL (ack_deferred).
     * Guarded by w->mu; read only by the orphan check (recover_orphans). */
    const struct bq_msg *transit;
    int ntransit;
    bool running;          /* guarded by w->mu */
    bool exited;           /* guarded by w->mu */
    /* per_slot > 1: the messages of the tasks the slot holds, by place (data NULL: free),
     * when each began, how many; polling while it waits in bq_slot_ops.wait, so that a
     * message put in the ring wakes it (bq_slot_wake). Guarded by w->mu. */
    struct bq_msg *held;
    double *held_t0;
    int nheld;
    bool polling;
};

/* The message slot s handles at place p (0 .. per_slot-1), or NULL (w->mu held). */
static inline const struct bq_msg *slot_msg(const struct slot *s, int per_slot, int p)
{
    if (per_slot > 1)
        return s->held[p].data != NULL ? &s->held[p] : NULL;
    return p == 0 && s->running && s->current.data != NULL ? &s->current : NULL;
}

/* The worker's settings: written by bq_worker_new, read-only afterwards, so any thread reads
 * them without a lock. */
struct worker_conf {
    char id[96];
    char **queues;          /* owned: the queues, in priority order */
    int nqueues;
    int *weights;           /* owned; NULL: strict priority */
    char *queue;            /* queues[0] (not owned separately) */
    char *control_queue;    /* owned: the configured queue name, whose control channel the
                             * worker listens to */
    struct bq_lessee who;   /* the worker as the broker sees it (queues, id, delivery, limits) */
    int concurrency;
    int per_slot;           /* tasks a slot holds at once (>= 1) */
    int handlers;           /* concurrency * per_slot: tasks handled at once */
    int capacity;           /* the ring's size: handlers + max(prefetch, batch) */
    int base_cap;           /* messages held at most normally: handlers + prefetch */
    int batch;              /* extra messages held while the queue is deep */
    double block_timeout, lease, shutdown_timeout;
    bool want_results;
    struct bq_slot_ops ops;
    void *ud;
};

/* The messages the worker holds, from the fetch to the ack. Guarded by mu. A fetched message
 * is owned by the ring, then by the slot that takes it (its chunk, then slot->current, then
 * its pending outcomes), then either freed by the slot or moved into acks, which the
 * dispatcher sends with its next fetch. */
struct worker_tasks {
    struct bq_msg *ring;    /* owned, conf.capacity entries: messages no slot has taken */
    int ring_head, ring_n;
    int inflight;           /* fetched and not yet finished: in the ring or in a slot (its
                             * chunk, running, or its outcome pending) */
    int pending;            /* of those, handled with their outcome pending (the slots'
                             * npend): the dispatcher does not count them (bq_worker_held) */
    int running;            /* slots inside a handle or a flush */
    int wake_at;            /* a finishing slot wakes the dispatcher only when held is
                             * at most this (INT_MAX: always); saves a wake-up per task
                             * while a deep batch drains */
    struct bq_batch acks;   /* finished messages waiting to be acknowledged */
    atomic_ullong seq;      /* messages fetched so far (bq_msg.seq of the last); read
                             * without mu by a control request (worker_control.c) */
};

/* How the dispatcher fetches, which the slots read and adjust as tasks finish. Guarded by
 * mu. */
struct worker_fetch {
    bool deep;              /* the last fetch took all it asked for: batch (the dispatcher
                             * writes it, a slot reads it to size its chunk) */
    double ewma_handle;     /* seconds a message takes in a slot, smoothed (the slots write
                             * it) */
    bool blocking;          /* the dispatcher waits in a blocking fetch, */
    double block_until;     /* until then: a slot acks directly and wakes it for a retry due
                             * sooner */
    double next_promote;    /* when a fetch next promotes due retries (a retry brings it
                             * forward) */
    bool delayed_waiting;   /* the last promotion saw retries waiting for a later time */
    double due_during;      /* the earliest time a delayed operation said to be due since
                             * the last promoting round trip was planned (INFINITY: none);
                             * that round trip's reply may not have seen it */
};

/* The worker's lease: renewed by the dispatcher's round trips, or by the heartbeat thread
 * when they do not. Guarded by mu. */
struct worker_lease {
    double last_beat;       /* when the lease was last renewed (or a renewal sent) */
    bool registered;        /* the lease holds (or none is needed): a fetch may take tasks */
};

/* Start and stop. Guarded by mu, except `abandoned`. Slots wait for the start's verdict on
 * cv_task, the starter for the slots' inits on cv_init. */
struct worker_life {
    bool drain, started, stopping, dispatcher_done, joined;
    atomic_bool abandoned;  /* written under mu; a slot reads it without */
    double stop_at;         /* when the stop was asked for: the shutdown deadline counts
                             * from it */
    int inits_done, init_failures, slots_alive;
    bq_err init_err;        /* the first failed init's error */
};

/* The dispatcher thread's own. `thread` and `started` are the owner's (start, join); the
 * rest only the dispatcher thread touches. */
struct worker_dispatcher {
    pthread_t thread;
    bool started;
    bool scan_warned;       /* a scan for controls failed and said so */
    double next_scan;       /* when a dispatcher waiting for room looks for controls next */
};

/* The heartbeat thread. `thread` and `started` are written by the owner's start and by
 * whoever stops it: the dispatcher as it ends, or the owner in a failed start or in the join
 * (after joining the dispatcher), never two at once. `stop` is guarded by the thread's own
 * mutex, on whose cv it sleeps between renewals. */
struct worker_heartbeat {
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
};

/* The control channel's listener thread. The owner starts and stops it. */
struct worker_control {
    pthread_t thread;
    bool started;
    int stopfd;             /* eventfd: written to stop the listener */
};

/* Controls that came before the worker named their task (worker_control.c, "Controls that
 * come early"): kept for a task of a message fetched before they came, until a slot names
 * it. Guarded by mu, its own (taken before a slot control block's, never inside mu); `n` is
 * read without it by every naming. */
#define EARLY_MAX 64
struct worker_early {
    pthread_mutex_t mu;
    atomic_int n;           /* entries, plus requests looking at the slots right now */
    int used;
    struct {
        char id[BQ_MAX_ID_LEN + 1];
        int op;                 /* enum bq_control */
        unsigned long long seq; /* it applies to messages with bq_msg.seq <= seq */
        double expire;          /* monotonic; refreshed while such a message waits in the
                                 * ring */
    } e[EARLY_MAX];
    /* Requests this worker's scan published after it had delivered or kept them here: the
     * worker's own copy, when the channel brings it, is not taken again (taken, it could
     * be kept for a later operation of the task fetched meanwhile, such as the resume). */
    struct {
        char id[BQ_MAX_ID_LEN + 1];
        int op;
    } sent[16];
    int nsent;
};

/* Events for the owner thread (results, STOPPED). Guarded by their own mutex; the eventfd
 * lets the owner poll them together with a signal descriptor. */
struct worker_events {
    pthread_mutex_t mu;
    struct event_node *head, *tail;
    int fd;
};

/* Task events waiting to be written (worker_feed.c). Guarded by mu, its own. */
struct worker_feed {
    bool inited, on;        /* on: the configuration wants task events */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bq_buf *pend;           /* conf.nqueues buffers: each queue's events, comma-separated */
    bq_buf worker;          /* ,"worker":"<conf.id>": every event's last field, as JSON */
    size_t n, bytes;        /* events and bytes pending over all queues */
    double first_at;        /* when the oldest pending event came (monotonic) */
    bool sending;           /* a path is writing what it took */
    bool waiting;           /* the dispatcher waits in a blocking fetch: no fetch will carry
                             * events soon, so the feed thread writes them without lingering */
    bool stop, started;     /* the feed thread's */
    pthread_t thread;
};

/* What one write takes: one JSON array per queue that had events. */
struct feed_take {
    size_t n;
    char *json[16];
    struct bq_slice slice[16];
    int q[16];
};

/* Counters for bq_worker_stats. Atomic: any thread adds, any thread reads. */
struct worker_counters {
    atomic_llong fetched, completed, failed, retried, dead, dropped, malformed, skipped,
        handed_back, lease_lost, reaped, rate_limited, canceled, paused, waiting, redis_errors,
        reconnects, pickup_rejected, events_lost;
};

/* The worker's report (worker_heartbeat.c, report-N.lua): tasks finished per queue, which the
 * slots add to and the heartbeat thread sends every REPORT_PERIOD seconds with the worker's
 * description. */
struct worker_report {
    atomic_llong *done, *failed;        /* conf.nqueues each: counted since the start */
    long long *sent_done, *sent_failed; /* conf.nqueues each: reported so far (the heartbeat
                                         * thread's) */
    double started;                     /* wall clock */
};

/* Histograms of handler durations and pickup latencies for bq_worker_histograms: per bucket
 * (not cumulative), sums in microseconds. Atomic, like the counters. */
struct worker_hists {
    atomic_llong dur[BQ_HIST_N], pick[BQ_HIST_N], dur_sum_us, pick_sum_us;
};

/* Locking: one mutex `mu` guards tasks, fetch, lease and life, and each slot's current
 * message, chunk, pending outcomes and running/exited flags (struct slot). Slots wait on
 * cv_task, the dispatcher on cv_space, the starter on cv_init. The heartbeat thread, the
 * event queue and each slot's control block have mutexes of their own, never held together
 * with mu except a slot's control block's (taken inside mu, never the other way round). */
struct bq_worker {
    struct worker_conf conf;
    bq_broker *broker;      /* owned; every thread uses it (its operations are thread-safe,
                             * only the dispatcher fetches) */
    struct slot *slots;     /* owned, conf.concurrency of them */

    pthread_mutex_t mu;
    pthread_cond_t cv_task, cv_space, cv_init;
    struct worker_tasks tasks;     /* mu */
    struct worker_fetch fetch;     /* mu */
    struct worker_lease lease;     /* mu */
    struct worker_life life;       /* mu */

    struct worker_dispatcher dispatcher;
    struct worker_heartbeat heartbeat;
    struct worker_control control;
    struct worker_early early;
    struct worker_events events;
    struct worker_feed feed;
    struct worker_counters count;
    struct worker_report report;
    struct worker_hists hist;
};

/* The messages the worker holds not yet handled (w->mu held): in the ring, in a chunk or
 * running. What a fetch may add is measured against this, not inflight: handled tasks whose
 * outcomes wait for their chunk's write (flush) take no handler, and counting them made the
 * dispatcher fetch only after that write, so the next chunk found the ring empty and its
 * prepare could not carry the write (worker_slots.c). They add at most BQ_CHUNK_MAX a slot
 * to the messages held. */
static inline int bq_worker_held(const bq_worker *w)
{
    return w->tasks.inflight - w->tasks.pending;
}

/* Runs a broker write that must not be lost, retrying with backoff while Redis is away. */
#define WITH_RETRIES(w, what, task_id, call)                                                 \
    do {                                                                                      \
        for (int attempt_ = 0; attempt_ < OP_ATTEMPTS; attempt_++) {                         \
            bq_err_clear(&err);                                                               \
            st = (call);                                                                      \
            if (st == BQ_OK)                                                                  \
                break;                                                                        \
            atomic_fetch_add(&(w)->count.redis_errors, 1);                                    \
            bq_log(BQ_LOG_ERROR, "redis_error", "op", what, "task_id", task_id, "queue",      \
                   (w)->conf.queue, "worker", (w)->conf.id, "error", err.msg, "code",         \
                   bq_status_name(st), NULL);                                                 \
            bq_sleep(bq_backoff_delay(attempt_, 0.2, 3.0, BQ_JITTER_EQUAL,                    \
                                      bq_random_unit()));                                     \
        }                                                                                     \
    } while (0)

/* The queue message q came from (bq_worker_queue_of). Per task: inline. */
static inline const char *queue_of(const bq_worker *w, int q)
{
    return w->conf.queues[q >= 0 && q < w->conf.nqueues ? q : 0];
}

/* Frees an outcome's strings (a slot's, or an event's). Per task: inline. */
static inline void outcome_free(struct bq_outcome *o)
{
    bq_free(o->reason);
    bq_free(o->json);
    bq_free(o->header);
    o->reason = o->json = o->header = NULL;
}

/* ---- Shared between the files of the engine ---------------------------------------------- */

/* worker.c: queues an event and wakes the owner. Takes ownership of ev's strings. */
void bq_worker_push_event(bq_worker *w, struct bq_event *ev);

/* worker_slots.c: the slot threads' main, and the outcomes the dispatcher and the owner carry
 * out too. A write retries while Redis is away (WITH_RETRIES), then logs what was lost. */
void *bq_worker_slot_main(void *arg);
/* Dead-letters msg (its original part) with the outcome's reason. */
void bq_worker_bury(bq_worker *w, const struct bq_msg *msg, const struct bq_outcome *out,
                    const char *tid);
/* Gives n messages back to the queue, logging `why`. Returns false if the write failed; the
 * messages stay the caller's either way. */
bool bq_worker_handback(bq_worker *w, const struct bq_msg *msgs, size_t n, const char *why);
/* Counts and logs a write that found its task no longer leased to this worker. */
void bq_worker_lease_lost(bq_worker *w, const char *op, const char *tid);
/* Interrupts a slot's handler (the shutdown deadline): its count hook and sleeps see it. */
void bq_slot_interrupt(struct bq_slot_ctl *ctl);

/* worker_feed.c: the task events (see there). init sets the feed up (on: write events);
 * outcome adds an outcome's event; settle writes what is pending (before a direct write of
 * the slots); take / taken bracket the dispatcher's round trip that carries the events
 * (written: the round trip succeeded); start and stop run the feed thread (stop writes what
 * is left). */
bq_status bq_worker_feed_init(bq_worker *w, bool on, bq_err *err);
void bq_worker_feed_destroy(bq_worker *w);
void bq_worker_feed_outcome(bq_worker *w, const struct bq_msg *msg,
                            const struct bq_outcome *out);
void bq_worker_feed_settle(bq_worker *w);
/* The dispatcher enters (true) or leaves a blocking fetch: meanwhile events go at once. */
void bq_worker_feed_waiting(bq_worker *w, bool waiting);
size_t bq_worker_feed_take(bq_worker *w, struct feed_take *t);
void bq_worker_feed_taken(bq_worker *w, struct feed_take *t, bool written);
void bq_feed_take_free(struct feed_take *t);
void bq_worker_feed_start(bq_worker *w, int (*spawn)(pthread_t *, void *(*)(void *), void *));
void bq_worker_feed_stop(bq_worker *w);

/* worker_dispatch.c: the dispatcher thread's main. */
void *bq_worker_dispatcher_main(void *arg);

/* worker_heartbeat.c: the heartbeat thread's main; its stop (idempotent: the dispatcher as
 * it ends, the owner when the start fails or in the join, after the dispatcher's end); and
 * the reaping of workers whose lease ran out, which a fetch reports too (clears `dead`). */
void *bq_worker_heartbeat_main(void *arg);
void bq_worker_stop_heartbeat(bq_worker *w);
void bq_worker_reap_dead(bq_worker *w, struct bq_batch *dead);

/* worker_control.c: the control listener's main and its stop (idempotent, owner thread); a
 * scan for controls in the queue (dispatcher thread, while it waits for room). */
void *bq_worker_control_main(void *arg);
void bq_worker_stop_control(bq_worker *w);
void bq_worker_scan_controls(bq_worker *w);

/* An operation waits in a delayed set of the worker's queue for `seconds` more (a producer's
 * delayed operation, said on the control channel as "due <ms>"): brings the next promotion
 * forward as a retry of its own does, waking a blocked fetch that would sleep past it. Any
 * thread. */
void bq_worker_due(bq_worker *w, double seconds);

#endif
