/*
 * mem.c -- the in-memory scheduler: named lists and sorted sets in this process, with the
 * semantics of the Redis broker (LPUSH adds at the head, fetch takes from the tail, leased
 * messages wait in {Q}:wip:<worker>, retries in {Q}:delayed), so the same scripts, examples
 * and most tests run with no server. It is the default when no Redis is configured.
 *
 * All brokers of the process share one table of keys, like clients of one Redis server: a
 * producer and a worker created separately in one process see the same queue. One mutex
 * guards the table; one condition variable wakes fetchers on every push. A list is a ring
 * buffer of owned messages whose head is the leftmost element; a sorted set is an array kept
 * in score order. Leases need no heartbeat here: one process holds them all, and a process
 * that dies takes its memory with it. A message keeps its seal (broker.h) on itself: the paths
 * that queue a message again with a "#bq" header set `sealed`, a producer's push never does.
 */
#include "broker.h"
#include "keys.h"

#include "../core/alloc.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/ratelimit.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>


struct zitem {
    double score;
    struct bq_msg m;
};

struct mem_key {
    char *name;
    bool zset;
    bool str;             /* a plain value (a deduplication key): no items */
    double expires;       /* wall-clock seconds; 0: never (deduplication keys expire) */
    struct bq_msg *items; /* list: ring buffer of cap slots */
    size_t head, n, cap;
    struct zitem *z;      /* zset: n items in score order, cap slots */
    struct mem_key *next;
};

/* The keys: a hash table of chains (deduplication keys make them many). */
#define DB_BUCKETS 65536u
static pthread_mutex_t db_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t db_cv;
static pthread_once_t db_once = PTHREAD_ONCE_INIT;
static struct mem_key *db_keys[DB_BUCKETS];
static unsigned long db_pushes; /* deduplicated pushes, for sweeping expired keys */
static unsigned long db_sooner; /* bumped when a delayed set's earliest due time moved
                                 * earlier: fetches waiting meanwhile say recheck */

static struct mem_key **bucket(const char *name)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return &db_keys[h & (DB_BUCKETS - 1)];
}

struct mem_broker {
    struct bq_broker base;
    atomic_bool interrupted;
    long credit[16]; /* weighted fetching: the smooth round robin's state (fetcher only) */
    unsigned long seen_sooner; /* db_sooner as this broker's last fetch left it (fetcher only) */
};

static void db_init(void)
{
    bq_cond_init(&db_cv);
}

/* Finds the key; creates it when `create`. Caller holds db_mu. */
static struct mem_key *find(const char *name, bool zset, bool create)
{
    struct mem_key **b = bucket(name);
    for (struct mem_key *k = *b; k != NULL; k = k->next) {
        if (strcmp(k->name, name) == 0)
            return k;
    }
    if (!create)
        return NULL;
    struct mem_key *k = bq_calloc(1, sizeof *k);
    if (k == NULL)
        return NULL;
    k->name = bq_strdup(name);
    if (k->name == NULL) {
        bq_free(k);
        return NULL;
    }
    k->zset = zset;
    k->next = *b;
    *b = k;
    return k;
}

/* Frees a key that has become empty (as Redis deletes empty lists). Caller holds db_mu. */
static void drop_if_empty(struct mem_key *k)
{
    if (k == NULL || k->n > 0)
        return;
    for (struct mem_key **p = bucket(k->name); *p != NULL; p = &(*p)->next) {
        if (*p == k) {
            *p = k->next;
            break;
        }
    }
    bq_free(k->items);
    bq_free(k->z);
    bq_free(k->name);
    bq_free(k);
}

static bool grow(struct mem_key *l, size_t need)
{
    if (l->n + need <= l->cap)
        return true;
    size_t cap = l->cap ? l->cap : 16;
    while (cap < l->n + need)
        cap *= 2;
    if (l->zset) {
        struct zitem *z = bq_reallocarray(l->z, cap, sizeof *z);
        if (z == NULL)
            return false;
        l->z = z;
        l->cap = cap;
        return true;
    }
    struct bq_msg *items = bq_calloc(cap, sizeof *items);
    if (items == NULL)
        return false;
    for (size_t i = 0; i < l->n; i++)
        items[i] = l->items[(l->head + i) % l->cap];
    bq_free(l->items);
    l->items = items;
    l->head = 0;
    l->cap = cap;
    return true;
}

/* The i-th element from the left. */
static struct bq_msg *at(struct mem_key *l, size_t i)
{
    return &l->items[(l->head + i) % l->cap];
}

static bool copy_msg(struct bq_msg *m, const char *p, size_t len, bool sealed)
{
    *m = (struct bq_msg){bq_strndup(p, len), len, 0, sealed, 0, 0};
    return m->data != NULL;
}

/* Pushes an owned message at the left (LPUSH) or right (RPUSH). Caller holds db_mu and has
 * grown the list. */
static void push_owned(struct mem_key *l, struct bq_msg m, bool left)
{
    if (left) {
        l->head = (l->head + l->cap - 1) % l->cap;
        l->items[l->head] = m;
    } else {
        l->items[(l->head + l->n) % l->cap] = m;
    }
    l->n++;
}

/* Pushes a copy; false when out of memory. Caller holds db_mu. */
static bool push_copy(const char *key, const char *p, size_t len, bool left, bool sealed)
{
    struct mem_key *l = find(key, false, true);
    struct bq_msg m;
    if (l == NULL || !grow(l, 1) || !copy_msg(&m, p, len, sealed)) {
        drop_if_empty(l);
        return false;
    }
    push_owned(l, m, left);
    return true;
}

/* Removes the element at index i (from the left), returning it. Caller holds db_mu. */
static struct bq_msg remove_at(struct mem_key *l, size_t i)
{
    struct bq_msg m = *at(l, i);
    for (size_t k = i; k + 1 < l->n; k++)
        *at(l, k) = *at(l, k + 1);
    l->n--;
    return m;
}

