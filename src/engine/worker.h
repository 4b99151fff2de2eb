/*
 * worker.h -- the worker engine: a dispatcher thread that fetches task operations from a
 * broker, `concurrency` slot threads that handle them, and a heartbeat thread that keeps the
 * worker's lease alive.
 *
 *   dispatcher thread              slot threads                     heartbeat thread
 *     wait for a free slot           init: a handler environment      every lease/3: renew
 *     ack finished tasks and         take a message, handle it,       the lease of all this
 *     fetch up to the free-slot      act on the outcome: ack, retry,  worker's tasks, reap
 *     count in one round trip        dead-letter, hand back           workers whose lease ran
 *     promote due retries                                             out (their tasks go
 *     on stop: hand back, wait for                                    back to the queue)
 *     running handlers (deadline)
 *
 * The engine knows nothing about Lua: a slot is driven through bq_slot_ops, which the Lua
 * binding implements with one Lua state per slot thread, so no Lua state is ever touched by
 * two threads. Decisions (retry or dead-letter, after how long) come from the slot: the
 * engine carries them out. The dispatcher fetches only as many messages as there are free
 * slots (plus `prefetch`, 0 by default), so a worker does not hoard tasks that another worker
 * could run now; except that a deep queue of quick tasks (the last fetch got all it asked
 * for, handlers average under 2 ms) is taken `batch` at a time, one script call per batch.
 *
 * The thread that owns the bq_worker (the "main" thread, running the user's script) talks to
 * it through start/stop and an event queue: results (if requested) and the final STOPPED
 * event. Waiting for events can also watch a signal descriptor.
 */
#ifndef BINDUQ_WORKER_H
#define BINDUQ_WORKER_H

#include "../binduq.h"
#include "../broker/broker.h"
#include "config.h"
#include "task.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct bq_worker bq_worker;

enum bq_outcome_kind {
    BQ_OUTCOME_COMPLETED = 0, /* the handler returned a result: acknowledge */
    BQ_OUTCOME_SKIPPED,       /* the task is already finished (a redelivery): acknowledge */
    BQ_OUTCOME_RETRY,         /* failed; try again after `delay` with `header` */
    BQ_OUTCOME_DEAD,          /* failed for good: dead-letter */
    BQ_OUTCOME_DROPPED,       /* failed, and the failure policy drops it: acknowledge */
    BQ_OUTCOME_MALFORMED,     /* could not be decoded or validated: dead-letter */
    BQ_OUTCOME_INTERRUPTED,   /* stopped by shutdown before it finished: hand back */
    BQ_OUTCOME_DEFERRED,      /* over its rate limit: queue again after `delay` with `header` */
    BQ_OUTCOME_CANCELED,      /* canceled (before or while it ran): acknowledge */
    BQ_OUTCOME_PAUSED,        /* paused at a yield point, checkpoint stored: acknowledge */
    BQ_OUTCOME_WAITING,       /* the handler asked for input (input-required, auth-required):
                               * the task stays open until a resume; acknowledge */
    BQ_OUTCOME_PENDING,       /* the handler returned, its stored state is written with the
                               * rest of its chunk: the slot's flush gives the outcome */
};

/* "completed", "skipped", "retry", "dead", "dropped", "malformed", "interrupted",
 * "deferred", "canceled", "paused", "waiting", "pending". */
const char *bq_outcome_name(enum bq_outcome_kind kind);

/* The kind named `name` (one of bq_outcome_name's), or false when no outcome has that name. */
bool bq_outcome_kind_of(const char *name, enum bq_outcome_kind *kind);

#define BQ_OUTCOME_COUNT (BQ_OUTCOME_PENDING + 1)

/* What a slot reports for one message. The slot fills it; the engine frees the strings. */
struct bq_outcome {
    enum bq_outcome_kind kind;
    char task_id[BQ_MAX_ID_LEN + 1]; /* "" when unknown */
    char type[16];                   /* "" when unknown */
    char *reason;      /* owned: why it failed or was set aside (one line of text) */
    char *json;        /* owned: the result (completed, when results are wanted) or the
                        * error object {code, message, traceback, retryable} */
    char *header;      /* owned: RETRY: the message's new header line ("#bq {...}");
                        * DEAD/MALFORMED: the dead-letter entry's JSON line (optional) */
    double delay;      /* RETRY: seconds before the next attempt */
    size_t body;       /* offset of the original message in the fetched one (after a header) */
    size_t body_end;   /* > 0: the header was embedded (broker.h): the original is the bytes
                        * [body, body_end) and a closing '}' */
    int attempt;       /* the attempt that just ended (1 for the first) */
    char state[24];    /* the task's stored state afterwards ("" when unknown) */
    double pickup;     /* seconds from the producer's timestamp to the handler's start; NaN:
                        * unknown (metrics; see bq_pickup_accept) */
    char trace_id[64]; /* the task's trace id ("" when none), for the log lines */
};

