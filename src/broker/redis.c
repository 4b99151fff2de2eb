/*
 * redis.c -- the Redis broker.
 *
 * Short commands (push, acks, retries, dead-letters, heartbeats) borrow from a bounded pool.
 * The fetch loop has its own connection, because a blocking pop holds its connection for the
 * whole wait; acknowledgements that are ready when the dispatcher fetches again travel in the
 * same round trip as that fetch.
 *
 * Fetching never polls. At-most-once: BLMPOP (Redis >= 7.0: one round trip takes up to `max`
 * messages as soon as the first arrives, as many as fit the lessee's byte budget) or BRPOP,
 * then the fetch-2 script (a pop with a count, stopped at the byte budget) when a batch is
 * wanted without waiting. At-least-once: BLMOVE into the worker's in-flight list when
 * waiting, fetch-2 leasing what it takes (the pop and the LPUSH atomic) when taking a batch;
 * either way the message is leased in the same atomic step that takes it. BRPOP, RPOP,
 * BLMOVE ... RIGHT are BLPOP, LPOP, BLMOVE ... LEFT for a queue whose producers RPUSH.
 *
 * Multi-step changes are server-side scripts (one file each under lua/binduq/redis/, embedded by
 * embed.lua): EVALSHA, falling back to EVAL (which also loads the script) on NOSCRIPT.
 *
 * Interrupting a blocked fetch (shutdown): bq_broker_interrupt wakes the fetching thread
 * through an eventfd; that thread sends CLIENT UNBLOCK for its own connection over a pooled
 * one and then reads the reply of the unblocked pop, so a message taken at that very moment
 * is still delivered, not lost.
 */
#include "broker.h"
#include "keys.h"
#include "scripts.h"

#include "../net/bulkcap.h"

#include "../core/alloc.h"
#include "../core/backoff.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/log.h"
#include "../core/rand.h"


#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* Arguments per LPUSH when pushing a large batch: one command per chunk, all pipelined. */
#define PUSH_CHUNK 1000
#define MAX_QUEUES 16 /* queues one worker fetches from */

/* ---- Scripts ------------------------------------------------------------------------------- */

enum script_id {
    S_FETCH = 0,
    S_RETRY,
    S_BURY,
    S_PROMOTE,
    S_HEARTBEAT,
    S_REAP,
    S_HANDBACK,
    S_UNREGISTER,
    S_REQUEUE,
    S_FETCHM,
    S_ENQUEUE,
    S_RATELIMIT,
    S_CHECKSEAL,
    S_ACK,
    S_BURYBIG,
    S_CONTROLS,
    S_COUNT,
};

/* Each script's source and SHA1 (the name Redis caches it by), both from scripts.h. */
#define SCRIPT(id, name, var) [id] = {name, bq_script_##var, bq_script_##var##_sha}
static const struct {
    const char *name;
    const char *src;
    const char *sha;
} scripts[S_COUNT] = {
    SCRIPT(S_FETCH, "fetch-2", fetch_2),
    SCRIPT(S_RETRY, "retry-3", retry_3),
    SCRIPT(S_BURY, "bury-3", bury_3),
    SCRIPT(S_PROMOTE, "promote-2", promote_2),
    SCRIPT(S_HEARTBEAT, "heartbeat-N", heartbeat_N),
    SCRIPT(S_REAP, "reap-4", reap_4),
    SCRIPT(S_HANDBACK, "handback-2", handback_2),
    SCRIPT(S_UNREGISTER, "unregister-2", unregister_2),
    SCRIPT(S_REQUEUE, "requeue-3", requeue_3),
    SCRIPT(S_FETCHM, "fetchm-N", fetchm_N),
    SCRIPT(S_ENQUEUE, "enqueue-N", enqueue_N),
    SCRIPT(S_RATELIMIT, "ratelimit-N", ratelimit_N),
    SCRIPT(S_CHECKSEAL, "checkseal-1", checkseal_1),
    SCRIPT(S_ACK, "ack-2", ack_2),
    SCRIPT(S_BURYBIG, "burybig-3", burybig_3),
    SCRIPT(S_CONTROLS, "controls-3", controls_3),
};
#undef SCRIPT

/* Queues "EVALSHA sha nkeys keys... args..." (or EVAL with the source when `eval`). */
static bq_status append_script(bq_conn *c, enum script_id id, bool eval, int nkeys,
                               const char *const *keys, int nargs, const char *const *args,
                               const size_t *arglens, bq_err *err)
{
    int argc = 3 + nkeys + nargs;
    const char *stack_argv[24];
    size_t stack_lens[24];
    const char **argv = argc <= 24 ? stack_argv : bq_calloc((size_t)argc, sizeof *argv);
    size_t *lens = argc <= 24 ? stack_lens : bq_calloc((size_t)argc, sizeof *lens);
    if (argv == NULL || lens == NULL) {
        if (argv != stack_argv)
            bq_free(argv);
        if (lens != stack_lens)
            bq_free(lens);
        return bq_err_set(err, BQ_ENOMEM, "%s: out of memory", scripts[id].name);
    }
    char nk[8];
    snprintf(nk, sizeof nk, "%d", nkeys);
    argv[0] = eval ? "EVAL" : "EVALSHA";
    argv[1] = eval ? scripts[id].src : scripts[id].sha;
    argv[2] = nk;
    for (int i = 0; i < 3; i++)
        lens[i] = strlen(argv[i]);
    for (int i = 0; i < nkeys; i++) {
        argv[3 + i] = keys[i];
        lens[3 + i] = strlen(keys[i]);
    }
    for (int i = 0; i < nargs; i++) {
        argv[3 + nkeys + i] = args[i];
        lens[3 + nkeys + i] = arglens ? arglens[i] : strlen(args[i]);
    }
    bq_status st = bq_conn_append(c, argc, argv, lens, err);
    if (argv != stack_argv)
        bq_free(argv);
    if (lens != stack_lens)
        bq_free(lens);
    return st;
}