/* LREM key 1 value: removes the first (leftmost) equal element and frees it. */
static bool lrem(const char *key, const char *p, size_t len)
{
    struct mem_key *l = find(key, false, false);
    for (size_t i = 0; l != NULL && i < l->n; i++) {
        struct bq_msg *m = at(l, i);
        if (m->len == len && memcmp(m->data, p, len) == 0) {
            bq_free(remove_at(l, i).data);
            drop_if_empty(l);
            return true;
        }
    }
    return false;
}

static const char *queue_of(const struct bq_lessee *who, int q)
{
    return who->queues[q >= 0 && q < who->nqueues ? q : 0];
}

static bq_status wip_key(const struct bq_lessee *who, int q, char *out, bq_err *err)
{
    char suffix[160];
    snprintf(suffix, sizeof suffix, "wip:%s", who->worker ? who->worker : "-");
    return bq_key_derive_err(queue_of(who, q), suffix, out, err);
}

static bq_status oom(bq_err *err)
{
    return bq_err_set(err, BQ_ENOMEM, "memory scheduler: out of memory");
}

/* ---- Operations ---------------------------------------------------------------------------- */

static bq_status mem_push(bq_broker *b, const char *queue, const struct bq_slice *msgs,
                          size_t n, size_t *pushed, bq_err *err)
{
    (void)b;
    *pushed = 0;
    pthread_once(&db_once, db_init);
    struct bq_msg *copies = bq_calloc(n ? n : 1, sizeof *copies);
    if (copies == NULL)
        return oom(err);
    for (size_t i = 0; i < n; i++) {
        if (!copy_msg(&copies[i], msgs[i].p, msgs[i].len, false)) {
            for (size_t k = 0; k < i; k++)
                bq_free(copies[k].data);
            bq_free(copies);
            return oom(err);
        }
    }
    pthread_mutex_lock(&db_mu);
    struct mem_key *l = find(queue, false, true);
    if (l == NULL || !grow(l, n)) {
        drop_if_empty(l);
        pthread_mutex_unlock(&db_mu);
        for (size_t k = 0; k < n; k++)
            bq_free(copies[k].data);
        bq_free(copies);
        return oom(err);
    }
    for (size_t i = 0; i < n; i++)
        push_owned(l, copies[i], true);
    *pushed = n;
    pthread_cond_broadcast(&db_cv);
    pthread_mutex_unlock(&db_mu);
    bq_free(copies);
    return BQ_OK;
}

static bq_status mem_promote(bq_broker *b, const char *queue, size_t *moved, double *next_due,
                             bq_err *err);

/* Takes the rightmost message of queue q (and leases it). Caller holds db_mu. Returns false
 * when the queue is empty; sets *st on out of memory. */
static bool take_one(const struct bq_lessee *who, int q, struct bq_batch *out, bq_status *st,
                     bq_err *err)
{
    struct mem_key *l = find(who->queues[q], false, false);
    if (l == NULL || l->n == 0)
        return false;
    bool lease = who->delivery == BQ_AT_LEAST_ONCE;
    char wip[BQ_KEY_MAX];
    struct mem_key *w = NULL;
    if (lease && ((*st = wip_key(who, q, wip, err)) != BQ_OK ||
                  (w = find(wip, false, true)) == NULL || !grow(w, 1))) {
        if (*st == BQ_OK)
            *st = oom(err);
        drop_if_empty(w);
        return false;
    }
    struct bq_msg *tail = at(l, l->n - 1);
    struct bq_msg copy = {NULL, 0, q, tail->sealed, 0, 0};
    if (lease && !copy_msg(&copy, tail->data, tail->len, tail->sealed)) {
        *st = oom(err);
        drop_if_empty(w);
        return false;
    }
    tail->q = q;
    if (bq_batch_take(out, *tail) != BQ_OK) {
        bq_free(copy.data);
        *st = oom(err);
        drop_if_empty(w);
        return false;
    }
    if (lease) {
        copy.q = q;
        push_owned(w, copy, true);
    }
    tail->data = NULL;
    l->n--;
    drop_if_empty(l);
    return true;
}

/* The length of the message take_one would take from queue q next (0: none). */
static size_t next_len(const struct bq_lessee *who, int q)
{
    struct mem_key *l = find(who->queues[q], false, false);
    return l != NULL && l->n > 0 ? at(l, l->n - 1)->len : 0;
}

/* Picks a non-empty queue: the first (strict), or by smooth weighted round robin over the
 * non-empty ones (as fetchm-N.lua). -1 when all are empty. Caller holds db_mu. */
static int pick_queue(struct mem_broker *m, const struct bq_lessee *who)
{
    long total = 0;
    int pick = -1;
    for (int i = 0; i < who->nqueues && i < 16; i++) {
        struct mem_key *l = find(who->queues[i], false, false);
        if (l == NULL || l->n == 0)
            continue;
        if (who->weights == NULL)
            return i;
        m->credit[i] += who->weights[i];
        total += who->weights[i];
        if (pick < 0 || m->credit[i] > m->credit[pick])
            pick = i;
    }
    if (pick >= 0)
        m->credit[pick] -= total;
    return pick;
}

static bq_status mem_promote(bq_broker *b, const char *queue, size_t *moved, double *next_due,
                             bq_err *err);

static bq_status mem_feed_add(bq_broker *b, const char *queue, const struct bq_slice *entries,
                              size_t n, bq_err *err);
static void feeds_reset(void);