/* What the control channel asks of a running task. */
enum bq_control {
    BQ_CONTROL_NONE = 0,
    BQ_CONTROL_CANCEL, /* stop the handler at once (count hook or yield point) */
    BQ_CONTROL_PAUSE,  /* stop it at its next yield point, keeping its checkpoint */
};

/* What a slot's environment can see of its slot: the interrupt flag (shutdown deadline),
 * the control request for its running task, and an interruptible sleep. Lives as long as
 * the slot thread. */
#define BQ_CHUNK_MAX 64

/* The most tasks one slot's state may hold at once (bq_worker_options.per_slot). */
#define BQ_PER_SLOT_MAX 10000

/* One of the tasks a slot holding several at once runs (per_slot > 1): its id and the
 * control request for it. */
struct bq_slot_task {
    char id[BQ_MAX_ID_LEN + 1]; /* "" when the place is free; guarded by the ctl's mu */
    atomic_int control;         /* enum bq_control */
};

struct bq_slot_ctl {
    atomic_int interrupt;  /* non-zero: stop the handler at its next chance */
    atomic_int control;    /* enum bq_control for the running task */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char task_id[BQ_MAX_ID_LEN + 1]; /* the running task ("" none); guarded by mu */
    /* The tasks of the slot's chunk that will run after it (bq_slot_set_ahead), and what the
     * control channel asked for each meanwhile; guarded by mu. */
    char ahead[BQ_CHUNK_MAX][BQ_MAX_ID_LEN + 1];
    uint32_t ahead_hash[BQ_CHUNK_MAX]; /* of each id: a task's start compares these first */
    int ahead_control[BQ_CHUNK_MAX];
    int nahead;
    /* Called (under mu, from the thread that interrupts the slot or asks it to cancel or
     * pause) besides the condition variable: a handler waiting in something else than cv,
     * an HTTP call's poll (net/http.c), registers how to wake that. Guarded by mu. */
    void (*waker)(void *ud);
    void *waker_ud;
    /* per_slot > 1: the tasks the slot holds, by place (bq_slot_set_task_at); a control
     * request reaches the one with its id. task_id and control above are unused then. */
    struct bq_slot_task *tasks;
    int ntasks;
    /* Bumped by every wake-up (bq_slot_wake, a control request, an interrupt); guarded by
     * mu: bq_slot_park returns when it moved. */
    unsigned wakeups;
    /* Seconds the task being handled spent in the per-task storage writes that a chunk makes
     * for all its tasks at once (its start and its finished state: l_storage.c adds them).
     * The engine zeroes it before each handle and judges whether handlers are quick enough to
     * batch by the time without it: those writes are what batching takes off, and on a disk
     * whose commit takes a millisecond they alone kept a worker from ever batching. The slot
     * thread only. */
    double batched_wait;
};

/* Sleeps up to `seconds`; returns early (false) when the slot is interrupted or a control
 * request arrives. */
bool bq_slot_sleep(struct bq_slot_ctl *ctl, double seconds);

/* Registers (NULL: removes) the slot's waker; after it returns, an old waker is not called
 * again. Slot thread. */
void bq_slot_set_waker(struct bq_slot_ctl *ctl, void (*waker)(void *ud), void *ud);

/* Wakes the slot's environment: its waker and bq_slot_park. Any thread. */
void bq_slot_wake(struct bq_slot_ctl *ctl);

/* Waits up to `seconds` for a wake-up after the one counted `seen` (ctl->wakeups read
 * earlier with bq_slot_wakeups); false on the timeout. Slot thread. */
bool bq_slot_park(struct bq_slot_ctl *ctl, unsigned seen, double seconds);
unsigned bq_slot_wakeups(struct bq_slot_ctl *ctl);

