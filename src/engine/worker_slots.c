/*
 * worker_slots.c -- the slot threads (worker.h): each takes messages from the ring, a chunk
 * at a time while the queue is deep, hands each to its bq_slot_ops, and carries out the
 * outcome: ack (riding along with the dispatcher's next fetch when it can), retry,
 * dead-letter or hand back, counted and logged, and observed in the histograms. Also the slot
 * control blocks (struct bq_slot_ctl) through which a handler environment sees interrupts and
 * control requests, and the names of the outcomes.
 *
 * This is the hot path: the bookkeeping of one task and the taking of the next share a
 * critical section (bq_worker_slot_main), and what a slot calls per task is static here or
 * inline in worker_int.h.
 */
#include "worker_int.h"

#include "../core/buf.h"

#include <limits.h>
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- Slot control blocks ----------------------------------------------------------------- */

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

/* An outcome's task id into tid (BQ_MAX_ID_LEN + 1 bytes), kept for a direct ack's logs: a
 * bounded copy, not snprintf (once a task). */
static void copy_id(char *tid, const char *task_id)
{
    size_t n = strnlen(task_id, BQ_MAX_ID_LEN);
    memcpy(tid, task_id, n);
    tid[n] = '\0';
}

/* FNV-1a of s[0..n): the ahead list's ids are compared by it first. */
static uint32_t id_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