static bq_status mem_fetch(bq_broker *b, const struct bq_lessee *who,
                           const struct bq_fetch_req *req, struct bq_fetch_res *res,
                           struct bq_batch *out, bq_err *err)
{
    struct mem_broker *m = (struct mem_broker *)b;
    size_t max = req->max;
    res->acked = res->promoted = 0;
    res->next_due = -1;
    res->recheck = false;
    res->renewed = req->lease > 0 && who->delivery == BQ_AT_LEAST_ONCE;
    /* db_sooner as the last fetch left it: an operation delayed since then -- during this
     * fetch's promotion, or between two fetches, when a fetch that took messages returned
     * without looking -- says recheck, instead of the wait below running out its whole
     * timeout with the earlier due time unseen. */
    for (size_t i = 0; i < req->nfeed; i++) {
        bq_status fst = mem_feed_add(b, queue_of(who, req->feed_q[i]), &req->feed[i], 1, err);
        if (fst != BQ_OK)
            return fst;
    }
    pthread_once(&db_once, db_init);
    unsigned long sooner = m->seen_sooner;
    for (int i = 0; req->promote && i < who->nqueues; i++) {
        size_t moved = 0;
        double due = -1;
        bq_status pst = mem_promote(b, who->queues[i], &moved, &due, err);
        if (pst != BQ_OK)
            return pst;
        res->promoted += moved;
        if (due >= 0 && (res->next_due < 0 || due < res->next_due))
            res->next_due = due;
    }
    double deadline = bq_now_mono() + req->timeout;
    /* The wait ends by the earliest due time just seen, as the Redis broker's does. */
    if (res->next_due >= 0 && res->next_due < req->timeout)
        deadline = bq_now_mono() + res->next_due;
    bq_status st = BQ_OK;
    pthread_mutex_lock(&db_mu);
    if (who->delivery == BQ_AT_LEAST_ONCE) {
        for (size_t i = 0; i < req->nacks && st == BQ_OK; i++) {
            char wip[BQ_KEY_MAX];
            if ((st = wip_key(who, req->acks[i].q, wip, err)) == BQ_OK)
                res->acked += lrem(wip, req->acks[i].data, req->acks[i].len);
        }
    } else {
        res->acked = req->nacks;
    }
    size_t bytes = 0; /* taken by this fetch, against who->max_bytes (as fetch-2.lua) */
    for (;;) {
        /* Messages that are there are always taken; an interrupt only cuts a wait short. */
        size_t before = out->n;
        while (st == BQ_OK && max > 0) {
            int q = pick_queue(m, who);
            if (q < 0)
                break;
            size_t next = next_len(who, q);
            if (who->max_bytes > 0 && bytes > 0 && bytes + next > who->max_bytes)
                break; /* the first is taken whatever its size; then stop at the budget */
            if (!take_one(who, q, out, &st, err))
                break;
            bytes += next;
            max--;
        }
        if (st != BQ_OK || out->n > before)
            break;
        double left = deadline - bq_now_mono();
        if (db_sooner != sooner) {
            res->recheck = true; /* see bq_broker_ops.push_delayed */
            break;
        }
        if (atomic_exchange(&m->interrupted, false) || req->timeout <= 0 || left <= 0 ||
            max == 0)
            break;
        bq_cond_wait_for(&db_cv, &db_mu, left);
    }
    if (db_sooner != sooner)
        res->recheck = true;
    m->seen_sooner = db_sooner;
    pthread_mutex_unlock(&db_mu);
    return st;
}

/* Drops deduplication keys whose time has passed (as Redis expires them). Caller holds db_mu. */
static void sweep_expired(double now)
{
    for (size_t b = 0; b < DB_BUCKETS; b++) {
        struct mem_key *k = db_keys[b];
        while (k != NULL) {
            struct mem_key *next = k->next;
            if (k->str && k->expires > 0 && k->expires <= now) {
                k->n = 0;
                drop_if_empty(k);
            }
            k = next;
        }
    }
}

/* Deduplicated push: see bq_broker_ops.push_unique. */
static bq_status mem_push_unique(bq_broker *b, const char *queue, const struct bq_slice *msgs,
                                 const char *const *keys, size_t n, double ttl, bool *pushed,
                                 bq_err *err)
{
    (void)b;
    pthread_once(&db_once, db_init);
    bq_status st = BQ_OK;
    double now = bq_now_wall();
    pthread_mutex_lock(&db_mu);
    if (++db_pushes % 4096 == 0)
        sweep_expired(now);
    for (size_t i = 0; i < n && st == BQ_OK; i++) {
        char suffix[BQ_KEY_MAX], dk[BQ_KEY_MAX];
        pushed[i] = false;
        snprintf(suffix, sizeof suffix, "dedup:%s", keys[i]);
        if (!bq_key_derive(queue, suffix, dk, sizeof dk)) {
            st = bq_err_set(err, BQ_EINVAL, "deduplication key too long");
            break;
        }
        struct mem_key *k = find(dk, false, false);
        if (k != NULL && (k->expires == 0 || k->expires > now))
            continue; /* a duplicate */
        if (k == NULL && (k = find(dk, false, true)) == NULL) {
            st = oom(err);
            break;
        }
        k->str = true;
        k->n = 1; /* present */
        k->expires = now + ttl;
        if (!push_copy(queue, msgs[i].p, msgs[i].len, true, false)) {
            k->n = 0;
            drop_if_empty(k);
            st = oom(err);
            break;
        }
        pushed[i] = true;
    }
    pthread_cond_broadcast(&db_cv);
    pthread_mutex_unlock(&db_mu);
    return st;
}

static bool zadd(const char *key, double score, const char *p, size_t len, bool sealed);

/* Whether the delayed set z holds exactly these bytes (a sorted set's member is unique). */
static bool zhas(const struct mem_key *z, const char *p, size_t len)
{
    for (size_t i = 0; z != NULL && i < z->n; i++) {
        if (z->z[i].m.len == len && memcmp(z->z[i].m.data, p, len) == 0)
            return true;
    }
    return false;
}

/* Queues operations for later: see bq_broker_ops.push_delayed (delay-N.lua). Times are this
 * process' wall clock, as the memory broker's retries are. */