static bool is_noscript(const redisReply *r)
{
    return r != NULL && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

/* Runs a script on c and returns its reply (caller frees). Error replies become errors
 * named after the script. */
static bq_status run_script(bq_conn *c, enum script_id id, int nkeys, const char *const *keys,
                            int nargs, const char *const *args, const size_t *arglens,
                            double timeout, redisReply **out, bq_err *err)
{
    *out = NULL;
    double deadline = bq_now_mono() + timeout;
    redisReply *r = NULL;
    bq_status st = BQ_OK;
    for (int eval = 0; eval < 2; eval++) {
        st = append_script(c, id, eval, nkeys, keys, nargs, args, arglens, err);
        if (st == BQ_OK)
            st = bq_conn_flush(c, deadline, -1, err);
        if (st == BQ_OK)
            st = bq_conn_read(c, &r, deadline, -1, err);
        if (st != BQ_OK || !is_noscript(r))
            break;
        freeReplyObject(r);
        r = NULL;
    }
    if (st == BQ_OK)
        st = bq_reply_check(r, scripts[id].name, err);
    if (st != BQ_OK) {
        if (r != NULL)
            freeReplyObject(r);
        return st;
    }
    *out = r;
    return BQ_OK;
}

/* Loads every script into the server's cache over c (after a restart or SCRIPT FLUSH), so
 * the pipelined EVALSHAs of the fetch loop find them. Errors are ignored: a user without
 * the right to SCRIPT LOAD still gets each script loaded by EVAL on its first NOSCRIPT. */
static void load_scripts(bq_conn *c, double timeout)
{
    double deadline = bq_now_mono() + timeout;
    int sent = 0;
    for (int i = 0; i < S_COUNT; i++) {
        const char *argv[] = {"SCRIPT", "LOAD", scripts[i].src};
        if (bq_conn_append(c, 3, argv, NULL, NULL) == BQ_OK)
            sent++;
    }
    if (bq_conn_flush(c, deadline, -1, NULL) != BQ_OK)
        return;
    for (int i = 0; i < sent; i++) {
        redisReply *r;
        if (bq_conn_read(c, &r, deadline, -1, NULL) != BQ_OK)
            return;
        freeReplyObject(r);
    }
}

/* ---- The broker ---------------------------------------------------------------------------- */

struct fetch_keys;

struct redis_broker {
    struct bq_broker base;
    bq_pool *pool;
    bq_conn *fetch_conn;     /* owned; used only by the fetching thread */
    size_t fetch_cap;        /* the lessee's max_size its bulk cap was set for */
    long long fetch_id;      /* CLIENT ID of fetch_conn, -1 if unknown */
    bool has_blmpop;
    int wakefd;              /* eventfd written by interrupt */
    bq_tls_ctx *tls;         /* owned; rediss:// only */
    int wait_replicas;       /* > 0: WAIT after pushes */
    double wait_timeout;
    /* Sentinel URLs: a thread follows +switch-master and bumps `epoch`, which makes every
     * connection to the old master count as broken (conn.h). */
    atomic_uint epoch;
    pthread_t watcher;
    bool watching;
    int watch_stopfd;
    double command_timeout;
    long credit[MAX_QUEUES]; /* weighted fetching: the round robin's state (fetcher only) */
    struct fetch_keys *fk;   /* owned: the fetcher's keys, built for the lessee whose
                              * signature (worker id, queue names) is fk_sig (fetcher only) */
    char fk_sig[1024];
};

static bq_status borrow(struct redis_broker *r, bq_conn **c, bq_err *err)
{
    return bq_pool_borrow(r->pool, c, err);
}

/* One command on a pooled connection: borrow, bq_conn_call (lens NULL: NUL-terminated
 * arguments), return. The connection goes back whatever happened; a call that broke it
 * (I/O error, timeout) leaves it marked broken and bq_pool_return closes it. *out as
 * bq_conn_call (NULL if the borrow failed). */
static bq_status pooled_call(struct redis_broker *r, redisReply **out, bq_err *err, int argc,
                             const char **argv, const size_t *lens)
{
    if (out != NULL)
        *out = NULL;
    bq_conn *c;
    bq_status st = borrow(r, &c, err);
    if (st != BQ_OK)
        return st;
    st = bq_conn_call(c, out, err, argc, argv, lens);
    bq_pool_return(r->pool, c);
    return st;
}


/* One script on a pooled connection (run_script: EVALSHA, EVAL on NOSCRIPT), as
 * pooled_call: *out is its reply (caller frees), NULL on failure. */
static bq_status pooled_script(struct redis_broker *r, enum script_id id, int nkeys,
                               const char *const *keys, int nargs, const char *const *args,
                               const size_t *arglens, redisReply **out, bq_err *err)
{
    *out = NULL;
    bq_conn *c;
    bq_status st = borrow(r, &c, err);
    if (st != BQ_OK)
        return st;
    st = run_script(c, id, nkeys, keys, nargs, args, arglens, r->command_timeout, out, err);
    bq_pool_return(r->pool, c);
    return st;
}

/* The same for a script whose reply is an integer: *result (may be NULL), 0 if it is not. */
static bq_status pooled_script_int(struct redis_broker *r, enum script_id id, int nkeys,
                                   const char *const *keys, int nargs, const char *const *args,
                                   const size_t *arglens, long long *result, bq_err *err)
{
    redisReply *rep;
    bq_status st = pooled_script(r, id, nkeys, keys, nargs, args, arglens, &rep, err);
    if (st != BQ_OK)
        return st;
    if (result != NULL)
        *result = rep->type == REDIS_REPLY_INTEGER ? rep->integer : 0;
    freeReplyObject(rep);
    return BQ_OK;
}

/* The queue a message came from. */
static const char *queue_of(const struct bq_lessee *who, int q)
{
    return who->queues[q >= 0 && q < who->nqueues ? q : 0];
}

/* The worker's in-flight list on queue q. */
static bq_status wip_key(const struct bq_lessee *who, int q, char *out, bq_err *err)
{
    char suffix[160];
    if (snprintf(suffix, sizeof suffix, "wip:%s", who->worker ? who->worker : "-") >=
        (int)sizeof suffix)
        return bq_err_set(err, BQ_EINVAL, "worker id too long");
    return bq_key_derive_err(queue_of(who, q), suffix, out, err);
}

static bq_status queue_key(const char *queue, enum bq_list which, char *out, bq_err *err)
{
    switch (which) {
    case BQ_LIST_DEAD: return bq_key_derive_err(queue, "dlq", out, err);
    case BQ_LIST_DELAYED: return bq_key_derive_err(queue, "delayed", out, err);
    case BQ_LIST_READY:
    case BQ_LIST_INFLIGHT: break;
    }
    const char *why = bq_queue_name_problem(queue);
    if (why != NULL)
        return bq_err_set(err, BQ_EINVAL, "queue name '%.200s' %s", queue, why);
    strcpy(out, queue);
    return BQ_OK;
}

/* The command that puts a message at the back of `queue` (where producers push) and the one
 * that puts it at the front (where workers take next). */
static const char *to_back(const struct redis_broker *r, const char *queue)
{
    return *bq_broker_front(&r->base, queue) == 'L' ? "RPUSH" : "LPUSH";
}

/* Appends LPUSH (RPUSH: see bq_orders) Q msgs (in chunks) and the bell: LPUSH {Q}:bell 1,
 * LTRIM {Q}:bell 0 63. Returns the number of commands appended (each gets one reply). */
static bq_status append_push(bq_conn *c, const char *cmd, const char *queue, const char *bell,
                             const struct bq_slice *msgs, size_t n, size_t *ncmds, bq_err *err)
{
    size_t chunk = n < PUSH_CHUNK ? n : PUSH_CHUNK;
    const char **argv = bq_calloc(chunk + 2, sizeof *argv);
    size_t *lens = bq_calloc(chunk + 2, sizeof *lens);
    bq_status st = BQ_OK;
    *ncmds = 0;
    if (argv == NULL || lens == NULL) {
        st = bq_err_set(err, BQ_ENOMEM, "LPUSH: out of memory");
    } else {
        argv[0] = cmd;
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
            (*ncmds)++;
        }
    }
    const char *ring[] = {"LPUSH", bell, "1"}, *trim[] = {"LTRIM", bell, "0", "63"};
    if (st == BQ_OK && (st = bq_conn_append(c, 3, ring, NULL, err)) == BQ_OK)
        (*ncmds)++;
    if (st == BQ_OK && (st = bq_conn_append(c, 4, trim, NULL, err)) == BQ_OK)
        (*ncmds)++;
    bq_free(argv);
    bq_free(lens);
    return st;
}

