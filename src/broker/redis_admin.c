/*
 * redis_admin.c -- the Redis broker's reads and maintenance for admin tools: the length of a
 * queue's lists (its workers' in-flight lists summed), a range of the queue or of its
 * dead-letter list, newest first, and the dead-letter list's requeue, remove and purge.
 */
#include "redis_int.h"

#include "../core/clock.h"
#include "../core/err.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* The total length of every worker's in-flight list: their ids, then one LLEN each,
 * pipelined on one pooled connection. */
static bq_status inflight_length(struct redis_broker *r, const char *queue, long long *out,
                                 bq_err *err)
{
    char workers[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "workers", workers, err);
    bq_conn *c;
    if (st != BQ_OK || (st = bq_pool_borrow(r->pool, &c, err)) != BQ_OK)
        return st;
    redisReply *ids;
    if ((st = bq_conn_callv(c, &ids, err, "ZRANGE", workers, "0", "-1", NULL)) != BQ_OK) {
        bq_pool_return(r->pool, c);
        return st;
    }
    *out = 0;
    size_t n = ids->type == REDIS_REPLY_ARRAY ? ids->elements : 0;
    for (size_t i = 0; i < n && st == BQ_OK; i++) {
        char suffix[BQ_KEY_MAX], wip[BQ_KEY_MAX];
        snprintf(suffix, sizeof suffix, "wip:%s", ids->element[i]->str);
        if (bq_key_derive_err(queue, suffix, wip, err) != BQ_OK)
            continue;
        const char *argv[] = {"LLEN", wip};
        st = bq_conn_append(c, 2, argv, NULL, err);
    }
    double deadline = bq_now_mono() + r->command_timeout;
    if (st == BQ_OK && n > 0)
        st = bq_conn_flush(c, deadline, -1, err);
    for (size_t i = 0; i < n && st == BQ_OK; i++) {
        redisReply *rep;
        st = bq_conn_read(c, &rep, deadline, -1, err);
        if (st == BQ_OK) {
            if (rep->type == REDIS_REPLY_INTEGER)
                *out += rep->integer;
            freeReplyObject(rep);
        }
    }
    bq_pool_return(r->pool, c);
    freeReplyObject(ids);
    return st;
}

bq_status bq_redis_length(bq_broker *b, const char *queue, enum bq_list which,
                          long long *out, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char key[BQ_KEY_MAX];
    bq_status st = bq_list_key(queue, which, key, err);
    if (st != BQ_OK)
        return st;
    if (which == BQ_LIST_INFLIGHT)
        return inflight_length(r, queue, out, err);
    const char *argv[] = {which == BQ_LIST_DELAYED ? "ZCARD" : "LLEN", key};
    redisReply *rep;
    st = bq_redis_call(r, &rep, err, 2, argv, NULL);
    if (st == BQ_OK) {
        *out = rep->type == REDIS_REPLY_INTEGER ? rep->integer : 0;
        freeReplyObject(rep);
    }
    return st;
}

bq_status bq_redis_range(bq_broker *b, const char *queue, enum bq_list which, long start,
                         long stop, struct bq_batch *out, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    if (which != BQ_LIST_READY && which != BQ_LIST_DEAD)
        return bq_err_set(err, BQ_EINVAL, "range reads the queue or its dead-letter list only");
    char key[BQ_KEY_MAX], s1[24], s2[24];
    bq_status st = bq_list_key(queue, which, key, err);
    if (st != BQ_OK)
        return st;
    /* Newest first: a queue whose producers RPUSH keeps its newest at the right end, so the
     * positions count from there and the answer is turned around. */
    bool flip = which == BQ_LIST_READY && *bq_broker_front(b, queue) == 'L';
    snprintf(s1, sizeof s1, "%ld", flip ? -1 - stop : start);
    snprintf(s2, sizeof s2, "%ld", flip ? -1 - start : stop);
    const char *argv[] = {"LRANGE", key, s1, s2};
    redisReply *rep;
    st = bq_redis_call(r, &rep, err, 4, argv, NULL);
    if (st != BQ_OK)
        return st;
    size_t first = out->n;
    st = bq_redis_take_strings(rep, out, 0);
    freeReplyObject(rep);
    for (size_t i = first, j = out->n; flip && st == BQ_OK && i + 1 < j; i++, j--) {
        struct bq_msg t = out->msgs[i];
        out->msgs[i] = out->msgs[j - 1];
        out->msgs[j - 1] = t;
    }
    return st == BQ_OK ? BQ_OK : bq_err_set(err, st, "LRANGE: out of memory");
}

bq_status bq_redis_dlq_requeue(bq_broker *b, const char *queue, struct bq_slice entry,
                               bool *done, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char dlq[BQ_KEY_MAX], seals[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "dlq", dlq, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(queue, "seals", seals, err);
    if (st != BQ_OK)
        return st;
    const char *keys[] = {dlq, queue, seals};
    const char *args[] = {entry.p, bq_broker_front(b, queue)};
    size_t lens[] = {entry.len, 1};
    long long res = 0;
    st = bq_redis_script_int(r, S_REQUEUE, 3, keys, 2, args, lens, &res, err);
    *done = res == 1;
    return st;
}

bq_status bq_redis_dlq_remove(bq_broker *b, const char *queue, struct bq_slice entry,
                              bool *done, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char dlq[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "dlq", dlq, err);
    if (st != BQ_OK)
        return st;
    const char *argv[] = {"LREM", dlq, "1", entry.p};
    size_t lens[] = {4, strlen(dlq), 1, entry.len};
    redisReply *rep;
    st = bq_redis_call(r, &rep, err, 4, argv, lens);
    if (st != BQ_OK)
        return st;
    *done = rep->type == REDIS_REPLY_INTEGER && rep->integer > 0;
    freeReplyObject(rep);
    return BQ_OK;
}

bq_status bq_redis_dlq_purge(bq_broker *b, const char *queue, long long *count, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char dlq[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "dlq", dlq, err);
    bq_conn *c;
    if (st != BQ_OK || (st = bq_pool_borrow(r->pool, &c, err)) != BQ_OK)
        return st;
    /* LLEN and DEL in one MULTI, so the count is what was deleted. */
    const char *multi[] = {"MULTI"}, *llen[] = {"LLEN", dlq}, *del[] = {"DEL", dlq},
               *exec[] = {"EXEC"};
    st = bq_conn_append(c, 1, multi, NULL, err);
    if (st == BQ_OK)
        st = bq_conn_append(c, 2, llen, NULL, err);
    if (st == BQ_OK)
        st = bq_conn_append(c, 2, del, NULL, err);
    if (st == BQ_OK)
        st = bq_conn_append(c, 1, exec, NULL, err);
    double deadline = bq_now_mono() + r->command_timeout;
    if (st == BQ_OK)
        st = bq_conn_flush(c, deadline, -1, err);
    *count = 0;
    for (int i = 0; i < 4 && st == BQ_OK; i++) {
        redisReply *rep;
        st = bq_conn_read(c, &rep, deadline, -1, err);
        if (st != BQ_OK)
            break;
        st = bq_reply_check(rep, i == 3 ? "EXEC" : "MULTI", err);
        if (st == BQ_OK && i == 3 && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
            rep->element[0]->type == REDIS_REPLY_INTEGER)
            *count = rep->element[0]->integer;
        freeReplyObject(rep);
    }
    if (st != BQ_OK)
        bq_conn_mark_broken(c); /* replies may be left unread (see redis_push) */
    bq_pool_return(r->pool, c);
    return st;
}