static bq_status mem_push_delayed(bq_broker *b, const char *queue, const struct bq_delayed *ops,
                                  size_t n, double ttl, bool *pushed, bq_err *err)
{
    (void)b;
    pthread_once(&db_once, db_init);
    char delayed[BQ_KEY_MAX];
    bq_status st = bq_list_key(queue, BQ_LIST_DELAYED, delayed, err);
    if (st != BQ_OK)
        return st;
    /* Whole milliseconds, as delay-N's scores. */
    double now = floor(bq_now_wall() * 1000.0) / 1000.0;
    pthread_mutex_lock(&db_mu);
    if (++db_pushes % 4096 == 0)
        sweep_expired(now);
    struct mem_key *z = find(delayed, true, false);
    bool had = z != NULL && z->n > 0;
    double earliest = had ? z->z[0].score : 0;
    bool sooner = false;
    for (size_t i = 0; i < n && st == BQ_OK; i++) {
        const struct bq_delayed *d = &ops[i];
        double due = d->run_at > 0 ? round(d->run_at * 1000.0) / 1000.0
                                   : now + round((d->delay > 0 ? d->delay : 0) * 1000.0) / 1000.0;
        pushed[i] = false;
        struct mem_key *k = NULL;
        if (d->key != NULL) {
            char suffix[BQ_KEY_MAX], dk[BQ_KEY_MAX];
            snprintf(suffix, sizeof suffix, "dedup:%s", d->key);
            if (!bq_key_derive(queue, suffix, dk, sizeof dk)) {
                st = bq_err_set(err, BQ_EINVAL, "deduplication key too long");
                break;
            }
            k = find(dk, false, false);
            if (k != NULL && (k->expires == 0 || k->expires > now))
                continue; /* a duplicate */
            if (k == NULL && (k = find(dk, false, true)) == NULL) {
                st = oom(err);
                break;
            }
            k->str = true;
            k->n = 1; /* present */
            k->expires = now + ttl + (due > now ? ceil(due - now) : 0);
        }
        bool ok;
        if (due <= now) {
            ok = push_copy(queue, d->msg.p, d->msg.len, true, false);
        } else if (zhas(find(delayed, true, false), d->msg.p, d->msg.len)) {
            if (k != NULL) {
                k->n = 0;
                drop_if_empty(k);
            }
            continue; /* the same bytes wait already: a duplicate */
        } else {
            ok = zadd(delayed, due, d->msg.p, d->msg.len, false);
            if (ok && (!had || due < earliest)) {
                had = true;
                earliest = due;
                sooner = true;
            }
        }
        if (!ok) {
            if (k != NULL) {
                k->n = 0;
                drop_if_empty(k);
            }
            st = oom(err);
            break;
        }
        pushed[i] = true;
    }
    if (sooner)
        db_sooner++;
    pthread_cond_broadcast(&db_cv);
    pthread_mutex_unlock(&db_mu);
    return st;
}

static void mem_interrupt(bq_broker *b)
{
    struct mem_broker *m = (struct mem_broker *)b;
    pthread_once(&db_once, db_init);
    pthread_mutex_lock(&db_mu);
    atomic_store(&m->interrupted, true);
    pthread_cond_broadcast(&db_cv);
    pthread_mutex_unlock(&db_mu);
}

static bq_status mem_ack(bq_broker *b, const struct bq_lessee *who, const struct bq_msg *msgs,
                         size_t n, size_t *acked, bq_err *err)
{
    (void)b;
    *acked = n;
    if (who->delivery != BQ_AT_LEAST_ONCE)
        return BQ_OK;
    *acked = 0;
    bq_status st = BQ_OK;
    pthread_mutex_lock(&db_mu);
    for (size_t i = 0; i < n && st == BQ_OK; i++) {
        char wip[BQ_KEY_MAX];
        if ((st = wip_key(who, msgs[i].q, wip, err)) == BQ_OK)
            *acked += lrem(wip, msgs[i].data, msgs[i].len);
    }
    pthread_mutex_unlock(&db_mu);
    return st;
}

/* Releases `leased` from who's in-flight list; true if it was held (or nothing is leased in
 * this delivery mode). Caller holds db_mu. */
static bool release(const struct bq_lessee *who, const char *wip, const struct bq_msg *leased)
{
    return who->delivery != BQ_AT_LEAST_ONCE || lrem(wip, leased->data, leased->len);
}

/* Inserts a copy of p into the sorted set z by score; `sealed`: binduq queues it again
 * (broker.h). Caller holds db_mu. */
static bool zadd(const char *key, double score, const char *p, size_t len, bool sealed)
{
    struct mem_key *z = find(key, true, true);
    struct zitem it = {score, {NULL, 0, 0, false, 0, 0}};
    if (z == NULL || !grow(z, 1) || !copy_msg(&it.m, p, len, sealed)) {
        drop_if_empty(z);
        return false;
    }
    size_t i = z->n;
    while (i > 0 && z->z[i - 1].score > it.score) {
        z->z[i] = z->z[i - 1];
        i--;
    }
    z->z[i] = it;
    z->n++;
    return true;
}

static bq_status mem_retry(bq_broker *b, const struct bq_lessee *who,
                           const struct bq_msg *leased, struct bq_slice next, double delay,
                           bool *held, bq_err *err)
{
    (void)b;
    char wip[BQ_KEY_MAX], delayed[BQ_KEY_MAX];
    bq_status st = wip_key(who, leased->q, wip, err);
    if (st == BQ_OK)
        st = bq_list_key(queue_of(who, leased->q), BQ_LIST_DELAYED, delayed, err);
    if (st != BQ_OK)
        return st;
    pthread_mutex_lock(&db_mu);
    *held = release(who, wip, leased);
    if (*held && !zadd(delayed, bq_now_wall() + (delay > 0 ? delay : 0), next.p, next.len, true))
        st = oom(err);
    pthread_mutex_unlock(&db_mu);
    return st;
}

