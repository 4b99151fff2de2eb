/*
 * worker.c -- see worker.h.
 *
 * Locking: one mutex `mu` guards the ready ring, the counters inflight/running, the lifecycle
 * flags and the slot-init bookkeeping. Slots wait on cv_task, the dispatcher on cv_space, the
 * starter on cv_init. The event queue has its own mutex and an eventfd so the owner thread
 * can poll it together with a signal descriptor.
 */
#include "worker.h"

#include "../core/alloc.h"
#include "../core/backoff.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/log.h"
#include "../core/rand.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define RECONNECT_BASE 0.1  /* seconds; first reconnect delay is 50-100 ms */
#define RECONNECT_CAP 5.0   /* seconds; the delay never exceeds this */
#define DLQ_ATTEMPTS 6      /* tries to write a dead-letter entry before giving up */

struct event_node {
    struct bq_event ev;
    struct event_node *next;
};

struct slot {
    bq_worker *w;
    int index;
    pthread_t thread;
    void *state;
};

struct bq_worker {
    char id[96];
    char *queue;            /* owned */
    bq_broker *broker;      /* owned */
    int concurrency;
    double block_timeout;
    bool want_results;
    bool drain;
    struct bq_slot_ops ops;
    void *ud;

    pthread_mutex_t mu;
    pthread_cond_t cv_task, cv_space, cv_init;
    struct bq_msg *ring;    /* ready messages, capacity = concurrency */
    int ring_head, ring_n;
    int inflight;           /* fetched and not yet finished: in the ring or running */
    bool started, stopping, dispatcher_done, joined;
    int inits_done, init_failures, slots_alive;
    bq_err init_err;
    struct slot *slots;
    pthread_t dispatcher;
    bool dispatcher_started;

    pthread_mutex_t ev_mu;
    struct event_node *ev_head, *ev_tail;
    int evfd;

    atomic_llong n_fetched, n_completed, n_failed, n_malformed, n_dead;
};

const char *bq_worker_id(const bq_worker *w)
{
    return w->id;
}

const char *bq_worker_queue(const bq_worker *w)
{
    return w->queue;
}

bq_broker *bq_worker_broker(bq_worker *w)
{
    return w->broker;
}

void bq_event_clear(struct bq_event *ev)
{
    bq_free(ev->outcome.reason);
    bq_free(ev->outcome.json);
    memset(ev, 0, sizeof *ev);
}

/* Queues an event and wakes the owner. Takes ownership of ev's strings. */
static void push_event(bq_worker *w, const struct bq_event *ev)
{
    struct event_node *n = bq_calloc(1, sizeof *n);
    if (n == NULL) {
        struct bq_event tmp = *ev;
        bq_event_clear(&tmp);
        bq_log(BQ_LOG_ERROR, "event_dropped", "worker", w->id, "reason", "out of memory",
               NULL);
        return;
    }
    n->ev = *ev;
    pthread_mutex_lock(&w->ev_mu);
    if (w->ev_tail != NULL)
        w->ev_tail->next = n;
    else
        w->ev_head = n;
    w->ev_tail = n;
    pthread_mutex_unlock(&w->ev_mu);
    uint64_t one = 1;
    ssize_t k = write(w->evfd, &one, sizeof one);
    (void)k;
}

