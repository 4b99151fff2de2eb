/*
 * worker_dispatch.c -- the dispatcher thread (worker.h).
 *
 * One loop, one broker round trip a turn, each step a function named for what it does:
 *   wait_for_room      until the slots have room or an ack waits (scanning the queue for
 *                      controls meanwhile)
 *   plan_round_trip    take the pending acks; decide how many messages to ask for, how long
 *                      to block, whether to promote due retries and renew the lease
 *   fetch              the round trip, the acks riding along
 *   settle_round_trip  keep acks that may not have been applied, note the renewal and the
 *                      next promotion, reap dead workers; back_off when it failed
 *   note_fetched       count, and decide whether the queue is deep (batching)
 *   set_aside_large    dead-letter what is longer than max_message_size
 *   hand_out           into the ring, waking the slots; in drain mode, stop once drained
 *   check_orphans      after a fetch whose reply was lost, hand back what Redis moved to
 *                      this worker that it never received
 * On stop, shut_down hands back what no slot started, gives running handlers until the
 * deadline, interrupts them and abandons the stuck; wind_up lets the slots leave, ends the
 * lease and queues STOPPED.
 */
#include "worker_int.h"

#include <limits.h>
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define SHUTDOWN_GRACE 2.0  /* seconds interrupted handlers get before they are abandoned */

/* ---- One round trip ------------------------------------------------------------------------ */

/* What the dispatcher carries through one round trip, and from one to the next. Dispatcher
 * thread only. */
struct round {
    struct bq_fetch_req req;    /* this round trip's request */
    struct bq_fetch_res res;    /* its reply (res.dead's array is reused) */
    struct bq_batch batch;      /* the messages it fetched, until the ring takes them */
    struct bq_batch acks;       /* the acks it carries (the array goes back to the slots) */
    bq_status st;
    bq_err err;
    double now;                 /* when it was planned */
    double planned_promote;     /* fetch.next_promote when it was planned */
    double prev_beat;           /* lease.last_beat before it took on the renewal */
    int seen_inflight;          /* tasks.inflight when it was planned */
    bool drain;                 /* drain mode when it was planned */
    bool lease;                 /* the delivery leases its tasks (at-least-once) */
    double period;              /* seconds between renewals of the lease */
    int failures;               /* failed round trips in a row */
    bool busy;                  /* the last one found work: the next one does not wait */
    bool unsure;                /* a fetch that may have taken messages failed */
    int orphan_failures;        /* failed orphan checks in a row: the next waits longer */
    double orphan_at;           /* when the next orphan check may be made */
};

/* Waits for room (cv_space, w->mu held); while it waits, looks for controls in the queue
 * every CONTROL_SCAN seconds (worker_control.c), however often the wait is woken. */
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
    bq_worker_scan_controls(w);
    pthread_mutex_lock(&w->mu);
}

/* Waits until a fetch is worth making (w->mu held) and returns how many messages the worker
 * may hold. Adaptive batching: while the queue is deep, hold up to `batch` more messages and
 * fetch again only once half of them are done (the acks ride along then); when it is
 * shallow, fetch as soon as a slot is free or an ack waits, so an idle worker still takes
 * the first task at once. Returns early on a stop. */
static int wait_for_room(bq_worker *w)
{
    int cap = w->fetch.deep ? w->conf.handlers + w->conf.batch : w->conf.base_cap;
    if (w->fetch.deep) {
        int low = w->conf.handlers + w->conf.batch / 2;
        w->tasks.wake_at = low;
        while (!w->life.stopping && bq_worker_held(w) > low)
            wait_space(w);
        w->tasks.wake_at = INT_MAX;
    } else if (!w->life.stopping && bq_worker_held(w) >= cap && w->tasks.acks.n == 0) {
        /* Every slot is busy with a task that takes a while: no fetch will carry their events
         * soon, so they go at once (worker_feed.c). */
        bq_worker_feed_waiting(w, true);
        while (!w->life.stopping && bq_worker_held(w) >= cap && w->tasks.acks.n == 0)
            wait_space(w);
        bq_worker_feed_waiting(w, false);
    }
    return cap;
}

/* Plans the round trip (w->mu held): takes the pending acks, and decides how many messages
 * to ask for, how long to block, whether to promote due retries and to renew the lease. */