static bq_status mem_rate_limit(bq_broker *b, const struct bq_lessee *who, long limit,
                                double period, struct bq_admission *reqs, size_t n,
                                bq_err *err)
{
    (void)b;
    for (size_t i = 0; i < n; i++) {
        reqs[i].verdict = 1;
        reqs[i].value = 0;
    }
    double now = bq_now_wall();
    bq_status st = BQ_OK;
    pthread_mutex_lock(&db_mu);
    for (size_t i = 0; i < n && st == BQ_OK; i++) {
        char suffix[BQ_KEY_MAX], rl[BQ_KEY_MAX];
        snprintf(suffix, sizeof suffix, "rl:%s", reqs[i].key);
        if (!bq_key_derive(queue_of(who, reqs[i].msg->q), suffix, rl, sizeof rl)) {
            st = bq_err_set(err, BQ_EINVAL, "rate-limit key too long");
            break;
        }
        struct mem_key *z = find(rl, true, true);
        double *times = z != NULL && grow(z, 1) ? bq_calloc(z->n ? z->n : 1, sizeof *times) : NULL;
        if (times == NULL) {
            drop_if_empty(z);
            st = oom(err);
            break;
        }
        for (size_t j = 0; j < z->n; j++)
            times[j] = z->z[j].score;
        size_t expired = 0;
        double wait = 0;
        bool admitted = bq_window_admit(times, z->n, now, limit, period, &expired, &wait);
        bq_free(times);
        memmove(z->z, z->z + expired, (z->n - expired) * sizeof *z->z);
        z->n -= expired;
        if (admitted)
            z->z[z->n++] = (struct zitem){now, {NULL, 0, 0, false, 0, 0}};
        reqs[i].verdict = admitted;
        reqs[i].value = admitted ? now : wait;
        drop_if_empty(z);
    }
    pthread_mutex_unlock(&db_mu);
    return st;
}

static bq_status mem_bury(bq_broker *b, const struct bq_lessee *who,
                          const struct bq_msg *leased, struct bq_slice entry, bool *held,
                          bq_err *err)
{
    (void)b;
    char wip[BQ_KEY_MAX], dlq[BQ_KEY_MAX];
    bq_status st = wip_key(who, leased->q, wip, err);
    if (st == BQ_OK)
        st = bq_list_key(queue_of(who, leased->q), BQ_LIST_DEAD, dlq, err);
    if (st != BQ_OK)
        return st;
    pthread_mutex_lock(&db_mu);
    *held = release(who, wip, leased);
    if (*held && !push_copy(dlq, entry.p, entry.len, true, false))
        st = oom(err);
    pthread_mutex_unlock(&db_mu);
    return st;
}

static bq_status mem_held(bq_broker *b, const struct bq_lessee *who, struct bq_batch *out,
                          bq_err *err)
{
    (void)b;
    bq_status st = BQ_OK;
    pthread_mutex_lock(&db_mu);
    for (int q = 0; st == BQ_OK && q < who->nqueues; q++) {
        char wip[BQ_KEY_MAX];
        if ((st = wip_key(who, q, wip, err)) != BQ_OK)
            break;
        struct mem_key *k = find(wip, false, false);
        for (size_t i = 0; k != NULL && i < k->n && st == BQ_OK; i++) {
            const struct bq_msg *m = at(k, i);
            if (bq_batch_add_q(out, m->data, m->len, q) != BQ_OK)
                st = oom(err);
            else
                out->msgs[out->n - 1].sealed = m->sealed;
        }
    }
    pthread_mutex_unlock(&db_mu);
    return st;
}

static bq_status mem_handback(bq_broker *b, const struct bq_lessee *who,
                              const struct bq_msg *msgs, size_t n, size_t *count, bq_err *err)
{
    (void)b;
    bq_status st = BQ_OK;
    *count = 0;
    pthread_mutex_lock(&db_mu);
    /* Oldest last, so the oldest is the next one taken. */
    for (size_t i = n; i-- > 0 && st == BQ_OK;) {
        char wip[BQ_KEY_MAX];
        if ((st = wip_key(who, msgs[i].q, wip, err)) != BQ_OK)
            break;
        if (!release(who, wip, &msgs[i]))
            continue;
        if (!push_copy(queue_of(who, msgs[i].q), msgs[i].data, msgs[i].len, false,
                       msgs[i].sealed))
            st = oom(err);
        else
            (*count)++;
    }
    pthread_cond_broadcast(&db_cv);
    pthread_mutex_unlock(&db_mu);
    return st;
}

static bq_status mem_promote(bq_broker *b, const char *queue, size_t *moved, double *next_due,
                             bq_err *err)
{
    (void)b;
    char delayed[BQ_KEY_MAX];
    bq_status st = bq_list_key(queue, BQ_LIST_DELAYED, delayed, err);
    if (st != BQ_OK)
        return st;
    *moved = 0;
    *next_due = -1;
    double now = bq_now_wall();
    pthread_mutex_lock(&db_mu);
    struct mem_key *z = find(delayed, true, false);
    struct mem_key *l = z != NULL && z->n > 0 && z->z[0].score <= now
                            ? find(queue, false, true) : NULL;
    size_t due = 0;
    while (z != NULL && due < z->n && z->z[due].score <= now)
        due++;
    if (l != NULL && grow(l, due)) {
        for (size_t i = due; i-- > 0;) /* the one due earliest is taken first */
            push_owned(l, z->z[i].m, false);
        memmove(z->z, z->z + due, (z->n - due) * sizeof *z->z);
        z->n -= due;
        *moved = due;
        pthread_cond_broadcast(&db_cv);
    } else if (due > 0) {
        st = oom(err);
    }
    if (z != NULL && z->n > 0)
        *next_due = z->z[0].score - now > 0 ? z->z[0].score - now : 0;
    drop_if_empty(z);
    pthread_mutex_unlock(&db_mu);
    return st;
}

static bq_status mem_heartbeat(bq_broker *b, const struct bq_lessee *who, double lease,
                               struct bq_batch *dead, bq_err *err)
{
    (void)b, (void)who, (void)lease, (void)dead, (void)err;
    return BQ_OK; /* one process holds every lease: nobody else's can run out */
}

static bq_status mem_reap(bq_broker *b, const char *queue, const char *dead_id,
                          long long *recovered, bq_err *err)
{
    (void)b, (void)queue, (void)dead_id, (void)err;
    *recovered = -1;
    return BQ_OK;
}

static bq_status mem_unregister(bq_broker *b, const struct bq_lessee *who, bq_err *err)
{
    (void)b, (void)who, (void)err;
    return BQ_OK;
}