void bq_slot_set_task(struct bq_slot_ctl *ctl, const char *task_id)
{
    /* Twice a task: a bounded copy, not snprintf (500 instructions a call); the ahead list
     * (up to 64 ids) by hash, not 64 strcmp calls. */
    size_t n = task_id != NULL ? strnlen(task_id, sizeof ctl->task_id - 1) : 0;
    uint32_t h = id_hash(task_id, n);
    pthread_mutex_lock(&ctl->mu);
    if (n > 0)
        memcpy(ctl->task_id, task_id, n);
    ctl->task_id[n] = '\0';
    int control = BQ_CONTROL_NONE;
    for (int i = 0; n > 0 && i < ctl->nahead; i++) {
        /* kept for it: it runs now */
        if (ctl->ahead_hash[i] == h && strcmp(ctl->ahead[i], ctl->task_id) == 0) {
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
        ctl->ahead_hash[i] = id_hash(ctl->ahead[i], len);
        ctl->ahead_control[i] = BQ_CONTROL_NONE;
        ctl->nahead = i + 1;
    }
    pthread_mutex_unlock(&ctl->mu);
}

/* Wakes whatever the slot's environment waits in. ctl->mu held. */
static void wake_locked(struct bq_slot_ctl *ctl)
{
    ctl->wakeups++;
    pthread_cond_broadcast(&ctl->cv);
    if (ctl->waker != NULL)
        ctl->waker(ctl->waker_ud);
}

void bq_slot_wake(struct bq_slot_ctl *ctl)
{
    pthread_mutex_lock(&ctl->mu);
    wake_locked(ctl);
    pthread_mutex_unlock(&ctl->mu);
}

unsigned bq_slot_wakeups(struct bq_slot_ctl *ctl)
{
    pthread_mutex_lock(&ctl->mu);
    unsigned n = ctl->wakeups;
    pthread_mutex_unlock(&ctl->mu);
    return n;
}

bool bq_slot_park(struct bq_slot_ctl *ctl, unsigned seen, double seconds)
{
    if (!(seconds > 0))
        return false;
    if (seconds > BQ_MAX_DURATION)
        seconds = BQ_MAX_DURATION;
    double deadline = bq_now_mono() + seconds;
    pthread_mutex_lock(&ctl->mu);
    while (ctl->wakeups == seen) {
        double left = deadline - bq_now_mono();
        if (left <= 0)
            break;
        bq_cond_wait_for(&ctl->cv, &ctl->mu, left);
    }
    bool woken = ctl->wakeups != seen;
    pthread_mutex_unlock(&ctl->mu);
    return woken;
}

void bq_slot_set_task_at(struct bq_slot_ctl *ctl, int t, const char *task_id)
{
    size_t n = task_id != NULL ? strnlen(task_id, BQ_MAX_ID_LEN) : 0;
    pthread_mutex_lock(&ctl->mu);
    if (t >= 0 && t < ctl->ntasks) {
        struct bq_slot_task *e = &ctl->tasks[t];
        if (n > 0)
            memcpy(e->id, task_id, n);
        e->id[n] = '\0';
        atomic_store(&e->control, BQ_CONTROL_NONE);
    }
    pthread_mutex_unlock(&ctl->mu);
}

bool bq_slot_request(struct bq_slot_ctl *ctl, enum bq_control op, const char *task_id)
{
    bool found = false;
    pthread_mutex_lock(&ctl->mu);
    for (int t = 0; t < ctl->ntasks; t++) {
        struct bq_slot_task *e = &ctl->tasks[t];
        if (e->id[0] != '\0' && strcmp(e->id, task_id) == 0) {
            if (atomic_load(&e->control) != BQ_CONTROL_CANCEL)
                atomic_store(&e->control, op);
            found = true;
        }
    }
    if (found)
        wake_locked(ctl);
    if (ctl->task_id[0] != '\0' && strcmp(ctl->task_id, task_id) == 0) {
        /* A cancel outranks a pause asked for earlier. */
        if (atomic_load(&ctl->control) != BQ_CONTROL_CANCEL)
            atomic_store(&ctl->control, op);
        wake_locked(ctl);
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

void bq_slot_interrupt(struct bq_slot_ctl *ctl)
{
    pthread_mutex_lock(&ctl->mu);
    atomic_store(&ctl->interrupt, 1);
    wake_locked(ctl);
    pthread_mutex_unlock(&ctl->mu);
}

void bq_slot_set_waker(struct bq_slot_ctl *ctl, void (*waker)(void *ud), void *ud)
{
    pthread_mutex_lock(&ctl->mu);
    ctl->waker = waker;
    ctl->waker_ud = ud;
    pthread_mutex_unlock(&ctl->mu);
}

/* ---- Outcome names and histograms ------------------------------------------------------- */

/* The outcomes' names, in the order of enum bq_outcome_kind: the contract with the Lua side,
 * which reads them as core.OUTCOME (src/lua/l_slot.c). */
static const char *const outcome_names[] = {
    "completed", "skipped", "retry", "dead", "dropped", "malformed", "interrupted", "deferred",
    "canceled", "paused", "waiting", "pending",
};
_Static_assert(sizeof outcome_names / sizeof outcome_names[0] == BQ_OUTCOME_COUNT,
               "one name per outcome");

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

/* ---- Outcomes (slot threads) --------------------------------------------------------------- */

static struct bq_slice slice_of(const struct bq_msg *m)
{
    return (struct bq_slice){m->data, m->len};
}

/* When a write that carries a task could not be made: in at-least-once mode the task stays
 * leased and comes back when this worker's lease ends; in at-most-once mode the log is the
 * last place it exists. */
static void write_failed(bq_worker *w, const char *what, const char *tid,
                         const struct bq_msg *msg)
{
    if (w->conf.who.delivery == BQ_AT_LEAST_ONCE) {
        bq_log(BQ_LOG_ERROR, "write_failed", "op", what, "task_id", tid, "queue",
               queue_of(w, msg->q),
               "worker", w->conf.id, "outcome", "the task stays leased and is redelivered later",
               NULL);
        return;
    }
    char len[24];
    snprintf(len, sizeof len, "%zu", msg->len);
    bq_log(BQ_LOG_ERROR, "write_failed", "op", what, "task_id", tid, "queue",
           queue_of(w, msg->q), "worker", w->conf.id, "#bytes", len, "message", msg->data,
           NULL);
}

void bq_worker_lease_lost(bq_worker *w, const char *op, const char *tid)
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
void bq_worker_bury(bq_worker *w, const struct bq_msg *msg, const struct bq_outcome *out,
                 const char *tid)
{
    bq_worker_feed_settle(w); /* the task's events before its dead letter */
    bq_buf tmp = BQ_BUF_INIT;
    size_t olen;
    const char *orig = original(msg, out, &tmp, &olen);
    struct bq_dlq_info info = {
        out->header,
        out->reason ? out->reason : "unknown",
        out->kind == BQ_OUTCOME_MALFORMED ? NULL : out->json,
        tid,
        out->type[0] ? out->type : NULL,
        queue_of(w, msg->q),
        w->conf.id,
        out->kind == BQ_OUTCOME_MALFORMED ? 0 : out->attempt,
        msg->oversize > 0 ? msg->oversize
                          : (w->conf.who.max_size > 0 && msg->len > w->conf.who.max_size
                                 ? msg->len
                                 : 0),
    };
    struct bq_msg entry = {NULL, 0, 0, false, 0, 0};
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
        bq_worker_lease_lost(w, "dead_letter", tid);
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
    bq_worker_feed_settle(w); /* the task's events before its retry */
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
        bq_worker_lease_lost(w, "retry", tid);
        return;
    }
    char n[16], d[32];
    snprintf(n, sizeof n, "%d", out->attempt);
    snprintf(d, sizeof d, "%.3f", out->delay);
    if (deferral) {
        atomic_fetch_add(&w->count.rate_limited, 1);
        if (bq_log_enabled(BQ_LOG_DEBUG))
            bq_log(BQ_LOG_DEBUG, "rate_limited", "task_id", tid, "queue",
                   queue_of(w, msg->q), "worker", w->conf.id, "#delay_s", d, NULL);
    } else {
        atomic_fetch_add(&w->count.retried, 1);
        bq_log(BQ_LOG_INFO, "retry_scheduled", "task_id", tid, "queue",
               queue_of(w, msg->q), "worker", w->conf.id, "#attempt", n, "#delay_s", d,
               "error", out->reason, NULL);
    }
    promote_by(w, out->delay);
}

/* One hand-back call of msgs[0..n), its count added to *count; at-most-once (left given)
 * what it pushed, the last of msgs, is taken off *left. */
static bq_status handback_rest(bq_worker *w, const struct bq_msg *msgs, size_t n, size_t *left,
                               size_t *count, bq_err *err)
{
    size_t k = 0;
    bq_status st = w->broker->ops->handback(w->broker, &w->conf.who, msgs, n, &k, err);
    *count += k;
    if (left != NULL)
        *left -= k <= *left ? k : *left;
    return st;
}

bool bq_worker_handback(bq_worker *w, const struct bq_msg *msgs, size_t n, const char *why)
{
    if (n == 0)
        return true;
    bq_worker_feed_settle(w);
    /* At-most-once a retry sends only what the failed call did not push (broker.h): sent
     * again, those would be queued twice. Leased, each hand-back moves only a message it
     * finds, so it is sent whole again. */
    bool leased = w->conf.who.delivery == BQ_AT_LEAST_ONCE;
    size_t count = 0, left = n;
    bq_err err;
    bq_status st;
    WITH_RETRIES(w, "hand_back", (const char *)NULL,
                 handback_rest(w, msgs, leased ? n : left, leased ? NULL : &left, &count, &err));
    char k[24];
    snprintf(k, sizeof k, "%zu", count);
    if (st == BQ_OK) {
        atomic_fetch_add(&w->count.handed_back, (long long)count);
        bq_log(BQ_LOG_INFO, "handed_back", "queue", w->conf.queue, "worker", w->conf.id,
               "#count", k, "reason", why, NULL);
    } else {
        for (size_t i = 0; i < (leased ? n : left); i++)
            write_failed(w, "hand_back", NULL, &msgs[i]);
    }
    return st == BQ_OK;
}

/* Acknowledges one message now, in a round trip of its own (the dispatcher is blocked in a
 * fetch, or stopping). */
static void ack_direct(bq_worker *w, struct bq_msg *msg, const char *tid)
{
    bq_worker_feed_settle(w); /* the task's events before its ack */
    size_t acked = 0;
    bq_err err;
    bq_status st;
    WITH_RETRIES(w, "ack", tid, w->broker->ops->ack(w->broker, &w->conf.who, msg, 1, &acked, &err));
    if (st == BQ_OK && acked == 0)
        bq_worker_lease_lost(w, "ack", tid);
    else if (st != BQ_OK)
        write_failed(w, "ack", tid, msg);
}

/* Whether msg's ack can ride along with the dispatcher's next fetch: then it is taken into the
 * pending acks (its ownership moves there) and msg's data is set to NULL, so that a slot's
 * transit entry (struct slot) no longer shows what the dispatcher may free once it is sent.
 * Called with w->mu held. */
static bool ack_deferred(bq_worker *w, struct bq_msg *msg)
{
    if (w->fetch.blocking || w->life.stopping || bq_batch_take(&w->tasks.acks, *msg) != BQ_OK)
        return false;
    msg->data = NULL;
    return true;
}

/* Shows msgs[0..n) to the orphan check while slot s carries them out without the lock
 * (n = 0: no more); w->mu held. */
static void set_transit(struct slot *s, const struct bq_msg *msgs, int n)
{
    s->transit = n > 0 ? msgs : NULL;
    s->ntransit = n;
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

/* Carries out a slot's decision about msg. Returns true if msg's ownership moved on. With
 * want_ack, an at-least-once ack is left to the caller instead (*want_ack set): it takes it
 * into the pending acks in the critical section it enters anyway (bq_worker_slot_main). */
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
    const char *queue = queue_of(w, msg->q);
    bool moved = false;
    bq_worker_feed_outcome(w, msg, out);
    int rq = msg->q >= 0 && msg->q < w->conf.nqueues ? msg->q : 0;
    if (out->kind == BQ_OUTCOME_COMPLETED)
        atomic_fetch_add_explicit(&w->report.done[rq], 1, memory_order_relaxed);
    else if (out->kind == BQ_OUTCOME_DROPPED || out->kind == BQ_OUTCOME_RETRY ||
             out->kind == BQ_OUTCOME_DEAD)
        atomic_fetch_add_explicit(&w->report.failed[rq], 1, memory_order_relaxed);
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
        bq_worker_bury(w, msg, out, tid);
        break;
    case BQ_OUTCOME_MALFORMED:
        atomic_fetch_add(&w->count.malformed, 1);
        bq_log(BQ_LOG_WARN, "malformed", "task_id", tid, "queue", queue, "worker", w->conf.id,
               "reason", out->reason, NULL);
        bq_worker_bury(w, msg, out, tid);
        break;
    case BQ_OUTCOME_INTERRUPTED:
    case BQ_OUTCOME_PENDING: /* never reaches here (the slot keeps it); if it did: it runs again */
        bq_worker_handback(w, msg, 1, out->reason ? out->reason : "interrupted");
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
        bq_worker_push_event(w, &ev); /* takes the strings */
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
        bq_worker_handback(w, back, (size_t)nback, "shutdown: not started");
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
    set_transit(s, msgs, n); /* still leased: an orphan check must not hand them back */
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
    set_transit(s, NULL, 0);
    s->running = false;
    w->tasks.running--;
    w->tasks.inflight -= n;
    w->tasks.pending -= n;
    if (bq_worker_held(w) <= w->tasks.wake_at || w->life.stopping)
        pthread_cond_broadcast(&w->cv_space);
    for (int i = 0; i < n; i++) {
        if (!moved[i])
            bq_free(msgs[i].data);
    }
    return true;
}

/* How many of the ring's messages slot threads take at once (w->mu held): on a deep queue
 * of quick tasks, a fair share of the ring as a chunk, so prepare makes one round trip for
 * all of it; else one. */
static int chunk_size(const bq_worker *w)
{
    if (w->conf.ops.prepare == NULL || !w->fetch.deep || w->fetch.ewma_handle >= BATCH_MAX_HANDLE)
        return w->tasks.ring_n > 0;
    int k = w->tasks.ring_n / w->conf.concurrency;
    return k < 1 ? 1 : k > BQ_CHUNK_MAX ? BQ_CHUNK_MAX : k;
}

/* Moves the ring's first k messages (k <= ring_n) into slot s's chunk (w->mu held). */
static void take_chunk(bq_worker *w, struct slot *s, int k)
{
    for (int i = 0; i < k; i++) {
        s->chunk[i] = w->tasks.ring[w->tasks.ring_head];
        s->settled[i] = false;
        w->tasks.ring_head = (w->tasks.ring_head + 1) % w->conf.capacity;
        w->tasks.ring_n--;
    }
    s->chunk_at = 0;
    s->chunk_n = k;
}

/* ---- Slots holding several tasks (per_slot > 1) ------------------------------------------
 * The slot's state runs up to per_slot tasks at once (bq_slot_ops.start and wait: its
 * handlers are coroutines that yield while they wait). The thread takes messages from the
 * ring while it has free places, then waits in the state's loop until tasks end; a message put
 * in the ring wakes that wait (hand_out, through bq_slot_wake). No chunks: prepare and flush
 * are for quick tasks, which need no coroutines. */

/* Carries out the outcome of the task at place p (w->mu held on entry and on return; the
 * work is done without it). Returns false when the process is leaving (abandoned): the
 * caller touches nothing else. */
static bool multi_finish(bq_worker *w, struct slot *s, int p, struct bq_outcome *out)
{
    struct bq_msg msg = s->held[p];
    double took = bq_now_mono() - s->held_t0[p];
    pthread_mutex_unlock(&w->mu);
    if (atomic_load(&w->life.abandoned)) {
        outcome_free(out);
        return false;
    }
    if (out->kind == BQ_OUTCOME_PENDING) { /* nothing flushes it here: it runs again */
        outcome_free(out);
        out->kind = BQ_OUTCOME_INTERRUPTED;
        out->reason = bq_strdup("its outcome was left pending");
    }
    bq_slot_set_task_at(&s->ctl, p, NULL);
    bool want_ack = false;
    char tid[BQ_MAX_ID_LEN + 1];
    copy_id(tid, out->task_id);
    bool moved = finish(w, &msg, out, took, &want_ack);
    pthread_mutex_lock(&w->mu);
    s->held[p] = (struct bq_msg){NULL, 0, 0, false, 0, 0};
    s->nheld--;
    s->running = s->nheld > 0;
    w->tasks.running--;
    w->tasks.inflight--;
    bool ack_now = want_ack && !(moved = ack_deferred(w, &msg));
    if (bq_worker_held(w) <= w->tasks.wake_at || w->life.stopping)
        pthread_cond_signal(&w->cv_space);
    if (ack_now || !moved) {
        if (ack_now)
            set_transit(s, &msg, 1);
        pthread_mutex_unlock(&w->mu);
        if (ack_now)
            ack_direct(w, &msg, tid[0] ? tid : NULL);
        pthread_mutex_lock(&w->mu);
        set_transit(s, NULL, 0);
        if (!moved)
            bq_free(msg.data);
    }
    return true;
}

/* The slot thread's loop for per_slot > 1. w->mu held on entry; returns false (without it)
 * when abandoned, true (with it) when the worker is done. */
static bool slot_multi(bq_worker *w, struct slot *s)
{
    int per = w->conf.per_slot;
    int *ended = bq_calloc((size_t)per, sizeof *ended);
    struct bq_outcome *outs = bq_calloc((size_t)per, sizeof *outs);
    if (ended == NULL || outs == NULL) {
        bq_log(BQ_LOG_ERROR, "slot_failed", "worker", w->conf.id, "error",
               "out of memory for the slot's tasks", NULL);
        bq_free(ended);
        bq_free(outs);
        return true; /* the slot ends; the others go on */
    }
    for (;;) {
        /* Take what the ring holds while there is room; at a stop, start nothing new. */
        while (s->nheld < per && w->tasks.ring_n > 0 && !w->life.stopping) {
            int p = 0;
            while (s->held[p].data != NULL)
                p++;
            struct bq_msg msg = w->tasks.ring[w->tasks.ring_head];
            w->tasks.ring_head = (w->tasks.ring_head + 1) % w->conf.capacity;
            w->tasks.ring_n--;
            s->held[p] = msg;
            s->held_t0[p] = bq_now_mono();
            s->nheld++;
            s->running = true;
            w->tasks.running++;
            pthread_mutex_unlock(&w->mu);
            struct bq_outcome *out = &outs[p];
            memset(out, 0, sizeof *out);
            out->attempt = 1;
            out->pickup = NAN;
            bool done = w->conf.ops.start(s->state, p, &msg, out);
            pthread_mutex_lock(&w->mu);
            if (done && !multi_finish(w, s, p, out))
                goto abandoned;
        }
        if (s->nheld == 0) {
            if (w->tasks.ring_n == 0 && w->life.dispatcher_done)
                break;
            if (w->life.stopping && w->tasks.ring_n > 0) {
                /* Not started: back to the queue (shut_down takes the ring's too). */
                struct bq_msg m = w->tasks.ring[w->tasks.ring_head];
                w->tasks.ring_head = (w->tasks.ring_head + 1) % w->conf.capacity;
                w->tasks.ring_n--;
                w->tasks.inflight--;
                pthread_mutex_unlock(&w->mu);
                bq_worker_handback(w, &m, 1, "shutdown: not started");
                bq_free(m.data);
                pthread_mutex_lock(&w->mu);
                continue;
            }
            if (w->tasks.ring_n == 0)
                pthread_cond_wait(&w->cv_task, &w->mu);
            continue;
        }
        s->polling = true;
        unsigned seen = bq_slot_wakeups(&s->ctl); /* hand_out wakes after this, not before */
        pthread_mutex_unlock(&w->mu);
        int n = w->conf.ops.wait(s->state, 1.0, seen, ended, outs);
        pthread_mutex_lock(&w->mu);
        s->polling = false;
        for (int i = 0; i < n; i++) {
            if (!multi_finish(w, s, ended[i], &outs[ended[i]]))
                goto abandoned;
        }
    }
    bq_free(ended);
    bq_free(outs);
    return true;
abandoned:
    bq_free(ended);
    bq_free(outs);
    return false;
}

void *bq_worker_slot_main(void *arg)
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
    bool inited = st == BQ_OK;
    pthread_mutex_lock(&w->mu);
    if (st == BQ_OK && w->conf.per_slot > 1) {
        if (!slot_multi(w, s))
            return NULL; /* abandoned: the worker is left allocated for us */
        st = BQ_EINTR;     /* done: skip the one-task loop below */
    }
    while (st == BQ_OK) {
        /* The chunk is done and its outcomes wait: with the next chunk at hand, its prepare
         * writes them with its starts (one round trip and one commit for both), counting as
         * running like flush_pending; flush_pending then only carries them out. */
        bool ahead = false;
        int next = 0;
        if (s->npend > 0 && s->chunk_at == s->chunk_n && !w->life.stopping)
            next = chunk_size(w);
        if (next > 1) {
            take_chunk(w, s, next);
            s->running = true;
            w->tasks.running++;
            pthread_mutex_unlock(&w->mu);
            w->conf.ops.prepare(s->state, s->chunk, s->chunk_n, s->settled);
            if (atomic_load(&w->life.abandoned))
                return NULL; /* the worker is left allocated for us; the reaper has the tasks */
            pthread_mutex_lock(&w->mu);
            s->running = false;
            w->tasks.running--;
            ahead = true;
        }
        if (s->npend > 0 && (s->chunk_at == s->chunk_n || ahead || w->life.stopping) &&
            !flush_pending(w, s))
            return NULL; /* abandoned: the worker is left allocated for us */
        if (s->chunk_at == s->chunk_n) {
            s->chunk_at = s->chunk_n = 0;
            while (w->tasks.ring_n == 0 && !w->life.dispatcher_done)
                pthread_cond_wait(&w->cv_task, &w->mu);
            if (w->tasks.ring_n == 0)
                break;
            int k = chunk_size(w);
            take_chunk(w, s, k);
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
        s->ctl.batched_wait = 0;
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
        copy_id(tid, out.task_id);
        /* The handler's time: its outcome's carrying out (finish) is the worker's. */
        double took = bq_now_mono() - t0;
        if (abandoned) /* the process is leaving */
            outcome_free(&out);
        else if (!pending)
            moved = finish(w, &msg, &out, took, &want_ack);

        bool trim = !moved && !pending && msg.len >= TRIM_AFTER;
        pthread_mutex_lock(&w->mu);
        /* Whether handlers are quick enough to batch, by their time without the writes a
         * chunk would batch (bq_slot_ctl.batched_wait). */
        double own = took - s->ctl.batched_wait;
        w->fetch.ewma_handle = w->fetch.ewma_handle * 0.9 + (own > 0 ? own : 0) * 0.1;
        s->running = false;
        s->current = (struct bq_msg){NULL, 0, 0, false, 0, 0};
        w->tasks.running--;
        if (pending) {
            s->pend[s->npend] = msg;
            s->pend_out[s->npend] = out;
            s->pend_took[s->npend++] = took;
            w->tasks.pending++;
            moved = true; /* the pending list owns it */
        } else {
            w->tasks.inflight--;
        }
        bool ack_now = want_ack && !(moved = ack_deferred(w, &msg));
        atomic_store(&s->ctl.interrupt, 0);
        bq_slot_set_task(&s->ctl, NULL);
        if (bq_worker_held(w) <= w->tasks.wake_at || w->life.stopping)
            pthread_cond_signal(&w->cv_space);
        if (abandoned || trim || ack_now) {
            if (ack_now)
                set_transit(s, &msg, 1);
            pthread_mutex_unlock(&w->mu);
            if (ack_now) { /* the dispatcher waits in a fetch, or stops: acknowledge it now */
                ack_direct(w, &msg, tid[0] ? tid : NULL);
                pthread_mutex_lock(&w->mu);
                set_transit(s, NULL, 0);
                pthread_mutex_unlock(&w->mu);
            }
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
    if (inited && w->conf.ops.fini != NULL)
        w->conf.ops.fini(s->state);
    pthread_mutex_lock(&w->mu);
    w->life.slots_alive--;
    s->exited = true;
    pthread_cond_broadcast(&w->cv_space);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}
