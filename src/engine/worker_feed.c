/*
 * worker_feed.c -- the task events a worker writes (docs/events.md): what its handlers
 * report (started, progress: bq_worker_feed) and what becomes of each message (completed,
 * failed, retried, dead-lettered, canceled, paused, input-required: the outcome).
 *
 * Events wait in one buffer per queue (a JSON array being built) and are written, a whole
 * buffer as one stream entry, by whichever round trip goes first:
 *   - the dispatcher's fetch, ahead of the acks it carries (bq_worker_feed_take): under load
 *     events cost no round trip of their own;
 *   - a direct write of the slots -- an ack while the dispatcher waits, a retry, a
 *     dead-letter, a hand-back -- which writes what is pending first (bq_worker_feed_settle);
 *   - else the feed thread, once the oldest event has waited FEED_LINGER, so an event of a
 *     long-running task (started, progress) is out within a few milliseconds; at once while
 *     the dispatcher waits in a blocking fetch (an idle worker: no fetch would carry it).
 * An event is therefore written before the ack of its task, never after: a worker that dies
 * between the two has its task redelivered, and the redelivery reports the stored state
 * again (at-least-once). `sending` makes the paths take turns, so two writes never overtake
 * each other on different connections.
 */
#include "worker_int.h"

#include "../core/buf.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define FEED_LINGER 0.001    /* seconds the feed thread lets events wait for a round trip */
#define FEED_MAX_PENDING (4u << 20) /* bytes pending before an add waits for a write */

bq_status bq_worker_feed_init(bq_worker *w, bool on, bq_err *err)
{
    struct worker_feed *f = &w->feed;
    pthread_mutex_init(&f->mu, NULL);
    bq_cond_init(&f->cv);
    f->inited = true;
    f->on = on;
    if (!on)
        return BQ_OK;
    f->pend = bq_calloc((size_t)w->conf.nqueues, sizeof *f->pend);
    bq_buf_puts(&f->worker, ",\"worker\":"); /* every event's last field, written once */
    bq_buf_json_str(&f->worker, w->conf.id, strlen(w->conf.id));
    if (f->pend == NULL || f->worker.oom)
        return bq_err_set(err, BQ_ENOMEM, "worker: out of memory");
    return BQ_OK;
}

void bq_worker_feed_destroy(bq_worker *w)
{
    struct worker_feed *f = &w->feed;
    if (!f->inited)
        return;
    for (int i = 0; f->pend != NULL && i < w->conf.nqueues; i++)
        bq_buf_free(&f->pend[i]);
    bq_free(f->pend);
    f->pend = NULL;
    bq_buf_free(&f->worker);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    f->inited = false;
}

/* Takes f->mu to add an event to queue *q's buffer (an unknown q is the first queue), once
 * what is pending is under FEED_MAX_PENDING or being written, and returns that buffer with a
 * comma written if it holds events already; *from is where the event begins. */
static bq_buf *add_begin(bq_worker *w, int *q, size_t *from)
{
    struct worker_feed *f = &w->feed;
    if (*q < 0 || *q >= w->conf.nqueues)
        *q = 0;
    pthread_mutex_lock(&f->mu);
    while (f->bytes > FEED_MAX_PENDING && f->sending && !f->stop)
        pthread_cond_wait(&f->cv, &f->mu); /* Redis is slow: do not outgrow memory */
    bq_buf *b = &f->pend[*q];
    *from = b->len;
    if (b->len > 0)
        bq_buf_putc(b, ',');
    return b;
}

/* Counts the event add_begin's buffer gained since from and releases f->mu. An event that
 * ran out of memory half-built is taken back whole: the buffer holds what it held. */
static void add_end(bq_worker *w, bq_buf *b, size_t from)
{
    struct worker_feed *f = &w->feed;
    if (b->oom) {
        b->oom = false; /* a failed growth leaves the buffer as it was */
        b->len = from;
        if (b->p != NULL)
            b->p[from] = '\0';
    } else if (b->len > from) {
        f->bytes += b->len - from;
        if (f->n++ == 0) {
            f->first_at = bq_now_mono();
            pthread_cond_broadcast(&f->cv); /* the feed thread starts counting */
        }
    }
    pthread_mutex_unlock(&f->mu);
}

/* Appends one event (a JSON object) to queue q's buffer. */
static void add(bq_worker *w, int q, const char *json, size_t len)
{
    size_t from;
    bq_buf *b = add_begin(w, &q, &from);
    bq_buf_append(b, json, len);
    add_end(w, b, from);
}

/* The index of the worker's queue named queue; 0 (the first) for NULL or a name it has not. */
static int queue_index(const bq_worker *w, const char *queue)
{
    for (int i = 0; queue != NULL && i < w->conf.nqueues; i++)
        if (strcmp(w->conf.queues[i], queue) == 0)
            return i;
    return 0;
}

bq_status bq_worker_feed(bq_worker *w, const char *queue, const char *json, size_t len)
{
    if (!w->feed.on)
        return BQ_OK;
    int q = queue_index(w, queue);
    add(w, q, json, len);
    return BQ_OK;
}