static void plan_round_trip(bq_worker *w, struct round *r, int cap)
{
    /* The last round's emptied array goes back for the slots' acks: no growing it again,
     * under the lock, every round. */
    struct bq_batch spare = r->acks;
    r->acks = w->tasks.acks;
    w->tasks.acks = spare;
    int want = cap - bq_worker_held(w);
    r->seen_inflight = w->tasks.inflight;
    r->drain = w->life.drain;
    double now = r->now = bq_now_mono();
    struct bq_fetch_req *req = &r->req;
    memset(req, 0, sizeof *req);
    /* Until the lease is registered, a round trip only registers it: no task is ever leased
     * by a worker that nobody could reap. */
    req->max = !r->lease || w->lease.registered ? (size_t)(want > 0 ? want : 0) : 0;
    /* Wait only once a round trip found nothing: with a backlog every round trip takes a
     * batch at once (a blocking pop takes one message at a time), and acks made meanwhile
     * ride along instead of each taking its own round trip (see ack). */
    req->timeout = r->drain || r->busy || req->max == 0 ? 0 : w->conf.block_timeout;
    req->promote = now >= w->fetch.next_promote;
    if (req->timeout > 0 && !req->promote && w->fetch.next_promote - now < req->timeout) {
        req->timeout = w->fetch.next_promote - now > 0.001 ? w->fetch.next_promote - now : 0.001;
        req->exact = true; /* a promotion is due then: to the millisecond */
    }
    r->planned_promote = w->fetch.next_promote;
    if (req->promote) /* its reply sees every operation said before now */
        w->fetch.due_during = INFINITY;
    /* Renew the lease in this round trip if it would come due before it returns. */
    r->prev_beat = w->lease.last_beat;
    if (r->lease && now + req->timeout >= w->lease.last_beat + r->period) {
        req->lease = w->conf.lease;
        w->lease.last_beat = now;
    }
    w->fetch.blocking = req->timeout > 0;
    w->fetch.block_until = now + req->timeout;
}

void bq_worker_due(bq_worker *w, double seconds)
{
    double due = bq_now_mono() + (seconds > 0 ? seconds : 0);
    bool wake = false;
    pthread_mutex_lock(&w->mu);
    w->fetch.delayed_waiting = true;
    if (due < w->fetch.next_promote)
        w->fetch.next_promote = due;
    /* During a round trip that promotes, next_promote is already past: its reply, which may
     * not have seen this operation, sets the next one (settle_round_trip), so the time is
     * kept apart too, and a wait planned past it is cut either way. */
    if (due < w->fetch.due_during)
        w->fetch.due_during = due;
    wake = w->fetch.blocking && w->fetch.block_until > due;
    pthread_mutex_unlock(&w->mu);
    if (wake)
        w->broker->ops->interrupt(w->broker);
}

/* The round trip: fetches, carrying the acks (and maybe the renewal and the promotion), and
 * ahead of them the task events pending (worker_feed.c) -- unless it may block: then the
 * events are written first, so no path waits for them through the wait. */
static void fetch(bq_worker *w, struct round *r)
{
    r->req.nacks = r->acks.n;
    r->req.acks = r->acks.msgs;
    struct feed_take t;
    t.n = 0;
    if (r->req.timeout > 0) {
        bq_worker_feed_settle(w);
        bq_worker_feed_waiting(w, true);
    } else if (bq_worker_feed_take(w, &t) > 0) {
        r->req.feed = t.slice;
        r->req.feed_q = t.q;
        r->req.nfeed = t.n;
    }
    bq_err_clear(&r->err);
    r->st = w->broker->ops->fetch(w->broker, &w->conf.who, &r->req, &r->res, &r->batch, &r->err);
    if (r->req.timeout > 0)
        bq_worker_feed_waiting(w, false);
    bq_worker_feed_taken(w, &t, r->st == BQ_OK);
    r->req.feed = NULL;
    r->req.feed_q = NULL;
    r->req.nfeed = 0;
}

/* Takes in what the reply says whether or not the fetch succeeded: acks that may not have
 * been applied are kept for the next round, the lease's renewal, when to promote next, acks
 * that found their task gone, and dead workers to reap. */
