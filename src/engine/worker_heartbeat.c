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

void *bq_worker_heartbeat_main(void *arg)
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
                bq_worker_reap_dead(w, &dead);
                due = now + period;
            } else {
                atomic_fetch_add(&w->count.redis_errors, 1);
                bq_broker_explain_auth(w->broker, &err);
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
