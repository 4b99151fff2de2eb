/*
 * worker_control.c -- cancel and pause of a running task (worker.h, enum bq_control).
 *
 * Cancel and pause must reach the worker that runs the task, not whichever worker pops the
 * next message: producers publish "cancel <id>" / "pause <id>" on the control channel of
 * the queue, every worker listens on a connection of its own, and the one whose slot runs
 * the task sets that slot's control flag. The handler sees it at its next yield point (a
 * binduq call) or, for a cancel, at the count hook. A missed publication is caught by the
 * stored state (see lua/binduq/worker.lua). The slot control blocks that requests reach are
 * worker_slots.c's (bq_slot_request).
 *
 * Also here: cancels and pauses pushed into the queue itself (Bindu's API), which the
 * dispatcher looks for while it waits for room (Controls in the queue, below).
 */
#include "worker_int.h"

#include "../core/id.h"

#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* ---- Control channel ---------------------------------------------------------------------- */

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

/* ---- Controls that come early -------------------------------------------------------------
 * A slot names its task (bq_slot_set_task) only once it has taken the message from the ring
 * and decoded it; a message fetched a moment earlier is nobody's yet. A cancel or pause that
 * comes in that moment -- found in the queue by a scan (below) or heard on the channel --
 * finds no slot, and the scan reports each operation once: it would be lost, and the handler
 * would run to its end (a Bindu run, pause, resume queued together: the run completed and the
 * resume found nothing to resume). So a request that finds no slot is kept (struct
 * worker_early) for the messages this worker fetched before it came, and the slot that
 * names such a message's task takes it (bq_worker_claim_control), as if it had come just
 * after. A message fetched later -- the resume that answers the pause -- never takes it. An
 * entry ends when taken, EARLY_KEEP seconds after the last message fetched before it left the
 * ring (every slot names its task within its prepare), or when EARLY_MAX newer ones push it
 * out. Every naming looks at `n` first: with nothing kept, a task pays one atomic load. */
#define EARLY_KEEP 10.0

/* Drops the entries that ended (early.mu held). */
static void early_expire(bq_worker *w, double now)
{
    int k = 0;
    for (int i = 0; i < w->early.used; i++) {
        if (w->early.e[i].expire > now)
            w->early.e[k++] = w->early.e[i];
    }
    atomic_fetch_sub(&w->early.n, w->early.used - k);
    w->early.used = k;
}

/* Keeps op for task_id's messages fetched until now (early.mu held; `n` already counts it). */
static void early_keep(bq_worker *w, enum bq_control op, const char *task_id)
{
    double now = bq_now_mono();
    early_expire(w, now);
    int i = 0;
    while (i < w->early.used && strcmp(w->early.e[i].id, task_id) != 0)
        i++;
    if (i < w->early.used) { /* kept already: a cancel outranks a pause */
        if (op == BQ_CONTROL_CANCEL)
            w->early.e[i].op = op;
        w->early.e[i].expire = now + EARLY_KEEP;
        atomic_fetch_sub(&w->early.n, 1);
        return;
    }
    if (i == EARLY_MAX) { /* full: the one that ends soonest makes room */
        i = 0;
        for (int j = 1; j < EARLY_MAX; j++)
            if (w->early.e[j].expire < w->early.e[i].expire)
                i = j;
        atomic_fetch_sub(&w->early.n, 1);
    } else {
        w->early.used++;
    }
    snprintf(w->early.e[i].id, sizeof w->early.e[i].id, "%s", task_id);
    w->early.e[i].op = op;
    w->early.e[i].seq = atomic_load(&w->tasks.seq);
    w->early.e[i].expire = now + EARLY_KEEP;
}

