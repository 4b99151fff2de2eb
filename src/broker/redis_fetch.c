/*
 * redis_fetch.c -- the Redis broker's fetch round trip, and what a worker holds.
 *
 * The fetch loop has its own connection, because a blocking pop holds its connection for the
 * whole wait; acknowledgements that are ready when the dispatcher fetches again travel in the
 * same round trip as that fetch. One round trip is one pipeline: write the task events the
 * worker has (XADD, redis_feed.c), renew the worker's lease (heartbeat-N), acknowledge (LREM, or ack-2 for a message with a header), promote due retries
 * (promote-2), take (see "Taking messages" below); then the replies in the same order, and
 * only when the batch has messages with a "#bq" header, one checkseal-1 for their seals.
 *
 * Fetching never polls. At-most-once: BLMPOP (Redis >= 7.0: one round trip takes up to `max`
 * messages as soon as the first arrives, as many as fit the lessee's byte budget) or BRPOP,
 * then the fetch-2 script (a pop with a count, stopped at the byte budget) when a batch is
 * wanted without waiting. At-least-once: BLMOVE into the worker's in-flight list when
 * waiting, fetch-2 leasing what it takes (the pop and the LPUSH atomic) when taking a batch;
 * either way the message is leased in the same atomic step that takes it. BRPOP, RPOP,
 * BLMOVE ... RIGHT are BLPOP, LPOP, BLMOVE ... LEFT for a queue whose producers RPUSH.
 *
 * Interrupting a blocked fetch (shutdown): bq_broker_interrupt wakes the fetching thread
 * through an eventfd; that thread sends CLIENT UNBLOCK for its own connection over a pooled
 * one and then reads the reply of the unblocked pop, so a message taken at that very moment
 * is still delivered, not lost.
 *
 * This is the hot path (one round trip per batch of tasks): nothing here allocates per round
 * trip except the messages themselves, and its helpers stay in this file or inline.
 */
#include "redis_int.h"

#include "../net/bulkcap.h"

#include "../core/alloc.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/log.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    bq_redis_load_scripts(r->fetch_conn, r->command_timeout);
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
    char id[24];
    snprintf(id, sizeof id, "%lld", r->fetch_id);
    const char *argv[] = {"CLIENT", "UNBLOCK", id};
    bq_redis_call(r, NULL, NULL, 3, argv, NULL);
}

/* Reads the reply of a blocking pop, which an interrupt may cut short: then the pop is
 * unblocked (CLIENT UNBLOCK) and its reply read anyway: nil if unblocked, the messages if it
 * won the race; without a client id (ACL forbids CLIENT) this waits out the blocking
 * timeout. If the master changed meanwhile (Sentinel), the connection is to the old one: it
 * is dropped rather than a client id unblocked on the new server. */
static bq_status read_blocked(struct redis_broker *r, bq_conn *c, redisReply **rep,
                              double deadline, int wakefd, double cut, bq_err *err)
{
    bq_status st = BQ_OK;
    if (cut > 0) {
        /* A wait that must end on time (bq_fetch_req.exact): Redis ends a blocking wait only
         * at its next cron tick (up to 100 ms late at hz 10), so it is cut short here, as
         * an interrupt cuts it. */
        st = bq_conn_await(c, cut, wakefd);
        if (st == BQ_ETIMEDOUT) {
            unblock_fetch(r);
            return bq_conn_read(c, rep, deadline, -1, err);
        }
        if (st == BQ_EIO)
            return bq_err_set(err, BQ_EIO, "%s: poll failed", bq_conn_address(c));
    }
    if (st == BQ_OK)
        st = bq_conn_read(c, rep, deadline, wakefd, err);
    if (st != BQ_EINTR)
        return st;
    take_wakeup(r);
    if (bq_conn_broken(c))
        return bq_err_set(err, BQ_EIO, "%s: the master changed", bq_conn_address(c));
    unblock_fetch(r);
    return bq_conn_read(c, rep, deadline, -1, err);
}

/* ---- Replies --------------------------------------------------------------------------------- */

/* Adds one message of a reply: a string, or the marker the fetch connection's bulk cap put
 * in place of an oversized one (its first bytes, with `oversize` its length). Anything else
 * is not a message and is skipped. */