/* WAIT until r->wait_replicas replicas acknowledged this connection's writes. */
static bq_status wait_replicated(struct redis_broker *r, bq_conn *c, bq_err *err)
{
    if (r->wait_replicas <= 0)
        return BQ_OK;
    char n[16], ms[24];
    snprintf(n, sizeof n, "%d", r->wait_replicas);
    snprintf(ms, sizeof ms, "%lld", (long long)(r->wait_timeout * 1000.0));
    redisReply *rep = NULL;
    bq_status st = bq_conn_callv(c, &rep, err, "WAIT", n, ms, NULL);
    if (st == BQ_OK && (rep->type != REDIS_REPLY_INTEGER || rep->integer < r->wait_replicas))
        st = bq_err_set(err, BQ_ETIMEDOUT, "WAIT: %lld of %d replicas acknowledged the enqueue "
                        "within %s ms (it may or may not be queued)",
                        rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1LL, r->wait_replicas,
                        ms);
    if (rep != NULL)
        freeReplyObject(rep);
    return st;
}

static bq_status redis_push(bq_broker *b, const char *queue, const struct bq_slice *msgs,
                            size_t n, size_t *pushed, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    *pushed = 0;
    if (n == 0)
        return BQ_OK;
    char bell[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "bell", bell, err);
    bq_conn *c;
    if (st != BQ_OK || (st = borrow(r, &c, err)) != BQ_OK)
        return st;
    size_t ncmds = 0;
    st = append_push(c, to_back(r, queue), queue, bell, msgs, n, &ncmds, err);
    double deadline = bq_now_mono() + r->command_timeout + (double)n / 50000.0;
    if (st == BQ_OK)
        st = bq_conn_flush(c, deadline, -1, err);
    size_t chunk = n < PUSH_CHUNK ? n : PUSH_CHUNK;
    for (size_t i = 0; i < ncmds && st == BQ_OK; i++) {
        redisReply *rep;
        st = bq_conn_read(c, &rep, deadline, -1, err);
        if (st != BQ_OK)
            break;
        st = bq_reply_check(rep, i + 2 < ncmds ? "LPUSH" : "bell", err);
        freeReplyObject(rep);
        if (st == BQ_OK && i + 2 < ncmds)
            *pushed += (i + 1) * chunk <= n ? chunk : n - i * chunk;
    }
    if (st == BQ_OK && (st = wait_replicated(r, c, err)) != BQ_OK)
        *pushed = 0;
    bq_pool_return(r->pool, c);
    return st;
}

static bq_status redis_push_unique(bq_broker *b, const char *queue, const struct bq_slice *msgs,
                                   const char *const *keys, size_t n, double ttl, bool *pushed,
                                   bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    for (size_t i = 0; i < n; i++)
        pushed[i] = false;
    if (n == 0)
        return BQ_OK;
    char bell[BQ_KEY_MAX], ttls[32];
    bq_status st = bq_key_derive_err(queue, "bell", bell, err);
    if (st != BQ_OK)
        return st;
    snprintf(ttls, sizeof ttls, "%lld", (long long)(ttl >= 1 ? ttl : 1));
    /* One script call per chunk of 500, pipelined: keys and messages travel as arguments. */
    size_t chunk = n < 500 ? n : 500;
    const char **k = bq_calloc(chunk + 2, sizeof *k);
    const char **a = bq_calloc(chunk + 2, sizeof *a);
    size_t *al = bq_calloc(chunk + 2, sizeof *al);
    const char *front = bq_broker_front(b, queue);
    char (*dk)[BQ_KEY_MAX] = bq_calloc(chunk, sizeof *dk);
    bq_conn *c = NULL;
    if (k == NULL || a == NULL || al == NULL || dk == NULL)
        st = bq_err_set(err, BQ_ENOMEM, "enqueue: out of memory");
    else
        st = borrow(r, &c, err);
    for (size_t i = 0; i < n && st == BQ_OK; i += chunk) {
        size_t m = n - i < chunk ? n - i : chunk;
        k[0] = queue;
        k[1] = bell;
        a[0] = ttls;
        al[0] = strlen(ttls);
        a[1] = front;
        al[1] = 1;
        for (size_t j = 0; j < m && st == BQ_OK; j++) {
            char suffix[BQ_KEY_MAX];
            snprintf(suffix, sizeof suffix, "dedup:%s", keys[i + j]);
            st = bq_key_derive_err(queue, suffix, dk[j], err);
            k[2 + j] = dk[j];
            a[2 + j] = msgs[i + j].p;
            al[2 + j] = msgs[i + j].len;
        }
        redisReply *rep = NULL;
        if (st == BQ_OK)
            st = run_script(c, S_ENQUEUE, (int)m + 2, k, (int)m + 2, a, al,
                            r->command_timeout, &rep, err);
        for (size_t j = 0; st == BQ_OK && rep->type == REDIS_REPLY_ARRAY && j < rep->elements &&
                           j < m; j++)
            pushed[i + j] = rep->element[j]->integer == 1;
        if (rep != NULL)
            freeReplyObject(rep);
    }
    if (st == BQ_OK && (st = wait_replicated(r, c, err)) != BQ_OK) {
        for (size_t i = 0; i < n; i++)
            pushed[i] = false;
    }
    if (c != NULL)
        bq_pool_return(r->pool, c);
    bq_free(k);
    bq_free(a);
    bq_free(al);
    bq_free(dk);
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
    load_scripts(r->fetch_conn, r->command_timeout);
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
    pooled_call(r, NULL, NULL, 3, argv, NULL);
}

