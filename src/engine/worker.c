/*
 * worker.c -- see worker.h.
 *
 * struct bq_worker groups its fields by owner, each group saying what guards it (the
 * locking is summed up above the struct, message ownership above struct worker_tasks).
 */
#include "worker.h"

#include "../core/alloc.h"
#include "../core/backoff.h"
#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/log.h"
#include "../core/id.h"
#include "../core/rand.h"

#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define RECONNECT_BASE 0.1  /* seconds; first reconnect delay is 50-100 ms */
#define RECONNECT_CAP 5.0   /* seconds; the delay never exceeds this */
#define OP_ATTEMPTS 6       /* tries of a retry/dead-letter/hand-back write before giving up */
#define SHUTDOWN_GRACE 2.0  /* seconds interrupted handlers get before they are abandoned */
#define BATCH_MAX_HANDLE 0.002 /* seconds: tasks quicker than this on average are batched */
#define TRIM_AFTER (8u << 20) /* bytes: after freeing a message this large, malloc_trim */

struct event_node {
    struct bq_event ev;
    struct event_node *next;
};

struct slot {
    bq_worker *w;
    int index;
    pthread_t thread;
    void *state;
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
    bool running;          /* guarded by w->mu */
    bool exited;           /* guarded by w->mu */
};

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
    int capacity;           /* the ring's size: concurrency + max(prefetch, batch) */
    int base_cap;           /* messages held at most normally: concurrency + prefetch */
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
    int running;            /* slots inside a handle or a flush */
    int wake_at;            /* a finishing slot wakes the dispatcher only when inflight is
                             * at most this (INT_MAX: always); saves a wake-up per task
                             * while a deep batch drains */
    struct bq_batch acks;   /* finished messages waiting to be acknowledged */
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

/* The heartbeat thread. `thread` and `started` belong to whoever stops it (the dispatcher as
 * it ends, then the owner's join: ordered by the dispatcher's join); `stop` is guarded by
 * its own mutex, on whose cv the thread sleeps between renewals. */
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

/* Events for the owner thread (results, STOPPED). Guarded by their own mutex; the eventfd
 * lets the owner poll them together with a signal descriptor. */
struct worker_events {
    pthread_mutex_t mu;
    struct event_node *head, *tail;
    int fd;
};

/* Counters for bq_worker_stats. Atomic: any thread adds, any thread reads. */
struct worker_counters {
    atomic_llong fetched, completed, failed, retried, dead, dropped, malformed, skipped,
        handed_back, lease_lost, reaped, rate_limited, canceled, paused, waiting, redis_errors,
        reconnects, pickup_rejected;
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
    struct worker_events events;
    struct worker_counters count;
    struct worker_hists hist;
};

const char *bq_worker_id(const bq_worker *w)
{
    return w->conf.id;
}

const char *bq_worker_queue(const bq_worker *w)
{
    return w->conf.queue;
}

int bq_worker_nqueues(const bq_worker *w)
{
    return w->conf.nqueues;
}

const char *bq_worker_queue_of(const bq_worker *w, int q)
{
    return w->conf.queues[q >= 0 && q < w->conf.nqueues ? q : 0];
}

bq_broker *bq_worker_broker(bq_worker *w)
{
    return w->broker;
}

bool bq_slot_sleep(struct bq_slot_ctl *ctl, double seconds)
{
    /* NaN and negative: no sleep; infinity: the longest (the callers check durations, this
     * keeps a miss from becoming a spin under the slot's lock). */
    if (!(seconds > 0))
        seconds = 0;
    else if (seconds > BQ_MAX_DURATION)
        seconds = BQ_MAX_DURATION;
    double deadline = bq_now_mono() + seconds;
    pthread_mutex_lock(&ctl->mu);
    while (!atomic_load(&ctl->interrupt) && !atomic_load(&ctl->control)) {
        double left = deadline - bq_now_mono();
        if (left <= 0)
            break;
        bq_cond_wait_for(&ctl->cv, &ctl->mu, left);
    }
    bool done = !atomic_load(&ctl->interrupt) && !atomic_load(&ctl->control);
    pthread_mutex_unlock(&ctl->mu);
    return done;
}

void bq_slot_set_task(struct bq_slot_ctl *ctl, const char *task_id)
{
    /* Twice a task: a bounded copy, not snprintf (500 instructions a call). */
    size_t n = task_id != NULL ? strnlen(task_id, sizeof ctl->task_id - 1) : 0;
    pthread_mutex_lock(&ctl->mu);
    if (n > 0)
        memcpy(ctl->task_id, task_id, n);
    ctl->task_id[n] = '\0';
    int control = BQ_CONTROL_NONE;
    for (int i = 0; n > 0 && i < ctl->nahead; i++) {
        if (strcmp(ctl->ahead[i], ctl->task_id) == 0) { /* kept for it: it runs now */
            control = ctl->ahead_control[i];
            ctl->ahead[i][0] = '\0';
            ctl->ahead_control[i] = BQ_CONTROL_NONE;
        }
    }
    atomic_store(&ctl->control, control);
    pthread_mutex_unlock(&ctl->mu);
}

void bq_slot_set_ahead(struct bq_slot_ctl *ctl, const char *const *task_ids, int n)
{
    pthread_mutex_lock(&ctl->mu);
    ctl->nahead = 0;
    for (int i = 0; i < n && i < BQ_CHUNK_MAX; i++) {
        size_t len = task_ids[i] != NULL ? strnlen(task_ids[i], BQ_MAX_ID_LEN) : 0;
        memcpy(ctl->ahead[i], task_ids[i] != NULL ? task_ids[i] : "", len);
        ctl->ahead[i][len] = '\0';
        ctl->ahead_control[i] = BQ_CONTROL_NONE;
        ctl->nahead = i + 1;
    }
    pthread_mutex_unlock(&ctl->mu);
}

/* ---- Control channel -------------------------------------------------------------------
 * Cancel and pause must reach the worker that runs the task, not whichever worker pops the
 * next message: producers publish "cancel <id>" / "pause <id>" on the control channel of
 * the queue, every worker listens on a connection of its own, and the one whose slot runs
 * the task sets that slot's control flag. The handler sees it at its next yield point (a
 * binduq call) or, for a cancel, at the count hook. A missed publication is caught by the
 * stored state (see lua/binduq/worker.lua). */

int bq_control_format(char *out, size_t size, enum bq_control op, const char *task_id)
{
    if (!bq_id_check(task_id, strlen(task_id), NULL))
        return -1;
    return snprintf(out, size, "%s %s", op == BQ_CONTROL_PAUSE ? "pause" : "cancel", task_id);
}

enum bq_control bq_control_parse(const char *msg, size_t len, char *task_id, size_t size)
{
    enum bq_control op = BQ_CONTROL_NONE;
    size_t skip = 0;
    if (len > 7 && memcmp(msg, "cancel ", 7) == 0) {
        op = BQ_CONTROL_CANCEL;
        skip = 7;
    } else if (len > 6 && memcmp(msg, "pause ", 6) == 0) {
        op = BQ_CONTROL_PAUSE;
        skip = 6;
    }
    if (op == BQ_CONTROL_NONE || len - skip >= size || !bq_id_check(msg + skip, len - skip, NULL))
        return BQ_CONTROL_NONE;
    memcpy(task_id, msg + skip, len - skip);
    task_id[len - skip] = '\0';
    return op;
}

bool bq_slot_request(struct bq_slot_ctl *ctl, enum bq_control op, const char *task_id)
{
    bool found = false;
    pthread_mutex_lock(&ctl->mu);
    if (ctl->task_id[0] != '\0' && strcmp(ctl->task_id, task_id) == 0) {
        /* A cancel outranks a pause asked for earlier. */
        if (atomic_load(&ctl->control) != BQ_CONTROL_CANCEL)
            atomic_store(&ctl->control, op);
        pthread_cond_broadcast(&ctl->cv);
        found = true;
    }
    for (int j = 0; j < ctl->nahead; j++) {
        if (ctl->ahead[j][0] != '\0' && strcmp(ctl->ahead[j], task_id) == 0) {
            if (ctl->ahead_control[j] != BQ_CONTROL_CANCEL)
                ctl->ahead_control[j] = op;
            found = true;
        }
    }
    pthread_mutex_unlock(&ctl->mu);
    return found;
}

bool bq_worker_control(bq_worker *w, enum bq_control op, const char *task_id)
{
    bool found = false;
    for (int i = 0; i < w->conf.concurrency; i++)
        found = bq_slot_request(&w->slots[i].ctl, op, task_id) || found;
    return found;
}

bq_status bq_worker_publish(bq_worker *w, enum bq_control op, const char *task_id, bq_err *err)
{
    char msg[BQ_MAX_ID_LEN + 16], why[BQ_ID_WHY_SIZE];
    if (!bq_id_check(task_id, strlen(task_id), why))
        return bq_err_set(err, BQ_EINVAL, "task_id %s", why);
    int n = bq_control_format(msg, sizeof msg, op, task_id);
    long long receivers = 0;
    return w->broker->ops->publish(w->broker, w->conf.control_queue,
                                   (struct bq_slice){msg, (size_t)n}, &receivers, err);
}

static void on_control(void *ud, const char *msg, size_t len)
{
    bq_worker *w = ud;
    char id[BQ_MAX_ID_LEN + 1];
    enum bq_control op = bq_control_parse(msg, len, id, sizeof id);
    if (op == BQ_CONTROL_NONE)
        return;
    if (bq_worker_control(w, op, id))
        bq_log(BQ_LOG_INFO, "control", "task_id", id, "op", op == BQ_CONTROL_CANCEL ? "cancel"
               : "pause", "worker", w->conf.id, NULL);
}

static void *control_main(void *arg)
{
    bq_worker *w = arg;
    int failures = 0;
    for (;;) {
        bq_err err;
        bq_status st = w->broker->ops->listen(w->broker, w->conf.control_queue, on_control, NULL, w,
                                              w->control.stopfd, &err);
        if (st == BQ_EINTR)
            break;
        bq_log(BQ_LOG_WARN, "control_lost", "queue", w->conf.control_queue, "worker", w->conf.id,
               "error", err.msg, "code", bq_status_name(st), NULL);
        double d = bq_backoff_delay(failures++, RECONNECT_BASE, RECONNECT_CAP, BQ_JITTER_EQUAL,
                                    bq_random_unit());
        struct pollfd p = {w->control.stopfd, POLLIN, 0};
        if (poll(&p, 1, (int)(d * 1000)) > 0)
            break;
    }
    return NULL;
}

static void stop_control(bq_worker *w)
{
    if (!w->control.started)
        return;
    uint64_t one = 1;
    if (write(w->control.stopfd, &one, sizeof one) != (ssize_t)sizeof one)
        bq_log(BQ_LOG_ERROR, "control_stop_failed", "worker", w->conf.id, NULL);
    pthread_join(w->control.thread, NULL);
    w->control.started = false;
}

