/*
 * mem.c -- the in-memory scheduler: named lists in this process, with Redis list semantics
 * (LPUSH adds at the head, fetch takes from the tail), so the same scripts, examples and most
 * tests run with no server. It is the default when no Redis URL is configured.
 *
 * All brokers of the process share one table of lists, like clients of one Redis server: a
 * producer and a worker created separately in one process see the same queue. One mutex
 * guards the table; one condition variable wakes fetchers on every push. Each list is a ring
 * buffer of owned messages whose head is the leftmost element.
 */
#include "broker.h"
#include "keys.h"

#include "../core/alloc.h"
#include "../core/clock.h"
#include "../core/err.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

struct mem_list {
    char *key;
    struct bq_msg *items; /* ring buffer of cap slots */
    size_t head, n, cap;
    struct mem_list *next;
};

static pthread_mutex_t db_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t db_cv;
static pthread_once_t db_once = PTHREAD_ONCE_INIT;
static struct mem_list *db_lists;

struct mem_broker {
    struct bq_broker base;
    atomic_bool interrupted;
};

static void db_init(void)
{
    bq_cond_init(&db_cv);
}

/* Finds the list named key; creates it when `create`. Caller holds db_mu. */
static struct mem_list *find_list(const char *key, bool create)
{
    for (struct mem_list *l = db_lists; l != NULL; l = l->next) {
        if (strcmp(l->key, key) == 0)
            return l;
    }
    if (!create)
        return NULL;
    struct mem_list *l = bq_calloc(1, sizeof *l);
    if (l == NULL)
        return NULL;
    l->key = bq_strdup(key);
    if (l->key == NULL) {
        bq_free(l);
        return NULL;
    }
    l->next = db_lists;
    db_lists = l;
    return l;
}