static bq_status mem_length(bq_broker *b, const char *queue, enum bq_list which,
                            long long *out, bq_err *err)
{
    (void)b;
    char key[BQ_KEY_MAX], prefix[BQ_KEY_MAX];
    bq_status st = bq_list_key(queue, which, key, err);
    if (st != BQ_OK)
        return st;
    *out = 0;
    pthread_mutex_lock(&db_mu);
    if (which == BQ_LIST_INFLIGHT) {
        bq_key_derive(queue, "wip:", prefix, sizeof prefix);
        for (size_t i = 0; i < DB_BUCKETS; i++) {
            for (struct mem_key *k = db_keys[i]; k != NULL; k = k->next) {
                if (strncmp(k->name, prefix, strlen(prefix)) == 0)
                    *out += (long long)k->n;
            }
        }
    } else {
        struct mem_key *l = find(key, false, false);
        *out = l ? (long long)l->n : 0;
    }
    pthread_mutex_unlock(&db_mu);
    return BQ_OK;
}

static bq_status mem_range(bq_broker *b, const char *queue, enum bq_list which, long start,
                           long stop, struct bq_batch *out, bq_err *err)
{
    (void)b;
    if (which != BQ_LIST_READY && which != BQ_LIST_DEAD)
        return bq_err_set(err, BQ_EINVAL, "range reads the queue or its dead-letter list only");
    char key[BQ_KEY_MAX];
    bq_status st = bq_list_key(queue, which, key, err);
    if (st != BQ_OK)
        return st;
    pthread_mutex_lock(&db_mu);
    struct mem_key *l = find(key, false, false);
    long n = l ? (long)l->n : 0;
    if (start < 0)
        start = n + start < 0 ? 0 : n + start;
    if (stop < 0)
        stop = n + stop;
    if (stop >= n)
        stop = n - 1;
    for (long i = start; l != NULL && i <= stop && st == BQ_OK; i++) {
        struct bq_msg *m = at(l, (size_t)i);
        if (bq_batch_add(out, m->data, m->len) != BQ_OK)
            st = oom(err);
    }
    pthread_mutex_unlock(&db_mu);
    return st;
}

static bq_status mem_dlq_requeue(bq_broker *b, const char *queue, struct bq_slice entry,
                                 bool *done, bq_err *err)
{
    (void)b;
    char dlq[BQ_KEY_MAX];
    bq_status st = bq_list_key(queue, BQ_LIST_DEAD, dlq, err);
    if (st != BQ_OK)
        return st;
    const char *nl = memchr(entry.p, '\n', entry.len);
    if (nl == NULL)
        return bq_err_set(err, BQ_EINVAL, "not a binduq dead-letter entry");
    if (memmem(entry.p, (size_t)(nl - entry.p), BQ_DLQ_TRUNCATED, strlen(BQ_DLQ_TRUNCATED)))
        return bq_err_set(err, BQ_EINVAL, BQ_DLQ_NO_REQUEUE);
    /* The original bytes, marked requeued: attempts start again (as requeue-3.lua). */
    static const char hdr[] = "#bq {\"attempt\":1,\"requeued\":1}\n";
    size_t off = (size_t)(nl + 1 - entry.p), len = sizeof hdr - 1 + entry.len - off;
    struct bq_msg m = {bq_malloc(len + 1), len, 0, true, 0, 0};
    if (m.data == NULL)
        return oom(err);
    memcpy(m.data, hdr, sizeof hdr - 1);
    memcpy(m.data + sizeof hdr - 1, entry.p + off, entry.len - off);
    m.data[len] = '\0';
    pthread_mutex_lock(&db_mu);
    struct mem_key *l = find(queue, false, true);
    *done = false;
    if (l == NULL || !grow(l, 1))
        st = oom(err);
    else if ((*done = lrem(dlq, entry.p, entry.len)))
        push_owned(l, m, true);
    drop_if_empty(l);
    if (*done)
        pthread_cond_broadcast(&db_cv);
    pthread_mutex_unlock(&db_mu);
    if (!*done)
        bq_free(m.data);
    return st;
}

static bq_status mem_dlq_remove(bq_broker *b, const char *queue, struct bq_slice entry,
                                bool *done, bq_err *err)
{
    (void)b;
    char dlq[BQ_KEY_MAX];
    bq_status st = bq_list_key(queue, BQ_LIST_DEAD, dlq, err);
    if (st != BQ_OK)
        return st;
    pthread_mutex_lock(&db_mu);
    *done = lrem(dlq, entry.p, entry.len);
    pthread_mutex_unlock(&db_mu);
    return BQ_OK;
}

static bq_status mem_dlq_purge(bq_broker *b, const char *queue, long long *count, bq_err *err)
{
    (void)b;
    char dlq[BQ_KEY_MAX];
    bq_status st = bq_list_key(queue, BQ_LIST_DEAD, dlq, err);
    if (st != BQ_OK)
        return st;
    pthread_mutex_lock(&db_mu);
    struct mem_key *l = find(dlq, false, false);
    *count = l ? (long long)l->n : 0;
    while (l != NULL && l->n > 0)
        bq_free(remove_at(l, l->n - 1).data);
    drop_if_empty(l);
    pthread_mutex_unlock(&db_mu);
    return BQ_OK;
}

static bq_status mem_ping(bq_broker *b, double *rtt, bq_err *err)
{
    (void)b, (void)err;
    *rtt = 0;
    return BQ_OK;
}

static bool mem_pool_stats(bq_broker *b, struct bq_pool_stats *out)
{
    (void)b, (void)out;
    return false;
}

static void mem_free(bq_broker *b)
{
    bq_free(b);
}

void bq_memory_reset(void)
{
    pthread_mutex_lock(&db_mu);
    for (size_t b = 0; b < DB_BUCKETS; b++) {
        while (db_keys[b] != NULL) {
            struct mem_key *k = db_keys[b];
            for (size_t i = 0; !k->str && i < k->n; i++)
                bq_free(k->zset ? k->z[i].m.data : at(k, i)->data);
            k->n = 0;
            drop_if_empty(k);
        }
    }
    pthread_mutex_unlock(&db_mu);
    feeds_reset();
}