static void interrupt_slot(struct slot *s)
{
    pthread_mutex_lock(&s->ctl.mu);
    atomic_store(&s->ctl.interrupt, 1);
    pthread_cond_broadcast(&s->ctl.cv);
    pthread_mutex_unlock(&s->ctl.mu);
}

/* ---- Events -------------------------------------------------------------------------------- */

static void outcome_free(struct bq_outcome *o)
{
    bq_free(o->reason);
    bq_free(o->json);
    bq_free(o->header);
    o->reason = o->json = o->header = NULL;
}

void bq_event_clear(struct bq_event *ev)
{
    outcome_free(&ev->outcome);
    memset(ev, 0, sizeof *ev);
}

/* Queues an event and wakes the owner. Takes ownership of ev's strings. */
static void push_event(bq_worker *w, struct bq_event *ev)
{
    struct event_node *n = bq_calloc(1, sizeof *n);
    if (n == NULL) {
        bq_event_clear(ev);
        bq_log(BQ_LOG_ERROR, "event_dropped", "worker", w->conf.id, "reason", "out of memory",
               NULL);
        return;
    }
    n->ev = *ev;
    pthread_mutex_lock(&w->events.mu);
    if (w->events.tail != NULL)
        w->events.tail->next = n;
    else
        w->events.head = n;
    w->events.tail = n;
    pthread_mutex_unlock(&w->events.mu);
    uint64_t one = 1;
    ssize_t k = write(w->events.fd, &one, sizeof one);
    (void)k;
}

static bool pop_event(bq_worker *w, struct bq_event *ev)
{
    pthread_mutex_lock(&w->events.mu);
    struct event_node *n = w->events.head;
    if (n != NULL) {
        w->events.head = n->next;
        if (w->events.head == NULL)
            w->events.tail = NULL;
    }
    pthread_mutex_unlock(&w->events.mu);
    if (n == NULL)
        return false;
    *ev = n->ev;
    bq_free(n);
    return true;
}

void bq_worker_next_event(bq_worker *w, double timeout, int sigfd, struct bq_event *ev)
{
    memset(ev, 0, sizeof *ev);
    double deadline = timeout < 0 ? -1 : bq_now_mono() + timeout;
    for (;;) {
        if (pop_event(w, ev))
            return;
        int ms = -1;
        if (deadline >= 0) {
            double left = deadline - bq_now_mono();
            if (left <= 0)
                return;
            ms = (int)(left * 1000.0) + 1;
        }
        struct pollfd p[2] = {{w->events.fd, POLLIN, 0}, {sigfd, POLLIN, 0}};
        int n = poll(p, sigfd >= 0 ? 2 : 1, ms);
        if (n < 0 && errno != EINTR)
            return;
        if (n > 0 && (p[0].revents & POLLIN)) {
            uint64_t v;
            ssize_t k = read(w->events.fd, &v, sizeof v);
            (void)k;
        }
        if (sigfd >= 0 && n > 0 && (p[1].revents & POLLIN)) {
            if (pop_event(w, ev))
                return;
            ev->kind = BQ_EVENT_SIGNAL;
            return;
        }
    }
}

/* ---- Outcomes (slot threads) --------------------------------------------------------------- */

static struct bq_slice slice_of(const struct bq_msg *m)
{
    return (struct bq_slice){m->data, m->len};
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

/* When a write that carries a task could not be made: in at-least-once mode the task stays
 * leased and comes back when this worker's lease ends; in at-most-once mode the log is the
 * last place it exists. */
static void write_failed(bq_worker *w, const char *what, const char *tid,
                         const struct bq_msg *msg)
{
    if (w->conf.who.delivery == BQ_AT_LEAST_ONCE) {
        bq_log(BQ_LOG_ERROR, "write_failed", "op", what, "task_id", tid, "queue",
               bq_worker_queue_of(w, msg->q),
               "worker", w->conf.id, "outcome", "the task stays leased and is redelivered later",
               NULL);
        return;
    }
    char len[24];
    snprintf(len, sizeof len, "%zu", msg->len);
    bq_log(BQ_LOG_ERROR, "write_failed", "op", what, "task_id", tid, "queue",
           bq_worker_queue_of(w, msg->q), "worker", w->conf.id, "#bytes", len, "message", msg->data,
           NULL);
}

static void lease_lost(bq_worker *w, const char *op, const char *tid)
{
    atomic_fetch_add(&w->count.lease_lost, 1);
    bq_log(BQ_LOG_WARN, "lease_lost", "op", op, "task_id", tid, "queue", w->conf.queue, "worker",
           w->conf.id, "outcome", "the task went back to the queue meanwhile; it may run again",
           NULL);
}

/* The original bytes of msg, without binduq's header: a slice of it, or for an embedded
 * header (broker.h) the bytes before it and a '}', put together in *tmp. NULL on no memory. */
static const char *original(const struct bq_msg *msg, const struct bq_outcome *out,
                            bq_buf *tmp, size_t *len)
{
    size_t off = out->body <= msg->len ? out->body : 0;
    if (out->body_end > off && out->body_end < msg->len) {
        bq_buf_append(tmp, msg->data + off, out->body_end - off);
        bq_buf_putc(tmp, '}');
        *len = tmp->len;
        return tmp->oom ? NULL : tmp->p;
    }
    *len = msg->len - off;
    return msg->data + off;
}

/* Dead-letters msg (its original part) with the outcome's reason. */
static void bury(bq_worker *w, const struct bq_msg *msg, const struct bq_outcome *out,
                 const char *tid)
{
    bq_buf tmp = BQ_BUF_INIT;
    size_t olen;
    const char *orig = original(msg, out, &tmp, &olen);
    struct bq_dlq_info info = {
        out->header,
        out->reason ? out->reason : "unknown",
        out->kind == BQ_OUTCOME_MALFORMED ? NULL : out->json,
        tid,
        out->type[0] ? out->type : NULL,
        bq_worker_queue_of(w, msg->q),
        w->conf.id,
        out->kind == BQ_OUTCOME_MALFORMED ? 0 : out->attempt,
        msg->oversize > 0 ? msg->oversize
                          : (w->conf.who.max_size > 0 && msg->len > w->conf.who.max_size
                                 ? msg->len
                                 : 0),
    };
    struct bq_msg entry = {NULL, 0, 0, false, 0};
    bq_err err;
    bq_status st = orig == NULL ? bq_err_set(&err, BQ_ENOMEM, "dead-letter: out of memory")
                                : bq_dlq_entry(&info, orig, olen, &entry);
    bq_buf_free(&tmp);
    bool held = false;
    if (st == BQ_OK)
        WITH_RETRIES(w, "dead_letter", tid,
                     w->broker->ops->bury(w->broker, &w->conf.who, msg, slice_of(&entry), &held,
                                          &err));
    bq_free(entry.data);
    if (st != BQ_OK) {
        write_failed(w, "dead_letter", tid, msg);
    } else if (!held) {
        lease_lost(w, "dead_letter", tid);
    } else {
        atomic_fetch_add(&w->count.dead, 1);
        /* The entry's count (attempts made: 0 for a message no handler ran), so the log
         * line and the entry agree. */
        char n[16];
        snprintf(n, sizeof n, "%d", info.attempts);
        bq_log(BQ_LOG_WARN, "dead_lettered", "task_id", tid, "queue", info.queue, "worker",
               w->conf.id, "#attempts", n, "reason", info.reason, NULL);
    }
}

/* Dead-letters, from the dispatcher, the messages of a fetched batch longer than
 * max_message_size (most arrive as their first bytes only, see broker.h), and removes them
 * from the batch: they never reach a slot, the ring or a handback. Memory a large message
 * took is given back to the system. */
static void set_aside_large(bq_worker *w, struct bq_batch *batch)
{
    size_t max = w->conf.who.max_size, kept = 0, largest = 0;
    for (size_t i = 0; i < batch->n; i++) {
        struct bq_msg *m = &batch->msgs[i];
        size_t size = m->oversize > 0 ? m->oversize : m->len;
        if (max == 0 || size <= max) {
            batch->msgs[kept++] = *m;
            continue;
        }
        char reason[128];
        snprintf(reason, sizeof reason, "message too large (%zu bytes; max_message_size is %zu)",
                 size, max);
        struct bq_outcome out;
        memset(&out, 0, sizeof out);
        out.kind = BQ_OUTCOME_MALFORMED;
        out.reason = reason;
        atomic_fetch_add(&w->count.malformed, 1);
        bq_log(BQ_LOG_WARN, "malformed", "queue", bq_worker_queue_of(w, m->q), "worker", w->conf.id,
               "reason", reason, NULL);
        bury(w, m, &out, NULL);
        largest = m->len > largest ? m->len : largest;
        bq_free(m->data);
    }
    batch->n = kept;
    if (largest >= TRIM_AFTER)
        malloc_trim(0);
}

/* A task of ours waits in a delayed set for `delay` seconds: bring the dispatcher's next
 * promotion forward so it is queued again on time, waking a blocked fetch if it would sleep
 * past the due time. */
static void promote_by(bq_worker *w, double delay)
{
    double due = bq_now_mono() + delay;
    pthread_mutex_lock(&w->mu);
    bool wake = false;
    w->fetch.delayed_waiting = true;
    if (due < w->fetch.next_promote) {
        w->fetch.next_promote = due;
        wake = w->fetch.blocking && w->fetch.block_until > due;
    }
    pthread_mutex_unlock(&w->mu);
    if (wake)
        w->broker->ops->interrupt(w->broker);
}

/* Queues msg again in out->delay seconds with out->header (a retry; with `deferral`, a
 * rate-limited task's, counted and logged as such). */
static void retry(bq_worker *w, const struct bq_msg *msg, const struct bq_outcome *out,
                  const char *tid, bool deferral)
{
    bq_buf tmp = BQ_BUF_INIT, next = BQ_BUF_INIT;
    size_t olen;
    const char *orig = original(msg, out, &tmp, &olen);
    const char *header = out->header ? out->header : "#bq {}";
    if (orig != NULL && bq_bindu_form(orig, olen) && strncmp(header, "#bq {", 5) == 0) {
        /* Bindu's format keeps the header inside, where Bindu's worker ignores it. */
        bq_buf_append(&next, orig, olen - 1);
        bq_buf_puts(&next, BQ_EMBED_KEY);
        bq_buf_puts(&next, header + 4);
        bq_buf_putc(&next, '}');
    } else if (orig != NULL) {
        bq_buf_puts(&next, header);
        bq_buf_putc(&next, '\n');
        bq_buf_append(&next, orig, olen);
    }
    bq_buf_free(&tmp);
    bq_err err;
    bq_status st = orig == NULL || next.oom ? bq_err_set(&err, BQ_ENOMEM, "retry: out of memory")
                                            : BQ_OK;
    bool held = false;
    if (st == BQ_OK)
        WITH_RETRIES(w, "retry", tid,
                     w->broker->ops->retry(w->broker, &w->conf.who, msg,
                                           (struct bq_slice){next.p, next.len}, out->delay,
                                           &held, &err));
    bq_buf_free(&next);
    if (st != BQ_OK) {
        write_failed(w, "retry", tid, msg);
        return;
    }
    if (!held) {
        lease_lost(w, "retry", tid);
        return;
    }
    char n[16], d[32];
    snprintf(n, sizeof n, "%d", out->attempt);
    snprintf(d, sizeof d, "%.3f", out->delay);
    if (deferral) {
        atomic_fetch_add(&w->count.rate_limited, 1);
        if (bq_log_enabled(BQ_LOG_DEBUG))
            bq_log(BQ_LOG_DEBUG, "rate_limited", "task_id", tid, "queue",
                   bq_worker_queue_of(w, msg->q), "worker", w->conf.id, "#delay_s", d, NULL);
    } else {
        atomic_fetch_add(&w->count.retried, 1);
        bq_log(BQ_LOG_INFO, "retry_scheduled", "task_id", tid, "queue",
               bq_worker_queue_of(w, msg->q), "worker", w->conf.id, "#attempt", n, "#delay_s", d,
               "error", out->reason, NULL);
    }
    promote_by(w, out->delay);
}

static bool handback(bq_worker *w, const struct bq_msg *msgs, size_t n, const char *why)
{
    if (n == 0)
        return true;
    size_t count = 0;
    bq_err err;
    bq_status st;
    WITH_RETRIES(w, "hand_back", (const char *)NULL,
                 w->broker->ops->handback(w->broker, &w->conf.who, msgs, n, &count, &err));
    char k[24];
    snprintf(k, sizeof k, "%zu", count);
    if (st == BQ_OK) {
        atomic_fetch_add(&w->count.handed_back, (long long)count);
        bq_log(BQ_LOG_INFO, "handed_back", "queue", w->conf.queue, "worker", w->conf.id,
               "#count", k, "reason", why, NULL);
    } else {
        for (size_t i = 0; i < n; i++)
            write_failed(w, "hand_back", NULL, &msgs[i]);
    }
    return st == BQ_OK;
}

/* Acknowledges one message now, in a round trip of its own (the dispatcher is blocked in a
 * fetch, or stopping). */
static void ack_direct(bq_worker *w, struct bq_msg *msg, const char *tid)
{
    size_t acked = 0;
    bq_err err;
    bq_status st;
    WITH_RETRIES(w, "ack", tid, w->broker->ops->ack(w->broker, &w->conf.who, msg, 1, &acked, &err));
    if (st == BQ_OK && acked == 0)
        lease_lost(w, "ack", tid);
    else if (st != BQ_OK)
        write_failed(w, "ack", tid, msg);
}

/* Whether msg's ack can ride along with the dispatcher's next fetch: then it is taken into the
 * pending acks (its ownership moves there). Called with w->mu held. */
static bool ack_deferred(bq_worker *w, struct bq_msg *msg)
{
    return !w->fetch.blocking && !w->life.stopping && bq_batch_take(&w->tasks.acks, *msg) == BQ_OK;
}

/* Acknowledges one message. Returns true if the message's ownership moved to the pending
 * acks (the dispatcher sends them with its next fetch); false if the caller still owns it.
 * At-most-once nothing is leased: only a message with a "#bq" header has something to
 * release, its seal (broker.h). */
static bool ack(bq_worker *w, struct bq_msg *msg, const char *tid)
{
    if (w->conf.who.delivery != BQ_AT_LEAST_ONCE) {
        if (!bq_msg_has_header(msg))
            return false;
    } else {
        pthread_mutex_lock(&w->mu);
        bool moved = ack_deferred(w, msg);
        pthread_mutex_unlock(&w->mu);
        if (moved)
            return true;
    }
    ack_direct(w, msg, tid);
    return false;
}

/* An acknowledgement from finish: left to the caller when it asked (want_ack) and the
 * delivery leases, else made now. */
static bool settle_ack(bq_worker *w, struct bq_msg *msg, const char *tid, bool *want_ack)
{
    if (want_ack != NULL && w->conf.who.delivery == BQ_AT_LEAST_ONCE) {
        *want_ack = true;
        return false;
    }
    return ack(w, msg, tid);
}

/* The outcomes' names, in the order of enum bq_outcome_kind: the contract with the Lua side,
 * which reads them as core.OUTCOME (l_engine.c). */
static const char *const outcome_names[] = {
    "completed", "skipped", "retry", "dead", "dropped", "malformed", "interrupted", "deferred",
    "canceled", "paused", "waiting", "pending",
};
_Static_assert(sizeof outcome_names / sizeof outcome_names[0] == BQ_OUTCOME_COUNT,
               "one name per outcome");

const double bq_hist_bounds[BQ_HIST_N] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
                                           0.1,    0.5,   1.0,    10.0,  60.0, INFINITY};