bool bq_worker_control(bq_worker *w, enum bq_control op, const char *task_id)
{
    /* Counted before the slots are looked at, under early.mu: a slot that names the task
     * after they were looked at sees `n` above 0, and waits for early.mu, so it finds the
     * entry kept for it. */
    pthread_mutex_lock(&w->early.mu);
    atomic_fetch_add(&w->early.n, 1);
    bool found = false;
    for (int i = 0; i < w->conf.concurrency; i++)
        found = bq_slot_request(&w->slots[i].ctl, op, task_id) || found;
    if (found)
        atomic_fetch_sub(&w->early.n, 1);
    else
        early_keep(w, op, task_id);
    pthread_mutex_unlock(&w->early.mu);
    return found;
}

int bq_worker_claim_control(bq_worker *w, const char *task_id, unsigned long long seq)
{
    if (atomic_load(&w->early.n) == 0 || seq == 0 || task_id == NULL)
        return BQ_CONTROL_NONE;
    int op = BQ_CONTROL_NONE;
    pthread_mutex_lock(&w->early.mu);
    for (int i = 0; i < w->early.used; i++) {
        if (seq <= w->early.e[i].seq && strcmp(w->early.e[i].id, task_id) == 0) {
            op = w->early.e[i].op;
            w->early.e[i] = w->early.e[--w->early.used];
            atomic_fetch_sub(&w->early.n, 1);
            break;
        }
    }
    pthread_mutex_unlock(&w->early.mu);
    return op;
}

/* The scan published a request it had delivered or kept here (bq_worker_scan_controls). */
static void early_sent(bq_worker *w, enum bq_control op, const char *id)
{
    pthread_mutex_lock(&w->early.mu);
    int n = (int)(sizeof w->early.sent / sizeof w->early.sent[0]);
    if (w->early.nsent == n) { /* the oldest, never heard back, makes room */
        memmove(&w->early.sent[0], &w->early.sent[1], (size_t)(n - 1) * sizeof w->early.sent[0]);
        w->early.nsent--;
    }
    snprintf(w->early.sent[w->early.nsent].id, sizeof w->early.sent[0].id, "%s", id);
    w->early.sent[w->early.nsent++].op = op;
    pthread_mutex_unlock(&w->early.mu);
}

/* A request heard on the channel: whether it is the copy of one this worker's scan sent
 * (then forgotten: a second one is another request). */
static bool early_own_copy(bq_worker *w, enum bq_control op, const char *id)
{
    bool own = false;
    pthread_mutex_lock(&w->early.mu);
    for (int i = 0; i < w->early.nsent && !own; i++) {
        if (w->early.sent[i].op == (int)op && strcmp(w->early.sent[i].id, id) == 0) {
            own = true;
            memmove(&w->early.sent[i], &w->early.sent[i + 1],
                    (size_t)(w->early.nsent - i - 1) * sizeof w->early.sent[0]);
            w->early.nsent--;
        }
    }
    pthread_mutex_unlock(&w->early.mu);
    return own;
}

/* The dispatcher, while it waits for room: the entries whose messages still wait in the ring
 * live on; the others run out. */
