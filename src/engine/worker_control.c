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
    if (op == BQ_CONTROL_NONE)
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
        if (!here && bq_worker_publish(w, op, id, &err) != BQ_OK) {
            bq_broker_explain_auth(w->broker, &err);
            bq_log(BQ_LOG_WARN, "redis_error", "op", "publish", "task_id", id, "worker", w->conf.id,
                   "error", err.msg, NULL);
        }
        bq_log(BQ_LOG_INFO, "control_from_queue", "task_id", id, "op",
               op == BQ_CONTROL_CANCEL ? "cancel" : "pause", "worker", w->conf.id, "delivered",
               here ? "here" : "published", NULL);
    }
    bq_batch_free(&found);
}