/* v is in [0, BQ_PICKUP_MAX] (a duration from the monotonic clock, or an accepted pickup),
 * so v * 1e6 fits; the sum saturates rather than wrap, and so never goes negative. */
static void observe(atomic_llong *buckets, atomic_llong *sum_us, double v)
{
    int i = 0;
    while (i < BQ_HIST_N - 1 && v > bq_hist_bounds[i])
        i++;
    atomic_fetch_add(&buckets[i], 1);
    long long us = v > 0 ? (long long)(v * 1e6) : 0;
    long long cur = atomic_load(sum_us), next;
    do {
        next = cur > LLONG_MAX - us ? LLONG_MAX : cur + us;
    } while (!atomic_compare_exchange_weak(sum_us, &cur, next));
}

bool bq_pickup_accept(double *v)
{
    if (!(*v >= -BQ_PICKUP_SKEW && *v <= BQ_PICKUP_MAX)) /* NaN fails both */
        return false;
    if (*v < 0)
        *v = 0;
    return true;
}

static void snapshot(atomic_llong *buckets, atomic_llong *sum_us, struct bq_hist *h)
{
    long long run = 0;
    for (int i = 0; i < BQ_HIST_N; i++) {
        run += atomic_load(&buckets[i]);
        h->counts[i] = run;
    }
    h->sum = (double)atomic_load(sum_us) / 1e6;
}

void bq_worker_histograms(bq_worker *w, struct bq_hist *duration, struct bq_hist *pickup)
{
    snapshot(w->hist.dur, &w->hist.dur_sum_us, duration);
    snapshot(w->hist.pick, &w->hist.pick_sum_us, pickup);
}

bool bq_worker_running(bq_worker *w)
{
    pthread_mutex_lock(&w->mu);
    bool r = w->life.started && !w->life.stopping;
    pthread_mutex_unlock(&w->mu);
    return r;
}

/* Carries out a slot's decision about msg. Returns true if msg's ownership moved on. With
 * want_ack, an at-least-once ack is left to the caller instead (*want_ack set): it takes it
 * into the pending acks in the critical section it enters anyway (slot_main). */
static bool finish(bq_worker *w, struct bq_msg *msg, struct bq_outcome *out, double duration,
                   bool *want_ack)
{
    if (out->kind != BQ_OUTCOME_DEFERRED && out->kind != BQ_OUTCOME_MALFORMED)
        observe(w->hist.dur, &w->hist.dur_sum_us, duration);
    if (!isnan(out->pickup)) {
        double pickup = out->pickup;
        if (bq_pickup_accept(&pickup))
            observe(w->hist.pick, &w->hist.pick_sum_us, pickup);
        else
            atomic_fetch_add(&w->count.pickup_rejected, 1);
    }
    const char *trace = out->trace_id[0] ? out->trace_id : NULL;
    char ms[32] = "";
    if (out->kind != BQ_OUTCOME_COMPLETED || bq_log_enabled(BQ_LOG_INFO))
        snprintf(ms, sizeof ms, "%.3f", duration * 1000.0);
    const char *tid = out->task_id[0] ? out->task_id : NULL;
    const char *type = out->type[0] ? out->type : NULL;
    const char *queue = bq_worker_queue_of(w, msg->q);
    bool moved = false;
    switch (out->kind) {
    case BQ_OUTCOME_COMPLETED:
        atomic_fetch_add(&w->count.completed, 1);
        bq_log(BQ_LOG_INFO, "completed", "task_id", tid, "trace_id", trace, "type", type,
               "queue", queue, "worker", w->conf.id, "#duration_ms", ms, NULL);
        moved = settle_ack(w, msg, tid, want_ack);
        break;
    case BQ_OUTCOME_SKIPPED:
        atomic_fetch_add(&w->count.skipped, 1);
        bq_log(BQ_LOG_INFO, "skipped", "task_id", tid, "trace_id", trace, "type", type,
               "queue", queue, "worker", w->conf.id, "reason", out->reason, NULL);
        moved = settle_ack(w, msg, tid, want_ack);
        break;
    case BQ_OUTCOME_DROPPED:
        atomic_fetch_add(&w->count.failed, 1);
        atomic_fetch_add(&w->count.dropped, 1);
        bq_log(BQ_LOG_WARN, "dropped", "task_id", tid, "trace_id", trace, "type", type,
               "queue", queue, "worker", w->conf.id, "error", out->reason, NULL);
        moved = settle_ack(w, msg, tid, want_ack);
        break;
    case BQ_OUTCOME_RETRY:
        atomic_fetch_add(&w->count.failed, 1);
        bq_log(BQ_LOG_WARN, "failed", "task_id", tid, "trace_id", trace, "type", type,
               "queue", queue, "worker", w->conf.id, "#duration_ms", ms, "error", out->reason,
               NULL);
        retry(w, msg, out, tid, false);
        break;
    case BQ_OUTCOME_DEAD:
        atomic_fetch_add(&w->count.failed, 1);
        bq_log(BQ_LOG_WARN, "failed", "task_id", tid, "trace_id", trace, "type", type,
               "queue", queue, "worker", w->conf.id, "#duration_ms", ms, "error", out->reason,
               NULL);
        bury(w, msg, out, tid);
        break;
    case BQ_OUTCOME_MALFORMED:
        atomic_fetch_add(&w->count.malformed, 1);
        bq_log(BQ_LOG_WARN, "malformed", "task_id", tid, "queue", queue, "worker", w->conf.id,
               "reason", out->reason, NULL);
        bury(w, msg, out, tid);
        break;
    case BQ_OUTCOME_INTERRUPTED:
    case BQ_OUTCOME_PENDING: /* never reaches here (slot_main); if it did: it runs again */
        handback(w, msg, 1, out->reason ? out->reason : "interrupted");
        break;
    case BQ_OUTCOME_CANCELED:
        atomic_fetch_add(&w->count.canceled, 1);
        bq_log(BQ_LOG_INFO, "canceled", "task_id", tid, "trace_id", trace, "type", type,
               "queue", queue, "worker", w->conf.id, "#duration_ms", ms, "reason", out->reason,
               NULL);
        moved = settle_ack(w, msg, tid, want_ack);
        break;
    case BQ_OUTCOME_PAUSED:
        atomic_fetch_add(&w->count.paused, 1);
        bq_log(BQ_LOG_INFO, "paused", "task_id", tid, "trace_id", trace, "type", type,
               "queue", queue, "worker", w->conf.id, "#duration_ms", ms, NULL);
        moved = settle_ack(w, msg, tid, want_ack);
        break;
    case BQ_OUTCOME_WAITING:
        atomic_fetch_add(&w->count.waiting, 1);
        bq_log(BQ_LOG_INFO, "waiting", "task_id", tid, "trace_id", trace, "type", type,
               "queue", queue, "worker", w->conf.id, "#duration_ms", ms, "state", out->state, NULL);
        moved = settle_ack(w, msg, tid, want_ack);
        break;
    case BQ_OUTCOME_DEFERRED:
        /* Not admitted by the rate limiter: queued again for when it would be. */
        retry(w, msg, out, tid, true);
        break;
    }
    if (w->conf.want_results) {
        struct bq_event ev = {BQ_EVENT_RESULT, *out, duration};
        push_event(w, &ev); /* takes the strings */
        memset(out, 0, sizeof *out);
    } else {
        outcome_free(out);
    }
    return moved;
}

