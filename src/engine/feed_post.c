/*
 * feed_post.c -- a producer's task events, written by a thread of their own (feed_post.h).
 */
#include "feed_post.h"

#include "../core/alloc.h"
#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/log.h"

#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#define FEED_POST_LINGER 0.001        /* seconds the oldest event waits for more */
#define FEED_POST_MAX_PENDING (4u << 20) /* bytes pending before an add writes them itself */

struct pending {
    char *queue; /* owned */
    bq_buf buf;  /* its events, comma-separated */
};

struct bq_feed_post {
    bq_broker *broker;
    pthread_mutex_t mu;  /* guards everything below but `wmu` */
    pthread_cond_t cv;
    pthread_mutex_t wmu; /* held from a take to the end of its writes: entries keep order */
    struct pending *q;
    size_t nq, capq;
    size_t bytes;        /* pending over all queues */
    double first_at;     /* when the oldest pending event came (monotonic) */
    bool stop, started;
    pthread_t thread;
};

/* Takes each queue's events as one JSON array, and writes them (wmu held, mu not). The
 * table is emptied: a queue is in it only while it has events pending, so a producer that
 * routes to ever new queue names keeps no entry per name it ever used (nor scans them). */
static void write_pending(bq_feed_post *p)
{
    struct pending *take = NULL;
    size_t n = 0;
    pthread_mutex_lock(&p->mu);
    if (p->bytes > 0 && (take = bq_calloc(p->nq, sizeof *take)) != NULL) {
        for (size_t i = 0; i < p->nq; i++) {
            if (p->q[i].buf.len == 0) {
                bq_free(p->q[i].queue);
                bq_buf_free(&p->q[i].buf);
                continue;
            }
            take[n++] = p->q[i]; /* its name and events move to take */
        }
        p->nq = 0;
        p->bytes = 0;
    }
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < n; i++) {
        bq_buf out = BQ_BUF_INIT;
        bq_buf_putc(&out, '[');
        bq_buf_append(&out, take[i].buf.p, take[i].buf.len);
        bq_buf_putc(&out, ']');
        bq_err err;
        if (out.oom)
            bq_err_set(&err, BQ_ENOMEM, "out of memory");
        if (out.oom || p->broker->ops->feed_add(p->broker, take[i].queue,
                                                &(struct bq_slice){out.p, out.len}, 1,
                                                &err) != BQ_OK)
            bq_log(BQ_LOG_WARN, "events_write_failed", "queue", take[i].queue, "error", err.msg,
                   "outcome", "these task events are not in the stream", NULL);
        bq_buf_free(&out);
        bq_buf_free(&take[i].buf);
        bq_free(take[i].queue);
    }
    bq_free(take);
}

void bq_feed_post_flush(bq_feed_post *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->wmu);
    write_pending(p);
    pthread_mutex_unlock(&p->wmu);
}

static void *post_main(void *arg)
{
    bq_feed_post *p = arg;
    pthread_mutex_lock(&p->mu);
    while (!p->stop) {
        if (p->bytes == 0) {
            pthread_cond_wait(&p->cv, &p->mu);
            continue;
        }
        double wait = p->first_at + FEED_POST_LINGER - bq_now_mono();
        if (wait > 0) {
            bq_cond_wait_for(&p->cv, &p->mu, wait);
            continue;
        }
        pthread_mutex_unlock(&p->mu);
        bq_feed_post_flush(p);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

bq_feed_post *bq_feed_post_new(bq_broker *broker)
{
    bq_feed_post *p = bq_calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->broker = broker;
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->wmu, NULL);
    bq_cond_init(&p->cv);
    return p;
}

void bq_feed_post_add(bq_feed_post *p, const char *queue, const char *json, size_t len)
{
    bool flush = false;
    pthread_mutex_lock(&p->mu);
    struct pending *q = NULL;
    for (size_t i = 0; i < p->nq && q == NULL; i++)
        if (strcmp(p->q[i].queue, queue) == 0)
            q = &p->q[i];
    if (q == NULL && p->nq == p->capq) {
        size_t cap = p->capq ? p->capq * 2 : 4;
        struct pending *grown = bq_realloc(p->q, cap * sizeof *grown);
        if (grown != NULL) {
            p->q = grown;
            p->capq = cap;
        }
    }
    if (q == NULL && p->nq < p->capq) {
        char *name = bq_strdup(queue);
        if (name != NULL) {
            q = &p->q[p->nq++];
            q->queue = name;
            q->buf = (bq_buf)BQ_BUF_INIT;
        }
    }
    if (q == NULL) { /* out of memory: the event is lost, as a failed write's would be */
        pthread_mutex_unlock(&p->mu);
        return;
    }
    if (q->buf.len > 0)
        bq_buf_putc(&q->buf, ',');
    bq_buf_append(&q->buf, json, len);
    bool first = p->bytes == 0;
    if (first)
        p->first_at = bq_now_mono();
    p->bytes += len + 1;
    if (!p->started && !p->stop)
        p->started = pthread_create(&p->thread, NULL, post_main, p) == 0;
    if (!p->started || p->bytes > FEED_POST_MAX_PENDING)
        flush = true; /* no thread, or Redis is slow: the caller writes them */
    else if (first)
        pthread_cond_signal(&p->cv); /* the thread starts counting the linger */
    pthread_mutex_unlock(&p->mu);
    if (flush)
        bq_feed_post_flush(p);
}

size_t bq_feed_post_queues(bq_feed_post *p)
{
    pthread_mutex_lock(&p->mu);
    size_t n = p->nq;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void bq_feed_post_free(bq_feed_post *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->cv);
    bool started = p->started;
    pthread_mutex_unlock(&p->mu);
    if (started)
        pthread_join(p->thread, NULL);
    bq_feed_post_flush(p);
    for (size_t i = 0; i < p->nq; i++) {
        bq_free(p->q[i].queue);
        bq_buf_free(&p->q[i].buf);
    }
    bq_free(p->q);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->wmu);
    pthread_cond_destroy(&p->cv);
    bq_free(p);
}
