/*
 * redis_feed.c -- the Redis broker's task events: each queue's capped stream {Q}:events
 * (broker.h, "Task events"; docs/events.md).
 *
 * Writing is XADD {Q}:events MAXLEN ~ <feed_max> * e <json array>, pipelined, on a pooled
 * connection (feed_add) or in the fetch round trip ahead of its acknowledgements
 * (bq_redis_append_feed / bq_redis_read_feed, redis_fetch.c), so an event is written no later
 * than the ack of its task. A refused XADD (a key of the wrong type that someone wrote) is
 * logged and counted as written: events are what a reader follows, and a broken stream key
 * must not stop a worker's acknowledgements.
 *
 * Reading is XREAD COUNT n [BLOCK ms] STREAMS {Q}:events <after>. A wait holds its
 * connection, so a reader has one of its own (struct bq_feed_reader), never a pooled one;
 * feed_wake cuts a wait short by shutting the socket down, and the reader reconnects on its
 * next read. Replies are checked shape by shape: whatever someone put in the stream, a
 * reader gets entries with an id and a string, or a clear error.
 */
#include "redis_int.h"

#include "../core/alloc.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

struct bq_feed_reader {
    bq_broker *owner;   /* the node broker whose server the connection talks to */
    bq_conn *conn;      /* owned; NULL until the first wait */
    pthread_mutex_t mu; /* guards fd and woken between the reader and feed_wake */
    int fd;             /* the socket of conn, -1 when none */
    bool woken;
};

/* The XADD of one entry: argv and lens hold 8; key and maxlen are the caller's buffers. */
static void xadd_argv(const char *key, const char *maxlen, struct bq_slice e, const char **argv,
                      size_t *lens)
{
    static const char *const fixed[] = {"XADD", NULL, "MAXLEN", "~", NULL, "*", "e"};
    for (int i = 0; i < 7; i++) {
        argv[i] = fixed[i];
        lens[i] = fixed[i] ? strlen(fixed[i]) : 0;
    }
    argv[1] = key;
    lens[1] = strlen(key);
    argv[4] = maxlen;
    lens[4] = strlen(maxlen);
    argv[7] = e.p;
    lens[7] = e.len;
}

bq_status bq_redis_append_feed(bq_conn *c, long feed_max, const char *queue, struct bq_slice e,
                               bq_err *err)
{
    char key[BQ_KEY_MAX], maxlen[24];
    bq_status st = bq_key_derive_err(queue, "events", key, err);
    if (st != BQ_OK)
        return st;
    snprintf(maxlen, sizeof maxlen, "%ld", feed_max > 0 ? feed_max : BQ_FEED_MAX_DEFAULT);
    const char *argv[8];
    size_t lens[8];
    xadd_argv(key, maxlen, e, argv, lens);
    return bq_conn_append(c, 8, argv, lens, err);
}

bq_status bq_redis_read_feed(bq_conn *c, double deadline, const char *queue, bq_err *err)
{
    redisReply *rep = NULL;
    bq_status st = bq_conn_read(c, &rep, deadline, -1, err);
    if (st != BQ_OK)
        return st;
    /* Logged at most once in 10 s (a broken stream key would refuse every batch), with the
     * count refused since the last line. */
    static _Atomic long long refused;
    static _Atomic double logged_at = -1e9;
    if (rep->type == REDIS_REPLY_ERROR) {
        long long n = atomic_fetch_add(&refused, 1) + 1;
        double now = bq_now_mono(), then = atomic_load(&logged_at);
        if (now - then >= 10.0 && atomic_compare_exchange_strong(&logged_at, &then, now)) {
            atomic_store(&refused, 0);
            char cnt[24];
            snprintf(cnt, sizeof cnt, "%lld", n);
            bq_log(BQ_LOG_WARN, "events_refused", "queue", queue, "error", rep->str, "refused",
                   cnt, "outcome", "the task events of these writes are not in the stream", NULL);
        }
    }
    freeReplyObject(rep);
    return BQ_OK;
}