/* ---- Slot threads -------------------------------------------------------------------------- */

/* A stop came while slot s held a chunk: what prepare did not settle goes back to the queue,
 * unhandled, like the ring's messages; the settled ones stay to be handled (each only
 * reports its fate). Called and returns with w->mu held. Returns true if the chunk is
 * empty now. */
static bool give_back_chunk(bq_worker *w, struct slot *s)
{
    struct bq_msg back[BQ_CHUNK_MAX];
    int nback = 0, keep = s->chunk_at;
    for (int i = s->chunk_at; i < s->chunk_n; i++) {
        if (s->settled[i])
            s->chunk[keep++] = s->chunk[i]; /* its settled flag moves with it */
        else
            back[nback++] = s->chunk[i];
    }
    for (int i = s->chunk_at; i < keep; i++)
        s->settled[i] = true;
    s->chunk_n = keep;
    if (nback > 0) {
        w->tasks.inflight -= nback;
        pthread_cond_broadcast(&w->cv_space);
        pthread_mutex_unlock(&w->mu);
        handback(w, back, (size_t)nback, "shutdown: not started");
        for (int i = 0; i < nback; i++)
            bq_free(back[i].data);
        pthread_mutex_lock(&w->mu);
    }
    return s->chunk_at == s->chunk_n;
}

/* Slot s's pending outcomes (bq_slot_ops.flush), then each message finished as usual. The
 * flush counts as running, so a shutdown waits for it like for a handler. Called with w->mu
 * held; returns true with it held, or false, without it, if the shutdown abandoned the slot
 * meanwhile (its messages stay leased: the reaper gives them back). */
static bool flush_pending(bq_worker *w, struct slot *s)
{
    int n = s->npend;
    struct bq_msg msgs[BQ_CHUNK_MAX];
    struct bq_outcome outs[BQ_CHUNK_MAX];
    double took[BQ_CHUNK_MAX];
    char ids[BQ_CHUNK_MAX][BQ_MAX_ID_LEN + 1];
    memcpy(msgs, s->pend, (size_t)n * sizeof *msgs);
    memcpy(took, s->pend_took, (size_t)n * sizeof *took);
    for (int i = 0; i < n; i++) {
        memcpy(ids[i], s->pend_out[i].task_id, sizeof ids[i]);
        outcome_free(&s->pend_out[i]);
        memset(&outs[i], 0, sizeof outs[i]);
        outs[i].attempt = 1;
        outs[i].pickup = NAN;
    }
    s->npend = 0;
    s->running = true;
    w->tasks.running++;
    pthread_mutex_unlock(&w->mu);
    w->conf.ops.flush(s->state, msgs, outs, n);
    if (atomic_load(&w->life.abandoned)) { /* the process is leaving: touch nothing else */
        for (int i = 0; i < n; i++)
            outcome_free(&outs[i]);
        return false;
    }
    bool moved[BQ_CHUNK_MAX];
    for (int i = 0; i < n; i++) {
        /* A flush that decided nothing for it, or answered for another task: it runs again. */
        if (outs[i].kind == BQ_OUTCOME_PENDING || strcmp(outs[i].task_id, ids[i]) != 0) {
            outcome_free(&outs[i]);
            outs[i].kind = BQ_OUTCOME_INTERRUPTED;
            memcpy(outs[i].task_id, ids[i], sizeof outs[i].task_id);
            outs[i].reason = bq_strdup("its stored state could not be written with its chunk");
        }
        moved[i] = finish(w, &msgs[i], &outs[i], took[i], NULL);
    }
    pthread_mutex_lock(&w->mu);
    s->running = false;
    w->tasks.running--;
    w->tasks.inflight -= n;
    if (w->tasks.inflight <= w->tasks.wake_at || w->life.stopping)
        pthread_cond_broadcast(&w->cv_space);
    for (int i = 0; i < n; i++) {
        if (!moved[i])
            bq_free(msgs[i].data);
    }
    return true;
}

static void *slot_main(void *arg)
{
    struct slot *s = arg;
    bq_worker *w = s->w;
    bq_err err;
    bq_err_clear(&err);
    bq_status st = w->conf.ops.init(w->conf.ud, s->index, &s->ctl, &s->state, &err);
    pthread_mutex_lock(&w->mu);
    w->life.inits_done++;
    if (st != BQ_OK && w->life.init_failures++ == 0)
        w->life.init_err = err;
    pthread_cond_broadcast(&w->cv_init);
    /* Wait for the verdict of the start: every init done, none failed. */
    while (st == BQ_OK && !w->life.stopping && !w->life.started)
        pthread_cond_wait(&w->cv_task, &w->mu);
    pthread_mutex_unlock(&w->mu);

    /* The lock is taken twice a task (and once more by a deferred ack): the bookkeeping of
     * one task and the taking of the next share a critical section. At concurrency 4 on two
     * cores, four acquisitions a task were a fifth of the worker's time in futex calls. */
    pthread_mutex_lock(&w->mu);
    while (st == BQ_OK) {
        if (s->npend > 0 && (s->chunk_at == s->chunk_n || w->life.stopping) && !flush_pending(w, s))
            return NULL; /* abandoned: the worker is left allocated for us */
        if (s->chunk_at == s->chunk_n) {
            s->chunk_at = s->chunk_n = 0;
            while (w->tasks.ring_n == 0 && !w->life.dispatcher_done)
                pthread_cond_wait(&w->cv_task, &w->mu);
            if (w->tasks.ring_n == 0)
                break;
            /* A deep queue of quick tasks: take a fair share of the ring as a chunk, so
             * prepare can make one round trip for all of it. */
            int k = 1;
            if (w->conf.ops.prepare != NULL && w->fetch.deep &&
                w->fetch.ewma_handle < BATCH_MAX_HANDLE) {
                k = w->tasks.ring_n / w->conf.concurrency;
                k = k < 1 ? 1 : k > BQ_CHUNK_MAX ? BQ_CHUNK_MAX : k;
            }
            for (int i = 0; i < k; i++) {
                s->chunk[i] = w->tasks.ring[w->tasks.ring_head];
                s->settled[i] = false;
                w->tasks.ring_head = (w->tasks.ring_head + 1) % w->conf.capacity;
                w->tasks.ring_n--;
            }
            s->chunk_n = k;
            if (k > 1) {
                pthread_mutex_unlock(&w->mu);
                w->conf.ops.prepare(s->state, s->chunk, k, s->settled);
                pthread_mutex_lock(&w->mu);
            }
        }
        if (w->life.stopping && give_back_chunk(w, s))
            continue;
        struct bq_msg msg = s->chunk[s->chunk_at++];
        s->current = msg;
        s->running = true;
        w->tasks.running++;
        pthread_mutex_unlock(&w->mu);

        struct bq_outcome out;
        memset(&out, 0, sizeof out);
        out.attempt = 1;
        out.pickup = NAN;
        double t0 = bq_now_mono();
        w->conf.ops.handle(s->state, &msg, &out);

        /* Set (under the lock) when the shutdown handed this task back at its deadline. */
        bool abandoned = atomic_load(&w->life.abandoned);
        bool moved = false;
        /* Its stored state is written with its chunk's (flush_pending): kept in flight. */
        bool pending = out.kind == BQ_OUTCOME_PENDING && !abandoned && w->conf.ops.flush != NULL &&
                       s->npend < BQ_CHUNK_MAX;
        if (out.kind == BQ_OUTCOME_PENDING && !pending && !abandoned) {
            outcome_free(&out);
            out.kind = BQ_OUTCOME_INTERRUPTED; /* handed back: it runs again */
            out.reason = bq_strdup("its outcome was left pending");
        }
        /* An ack is taken into the pending acks below, in the critical section the slot
         * enters anyway: one lock a task, not two. tid is kept for a direct ack's logs. */
        bool want_ack = false;
        char tid[BQ_MAX_ID_LEN + 1];
        snprintf(tid, sizeof tid, "%s", out.task_id);
        if (abandoned) /* the process is leaving */
            outcome_free(&out);
        else if (!pending)
            moved = finish(w, &msg, &out, bq_now_mono() - t0, &want_ack);

        double took = bq_now_mono() - t0;
        bool trim = !moved && !pending && msg.len >= TRIM_AFTER;
        pthread_mutex_lock(&w->mu);
        w->fetch.ewma_handle = w->fetch.ewma_handle * 0.9 + took * 0.1;
        s->running = false;
        s->current = (struct bq_msg){NULL, 0, 0, false, 0};
        w->tasks.running--;
        if (pending) {
            s->pend[s->npend] = msg;
            s->pend_out[s->npend] = out;
            s->pend_took[s->npend++] = took;
            moved = true; /* the pending list owns it */
        } else {
            w->tasks.inflight--;
        }
        bool ack_now = want_ack && !(moved = ack_deferred(w, &msg));
        atomic_store(&s->ctl.interrupt, 0);
        bq_slot_set_task(&s->ctl, NULL);
        if (w->tasks.inflight <= w->tasks.wake_at || w->life.stopping)
            pthread_cond_signal(&w->cv_space);
        if (abandoned || trim || ack_now) {
            pthread_mutex_unlock(&w->mu);
            if (ack_now) /* the dispatcher waits in a fetch, or stops: acknowledge it now */
                ack_direct(w, &msg, tid[0] ? tid : NULL);
            if (!moved)
                bq_free(msg.data);
            if (trim)
                malloc_trim(0); /* a large message's pages go back to the system now */
            if (abandoned)
                return NULL; /* the worker is left allocated for us; touch nothing else */
            pthread_mutex_lock(&w->mu);
        } else if (!moved) {
            bq_free(msg.data);
        }
    }
    pthread_mutex_unlock(&w->mu);
    /* A failed init cleans up after itself; only a slot that started is finalised. */
    if (st == BQ_OK && w->conf.ops.fini != NULL)
        w->conf.ops.fini(s->state);
    pthread_mutex_lock(&w->mu);
    w->life.slots_alive--;
    s->exited = true;
    pthread_cond_broadcast(&w->cv_space);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* ---- Heartbeat ----------------------------------------------------------------------------
 * The lease is renewed every lease/3. While the dispatcher fetches, its round trips carry
 * the renewal; this thread renews it when they do not (every slot busy with a long handler,
 * or Redis slow to answer), so a handler blocked for minutes keeps its task. */

/* Moves the tasks of workers whose lease ran out back to the queue. */
static void reap_dead(bq_worker *w, struct bq_batch *dead)
{
    for (size_t i = 0; i < dead->n; i++) {
        long long recovered = -1;
        bq_err err;
        const char *queue = bq_worker_queue_of(w, dead->msgs[i].q);
        bq_status st = w->broker->ops->reap(w->broker, queue, dead->msgs[i].data, &recovered,
                                            &err);
        if (st != BQ_OK) {
            atomic_fetch_add(&w->count.redis_errors, 1);
            bq_log(BQ_LOG_ERROR, "redis_error", "op", "reap", "queue", w->conf.queue, "worker",
                   w->conf.id, "error", err.msg, "code", bq_status_name(st), NULL);
        } else if (recovered >= 0) {
            char n[24];
            snprintf(n, sizeof n, "%lld", recovered);
            atomic_fetch_add(&w->count.reaped, recovered);
            bq_log(BQ_LOG_WARN, "reaped", "queue", queue, "worker", w->conf.id, "dead_worker",
                   dead->msgs[i].data, "#recovered", n, NULL);
        }
    }
    bq_batch_clear(dead);
}

static void *heartbeat_main(void *arg)
{
    bq_worker *w = arg;
    int failures = 0;
    struct bq_batch dead = {NULL, 0, 0};
    double period = w->conf.lease / 3;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        double due = w->lease.last_beat + period;
        pthread_mutex_unlock(&w->mu);
        double now = bq_now_mono();
        if (now >= due) {
            bq_err err;
            bq_status st = w->broker->ops->heartbeat(w->broker, &w->conf.who, w->conf.lease,
                                                     &dead, &err);
            if (st == BQ_OK) {
                failures = 0;
                pthread_mutex_lock(&w->mu);
                if (w->lease.last_beat < now)
                    w->lease.last_beat = now;
                w->lease.registered = true;
                pthread_mutex_unlock(&w->mu);
                reap_dead(w, &dead);
                due = now + period;
            } else {
                atomic_fetch_add(&w->count.redis_errors, 1);
                bq_log(BQ_LOG_ERROR, "redis_error", "op", "heartbeat", "queue", w->conf.queue,
                       "worker", w->conf.id, "error", err.msg, "code", bq_status_name(st), NULL);
                due = now + bq_backoff_delay(failures++, RECONNECT_BASE, RECONNECT_CAP,
                                             BQ_JITTER_EQUAL, bq_random_unit());
            }
        }
        pthread_mutex_lock(&w->heartbeat.mu);
        double wait = due - bq_now_mono();
        if (!w->heartbeat.stop && wait > 0)
            bq_cond_wait_for(&w->heartbeat.cv, &w->heartbeat.mu, wait);
        bool stop = w->heartbeat.stop;
        pthread_mutex_unlock(&w->heartbeat.mu);
        if (stop)
            break;
    }
    bq_batch_free(&dead);
    return NULL;
}