/* Reads the reply of a blocking pop, which an interrupt may cut short: then the pop is
 * unblocked (CLIENT UNBLOCK) and its reply read anyway: nil if unblocked, the messages if it
 * won the race; without a client id (ACL forbids CLIENT) this waits out the blocking
 * timeout. If the master changed meanwhile (Sentinel), the connection is to the old one: it
 * is dropped rather than a client id unblocked on the new server. */
static bq_status read_blocked(struct redis_broker *r, bq_conn *c, redisReply **rep,
                              double deadline, int wakefd, bq_err *err)
{
    bq_status st = bq_conn_read(c, rep, deadline, wakefd, err);
    if (st != BQ_EINTR)
        return st;
    take_wakeup(r);
    if (bq_conn_broken(c))
        return bq_err_set(err, BQ_EIO, "%s: the master changed", bq_conn_address(c));
    unblock_fetch(r);
    return bq_conn_read(c, rep, deadline, -1, err);
}

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
static bq_status take_strings(const redisReply *rep, struct bq_batch *out, int q)
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
static bq_status take_pairs(const redisReply *rep, struct bq_batch *out)
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
static void promote_reply(const redisReply *rep, size_t *moved, double *next_due)
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
    return take_pairs(rep->element[1], out);
}

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
            if ((st = wip_key(who, msgs[i].q, wip, err)) != BQ_OK)
                break;
            wq = msgs[i].q;
            wlen = strlen(wip);
        }
        if (bq_msg_has_header(&msgs[i])) {
            const char *keys[] = {wip, seals};
            const char *args[] = {msgs[i].data, lease ? "1" : "0"};
            size_t lens[] = {msgs[i].len, 1};
            st = bq_key_derive_err(queue_of(who, msgs[i].q), "seals", seals, err);
            if (st == BQ_OK)
                st = append_script(c, S_ACK, true, 2, keys, 2, args, lens, err);
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

/* The key arrays a fetch round trip needs, built once per call. */
struct fetch_keys {
    char wip[MAX_QUEUES][BQ_KEY_MAX], workers[MAX_QUEUES][BQ_KEY_MAX];
    char delayed[MAX_QUEUES][BQ_KEY_MAX], bell[MAX_QUEUES][BQ_KEY_MAX];
    const char *hb[MAX_QUEUES], *fm[2 * MAX_QUEUES], *bells[MAX_QUEUES + 2];
    char fronts[MAX_QUEUES + 1]; /* each queue's front, 'L' or 'R' (bq_broker_front) */
};

static bq_status build_keys(const struct redis_broker *r, const struct bq_lessee *who,
                            struct fetch_keys *k, bq_err *err)
{
    if (who->nqueues < 1 || who->nqueues > MAX_QUEUES)
        return bq_err_set(err, BQ_EINVAL, "a worker fetches from 1 to %d queues", MAX_QUEUES);
    for (int i = 0; i < who->nqueues; i++) {
        bq_status st = wip_key(who, i, k->wip[i], err);
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
    if (st == BQ_OK && is_noscript(*out)) {
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
            st = run_script(c, S_CHECKSEAL, 1, keys, (int)n, args, lens, r->command_timeout,
                            &rep, err);
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

/* ---- Taking messages: the round trip's last step ---------------------------------------
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
    int nq = who->nqueues;
    bool left = k->fronts[0] == 'L';
    bq_status st = BQ_OK;
    switch (m) {
    case T_FETCHM:
    case T_BELLS:
        st = append_script(c, S_FETCHM, false, 2 * nq, k->fm, a->nfm, a->fm, NULL, err);
        if (st == BQ_OK && takes[m].bells) {
            k->bells[0] = "BRPOP";
            k->bells[nq + 1] = a->tmo;
            st = bq_conn_append(c, nq + 2, k->bells, NULL, err);
        }
        break;
    case T_FETCH: {
        const char *keys[] = {who->queues[0], k->wip[0]};
        const char *args[] = {a->count, left ? "L" : "R", a->bytes,
                              who->delivery == BQ_AT_LEAST_ONCE ? "1" : "0"};
        st = append_script(c, S_FETCH, false, 2, keys, 4, args, NULL, err);
        break;
    }
    case T_BLMOVE: {
        const char *argv[] = {"BLMOVE", who->queues[0], k->wip[0], left ? "LEFT" : "RIGHT",
                              "LEFT", a->tmo};
        st = bq_conn_append(c, 6, argv, NULL, err);
        break;
    }
    case T_BLMPOP: {
        const char *argv[] = {"BLMPOP", a->tmo, "1", who->queues[0], left ? "LEFT" : "RIGHT",
                              "COUNT", a->blcount};
        st = bq_conn_append(c, 7, argv, NULL, err);
        break;
    }
    case T_BPOP: {
        const char *argv[] = {takes[m].name[left], who->queues[0], a->tmo};
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
    case TAKE_LIST: st = take_strings(rep, out, 0); break;
    case TAKE_KEYED:
        if (rep->type != REDIS_REPLY_ARRAY)
            st = take_strings(rep, out, 0); /* nil, or the marker of an oversized message */
        else if (rep->elements == 2)
            st = take_strings(rep->element[1], out, 0);
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
                           const struct fetch_args *a, double deadline, struct bq_batch *out,
                           bool *reload, bq_err *err)
{
    const struct take *t = &takes[m];
    const char *name = t->name[k->fronts[0] == 'L'];
    size_t before = out->n;
    redisReply *rep = NULL;
    bq_status st = read_blocked(r, c, &rep, deadline, t->waits ? r->wakefd : -1, err);
    if (st == BQ_OK && t->script != S_COUNT && is_noscript(rep)) {
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
    rep = NULL;
    st = read_blocked(r, c, &rep, deadline, r->wakefd, err);
    if (st == BQ_OK)
        st = bq_reply_check(rep, "BRPOP", err);
    bool rang = st == BQ_OK && rep->type == REDIS_REPLY_ARRAY;
    if (rep != NULL)
        freeReplyObject(rep);
    if (!rang || out->n != before)
        return st;
    rep = NULL;
    int nq = who->nqueues;
    st = run_script(c, S_FETCHM, 2 * nq, k->fm, a->nfm, a->fm, NULL, r->command_timeout, &rep,
                    err);
    if (st == BQ_OK)
        st = take_reply(r, TAKE_FETCHM, nq, rep, name, out, err);
    if (rep != NULL)
        freeReplyObject(rep);
    return st;
}

/* The fetcher's keys for `who`, built again only when the lessee changed: they are ~32 KB
 * of names, and zeroing and formatting them every round trip cost an eighth of the
 * worker's instructions per task. */
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
    bq_status st = build_keys(r, who, r->fk, err);
    if (st == BQ_OK && n > 0 && (size_t)n < sizeof sig)
        memcpy(r->fk_sig, sig, (size_t)n + 1);
    return st;
}

static bq_status redis_fetch(bq_broker *b, const struct bq_lessee *who,
                             const struct bq_fetch_req *req, struct bq_fetch_res *res,
                             struct bq_batch *out, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    bool lease = who->delivery == BQ_AT_LEAST_ONCE;
    int nq = who->nqueues;
    res->acked = res->promoted = 0;
    res->next_due = -1;
    res->renewed = false;
    size_t first = out->n;
    double timeout = req->timeout;
    /* An interrupt that came while we were not waiting cuts this wait short: take what is
     * there without blocking. */
    if (take_wakeup(r))
        timeout = 0;
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

    /* 1. renew the lease on every queue */
    bool beat = lease && req->lease > 0;
    const char *hb_args[] = {who->worker, a.lease_ms};
    if (beat)
        st = append_script(c, S_HEARTBEAT, false, nq, k->hb, 2, hb_args, NULL, err);
    /* 2. acknowledge */
    size_t nacks = lease ? req->nacks : 0;
    if (st == BQ_OK && nacks > 0)
        st = append_acks(c, who, req->acks, nacks, err);
    /* 3. promote due retries, queue by queue */
    for (int i = 0; st == BQ_OK && req->promote && i < nq; i++) {
        const char *pr_keys[] = {k->delayed[i], who->queues[i]};
        const char *pr_args[] = {"1000", k->fronts[i] == 'L' ? "L" : "R"};
        st = append_script(c, S_PROMOTE, false, 2, pr_keys, 2, pr_args, NULL, err);
    }
    /* 4. take (see `takes`) */
    if (st == BQ_OK && want)
        st = append_take(c, m, who, k, &a, err);
    double deadline = bq_now_mono() + (timeout > 0 ? timeout : 0) + r->command_timeout;
    if (st == BQ_OK)
        st = bq_conn_flush(c, deadline, -1, err);

    /* The replies, in the same order. */
    redisReply *rep = NULL;
    bool reload = false;
    if (st == BQ_OK && beat) {
        st = read_script_reply(c, deadline, "heartbeat-N", &rep, &reload, err);
        if (st == BQ_OK && rep != NULL) {
            res->renewed = true;
            if (take_pairs(rep, &res->dead) != BQ_OK)
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
            promote_reply(rep, &moved, &due);
            res->promoted += moved;
            if (due >= 0 && (res->next_due < 0 || due < res->next_due))
                res->next_due = due;
            freeReplyObject(rep);
            rep = NULL;
        }
    }
    if (st == BQ_OK && want)
        st = read_take(r, c, m, who, k, &a, deadline, out, &reload, err);
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
        load_scripts(c, r->command_timeout);
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

static void redis_interrupt(bq_broker *b)
{
    struct redis_broker *r = (struct redis_broker *)b;
    uint64_t one = 1;
    ssize_t n = write(r->wakefd, &one, sizeof one);
    (void)n;
}

static bq_status redis_ack(bq_broker *b, const struct bq_lessee *who, const struct bq_msg *msgs,
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
    bq_status st = borrow(r, &c, err);
    if (st != BQ_OK)
        return st;
    double deadline = bq_now_mono() + r->command_timeout;
    st = append_acks(c, who, msgs, n, err);
    if (st == BQ_OK)
        st = bq_conn_flush(c, deadline, -1, err);
    if (st == BQ_OK)
        st = read_acks(c, who, msgs, n, deadline, acked, err);
    if (st != BQ_OK)
        bq_conn_mark_broken(c); /* replies may be left unread (see redis_fetch) */
    bq_pool_return(r->pool, c);
    return st;
}

static bq_status redis_retry(bq_broker *b, const struct bq_lessee *who,
                             const struct bq_msg *leased, struct bq_slice next, double delay,
                             bool *held, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char wip[BQ_KEY_MAX], delayed[BQ_KEY_MAX], seals[BQ_KEY_MAX], ms[32];
    bq_status st = wip_key(who, leased->q, wip, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(queue_of(who, leased->q), "delayed", delayed, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(queue_of(who, leased->q), "seals", seals, err);
    if (st != BQ_OK)
        return st;
    snprintf(ms, sizeof ms, "%lld", (long long)(delay > 0 ? delay * 1000.0 : 0));
    const char *keys[] = {wip, delayed, seals};
    const char *args[] = {leased->data, next.p, ms, who->delivery == BQ_AT_LEAST_ONCE ? "1" : "0"};
    size_t lens[] = {leased->len, next.len, strlen(ms), 1};
    long long res = 0;
    st = pooled_script_int(r, S_RETRY, 3, keys, 4, args, lens, &res, err);
    *held = res == 1;
    return st;
}

static bq_status redis_bury(bq_broker *b, const struct bq_lessee *who,
                            const struct bq_msg *leased, struct bq_slice entry, bool *held,
                            bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char wip[BQ_KEY_MAX], dlq[BQ_KEY_MAX], seals[BQ_KEY_MAX];
    bq_status st = wip_key(who, leased->q, wip, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(queue_of(who, leased->q), "dlq", dlq, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(queue_of(who, leased->q), "seals", seals, err);
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
        st = pooled_script_int(r, S_BURYBIG, 3, keys, 4, args, lens, &res, err);
    } else {
        const char *args[] = {leased->data, entry.p, lease};
        size_t lens[] = {leased->len, entry.len, 1};
        st = pooled_script_int(r, S_BURY, 3, keys, 3, args, lens, &res, err);
    }
    *held = res == 1;
    return st;
}

static bq_status redis_handback(bq_broker *b, const struct bq_lessee *who,
                                const struct bq_msg *msgs, size_t n, size_t *count,
                                bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    *count = 0;
    bq_conn *c;
    bq_status st = n == 0 ? BQ_OK : borrow(r, &c, err);
    if (n == 0 || st != BQ_OK)
        return st;
    /* Oldest last onto the front: the oldest is taken next. One call per message keeps
     * the script's keys to its own queue. */
    for (size_t i = n; i-- > 0 && st == BQ_OK;) {
        const char *queue = queue_of(who, msgs[i].q);
        const char *front = bq_broker_front(b, queue);
        if (who->delivery != BQ_AT_LEAST_ONCE) {
            const char *argv[3] = {*front == 'L' ? "LPUSH" : "RPUSH", queue, msgs[i].data};
            size_t lens[3] = {5, strlen(queue), msgs[i].len};
            st = bq_conn_call(c, NULL, err, 3, argv, lens);
            *count += st == BQ_OK;
            continue;
        }
        char wip[BQ_KEY_MAX];
        if ((st = wip_key(who, msgs[i].q, wip, err)) != BQ_OK)
            break;
        const char *keys[] = {wip, queue};
        const char *args[] = {front, msgs[i].data};
        size_t lens[] = {1, msgs[i].len};
        redisReply *rep;
        st = run_script(c, S_HANDBACK, 2, keys, 2, args, lens, r->command_timeout, &rep, err);
        if (st == BQ_OK) {
            *count += rep->type == REDIS_REPLY_INTEGER && rep->integer > 0;
            freeReplyObject(rep);
        }
    }
    bq_pool_return(r->pool, c);
    return st;
}

static bq_status redis_rate_limit(bq_broker *b, const struct bq_lessee *who, long limit,
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
    char lim[24], per[32];
    snprintf(lim, sizeof lim, "%ld", limit);
    snprintf(per, sizeof per, "%lld", (long long)(period * 1000.0));
    /* A key and an argument an operation; their text in one block each. */
    char (*names)[BQ_KEY_MAX] = bq_calloc(n, sizeof *names);
    char (*ids)[48] = bq_calloc(n, sizeof *ids);
    const char **keys = bq_calloc(n, sizeof *keys), **args = bq_calloc(2 + n, sizeof *args);
    bq_status st = names && ids && keys && args
                       ? BQ_OK : bq_err_set(err, BQ_ENOMEM, "ratelimit-N: out of memory");
    if (st == BQ_OK) {
        args[0] = lim;
        args[1] = per;
    }
    for (size_t i = 0; st == BQ_OK && i < n; i++) {
        char suffix[BQ_KEY_MAX];
        snprintf(suffix, sizeof suffix, "rl:%s", reqs[i].key);
        st = bq_key_derive_err(queue_of(who, reqs[i].msg->q), suffix, names[i], err);
        keys[i] = names[i];
        snprintf(ids[i], sizeof ids[i], "%s:%.0f", who->worker, bq_random_unit() * 1e15);
        args[2 + i] = ids[i];
    }
    redisReply *rep = NULL;
    if (st == BQ_OK)
        st = pooled_script(r, S_RATELIMIT, (int)n, keys, (int)(2 + n), args, NULL, &rep, err);
    if (st == BQ_OK && (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 * n))
        st = bq_err_set(err, BQ_EPROTO, "ratelimit-N: unexpected reply");
    for (size_t i = 0; st == BQ_OK && i < n; i++) {
        reqs[i].verdict = rep->element[2 * i]->integer == 1;
        reqs[i].value = (double)rep->element[2 * i + 1]->integer / 1000.0;
    }
    if (rep != NULL)
        freeReplyObject(rep);
    bq_free(names);
    bq_free(ids);
    bq_free(keys);
    bq_free(args);
    return st;
}

static bq_status redis_controls(bq_broker *b, const char *queue, double interval,
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
    st = pooled_script(r, S_CONTROLS, 3, keys, 3, args, NULL, &rep, err);
    if (st != BQ_OK)
        return st;
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i + 1 < rep->elements; i += 2) {
        const redisReply *op = rep->element[i], *id = rep->element[i + 1];
        if (op->type != REDIS_REPLY_STRING || id->type != REDIS_REPLY_STRING)
            continue;
        char line[256];
        int n = snprintf(line, sizeof line, "%s %s", op->str, id->str);
        if (n > 0 && (size_t)n < sizeof line && bq_batch_add(out, line, (size_t)n) != BQ_OK) {
            st = bq_err_set(err, BQ_ENOMEM, "controls: out of memory");
            break;
        }
    }
    freeReplyObject(rep);
    return st;
}

static bq_status redis_promote(bq_broker *b, const char *queue, size_t *moved, double *next_due,
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
    st = pooled_script(r, S_PROMOTE, 2, keys, 2, args, NULL, &rep, err);
    if (st != BQ_OK)
        return st;
    promote_reply(rep, moved, next_due);
    freeReplyObject(rep);
    return BQ_OK;
}

static bq_status redis_heartbeat(bq_broker *b, const struct bq_lessee *who, double lease,
                                 struct bq_batch *dead, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    struct fetch_keys *k = bq_calloc(1, sizeof *k);
    if (k == NULL)
        return bq_err_set(err, BQ_ENOMEM, "heartbeat: out of memory");
    bq_status st = build_keys(r, who, k, err);
    char ms[32];
    snprintf(ms, sizeof ms, "%lld", (long long)(lease * 1000.0));
    const char *args[] = {who->worker, ms};
    redisReply *rep = NULL;
    if (st == BQ_OK)
        st = pooled_script(r, S_HEARTBEAT, who->nqueues, k->hb, 2, args, NULL, &rep, err);
    if (st == BQ_OK && take_pairs(rep, dead) != BQ_OK)
        st = bq_err_set(err, BQ_ENOMEM, "heartbeat: out of memory");
    if (rep != NULL)
        freeReplyObject(rep);
    bq_free(k);
    return st;
}

static bq_status redis_reap(bq_broker *b, const char *queue, const char *dead_id,
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
    return pooled_script_int(r, S_REAP, 4, keys, 2, args, NULL, recovered, err);
}

static bq_status redis_unregister(bq_broker *b, const struct bq_lessee *who, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    bq_status st = BQ_OK;
    for (int i = 0; i < who->nqueues && st == BQ_OK; i++) {
        char workers[BQ_KEY_MAX], wip[BQ_KEY_MAX];
        st = bq_key_derive_err(who->queues[i], "workers", workers, err);
        if (st == BQ_OK)
            st = wip_key(who, i, wip, err);
        const char *keys[] = {workers, wip};
        const char *args[] = {who->worker};
        if (st == BQ_OK)
            st = pooled_script_int(r, S_UNREGISTER, 2, keys, 1, args, NULL, NULL, err);
    }
    return st;
}

/* The total length of every worker's in-flight list: their ids, then one LLEN each,
 * pipelined on one pooled connection. */
static bq_status inflight_length(struct redis_broker *r, const char *queue, long long *out,
                                 bq_err *err)
{
    char workers[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "workers", workers, err);
    bq_conn *c;
    if (st != BQ_OK || (st = borrow(r, &c, err)) != BQ_OK)
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

static bq_status redis_length(bq_broker *b, const char *queue, enum bq_list which,
                              long long *out, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char key[BQ_KEY_MAX];
    bq_status st = queue_key(queue, which, key, err);
    if (st != BQ_OK)
        return st;
    if (which == BQ_LIST_INFLIGHT)
        return inflight_length(r, queue, out, err);
    const char *argv[] = {which == BQ_LIST_DELAYED ? "ZCARD" : "LLEN", key};
    redisReply *rep;
    st = pooled_call(r, &rep, err, 2, argv, NULL);
    if (st == BQ_OK) {
        *out = rep->type == REDIS_REPLY_INTEGER ? rep->integer : 0;
        freeReplyObject(rep);
    }
    return st;
}

static bq_status redis_range(bq_broker *b, const char *queue, enum bq_list which, long start,
                             long stop, struct bq_batch *out, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    if (which != BQ_LIST_READY && which != BQ_LIST_DEAD)
        return bq_err_set(err, BQ_EINVAL, "range reads the queue or its dead-letter list only");
    char key[BQ_KEY_MAX], s1[24], s2[24];
    bq_status st = queue_key(queue, which, key, err);
    if (st != BQ_OK)
        return st;
    /* Newest first: a queue whose producers RPUSH keeps its newest at the right end, so the
     * positions count from there and the answer is turned around. */
    bool flip = which == BQ_LIST_READY && *bq_broker_front(b, queue) == 'L';
    snprintf(s1, sizeof s1, "%ld", flip ? -1 - stop : start);
    snprintf(s2, sizeof s2, "%ld", flip ? -1 - start : stop);
    const char *argv[] = {"LRANGE", key, s1, s2};
    redisReply *rep;
    st = pooled_call(r, &rep, err, 4, argv, NULL);
    if (st != BQ_OK)
        return st;
    size_t first = out->n;
    st = take_strings(rep, out, 0);
    freeReplyObject(rep);
    for (size_t i = first, j = out->n; flip && st == BQ_OK && i + 1 < j; i++, j--) {
        struct bq_msg t = out->msgs[i];
        out->msgs[i] = out->msgs[j - 1];
        out->msgs[j - 1] = t;
    }
    return st == BQ_OK ? BQ_OK : bq_err_set(err, st, "LRANGE: out of memory");
}

static bq_status redis_dlq_requeue(bq_broker *b, const char *queue, struct bq_slice entry,
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
    st = pooled_script_int(r, S_REQUEUE, 3, keys, 2, args, lens, &res, err);
    *done = res == 1;
    return st;
}

static bq_status redis_dlq_remove(bq_broker *b, const char *queue, struct bq_slice entry,
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
    st = pooled_call(r, &rep, err, 4, argv, lens);
    if (st != BQ_OK)
        return st;
    *done = rep->type == REDIS_REPLY_INTEGER && rep->integer > 0;
    freeReplyObject(rep);
    return BQ_OK;
}

static bq_status redis_dlq_purge(bq_broker *b, const char *queue, long long *count, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    char dlq[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "dlq", dlq, err);
    bq_conn *c;
    if (st != BQ_OK || (st = borrow(r, &c, err)) != BQ_OK)
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
    bq_pool_return(r->pool, c);
    return st;
}

static bq_status redis_held(bq_broker *b, const struct bq_lessee *who, struct bq_batch *out,
                            bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    bq_conn *c;
    bq_status st = borrow(r, &c, err);
    if (st != BQ_OK)
        return st;
    for (int q = 0; st == BQ_OK && q < who->nqueues; q++) {
        char wip[BQ_KEY_MAX];
        redisReply *rep = NULL;
        if ((st = wip_key(who, q, wip, err)) != BQ_OK)
            break;
        st = bq_conn_callv(c, &rep, err, "LRANGE", wip, "0", "-1", NULL);
        if (st == BQ_OK)
            st = take_strings(rep, out, q);
        if (rep != NULL)
            freeReplyObject(rep);
    }
    bq_pool_return(r->pool, c);
    return st;
}

/* ---- Control channel ------------------------------------------------------------------- */

static bq_status redis_publish(bq_broker *b, const char *queue, struct bq_slice msg,
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
    st = pooled_call(r, &rep, err, 3, argv, lens);
    if (st == BQ_OK) { /* pooled_call leaves rep NULL on failure */
        if (rep->type == REDIS_REPLY_INTEGER)
            *receivers = rep->integer;
        freeReplyObject(rep);
    }
    return st;
}

/* SUBSCRIBE on a connection of its own; the replies are ["subscribe", chan, n] once, then
 * ["message", chan, payload] for each publication. */
static bq_status redis_listen(bq_broker *b, const char *queue,
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

/* ---- Sentinel: following +switch-master ---------------------------------------------------
 * Every new connection asks the sentinels where the master is (conn.c), but connections
 * already open to the old master would go on talking to it until it is reconfigured as a
 * replica, which Sentinel may do only seconds later: writes meanwhile are lost. So a thread
 * subscribes to +switch-master on one sentinel (the next one when that fails) and, when our
 * service switches, bumps the epoch (every older connection now counts as broken) and wakes
 * the blocked fetch. */

static void *watch_sentinels(void *arg)
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
                redis_interrupt(&r->base);
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

static bq_status redis_node(bq_broker *b, char *role, size_t rsize, char *addr, size_t asize,
                            bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    bq_conn *c;
    bq_status st = borrow(r, &c, err);
    if (st != BQ_OK)
        return st;
    redisReply *rep = NULL;
    st = bq_conn_callv(c, &rep, err, "ROLE", NULL);
    snprintf(role, rsize, "unknown");
    if (st == BQ_OK) { /* bq_conn_callv leaves rep NULL on failure */
        if (rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 &&
            rep->element[0]->type == REDIS_REPLY_STRING)
            snprintf(role, rsize, "%s", rep->element[0]->str);
        freeReplyObject(rep);
    }
    snprintf(addr, asize, "%s", bq_conn_address(c));
    bq_pool_return(r->pool, c);
    return st;
}

static bq_status redis_command(bq_broker *b, const char *queue, int argc, const char **argv,
                               const size_t *lens, void **out, bq_err *err)
{
    (void)queue;
    redisReply *rep;
    bq_status st = pooled_call((struct redis_broker *)b, &rep, err, argc, argv, lens);
    *out = rep;
    return st;
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
    if (r->watching) {
        uint64_t one = 1;
        if (write(r->watch_stopfd, &one, sizeof one) != (ssize_t)sizeof one)
            bq_log(BQ_LOG_ERROR, "sentinel_watch_stop_failed", NULL);
        pthread_join(r->watcher, NULL);
    }
    if (r->watch_stopfd >= 0)
        close(r->watch_stopfd);
    bq_conn_close(r->fetch_conn);
    bq_pool_free(r->pool);
    if (r->wakefd >= 0)
        close(r->wakefd);
    bq_tls_ctx_free(r->tls);
    bq_free(r->fk);
    bq_free(r);
}

static const struct bq_broker_ops redis_ops = {
    .push = redis_push,
    .push_unique = redis_push_unique,
    .fetch = redis_fetch,
    .interrupt = redis_interrupt,
    .ack = redis_ack,
    .retry = redis_retry,
    .bury = redis_bury,
    .handback = redis_handback,
    .held = redis_held,
    .rate_limit = redis_rate_limit,
    .controls = redis_controls,
    .promote = redis_promote,
    .heartbeat = redis_heartbeat,
    .reap = redis_reap,
    .unregister = redis_unregister,
    .length = redis_length,
    .range = redis_range,
    .dlq_requeue = redis_dlq_requeue,
    .dlq_remove = redis_dlq_remove,
    .dlq_purge = redis_dlq_purge,
    .publish = redis_publish,
    .listen = redis_listen,
    .node = redis_node,
    .command = redis_command,
    .ping = redis_ping,
    .pool_stats = redis_pool_stats,
    .free = redis_free,
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
    if (url.kind == BQ_URL_CLUSTER) {
        bq_url_free(&url);
        return bq_err_set(err, BQ_EINVAL, "%s: a Cluster URL is for the cluster broker "
                          "(bq_broker_open)", cfg->url_source ? cfg->url_source : "URL");
    }
    struct redis_broker *r = bq_calloc(1, sizeof *r);
    if (r == NULL) {
        bq_url_free(&url);
        return bq_err_set(err, BQ_ENOMEM, "out of memory");
    }
    r->base.ops = &redis_ops;
    r->base.kind = "redis";
    r->fetch_id = -1;
    r->watch_stopfd = -1;
    r->command_timeout = cfg->command_timeout > 0 ? cfg->command_timeout : 5.0;
    r->wait_replicas = cfg->wait_replicas;
    r->wait_timeout = cfg->wait_timeout > 0 ? cfg->wait_timeout : 1.0;
    r->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    bq_url_address(&url, r->base.address, sizeof r->base.address);
    atomic_init(&r->epoch, 0);
    struct bq_conn_opts opts = {.connect_timeout = cfg->connect_timeout,
                                .command_timeout = cfg->command_timeout,
                                .epoch = url.kind == BQ_URL_SENTINEL ? &r->epoch : NULL};
    if (cfg->tls_server_name != NULL)
        snprintf(opts.server_name, sizeof opts.server_name, "%s", cfg->tls_server_name);
    if (r->wakefd < 0) {
        st = bq_err_set(err, BQ_EIO, "eventfd failed");
    } else if (url.tls && (st = bq_tls_ctx_new(&cfg->tls, &r->tls, err)) != BQ_OK) {
        /* err names the file */
    } else {
        opts.tls = r->tls;
        st = bq_pool_new(&url, &opts, cfg->max_connections, cfg->pool_timeout, &r->pool, err);
    }
    if (st == BQ_OK && url.kind == BQ_URL_SENTINEL) {
        r->watch_stopfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        r->watching = r->watch_stopfd >= 0 &&
                      pthread_create(&r->watcher, NULL, watch_sentinels, r) == 0;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (!r->watching)
            st = bq_err_set(err, BQ_EIO, "cannot start the Sentinel watcher");
    }
    bq_url_free(&url);
    if (st != BQ_OK) {
        redis_free(&r->base);
        return st;
    }
    *out = &r->base;
    return BQ_OK;
}