void bq_worker_feed_waiting(bq_worker *w, bool waiting)
{
    struct worker_feed *f = &w->feed;
    if (!f->on)
        return;
    pthread_mutex_lock(&f->mu);
    f->waiting = waiting;
    if (waiting && f->n > 0)
        pthread_cond_broadcast(&f->cv); /* what lingers goes now */
    pthread_mutex_unlock(&f->mu);
}

bool bq_worker_feed_on(const bq_worker *w)
{
    return w->feed.on;
}

/* The event an outcome reports, or NULL for none (a hand-back, a rate-limit deferral). */
static const char *outcome_event(const struct bq_outcome *out)
{
    switch (out->kind) {
    case BQ_OUTCOME_COMPLETED:
    case BQ_OUTCOME_CANCELED:
    case BQ_OUTCOME_PAUSED:
    case BQ_OUTCOME_WAITING:
    case BQ_OUTCOME_DROPPED:
        return out->state[0] ? out->state : NULL;
    case BQ_OUTCOME_SKIPPED: /* a redelivery of a finished task: its state again */
        return bq_task_state_terminal(out->state) ? out->state : NULL;
    case BQ_OUTCOME_RETRY:
        return "retried";
    case BQ_OUTCOME_DEAD:
        return "dead-lettered";
    case BQ_OUTCOME_MALFORMED:
        return out->task_id[0] ? "dead-lettered" : NULL;
    default:
        return NULL;
    }
}

/* The fields every event of this worker starts with: {"event":..,"task_id":..,["state":..,]
 * "at":..,"attempt":..,"worker":.. (the object left open). */
static void put_head(bq_buf *b, const bq_worker *w, const char *event, const char *task_id,
                     size_t idlen, const char *state, double at, long long attempt)
{
    BQ_BUF_LIT(b, "{\"event\":");
    bq_buf_json_str(b, event, strlen(event));
    BQ_BUF_LIT(b, ",\"task_id\":");
    bq_buf_json_str(b, task_id, idlen);
    if (state != NULL && state[0]) {
        BQ_BUF_LIT(b, ",\"state\":");
        bq_buf_json_str(b, state, strlen(state));
    }
    BQ_BUF_LIT(b, ",\"at\":");
    bq_buf_put_secs(b, at);
    BQ_BUF_LIT(b, ",\"attempt\":");
    bq_buf_put_int(b, attempt);
    bq_buf_append(b, w->feed.worker.p, w->feed.worker.len);
}

void bq_worker_feed_started(bq_worker *w, const char *queue, const char *task_id, size_t idlen,
                            long long attempt)
{
    if (!w->feed.on || !bq_utf8_valid(task_id, idlen, NULL))
        return;
    int q = queue_index(w, queue);
    double at = bq_now_wall();
    size_t from;
    bq_buf *b = add_begin(w, &q, &from); /* built in place: no buffer of its own to grow */
    put_head(b, w, "started", task_id, idlen, "working", at, attempt);
    bq_buf_putc(b, '}');
    add_end(w, b, from);
}

void bq_worker_feed_outcome(bq_worker *w, const struct bq_msg *msg,
                            const struct bq_outcome *out)
{
    const char *event = outcome_event(out);
    if (!w->feed.on || event == NULL || out->task_id[0] == '\0')
        return;
    /* The error's or reason's text is checked before the lock is taken. */
    bool failure = out->kind == BQ_OUTCOME_RETRY || out->kind == BQ_OUTCOME_DEAD ||
                   out->kind == BQ_OUTCOME_DROPPED || out->kind == BQ_OUTCOME_MALFORMED;
    bool error = failure && out->json != NULL && out->json[0] == '{';
    bool reason = !error && out->reason != NULL &&
                  bq_utf8_valid(out->reason, strlen(out->reason), NULL);
    double at = bq_now_wall();
    int q = msg->q;
    size_t from;
    bq_buf *b = add_begin(w, &q, &from); /* built in place: no buffer of its own to grow */
    put_head(b, w, event, out->task_id, strlen(out->task_id), out->state, at, out->attempt);
    if (out->kind == BQ_OUTCOME_RETRY) {
        BQ_BUF_LIT(b, ",\"delay\":");
        bq_buf_put_secs(b, out->delay);
    }
    if (out->kind == BQ_OUTCOME_SKIPPED)
        BQ_BUF_LIT(b, ",\"redelivered\":true");
    /* The error object the lifecycle built (JSON it encoded), or the reason as text. */
    if (error) {
        BQ_BUF_LIT(b, ",\"error\":");
        bq_buf_puts(b, out->json);
    } else if (reason) {
        BQ_BUF_LIT(b, ",\"reason\":");
        bq_buf_json_str(b, out->reason, strlen(out->reason));
    }
    bq_buf_putc(b, '}');
    add_end(w, b, from);
}

void bq_feed_take_free(struct feed_take *t)
{
    for (size_t i = 0; i < t->n; i++)
        bq_free(t->json[i]);
    t->n = 0;
}