static bq_status take_one(const redisReply *e, struct bq_batch *out, int q)
{
    if (e->type == REDIS_REPLY_STRING)
        return bq_batch_add_q(out, e->str, e->len, q);
    unsigned long long size;
    unsigned char prefix[BQ_BULKCAP_KEEP];
    size_t plen;
    if (e->type != REDIS_REPLY_ERROR || !bq_bulkcap_marker(e->str, e->len, &size, prefix, &plen))
        return BQ_OK;
    bq_status st = bq_batch_add_q(out, (const char *)prefix, plen, q);
    if (st == BQ_OK)
        out->msgs[out->n - 1].oversize = (size_t)size;
    return st;
}

static bool is_marker(const redisReply *r)
{
    unsigned long long size;
    unsigned char prefix[BQ_BULKCAP_KEEP];
    size_t plen;
    return r != NULL && r->type == REDIS_REPLY_ERROR &&
           bq_bulkcap_marker(r->str, r->len, &size, prefix, &plen);
}

/* Adds the messages of an array reply (or a single one) to out, from queue q. */
bq_status bq_redis_take_strings(const redisReply *rep, struct bq_batch *out, int q)
{
    if (rep->type != REDIS_REPLY_ARRAY)
        return take_one(rep, out, q);
    for (size_t i = 0; i < rep->elements; i++) {
        if (take_one(rep->element[i], out, q) != BQ_OK)
            return BQ_ENOMEM;
    }
    return BQ_OK;
}

/* Adds the pairs of a flat {i, string, i, string, ...} reply (1-based queue indexes). */
bq_status bq_redis_take_pairs(const redisReply *rep, struct bq_batch *out)
{
    if (rep->type != REDIS_REPLY_ARRAY)
        return BQ_OK;
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        const redisReply *qi = rep->element[i], *m = rep->element[i + 1];
        if (qi->type != REDIS_REPLY_INTEGER)
            continue;
        if (take_one(m, out, (int)qi->integer - 1) != BQ_OK)
            return BQ_ENOMEM;
    }
    return BQ_OK;
}

/* Reads promote-2's reply {moved, next_due_in_ms}: seconds until the next one, -1: none. */
void bq_redis_promote_reply(const redisReply *rep, size_t *moved, double *next_due)
{
    *moved = 0;
    *next_due = -1;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2)
        return;
    *moved = (size_t)rep->element[0]->integer;
    long long wait = rep->element[1]->integer;
    *next_due = wait < 0 ? -1 : (double)wait / 1000.0;
}

/* Takes the reply of fetchm-N: {credits, {i, message, ...}}. */
static bq_status take_fetchm(struct redis_broker *r, int nq, const redisReply *rep,
                             struct bq_batch *out)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2)
        return BQ_OK;
    const redisReply *cr = rep->element[0];
    for (size_t i = 0; cr->type == REDIS_REPLY_ARRAY && i < cr->elements && (int)i < nq; i++)
        r->credit[i] = (long)cr->element[i]->integer;
    return bq_redis_take_pairs(rep->element[1], out);
}

/* ---- Acknowledgements ------------------------------------------------------------------------ */

/* Queues one LREM per message on its queue's in-flight list (acknowledgements). A fetch
 * pushes messages at the list's head, so the oldest, which finish first, are at its tail:
 * LREM with count -1 searches from there and finds them at once (with 1 it walked the whole
 * list, a cost that grew with the batch). A message with a "#bq" header is acknowledged by
 * ack-2 instead, which releases its seal too (at-most-once: only that). ack-2 goes as EVAL,
 * with its source: such messages are rare, and a NOSCRIPT in the middle of the pipeline
 * (after a restart) would leave the acknowledgement undone. */
static bq_status append_acks(bq_conn *c, const struct bq_lessee *who, const struct bq_msg *msgs,
                             size_t n, bq_err *err)
{
    bq_status st = BQ_OK;
    char wip[BQ_KEY_MAX], seals[BQ_KEY_MAX];
    size_t wlen = 0;
    int wq = -1; /* the queue wip names: acks come in runs of one queue */
    bool lease = who->delivery == BQ_AT_LEAST_ONCE;
    for (size_t i = 0; i < n && st == BQ_OK; i++) {
        if (msgs[i].q != wq) {
            if ((st = bq_redis_wip_key(who, msgs[i].q, wip, err)) != BQ_OK)
                break;
            wq = msgs[i].q;
            wlen = strlen(wip);
        }
        if (bq_msg_has_header(&msgs[i])) {
            const char *keys[] = {wip, seals};
            const char *args[] = {msgs[i].data, lease ? "1" : "0"};
            size_t lens[] = {msgs[i].len, 1};
            st = bq_key_derive_err(bq_redis_queue_of(who, msgs[i].q), "seals", seals, err);
            if (st == BQ_OK)
                st = bq_redis_append_script(c, S_ACK, true, 2, keys, 2, args, lens, err);
            continue;
        }
        if (!lease)
            continue; /* nothing to acknowledge; read_acks counts it */
        const char *argv[4] = {"LREM", wip, "-1", msgs[i].data};
        size_t lens[4] = {4, wlen, 2, msgs[i].len};
        st = bq_conn_append(c, 4, argv, lens, err);
    }
    return st;
}

