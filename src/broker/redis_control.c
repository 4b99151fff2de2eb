/*
 * redis_control.c -- the Redis broker's control paths: cancel and pause reaching running
 * tasks, and following a Sentinel failover.
 *
 * Cancel and pause reach a worker two ways: published on Q's control channel {Q}:control,
 * which every worker of Q listens to on a connection of its own (publish, listen), and as
 * operations pushed on Q itself, as Bindu's API does, which controls-3 finds among Q's
 * newest entries without taking them (controls).
 */
#include "redis_int.h"

#include "../core/backoff.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/id.h"
#include "../core/log.h"
#include "../core/rand.h"

#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

/* ---- Control channel ------------------------------------------------------------------------- */

bq_status bq_redis_publish(bq_broker *b, const char *queue, struct bq_slice msg,
                           long long *receivers, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char chan[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "control", chan, err);
    *receivers = 0;
    if (st != BQ_OK)
        return st;
    const char *argv[] = {"PUBLISH", chan, msg.p};
    size_t lens[] = {7, strlen(chan), msg.len};
    redisReply *rep;
    st = bq_redis_call(r, &rep, err, 3, argv, lens);
    if (st == BQ_OK) { /* bq_redis_call leaves rep NULL on failure */
        if (rep->type == REDIS_REPLY_INTEGER)
            *receivers = rep->integer;
        freeReplyObject(rep);
    }
    return st;
}

/* SUBSCRIBE on a connection of its own; the replies are ["subscribe", chan, n] once, then
 * ["message", chan, payload] for each publication. */
bq_status bq_redis_listen(bq_broker *b, const char *queue,
                          void (*cb)(void *ud, const char *msg, size_t len),
                          void (*ready)(void *ud), void *ud, int stopfd, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char chan[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "control", chan, err);
    if (st != BQ_OK)
        return st;
    bq_conn *c;
    st = bq_conn_open(bq_pool_url(r->pool), bq_pool_conn_opts(r->pool), &c, err);
    if (st != BQ_OK)
        return st;
    const char *argv[] = {"SUBSCRIBE", chan};
    size_t lens[] = {9, strlen(chan)};
    st = bq_conn_append(c, 2, argv, lens, err);
    if (st == BQ_OK)
        st = bq_conn_flush(c, bq_now_mono() + r->command_timeout, stopfd, err);
    while (st == BQ_OK) {
        redisReply *rep = NULL;
        st = bq_conn_read(c, &rep, -1, stopfd, err);
        if (st != BQ_OK)
            break;
        st = bq_reply_check(rep, "SUBSCRIBE", err);
        if (st == BQ_OK && rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 &&
            rep->element[0]->type == REDIS_REPLY_STRING) {
            const redisReply *kind = rep->element[0], *payload = rep->element[2];
            if (strcmp(kind->str, "subscribe") == 0 && ready != NULL)
                ready(ud);
            else if (strcmp(kind->str, "message") == 0 && payload->type == REDIS_REPLY_STRING)
                cb(ud, payload->str, payload->len);
        }
        freeReplyObject(rep);
    }
    bq_conn_close(c);
    return st;
}

/* ---- Control operations in the queue --------------------------------------------------------- */

bq_status bq_redis_controls(bq_broker *b, const char *queue, double interval,
                            size_t window, struct bq_batch *out, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char scan[BQ_KEY_MAX], seen[BQ_KEY_MAX], ms[24], win[24];
    bq_status st = bq_key_derive_err(queue, "ctlscan", scan, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(queue, "ctlseen", seen, err);
    if (st != BQ_OK)
        return st;
    snprintf(ms, sizeof ms, "%lld", (long long)(interval * 1000.0) > 0
                                        ? (long long)(interval * 1000.0) : 1LL);
    snprintf(win, sizeof win, "%zu", window > 0 ? window : 1);
    const char *keys[] = {queue, scan, seen};
    const char *args[] = {ms, win, bq_broker_front(b, queue)};
    redisReply *rep;
    st = bq_redis_script(r, S_CONTROLS, 3, keys, 3, args, NULL, &rep, err);
    if (st != BQ_OK)
        return st;
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i + 1 < rep->elements; i += 2) {
        const redisReply *op = rep->element[i], *id = rep->element[i + 1];
        if (op->type != REDIS_REPLY_STRING || id->type != REDIS_REPLY_STRING)
            continue;
        /* The id byte for byte, and only an id the decoders would take: a JSON "\u0000" in
         * it decodes to a zero byte, which as a C string would cut "victim\0attacker" to
         * "victim" and cancel another task. */
        char line[256];
        if (!bq_id_check(id->str, id->len, NULL) || op->len + 1 + id->len >= sizeof line)
            continue;
        memcpy(line, op->str, op->len);
        line[op->len] = ' ';
        memcpy(line + op->len + 1, id->str, id->len);
        size_t n = op->len + 1 + id->len;
        if (bq_batch_add(out, line, n) != BQ_OK) {
            st = bq_err_set(err, BQ_ENOMEM, "controls: out of memory");
            break;
        }
    }
    freeReplyObject(rep);
    return st;
}

/* ---- Sentinel: following +switch-master ---------------------------------------------------------
 * Every new connection asks the sentinels where the master is (conn.c), but connections
 * already open to the old master would go on talking to it until it is reconfigured as a
 * replica, which Sentinel may do only seconds later: writes meanwhile are lost. So a thread
 * subscribes to +switch-master on one sentinel (the next one when that fails) and, when our
 * service switches, bumps the epoch (every older connection now counts as broken) and wakes
 * the blocked fetch. */

void *bq_redis_watch_sentinels(void *arg)
{
    struct redis_broker *r = arg;
    const struct bq_url *u = bq_pool_url(r->pool);
    const struct bq_conn_opts *o = bq_pool_conn_opts(r->pool);
    int failures = 0;
    for (size_t node = 0;; node = (node + 1) % u->nhosts) {
        bq_conn *s = NULL;
        bq_err e;
        bq_status st = bq_conn_open_node(u, node, u->sentinel_password, o, &s, &e);
        const char *argv[] = {"SUBSCRIBE", "+switch-master"};
        if (st == BQ_OK && (st = bq_conn_append(s, 2, argv, NULL, &e)) == BQ_OK)
            st = bq_conn_flush(s, bq_now_mono() + r->command_timeout, r->watch_stopfd, &e);
        while (st == BQ_OK) {
            redisReply *rep = NULL;
            if ((st = bq_conn_read(s, &rep, -1, r->watch_stopfd, &e)) != BQ_OK)
                break;
            failures = 0;
            size_t n = strlen(u->service);
            if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 &&
                rep->element[2]->type == REDIS_REPLY_STRING &&
                strncmp(rep->element[2]->str, u->service, n) == 0 &&
                rep->element[2]->str[n] == ' ') {
                atomic_fetch_add(&r->epoch, 1);
                bq_log(BQ_LOG_WARN, "master_switched", "service", u->service, "change",
                       rep->element[2]->str + n + 1, NULL);
                bq_redis_interrupt(&r->base);
            }
            freeReplyObject(rep);
        }
        bq_conn_close(s);
        if (st == BQ_EINTR)
            return NULL;
        if (failures++ >= (int)u->nhosts)
            bq_log(BQ_LOG_WARN, "sentinel_watch_lost", "error", e.msg, NULL);
        double d = bq_backoff_delay(failures, 0.1, 5.0, BQ_JITTER_EQUAL, bq_random_unit());
        struct pollfd p = {r->watch_stopfd, POLLIN, 0};
        if (poll(&p, 1, (int)(d * 1000)) > 0)
            return NULL;
    }
}