bq_status bq_redis_feed_add(bq_broker *b, const char *queue, const struct bq_slice *entries,
                            size_t n, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    if (n == 0)
        return BQ_OK;
    bq_conn *c;
    bq_status st = bq_pool_borrow(r->pool, &c, err);
    if (st != BQ_OK)
        return st;
    for (size_t i = 0; st == BQ_OK && i < n; i++)
        st = bq_redis_append_feed(c, b->feed_max, queue, entries[i], err);
    double deadline = bq_now_mono() + r->command_timeout;
    if (st == BQ_OK)
        st = bq_conn_flush(c, deadline, -1, err);
    for (size_t i = 0; st == BQ_OK && i < n; i++)
        st = bq_redis_read_feed(c, deadline, queue, err);
    if (st != BQ_OK)
        bq_conn_mark_broken(c);
    bq_pool_return(r->pool, c);
    return st;
}

/* One entry of an XREAD / XREVRANGE reply: [id, [field, value, ...]]; the value of field "e"
 * is taken ("[]" when there is none: an entry someone else wrote). */
static bq_status take_entry(const redisReply *e, struct bq_feed_out *out, bq_err *err)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING || !bq_feed_id_valid(e->element[0]->str) ||
        (e->element[1]->type != REDIS_REPLY_ARRAY && e->element[1]->type != REDIS_REPLY_NIL))
        return bq_err_set(err, BQ_EPROTO, "events: an entry of an unexpected shape");
    const redisReply *f = e->element[1];
    const char *json = "[]";
    size_t len = 2;
    for (size_t i = 0; f->type == REDIS_REPLY_ARRAY && i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && k->len == 1 && k->str[0] == 'e' &&
            v->type == REDIS_REPLY_STRING) {
            json = v->str;
            len = v->len;
            break;
        }
    }
    if (bq_feed_out_add(out, e->element[0]->str, json, len) != BQ_OK)
        return bq_err_set(err, BQ_ENOMEM, "events: out of memory");
    return BQ_OK;
}

static bq_status take_entries(const redisReply *list, struct bq_feed_out *out, bq_err *err)
{
    if (list->type != REDIS_REPLY_ARRAY)
        return bq_err_set(err, BQ_EPROTO, "events: a reply of an unexpected shape");
    bq_status st = BQ_OK;
    for (size_t i = 0; st == BQ_OK && i < list->elements; i++)
        st = take_entry(list->element[i], out, err);
    return st;
}

/* Opens rd's connection (the owner's server) unless it has a usable one. */
static bq_status reader_conn(struct redis_broker *r, struct bq_feed_reader *rd, bq_err *err)
{
    if (rd->conn != NULL && (bq_conn_broken(rd->conn) || rd->owner != &r->base)) {
        pthread_mutex_lock(&rd->mu);
        rd->fd = -1;
        pthread_mutex_unlock(&rd->mu);
        bq_conn_close(rd->conn);
        rd->conn = NULL;
    }
    if (rd->conn != NULL)
        return BQ_OK;
    rd->owner = &r->base;
    bq_status st = bq_conn_open(bq_pool_url(r->pool), bq_pool_conn_opts(r->pool), &rd->conn, err);
    if (st != BQ_OK)
        return st;
    pthread_mutex_lock(&rd->mu);
    rd->fd = bq_conn_fd(rd->conn);
    pthread_mutex_unlock(&rd->mu);
    return BQ_OK;
}