/* Reads the replies to append_acks; counts the messages whose lease was still held. */
static bq_status read_acks(bq_conn *c, const struct bq_lessee *who, const struct bq_msg *msgs,
                           size_t n, double deadline, size_t *acked, bq_err *err)
{
    bq_status st = BQ_OK;
    bool lease = who->delivery == BQ_AT_LEAST_ONCE;
    for (size_t i = 0; i < n && st == BQ_OK; i++) {
        bool header = bq_msg_has_header(&msgs[i]);
        if (!header && !lease) {
            if (acked)
                (*acked)++;
            continue;
        }
        redisReply *rep;
        st = bq_conn_read(c, &rep, deadline, -1, err);
        if (st != BQ_OK)
            break;
        st = bq_reply_check(rep, header ? "ack-2" : "LREM", err);
        if (st == BQ_OK && rep->type == REDIS_REPLY_INTEGER && rep->integer > 0 && acked)
            (*acked)++;
        freeReplyObject(rep);
    }
    return st;
}

/* ---- Keys, script replies, seals ------------------------------------------------------------- */

bq_status bq_redis_build_keys(const struct redis_broker *r, const struct bq_lessee *who,
                              struct fetch_keys *k, bq_err *err)
{
    if (who->nqueues < 1 || who->nqueues > MAX_QUEUES)
        return bq_err_set(err, BQ_EINVAL, "a worker fetches from 1 to %d queues", MAX_QUEUES);
    for (int i = 0; i < who->nqueues; i++) {
        bq_status st = bq_redis_wip_key(who, i, k->wip[i], err);
        if (st == BQ_OK)
            st = bq_key_derive_err(who->queues[i], "workers", k->workers[i], err);
        if (st == BQ_OK)
            st = bq_key_derive_err(who->queues[i], "delayed", k->delayed[i], err);
        if (st == BQ_OK)
            st = bq_key_derive_err(who->queues[i], "bell", k->bell[i], err);
        if (st != BQ_OK)
            return st;
        k->hb[i] = k->workers[i];
        k->fm[2 * i] = who->queues[i];
        k->fm[2 * i + 1] = k->wip[i];
        k->bells[1 + i] = k->bell[i];
        k->fronts[i] = *bq_broker_front(&r->base, who->queues[i]);
        k->fronts[i + 1] = '\0';
    }
    return BQ_OK;
}

/* Reads the reply of a pipelined script. NOSCRIPT is not an error here: the script is left
 * undone for this round (*out stays NULL) and *reload asks for the scripts to be loaded
 * once the pipeline has been read. */
static bq_status read_script_reply(bq_conn *c, double deadline, const char *name,
                                   redisReply **out, bool *reload, bq_err *err)
{
    bq_status st = bq_conn_read(c, out, deadline, -1, err);
    if (st == BQ_OK && bq_redis_is_noscript(*out)) {
        freeReplyObject(*out);
        *out = NULL;
        *reload = true;
        return BQ_OK;
    }
    if (st == BQ_OK)
        st = bq_reply_check(*out, name, err);
    if (st != BQ_OK && *out != NULL) {
        freeReplyObject(*out);
        *out = NULL;
    }
    return st;
}

/* Marks which of out->msgs[first..] with a "#bq" header binduq sealed (broker.h): one
 * checkseal-1 per queue that has such messages, none in the common case. */