static void settle_round_trip(bq_worker *w, struct round *r)
{
    const struct bq_fetch_req *req = &r->req;
    const struct bq_fetch_res *res = &r->res;
    pthread_mutex_lock(&w->mu);
    w->fetch.blocking = false;
    if (r->st != BQ_OK || req->nacks < r->acks.n) {
        /* The acks may not have been applied: keep them for the next round. */
        for (size_t i = 0; i < r->acks.n; i++) {
            if (bq_batch_take(&w->tasks.acks, r->acks.msgs[i]) != BQ_OK)
                bq_free(r->acks.msgs[i].data);
        }
        r->acks.n = 0;
    }
    if (req->lease > 0 && !res->renewed && w->lease.last_beat == r->now)
        w->lease.last_beat = r->prev_beat; /* not renewed after all: the heartbeat thread will */
    if (res->renewed)
        w->lease.registered = true;
    if (r->st == BQ_OK && req->promote) {
        double wait = res->next_due >= 0 && res->next_due < w->conf.block_timeout
                          ? res->next_due : w->conf.block_timeout;
        double next = r->now + (wait > 0.001 ? wait : 0.001);
        /* Brought forward during the round trip (a retry of a slot, a producer's delayed
         * operation said on the control channel): the reply may not have seen it. */
        if (w->fetch.next_promote < r->planned_promote && w->fetch.next_promote < next)
            next = w->fetch.next_promote;
        if (w->fetch.due_during < next)
            next = w->fetch.due_during;
        w->fetch.next_promote = next;
        w->fetch.delayed_waiting = res->next_due >= 0 || next < r->now + wait;
    }
    if (r->st == BQ_OK && res->recheck && r->now < w->fetch.next_promote) {
        w->fetch.next_promote = r->now; /* see bq_fetch_res.recheck */
        w->fetch.delayed_waiting = true;
    }
    pthread_mutex_unlock(&w->mu);
    if (r->st == BQ_OK && res->acked < req->nacks) {
        for (size_t i = res->acked; i < req->nacks; i++)
            bq_worker_lease_lost(w, "ack", NULL);
    }
    bq_batch_clear(&r->acks);
    bq_worker_reap_dead(w, &r->res.dead);
}

/* A failed round trip: said, counted, and the next one delayed (a stop cuts the wait). */
static void back_off(bq_worker *w, struct round *r)
{
    r->unsure = r->unsure || (r->lease && r->req.max > 0);
    atomic_fetch_add(&w->count.redis_errors, 1);
    bq_broker_explain_auth(w->broker, &r->err); /* a password changed meanwhile: say where */
    bq_log(BQ_LOG_ERROR, "redis_error", "op", "fetch", "queue", w->conf.queue, "worker",
           w->conf.id, "error", r->err.msg, "code", bq_status_name(r->st), NULL);
    double delay = bq_backoff_delay(r->failures++, RECONNECT_BASE, RECONNECT_CAP,
                                    BQ_JITTER_EQUAL, bq_random_unit());
    pthread_mutex_lock(&w->mu);
    if (!w->life.stopping)
        bq_cond_wait_for(&w->cv_space, &w->mu, delay);
    pthread_mutex_unlock(&w->mu);
}

/* A round trip that succeeded: a reconnection and promotions said, the messages counted, and
 * whether the queue is deep decided. */
static void note_fetched(bq_worker *w, struct round *r)
{
    if (r->failures > 0) {
        char n[16];
        snprintf(n, sizeof n, "%d", r->failures);
        atomic_fetch_add(&w->count.reconnects, 1);
        bq_log(BQ_LOG_INFO, "reconnected", "queue", w->conf.queue, "worker", w->conf.id,
               "#failed_attempts", n, "address", w->broker->address, NULL);
        r->failures = 0;
    }
    if (r->res.promoted > 0 && bq_log_enabled(BQ_LOG_DEBUG)) {
        char n[24];
        snprintf(n, sizeof n, "%zu", r->res.promoted);
        bq_log(BQ_LOG_DEBUG, "promoted", "queue", w->conf.queue, "worker", w->conf.id,
               "#count", n, NULL);
    }
    atomic_fetch_add(&w->count.fetched, (long long)r->batch.n);
    r->busy = r->batch.n > 0;
    /* Deep when this round trip filled what it asked for, batching is on, and tasks are
     * quick: a worker whose handlers take long must not hold tasks that another worker
     * could run now. */
    pthread_mutex_lock(&w->mu);
    w->fetch.deep = w->conf.batch > 0 && r->req.max > 0 && r->batch.n == r->req.max &&
                    w->fetch.ewma_handle < BATCH_MAX_HANDLE;
    pthread_mutex_unlock(&w->mu);
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
        bq_log(BQ_LOG_WARN, "malformed", "queue", queue_of(w, m->q), "worker", w->conf.id,
               "reason", reason, NULL);
        bq_worker_bury(w, m, &out, NULL);
        largest = m->len > largest ? m->len : largest;
        bq_free(m->data);
    }
    batch->n = kept;
    if (largest >= TRIM_AFTER)
        malloc_trim(0);
}

