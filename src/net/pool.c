/*
 * pool.c -- see pool.h. A mutex, a condition variable and a stack of idle connections: the
 * most recently returned connection is lent first, so a lightly loaded pool keeps using a few
 * warm connections and the rest stay closed.
 */
#include "pool.h"

#include "../core/alloc.h"
#include "../core/clock.h"
#include "../core/err.h"

#include <pthread.h>
#include <string.h>

struct bq_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct bq_url url;      /* owned deep copy */
    struct bq_conn_opts opts;
    double borrow_timeout;
    int max;
    int total;              /* connections lent out plus idle ones plus ones being opened */
    int nidle;
    bq_conn **idle;         /* owned array of max slots */
    struct bq_pool_stats stats;
};

/* Deep copy of a parsed URL. */
static bq_status url_copy(const struct bq_url *src, struct bq_url *dst)
{
    memset(dst, 0, sizeof *dst);
    dst->kind = src->kind;
    dst->tls = src->tls;
    dst->db = src->db;
    dst->hosts = bq_calloc(src->nhosts ? src->nhosts : 1, sizeof *dst->hosts);
    if (dst->hosts == NULL)
        return BQ_ENOMEM;
    for (size_t i = 0; i < src->nhosts; i++) {
        dst->hosts[i].port = src->hosts[i].port;
        dst->hosts[i].host = bq_strdup(src->hosts[i].host);
        dst->nhosts++;
        if (dst->hosts[i].host == NULL)
            return BQ_ENOMEM;
    }
    dst->user = bq_strdup(src->user);
    dst->password = bq_strdup(src->password);
    dst->path = bq_strdup(src->path);
    dst->service = bq_strdup(src->service);
    dst->sentinel_password = bq_strdup(src->sentinel_password);
    if ((src->user && !dst->user) || (src->password && !dst->password) ||
        (src->path && !dst->path) || (src->service && !dst->service) ||
        (src->sentinel_password && !dst->sentinel_password))
        return BQ_ENOMEM;
    return BQ_OK;
}

bq_status bq_pool_new(const struct bq_url *url, const struct bq_conn_opts *opts, int max,
                      double borrow_timeout, bq_pool **out, bq_err *err)
{
    *out = NULL;
    if (max < 1)
        return bq_err_set(err, BQ_EINVAL, "max_connections must be at least 1 (got %d)", max);
    bq_pool *p = bq_calloc(1, sizeof *p);
    if (p == NULL)
        return bq_err_set(err, BQ_ENOMEM, "pool: out of memory");
    p->idle = bq_calloc((size_t)max, sizeof *p->idle);
    if (p->idle == NULL || url_copy(url, &p->url) != BQ_OK) {
        bq_url_free(&p->url);
        bq_free(p->idle);
        bq_free(p);
        return bq_err_set(err, BQ_ENOMEM, "pool: out of memory");
    }
    p->opts = *opts;
    p->max = max;
    p->borrow_timeout = borrow_timeout > 0 ? borrow_timeout : 5.0;
    pthread_mutex_init(&p->mu, NULL);
    bq_cond_init(&p->cv);
    *out = p;
    return BQ_OK;
}

void bq_pool_free(bq_pool *p)
{
    if (p == NULL)
        return;
    for (int i = 0; i < p->nidle; i++)
        bq_conn_close(p->idle[i]);
    bq_free(p->idle);
    bq_url_free(&p->url);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    bq_free(p);
}

bq_status bq_pool_borrow(bq_pool *p, bq_conn **out, bq_err *err)
{
    *out = NULL;
    double deadline = bq_now_mono() + p->borrow_timeout;
    bool waited = false;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->nidle > 0) {
            bq_conn *c = p->idle[--p->nidle];
            pthread_mutex_unlock(&p->mu);
            if (bq_conn_usable(c)) {
                pthread_mutex_lock(&p->mu);
                p->stats.borrows++;
                p->stats.waits += waited;
                pthread_mutex_unlock(&p->mu);
                *out = c;
                return BQ_OK;
            }
            bq_conn_close(c);
            pthread_mutex_lock(&p->mu);
            p->total--;
            p->stats.discarded++;
        }
        if (p->total < p->max) {
            p->total++;
            pthread_mutex_unlock(&p->mu);
            bq_conn *c = NULL;
            bq_status st = bq_conn_open(&p->url, &p->opts, &c, err);
            pthread_mutex_lock(&p->mu);
            if (st != BQ_OK) {
                p->total--;
                pthread_cond_signal(&p->cv); /* let another waiter try (or fail) itself */
                pthread_mutex_unlock(&p->mu);
                return st;
            }
            p->stats.opened++;
            p->stats.borrows++;
            p->stats.waits += waited;
            pthread_mutex_unlock(&p->mu);
            *out = c;
            return BQ_OK;
        }
        double left = deadline - bq_now_mono();
        if (left <= 0) {
            p->stats.timeouts++;
            int max = p->max;
            pthread_mutex_unlock(&p->mu);
            return bq_err_set(err, BQ_ETIMEDOUT, "no Redis connection came free within %.1f s "
                              "(all %d of max_connections busy)", p->borrow_timeout, max);
        }
        waited = true;
        bq_cond_wait_for(&p->cv, &p->mu, left);
    }
}

void bq_pool_return(bq_pool *p, bq_conn *c)
{
    if (c == NULL)
        return;
    bool keep = !bq_conn_broken(c);
    pthread_mutex_lock(&p->mu);
    if (keep && p->nidle < p->max) {
        p->idle[p->nidle++] = c;
        c = NULL;
    } else {
        p->total--;
        p->stats.discarded++;
    }
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    bq_conn_close(c);
}

void bq_pool_stats(bq_pool *p, struct bq_pool_stats *out)
{
    pthread_mutex_lock(&p->mu);
    *out = p->stats;
    out->total = p->total;
    out->idle = p->nidle;
    pthread_mutex_unlock(&p->mu);
}

const struct bq_url *bq_pool_url(const bq_pool *p)
{
    return &p->url;
}

const struct bq_conn_opts *bq_pool_conn_opts(const bq_pool *p)
{
    return &p->opts;
}