/* per_slot > 1: names the task held at place t (NULL or "": the place is free), clearing
 * any earlier control request for that place. Slot thread. */
void bq_slot_set_task_at(struct bq_slot_ctl *ctl, int t, const char *task_id);

/* Names the task the slot runs now (NULL or "": none), so the control channel can reach
 * it; clears any earlier control request. Slot thread. */
void bq_slot_set_task(struct bq_slot_ctl *ctl, const char *task_id);

/* Names the tasks (up to BQ_CHUNK_MAX) the slot will run next, before their stored state says
 * working, so a cancel or pause meant for one of them is kept until bq_slot_set_task names it
 * (then it is that task's control request, as if it had come while it ran). Slot thread. */
void bq_slot_set_ahead(struct bq_slot_ctl *ctl, const char *const *task_ids, int n);

/* A control request for task_id on this slot: for the task it runs (its control flag set, a
 * sleep woken) or one named ahead (kept until it runs). A cancel outranks a pause. Returns
 * whether the slot has the task. */
bool bq_slot_request(struct bq_slot_ctl *ctl, enum bq_control op, const char *task_id);

struct bq_slot_ops {
    /* On the slot thread, before any task: builds the slot's state. On failure it releases
     * whatever it built; fini is then not called. */
    bq_status (*init)(void *ud, int index, struct bq_slot_ctl *ctl, void **state,
                      bq_err *err);
    /* On the slot thread: handles one message and fills out (zeroed by the engine). */
    void (*handle)(void *state, const struct bq_msg *msg, struct bq_outcome *out);
    /* On the slot thread, after the last task. */
    void (*fini)(void *state);
    /* Optional, on the slot thread: while the queue is deep and tasks are quick, a slot takes
     * a chunk of up to BQ_CHUNK_MAX messages at once, calls this for them all, then handle for
     * each in order. It may decide for the whole chunk in one round trip what handle would
     * decide for each (rate-limit admissions, stored states). It sets settled[i] when message
     * i must be handled rather than handed back (its task is started in the storage): handle
     * is called for it even at a shutdown, when the others are handed back unhandled. */
    void (*prepare)(void *state, const struct bq_msg *msgs, int n, bool *settled);
    /* Optional, on the slot thread: the messages of a chunk whose handle reported
     * BQ_OUTCOME_PENDING (their handlers returned; their stored states are to be written
     * together) get their outcomes in outs[i], before the slot handles more. Their messages
     * stay leased until then, so a stored state is always written before the ack. When the
     * ring holds the next chunk by then, the slot takes it and calls prepare for it first,
     * with those outcomes still pending, so that prepare may write them together with what
     * it decides for the new chunk (one transaction); flush follows at once. */
    void (*flush)(void *state, const struct bq_msg *msgs, struct bq_outcome *outs, int n);
    /* For per_slot > 1 (both required then), on the slot thread: the slot's state holds up
     * to per_slot tasks at once and runs each until it waits (the handlers are coroutines).
     * start begins message msg as task number t (a free place, 0 .. per_slot-1); it returns
     * true when the task ended at once (out filled), false when it waits. wait runs the
     * waiting tasks until at least one ends, `timeout` seconds pass or bq_slot_wake is
     * called after the wake-up counted `seen` (bq_slot_wakeups, read by the engine before it
     * let go of its lock: a message put in the ring meanwhile is not missed); it stores the
     * places of those that ended in ended[] and their outcomes in outs[place], and returns
     * how many. */
    bool (*start)(void *state, int t, const struct bq_msg *msg, struct bq_outcome *out);
    int (*wait)(void *state, double timeout, unsigned seen, int *ended, struct bq_outcome *outs);
};