static bool grow(struct mem_list *l, size_t need)
{
    if (l->n + need <= l->cap)
        return true;
    size_t cap = l->cap ? l->cap : 16;
    while (cap < l->n + need)
        cap *= 2;
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
static struct bq_msg *at(struct mem_list *l, size_t i)
{
    return &l->items[(l->head + i) % l->cap];
}

static bool list_key(const char *queue, enum bq_list which, char *out, size_t size)
{
    if (which == BQ_LIST_DEAD)
        return bq_key_derive(queue, "dlq", out, size);
    size_t n = strlen(queue);
    if (n >= size)
        return false;
    memcpy(out, queue, n + 1);
    return true;
}

/* LPUSH of copies of msgs[0..n): msgs[0] first, so msgs[n-1] ends up leftmost. */
static bq_status lpush(const char *key, const struct bq_slice *msgs, size_t n, bq_err *err)
{
    struct bq_msg *copies = bq_calloc(n ? n : 1, sizeof *copies);
    if (copies == NULL)
        return bq_err_set(err, BQ_ENOMEM, "memory scheduler: out of memory");
    for (size_t i = 0; i < n; i++) {
        copies[i].data = bq_strndup(msgs[i].p, msgs[i].len);
        copies[i].len = msgs[i].len;
        if (copies[i].data == NULL) {
            for (size_t k = 0; k < i; k++)
                bq_free(copies[k].data);
            bq_free(copies);
            return bq_err_set(err, BQ_ENOMEM, "memory scheduler: out of memory");
        }
    }
    pthread_once(&db_once, db_init);
    pthread_mutex_lock(&db_mu);
    struct mem_list *l = find_list(key, true);
    if (l == NULL || !grow(l, n)) {
        pthread_mutex_unlock(&db_mu);
        for (size_t k = 0; k < n; k++)
            bq_free(copies[k].data);
        bq_free(copies);
        return bq_err_set(err, BQ_ENOMEM, "memory scheduler: out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        l->head = (l->head + l->cap - 1) % l->cap;
        l->items[l->head] = copies[i];
        l->n++;
    }
    pthread_cond_broadcast(&db_cv);
    pthread_mutex_unlock(&db_mu);
    bq_free(copies);
    return BQ_OK;
}

static bq_status mem_push(bq_broker *b, const char *queue, const struct bq_slice *msgs,
                          size_t n, size_t *pushed, bq_err *err)
{
    (void)b;
    *pushed = 0;
    bq_status st = lpush(queue, msgs, n, err);
    if (st == BQ_OK)
        *pushed = n;
    return st;
}

static bq_status mem_fetch(bq_broker *b, const char *queue, size_t max, double timeout,
                           struct bq_batch *out, bq_err *err)
{
    struct mem_broker *m = (struct mem_broker *)b;
    pthread_once(&db_once, db_init);
    double deadline = bq_now_mono() + timeout;
    pthread_mutex_lock(&db_mu);
    for (;;) {
        /* Messages that are there are always taken; an interrupt only cuts a wait short. */
        struct mem_list *l = find_list(queue, false);
        if (l != NULL && l->n > 0) {
            bq_status st = BQ_OK;
            while (l->n > 0 && max-- > 0) {
                struct bq_msg *tail = at(l, l->n - 1);
                st = bq_batch_take(out, *tail);
                if (st != BQ_OK)
                    break;
                tail->data = NULL;
                l->n--;
            }
            pthread_mutex_unlock(&db_mu);
            if (st != BQ_OK)
                return bq_err_set(err, st, "memory scheduler: out of memory");
            return BQ_OK;
        }
        double left = deadline - bq_now_mono();
        if (atomic_exchange(&m->interrupted, false) || timeout <= 0 || left <= 0)
            break;
        bq_cond_wait_for(&db_cv, &db_mu, left);
    }
    pthread_mutex_unlock(&db_mu);
    return BQ_OK;
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

static bq_status mem_length(bq_broker *b, const char *queue, enum bq_list which,
                            long long *out, bq_err *err)
{
    (void)b;
    char key[512];
    if (!list_key(queue, which, key, sizeof key))
        return bq_err_set(err, BQ_EINVAL, "queue name too long");
    pthread_mutex_lock(&db_mu);
    struct mem_list *l = find_list(key, false);
    *out = l ? (long long)l->n : 0;
    pthread_mutex_unlock(&db_mu);
    return BQ_OK;
}

static bq_status mem_dead_letter(bq_broker *b, const char *queue, const char *entry, size_t len,
                                 bq_err *err)
{
    (void)b;
    char key[512];
    if (!list_key(queue, BQ_LIST_DEAD, key, sizeof key))
        return bq_err_set(err, BQ_EINVAL, "queue name too long");
    struct bq_slice s = {entry, len};
    return lpush(key, &s, 1, err);
}

static bq_status mem_range(bq_broker *b, const char *queue, enum bq_list which, long start,
                           long stop, struct bq_batch *out, bq_err *err)
{
    (void)b;
    char key[512];
    if (!list_key(queue, which, key, sizeof key))
        return bq_err_set(err, BQ_EINVAL, "queue name too long");
    pthread_mutex_lock(&db_mu);
    struct mem_list *l = find_list(key, false);
    long n = l ? (long)l->n : 0;
    if (start < 0)
        start = n + start < 0 ? 0 : n + start;
    if (stop < 0)
        stop = n + stop;
    if (stop >= n)
        stop = n - 1;
    bq_status st = BQ_OK;
    for (long i = start; l != NULL && i <= stop && st == BQ_OK; i++) {
        struct bq_msg *m = at(l, (size_t)i);
        st = bq_batch_add(out, m->data, m->len);
    }
    pthread_mutex_unlock(&db_mu);
    return st == BQ_OK ? BQ_OK : bq_err_set(err, st, "memory scheduler: out of memory");
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
    while (db_lists != NULL) {
        struct mem_list *l = db_lists;
        db_lists = l->next;
        for (size_t i = 0; i < l->n; i++)
            bq_free(at(l, i)->data);
        bq_free(l->items);
        bq_free(l->key);
        bq_free(l);
    }
    pthread_mutex_unlock(&db_mu);
}

static const struct bq_broker_ops mem_ops = {
    mem_push, mem_fetch, mem_interrupt, mem_length, mem_dead_letter, mem_range, mem_ping,
    mem_pool_stats, mem_free,
};

bq_status bq_broker_open_memory(bq_broker **out, bq_err *err)
{
    struct mem_broker *m = bq_calloc(1, sizeof *m);
    if (m == NULL)
        return bq_err_set(err, BQ_ENOMEM, "memory scheduler: out of memory");
    m->base.ops = &mem_ops;
    m->base.kind = "memory";
    strcpy(m->base.address, "memory");
    atomic_init(&m->interrupted, false);
    *out = &m->base;
    return BQ_OK;
}