static void stop_heartbeat(bq_worker *w)
{
    if (!w->heartbeat.started)
        return;
    pthread_mutex_lock(&w->heartbeat.mu);
    w->heartbeat.stop = true;
    pthread_cond_broadcast(&w->heartbeat.cv);
    pthread_mutex_unlock(&w->heartbeat.mu);
    pthread_join(w->heartbeat.thread, NULL);
    w->heartbeat.started = false;
}

/* ---- Dispatcher ---------------------------------------------------------------------------- */

/* After a fetch whose reply was lost, Redis may have moved messages into this worker's
 * in-flight list that the worker never received; its own lease keeps them from being
 * reaped while it lives. Compares the in-flight lists with what the worker holds (waiting,
 * running, waiting for their ack) and hands the rest back. The in-flight lists are read
 * first: a message finished meanwhile is no longer there when the hand-back looks for it
 * (the hand-back moves only messages it finds). Dispatcher thread. Returns false when the
 * check could not be made, so the caller tries again after its next fetch. */
static bool recover_orphans(bq_worker *w)
{
    struct bq_batch wip = {NULL, 0, 0};
    bq_err err;
    if (w->broker->ops->held(w->broker, &w->conf.who, &wip, &err) != BQ_OK) {
        bq_batch_free(&wip);
        bq_log(BQ_LOG_WARN, "orphan_check_failed", "queue", w->conf.queue, "worker", w->conf.id,
               "error", err.msg, NULL);
        return false;
    }
    bool *taken = bq_calloc(wip.n ? wip.n : 1, sizeof *taken);
    if (taken == NULL) {
        bq_batch_free(&wip);
        return false;
    }
    pthread_mutex_lock(&w->mu);
    /* Each message held accounts for one identical entry. */
    size_t nheld = (size_t)w->tasks.ring_n + (size_t)w->conf.concurrency + w->tasks.acks.n;
    for (size_t h = 0; h < nheld; h++) {
        const struct bq_msg *m = NULL;
        if (h < (size_t)w->tasks.ring_n) {
            m = &w->tasks.ring[(w->tasks.ring_head + (int)h) % w->conf.capacity];
        } else if (h < (size_t)w->tasks.ring_n + (size_t)w->conf.concurrency) {
            const struct slot *s = &w->slots[h - (size_t)w->tasks.ring_n];
            m = s->running ? &s->current : NULL;
        } else {
            m = &w->tasks.acks.msgs[h - (size_t)w->tasks.ring_n - (size_t)w->conf.concurrency];
        }
        for (size_t i = 0; m != NULL && m->data != NULL && i < wip.n; i++) {
            if (!taken[i] && wip.msgs[i].q == m->q && wip.msgs[i].len == m->len &&
                memcmp(wip.msgs[i].data, m->data, m->len) == 0) {
                taken[i] = true;
                break;
            }
        }
    }
    pthread_mutex_unlock(&w->mu);
    size_t n = 0;
    for (size_t i = 0; i < wip.n; i++) {
        if (!taken[i])
            wip.msgs[n++] = wip.msgs[i];
        else
            bq_free(wip.msgs[i].data);
    }
    wip.n = n;
    bq_free(taken);
    bool ok = true;
    if (n > 0) {
        char count[24];
        snprintf(count, sizeof count, "%zu", n);
        bq_log(BQ_LOG_WARN, "orphans_recovered", "queue", w->conf.queue, "worker", w->conf.id,
               "#count", count, "reason", "a fetch reply was lost", NULL);
        ok = handback(w, wip.msgs, n, "a fetch reply was lost");
    }
    bq_batch_free(&wip);
    return ok;
}

/* Acknowledges the pending acks directly (shutdown). */
static void flush_acks(bq_worker *w)
{
    pthread_mutex_lock(&w->mu);
    struct bq_batch acks = w->tasks.acks;
    memset(&w->tasks.acks, 0, sizeof w->tasks.acks);
    pthread_mutex_unlock(&w->mu);
    if (acks.n > 0) {
        size_t acked = 0;
        bq_err err;
        bq_status st;
        WITH_RETRIES(w, "ack", (const char *)NULL,
                     w->broker->ops->ack(w->broker, &w->conf.who, acks.msgs, acks.n, &acked, &err));
        if (st != BQ_OK)
            bq_log(BQ_LOG_ERROR, "write_failed", "op", "ack", "queue", w->conf.queue, "worker",
                   w->conf.id, "outcome", "the tasks stay leased and are redelivered later", NULL);
    }
    bq_batch_free(&acks);
}

/* The shutdown: hand back what has not started, give running handlers until the deadline,
 * interrupt them, and finally abandon the stuck ones (their tasks handed back). */
static void shut_down(bq_worker *w)
{
    pthread_mutex_lock(&w->mu);
    size_t n = (size_t)w->tasks.ring_n;
    struct bq_msg *left = bq_calloc(n ? n : 1, sizeof *left);
    for (size_t i = 0; left != NULL && i < n; i++) {
        left[i] = w->tasks.ring[w->tasks.ring_head];
        w->tasks.ring_head = (w->tasks.ring_head + 1) % w->conf.capacity;
    }
    if (left != NULL) {
        w->tasks.ring_n = 0;
        w->tasks.inflight -= (int)n;
    }
    pthread_mutex_unlock(&w->mu);
    if (left != NULL && n > 0) {
        handback(w, left, n, "shutdown: not started");
        for (size_t i = 0; i < n; i++)
            bq_free(left[i].data);
    }
    bq_free(left);
    flush_acks(w);

    pthread_mutex_lock(&w->mu);
    double deadline = w->life.stop_at + w->conf.shutdown_timeout;
    while (w->tasks.running > 0 && bq_now_mono() < deadline)
        bq_cond_wait_for(&w->cv_space, &w->mu, deadline - bq_now_mono());
    if (w->tasks.running > 0) {
        char k[16];
        snprintf(k, sizeof k, "%d", w->tasks.running);
        bq_log(BQ_LOG_WARN, "shutdown_deadline", "queue", w->conf.queue, "worker", w->conf.id,
               "#running", k, "outcome", "interrupting running handlers", NULL);
        for (int i = 0; i < w->conf.concurrency; i++) {
            if (w->slots[i].running)
                interrupt_slot(&w->slots[i]);
        }
        deadline = bq_now_mono() + SHUTDOWN_GRACE;
        while (w->tasks.running > 0 && bq_now_mono() < deadline)
            bq_cond_wait_for(&w->cv_space, &w->mu, deadline - bq_now_mono());
    }
    /* A stuck slot's task, what waits in its chunk (not settled) and what it handled with
     * its outcome pending go back. */
    size_t ncopies = 0, nstuck = 0;
    for (int i = 0; w->tasks.running > 0 && i < w->conf.concurrency; i++) {
        const struct slot *s = &w->slots[i];
        ncopies += s->running ? 1 + (size_t)(s->chunk_n - s->chunk_at) + (size_t)s->npend : 0;
    }
    struct bq_msg *copies = ncopies > 0 ? bq_calloc(ncopies, sizeof *copies) : NULL;
    if (w->tasks.running > 0) {
        w->life.abandoned = true;
        for (int i = 0; copies != NULL && i < w->conf.concurrency; i++) {
            struct slot *s = &w->slots[i];
            if (!s->running || s->current.data == NULL)
                continue;
            const struct bq_msg *m = &s->current;
            for (int j = s->chunk_at - 1; j < s->chunk_n + s->npend; j++) {
                if (j >= s->chunk_n)
                    m = &s->pend[j - s->chunk_n];
                else if (j >= s->chunk_at)
                    m = &s->chunk[j];
                if (j >= s->chunk_at && j < s->chunk_n && s->settled[j])
                    continue;
                copies[nstuck].data = bq_strndup(m->data, m->len);
                copies[nstuck].len = m->len;
                copies[nstuck].q = m->q;
                nstuck += copies[nstuck].data != NULL;
            }
        }
    }
    pthread_mutex_unlock(&w->mu);
    if (nstuck > 0) {
        char k[24];
        snprintf(k, sizeof k, "%zu", nstuck);
        bq_log(BQ_LOG_ERROR, "handlers_abandoned", "queue", w->conf.queue, "worker", w->conf.id,
               "#count", k, "outcome", "their tasks go back to the queue now", NULL);
        handback(w, copies, nstuck, "shutdown: handler did not stop");
        for (size_t i = 0; i < nstuck; i++)
            bq_free(copies[i].data);
    }
    bq_free(copies);
}