struct bq_worker_options {
    const struct bq_config *cfg;  /* scheduler settings; copied */
    const char *const *queues;    /* the queues, in priority order (copied); NULL: the
                                   * configuration's queue_name alone */
    int nqueues;
    const int *weights;           /* NULL: strict priority; else one weight > 0 per queue */
    int concurrency;              /* slot threads, >= 1 */
    int prefetch;                 /* messages fetched ahead beyond the free slots (0: none) */
    double block_timeout;         /* seconds a blocking fetch waits before it is renewed */
    bool want_results;            /* queue a RESULT event per handled message */
    enum bq_delivery delivery;
    double lease;                 /* seconds; at-least-once: renewed every lease/3 */
    double shutdown_timeout;      /* seconds running handlers get after a stop */
    int batch;                    /* while the queue is deep, fetch up to this many beyond
                                   * the free slots per round trip (0: never) */
    size_t max_message_size;      /* bytes, "#bq" header included (0: no limit): a longer
                                   * message is dead-lettered by the dispatcher, its first
                                   * bytes and length kept, and never reaches a slot or even
                                   * this process whole (broker.h, "Oversized messages") */
    int per_slot;                 /* tasks one slot's state holds at once (0 or 1: one; more
                                   * needs bq_slot_ops.start and wait), <= BQ_PER_SLOT_MAX */
};

bq_status bq_worker_new(const struct bq_worker_options *opts, const struct bq_slot_ops *ops,
                        void *ud, bq_worker **out, bq_err *err);

/* Starts the slot threads, waits until every slot's init has finished, then starts the
 * dispatcher and heartbeat threads. If an init fails, the others are stopped and its error
 * returned. In `drain` mode the dispatcher never blocks: the worker stops by itself once the
 * queue is empty and no task is in flight. */
bq_status bq_worker_start(bq_worker *w, bool drain, bq_err *err);

/* True once a worker has started in this process (any broker). */
bool bq_worker_any_started(void);

/* True the first time it is asked while no worker has started in this process, then never
 * again: a producer scheduling to the in-memory scheduler says once that only workers of this
 * process take those tasks (memory_scheduler_no_worker). Both producers, C and Lua, ask it. */
bool bq_memory_warning_due(void);
#define BQ_MEMORY_WARNING                                                                      \
    "scheduled to the in-memory scheduler, which only workers of this process take; no worker " \
    "has started in this process, and what is queued is lost when it exits (set REDIS_URL to "  \
    "reach workers in other processes)"

/* Asks for a graceful stop: fetching stops (a blocked fetch is interrupted), fetched messages
 * not yet started go back to the queue at once, running handlers get the shutdown timeout to
 * finish, then are interrupted, and those still stuck after a short grace have their tasks
 * handed back. Then the threads exit and a STOPPED event is queued. Any thread; idempotent. */
void bq_worker_stop(bq_worker *w);

/* Switches a running worker to drain mode: it stops by itself once the queue is empty and no
 * task is in flight. Any thread; idempotent. */
void bq_worker_drain(bq_worker *w);

/* Gives every message this worker holds back to the queue at once and leaves the handlers
 * running (the process is about to exit: a second SIGINT/SIGTERM). Owner thread. */
void bq_worker_abort(bq_worker *w);

enum bq_event_kind {
    BQ_EVENT_NONE = 0, /* the wait timed out */
    BQ_EVENT_RESULT,   /* one message was handled (only with want_results) */
    BQ_EVENT_SIGNAL,   /* the signal descriptor became readable */
    BQ_EVENT_STOPPED,  /* the worker has stopped */
};

struct bq_event {
    enum bq_event_kind kind;
    struct bq_outcome outcome; /* RESULT: the outcome; strings owned by the event */
    double duration;           /* RESULT: seconds spent in the slot's handle */
};

/* Waits up to `timeout` seconds (negative: forever) for the next event. `sigfd` (or -1) is
 * watched too. Release the event with bq_event_clear. */
void bq_worker_next_event(bq_worker *w, double timeout, int sigfd, struct bq_event *ev);
/* The same, also returning (with BQ_EVENT_NONE, unless an event is there too) as soon as fd
 * `xfd` is readable (-1: none). The caller reads xfd. */
void bq_worker_next_event_or(bq_worker *w, double timeout, int sigfd, int xfd,
                             struct bq_event *ev);
void bq_event_clear(struct bq_event *ev);

/* Waits for the threads to exit (after stop or drain). Threads abandoned at the shutdown
 * deadline are not waited for. */
void bq_worker_join(bq_worker *w);

/* Stops, joins and frees. A worker with abandoned threads is left allocated for them. */
void bq_worker_free(bq_worker *w);

/* Asks the limiter to admit messages the slots hold under "at most `limit` per `period`
 * seconds" for their buckets, in one round trip (bq_broker_ops.rate_limit). A slot reports
 * one not admitted as BQ_OUTCOME_DEFERRED with its new header and the wait as its delay: the
 * engine queues it again like a retry, counted as rate-limited. Slot threads. */