static bq_status check_seals(struct redis_broker *r, bq_conn *c, const struct bq_lessee *who,
                             struct bq_batch *out, size_t first, bq_err *err)
{
    bq_status st = BQ_OK;
    for (int q = 0; q < who->nqueues && st == BQ_OK; q++) {
        size_t n = 0;
        for (size_t i = first; i < out->n; i++)
            n += out->msgs[i].q == q && bq_msg_has_header(&out->msgs[i]);
        if (n == 0)
            continue;
        const char **args = bq_calloc(n, sizeof *args);
        size_t *lens = bq_calloc(n, sizeof *lens), k = 0;
        char seals[BQ_KEY_MAX];
        if (args == NULL || lens == NULL)
            st = bq_err_set(err, BQ_ENOMEM, "checkseal-1: out of memory");
        for (size_t i = first; st == BQ_OK && i < out->n; i++) {
            if (out->msgs[i].q == q && bq_msg_has_header(&out->msgs[i])) {
                args[k] = out->msgs[i].data;
                lens[k++] = out->msgs[i].len;
            }
        }
        redisReply *rep = NULL;
        if (st == BQ_OK)
            st = bq_key_derive_err(who->queues[q], "seals", seals, err);
        const char *keys[] = {seals};
        if (st == BQ_OK)
            st = bq_redis_run_script(c, S_CHECKSEAL, 1, keys, (int)n, args, lens,
                                     r->command_timeout, &rep, err);
        if (st == BQ_OK && (rep->type != REDIS_REPLY_ARRAY || rep->elements != n))
            st = bq_err_set(err, BQ_EPROTO, "checkseal-1: unexpected reply");
        k = 0;
        for (size_t i = first; st == BQ_OK && i < out->n; i++) {
            if (out->msgs[i].q == q && bq_msg_has_header(&out->msgs[i])) {
                const redisReply *e = rep->element[k++];
                out->msgs[i].sealed = e->type == REDIS_REPLY_INTEGER && e->integer == 1;
            }
        }
        if (rep != NULL)
            freeReplyObject(rep);
        bq_free(args);
        bq_free(lens);
    }
    return st;
}

/* ---- Taking messages: the round trip's last step ------------------------------------------------
 * How a round trip takes messages depends on how many queues the worker fetches from,
 * whether it may wait, and the delivery mode. Each way is a row of `takes`: what is sent,
 * whether it waits, and how its reply brings the messages. take_mode picks the row,
 * append_take sends it in the pipeline and read_take reads its reply. */
enum take_mode {
    T_FETCHM = 0, /* several queues that had work: fetchm-N takes by priority, no wait */
    T_BELLS,      /* several queues that had none: fetchm-N, then BRPOP on their bells */
    T_FETCH,      /* one queue, no wait: fetch-2 takes a batch (leasing it, at-least-once) */
    T_BLMOVE,     /* one queue, waiting, at-least-once: BLMOVE into the in-flight list */
    T_BLMPOP,     /* one queue, waiting, at-most-once, a batch on Redis >= 7: BLMPOP */
    T_BPOP,       /* one queue, waiting, at-most-once: BRPOP (BLPOP) */
};

/* What the reply that brings the messages looks like. */
enum take_shape {
    TAKE_LIST = 0, /* nil, one message or an array of them (fetch-2, BLMOVE) */
    TAKE_KEYED,    /* nil, [key, message] (BRPOP) or [key, [message, ...]] (BLMPOP) */
    TAKE_FETCHM,   /* {credits, {i, message, ...}} (fetchm-N: take_fetchm) */
};

static const struct take {
    const char *name[2];   /* the command or script, in messages: [0] for a queue whose
                            * front is its right (LPUSH order), [1] its left (RPUSH) */
    enum script_id script; /* a script (EVALSHA): NOSCRIPT takes nothing this round and has
                            * the scripts loaded; S_COUNT: a command */
    bool waits;            /* blocks up to the timeout; an interrupt cuts it short */
    bool bells;            /* followed by BRPOP on the queues' bells, which waits */
    enum take_shape shape;
} takes[] = {
    [T_FETCHM] = {{"fetchm-N", "fetchm-N"}, S_FETCHM, false, false, TAKE_FETCHM},
    [T_BELLS] = {{"fetchm-N", "fetchm-N"}, S_FETCHM, false, true, TAKE_FETCHM},
    [T_FETCH] = {{"fetch-2", "fetch-2"}, S_FETCH, false, false, TAKE_LIST},
    [T_BLMOVE] = {{"BLMOVE", "BLMOVE"}, S_COUNT, true, false, TAKE_LIST},
    [T_BLMPOP] = {{"BLMPOP", "BLMPOP"}, S_COUNT, true, false, TAKE_KEYED},
    [T_BPOP] = {{"BRPOP", "BLPOP"}, S_COUNT, true, false, TAKE_KEYED},
};

/* The arguments of one round trip, formatted once (on the stack). */
struct fetch_args {
    char lease_ms[32], count[24], tmo[32], bytes[24], blcount[24];
    char wts[MAX_QUEUES][16], creds[MAX_QUEUES][24];
    const char *fm[4 + 2 * MAX_QUEUES]; /* fetchm-N's ARGV */
    int nfm;
    size_t blmax; /* what BLMPOP may take */
};