/* ---- Controls in the queue ----------------------------------------------------------------
 * Bindu's API has no control channel: it pushes cancel and pause into the queue, where they
 * wait behind the runs queued before them. A worker whose handler slots are all busy takes
 * nothing from the queue, so such a cancel would reach its running task only once a slot
 * freed. So while the dispatcher waits for a free slot, every CONTROL_SCAN seconds it asks
 * the broker for the cancels and pauses among the newest CONTROL_WINDOW entries of its
 * queues (controls-3.lua: one scan of a queue per period across all its workers, each
 * operation reported once) and delivers them at once: to its own slot running the task,
 * else on the control channel to whichever worker runs it. The operations stay queued and
 * are handled in their turn as well (the stored state, the notification handlers). */
#define CONTROL_SCAN 0.05
#define CONTROL_WINDOW 1000
/* The shared spacing of scans is a little shorter than each worker's period, so a worker's
 * scan is never refused because the previous one (maybe its own) has not quite expired. */
#define CONTROL_SPACING (CONTROL_SCAN * 0.8)

static void scan_controls(bq_worker *w)
{
    struct bq_batch found = {NULL, 0, 0};
    for (int q = 0; q < w->conf.who.nqueues; q++) {
        bq_err err;
        bq_err_clear(&err);
        bq_status st = w->broker->ops->controls(w->broker, w->conf.who.queues[q], CONTROL_SPACING,
                                                CONTROL_WINDOW, &found, &err);
        if (st != BQ_OK && !w->dispatcher.scan_warned) {
            /* Once: an ACL without EVALSHA would say it each time. */
            w->dispatcher.scan_warned = true;
            bq_log(BQ_LOG_WARN, "redis_error", "op", "controls", "queue", w->conf.who.queues[q],
                   "worker", w->conf.id, "error", err.msg, "code", bq_status_name(st), NULL);
        }
    }
    for (size_t i = 0; i < found.n; i++) {
        char id[BQ_MAX_ID_LEN + 1];
        enum bq_control op = bq_control_parse(found.msgs[i].data, found.msgs[i].len, id,
                                              sizeof id);
        if (op == BQ_CONTROL_NONE)
            continue;
        bool here = bq_worker_control(w, op, id);
        bq_err err;
        if (!here && bq_worker_publish(w, op, id, &err) != BQ_OK)
            bq_log(BQ_LOG_WARN, "redis_error", "op", "publish", "task_id", id, "worker", w->conf.id,
                   "error", err.msg, NULL);
        bq_log(BQ_LOG_INFO, "control_from_queue", "task_id", id, "op",
               op == BQ_CONTROL_CANCEL ? "cancel" : "pause", "worker", w->conf.id, "delivered",
               here ? "here" : "published", NULL);
    }
    bq_batch_free(&found);
}

/* Waits for room (cv_space, w->mu held); while it waits, looks for controls in the queue
 * every CONTROL_SCAN seconds (see above), however often the wait is woken. */
static void wait_space(bq_worker *w)
{
    if (w->broker->ops->controls == NULL || w->tasks.inflight == 0) {
        pthread_cond_wait(&w->cv_space, &w->mu);
        return;
    }
    double now = bq_now_mono();
    if (now < w->dispatcher.next_scan) {
        bq_cond_wait_for(&w->cv_space, &w->mu, w->dispatcher.next_scan - now);
        return;
    }
    w->dispatcher.next_scan = now + CONTROL_SCAN;
    pthread_mutex_unlock(&w->mu);
    scan_controls(w);
    pthread_mutex_lock(&w->mu);
}

static void *dispatcher_main(void *arg)
{
    bq_worker *w = arg;
    struct bq_batch batch = {NULL, 0, 0};
    struct bq_batch acks = {NULL, 0, 0};
    struct bq_fetch_res res;
    memset(&res, 0, sizeof res);
    int failures = 0;
    bool lease = w->conf.who.delivery == BQ_AT_LEAST_ONCE;
    bool unsure = false; /* a fetch that may have taken messages failed */
    bool busy = false;   /* the last round trip found work: the next one does not wait */
    int orphan_failures = 0; /* failed orphan checks in a row: the next waits longer */
    double orphan_at = 0;
    double period = w->conf.lease / 3;
    bq_err err;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        /* Adaptive batching: while the queue is deep, hold up to `batch` more messages and
         * fetch again only once half of them are done (the acks ride along then); when it
         * is shallow, fetch as soon as a slot is free or an ack waits, so an idle worker
         * still takes the first task at once. */
        int cap = w->fetch.deep ? w->conf.concurrency + w->conf.batch : w->conf.base_cap;
        if (w->fetch.deep) {
            int low = w->conf.concurrency + w->conf.batch / 2;
            w->tasks.wake_at = low;
            while (!w->life.stopping && w->tasks.inflight > low)
                wait_space(w);
            w->tasks.wake_at = INT_MAX;
        } else {
            while (!w->life.stopping && w->tasks.inflight >= cap && w->tasks.acks.n == 0)
                wait_space(w);
        }
        if (w->life.stopping) {
            pthread_mutex_unlock(&w->mu);
            break;
        }
        /* The last round's emptied array goes back for the slots' acks: no growing it
         * again, under the lock, every round. */
        struct bq_batch spare = acks;
        acks = w->tasks.acks;
        w->tasks.acks = spare;
        int want = cap - w->tasks.inflight;
        int seen_inflight = w->tasks.inflight;
        bool drain = w->life.drain;
        double now = bq_now_mono();
        struct bq_fetch_req req;
        memset(&req, 0, sizeof req);
        /* Until the lease is registered, a round trip only registers it: no task is ever
         * leased by a worker that nobody could reap. */
        req.max = !lease || w->lease.registered ? (size_t)(want > 0 ? want : 0) : 0;
        /* Wait only once a round trip found nothing: with a backlog every round trip takes a
         * batch at once (a blocking pop takes one message at a time), and acks made meanwhile
         * ride along instead of each taking its own round trip (see ack). */
        req.timeout = drain || busy || req.max == 0 ? 0 : w->conf.block_timeout;
        req.promote = now >= w->fetch.next_promote;
        if (req.timeout > 0 && !req.promote && w->fetch.next_promote - now < req.timeout)
            req.timeout = w->fetch.next_promote - now > 0.001 ? w->fetch.next_promote - now : 0.001;
        /* Renew the lease in this round trip if it would come due before it returns. */
        double prev_beat = w->lease.last_beat;
        if (lease && now + req.timeout >= w->lease.last_beat + period) {
            req.lease = w->conf.lease;
            w->lease.last_beat = now;
        }
        w->fetch.blocking = req.timeout > 0;
        w->fetch.block_until = now + req.timeout;
        pthread_mutex_unlock(&w->mu);

        req.nacks = acks.n;
        req.acks = acks.msgs;
        bq_err_clear(&err);
        bq_status st = w->broker->ops->fetch(w->broker, &w->conf.who, &req, &res, &batch, &err);

        pthread_mutex_lock(&w->mu);
        w->fetch.blocking = false;
        if (st != BQ_OK || req.nacks < acks.n) {
            /* The acks may not have been applied: keep them for the next round. */
            for (size_t i = 0; i < acks.n; i++) {
                if (bq_batch_take(&w->tasks.acks, acks.msgs[i]) != BQ_OK)
                    bq_free(acks.msgs[i].data);
            }
            acks.n = 0;
        }
        if (req.lease > 0 && !res.renewed && w->lease.last_beat == now)
            w->lease.last_beat = prev_beat; /* not renewed after all: the heartbeat thread will */
        if (res.renewed)
            w->lease.registered = true;
        if (st == BQ_OK && req.promote) {
            double wait = res.next_due >= 0 && res.next_due < w->conf.block_timeout
                              ? res.next_due : w->conf.block_timeout;
            w->fetch.next_promote = now + (wait > 0.001 ? wait : 0.001);
            w->fetch.delayed_waiting = res.next_due >= 0;
        }
        pthread_mutex_unlock(&w->mu);
        if (st == BQ_OK && res.acked < req.nacks) {
            for (size_t i = res.acked; i < req.nacks; i++)
                lease_lost(w, "ack", NULL);
        }
        bq_batch_clear(&acks);
        reap_dead(w, &res.dead);
        if (st != BQ_OK) {
            unsure = unsure || (lease && req.max > 0);
            atomic_fetch_add(&w->count.redis_errors, 1);
            bq_log(BQ_LOG_ERROR, "redis_error", "op", "fetch", "queue", w->conf.queue, "worker",
                   w->conf.id, "error", err.msg, "code", bq_status_name(st), NULL);
            double delay = bq_backoff_delay(failures++, RECONNECT_BASE, RECONNECT_CAP,
                                            BQ_JITTER_EQUAL, bq_random_unit());
            pthread_mutex_lock(&w->mu);
            if (!w->life.stopping)
                bq_cond_wait_for(&w->cv_space, &w->mu, delay);
            pthread_mutex_unlock(&w->mu);
            continue;
        }
        if (failures > 0) {
            char n[16];
            snprintf(n, sizeof n, "%d", failures);
            atomic_fetch_add(&w->count.reconnects, 1);
            bq_log(BQ_LOG_INFO, "reconnected", "queue", w->conf.queue, "worker", w->conf.id,
                   "#failed_attempts", n, "address", w->broker->address, NULL);
            failures = 0;
        }
        if (res.promoted > 0 && bq_log_enabled(BQ_LOG_DEBUG)) {
            char n[24];
            snprintf(n, sizeof n, "%zu", res.promoted);
            bq_log(BQ_LOG_DEBUG, "promoted", "queue", w->conf.queue, "worker", w->conf.id,
                   "#count", n, NULL);
        }
        atomic_fetch_add(&w->count.fetched, (long long)batch.n);
        busy = batch.n > 0;
        /* Deep when this round trip filled what it asked for, batching is on, and tasks are
         * quick: a worker whose handlers take long must not hold tasks that another worker
         * could run now. */
        pthread_mutex_lock(&w->mu);
        w->fetch.deep = w->conf.batch > 0 && req.max > 0 && batch.n == req.max &&
                  w->fetch.ewma_handle < BATCH_MAX_HANDLE;
        pthread_mutex_unlock(&w->mu);

        set_aside_large(w, &batch);
        pthread_mutex_lock(&w->mu);
        for (size_t i = 0; i < batch.n; i++) {
            int tail = (w->tasks.ring_head + w->tasks.ring_n) % w->conf.capacity;
            w->tasks.ring[tail] = batch.msgs[i];
            w->tasks.ring_n++;
            w->tasks.inflight++;
        }
        if (batch.n > 1)
            pthread_cond_broadcast(&w->cv_task);
        else if (batch.n == 1)
            pthread_cond_signal(&w->cv_task);
        if (batch.n == 0 && drain && req.max > 0) {
            /* Drained when nothing waits, nothing runs and no retry is due later. */
            if (w->tasks.inflight == 0 && w->tasks.acks.n == 0 && !w->fetch.delayed_waiting) {
                w->life.stopping = true;
                w->life.stop_at = bq_now_mono();
            } else {
                while (!w->life.stopping && w->tasks.inflight == seen_inflight &&
                       w->tasks.acks.n == 0) {
                    double until = w->fetch.next_promote - bq_now_mono();
                    if (until <= 0 || bq_cond_wait_for(&w->cv_space, &w->mu, until))
                        break;
                }
            }
        }
        pthread_mutex_unlock(&w->mu);
        batch.n = 0; /* the ring owns the messages now */
        /* A failed check is made again (or the orphans would stay), backing off from 1 s to
         * 30 s so a check that cannot succeed (an ACL without LRANGE) does not flood the log. */
        if (unsure && bq_now_mono() >= orphan_at) {
            if (recover_orphans(w)) {
                unsure = false;
                orphan_failures = 0;
            } else {
                orphan_at = bq_now_mono() + bq_backoff_delay(orphan_failures++, 1.0, 30.0,
                                                             BQ_JITTER_EQUAL, bq_random_unit());
            }
        }
    }
    bq_batch_free(&batch);
    bq_batch_free(&acks);
    bq_batch_free(&res.dead);

    shut_down(w);

    /* Let the slots leave (those not abandoned), then end the lease. */
    pthread_mutex_lock(&w->mu);
    w->life.dispatcher_done = true;
    pthread_cond_broadcast(&w->cv_task);
    while (!w->life.abandoned && w->life.slots_alive > 0)
        pthread_cond_wait(&w->cv_space, &w->mu);
    bool abandoned = w->life.abandoned;
    pthread_mutex_unlock(&w->mu);
    flush_acks(w); /* acks made by slots since the shutdown began */
    stop_heartbeat(w);
    if (w->conf.who.delivery == BQ_AT_LEAST_ONCE && !abandoned) {
        bq_err_clear(&err);
        if (w->broker->ops->unregister(w->broker, &w->conf.who, &err) != BQ_OK)
            bq_log(BQ_LOG_WARN, "redis_error", "op", "unregister", "queue", w->conf.queue, "worker",
                   w->conf.id, "error", err.msg, NULL);
    }
    struct bq_event ev;
    memset(&ev, 0, sizeof ev);
    ev.kind = BQ_EVENT_STOPPED;
    push_event(w, &ev);
    return NULL;
}