/* In drain mode, after a round trip that found nothing (w->mu held): the worker stops once
 * nothing waits, nothing runs and no retry is due later; until then it waits for a slot to
 * finish or the next promotion rather than spin. */
static void check_drained(bq_worker *w, const struct round *r)
{
    if (w->tasks.inflight == 0 && w->tasks.acks.n == 0 && !w->fetch.delayed_waiting) {
        w->life.stopping = true;
        w->life.stop_at = bq_now_mono();
        return;
    }
    while (!w->life.stopping && w->tasks.inflight == r->seen_inflight && w->tasks.acks.n == 0) {
        double until = w->fetch.next_promote - bq_now_mono();
        if (until <= 0 || bq_cond_wait_for(&w->cv_space, &w->mu, until))
            break;
    }
}

/* Puts the fetched messages in the ring and wakes as many slots; the ring owns them now. */
static void hand_out(bq_worker *w, struct round *r)
{
    struct bq_batch *batch = &r->batch;
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < batch->n; i++) {
        int tail = (w->tasks.ring_head + w->tasks.ring_n) % w->conf.capacity;
        batch->msgs[i].seq = atomic_fetch_add(&w->tasks.seq, 1) + 1;
        w->tasks.ring[tail] = batch->msgs[i];
        w->tasks.ring_n++;
        w->tasks.inflight++;
    }
    if (batch->n > 1)
        pthread_cond_broadcast(&w->cv_task);
    else if (batch->n == 1)
        pthread_cond_signal(&w->cv_task);
    /* Slots holding several tasks wait in their handlers' loop, not on cv_task. */
    for (int i = 0; batch->n > 0 && w->conf.per_slot > 1 && i < w->conf.concurrency; i++) {
        struct slot *s = &w->slots[i];
        if (s->polling && s->nheld < w->conf.per_slot)
            bq_slot_wake(&s->ctl);
    }
    if (batch->n == 0 && r->drain && r->req.max > 0)
        check_drained(w, r);
    pthread_mutex_unlock(&w->mu);
    batch->n = 0;
}

/* Marks in taken the first entry of wip not yet taken that equals m (m may be NULL or have
 * no data: nothing). */
static void take_equal(const struct bq_batch *wip, bool *taken, const struct bq_msg *m)
{
    for (size_t i = 0; m != NULL && m->data != NULL && i < wip->n; i++) {
        if (!taken[i] && wip->msgs[i].q == m->q && wip->msgs[i].len == m->len &&
            memcmp(wip->msgs[i].data, m->data, m->len) == 0) {
            taken[i] = true;
            return;
        }
    }
}

/* After a fetch whose reply was lost, Redis may have moved messages into this worker's
 * in-flight list that the worker never received; its own lease keeps them from being
 * reaped while it lives. Compares the in-flight lists with every place the worker holds a
 * message (the ring; each slot's running task or held tasks, its chunk, its outcomes
 * pending and what it carries out without the lock; the pending acks) and hands the rest
 * back. The in-flight lists are read first: a message finished meanwhile is no longer there
 * when the hand-back looks for it (the hand-back moves only messages it finds). Dispatcher
 * thread. Returns false when the check could not be made, so the caller tries again after
 * its next fetch. */
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
    if (w->life.abandoned) { /* the process is leaving: the slots' stacks are not to be read */
        pthread_mutex_unlock(&w->mu);
        bq_free(taken);
        bq_batch_free(&wip);
        return true;
    }
    /* Each message held accounts for one identical entry. */
    for (int h = 0; h < w->tasks.ring_n; h++)
        take_equal(&wip, taken, &w->tasks.ring[(w->tasks.ring_head + h) % w->conf.capacity]);
    for (int i = 0; i < w->conf.concurrency; i++) {
        const struct slot *s = &w->slots[i];
        for (int p = 0; p < w->conf.per_slot; p++)
            take_equal(&wip, taken, slot_msg(s, w->conf.per_slot, p));
        for (int j = s->chunk_at; j < s->chunk_n; j++)
            take_equal(&wip, taken, &s->chunk[j]);
        for (int j = 0; j < s->npend; j++)
            take_equal(&wip, taken, &s->pend[j]);
        for (int j = 0; j < s->ntransit; j++)
            take_equal(&wip, taken, &s->transit[j]);
    }
    for (size_t h = 0; h < w->tasks.acks.n; h++)
        take_equal(&wip, taken, &w->tasks.acks.msgs[h]);
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
        ok = bq_worker_handback(w, wip.msgs, n, "a fetch reply was lost");
    }
    bq_batch_free(&wip);
    return ok;
}