/* ---- Control channel -------------------------------------------------------------------
 * Listeners of this process, by channel name. A publication calls them in the publisher's
 * thread, under the registry's lock (callbacks only set flags). */

struct listener {
    char chan[BQ_KEY_MAX];
    void (*cb)(void *ud, const char *msg, size_t len);
    void *ud;
    struct listener *next;
};

static pthread_mutex_t ls_mu = PTHREAD_MUTEX_INITIALIZER;
static struct listener *listeners;

static bq_status mem_publish(bq_broker *b, const char *queue, struct bq_slice msg,
                             long long *receivers, bq_err *err)
{
    (void)b;
    char chan[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "control", chan, err);
    if (st != BQ_OK)
        return st;
    *receivers = 0;
    pthread_mutex_lock(&ls_mu);
    for (struct listener *l = listeners; l != NULL; l = l->next) {
        if (strcmp(l->chan, chan) == 0) {
            l->cb(l->ud, msg.p, msg.len);
            ++*receivers;
        }
    }
    pthread_mutex_unlock(&ls_mu);
    return BQ_OK;
}

static bq_status mem_listen(bq_broker *b, const char *queue,
                            void (*cb)(void *ud, const char *msg, size_t len),
                            void (*ready)(void *ud), void *ud, int stopfd, bq_err *err)
{
    (void)b;
    struct listener *l = bq_calloc(1, sizeof *l);
    if (l == NULL)
        return oom(err);
    bq_status st = bq_key_derive_err(queue, "control", l->chan, err);
    if (st != BQ_OK) {
        bq_free(l);
        return st;
    }
    l->cb = cb;
    l->ud = ud;
    pthread_mutex_lock(&ls_mu);
    l->next = listeners;
    listeners = l;
    pthread_mutex_unlock(&ls_mu);
    if (ready != NULL)
        ready(ud);
    struct pollfd p = {stopfd, POLLIN, 0};
    while (poll(&p, 1, -1) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&ls_mu);
    for (struct listener **pp = &listeners; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == l) {
            *pp = l->next;
            break;
        }
    }
    pthread_mutex_unlock(&ls_mu);
    bq_free(l);
    return bq_err_set(err, BQ_EINTR, "listen: stopped");
}

/* ---- Task events ----------------------------------------------------------------------------
 * Each queue's stream is a ring of entries kept by name, like the Redis stream: ids from the
 * wall clock in ms and a sequence, never going back; about feed_max entries kept. Readers
 * wait on one condition variable that every add (and feed_wake) broadcasts. */

struct mem_feed {
    char key[BQ_KEY_MAX];
    struct bq_feed_entry *ring; /* cap entries, the oldest at head */
    size_t head, n, cap;
    unsigned long long last_ms, last_seq;
    struct mem_feed *next;
};

static pthread_mutex_t fd_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fd_cv;
static pthread_once_t fd_once = PTHREAD_ONCE_INIT;
static struct mem_feed *feeds;
static unsigned long fd_wakes; /* bumped by feed_wake: waits end */

static void fd_init(void)
{
    bq_cond_init(&fd_cv);
}

/* The feed of queue (its key), created when `create`. Caller holds fd_mu. */
static struct mem_feed *feed_of(const char *key, bool create)
{
    for (struct mem_feed *f = feeds; f != NULL; f = f->next)
        if (strcmp(f->key, key) == 0)
            return f;
    if (!create)
        return NULL;
    struct mem_feed *f = bq_calloc(1, sizeof *f);
    if (f == NULL)
        return NULL;
    snprintf(f->key, sizeof f->key, "%s", key);
    f->next = feeds;
    feeds = f;
    return f;
}

static bq_status mem_feed_add(bq_broker *b, const char *queue, const struct bq_slice *entries,
                              size_t n, bq_err *err)
{
    char key[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "events", key, err);
    if (st != BQ_OK)
        return st;
    pthread_once(&fd_once, fd_init);
    pthread_mutex_lock(&fd_mu);
    struct mem_feed *f = feed_of(key, true);
    size_t cap = b->feed_max > 0 ? (size_t)b->feed_max : BQ_FEED_MAX_DEFAULT;
    if (f != NULL && f->cap != cap) { /* (re)shape the ring, keeping the newest */
        struct bq_feed_entry *ring = bq_calloc(cap, sizeof *ring);
        if (ring == NULL) {
            f = NULL;
        } else {
            size_t keep = f->n < cap ? f->n : cap;
            for (size_t i = 0; i < f->n; i++) {
                struct bq_feed_entry *e = &f->ring[(f->head + i) % f->cap];
                if (i < f->n - keep)
                    bq_free(e->json);
                else
                    ring[i - (f->n - keep)] = *e;
            }
            bq_free(f->ring);
            f->ring = ring;
            f->cap = cap;
            f->head = 0;
            f->n = keep;
        }
    }
    for (size_t i = 0; f != NULL && i < n; i++) {
        char *json = bq_malloc(entries[i].len + 1);
        if (json == NULL) {
            st = oom(err);
            break;
        }
        memcpy(json, entries[i].p, entries[i].len);
        json[entries[i].len] = '\0';
        unsigned long long ms = (unsigned long long)(bq_now_wall() * 1000.0);
        if (ms > f->last_ms) {
            f->last_ms = ms;
            f->last_seq = 0;
        } else {
            f->last_seq++;
        }
        struct bq_feed_entry *e;
        if (f->n == f->cap) { /* full: the oldest goes */
            e = &f->ring[f->head];
            bq_free(e->json);
            f->head = (f->head + 1) % f->cap;
        } else {
            e = &f->ring[(f->head + f->n++) % f->cap];
        }
        snprintf(e->id, sizeof e->id, "%llu-%llu", f->last_ms, f->last_seq);
        e->json = json;
        e->len = entries[i].len;
    }
    if (f == NULL)
        st = oom(err);
    pthread_cond_broadcast(&fd_cv);
    pthread_mutex_unlock(&fd_mu);
    return st;
}