/* ---- Lifecycle ----------------------------------------------------------------------------- */

bq_status bq_worker_new(const struct bq_worker_options *o, const struct bq_slot_ops *ops,
                        void *ud, bq_worker **out, bq_err *err)
{
    *out = NULL;
    if (o->concurrency < 1 || o->concurrency > 4096)
        return bq_err_set(err, BQ_EINVAL, "concurrency must be from 1 to 4096 (got %d)",
                          o->concurrency);
    const char *why;
    if ((why = bq_duration_problem(o->block_timeout)) != NULL)
        return bq_err_set(err, BQ_EINVAL, "block_timeout %s", why);
    if ((why = bq_duration_problem(o->lease)) != NULL)
        return bq_err_set(err, BQ_EINVAL, "lease %s", why);
    if ((why = bq_duration_problem(o->shutdown_timeout)) != NULL)
        return bq_err_set(err, BQ_EINVAL, "shutdown_timeout %s", why);
    if (o->block_timeout <= 0)
        return bq_err_set(err, BQ_EINVAL, "block_timeout must be positive");
    if (o->prefetch < 0 || o->prefetch > 4096)
        return bq_err_set(err, BQ_EINVAL, "prefetch must be from 0 to 4096 (got %d)", o->prefetch);
    if (o->batch < 0 || o->batch > 4096)
        return bq_err_set(err, BQ_EINVAL, "batch must be from 0 to 4096 (got %d)", o->batch);
    if (o->lease < 0 || (o->delivery == BQ_AT_LEAST_ONCE && o->lease > 0 && o->lease < 0.3))
        return bq_err_set(err, BQ_EINVAL, "lease must be at least 0.3 s");
    if (o->shutdown_timeout < 0)
        return bq_err_set(err, BQ_EINVAL, "shutdown_timeout must not be negative");
    bq_worker *w = bq_calloc(1, sizeof *w);
    if (w == NULL)
        return bq_err_set(err, BQ_ENOMEM, "worker: out of memory");
    w->events.fd = -1;
    w->control.stopfd = -1;
    w->conf.concurrency = o->concurrency;
    w->conf.batch = o->batch > 0 ? o->batch : 0;
    w->fetch.ewma_handle = 1.0; /* batch only after handlers were seen to be quick */
    w->conf.base_cap = o->concurrency + o->prefetch;
    w->conf.capacity = o->concurrency + (o->prefetch > w->conf.batch ? o->prefetch : w->conf.batch);
    w->conf.block_timeout = o->block_timeout;
    w->conf.want_results = o->want_results;
    w->conf.lease = o->lease > 0 ? o->lease : 30.0;
    w->conf.shutdown_timeout = o->shutdown_timeout;
    w->conf.ops = *ops;
    w->conf.ud = ud;
    pthread_mutex_init(&w->mu, NULL);
    pthread_mutex_init(&w->events.mu, NULL);
    pthread_mutex_init(&w->heartbeat.mu, NULL);
    bq_cond_init(&w->cv_task);
    bq_cond_init(&w->cv_space);
    w->tasks.wake_at = INT_MAX;
    bq_cond_init(&w->cv_init);
    bq_cond_init(&w->heartbeat.cv);

    char host[64] = "host", rnd[5];
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    unsigned char r[2];
    bq_random_bytes(r, sizeof r);
    snprintf(rnd, sizeof rnd, "%02x%02x", r[0], r[1]);
    snprintf(w->conf.id, sizeof w->conf.id, "%s:%d:%s", host, (int)getpid(), rnd);

    int nq = o->queues != NULL && o->nqueues > 0 ? o->nqueues : 1;
    if (nq > 16) {
        bq_worker_free(w);
        return bq_err_set(err, BQ_EINVAL, "a worker fetches from at most 16 queues (got %d)", nq);
    }
    w->conf.queues = bq_calloc((size_t)nq, sizeof *w->conf.queues);
    for (int i = 0; w->conf.queues != NULL && i < nq; i++) {
        w->conf.queues[i] = bq_strdup(o->queues != NULL && o->nqueues > 0 ? o->queues[i]
                                                                      : o->cfg->queue_name);
        w->conf.nqueues += w->conf.queues[i] != NULL;
    }
    if (o->weights != NULL && w->conf.queues != NULL) {
        w->conf.weights = bq_calloc((size_t)nq, sizeof *w->conf.weights);
        for (int i = 0; w->conf.weights != NULL && i < nq; i++) {
            if (o->weights[i] < 1) {
                bq_worker_free(w);
                return bq_err_set(err, BQ_EINVAL, "queue weights must be at least 1");
            }
            w->conf.weights[i] = o->weights[i];
        }
    }
    w->conf.queue = w->conf.queues != NULL && w->conf.nqueues == nq ? w->conf.queues[0] : NULL;
    w->conf.who = (struct bq_lessee){(const char *const *)w->conf.queues, w->conf.nqueues,
                                     w->conf.weights, w->conf.id, o->delivery,
                                     o->max_message_size, BQ_FETCH_BYTES};
    w->tasks.ring = bq_calloc((size_t)w->conf.capacity, sizeof *w->tasks.ring);
    w->slots = bq_calloc((size_t)w->conf.concurrency, sizeof *w->slots);
    w->events.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    w->control.stopfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    w->conf.control_queue = bq_strdup(o->cfg->queue_name);
    bq_status st = BQ_OK;
    if (w->conf.queue == NULL || w->tasks.ring == NULL || w->slots == NULL ||
        w->conf.control_queue == NULL || (o->weights != NULL && w->conf.weights == NULL))
        st = bq_err_set(err, BQ_ENOMEM, "worker: out of memory");
    else if (w->events.fd < 0 || w->control.stopfd < 0)
        st = bq_err_set(err, BQ_EIO, "worker: eventfd: %s", strerror(errno));
    for (int i = 0; st == BQ_OK && i < w->conf.concurrency; i++) {
        struct slot *s = &w->slots[i];
        s->w = w;
        s->index = i;
        atomic_init(&s->ctl.interrupt, 0);
        atomic_init(&s->ctl.control, BQ_CONTROL_NONE);
        pthread_mutex_init(&s->ctl.mu, NULL);
        bq_cond_init(&s->ctl.cv);
    }
    if (st == BQ_OK) {
        struct bq_broker_config bc;
        bq_config_broker(o->cfg, &bc);
        st = bq_broker_open(&bc, &w->broker, err);
    }
    if (st != BQ_OK) {
        bq_worker_free(w);
        return st;
    }
    *out = w;
    return BQ_OK;
}