static void early_refresh(bq_worker *w)
{
    if (atomic_load(&w->early.n) == 0)
        return;
    pthread_mutex_lock(&w->mu);
    unsigned long long oldest = w->tasks.ring_n > 0 ? w->tasks.ring[w->tasks.ring_head].seq : 0;
    pthread_mutex_unlock(&w->mu);
    pthread_mutex_lock(&w->early.mu);
    double now = bq_now_mono();
    for (int i = 0; i < w->early.used; i++) {
        if (oldest != 0 && oldest <= w->early.e[i].seq)
            w->early.e[i].expire = now + EARLY_KEEP;
    }
    early_expire(w, now);
    pthread_mutex_unlock(&w->early.mu);
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

/* "due <ms>": an operation a producer delayed is due in ms milliseconds (delay-N.lua);
 * -1 for any other message. */
static double parse_due(const char *msg, size_t len)
{
    if (len < 5 || len > 24 || memcmp(msg, "due ", 4) != 0)
        return -1;
    double ms = 0;
    for (size_t i = 4; i < len; i++) {
        if (msg[i] < '0' || msg[i] > '9')
            return -1;
        ms = ms * 10 + (msg[i] - '0');
    }
    return ms;
}

static void on_control(void *ud, const char *msg, size_t len)
{
    bq_worker *w = ud;
    double due = parse_due(msg, len);
    if (due >= 0) {
        bq_worker_due(w, due / 1000.0);
        return;
    }
    char id[BQ_MAX_ID_LEN + 1];
    enum bq_control op = bq_control_parse(msg, len, id, sizeof id);
    if (op == BQ_CONTROL_NONE || early_own_copy(w, op, id))
        return;
    if (bq_worker_control(w, op, id))
        bq_log(BQ_LOG_INFO, "control", "task_id", id, "op", op == BQ_CONTROL_CANCEL ? "cancel"
               : "pause", "worker", w->conf.id, NULL);
}

/* The channel is listened to (at start, and again after it was lost): a "due" said before
 * then reached nobody here, so the delayed operations are looked at now rather than at the
 * end of a wait planned without them. */
static void on_subscribed(void *ud)
{
    bq_worker_due(ud, 0);
}

void *bq_worker_control_main(void *arg)
{
    bq_worker *w = arg;
    int failures = 0;
    for (;;) {
        bq_err err;
        bq_status st = w->broker->ops->listen(w->broker, w->conf.control_queue, on_control, on_subscribed, w,
                                              w->control.stopfd, &err);
        if (st == BQ_EINTR)
            break;
        bq_broker_explain_auth(w->broker, &err); /* a refused password names the address */
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

void bq_worker_stop_control(bq_worker *w)
{
    if (!w->control.started)
        return;
    uint64_t one = 1;
    if (write(w->control.stopfd, &one, sizeof one) != (ssize_t)sizeof one)
        bq_log(BQ_LOG_ERROR, "control_stop_failed", "worker", w->conf.id, NULL);
    pthread_join(w->control.thread, NULL);
    w->control.started = false;
}

/* ---- Controls in the queue ----------------------------------------------------------------
 * Bindu's API has no control channel: it pushes cancel and pause into the queue, where they
 * wait behind the runs queued before them. A worker whose handler slots are all busy takes
 * nothing from the queue, so such a cancel would reach its running task only once a slot
 * freed. So while the dispatcher waits for a free slot, every CONTROL_SCAN seconds
 * (worker_int.h) it asks the broker for the cancels and pauses among the newest
 * CONTROL_WINDOW entries of its queues (controls-3.lua: one scan of a queue per period across
 * all its workers, each operation reported once) and delivers them at once: to its own slot
 * running the task, else on the control channel to whichever worker runs it. The operations
 * stay queued and are handled in their turn as well (the stored state, the notification
 * handlers). */
#define CONTROL_WINDOW 1000
/* The shared spacing of scans is a little shorter than each worker's period, so a worker's
 * scan is never refused because the previous one (maybe its own) has not quite expired. */
#define CONTROL_SPACING (CONTROL_SCAN * 0.8)

void bq_worker_scan_controls(bq_worker *w)
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
            bq_broker_explain_auth(w->broker, &err);
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
        if (!here) {
            early_sent(w, op, id); /* before the copy can come back */
            if (bq_worker_publish(w, op, id, &err) != BQ_OK) {
                early_own_copy(w, op, id);
                bq_broker_explain_auth(w->broker, &err);
                bq_log(BQ_LOG_WARN, "redis_error", "op", "publish", "task_id", id, "worker",
                       w->conf.id, "error", err.msg, NULL);
            }
        }
        bq_log(BQ_LOG_INFO, "control_from_queue", "task_id", id, "op",
               op == BQ_CONTROL_CANCEL ? "cancel" : "pause", "worker", w->conf.id, "delivered",
               here ? "here" : "published", NULL);
    }
    bq_batch_free(&found);
    early_refresh(w);
}