/* After a failed fetch that may have taken messages, looks for orphans (recover_orphans). A
 * failed check is made again (or the orphans would stay), backing off from 1 s to 30 s so a
 * check that cannot succeed (an ACL without LRANGE) does not flood the log. */
static void check_orphans(bq_worker *w, struct round *r)
{
    if (!r->unsure || bq_now_mono() < r->orphan_at)
        return;
    if (recover_orphans(w)) {
        r->unsure = false;
        r->orphan_failures = 0;
    } else {
        r->orphan_at = bq_now_mono() + bq_backoff_delay(r->orphan_failures++, 1.0, 30.0,
                                                        BQ_JITTER_EQUAL, bq_random_unit());
    }
}

/* ---- Stopping ------------------------------------------------------------------------------ */

/* Acknowledges the pending acks directly (shutdown), their task events first. */
static void flush_acks(bq_worker *w)
{
    bq_worker_feed_settle(w);
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
        bq_worker_handback(w, left, n, "shutdown: not started");
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
                bq_slot_interrupt(&w->slots[i].ctl);
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
        ncopies += w->conf.per_slot > 1 ? (size_t)s->nheld : 0;
    }
    struct bq_msg *copies = ncopies > 0 ? bq_calloc(ncopies, sizeof *copies) : NULL;
    if (w->tasks.running > 0) {
        w->life.abandoned = true;
        for (int i = 0; copies != NULL && i < w->conf.concurrency; i++) {
            struct slot *s = &w->slots[i];
            for (int p = 0; w->conf.per_slot > 1 && p < w->conf.per_slot; p++) {
                const struct bq_msg *h = slot_msg(s, w->conf.per_slot, p);
                if (h == NULL)
                    continue;
                copies[nstuck].data = bq_strndup(h->data, h->len);
                copies[nstuck].len = h->len;
                copies[nstuck].q = h->q;
                nstuck += copies[nstuck].data != NULL;
            }
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
        bq_worker_handback(w, copies, nstuck, "shutdown: handler did not stop");
        for (size_t i = 0; i < nstuck; i++)
            bq_free(copies[i].data);
    }
    bq_free(copies);
}

/* After the shutdown: lets the slots leave (those not abandoned), sends the acks they made
 * meanwhile, stops the heartbeat, ends the lease and tells the owner. */
static void wind_up(bq_worker *w)
{
    pthread_mutex_lock(&w->mu);
    w->life.dispatcher_done = true;
    pthread_cond_broadcast(&w->cv_task);
    while (!w->life.abandoned && w->life.slots_alive > 0)
        pthread_cond_wait(&w->cv_space, &w->mu);
    bool abandoned = w->life.abandoned;
    pthread_mutex_unlock(&w->mu);
    flush_acks(w); /* acks made by slots since the shutdown began */
    bq_worker_stop_heartbeat(w);
    if (w->conf.who.delivery == BQ_AT_LEAST_ONCE && !abandoned) {
        bq_err err;
        bq_err_clear(&err);
        if (w->broker->ops->unregister(w->broker, &w->conf.who, &err) != BQ_OK) {
            bq_broker_explain_auth(w->broker, &err);
            bq_log(BQ_LOG_WARN, "redis_error", "op", "unregister", "queue", w->conf.queue,
                   "worker", w->conf.id, "error", err.msg, NULL);
        }
    }
    struct bq_event ev;
    memset(&ev, 0, sizeof ev);
    ev.kind = BQ_EVENT_STOPPED;
    bq_worker_push_event(w, &ev);
}

/* ---- The dispatcher thread ----------------------------------------------------------------- */

void *bq_worker_dispatcher_main(void *arg)
{
    bq_worker *w = arg;
    struct round r;
    memset(&r, 0, sizeof r);
    r.lease = w->conf.who.delivery == BQ_AT_LEAST_ONCE;
    r.period = w->conf.lease / 3;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        int cap = wait_for_room(w);
        if (w->life.stopping) {
            pthread_mutex_unlock(&w->mu);
            break;
        }
        plan_round_trip(w, &r, cap);
        pthread_mutex_unlock(&w->mu);

        fetch(w, &r);
        settle_round_trip(w, &r);
        if (r.st != BQ_OK) {
            back_off(w, &r);
            continue;
        }
        note_fetched(w, &r);
        set_aside_large(w, &r.batch);
        hand_out(w, &r);
        check_orphans(w, &r);
    }
    bq_batch_free(&r.batch);
    bq_batch_free(&r.acks);
    bq_batch_free(&r.res.dead);
    shut_down(w);
    wind_up(w);
    return NULL;
}
