/*
 * redis_lease.c -- the Redis broker's operations on leased messages outside the fetch round
 * trip, and on the lease itself.
 *
 * At-least-once, a fetched message stays in its worker's in-flight list {Q}:wip:<worker>
 * until a script is done with it: retry-3 schedules its retry form in {Q}:delayed, bury-3
 * (burybig-3 for one too large to send back) writes its dead-letter entry, handback-2 puts it
 * back at the front of Q. The worker's entry in {Q}:workers is the lease of all of them:
 * heartbeat-N renews it and names workers whose lease ran out, reap-4 moves such a worker's
 * list back to Q, unregister-2 drops the entry of a worker that stops with nothing held.
 * promote-2 moves retries come due to Q; ratelimit-N admits messages under a limit. Each
 * is one script on a pooled connection, except handback's one call per message.
 */
#include "redis_int.h"

#include "../core/alloc.h"
#include "../core/err.h"
#include "../core/rand.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

bq_status bq_redis_retry(bq_broker *b, const struct bq_lessee *who,
                         const struct bq_msg *leased, struct bq_slice next, double delay,
                         bool *held, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char wip[BQ_KEY_MAX], delayed[BQ_KEY_MAX], seals[BQ_KEY_MAX], ms[32];
    bq_status st = bq_redis_wip_key(who, leased->q, wip, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(bq_redis_queue_of(who, leased->q), "delayed", delayed, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(bq_redis_queue_of(who, leased->q), "seals", seals, err);
    if (st != BQ_OK)
        return st;
    snprintf(ms, sizeof ms, "%lld", (long long)(delay > 0 ? delay * 1000.0 : 0));
    const char *keys[] = {wip, delayed, seals};
    const char *args[] = {leased->data, next.p, ms, who->delivery == BQ_AT_LEAST_ONCE ? "1" : "0"};
    size_t lens[] = {leased->len, next.len, strlen(ms), 1};
    long long res = 0;
    st = bq_redis_script_int(r, S_RETRY, 3, keys, 4, args, lens, &res, err);
    *held = res == 1;
    return st;
}

bq_status bq_redis_bury(bq_broker *b, const struct bq_lessee *who,
                        const struct bq_msg *leased, struct bq_slice entry, bool *held,
                        bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char wip[BQ_KEY_MAX], dlq[BQ_KEY_MAX], seals[BQ_KEY_MAX];
    bq_status st = bq_redis_wip_key(who, leased->q, wip, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(bq_redis_queue_of(who, leased->q), "dlq", dlq, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(bq_redis_queue_of(who, leased->q), "seals", seals, err);
    if (st != BQ_OK)
        return st;
    const char *keys[] = {wip, dlq, seals};
    const char *lease = who->delivery == BQ_AT_LEAST_ONCE ? "1" : "0";
    long long res = 0;
    size_t size = leased->oversize;
    if (size == 0 && who->max_size > 0 && leased->len > who->max_size)
        size = leased->len;
    if (size > 0) {
        /* too large to send back: found server-side by length and first bytes */
        char sz[24];
        snprintf(sz, sizeof sz, "%zu", size);
        const char *args[] = {sz, leased->data, entry.p, lease};
        size_t lens[] = {strlen(sz), leased->len < BQ_DLQ_KEEP ? leased->len : BQ_DLQ_KEEP,
                         entry.len, 1};
        st = bq_redis_script_int(r, S_BURYBIG, 3, keys, 4, args, lens, &res, err);
    } else {
        const char *args[] = {leased->data, entry.p, lease};
        size_t lens[] = {leased->len, entry.len, 1};
        st = bq_redis_script_int(r, S_BURY, 3, keys, 3, args, lens, &res, err);
    }
    *held = res == 1;
    return st;
}

bq_status bq_redis_handback(bq_broker *b, const struct bq_lessee *who,
                            const struct bq_msg *msgs, size_t n, size_t *count,
                            bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    *count = 0;
    bq_conn *c;
    bq_status st = n == 0 ? BQ_OK : bq_pool_borrow(r->pool, &c, err);
    if (n == 0 || st != BQ_OK)
        return st;
    /* Oldest last onto the front: the oldest is taken next. One call per message keeps
     * the script's keys to its own queue. */
    for (size_t i = n; i-- > 0 && st == BQ_OK;) {
        const char *queue = bq_redis_queue_of(who, msgs[i].q);
        const char *front = bq_broker_front(b, queue);
        if (who->delivery != BQ_AT_LEAST_ONCE) {
            const char *argv[3] = {*front == 'L' ? "LPUSH" : "RPUSH", queue, msgs[i].data};
            size_t lens[3] = {5, strlen(queue), msgs[i].len};
            st = bq_conn_call(c, NULL, err, 3, argv, lens);
            *count += st == BQ_OK;
            continue;
        }
        char wip[BQ_KEY_MAX];
        if ((st = bq_redis_wip_key(who, msgs[i].q, wip, err)) != BQ_OK)
            break;
        const char *keys[] = {wip, queue};
        const char *args[] = {front, msgs[i].data};
        size_t lens[] = {1, msgs[i].len};
        redisReply *rep;
        st = bq_redis_run_script(c, S_HANDBACK, 2, keys, 2, args, lens, r->command_timeout, &rep,
                                 err);
        if (st == BQ_OK) {
            *count += rep->type == REDIS_REPLY_INTEGER && rep->integer > 0;
            freeReplyObject(rep);
        }
    }
    bq_pool_return(r->pool, c);
    return st;
}

/* Whether every element of array reply rep is an integer. */
static bool integers(const redisReply *rep)
{
    for (size_t i = 0; i < rep->elements; i++) {
        if (rep->element[i]->type != REDIS_REPLY_INTEGER)
            return false;
    }
    return true;
}

bq_status bq_redis_rate_limit(bq_broker *b, const struct bq_lessee *who, long limit,
                              double period, struct bq_admission *reqs, size_t n,
                              bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    for (size_t i = 0; i < n; i++) {
        reqs[i].verdict = 1;
        reqs[i].value = 0;
    }
    if (n == 0)
        return BQ_OK;
    char lim[24], per[32], tag[64];
    snprintf(lim, sizeof lim, "%ld", limit);
    /* the period in whole milliseconds, rounded (a truncated 2.01 s made a window of 2009) */
    long long per_ms = period < 1e12 ? llround(period * 1000.0) : 0;
    if (per_ms < 1)
        return bq_err_set(err, BQ_EINVAL, "ratelimit-N: a period of 1 ms or more is needed");
    snprintf(per, sizeof per, "%lld", per_ms);
    /* The call's entry in each of its keys, unique to the call: the worker (its first 40
     * bytes) and a random integer, which ends it whatever the worker's id (the script reads
     * an entry's count from a "*k" at its end). (An integer: glibc formats "%.0f" of a
     * double through its multi-precision path.) */
    snprintf(tag, sizeof tag, "%.40s:%llu", who->worker,
             (unsigned long long)(bq_random_unit() * 1e15));
    /* A key an operation; their text in one block. */
    char (*names)[BQ_KEY_MAX] = bq_calloc(n, sizeof *names);
    const char **keys = bq_calloc(n, sizeof *keys);
    bq_status st = names && keys ? BQ_OK : bq_err_set(err, BQ_ENOMEM, "ratelimit-N: out of memory");
    for (size_t i = 0; st == BQ_OK && i < n; i++) {
        char suffix[BQ_KEY_MAX];
        snprintf(suffix, sizeof suffix, "rlog:%s", reqs[i].key);
        st = bq_key_derive_err(bq_redis_queue_of(who, reqs[i].msg->q), suffix, names[i], err);
        keys[i] = names[i];
    }
    redisReply *rep = NULL;
    const char *args[] = {lim, per, tag};
    if (st == BQ_OK)
        st = bq_redis_script(r, S_RATELIMIT, (int)n, keys, 3, args, NULL, &rep, err);
    /* { now }: every operation admitted; else a verdict and a value per operation */
    bool all = st == BQ_OK && rep->type == REDIS_REPLY_ARRAY && rep->elements == 1 &&
               rep->element[0]->type == REDIS_REPLY_INTEGER;
    if (st == BQ_OK && !all &&
        (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 * n || !integers(rep)))
        st = bq_err_set(err, BQ_EPROTO, "ratelimit-N: unexpected reply");
    for (size_t i = 0; st == BQ_OK && i < n; i++) {
        reqs[i].verdict = all || rep->element[2 * i]->integer == 1;
        reqs[i].value = (double)rep->element[all ? 0 : 2 * i + 1]->integer / 1000.0;
    }
    if (rep != NULL)
        freeReplyObject(rep);
    bq_free(names);
    bq_free(keys);
    return st;
}

bq_status bq_redis_promote(bq_broker *b, const char *queue, size_t *moved, double *next_due,
                           bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    *moved = 0;
    *next_due = -1;
    char delayed[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "delayed", delayed, err);
    if (st != BQ_OK)
        return st;
    const char *keys[] = {delayed, queue};
    const char *args[] = {"1000", bq_broker_front(b, queue)};
    redisReply *rep;
    st = bq_redis_script(r, S_PROMOTE, 2, keys, 2, args, NULL, &rep, err);
    if (st != BQ_OK)
        return st;
    bq_redis_promote_reply(rep, moved, next_due);
    freeReplyObject(rep);
    return BQ_OK;
}

bq_status bq_redis_heartbeat(bq_broker *b, const struct bq_lessee *who, double lease,
                             struct bq_batch *dead, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    struct fetch_keys *k = bq_calloc(1, sizeof *k);
    if (k == NULL)
        return bq_err_set(err, BQ_ENOMEM, "heartbeat: out of memory");
    bq_status st = bq_redis_build_keys(r, who, k, err);
    char ms[32];
    snprintf(ms, sizeof ms, "%lld", (long long)(lease * 1000.0));
    const char *args[] = {who->worker, ms};
    redisReply *rep = NULL;
    if (st == BQ_OK)
        st = bq_redis_script(r, S_HEARTBEAT, who->nqueues, k->hb, 2, args, NULL, &rep, err);
    if (st == BQ_OK && bq_redis_take_pairs(rep, dead) != BQ_OK)
        st = bq_err_set(err, BQ_ENOMEM, "heartbeat: out of memory");
    if (rep != NULL)
        freeReplyObject(rep);
    bq_free(k);
    return st;
}

bq_status bq_redis_report(bq_broker *b, const struct bq_lessee *who, struct bq_slice info,
                          double ttl, const long long *done, const long long *failed, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    int nq = who->nqueues;
    if (nq < 1 || nq > MAX_QUEUES)
        return bq_err_set(err, BQ_EINVAL, "report: 1 to %d queues", MAX_QUEUES);
    char(*names)[BQ_KEY_MAX] = bq_calloc((size_t)(2 * nq), sizeof *names);
    char(*nums)[24] = bq_calloc((size_t)(2 * nq + 1), sizeof *nums);
    const char **keys = bq_calloc((size_t)(2 * nq), sizeof *keys);
    const char **args = bq_calloc((size_t)(2 * nq + 2), sizeof *args);
    size_t *lens = bq_calloc((size_t)(2 * nq + 2), sizeof *lens);
    bq_status st = BQ_OK;
    if (names == NULL || nums == NULL || keys == NULL || args == NULL || lens == NULL)
        st = bq_err_set(err, BQ_ENOMEM, "report: out of memory");
    char suffix[BQ_KEY_MAX];
    if (st == BQ_OK &&
        snprintf(suffix, sizeof suffix, "worker:%s", who->worker) >= (int)sizeof suffix)
        st = bq_err_set(err, BQ_EINVAL, "worker id too long");
    for (int i = 0; st == BQ_OK && i < nq; i++) {
        st = bq_key_derive_err(who->queues[i], suffix, names[2 * i], err);
        if (st == BQ_OK)
            st = bq_key_derive_err(who->queues[i], "rates", names[2 * i + 1], err);
        keys[2 * i] = names[2 * i];
        keys[2 * i + 1] = names[2 * i + 1];
    }
    if (st == BQ_OK) {
        snprintf(nums[2 * nq], sizeof nums[0], "%lld", ttl > 0 ? (long long)(ttl * 1000.0) : 0LL);
        args[0] = info.p;
        lens[0] = info.len;
        args[1] = nums[2 * nq];
        lens[1] = strlen(args[1]);
        for (int i = 0; i < nq; i++) {
            snprintf(nums[2 * i], sizeof nums[0], "%lld", done[i]);
            snprintf(nums[2 * i + 1], sizeof nums[0], "%lld", failed[i]);
            args[2 + 2 * i] = nums[2 * i];
            args[3 + 2 * i] = nums[2 * i + 1];
            lens[2 + 2 * i] = strlen(nums[2 * i]);
            lens[3 + 2 * i] = strlen(nums[2 * i + 1]);
        }
        st = bq_redis_script_int(r, S_REPORT, 2 * nq, keys, 2 + 2 * nq, args, lens, NULL, err);
    }
    bq_free(names);
    bq_free(nums);
    bq_free(keys);
    bq_free(args);
    bq_free(lens);
    return st;
}

bq_status bq_redis_reap(bq_broker *b, const char *queue, const char *dead_id,
                        long long *recovered, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char workers[BQ_KEY_MAX], suffix[BQ_KEY_MAX], wip[BQ_KEY_MAX], seals[BQ_KEY_MAX];
    *recovered = -1;
    bq_status st = bq_key_derive_err(queue, "workers", workers, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(queue, "seals", seals, err);
    if (st == BQ_OK && snprintf(suffix, sizeof suffix, "wip:%s", dead_id) >= (int)sizeof suffix)
        st = bq_err_set(err, BQ_EINVAL, "worker id too long");
    if (st == BQ_OK)
        st = bq_key_derive_err(queue, suffix, wip, err);
    if (st != BQ_OK)
        return st;
    const char *keys[] = {workers, wip, queue, seals};
    const char *args[] = {dead_id, bq_broker_front(b, queue)};
    return bq_redis_script_int(r, S_REAP, 4, keys, 2, args, NULL, recovered, err);
}

bq_status bq_redis_unregister(bq_broker *b, const struct bq_lessee *who, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    bq_status st = BQ_OK;
    for (int i = 0; i < who->nqueues && st == BQ_OK; i++) {
        char workers[BQ_KEY_MAX], wip[BQ_KEY_MAX];
        st = bq_key_derive_err(who->queues[i], "workers", workers, err);
        if (st == BQ_OK)
            st = bq_redis_wip_key(who, i, wip, err);
        const char *keys[] = {workers, wip};
        const char *args[] = {who->worker};
        if (st == BQ_OK)
            st = bq_redis_script_int(r, S_UNREGISTER, 2, keys, 1, args, NULL, NULL, err);
    }
    return st;
}
