/*
 * redis.c -- the Redis broker.
 *
 * Short commands (push, length, dead-letter, ping) borrow from a bounded pool. The fetch loop
 * has its own connection, because a blocking pop holds its connection for the whole wait.
 * Fetch blocks with BLMPOP (Redis >= 7.0: one round trip takes up to `max` messages as soon as
 * the first arrives) or BRPOP on older servers, and never polls. To interrupt a blocked fetch
 * (shutdown), bq_broker_interrupt wakes the fetching thread through an eventfd; that thread
 * sends CLIENT UNBLOCK for its own connection over a pooled one and then reads the reply of
 * the unblocked pop, so a message popped at that very moment is still delivered, not lost.
 */
#include "broker.h"
#include "keys.h"

#include "../core/alloc.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/log.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* Arguments per LPUSH when pushing a large batch: one command per chunk, all pipelined. */
#define PUSH_CHUNK 1000

struct redis_broker {
    struct bq_broker base;
    bq_pool *pool;
    bq_conn *fetch_conn;     /* owned; used only by the fetching thread */
    long long fetch_id;      /* CLIENT ID of fetch_conn, -1 if unknown */
    bool has_blmpop;
    int wakefd;              /* eventfd written by interrupt */
};

static bq_status borrow(struct redis_broker *r, bq_conn **c, bq_err *err)
{
    return bq_pool_borrow(r->pool, c, err);
}

static bq_status queue_key(const char *queue, enum bq_list which, char *out, size_t size,
                           bq_err *err)
{
    bool ok;
    if (which == BQ_LIST_DEAD) {
        ok = bq_key_derive(queue, "dlq", out, size);
    } else {
        ok = strlen(queue) < size;
        if (ok)
            memcpy(out, queue, strlen(queue) + 1);
    }
    return ok ? BQ_OK : bq_err_set(err, BQ_EINVAL, "queue name too long");
}

static bq_status redis_push(bq_broker *b, const char *queue, const struct bq_slice *msgs,
                            size_t n, size_t *pushed, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    *pushed = 0;
    if (n == 0)
        return BQ_OK;
    bq_conn *c;
    bq_status st = borrow(r, &c, err);
    if (st != BQ_OK)
        return st;
    size_t chunk = n < PUSH_CHUNK ? n : PUSH_CHUNK;
    const char **argv = bq_calloc(chunk + 2, sizeof *argv);
    size_t *lens = bq_calloc(chunk + 2, sizeof *lens);
    size_t ncmds = 0;
    if (argv == NULL || lens == NULL) {
        st = bq_err_set(err, BQ_ENOMEM, "LPUSH: out of memory");
        goto done;
    }
    argv[0] = "LPUSH";
    lens[0] = 5;
    argv[1] = queue;
    lens[1] = strlen(queue);
    for (size_t i = 0; i < n && st == BQ_OK; i += chunk) {
        size_t k = n - i < chunk ? n - i : chunk;
        for (size_t j = 0; j < k; j++) {
            argv[2 + j] = msgs[i + j].p;
            lens[2 + j] = msgs[i + j].len;
        }
        st = bq_conn_append(c, (int)k + 2, argv, lens, err);
        ncmds++;
    }
    double deadline = bq_now_mono() + 5.0 + (double)n / 50000.0;
    if (st == BQ_OK)
        st = bq_conn_flush(c, deadline, -1, err);
    for (size_t i = 0; i < ncmds && st == BQ_OK; i++) {
        redisReply *rep;
        st = bq_conn_read(c, &rep, deadline, -1, err);
        if (st != BQ_OK)
            break;
        st = bq_reply_check(rep, "LPUSH", err);
        freeReplyObject(rep);
        if (st == BQ_OK)
            *pushed += (i + 1) * chunk <= n ? chunk : n - i * chunk;
    }
done:
    bq_free(argv);
    bq_free(lens);
    bq_pool_return(r->pool, c);
    return st;
}

/* Opens the fetch connection and learns its client id and the server version. */
static bq_status open_fetch_conn(struct redis_broker *r, bq_err *err)
{
    bq_status st = bq_conn_open(bq_pool_url(r->pool), bq_pool_conn_opts(r->pool),
                                &r->fetch_conn, err);
    if (st != BQ_OK)
        return st;
    redisReply *rep = NULL;
    r->fetch_id = -1;
    if (bq_conn_callv(r->fetch_conn, &rep, NULL, "CLIENT", "ID", NULL) == BQ_OK &&
        rep->type == REDIS_REPLY_INTEGER)
        r->fetch_id = rep->integer;
    if (rep != NULL)
        freeReplyObject(rep);
    rep = NULL;
    r->has_blmpop = false;
    if (bq_conn_callv(r->fetch_conn, &rep, NULL, "INFO", "server", NULL) == BQ_OK &&
        rep->type == REDIS_REPLY_STRING) {
        const char *v = strstr(rep->str, "redis_version:");
        if (v != NULL)
            r->has_blmpop = atoi(v + strlen("redis_version:")) >= 7;
    }
    if (rep != NULL)
        freeReplyObject(rep);
    if (bq_conn_broken(r->fetch_conn)) {
        bq_conn_close(r->fetch_conn);
        r->fetch_conn = NULL;
        return bq_err_set(err, BQ_EIO, "fetch connection lost during setup");
    }
    return BQ_OK;
}

