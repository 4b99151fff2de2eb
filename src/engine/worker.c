/*
 * worker.c -- see worker.h. The worker as its owner sees it: creating it, starting its
 * threads, stopping, draining, aborting, joining and freeing it, the event queue the owner
 * waits on, and its statistics.
 *
 * The other threads' code lives beside it (worker_int.h lists the files): the dispatcher in
 * worker_dispatch.c, the slots in worker_slots.c, the heartbeat in worker_heartbeat.c, the
 * control listener in worker_control.c.
 */
#include "worker_int.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

struct event_node {
    struct bq_event ev;
    struct event_node *next;
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
    return queue_of(w, q);
}

bq_broker *bq_worker_broker(bq_worker *w)
{
    return w->broker;
}

/* ---- Events -------------------------------------------------------------------------------- */

void bq_event_clear(struct bq_event *ev)
{
    outcome_free(&ev->outcome);
    memset(ev, 0, sizeof *ev);
}

/* Queues an event and wakes the owner. Takes ownership of ev's strings. */
void bq_worker_push_event(bq_worker *w, struct bq_event *ev)
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
    bq_worker_next_event_or(w, timeout, sigfd, -1, ev);
}

void bq_worker_next_event_or(bq_worker *w, double timeout, int sigfd, int xfd,
                             struct bq_event *ev)
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
        struct pollfd p[3] = {{w->events.fd, POLLIN, 0}, {sigfd, POLLIN, 0}, {xfd, POLLIN, 0}};
        int n = poll(p, 3, ms); /* a negative fd is ignored */
        if (n < 0 && errno != EINTR)
            return;
        if (n > 0 && (p[2].revents & POLLIN)) { /* the caller's: it reads it itself */
            pop_event(w, ev);
            return;
        }
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
    if (o->per_slot < 0 || o->per_slot > BQ_PER_SLOT_MAX)
        return bq_err_set(err, BQ_EINVAL, "tasks_per_state must be from 1 to %d (got %d)",
                          BQ_PER_SLOT_MAX, o->per_slot);
    if (o->per_slot > 1 && (ops->start == NULL || ops->wait == NULL))
        return bq_err_set(err, BQ_EUNSUPPORTED, "these slots hold one task at a time");
    bq_worker *w = bq_calloc(1, sizeof *w);
    if (w == NULL)
        return bq_err_set(err, BQ_ENOMEM, "worker: out of memory");
    w->events.fd = -1;
    w->control.stopfd = -1;
    w->conf.concurrency = o->concurrency;
    w->conf.per_slot = o->per_slot > 1 ? o->per_slot : 1;
    w->conf.handlers = o->concurrency * w->conf.per_slot;
    w->conf.batch = o->batch > 0 ? o->batch : 0;
    /* Batch only after handlers were seen to be quick: assumed to take ten times the limit,
     * the average falls under it after about 22 quick tasks (it took 59 from 1 s, each one
     * at a time: with task state in PostgreSQL, two commits each). */
    w->fetch.ewma_handle = 10 * BATCH_MAX_HANDLE;
    w->conf.base_cap = w->conf.handlers + o->prefetch;
    w->conf.capacity = w->conf.handlers + (o->prefetch > w->conf.batch ? o->prefetch : w->conf.batch);
    w->conf.block_timeout = o->block_timeout;
    w->conf.want_results = o->want_results;
    w->conf.lease = o->lease > 0 ? o->lease : 30.0;
    w->conf.shutdown_timeout = o->shutdown_timeout;
    w->conf.ops = *ops;
    w->conf.ud = ud;
    pthread_mutex_init(&w->mu, NULL);
    pthread_mutex_init(&w->events.mu, NULL);
    pthread_mutex_init(&w->heartbeat.mu, NULL);
    pthread_mutex_init(&w->early.mu, NULL);
    bq_cond_init(&w->cv_task);
    bq_cond_init(&w->cv_space);
    w->tasks.wake_at = INT_MAX;
    w->fetch.due_during = INFINITY;
    bq_cond_init(&w->cv_init);
    bq_cond_init(&w->heartbeat.cv);

    /* 64 random bits: two workers of one host and pid (two in one process, containers that
     * share a hostname and run as pid 1) must not share an id, an in-flight list and a
     * lease. (16 bits collided once in 65,536 such pairs.) */
    char host[64] = "host", rnd[17];
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    unsigned char r[8];
    bq_random_bytes(r, sizeof r);
    for (size_t i = 0; i < sizeof r; i++)
        snprintf(rnd + 2 * i, sizeof rnd - 2 * i, "%02x", r[i]);
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
    size_t nrq = (size_t)(w->conf.nqueues > 0 ? w->conf.nqueues : 1);
    w->report.done = bq_calloc(nrq, sizeof *w->report.done);
    w->report.failed = bq_calloc(nrq, sizeof *w->report.failed);
    w->report.sent_done = bq_calloc(nrq, sizeof *w->report.sent_done);
    w->report.sent_failed = bq_calloc(nrq, sizeof *w->report.sent_failed);
    w->slots = bq_calloc((size_t)w->conf.concurrency, sizeof *w->slots);
    w->events.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    w->control.stopfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    w->conf.control_queue = bq_strdup(o->cfg->queue_name);
    bq_status st = BQ_OK;
    if (w->conf.queue == NULL || w->tasks.ring == NULL || w->slots == NULL ||
        w->report.done == NULL || w->report.failed == NULL || w->report.sent_done == NULL ||
        w->report.sent_failed == NULL ||
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
        if (w->conf.per_slot > 1) {
            int p = w->conf.per_slot;
            s->held = bq_calloc((size_t)p, sizeof *s->held);
            s->held_t0 = bq_calloc((size_t)p, sizeof *s->held_t0);
            s->ctl.tasks = bq_calloc((size_t)p, sizeof *s->ctl.tasks);
            s->ctl.ntasks = s->ctl.tasks != NULL ? p : 0;
            if (s->held == NULL || s->held_t0 == NULL || s->ctl.tasks == NULL)
                st = bq_err_set(err, BQ_ENOMEM, "worker: out of memory");
        }
    }
    if (st == BQ_OK)
        st = bq_worker_feed_init(w, o->cfg->events_max > 0, err);
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