static void format_args(const struct redis_broker *r, const struct bq_lessee *who,
                        const struct bq_fetch_req *req, double timeout,
                        const struct fetch_keys *k, struct fetch_args *a)
{
    snprintf(a->lease_ms, sizeof a->lease_ms, "%lld", (long long)(req->lease * 1000.0));
    snprintf(a->count, sizeof a->count, "%zu", req->max);
    snprintf(a->tmo, sizeof a->tmo, "%.3f", timeout);
    snprintf(a->bytes, sizeof a->bytes, "%zu", who->max_bytes);
    /* BLMPOP cannot stop at a number of bytes: it takes only as many as fit even if each
     * is as large as a message may be. */
    a->blmax = req->max;
    if (who->max_bytes > 0 && who->max_size > 0 && a->blmax > who->max_bytes / who->max_size)
        a->blmax = who->max_bytes / who->max_size > 0 ? who->max_bytes / who->max_size : 1;
    snprintf(a->blcount, sizeof a->blcount, "%zu", a->blmax);
    a->fm[0] = a->count;
    a->fm[1] = who->delivery == BQ_AT_LEAST_ONCE ? "1" : "0";
    a->fm[2] = k->fronts;
    a->fm[3] = a->bytes;
    a->nfm = 4;
    int nq = who->nqueues;
    for (int i = 0; who->weights != NULL && i < nq; i++) {
        snprintf(a->wts[i], sizeof a->wts[i], "%d", who->weights[i]);
        a->fm[a->nfm++] = a->wts[i];
    }
    for (int i = 0; who->weights != NULL && i < nq; i++) {
        snprintf(a->creds[i], sizeof a->creds[i], "%ld", r->credit[i]);
        a->fm[a->nfm++] = a->creds[i];
    }
}

/* Several queues cannot be waited on with one move, so: while they have work, take by
 * priority without waiting (fetchm-N); once they had none, take what is there and wait on
 * their bells in the same round trip. One queue: a blocking move or pop when waiting. */
static enum take_mode take_mode(const struct redis_broker *r, const struct bq_lessee *who,
                                double timeout, size_t blmax)
{
    if (who->nqueues > 1)
        return timeout > 0 ? T_BELLS : T_FETCHM;
    if (timeout <= 0)
        return T_FETCH;
    if (who->delivery == BQ_AT_LEAST_ONCE)
        return T_BLMOVE;
    return r->has_blmpop && blmax > 1 ? T_BLMPOP : T_BPOP;
}

/* Queues the commands of row m. */
static bq_status append_take(bq_conn *c, enum take_mode m, const struct bq_lessee *who,
                             struct fetch_keys *k, const struct fetch_args *a, bq_err *err)
{
    const struct take *t = &takes[m];
    int nq = who->nqueues;
    bool left = k->fronts[0] == 'L';
    const char *cmd = t->name[left];
    bq_status st = BQ_OK;
    switch (m) {
    case T_FETCHM:
    case T_BELLS:
        st = bq_redis_append_script(c, t->script, false, 2 * nq, k->fm, a->nfm, a->fm, NULL, err);
        if (st == BQ_OK && t->bells) {
            k->bells[0] = "BRPOP";
            k->bells[nq + 1] = a->tmo;
            st = bq_conn_append(c, nq + 2, k->bells, NULL, err);
        }
        break;
    case T_FETCH: {
        const char *keys[] = {who->queues[0], k->wip[0]};
        const char *args[] = {a->count, left ? "L" : "R", a->bytes,
                              who->delivery == BQ_AT_LEAST_ONCE ? "1" : "0"};
        st = bq_redis_append_script(c, t->script, false, 2, keys, 4, args, NULL, err);
        break;
    }
    case T_BLMOVE: {
        const char *argv[] = {cmd, who->queues[0], k->wip[0], left ? "LEFT" : "RIGHT", "LEFT",
                              a->tmo};
        st = bq_conn_append(c, 6, argv, NULL, err);
        break;
    }
    case T_BLMPOP: {
        const char *argv[] = {cmd, a->tmo, "1", who->queues[0], left ? "LEFT" : "RIGHT",
                              "COUNT", a->blcount};
        st = bq_conn_append(c, 7, argv, NULL, err);
        break;
    }
    case T_BPOP: {
        const char *argv[] = {cmd, who->queues[0], a->tmo};
        st = bq_conn_append(c, 3, argv, NULL, err);
        break;
    }
    }
    return st;
}