/* True (and the eventfd drained) if an interrupt is pending. */
static bool take_wakeup(struct redis_broker *r)
{
    uint64_t v;
    return read(r->wakefd, &v, sizeof v) == (ssize_t)sizeof v;
}

/* Unblocks our own blocked pop via another connection. */
static void unblock_fetch(struct redis_broker *r)
{
    if (r->fetch_id < 0)
        return;
    bq_conn *c;
    if (borrow(r, &c, NULL) != BQ_OK)
        return;
    char id[24];
    snprintf(id, sizeof id, "%lld", r->fetch_id);
    bq_conn_callv(c, NULL, NULL, "CLIENT", "UNBLOCK", id, NULL);
    bq_pool_return(r->pool, c);
}

/* Adds the string elements of an array reply (or a single string) to out. */
static bq_status take_strings(const redisReply *rep, struct bq_batch *out)
{
    if (rep->type == REDIS_REPLY_STRING)
        return bq_batch_add(out, rep->str, rep->len);
    if (rep->type != REDIS_REPLY_ARRAY)
        return BQ_OK;
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *e = rep->element[i];
        if (e->type == REDIS_REPLY_STRING && bq_batch_add(out, e->str, e->len) != BQ_OK)
            return BQ_ENOMEM;
    }
    return BQ_OK;
}

static bq_status redis_fetch(bq_broker *b, const char *queue, size_t max, double timeout,
                             struct bq_batch *out, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    if (max == 0)
        return BQ_OK;
    /* An interrupt that came while we were not waiting cuts this wait short: take what is
     * there without blocking. */
    if (take_wakeup(r))
        timeout = 0;
    bq_status st = BQ_OK;
    if (r->fetch_conn == NULL && (st = open_fetch_conn(r, err)) != BQ_OK)
        return st;
    bq_conn *c = r->fetch_conn;
    char count[24], tmo[32];
    snprintf(count, sizeof count, "%zu", max);
    snprintf(tmo, sizeof tmo, "%.3f", timeout);
    const char *cmd;
    if (timeout <= 0) {
        const char *argv[] = {"RPOP", queue, count};
        cmd = "RPOP";
        st = bq_conn_append(c, 3, argv, NULL, err);
    } else if (r->has_blmpop && max > 1) {
        const char *argv[] = {"BLMPOP", tmo, "1", queue, "RIGHT", "COUNT", count};
        cmd = "BLMPOP";
        st = bq_conn_append(c, 7, argv, NULL, err);
    } else {
        const char *argv[] = {"BRPOP", queue, tmo};
        cmd = "BRPOP";
        st = bq_conn_append(c, 3, argv, NULL, err);
    }
    double cmd_timeout = bq_pool_conn_opts(r->pool)->command_timeout;
    double deadline = bq_now_mono() + (timeout > 0 ? timeout : 0) + cmd_timeout;
    if (st == BQ_OK)
        st = bq_conn_flush(c, deadline, -1, err);
    redisReply *rep = NULL;
    if (st == BQ_OK) {
        st = bq_conn_read(c, &rep, deadline, timeout > 0 ? r->wakefd : -1, err);
        if (st == BQ_EINTR) {
            take_wakeup(r);
            unblock_fetch(r);
            /* Read the pop's reply: nil if unblocked, the messages if it won the race. Without
             * a client id (ACL forbids CLIENT) this waits out the blocking timeout. */
            st = bq_conn_read(c, &rep, deadline, -1, err);
        }
    }
    if (st == BQ_OK && (st = bq_reply_check(rep, cmd, err)) == BQ_OK) {
        if (rep->type == REDIS_REPLY_ARRAY && strcmp(cmd, "RPOP") != 0) {
            /* BRPOP: [key, value]; BLMPOP: [key, [values...]] */
            if (rep->elements == 2)
                st = take_strings(rep->element[1], out);
        } else {
            st = take_strings(rep, out);
        }
        if (st == BQ_ENOMEM)
            bq_err_set(err, st, "%s: out of memory", cmd);
    }
    if (rep != NULL)
        freeReplyObject(rep);
    if (bq_conn_broken(c)) {
        bq_conn_close(c);
        r->fetch_conn = NULL;
    }
    return st;
}

static void redis_interrupt(bq_broker *b)
{
    struct redis_broker *r = (struct redis_broker *)b;
    uint64_t one = 1;
    ssize_t n = write(r->wakefd, &one, sizeof one);
    (void)n;
}