bq_status bq_redis_feed_read(bq_broker *b, struct bq_feed_reader **rdp, const char *queue,
                             const char *after, size_t count, double timeout,
                             struct bq_feed_out *out, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char key[BQ_KEY_MAX], cnt[24], blk[24];
    bq_status st = bq_key_derive_err(queue, "events", key, err);
    if (st != BQ_OK)
        return st;
    if (!bq_feed_id_valid(after))
        return bq_err_set(err, BQ_EINVAL, "events: '%s' is not an event id (<ms>-<seq>)", after);
    if (*rdp == NULL) {
        struct bq_feed_reader *rd = bq_calloc(1, sizeof *rd);
        if (rd == NULL)
            return bq_err_set(err, BQ_ENOMEM, "events: out of memory");
        pthread_mutex_init(&rd->mu, NULL);
        rd->fd = -1;
        *rdp = rd;
    }
    struct bq_feed_reader *rd = *rdp;
    if ((st = reader_conn(r, rd, err)) != BQ_OK)
        return st;
    pthread_mutex_lock(&rd->mu);
    bool woken = rd->woken;
    rd->woken = false;
    pthread_mutex_unlock(&rd->mu);
    if (woken)
        timeout = 0;
    snprintf(cnt, sizeof cnt, "%zu", count > 0 ? count : 1);
    long long ms = timeout > 0 ? (long long)(timeout * 1000.0) : 0;
    snprintf(blk, sizeof blk, "%lld", ms > 0 ? ms : 1);
    const char *wait[] = {"XREAD", "COUNT", cnt, "BLOCK", blk, "STREAMS", key, after};
    const char *now[] = {"XREAD", "COUNT", cnt, "STREAMS", key, after};
    redisReply *rep = NULL;
    double deadline = bq_now_mono() + (timeout > 0 ? timeout : 0) + r->command_timeout;
    if (timeout > 0)
        st = bq_conn_append(rd->conn, 8, wait, NULL, err);
    else
        st = bq_conn_append(rd->conn, 6, now, NULL, err);
    if (st == BQ_OK)
        st = bq_conn_flush(rd->conn, deadline, -1, err);
    if (st == BQ_OK)
        st = bq_conn_read(rd->conn, &rep, deadline, -1, err);
    if (st != BQ_OK) {
        pthread_mutex_lock(&rd->mu);
        woken = rd->woken;
        rd->woken = false;
        pthread_mutex_unlock(&rd->mu);
        bq_conn_mark_broken(rd->conn);
        if (woken)
            return bq_err_set(err, BQ_EINTR, "events: the wait was cut short");
        return st;
    }
    st = bq_reply_check(rep, "XREAD", err);
    /* nil (nothing came), or [[key, [entry, ...]]] */
    if (st == BQ_OK && rep->type == REDIS_REPLY_ARRAY) {
        if (rep->elements != 1 || rep->element[0]->type != REDIS_REPLY_ARRAY ||
            rep->element[0]->elements != 2)
            st = bq_err_set(err, BQ_EPROTO, "XREAD: a reply of an unexpected shape");
        else
            st = take_entries(rep->element[0]->element[1], out, err);
    }
    freeReplyObject(rep);
    return st;
}

bq_status bq_redis_feed_last(bq_broker *b, const char *queue, char *id, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char key[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "events", key, err);
    if (st != BQ_OK)
        return st;
    const char *argv[] = {"XREVRANGE", key, "+", "-", "COUNT", "1"};
    redisReply *rep = NULL;
    st = bq_redis_call(r, &rep, err, 6, argv, NULL);
    if (st == BQ_OK)
        st = bq_reply_check(rep, "XREVRANGE", err);
    snprintf(id, BQ_FEED_ID_MAX, "0-0");
    if (st == BQ_OK && rep->type == REDIS_REPLY_ARRAY && rep->elements > 0) {
        const redisReply *e = rep->element[0];
        if (e->type == REDIS_REPLY_ARRAY && e->elements >= 1 &&
            e->element[0]->type == REDIS_REPLY_STRING && bq_feed_id_valid(e->element[0]->str))
            snprintf(id, BQ_FEED_ID_MAX, "%s", e->element[0]->str);
        else
            st = bq_err_set(err, BQ_EPROTO, "XREVRANGE: a reply of an unexpected shape");
    }
    if (rep != NULL)
        freeReplyObject(rep);
    return st;
}

void bq_redis_feed_wake(bq_broker *b, struct bq_feed_reader *rd)
{
    (void)b;
    if (rd == NULL)
        return;
    pthread_mutex_lock(&rd->mu);
    rd->woken = true;
    if (rd->fd >= 0)
        shutdown(rd->fd, SHUT_RDWR); /* the blocked read fails at once */
    pthread_mutex_unlock(&rd->mu);
}

void bq_redis_feed_close(bq_broker *b, struct bq_feed_reader *rd)
{
    (void)b;
    if (rd == NULL)
        return;
    bq_conn_close(rd->conn);
    pthread_mutex_destroy(&rd->mu);
    bq_free(rd);
}