/* Adds the messages of a reply of the given shape to out. */
static bq_status take_reply(struct redis_broker *r, enum take_shape shape, int nq,
                            const redisReply *rep, const char *name, struct bq_batch *out,
                            bq_err *err)
{
    bq_status st = BQ_OK;
    switch (shape) {
    case TAKE_LIST: st = bq_redis_take_strings(rep, out, 0); break;
    case TAKE_KEYED:
        if (rep->type != REDIS_REPLY_ARRAY)
            st = bq_redis_take_strings(rep, out, 0); /* nil, or an oversized one's marker */
        else if (rep->elements == 2)
            st = bq_redis_take_strings(rep->element[1], out, 0);
        break;
    case TAKE_FETCHM: st = take_fetchm(r, nq, rep, out); break;
    }
    return st == BQ_ENOMEM ? bq_err_set(err, st, "%s: out of memory", name) : st;
}

/* Reads the replies of row m and adds the messages to out. A NOSCRIPT reply takes nothing
 * this round and sets *reload. After the bells (T_BELLS): a bell that rang while nothing was
 * taken means work came meanwhile, so fetchm-N is asked again at once (a round trip more,
 * only then). */
static bq_status read_take(struct redis_broker *r, bq_conn *c, enum take_mode m,
                           const struct bq_lessee *who, const struct fetch_keys *k,
                           const struct fetch_args *a, double deadline, double cut,
                           struct bq_batch *out, bool *reload, bool *recheck, bq_err *err)
{
    const struct take *t = &takes[m];
    const char *name = t->name[k->fronts[0] == 'L'];
    size_t before = out->n;
    redisReply *rep = NULL;
    bq_status st = read_blocked(r, c, &rep, deadline, t->waits ? r->wakefd : -1,
                                t->waits ? cut : 0, err);
    if (st == BQ_OK && t->script != S_COUNT && bq_redis_is_noscript(rep)) {
        freeReplyObject(rep); /* nothing taken this round */
        rep = NULL;
        *reload = true;
    }
    /* A message over the bulk cap arrives as an error reply, its marker (BLMOVE's). */
    if (st == BQ_OK && rep != NULL &&
        (is_marker(rep) || (st = bq_reply_check(rep, name, err)) == BQ_OK))
        st = take_reply(r, t->shape, who->nqueues, rep, name, out, err);
    if (rep != NULL)
        freeReplyObject(rep);
    if (st != BQ_OK || !t->bells)
        return st;
    /* fetchm-N took messages that rang no bell (a promotion in this round trip moved them
     * into a queue): the wait on the bells sent after it is cut at once. */
    if (out->n != before)
        cut = bq_now_mono();
    rep = NULL;
    st = read_blocked(r, c, &rep, deadline, r->wakefd, cut, err);
    if (st == BQ_OK)
        st = bq_reply_check(rep, "BRPOP", err);
    bool rang = st == BQ_OK && rep->type == REDIS_REPLY_ARRAY;
    if (rep != NULL)
        freeReplyObject(rep);
    if (!rang || out->n != before)
        return st;
    rep = NULL;
    int nq = who->nqueues;
    st = bq_redis_run_script(c, S_FETCHM, 2 * nq, k->fm, a->nfm, a->fm, NULL, r->command_timeout,
                             &rep, err);
    if (st == BQ_OK)
        st = take_reply(r, TAKE_FETCHM, nq, rep, name, out, err);
    if (rep != NULL)
        freeReplyObject(rep);
    /* Rung with nothing to take: maybe delay-N, whose due time the worker may not know
     * (or another worker was quicker). */
    if (st == BQ_OK && out->n == before)
        *recheck = true;
    return st;
}

/* ---- The round trip -------------------------------------------------------------------------- */

/* The fetcher's keys for `who`, built again only when the lessee changed: they are ~32 KB
 * of names, too many to zero and format on every round trip. */
static bq_status lessee_keys(struct redis_broker *r, const struct bq_lessee *who,
                             struct fetch_keys **out, bq_err *err)
{
    if (r->fk == NULL && (r->fk = bq_calloc(1, sizeof *r->fk)) == NULL)
        return bq_err_set(err, BQ_ENOMEM, "fetch: out of memory");
    *out = r->fk;
    char sig[sizeof r->fk_sig];
    int n = snprintf(sig, sizeof sig, "%s", who->worker ? who->worker : "-");
    for (int i = 0; i < who->nqueues && n > 0 && (size_t)n < sizeof sig; i++)
        n += snprintf(sig + n, sizeof sig - (size_t)n, "\n%s", who->queues[i]);
    if (n > 0 && (size_t)n < sizeof sig && strcmp(sig, r->fk_sig) == 0)
        return BQ_OK;
    r->fk_sig[0] = '\0';
    bq_status st = bq_redis_build_keys(r, who, r->fk, err);
    if (st == BQ_OK && n > 0 && (size_t)n < sizeof sig)
        memcpy(r->fk_sig, sig, (size_t)n + 1);
    return st;
}

