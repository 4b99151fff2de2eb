/*
 * admin.c -- see admin.h.
 */
#include "admin.h"

#include "keys.h"

#include "../core/alloc.h"
#include "../core/err.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool is_memory(const bq_broker *b)
{
    return strcmp(b->kind, "memory") == 0;
}

/* One command on the node of `queue`; *r is the reply (caller frees), NULL on failure. */
static bq_status call(bq_broker *b, const char *queue, int argc, const char **argv,
                      const size_t *lens, redisReply **r, bq_err *err)
{
    void *out = NULL;
    bq_status st = b->admin->command(b, queue, argc, argv, lens, &out, err);
    *r = st == BQ_OK ? out : NULL;
    if (st != BQ_OK && out != NULL)
        freeReplyObject(out);
    return st;
}

/* A command whose reply is an integer. */
static bq_status call_int(bq_broker *b, const char *queue, int argc, const char **argv,
                          const size_t *lens, long long *v, bq_err *err)
{
    redisReply *r;
    bq_status st = call(b, queue, argc, argv, lens, &r, err);
    if (st != BQ_OK)
        return st;
    if (r->type != REDIS_REPLY_INTEGER)
        st = bq_err_set(err, BQ_EPROTO, "%s: expected an integer reply", argv[0]);
    else
        *v = r->integer;
    freeReplyObject(r);
    return st;
}

/* Q's key for "wip:<id>", the id byte for byte; owned by the caller. */
static char *wip_key(const char *queue, const char *id, size_t id_len, size_t *len)
{
    char prefix[BQ_KEY_MAX];
    size_t n = bq_key_prefix(queue, prefix, sizeof prefix);
    char *k = n > 0 ? bq_malloc(n + 4 + id_len + 1) : NULL;
    if (k == NULL)
        return NULL;
    memcpy(k, prefix, n);
    memcpy(k + n, "wip:", 4);
    memcpy(k + n + 4, id, id_len);
    k[n + 4 + id_len] = '\0';
    *len = n + 4 + id_len;
    return k;
}

void bq_queue_stats_free(struct bq_queue_stats *s)
{
    for (size_t i = 0; s->workers != NULL && i < s->nworkers; i++) {
        bq_free(s->workers[i].id);
        bq_free(s->workers[i].first);
    }
    bq_free(s->workers);
    memset(s, 0, sizeof *s);
}

static bq_status memory_stats(bq_broker *b, const char *queue, struct bq_queue_stats *out,
                              bq_err *err)
{
    long long *fields[] = {&out->ready, &out->dead, &out->delayed, &out->inflight};
    static const enum bq_list lists[] = {BQ_LIST_READY, BQ_LIST_DEAD, BQ_LIST_DELAYED,
                                         BQ_LIST_INFLIGHT};
    for (int i = 0; i < 4; i++) {
        bq_status st = b->admin->length(b, queue, lists[i], fields[i], err);
        if (st != BQ_OK)
            return st;
    }
    out->seen = out->ready + out->dead + out->delayed + out->inflight > 0;
    return BQ_OK;
}

/* The worker records of {Q}:workers with their in-flight counts (and oldest message). */
static bq_status redis_workers(bq_broker *b, const char *queue, bool detail, double now_ms,
                               struct bq_queue_stats *out, bq_err *err)
{
    char key[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "workers", key, err);
    if (st != BQ_OK)
        return st;
    const char *zr[] = {"ZRANGE", key, "0", "-1", "WITHSCORES"};
    redisReply *ws;
    if ((st = call(b, queue, 5, zr, NULL, &ws, err)) != BQ_OK)
        return st;
    size_t n = ws->type == REDIS_REPLY_ARRAY ? ws->elements / 2 : 0;
    if (detail && n > 0 && (out->workers = bq_calloc(n, sizeof *out->workers)) == NULL)
        st = bq_err_set(err, BQ_ENOMEM, "stats: out of memory");
    for (size_t i = 0; i < n && st == BQ_OK; i++) {
        const redisReply *id = ws->element[2 * i], *score = ws->element[2 * i + 1];
        if (id->type != REDIS_REPLY_STRING || score->type != REDIS_REPLY_STRING)
            continue;
        double expiry = strtod(score->str, NULL);
        size_t klen;
        char *wip = wip_key(queue, id->str, id->len, &klen);
        if (wip == NULL) {
            st = bq_err_set(err, BQ_ENOMEM, "stats: out of memory");
            break;
        }
        const char *ll[] = {"LLEN", wip};
        size_t lens[] = {4, klen};
        long long held = 0;
        st = call_int(b, queue, 2, ll, lens, &held, err);
        out->inflight += held;
        if (expiry > now_ms)
            out->live++;
        if (st == BQ_OK && detail) {
            struct bq_worker_rec *w = &out->workers[out->nworkers++];
            w->id = bq_malloc(id->len + 1);
            if (w->id != NULL) {
                memcpy(w->id, id->str, id->len + 1);
                w->id_len = id->len;
            }
            w->lease_left = (expiry - now_ms) / 1000.0;
            w->inflight = held;
            const char *li[] = {"LINDEX", wip, "-1"};
            size_t lilens[] = {6, klen, 2};
            redisReply *first;
            if (held > 0 && (st = call(b, queue, 3, li, lilens, &first, err)) == BQ_OK) {
                if (first->type == REDIS_REPLY_STRING && (w->first = bq_malloc(first->len + 1))) {
                    memcpy(w->first, first->str, first->len + 1);
                    w->first_len = first->len;
                }
                freeReplyObject(first);
            }
            if (w->id == NULL)
                st = bq_err_set(err, BQ_ENOMEM, "stats: out of memory");
        }
        bq_free(wip);
    }
    freeReplyObject(ws);
    return st;
}

