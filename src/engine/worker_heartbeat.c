/*
 * worker_heartbeat.c -- the heartbeat thread (worker.h).
 *
 * The lease is renewed every lease/3. While the dispatcher fetches, its round trips carry
 * the renewal; this thread renews it when they do not (every slot busy with a long handler,
 * or Redis slow to answer), so a handler blocked for minutes keeps its task. A renewal also
 * reports the workers whose lease ran out: their tasks go back to the queue.
 */
#include "worker_int.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Seconds between reports (report-N.lua): the dashboard's rates lag by at most this. */
#define REPORT_PERIOD 5.0
#define MAX_REPORT_QUEUES 16

/* Moves the tasks of workers whose lease ran out back to the queue. */
void bq_worker_reap_dead(bq_worker *w, struct bq_batch *dead)
{
    for (size_t i = 0; i < dead->n; i++) {
        long long recovered = -1;
        bq_err err;
        const char *queue = queue_of(w, dead->msgs[i].q);
        bq_status st = w->broker->ops->reap(w->broker, queue, dead->msgs[i].data, &recovered,
                                            &err);
        if (st != BQ_OK) {
            atomic_fetch_add(&w->count.redis_errors, 1);
            bq_broker_explain_auth(w->broker, &err);
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

/* The worker's description for its report (report-N.lua): what the dashboard and
 * `binduq-lua workers` show beside the lease record. */
static void describe(bq_worker *w, bq_buf *b, long long done, long long failed)
{
    pthread_mutex_lock(&w->mu);
    int inflight = w->tasks.inflight, running = w->tasks.running;
    pthread_mutex_unlock(&w->mu);
    const char *id = w->conf.id;
    const char *colon = strchr(id, ':');
    bq_buf_puts(b, "{\"id\":");
    bq_buf_json_str(b, id, strlen(id));
    bq_buf_puts(b, ",\"host\":");
    bq_buf_json_str(b, id, colon != NULL ? (size_t)(colon - id) : strlen(id));
    bq_buf_puts(b, ",\"pid\":");
    bq_buf_put_int(b, (long long)getpid());
    bq_buf_puts(b, ",\"queues\":[");
    for (int i = 0; i < w->conf.nqueues; i++) {
        if (i > 0)
            bq_buf_putc(b, ',');
        bq_buf_json_str(b, w->conf.queues[i], strlen(w->conf.queues[i]));
    }
    bq_buf_puts(b, "],\"concurrency\":");
    bq_buf_put_int(b, w->conf.concurrency);
    bq_buf_puts(b, ",\"per_slot\":");
    bq_buf_put_int(b, w->conf.per_slot);
    bq_buf_puts(b, ",\"delivery\":");
    bq_buf_puts(b, w->conf.who.delivery == BQ_AT_LEAST_ONCE ? "\"at-least-once\""
                                                           : "\"at-most-once\"");
    bq_buf_puts(b, ",\"lease\":");
    bq_buf_put_secs(b, w->conf.lease);
    bq_buf_puts(b, ",\"started\":");
    bq_buf_put_secs(b, w->report.started);
    bq_buf_puts(b, ",\"at\":");
    bq_buf_put_secs(b, bq_now_wall());
    bq_buf_puts(b, ",\"inflight\":");
    bq_buf_put_int(b, inflight);
    bq_buf_puts(b, ",\"running\":");
    bq_buf_put_int(b, running);
    bq_buf_puts(b, ",\"completed\":");
    bq_buf_put_int(b, done);
    bq_buf_puts(b, ",\"failed\":");
    bq_buf_put_int(b, failed);
    bq_buf_puts(b, ",\"version\":\"" BQ_VERSION_STRING "\"}");
}

/* Sends the worker's report: its description, kept `ttl` seconds (0: deleted), and the tasks
 * finished since the last report that got through. Returns whether it got through. */
static bool report(bq_worker *w, double ttl)
{
    if (w->broker->ops->report == NULL)
        return true;
    int nq = w->conf.nqueues;
    long long done[MAX_REPORT_QUEUES], failed[MAX_REPORT_QUEUES], now_d[MAX_REPORT_QUEUES],
        now_f[MAX_REPORT_QUEUES], total_d = 0, total_f = 0;
    if (nq > MAX_REPORT_QUEUES)
        nq = MAX_REPORT_QUEUES;
    for (int i = 0; i < nq; i++) {
        now_d[i] = atomic_load_explicit(&w->report.done[i], memory_order_relaxed);
        now_f[i] = atomic_load_explicit(&w->report.failed[i], memory_order_relaxed);
        done[i] = now_d[i] - w->report.sent_done[i];
        failed[i] = now_f[i] - w->report.sent_failed[i];
        total_d += now_d[i];
        total_f += now_f[i];
    }
    bq_buf b = BQ_BUF_INIT;
    describe(w, &b, total_d, total_f);
    bq_err err;
    bq_status st = b.oom
                       ? bq_err_set(&err, BQ_ENOMEM, "report: out of memory")
                       : w->broker->ops->report(w->broker, &w->conf.who,
                                                (struct bq_slice){b.p, b.len}, ttl, done,
                                                failed, &err);
    bq_buf_free(&b);
    if (st != BQ_OK) {
        atomic_fetch_add(&w->count.redis_errors, 1);
        bq_broker_explain_auth(w->broker, &err);
        bq_log(BQ_LOG_ERROR, "redis_error", "op", "report", "queue", w->conf.queue, "worker",
               w->conf.id, "error", err.msg, "code", bq_status_name(st), NULL);
        return false;
    }
    for (int i = 0; i < nq; i++) {
        w->report.sent_done[i] = now_d[i];
        w->report.sent_failed[i] = now_f[i];
    }
    return true;
}

void *bq_worker_heartbeat_main(void *arg)
{
    bq_worker *w = arg;
    int failures = 0;
    struct bq_batch dead = {NULL, 0, 0};
    bool leased = w->conf.who.delivery == BQ_AT_LEAST_ONCE;
    double period = w->conf.lease / 3;
    double report_due = bq_now_mono(), beat_due = report_due;
    bool reported = false;
    for (;;) {
        double now = bq_now_mono();
        if (leased) {
            pthread_mutex_lock(&w->mu);
            double last = w->lease.last_beat;
            pthread_mutex_unlock(&w->mu);
            if (beat_due < last + period)
                beat_due = last + period;
        }
        if (leased && now >= beat_due) {
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
                bq_worker_reap_dead(w, &dead);
                beat_due = now + period;
            } else {
                atomic_fetch_add(&w->count.redis_errors, 1);
                bq_broker_explain_auth(w->broker, &err);
                bq_log(BQ_LOG_ERROR, "redis_error", "op", "heartbeat", "queue", w->conf.queue,
                       "worker", w->conf.id, "error", err.msg, "code", bq_status_name(st), NULL);
                beat_due = now + bq_backoff_delay(failures++, RECONNECT_BASE, RECONNECT_CAP,
                                                  BQ_JITTER_EQUAL, bq_random_unit());
            }
        }
        if (now >= report_due) {
            /* The description outlives a missed report or two, and a dead worker's lease. */
            reported = report(w, w->conf.lease + 3 * REPORT_PERIOD);
            report_due = now + REPORT_PERIOD;
        }
        double due = leased && beat_due < report_due ? beat_due : report_due;
        pthread_mutex_lock(&w->heartbeat.mu);
        double wait = due - bq_now_mono();
        if (!w->heartbeat.stop && wait > 0)
            bq_cond_wait_for(&w->heartbeat.cv, &w->heartbeat.mu, wait);
        bool stop = w->heartbeat.stop;
        pthread_mutex_unlock(&w->heartbeat.mu);
        if (stop)
            break;
    }
    /* The last counts, and the description gone with the worker (not tried when Redis did
     * not answer the last time: a stop must not wait for it). */
    if (reported)
        report(w, 0);
    bq_batch_free(&dead);
    return NULL;
}

void bq_worker_stop_heartbeat(bq_worker *w)
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