/* Creates a thread with all signals blocked, so signals go to the owner thread. */
static int spawn(pthread_t *t, void *(*fn)(void *), void *arg)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(t, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

bq_status bq_worker_start(bq_worker *w, bool drain, bq_err *err)
{
    pthread_mutex_lock(&w->mu);
    if (w->life.started || w->life.slots_alive > 0 || w->life.stopping) {
        pthread_mutex_unlock(&w->mu);
        return bq_err_set(err, BQ_EINVAL, "worker already started");
    }
    w->life.drain = drain;
    pthread_mutex_unlock(&w->mu);

    /* Credentials are checked before anything starts: a password or ACL Redis refuses fails
     * the start, naming the address, as an unreachable PostgreSQL does. A Redis that cannot
     * be reached now is not an error: the threads retry it as they always do. */
    double rtt;
    bq_err perr;
    if (w->broker->ops->ping(w->broker, &rtt, &perr) == BQ_EAUTH) {
        bq_broker_explain_auth(w->broker, &perr);
        if (err != NULL)
            *err = perr;
        return BQ_EAUTH;
    }

    int spawned = 0;
    for (int i = 0; i < w->conf.concurrency; i++) {
        pthread_mutex_lock(&w->mu);
        w->life.slots_alive++;
        pthread_mutex_unlock(&w->mu);
        if (spawn(&w->slots[i].thread, slot_main, &w->slots[i]) != 0) {
            pthread_mutex_lock(&w->mu);
            w->life.slots_alive--;
            w->life.init_failures++;
            bq_err_set(&w->life.init_err, BQ_EIO, "worker: cannot create thread %d", i);
            pthread_mutex_unlock(&w->mu);
            break;
        }
        spawned++;
    }
    pthread_mutex_lock(&w->mu);
    while (w->life.inits_done < spawned)
        pthread_cond_wait(&w->cv_init, &w->mu);
    bool failed = w->life.init_failures > 0;
    if (failed) {
        w->life.stopping = true;
        w->life.dispatcher_done = true;
    } else {
        w->life.started = true;
        w->lease.registered = w->conf.who.delivery != BQ_AT_LEAST_ONCE;
        w->lease.last_beat = bq_now_mono() - w->conf.lease; /* due at once */
    }
    pthread_cond_broadcast(&w->cv_task);
    pthread_mutex_unlock(&w->mu);

    if (failed) {
        for (int i = 0; i < spawned; i++)
            pthread_join(w->slots[i].thread, NULL);
        pthread_mutex_lock(&w->mu);
        w->life.joined = true;
        w->life.started = false;
        pthread_mutex_unlock(&w->mu);
        if (err != NULL)
            *err = w->life.init_err;
        return w->life.init_err.code != BQ_OK ? w->life.init_err.code : BQ_EIO;
    }
    if (w->conf.who.delivery == BQ_AT_LEAST_ONCE) {
        if (spawn(&w->heartbeat.thread, heartbeat_main, w) == 0)
            w->heartbeat.started = true;
        else
            bq_log(BQ_LOG_ERROR, "thread_failed", "worker", w->conf.id, "thread", "heartbeat",
                   NULL);
    }
    if (spawn(&w->control.thread, control_main, w) == 0)
        w->control.started = true;
    else
        bq_log(BQ_LOG_ERROR, "thread_failed", "worker", w->conf.id, "thread", "control", NULL);
    if (spawn(&w->dispatcher.thread, dispatcher_main, w) != 0) {
        bq_log(BQ_LOG_ERROR, "thread_failed", "worker", w->conf.id, "thread", "dispatcher", NULL);
        pthread_mutex_lock(&w->mu);
        w->life.stopping = true;
        w->life.dispatcher_done = true;
        pthread_cond_broadcast(&w->cv_task);
        pthread_mutex_unlock(&w->mu);
        stop_heartbeat(w);
        stop_control(w);
        for (int i = 0; i < spawned; i++)
            pthread_join(w->slots[i].thread, NULL);
        w->life.joined = true;
        return bq_err_set(err, BQ_EIO, "worker: cannot create the dispatcher thread");
    }
    w->dispatcher.started = true;
    char conc[16], lease[32];
    snprintf(conc, sizeof conc, "%d", w->conf.concurrency);
    snprintf(lease, sizeof lease, "%.3f", w->conf.lease);
    bq_log(BQ_LOG_INFO, "worker_started", "worker", w->conf.id, "queue", w->conf.queue, "backend",
           w->broker->kind, "address", w->broker->address, "#concurrency", conc, "delivery",
           w->conf.who.delivery == BQ_AT_LEAST_ONCE ? "at-least-once" : "at-most-once",
           w->conf.who.delivery == BQ_AT_LEAST_ONCE ? "#lease_s" : NULL, lease, NULL);
    return BQ_OK;
}

void bq_worker_stop(bq_worker *w)
{
    pthread_mutex_lock(&w->mu);
    bool was = w->life.stopping;
    if (!was) {
        w->life.stopping = true;
        w->life.stop_at = bq_now_mono();
    }
    pthread_cond_broadcast(&w->cv_space);
    pthread_cond_broadcast(&w->cv_task);
    pthread_mutex_unlock(&w->mu);
    if (!was && w->broker != NULL)
        w->broker->ops->interrupt(w->broker);
}

void bq_worker_drain(bq_worker *w)
{
    pthread_mutex_lock(&w->mu);
    bool was = w->life.drain;
    w->life.drain = true;
    pthread_cond_broadcast(&w->cv_space);
    pthread_mutex_unlock(&w->mu);
    if (!was && w->broker != NULL)
        w->broker->ops->interrupt(w->broker); /* a blocked fetch returns and sees the flag */
}

void bq_worker_abort(bq_worker *w)
{
    pthread_mutex_lock(&w->mu);
    if (!w->life.started || w->life.abandoned) {
        pthread_mutex_unlock(&w->mu);
        return;
    }
    w->life.abandoned = true;
    w->life.stopping = true;
    size_t n = 0, cap = (size_t)w->tasks.ring_n + (size_t)w->conf.concurrency;
    struct bq_msg *copies = bq_calloc(cap ? cap : 1, sizeof *copies);
    for (int i = 0; copies != NULL && i < w->tasks.ring_n; i++) {
        const struct bq_msg *m = &w->tasks.ring[(w->tasks.ring_head + i) % w->conf.capacity];
        copies[n] = (struct bq_msg){bq_strndup(m->data, m->len), m->len, m->q, m->sealed,
                                    m->oversize};
        n += copies[n].data != NULL;
    }
    for (int i = 0; copies != NULL && i < w->conf.concurrency; i++) {
        const struct bq_msg *m = &w->slots[i].current;
        if (!w->slots[i].running || m->data == NULL)
            continue;
        copies[n] = (struct bq_msg){bq_strndup(m->data, m->len), m->len, m->q, m->sealed,
                                    m->oversize};
        n += copies[n].data != NULL;
    }
    pthread_mutex_unlock(&w->mu);
    w->broker->ops->interrupt(w->broker);
    if (copies != NULL)
        handback(w, copies, n, "aborted: second signal");
    for (size_t i = 0; i < n; i++)
        bq_free(copies[i].data);
    bq_free(copies);
}

void bq_worker_join(bq_worker *w)
{
    pthread_mutex_lock(&w->mu);
    bool skip = w->life.joined || !w->life.started;
    w->life.joined = true;
    pthread_mutex_unlock(&w->mu);
    if (skip)
        return;
    if (w->dispatcher.started)
        pthread_join(w->dispatcher.thread, NULL);
    stop_heartbeat(w);
    for (int i = 0; i < w->conf.concurrency; i++) {
        pthread_mutex_lock(&w->mu);
        bool gone = w->slots[i].exited || !w->life.abandoned;
        pthread_mutex_unlock(&w->mu);
        if (gone)
            pthread_join(w->slots[i].thread, NULL);
        else
            pthread_detach(w->slots[i].thread);
    }
    stop_control(w);
    bq_log(BQ_LOG_INFO, "worker_stopped", "worker", w->conf.id, "queue", w->conf.queue, NULL);
}

void bq_worker_free(bq_worker *w)
{
    if (w == NULL)
        return;
    if (w->life.started) {
        bq_worker_stop(w);
        bq_worker_join(w);
    }
    if (w->life.abandoned)
        return; /* threads still run inside it; the process is about to exit */
    struct bq_event ev;
    while (pop_event(w, &ev))
        bq_event_clear(&ev);
    for (int i = 0; i < w->tasks.ring_n; i++)
        bq_free(w->tasks.ring[(w->tasks.ring_head + i) % w->conf.capacity].data);
    bq_batch_free(&w->tasks.acks);
    bq_broker_free(w->broker);
    for (int i = 0; w->slots != NULL && i < w->conf.concurrency; i++) {
        pthread_mutex_destroy(&w->slots[i].ctl.mu);
        pthread_cond_destroy(&w->slots[i].ctl.cv);
    }
    bq_free(w->tasks.ring);
    bq_free(w->slots);
    for (int i = 0; i < w->conf.nqueues; i++)
        bq_free(w->conf.queues[i]);
    bq_free(w->conf.queues);
    bq_free(w->conf.weights);
    if (w->events.fd >= 0)
        close(w->events.fd);
    if (w->control.stopfd >= 0)
        close(w->control.stopfd);
    bq_free(w->conf.control_queue);
    pthread_mutex_destroy(&w->mu);
    pthread_mutex_destroy(&w->events.mu);
    pthread_mutex_destroy(&w->heartbeat.mu);
    pthread_cond_destroy(&w->cv_task);
    pthread_cond_destroy(&w->cv_space);
    pthread_cond_destroy(&w->cv_init);
    pthread_cond_destroy(&w->heartbeat.cv);
    bq_free(w);
}

void bq_worker_stats(bq_worker *w, struct bq_worker_stats *out)
{
    out->fetched = atomic_load(&w->count.fetched);
    out->completed = atomic_load(&w->count.completed);
    out->failed = atomic_load(&w->count.failed);
    out->retried = atomic_load(&w->count.retried);
    out->dead_lettered = atomic_load(&w->count.dead);
    out->dropped = atomic_load(&w->count.dropped);
    out->malformed = atomic_load(&w->count.malformed);
    out->skipped = atomic_load(&w->count.skipped);
    out->handed_back = atomic_load(&w->count.handed_back);
    out->lease_lost = atomic_load(&w->count.lease_lost);
    out->reaped = atomic_load(&w->count.reaped);
    out->rate_limited = atomic_load(&w->count.rate_limited);
    out->canceled = atomic_load(&w->count.canceled);
    out->paused = atomic_load(&w->count.paused);
    out->waiting = atomic_load(&w->count.waiting);
    out->redis_errors = atomic_load(&w->count.redis_errors);
    out->reconnects = atomic_load(&w->count.reconnects);
    out->pickup_rejected = atomic_load(&w->count.pickup_rejected);
    pthread_mutex_lock(&w->mu);
    out->inflight = w->tasks.inflight;
    pthread_mutex_unlock(&w->mu);
}

bq_status bq_worker_rate_limit(bq_worker *w, long limit, double period,
                               struct bq_admission *reqs, size_t n, bq_err *err)
{
    return w->broker->ops->rate_limit(w->broker, &w->conf.who, limit, period, reqs, n, err);
}

const char *bq_outcome_name(enum bq_outcome_kind k)
{
    return (unsigned)k < sizeof outcome_names / sizeof outcome_names[0] ? outcome_names[k] : "?";
}

bool bq_outcome_kind_of(const char *name, enum bq_outcome_kind *kind)
{
    for (size_t i = 0; name != NULL && i < sizeof outcome_names / sizeof outcome_names[0]; i++) {
        if (strcmp(name, outcome_names[i]) == 0) {
            *kind = (enum bq_outcome_kind)i;
            return true;
        }
    }
    return false;
}