bq_status bq_redis_fetch(bq_broker *b, const struct bq_lessee *who,
                         const struct bq_fetch_req *req, struct bq_fetch_res *res,
                         struct bq_batch *out, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    bool lease = who->delivery == BQ_AT_LEAST_ONCE;
    int nq = who->nqueues;
    res->acked = res->promoted = 0;
    res->next_due = -1;
    res->renewed = false;
    res->recheck = false;
    size_t first = out->n;
    double timeout = req->timeout;
    /* An interrupt that came while we were not waiting cuts this wait short: take what is
     * there without blocking. */
    if (take_wakeup(r))
        timeout = 0;
    double cut = req->exact && timeout > 0 ? bq_now_mono() + timeout : 0;
    struct fetch_keys *k = NULL;
    bq_status st = lessee_keys(r, who, &k, err);
    if (r->fetch_conn != NULL && bq_conn_broken(r->fetch_conn)) {
        bq_conn_close(r->fetch_conn);
        r->fetch_conn = NULL;
    }
    bool fresh = r->fetch_conn == NULL;
    if (st == BQ_OK && fresh)
        st = open_fetch_conn(r, err);
    if (st != BQ_OK)
        return st;
    bq_conn *c = r->fetch_conn;
    if (fresh || who->max_size != r->fetch_cap) { /* see "Oversized messages" in broker.h */
        bq_conn_cap_bulk(c, who->max_size);
        r->fetch_cap = who->max_size;
    }
    struct fetch_args a;
    format_args(r, who, req, timeout, k, &a);
    bool want = req->max > 0;
    enum take_mode m = take_mode(r, who, timeout, a.blmax);

    /* 0. the task events, ahead of the acks of their tasks */
    for (size_t i = 0; st == BQ_OK && i < req->nfeed; i++)
        st = bq_redis_append_feed(c, b->feed_max, bq_redis_queue_of(who, req->feed_q[i]),
                                  req->feed[i], err);
    /* 1. renew the lease on every queue */
    bool beat = lease && req->lease > 0;
    const char *hb_args[] = {who->worker, a.lease_ms};
    if (st == BQ_OK && beat)
        st = bq_redis_append_script(c, S_HEARTBEAT, false, nq, k->hb, 2, hb_args, NULL, err);
    /* 2. acknowledge */
    size_t nacks = lease ? req->nacks : 0;
    if (st == BQ_OK && nacks > 0)
        st = append_acks(c, who, req->acks, nacks, err);
    /* 3. promote due retries, queue by queue */
    for (int i = 0; st == BQ_OK && req->promote && i < nq; i++) {
        const char *pr_keys[] = {k->delayed[i], who->queues[i]};
        const char *pr_args[] = {"1000", k->fronts[i] == 'L' ? "L" : "R"};
        st = bq_redis_append_script(c, S_PROMOTE, false, 2, pr_keys, 2, pr_args, NULL, err);
    }
    /* 4. take (see `takes`) */
    if (st == BQ_OK && want)
        st = append_take(c, m, who, k, &a, err);
    double sent = bq_now_mono();
    double deadline = sent + (timeout > 0 ? timeout : 0) + r->command_timeout;
    if (st == BQ_OK)
        st = bq_conn_flush(c, deadline, -1, err);

    /* The replies, in the same order. */
    redisReply *rep = NULL;
    bool reload = false;
    for (size_t i = 0; st == BQ_OK && i < req->nfeed; i++)
        st = bq_redis_read_feed(c, deadline, bq_redis_queue_of(who, req->feed_q[i]), err);
    if (st == BQ_OK && beat) {
        st = read_script_reply(c, deadline, "heartbeat-N", &rep, &reload, err);
        if (st == BQ_OK && rep != NULL) {
            res->renewed = true;
            if (bq_redis_take_pairs(rep, &res->dead) != BQ_OK)
                st = bq_err_set(err, BQ_ENOMEM, "heartbeat: out of memory");
            freeReplyObject(rep);
            rep = NULL;
        }
    }
    if (st == BQ_OK && nacks > 0)
        st = read_acks(c, who, req->acks, nacks, deadline, &res->acked, err);
    for (int i = 0; st == BQ_OK && req->promote && i < nq; i++) {
        st = read_script_reply(c, deadline, "promote-2", &rep, &reload, err);
        if (st == BQ_OK && rep == NULL) {
            res->next_due = 0; /* not promoted this round: try again at once */
        } else if (st == BQ_OK) {
            size_t moved;
            double due;
            bq_redis_promote_reply(rep, &moved, &due);
            res->promoted += moved;
            if (due >= 0 && (res->next_due < 0 || due < res->next_due))
                res->next_due = due;
            freeReplyObject(rep);
            rep = NULL;
        }
    }
    /* The wait for messages, already sent, must not outlast the earliest due time promote-2
     * just reported (a delayed operation or a retry): it is cut then, so that operation is
     * promoted on time by the next round trip. */
    if (st == BQ_OK && want && timeout > 0 && res->next_due >= 0) {
        double due = bq_now_mono() + res->next_due;
        if (due < sent + timeout && (cut == 0 || due < cut))
            cut = due;
    }
    if (st == BQ_OK && want)
        st = read_take(r, c, m, who, k, &a, deadline, cut, out, &reload, &res->recheck, err);
    /* 5. the seals of messages with a "#bq" header (rare: retries, recoveries, requeues).
     * If they cannot be read, leased messages are dropped from this batch: the worker's
     * orphan check hands them back (still sealed). At-most-once, they were popped: they stay,
     * unsealed, and are set aside rather than lost. */
    if (st == BQ_OK && out->n > first && (st = check_seals(r, c, who, out, first, err)) != BQ_OK &&
        lease) {
        for (size_t i = first; i < out->n; i++)
            bq_free(out->msgs[i].data);
        out->n = first;
    }
    if (st == BQ_OK && reload) {
        bq_log(BQ_LOG_WARN, "scripts_reloaded", "queue", who->queues[0], "worker", who->worker,
               "reason", "the server's script cache was empty (restarted or flushed)", NULL);
        bq_redis_load_scripts(c, r->command_timeout);
    }
    /* A failure in the middle of the pipeline (an error reply such as LOADING after a
     * restart, a reply over the limits) leaves later replies unread: the next round trip
     * would read them as its own. The position in the stream is unknown, so the connection
     * is not used again. */
    if (st != BQ_OK)
        bq_conn_mark_broken(c);
    if (bq_conn_broken(c)) {
        bq_conn_close(c);
        r->fetch_conn = NULL;
    }
    return st;
}