/* Set by the first worker that starts in this process (the in-memory warning). */
static atomic_bool any_started;

/* A worker holding many tasks at once (per_slot > 1) may hold a connection for each (their
 * handlers' HTTP calls): it raises its soft limit on open files to what that needs, up to
 * the hard limit, as servers do, and says so when the hard limit is lower. */
static void raise_nofile(bq_worker *w)
{
    rlim_t want = (rlim_t)w->conf.handlers + 256;
    struct rlimit r;
    if (w->conf.per_slot < 2 || getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur == RLIM_INFINITY ||
        r.rlim_cur >= want)
        return;
    rlim_t to = r.rlim_max == RLIM_INFINITY || r.rlim_max >= want ? want : r.rlim_max;
    if (to > r.rlim_cur) {
        r.rlim_cur = to;
        setrlimit(RLIMIT_NOFILE, &r);
    }
    if (to < want) {
        char have[24], need[24];
        snprintf(have, sizeof have, "%llu", (unsigned long long)to);
        snprintf(need, sizeof need, "%llu", (unsigned long long)want);
        bq_log(BQ_LOG_WARN, "open_files_low", "worker", w->conf.id, "#limit", have, "#wanted",
               need, "outcome", "tasks that open a connection beyond it fail (EMFILE); raise "
               "the hard limit (ulimit -Hn, LimitNOFILE=)", NULL);
    }
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
        if (spawn(&w->slots[i].thread, bq_worker_slot_main, &w->slots[i]) != 0) {
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
    /* Every worker reports (its description, its counts); an at-least-once one also renews
     * its lease from this thread. */
    w->report.started = bq_now_wall();
    if (spawn(&w->heartbeat.thread, bq_worker_heartbeat_main, w) == 0)
        w->heartbeat.started = true;
    else
        bq_log(BQ_LOG_ERROR, "thread_failed", "worker", w->conf.id, "thread", "heartbeat", NULL);
    if (spawn(&w->control.thread, bq_worker_control_main, w) == 0)
        w->control.started = true;
    else
        bq_log(BQ_LOG_ERROR, "thread_failed", "worker", w->conf.id, "thread", "control", NULL);
    if (spawn(&w->dispatcher.thread, bq_worker_dispatcher_main, w) != 0) {
        bq_log(BQ_LOG_ERROR, "thread_failed", "worker", w->conf.id, "thread", "dispatcher", NULL);
        pthread_mutex_lock(&w->mu);
        w->life.stopping = true;
        w->life.dispatcher_done = true;
        pthread_cond_broadcast(&w->cv_task);
        pthread_mutex_unlock(&w->mu);
        bq_worker_stop_heartbeat(w);
        bq_worker_stop_control(w);
        for (int i = 0; i < spawned; i++)
            pthread_join(w->slots[i].thread, NULL);
        w->life.joined = true;
        return bq_err_set(err, BQ_EIO, "worker: cannot create the dispatcher thread");
    }
    w->dispatcher.started = true;
    bq_worker_feed_start(w, spawn);
    atomic_store(&any_started, true);
    raise_nofile(w);
    char conc[16], lease[32];
    snprintf(conc, sizeof conc, "%d", w->conf.concurrency);
    snprintf(lease, sizeof lease, "%.3f", w->conf.lease);
    bq_log(BQ_LOG_INFO, "worker_started", "worker", w->conf.id, "queue", w->conf.queue, "backend",
           w->broker->kind, "address", w->broker->address, "#concurrency", conc, "delivery",
           w->conf.who.delivery == BQ_AT_LEAST_ONCE ? "at-least-once" : "at-most-once",
           w->conf.who.delivery == BQ_AT_LEAST_ONCE ? "#lease_s" : NULL, lease, NULL);
    return BQ_OK;
}

bool bq_worker_any_started(void)
{
    return atomic_load(&any_started);
}

bool bq_memory_warning_due(void)
{
    static atomic_bool said;
    return !atomic_load(&any_started) && !atomic_exchange(&said, true);
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
    size_t n = 0, cap = (size_t)w->tasks.ring_n + (size_t)w->conf.handlers;
    for (int i = 0; i < w->conf.concurrency; i++) /* the slots' chunks and outcomes pending */
        cap += (size_t)(w->slots[i].chunk_n - w->slots[i].chunk_at) + (size_t)w->slots[i].npend;
    struct bq_msg *copies = bq_calloc(cap ? cap : 1, sizeof *copies);
    for (int i = 0; copies != NULL && i < w->tasks.ring_n; i++) {
        const struct bq_msg *m = &w->tasks.ring[(w->tasks.ring_head + i) % w->conf.capacity];
        copies[n] = (struct bq_msg){bq_strndup(m->data, m->len), m->len, m->q, m->sealed,
                                    m->oversize, m->seq};
        n += copies[n].data != NULL;
    }
    for (int i = 0; copies != NULL && i < w->conf.handlers; i++) {
        const struct bq_msg *m = slot_msg(&w->slots[i / w->conf.per_slot], w->conf.per_slot,
                                          i % w->conf.per_slot);
        if (m == NULL)
            continue;
        copies[n] = (struct bq_msg){bq_strndup(m->data, m->len), m->len, m->q, m->sealed,
                                    m->oversize, m->seq};
        n += copies[n].data != NULL;
    }
    /* What waits in a slot's chunk, and what a slot handled with its outcome pending (never
     * written now): they run again, as the running ones do. */
    for (int i = 0; copies != NULL && i < w->conf.concurrency; i++) {
        const struct slot *s = &w->slots[i];
        for (int j = s->chunk_at; j < s->chunk_n + s->npend; j++) {
            const struct bq_msg *m = j < s->chunk_n ? &s->chunk[j] : &s->pend[j - s->chunk_n];
            copies[n] = (struct bq_msg){bq_strndup(m->data, m->len), m->len, m->q, m->sealed,
                                        m->oversize, m->seq};
            n += copies[n].data != NULL;
        }
    }
    pthread_mutex_unlock(&w->mu);
    w->broker->ops->interrupt(w->broker);
    if (copies != NULL)
        bq_worker_handback(w, copies, n, "aborted: second signal");
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
    bq_worker_stop_heartbeat(w);
    for (int i = 0; i < w->conf.concurrency; i++) {
        pthread_mutex_lock(&w->mu);
        bool gone = w->slots[i].exited || !w->life.abandoned;
        pthread_mutex_unlock(&w->mu);
        if (gone)
            pthread_join(w->slots[i].thread, NULL);
        else
            pthread_detach(w->slots[i].thread);
    }
    bq_worker_stop_control(w);
    bq_worker_feed_stop(w);
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
    bq_worker_feed_destroy(w);
    bq_broker_free(w->broker);
    for (int i = 0; w->slots != NULL && i < w->conf.concurrency; i++) {
        pthread_mutex_destroy(&w->slots[i].ctl.mu);
        pthread_cond_destroy(&w->slots[i].ctl.cv);
        bq_free(w->slots[i].held);
        bq_free(w->slots[i].held_t0);
        bq_free(w->slots[i].ctl.tasks);
    }
    bq_free(w->tasks.ring);
    bq_free(w->report.done);
    bq_free(w->report.failed);
    bq_free(w->report.sent_done);
    bq_free(w->report.sent_failed);
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
    pthread_mutex_destroy(&w->early.mu);
    pthread_cond_destroy(&w->cv_task);
    pthread_cond_destroy(&w->cv_space);
    pthread_cond_destroy(&w->cv_init);
    pthread_cond_destroy(&w->heartbeat.cv);
    bq_free(w);
}

/* ---- State and statistics ---------------------------------------------------------------- */

bool bq_worker_running(bq_worker *w)
{
    pthread_mutex_lock(&w->mu);
    bool r = w->life.started && !w->life.stopping;
    pthread_mutex_unlock(&w->mu);
    return r;
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

bq_status bq_worker_rate_limit(bq_worker *w, long limit, double period,
                               struct bq_admission *reqs, size_t n, bq_err *err)
{
    return w->broker->ops->rate_limit(w->broker, &w->conf.who, limit, period, reqs, n, err);
}