static bool pop_event(bq_worker *w, struct bq_event *ev)
{
    pthread_mutex_lock(&w->ev_mu);
    struct event_node *n = w->ev_head;
    if (n != NULL) {
        w->ev_head = n->next;
        if (w->ev_head == NULL)
            w->ev_tail = NULL;
    }
    pthread_mutex_unlock(&w->ev_mu);
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
        struct pollfd p[2] = {{w->evfd, POLLIN, 0}, {sigfd, POLLIN, 0}};
        int n = poll(p, sigfd >= 0 ? 2 : 1, ms);
        if (n < 0 && errno != EINTR)
            return;
        if (n > 0 && (p[0].revents & POLLIN)) {
            uint64_t v;
            ssize_t k = read(w->evfd, &v, sizeof v);
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

/* ---- Outcome handling (slot threads) ------------------------------------------------------ */

/* Writes a dead-letter entry, retrying with backoff: losing it would lose the task. */
static void dead_letter(bq_worker *w, const struct bq_msg *msg, const struct bq_outcome *out)
{
    struct bq_dlq_info info = {
        out->reason ? out->reason : "unknown",
        out->kind == BQ_OUTCOME_FAILED ? out->json : NULL,
        out->task_id[0] ? out->task_id : NULL,
        out->type[0] ? out->type : NULL,
        w->queue,
        w->id,
        out->kind == BQ_OUTCOME_FAILED ? 1 : 0,
    };
    struct bq_msg entry;
    bq_err err;
    bq_status st = bq_dlq_entry(&info, msg->data, msg->len, &entry);
    for (int attempt = 0; st == BQ_OK && attempt < DLQ_ATTEMPTS; attempt++) {
        st = w->broker->ops->dead_letter(w->broker, w->queue, entry.data, entry.len, &err);
        if (st == BQ_OK) {
            atomic_fetch_add(&w->n_dead, 1);
            bq_log(BQ_LOG_WARN, "dead_lettered", "task_id", info.task_id, "queue", w->queue,
                   "worker", w->id, "reason", info.reason, NULL);
            bq_free(entry.data);
            return;
        }
        bq_log(BQ_LOG_ERROR, "redis_error", "op", "dead_letter", "queue", w->queue, "worker",
               w->id, "error", err.msg, "code", bq_status_name(st), NULL);
        bq_sleep(bq_backoff_delay(attempt, 0.2, 3.0, BQ_JITTER_EQUAL, bq_random_unit()));
        st = BQ_OK;
    }
    /* Last resort: the message goes to the log, so an operator can still recover it. */
    char len[24];
    snprintf(len, sizeof len, "%zu", msg->len);
    bq_log(BQ_LOG_ERROR, "dead_letter_failed", "task_id", info.task_id, "queue", w->queue,
           "worker", w->id, "reason", info.reason, "#bytes", len, "message", msg->data, NULL);
    bq_free(entry.data);
}

static void finish(bq_worker *w, const struct bq_msg *msg, struct bq_outcome *out,
                   double duration)
{
    char ms[32];
    snprintf(ms, sizeof ms, "%.3f", duration * 1000.0);
    const char *tid = out->task_id[0] ? out->task_id : NULL;
    const char *type = out->type[0] ? out->type : NULL;
    switch (out->kind) {
    case BQ_OUTCOME_COMPLETED:
        atomic_fetch_add(&w->n_completed, 1);
        bq_log(BQ_LOG_INFO, "completed", "task_id", tid, "type", type, "queue", w->queue,
               "worker", w->id, "#duration_ms", ms, NULL);
        break;
    case BQ_OUTCOME_FAILED:
        atomic_fetch_add(&w->n_failed, 1);
        bq_log(BQ_LOG_WARN, "failed", "task_id", tid, "type", type, "queue", w->queue,
               "worker", w->id, "#duration_ms", ms, "error", out->reason, NULL);
        dead_letter(w, msg, out);
        break;
    case BQ_OUTCOME_MALFORMED:
        atomic_fetch_add(&w->n_malformed, 1);
        bq_log(BQ_LOG_WARN, "malformed", "task_id", tid, "queue", w->queue, "worker", w->id,
               "reason", out->reason, NULL);
        dead_letter(w, msg, out);
        break;
    }
    if (w->want_results) {
        struct bq_event ev = {BQ_EVENT_RESULT, *out, duration};
        push_event(w, &ev); /* takes the strings */
    } else {
        bq_free(out->reason);
        bq_free(out->json);
    }
    out->reason = out->json = NULL;
}

/* ---- Slot threads -------------------------------------------------------------------------- */

static void *slot_main(void *arg)
{
    struct slot *s = arg;
    bq_worker *w = s->w;
    bq_err err;
    bq_err_clear(&err);
    bq_status st = w->ops.init(w->ud, s->index, &s->state, &err);
    pthread_mutex_lock(&w->mu);
    w->inits_done++;
    if (st != BQ_OK && w->init_failures++ == 0)
        w->init_err = err;
    pthread_cond_broadcast(&w->cv_init);
    /* Wait for the verdict of the start: every init done, none failed. */
    while (st == BQ_OK && !w->stopping && !w->started)
        pthread_cond_wait(&w->cv_task, &w->mu);
    pthread_mutex_unlock(&w->mu);

    while (st == BQ_OK) {
        pthread_mutex_lock(&w->mu);
        while (w->ring_n == 0 && !(w->stopping && w->dispatcher_done))
            pthread_cond_wait(&w->cv_task, &w->mu);
        if (w->ring_n == 0) {
            pthread_mutex_unlock(&w->mu);
            break;
        }
        struct bq_msg msg = w->ring[w->ring_head];
        w->ring_head = (w->ring_head + 1) % w->concurrency;
        w->ring_n--;
        pthread_mutex_unlock(&w->mu);

        struct bq_outcome out;
        memset(&out, 0, sizeof out);
        double t0 = bq_now_mono();
        w->ops.handle(s->state, &msg, &out);
        finish(w, &msg, &out, bq_now_mono() - t0);
        bq_free(msg.data);

        pthread_mutex_lock(&w->mu);
        w->inflight--;
        pthread_cond_signal(&w->cv_space);
        pthread_mutex_unlock(&w->mu);
    }
    /* A failed init cleans up after itself; only a slot that started is finalised. */
    if (st == BQ_OK && w->ops.fini != NULL)
        w->ops.fini(s->state);

    pthread_mutex_lock(&w->mu);
    bool last = --w->slots_alive == 0 && w->started;
    pthread_mutex_unlock(&w->mu);
    if (last) {
        struct bq_event ev;
        memset(&ev, 0, sizeof ev);
        ev.kind = BQ_EVENT_STOPPED;
        push_event(w, &ev);
    }
    return NULL;
}

/* ---- Dispatcher ---------------------------------------------------------------------------- */

static void *dispatcher_main(void *arg)
{
    bq_worker *w = arg;
    struct bq_batch batch = {NULL, 0, 0};
    int failures = 0;
    bq_err err;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (!w->stopping && w->inflight >= w->concurrency)
            pthread_cond_wait(&w->cv_space, &w->mu);
        int want = w->concurrency - w->inflight;
        int seen_inflight = w->inflight;
        bool stop = w->stopping, drain = w->drain;
        pthread_mutex_unlock(&w->mu);
        if (stop)
            break;

        bq_err_clear(&err);
        bq_status st = w->broker->ops->fetch(w->broker, w->queue, (size_t)want,
                                             drain ? 0 : w->block_timeout, &batch, &err);
        if (st != BQ_OK) {
            bq_log(BQ_LOG_ERROR, "redis_error", "op", "fetch", "queue", w->queue, "worker",
                   w->id, "error", err.msg, "code", bq_status_name(st), NULL);
            double delay = bq_backoff_delay(failures++, RECONNECT_BASE, RECONNECT_CAP,
                                            BQ_JITTER_EQUAL, bq_random_unit());
            pthread_mutex_lock(&w->mu);
            if (!w->stopping)
                bq_cond_wait_for(&w->cv_space, &w->mu, delay);
            pthread_mutex_unlock(&w->mu);
            continue;
        }
        if (failures > 0) {
            char n[16];
            snprintf(n, sizeof n, "%d", failures);
            bq_log(BQ_LOG_INFO, "reconnected", "queue", w->queue, "worker", w->id,
                   "#failed_attempts", n, "address", w->broker->address, NULL);
            failures = 0;
        }
        atomic_fetch_add(&w->n_fetched, (long long)batch.n);

        pthread_mutex_lock(&w->mu);
        for (size_t i = 0; i < batch.n; i++) {
            int tail = (w->ring_head + w->ring_n) % w->concurrency;
            w->ring[tail] = batch.msgs[i];
            w->ring_n++;
            w->inflight++;
        }
        if (batch.n > 1)
            pthread_cond_broadcast(&w->cv_task);
        else if (batch.n == 1)
            pthread_cond_signal(&w->cv_task);
        if (batch.n == 0 && drain) {
            if (w->inflight == 0) {
                w->stopping = true; /* drained: the queue is empty and nothing runs */
            } else {
                while (!w->stopping && w->inflight == seen_inflight)
                    pthread_cond_wait(&w->cv_space, &w->mu);
            }
        }
        pthread_mutex_unlock(&w->mu);
        batch.n = 0; /* the ring owns the messages now */
    }
    bq_batch_free(&batch);
    pthread_mutex_lock(&w->mu);
    w->dispatcher_done = true;
    pthread_cond_broadcast(&w->cv_task);
    pthread_mutex_unlock(&w->mu);
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
    if (o->block_timeout <= 0)
        return bq_err_set(err, BQ_EINVAL, "block_timeout must be positive");
    bq_worker *w = bq_calloc(1, sizeof *w);
    if (w == NULL)
        return bq_err_set(err, BQ_ENOMEM, "worker: out of memory");
    w->evfd = -1;
    w->concurrency = o->concurrency;
    w->block_timeout = o->block_timeout;
    w->want_results = o->want_results;
    w->ops = *ops;
    w->ud = ud;
    pthread_mutex_init(&w->mu, NULL);
    pthread_mutex_init(&w->ev_mu, NULL);
    bq_cond_init(&w->cv_task);
    bq_cond_init(&w->cv_space);
    bq_cond_init(&w->cv_init);

    char host[64] = "host", rnd[5];
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    unsigned char r[2];
    bq_random_bytes(r, sizeof r);
    snprintf(rnd, sizeof rnd, "%02x%02x", r[0], r[1]);
    snprintf(w->id, sizeof w->id, "%s:%d:%s", host, (int)getpid(), rnd);

    w->queue = bq_strdup(o->cfg->queue_name);
    w->ring = bq_calloc((size_t)w->concurrency, sizeof *w->ring);
    w->slots = bq_calloc((size_t)w->concurrency, sizeof *w->slots);
    w->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    bq_status st = BQ_OK;
    if (w->queue == NULL || w->ring == NULL || w->slots == NULL)
        st = bq_err_set(err, BQ_ENOMEM, "worker: out of memory");
    else if (w->evfd < 0)
        st = bq_err_set(err, BQ_EIO, "worker: eventfd: %s", strerror(errno));
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
    if (w->started || w->slots_alive > 0) {
        pthread_mutex_unlock(&w->mu);
        return bq_err_set(err, BQ_EINVAL, "worker already started");
    }
    w->drain = drain;
    pthread_mutex_unlock(&w->mu);

    int spawned = 0;
    for (int i = 0; i < w->concurrency; i++) {
        w->slots[i].w = w;
        w->slots[i].index = i;
        pthread_mutex_lock(&w->mu);
        w->slots_alive++;
        pthread_mutex_unlock(&w->mu);
        if (spawn(&w->slots[i].thread, slot_main, &w->slots[i]) != 0) {
            pthread_mutex_lock(&w->mu);
            w->slots_alive--;
            w->init_failures++;
            bq_err_set(&w->init_err, BQ_EIO, "worker: cannot create thread %d", i);
            pthread_mutex_unlock(&w->mu);
            break;
        }
        spawned++;
    }
    pthread_mutex_lock(&w->mu);
    while (w->inits_done < spawned)
        pthread_cond_wait(&w->cv_init, &w->mu);
    bool failed = w->init_failures > 0;
    if (failed) {
        w->stopping = true;
        w->dispatcher_done = true;
    } else {
        w->started = true;
    }
    pthread_cond_broadcast(&w->cv_task);
    pthread_mutex_unlock(&w->mu);

    if (failed) {
        for (int i = 0; i < spawned; i++)
            pthread_join(w->slots[i].thread, NULL);
        pthread_mutex_lock(&w->mu);
        w->joined = true;
        pthread_mutex_unlock(&w->mu);
        if (err != NULL)
            *err = w->init_err;
        return w->init_err.code != BQ_OK ? w->init_err.code : BQ_EIO;
    }
    if (spawn(&w->dispatcher, dispatcher_main, w) != 0) {
        bq_worker_stop(w);
        pthread_mutex_lock(&w->mu);
        w->dispatcher_done = true;
        pthread_cond_broadcast(&w->cv_task);
        pthread_mutex_unlock(&w->mu);
        bq_worker_join(w);
        return bq_err_set(err, BQ_EIO, "worker: cannot create the dispatcher thread");
    }
    w->dispatcher_started = true;
    char conc[16];
    snprintf(conc, sizeof conc, "%d", w->concurrency);
    bq_log(BQ_LOG_INFO, "worker_started", "worker", w->id, "queue", w->queue, "backend",
           w->broker->kind, "address", w->broker->address, "#concurrency", conc, NULL);
    return BQ_OK;
}

void bq_worker_stop(bq_worker *w)
{
    pthread_mutex_lock(&w->mu);
    bool was = w->stopping;
    w->stopping = true;
    pthread_cond_broadcast(&w->cv_space);
    pthread_cond_broadcast(&w->cv_task);
    pthread_mutex_unlock(&w->mu);
    if (!was && w->broker != NULL)
        w->broker->ops->interrupt(w->broker);
}

void bq_worker_drain(bq_worker *w)
{
    pthread_mutex_lock(&w->mu);
    bool was = w->drain;
    w->drain = true;
    pthread_cond_broadcast(&w->cv_space);
    pthread_mutex_unlock(&w->mu);
    if (!was && w->broker != NULL)
        w->broker->ops->interrupt(w->broker); /* a blocked fetch returns and sees the flag */
}

void bq_worker_join(bq_worker *w)
{
    pthread_mutex_lock(&w->mu);
    bool skip = w->joined || !w->started;
    w->joined = true;
    pthread_mutex_unlock(&w->mu);
    if (skip)
        return;
    if (w->dispatcher_started)
        pthread_join(w->dispatcher, NULL);
    for (int i = 0; i < w->concurrency; i++)
        pthread_join(w->slots[i].thread, NULL);
    bq_log(BQ_LOG_INFO, "worker_stopped", "worker", w->id, "queue", w->queue, NULL);
}

void bq_worker_free(bq_worker *w)
{
    if (w == NULL)
        return;
    if (w->started) {
        bq_worker_stop(w);
        bq_worker_join(w);
    }
    struct bq_event ev;
    while (pop_event(w, &ev))
        bq_event_clear(&ev);
    for (int i = 0; i < w->ring_n; i++)
        bq_free(w->ring[(w->ring_head + i) % w->concurrency].data);
    bq_broker_free(w->broker);
    bq_free(w->ring);
    bq_free(w->slots);
    bq_free(w->queue);
    if (w->evfd >= 0)
        close(w->evfd);
    pthread_mutex_destroy(&w->mu);
    pthread_mutex_destroy(&w->ev_mu);
    pthread_cond_destroy(&w->cv_task);
    pthread_cond_destroy(&w->cv_space);
    pthread_cond_destroy(&w->cv_init);
    bq_free(w);
}

void bq_worker_stats(bq_worker *w, struct bq_worker_stats *out)
{
    out->fetched = atomic_load(&w->n_fetched);
    out->completed = atomic_load(&w->n_completed);
    out->failed = atomic_load(&w->n_failed);
    out->malformed = atomic_load(&w->n_malformed);
    out->dead_lettered = atomic_load(&w->n_dead);
    pthread_mutex_lock(&w->mu);
    out->inflight = w->inflight;
    pthread_mutex_unlock(&w->mu);
}