/* ---- Outside the round trip: interrupt, acknowledge, what is held --------------------------- */

void bq_redis_interrupt(bq_broker *b)
{
    struct redis_broker *r = (struct redis_broker *)b;
    uint64_t one = 1;
    ssize_t n = write(r->wakefd, &one, sizeof one);
    (void)n;
}

bq_status bq_redis_ack(bq_broker *b, const struct bq_lessee *who, const struct bq_msg *msgs,
                       size_t n, size_t *acked, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    *acked = 0;
    bool any = who->delivery == BQ_AT_LEAST_ONCE; /* at-most-once: only seals to release */
    for (size_t i = 0; i < n && !any; i++)
        any = bq_msg_has_header(&msgs[i]);
    if (!any) {
        *acked = n;
        return BQ_OK;
    }
    bq_conn *c;
    bq_status st = bq_pool_borrow(r->pool, &c, err);
    if (st != BQ_OK)
        return st;
    double deadline = bq_now_mono() + r->command_timeout;
    st = append_acks(c, who, msgs, n, err);
    if (st == BQ_OK)
        st = bq_conn_flush(c, deadline, -1, err);
    if (st == BQ_OK)
        st = read_acks(c, who, msgs, n, deadline, acked, err);
    if (st != BQ_OK)
        bq_conn_mark_broken(c); /* replies may be left unread (see bq_redis_fetch) */
    bq_pool_return(r->pool, c);
    return st;
}

bq_status bq_redis_held(bq_broker *b, const struct bq_lessee *who, struct bq_batch *out,
                        bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    bq_conn *c;
    bq_status st = bq_pool_borrow(r->pool, &c, err);
    if (st != BQ_OK)
        return st;
    for (int q = 0; st == BQ_OK && q < who->nqueues; q++) {
        char wip[BQ_KEY_MAX];
        redisReply *rep = NULL;
        if ((st = bq_redis_wip_key(who, q, wip, err)) != BQ_OK)
            break;
        st = bq_conn_callv(c, &rep, err, "LRANGE", wip, "0", "-1", NULL);
        if (st == BQ_OK)
            st = bq_redis_take_strings(rep, out, q);
        if (rep != NULL)
            freeReplyObject(rep);
    }
    bq_pool_return(r->pool, c);
    return st;
}