bq_status bq_admin_stats(bq_broker *b, const char *queue, bool detail, struct bq_queue_stats *out,
                         bq_err *err)
{
    memset(out, 0, sizeof *out);
    if (is_memory(b))
        return memory_stats(b, queue, out, err);
    char delayed[BQ_KEY_MAX], dlq[BQ_KEY_MAX], workers[BQ_KEY_MAX], bell[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "delayed", delayed, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(queue, "dlq", dlq, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(queue, "workers", workers, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(queue, "bell", bell, err);
    redisReply *t = NULL;
    const char *time_cmd[] = {"TIME"};
    if (st == BQ_OK)
        st = call(b, queue, 1, time_cmd, NULL, &t, err);
    if (st != BQ_OK)
        return st;
    double now_ms = 0;
    if (t->type == REDIS_REPLY_ARRAY && t->elements == 2 &&
        t->element[0]->type == REDIS_REPLY_STRING && t->element[1]->type == REDIS_REPLY_STRING)
        now_ms = strtod(t->element[0]->str, NULL) * 1000.0 +
                 (double)(strtoll(t->element[1]->str, NULL, 10) / 1000);
    freeReplyObject(t);
    const char *ready_cmd[] = {"LLEN", queue};
    const char *delayed_cmd[] = {"ZCARD", delayed};
    const char *dead_cmd[] = {"LLEN", dlq};
    const char *exists_cmd[] = {"EXISTS", queue, delayed, dlq, workers, bell};
    long long exists = 0;
    if ((st = call_int(b, queue, 2, ready_cmd, NULL, &out->ready, err)) == BQ_OK &&
        (st = call_int(b, queue, 2, delayed_cmd, NULL, &out->delayed, err)) == BQ_OK &&
        (st = call_int(b, queue, 2, dead_cmd, NULL, &out->dead, err)) == BQ_OK &&
        (st = call_int(b, queue, 6, exists_cmd, NULL, &exists, err)) == BQ_OK)
        st = redis_workers(b, queue, detail, now_ms, out, err);
    out->seen = exists > 0;
    if (st != BQ_OK)
        bq_queue_stats_free(out);
    return st;
}

bq_status bq_admin_peek(bq_broker *b, const char *queue, long limit, struct bq_batch *out,
                        bq_err *err)
{
    if (limit < 1)
        return bq_err_set(err, BQ_EINVAL, "peek: limit must be at least 1");
    /* The front, where workers take, is the right end (producers LPUSH) or the left one. */
    if (bq_broker_front(b, queue)[0] == 'L')
        return b->admin->range(b, queue, BQ_LIST_READY, 0, limit - 1, out, err);
    size_t from = out->n;
    bq_status st = b->admin->range(b, queue, BQ_LIST_READY, -limit, -1, out, err);
    for (size_t i = from, j = out->n; st == BQ_OK && i + 1 < j; i++, j--) {
        struct bq_msg m = out->msgs[i];
        out->msgs[i] = out->msgs[j - 1];
        out->msgs[j - 1] = m;
    }
    return st;
}

bq_status bq_admin_purge_ready(bq_broker *b, const char *queue, long chunk, long long *removed,
                               void (*progress)(void *ud, long long done, long long left),
                               void *ud, bq_err *err)
{
    *removed = 0;
    if (chunk < 1)
        chunk = 1000;
    char keep[32];
    snprintf(keep, sizeof keep, "%ld", -(chunk + 1));
    for (;;) {
        long long n = 0;
        bq_status st = b->admin->length(b, queue, BQ_LIST_READY, &n, err);
        if (st != BQ_OK || n == 0)
            return st;
        long long taken = n < chunk ? n : chunk;
        if (is_memory(b)) {
            /* No trim in memory: take them as a worker would, at most once, and drop them. */
            const char *qs[] = {queue};
            struct bq_lessee who = {qs, 1, NULL, "admin-purge", BQ_AT_MOST_ONCE, 0, 0};
            struct bq_fetch_req req = {(size_t)taken, 0, NULL, 0, false, 0, false, NULL, NULL, 0};
            struct bq_fetch_res res;
            memset(&res, 0, sizeof res);
            struct bq_batch got = {NULL, 0, 0};
            st = b->ops->fetch(b, &who, &req, &res, &got, err);
            taken = (long long)got.n;
            bq_batch_free(&got);
            bq_batch_free(&res.dead);
        } else {
            const char *trim[] = {"LTRIM", queue, "0", keep};
            redisReply *r;
            if ((st = call(b, queue, 4, trim, NULL, &r, err)) == BQ_OK)
                freeReplyObject(r);
        }
        if (st != BQ_OK)
            return st;
        if (taken == 0)
            return BQ_OK;
        *removed += taken;
        if (progress != NULL && n > taken)
            progress(ud, *removed, n - taken);
    }
}

static int by_name(const void *a, const void *b)
{
    const struct bq_msg *x = a, *y = b;
    return strcmp(x->data, y->data);
}

/* The queue a key belongs to, if it is one of the keys every queue has ({Q}:dlq, Q:delayed
 * ...): its name into *name (pointing into key) and length. */
static bool queue_of_key(const char *key, size_t len, const char **name, size_t *nlen)
{
    static const char *const suffixes[] = {":delayed", ":dlq", ":workers", ":bell", ":rates"};
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        size_t s = strlen(suffixes[i]);
        if (len > s && memcmp(key + len - s, suffixes[i], s) == 0) {
            *name = key;
            *nlen = len - s;
            if (*nlen > 2 && key[0] == '{' && key[*nlen - 1] == '}' &&
                memchr(key + 1, '}', *nlen - 2) == NULL) {
                ++*name; /* {Q}:suffix is a key of queue Q */
                *nlen -= 2;
            }
            return *nlen > 0;
        }
    }
    return false;
}

bq_status bq_admin_queues(bq_broker *b, const char *queue, long max_keys, struct bq_batch *out,
                          bool *partial, bq_err *err)
{
    *partial = false;
    if (is_memory(b))
        return bq_err_set(err, BQ_EUNSUPPORTED, "the memory broker cannot list its queues");
    char cursor[32] = "0";
    long looked = 0;
    bq_status st = BQ_OK;
    do {
        const char *scan[] = {"SCAN", cursor, "COUNT", "1000"};
        redisReply *r;
        if ((st = call(b, queue, 4, scan, NULL, &r, err)) != BQ_OK)
            return st;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
            freeReplyObject(r);
            return bq_err_set(err, BQ_EPROTO, "SCAN: unexpected reply");
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        const redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements && st == BQ_OK; i++) {
            const char *name;
            size_t nlen;
            if (keys->element[i]->type != REDIS_REPLY_STRING ||
                !queue_of_key(keys->element[i]->str, keys->element[i]->len, &name, &nlen))
                continue;
            bool dup = false;
            for (size_t j = 0; j < out->n && !dup; j++)
                dup = out->msgs[j].len == nlen && memcmp(out->msgs[j].data, name, nlen) == 0;
            if (dup)
                continue;
            struct bq_msg m = {bq_malloc(nlen + 1), nlen, 0, false, 0, 0};
            if (m.data == NULL) {
                st = bq_err_set(err, BQ_ENOMEM, "queues: out of memory");
                break;
            }
            memcpy(m.data, name, nlen);
            m.data[nlen] = '\0';
            if ((st = bq_batch_take(out, m)) != BQ_OK)
                bq_free(m.data);
        }
        looked += (long)keys->elements;
        freeReplyObject(r);
    } while (st == BQ_OK && strcmp(cursor, "0") != 0 && looked < max_keys);
    *partial = strcmp(cursor, "0") != 0;
    if (out->n > 1)
        qsort(out->msgs, out->n, sizeof *out->msgs, by_name);
    return st;
}