/* Takes what is pending into t, each queue's events as one JSON array (f->mu held). */
static void take_locked(bq_worker *w, struct feed_take *t)
{
    struct worker_feed *f = &w->feed;
    t->n = 0;
    for (int q = 0; q < w->conf.nqueues && f->n > 0; q++) {
        bq_buf *b = &f->pend[q];
        if (b->len == 0)
            continue;
        size_t len = b->len;
        char *json = bq_malloc(len + 3);
        if (json == NULL) { /* leave it for later */
            continue;
        }
        json[0] = '[';
        memcpy(json + 1, b->p, len);
        json[len + 1] = ']';
        json[len + 2] = '\0';
        t->json[t->n] = json;
        t->slice[t->n] = (struct bq_slice){json, len + 2};
        t->q[t->n++] = q;
        b->len = 0;
    }
    if (t->n > 0) {
        bool left = false;
        for (int q = 0; q < w->conf.nqueues; q++)
            left = left || f->pend[q].len > 0;
        f->n = left ? f->n : 0;
        f->bytes = left ? f->bytes : 0;
    }
}

/* Waits until no other path is writing, then takes what is pending and marks the feed as
 * being written (f->mu held). */
static void begin_write(bq_worker *w, struct feed_take *t)
{
    struct worker_feed *f = &w->feed;
    while (f->sending)
        pthread_cond_wait(&f->cv, &f->mu);
    take_locked(w, t);
    f->sending = t->n > 0;
}

static void end_write(bq_worker *w)
{
    struct worker_feed *f = &w->feed;
    pthread_mutex_lock(&f->mu);
    f->sending = false;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

/* Writes what t holds on a pooled connection, retrying a while (the worker's writes do);
 * what cannot be written is counted and logged as lost. */
static void write_taken(bq_worker *w, struct feed_take *t)
{
    for (size_t i = 0; i < t->n; i++) {
        bq_err err;
        bq_status st;
        const char *queue = queue_of(w, t->q[i]);
        WITH_RETRIES(w, "events", (const char *)NULL,
                     w->broker->ops->feed_add(w->broker, queue, &t->slice[i], 1, &err));
        if (st != BQ_OK) {
            atomic_fetch_add(&w->count.events_lost, 1);
            bq_log(BQ_LOG_ERROR, "write_failed", "op", "events", "queue", queue, "worker",
                   w->conf.id, "outcome", "these task events are not in the stream", NULL);
        }
    }
    bq_feed_take_free(t);
}

void bq_worker_feed_settle(bq_worker *w)
{
    struct worker_feed *f = &w->feed;
    if (!f->on)
        return;
    struct feed_take t;
    pthread_mutex_lock(&f->mu);
    begin_write(w, &t);
    pthread_mutex_unlock(&f->mu);
    if (t.n == 0)
        return;
    write_taken(w, &t);
    end_write(w);
}

size_t bq_worker_feed_take(bq_worker *w, struct feed_take *t)
{
    struct worker_feed *f = &w->feed;
    t->n = 0;
    if (!f->on)
        return 0;
    pthread_mutex_lock(&f->mu);
    begin_write(w, t);
    pthread_mutex_unlock(&f->mu);
    return t->n;
}

void bq_worker_feed_taken(bq_worker *w, struct feed_take *t, bool written)
{
    if (t->n == 0)
        return;
    if (!written) /* the round trip failed: write them now, still ahead of the acks */
        write_taken(w, t);
    else
        bq_feed_take_free(t);
    end_write(w);
}

static void *feed_main(void *arg)
{
    bq_worker *w = arg;
    struct worker_feed *f = &w->feed;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        while (!f->stop && f->n == 0)
            pthread_cond_wait(&f->cv, &f->mu);
        if (f->stop)
            break;
        double wait = f->waiting ? 0 : f->first_at + FEED_LINGER - bq_now_mono();
        if (wait > 0) { /* the dispatcher may carry them meanwhile */
            bq_cond_wait_for(&f->cv, &f->mu, wait);
            continue;
        }
        struct feed_take t;
        begin_write(w, &t);
        if (t.n == 0)
            continue;
        pthread_mutex_unlock(&f->mu);
        write_taken(w, &t);
        pthread_mutex_lock(&f->mu);
        f->sending = false;
        pthread_cond_broadcast(&f->cv);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

void bq_worker_feed_start(bq_worker *w, int (*spawn)(pthread_t *, void *(*)(void *), void *))
{
    if (w->feed.on && spawn(&w->feed.thread, feed_main, w) == 0)
        w->feed.started = true;
    else if (w->feed.on)
        bq_log(BQ_LOG_ERROR, "thread_failed", "worker", w->conf.id, "thread", "events", NULL);
}

void bq_worker_feed_stop(bq_worker *w)
{
    struct worker_feed *f = &w->feed;
    if (!f->started)
        return;
    pthread_mutex_lock(&f->mu);
    f->stop = true;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->thread, NULL);
    f->started = false;
    bq_worker_feed_settle(w); /* what came last */
}