/* Copies the entries of f after `after` (at most count) into out. Caller holds fd_mu. */
static bq_status feed_copy(const struct mem_feed *f, const char *after, size_t count,
                           struct bq_feed_out *out)
{
    size_t i = 0;
    /* The first entry after `after`: the ring is in id order. */
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (bq_feed_id_cmp(f->ring[(f->head + mid) % f->cap].id, after) > 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    for (i = lo; i < f->n && count > 0; i++, count--) {
        const struct bq_feed_entry *e = &f->ring[(f->head + i) % f->cap];
        if (bq_feed_out_add(out, e->id, e->json, e->len) != BQ_OK)
            return BQ_ENOMEM;
    }
    return BQ_OK;
}

static bq_status mem_feed_read(bq_broker *b, struct bq_feed_reader **rd, const char *queue,
                               const char *after, size_t count, double timeout,
                               struct bq_feed_out *out, bq_err *err)
{
    (void)b, (void)rd;
    char key[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "events", key, err);
    if (st != BQ_OK)
        return st;
    if (!bq_feed_id_valid(after))
        return bq_err_set(err, BQ_EINVAL, "events: '%s' is not an event id (<ms>-<seq>)", after);
    pthread_once(&fd_once, fd_init);
    double until = bq_now_mono() + (timeout > 0 ? timeout : 0);
    size_t before = out->n;
    pthread_mutex_lock(&fd_mu);
    unsigned long wakes = fd_wakes;
    for (;;) {
        struct mem_feed *f = feed_of(key, false);
        if (f != NULL && feed_copy(f, after, count, out) != BQ_OK) {
            st = oom(err);
            break;
        }
        if (out->n > before || timeout <= 0)
            break;
        if (fd_wakes != wakes) {
            st = bq_err_set(err, BQ_EINTR, "events: the wait was cut short");
            break;
        }
        double left = until - bq_now_mono();
        if (left <= 0)
            break;
        bq_cond_wait_for(&fd_cv, &fd_mu, left);
    }
    pthread_mutex_unlock(&fd_mu);
    return st;
}

static bq_status mem_feed_last(bq_broker *b, const char *queue, char *id, bq_err *err)
{
    (void)b;
    char key[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "events", key, err);
    if (st != BQ_OK)
        return st;
    pthread_once(&fd_once, fd_init);
    pthread_mutex_lock(&fd_mu);
    struct mem_feed *f = feed_of(key, false);
    if (f != NULL && f->n > 0)
        snprintf(id, BQ_FEED_ID_MAX, "%s", f->ring[(f->head + f->n - 1) % f->cap].id);
    else
        snprintf(id, BQ_FEED_ID_MAX, "0-0");
    pthread_mutex_unlock(&fd_mu);
    return BQ_OK;
}

static void mem_feed_wake(bq_broker *b, struct bq_feed_reader *rd)
{
    (void)b, (void)rd;
    pthread_once(&fd_once, fd_init);
    pthread_mutex_lock(&fd_mu);
    fd_wakes++;
    pthread_cond_broadcast(&fd_cv);
    pthread_mutex_unlock(&fd_mu);
}

static void mem_feed_close(bq_broker *b, struct bq_feed_reader *rd)
{
    (void)b, (void)rd;
}

/* Forgets every task event (bq_memory_reset). */
static void feeds_reset(void)
{
    pthread_mutex_lock(&fd_mu);
    while (feeds != NULL) {
        struct mem_feed *f = feeds;
        feeds = f->next;
        for (size_t i = 0; i < f->n; i++)
            bq_free(f->ring[(f->head + i) % f->cap].json);
        bq_free(f->ring);
        bq_free(f);
    }
    pthread_mutex_unlock(&fd_mu);
}

static bq_status mem_node(bq_broker *b, char *role, size_t rsize, char *addr, size_t asize,
                          bq_err *err)
{
    (void)b;
    (void)err;
    snprintf(role, rsize, "memory");
    snprintf(addr, asize, "memory");
    return BQ_OK;
}

static bq_status mem_command(bq_broker *b, const char *queue, int argc, const char **argv,
                             const size_t *lens, void **out, bq_err *err)
{
    (void)b, (void)queue, (void)argc, (void)lens;
    *out = NULL;
    return bq_err_set(err, BQ_EUNSUPPORTED, "%s: the in-memory scheduler takes no commands",
                      argv[0]);
}

static const struct bq_broker_ops mem_ops = {
    .push = mem_push,
    .push_unique = mem_push_unique,
    .push_delayed = mem_push_delayed,
    .fetch = mem_fetch,
    .interrupt = mem_interrupt,
    .ack = mem_ack,
    .retry = mem_retry,
    .bury = mem_bury,
    .handback = mem_handback,
    .held = mem_held,
    .rate_limit = mem_rate_limit,
    .promote = mem_promote,
    .heartbeat = mem_heartbeat,
    .reap = mem_reap,
    .unregister = mem_unregister,
    .publish = mem_publish,
    .listen = mem_listen,
    .feed_add = mem_feed_add,
    .feed_read = mem_feed_read,
    .feed_last = mem_feed_last,
    .feed_wake = mem_feed_wake,
    .feed_close = mem_feed_close,
    .ping = mem_ping,
    .free = mem_free,
};

static const struct bq_broker_admin_ops mem_admin_ops = {
    .length = mem_length,
    .range = mem_range,
    .dlq_requeue = mem_dlq_requeue,
    .dlq_remove = mem_dlq_remove,
    .dlq_purge = mem_dlq_purge,
    .node = mem_node,
    .command = mem_command,
    .pool_stats = mem_pool_stats,
};

bq_status bq_broker_open_memory(bq_broker **out, bq_err *err)
{
    struct mem_broker *m = bq_calloc(1, sizeof *m);
    if (m == NULL)
        return oom(err);
    m->base.ops = &mem_ops;
    m->base.admin = &mem_admin_ops;
    m->base.kind = "memory";
    strcpy(m->base.address, "memory");
    atomic_init(&m->interrupted, false);
    *out = &m->base;
    return BQ_OK;
}