static bq_status redis_length(bq_broker *b, const char *queue, enum bq_list which,
                              long long *out, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char key[512];
    bq_status st = queue_key(queue, which, key, sizeof key, err);
    bq_conn *c;
    if (st != BQ_OK || (st = borrow(r, &c, err)) != BQ_OK)
        return st;
    redisReply *rep;
    st = bq_conn_callv(c, &rep, err, "LLEN", key, NULL);
    bq_pool_return(r->pool, c);
    if (st != BQ_OK)
        return st;
    *out = rep->type == REDIS_REPLY_INTEGER ? rep->integer : 0;
    freeReplyObject(rep);
    return BQ_OK;
}

static bq_status redis_dead_letter(bq_broker *b, const char *queue, const char *entry,
                                   size_t len, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char key[512];
    bq_status st = queue_key(queue, BQ_LIST_DEAD, key, sizeof key, err);
    bq_conn *c;
    if (st != BQ_OK || (st = borrow(r, &c, err)) != BQ_OK)
        return st;
    const char *argv[] = {"LPUSH", key, entry};
    size_t lens[] = {5, strlen(key), len};
    st = bq_conn_call(c, NULL, err, 3, argv, lens);
    bq_pool_return(r->pool, c);
    return st;
}

static bq_status redis_range(bq_broker *b, const char *queue, enum bq_list which, long start,
                             long stop, struct bq_batch *out, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char key[512], s1[24], s2[24];
    bq_status st = queue_key(queue, which, key, sizeof key, err);
    bq_conn *c;
    if (st != BQ_OK || (st = borrow(r, &c, err)) != BQ_OK)
        return st;
    snprintf(s1, sizeof s1, "%ld", start);
    snprintf(s2, sizeof s2, "%ld", stop);
    redisReply *rep;
    st = bq_conn_callv(c, &rep, err, "LRANGE", key, s1, s2, NULL);
    bq_pool_return(r->pool, c);
    if (st != BQ_OK)
        return st;
    st = take_strings(rep, out);
    freeReplyObject(rep);
    return st == BQ_OK ? BQ_OK : bq_err_set(err, st, "LRANGE: out of memory");
}

static bq_status redis_ping(bq_broker *b, double *rtt, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    bq_conn *c;
    bq_status st = borrow(r, &c, err);
    if (st != BQ_OK)
        return st;
    double t0 = bq_now_mono();
    st = bq_conn_callv(c, NULL, err, "PING", NULL);
    *rtt = bq_now_mono() - t0;
    bq_pool_return(r->pool, c);
    return st;
}

static bool redis_pool_stats(bq_broker *b, struct bq_pool_stats *out)
{
    bq_pool_stats(((struct redis_broker *)b)->pool, out);
    return true;
}

static void redis_free(bq_broker *b)
{
    struct redis_broker *r = (struct redis_broker *)b;
    bq_conn_close(r->fetch_conn);
    bq_pool_free(r->pool);
    if (r->wakefd >= 0)
        close(r->wakefd);
    bq_free(r);
}

static const struct bq_broker_ops redis_ops = {
    redis_push, redis_fetch, redis_interrupt, redis_length, redis_dead_letter, redis_range,
    redis_ping, redis_pool_stats, redis_free,
};

bq_status bq_broker_open_redis(const struct bq_broker_config *cfg, bq_broker **out,
                               bq_err *err)
{
    *out = NULL;
    struct bq_url url;
    bq_status st = bq_url_parse(cfg->url, cfg->url_source, &url, err);
    if (st != BQ_OK) {
        bq_url_free(&url);
        return st;
    }
    if (url.tls || url.kind == BQ_URL_SENTINEL || url.kind == BQ_URL_CLUSTER) {
        bq_url_free(&url);
        return bq_err_set(err, BQ_EUNSUPPORTED, "%s: TLS, Sentinel and Cluster URLs are not "
                          "supported by this version of binduq yet",
                          cfg->url_source ? cfg->url_source : "URL");
    }
    struct redis_broker *r = bq_calloc(1, sizeof *r);
    if (r == NULL) {
        bq_url_free(&url);
        return bq_err_set(err, BQ_ENOMEM, "out of memory");
    }
    r->base.ops = &redis_ops;
    r->base.kind = "redis";
    r->fetch_id = -1;
    r->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    bq_url_address(&url, r->base.address, sizeof r->base.address);
    struct bq_conn_opts opts = {cfg->connect_timeout, cfg->command_timeout};
    if (r->wakefd < 0) {
        st = bq_err_set(err, BQ_EIO, "eventfd failed");
    } else {
        st = bq_pool_new(&url, &opts, cfg->max_connections, cfg->pool_timeout, &r->pool, err);
    }
    bq_url_free(&url);
    if (st != BQ_OK) {
        redis_free(&r->base);
        return st;
    }
    *out = &r->base;
    return BQ_OK;
}