bq_status bq_worker_rate_limit(bq_worker *w, long limit, double period,
                               struct bq_admission *reqs, size_t n, bq_err *err);

/* Delivers a control request to the slot running task_id, if any slot of w runs it (the
 * control channel's listener calls this; so can the owner). Returns whether one did. When
 * none did, the request is kept a while for a message of the task that w fetched before it
 * and no slot has named yet (bq_worker_claim_control). */
bool bq_worker_control(bq_worker *w, enum bq_control op, const char *task_id);

/* A slot that has just named task_id (bq_slot_set_task, bq_slot_set_task_at) for the
 * message numbered seq (bq_msg.seq) takes the control request kept for it, if one came after
 * that message was fetched and before the naming: the enum bq_control to ask of the slot
 * (bq_slot_request), else BQ_CONTROL_NONE. One atomic load when nothing is kept. */
int bq_worker_claim_control(bq_worker *w, const char *task_id, unsigned long long seq);

/* Publishes "cancel <id>" / "pause <id>" on the control channel of the worker's
 * configured queue name, reaching every worker of it (this one included). */
bq_status bq_worker_publish(bq_worker *w, enum bq_control op, const char *task_id,
                            bq_err *err);

/* Adds a task event (a JSON object, e.g. {"event":"started",...}) to the stream of `queue`
 * (one of the worker's; NULL or another: its first), written with the worker's next round
 * trip or within a few milliseconds (docs/events.md). Nothing when the configuration turned
 * task events off (bq_worker_feed_on). Any thread. */
bq_status bq_worker_feed(bq_worker *w, const char *queue, const char *json, size_t len);
bool bq_worker_feed_on(const bq_worker *w);
/* The "started" event of task_id[0..idlen) (its attempt), as bq_worker_feed adds it; nothing
 * when events are off. */
void bq_worker_feed_started(bq_worker *w, const char *queue, const char *task_id, size_t idlen,
                            long long attempt);

/* Formats and parses control messages ("cancel <task_id>", "pause <task_id>"). Both refuse
 * an id that breaks the rule of core/id.h: format returns -1, parse BQ_CONTROL_NONE. */
int bq_control_format(char *out, size_t size, enum bq_control op, const char *task_id);
enum bq_control bq_control_parse(const char *msg, size_t len, char *task_id, size_t size);

const char *bq_worker_id(const bq_worker *w);
/* The first (highest priority) queue, and the queue message `q` came from. */
const char *bq_worker_queue(const bq_worker *w);
const char *bq_worker_queue_of(const bq_worker *w, int q);
int bq_worker_nqueues(const bq_worker *w);
bq_broker *bq_worker_broker(bq_worker *w);

struct bq_worker_stats {
    long long fetched, completed, failed, retried, dead_lettered, dropped, malformed, skipped,
        handed_back, lease_lost, reaped, rate_limited, canceled, paused, waiting, redis_errors,
        reconnects, pickup_rejected;
    int inflight;
};
void bq_worker_stats(bq_worker *w, struct bq_worker_stats *out);

/* Histograms of handler durations and pickup latencies (seconds), for metrics: cumulative
 * counts per upper bound BQ_HIST_BOUNDS (the last is +Inf), and the sum. */
#define BQ_HIST_N 12
extern const double bq_hist_bounds[BQ_HIST_N];
struct bq_hist {
    long long counts[BQ_HIST_N]; /* cumulative */
    double sum;
};
void bq_worker_histograms(bq_worker *w, struct bq_hist *duration, struct bq_hist *pickup);

/* A pickup latency comes from the producer's timestamp, which anyone who can write to the
 * queue chooses. One up to BQ_PICKUP_SKEW seconds below 0 is a producer's clock running a
 * little ahead and is observed as 0; one below that, above BQ_PICKUP_MAX (30 days: a year-1
 * timestamp, a date in the future) or not a number is not observed but counted
 * (binduq_pickup_latency_rejected_total), so it cannot drag the histogram's sum. Returns
 * whether to observe *v, clamped. */
#define BQ_PICKUP_SKEW 1.0
#define BQ_PICKUP_MAX (30.0 * 86400.0)
bool bq_pickup_accept(double *v);

/* True while the worker fetches (started and not stopping). */
bool bq_worker_running(bq_worker *w);

#endif
