/*
 * redis.c -- the Redis broker: opening and freeing it, its server-side scripts, one command
 * or script on a pooled connection, and the producers' push.
 *
 * The other operations live in redis_fetch.c, redis_lease.c, redis_admin.c and
 * redis_control.c, each by concern; redis_int.h, which they share, has the map.
 *
 * Short commands (push, acks, retries, dead-letters, heartbeats) borrow from a bounded pool;
 * those that send one command or one script do it through bq_redis_call and bq_redis_script,
 * which give the connection back on every path. The fetch loop has its own connection
 * (redis_fetch.c).
 *
 * Multi-step changes are server-side scripts (one file each under lua/binduq/redis/, embedded by
 * embed.lua): EVALSHA, falling back to EVAL (which also loads the script) on NOSCRIPT.
 */
#include "redis_int.h"
#include "scripts.h"

#include "../core/alloc.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/log.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* Arguments per LPUSH when pushing a large batch: one command per chunk, all pipelined. */
#define PUSH_CHUNK 1000

/* ---- Scripts --------------------------------------------------------------------------------- */

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
    SCRIPT(S_DELAY, "delay-N", delay_N),
    SCRIPT(S_CRON, "cron-4", cron_4),
    SCRIPT(S_REPORT, "report-N", report_N),
    SCRIPT(S_DEDUP, "dedup-N", dedup_N),
};
#undef SCRIPT

/* Queues "EVALSHA sha nkeys keys... args..." (or EVAL with the source when `eval`). */
bq_status bq_redis_append_script(bq_conn *c, enum script_id id, bool eval, int nkeys,
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

/* Runs a script on c and returns its reply (caller frees). Error replies become errors
 * named after the script. */
bq_status bq_redis_run_script(bq_conn *c, enum script_id id, int nkeys, const char *const *keys,
                              int nargs, const char *const *args, const size_t *arglens,
                              double timeout, redisReply **out, bq_err *err)
{
    *out = NULL;
    double deadline = bq_now_mono() + timeout;
    redisReply *r = NULL;
    bq_status st = BQ_OK;
    for (int eval = 0; eval < 2; eval++) {
        st = bq_redis_append_script(c, id, eval, nkeys, keys, nargs, args, arglens, err);
        if (st == BQ_OK)
            st = bq_conn_flush(c, deadline, -1, err);
        if (st == BQ_OK)
            st = bq_conn_read(c, &r, deadline, -1, err);
        if (st != BQ_OK || !bq_redis_is_noscript(r))
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
void bq_redis_load_scripts(bq_conn *c, double timeout)
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

/* ---- One command or script on a pooled connection -------------------------------------------- */

/* One command on a pooled connection: borrow, bq_conn_call (lens NULL: NUL-terminated
 * arguments), return. The connection goes back whatever happened; a call that broke it
 * (I/O error, timeout) leaves it marked broken and bq_pool_return closes it. *out as
 * bq_conn_call (NULL if the borrow failed). */
bq_status bq_redis_call(struct redis_broker *r, redisReply **out, bq_err *err, int argc,
                        const char **argv, const size_t *lens)
{
    if (out != NULL)
        *out = NULL;
    bq_conn *c;
    bq_status st = bq_pool_borrow(r->pool, &c, err);
    if (st != BQ_OK)
        return st;
    st = bq_conn_call(c, out, err, argc, argv, lens);
    bq_pool_return(r->pool, c);
    return st;
}

/* One script on a pooled connection (bq_redis_run_script: EVALSHA, EVAL on NOSCRIPT), as
 * bq_redis_call: *out is its reply (caller frees), NULL on failure. */
bq_status bq_redis_script(struct redis_broker *r, enum script_id id, int nkeys,
                          const char *const *keys, int nargs, const char *const *args,
                          const size_t *arglens, redisReply **out, bq_err *err)
{
    *out = NULL;
    bq_conn *c;
    bq_status st = bq_pool_borrow(r->pool, &c, err);
    if (st != BQ_OK)
        return st;
    st = bq_redis_run_script(c, id, nkeys, keys, nargs, args, arglens, r->command_timeout, out,
                             err);
    bq_pool_return(r->pool, c);
    return st;
}

/* The same for a script whose reply is an integer: *result (may be NULL), 0 if it is not. */
bq_status bq_redis_script_int(struct redis_broker *r, enum script_id id, int nkeys,
                              const char *const *keys, int nargs, const char *const *args,
                              const size_t *arglens, long long *result, bq_err *err)
{
    redisReply *rep;
    bq_status st = bq_redis_script(r, id, nkeys, keys, nargs, args, arglens, &rep, err);
    if (st != BQ_OK)
        return st;
    if (result != NULL)
        *result = rep->type == REDIS_REPLY_INTEGER ? rep->integer : 0;
    freeReplyObject(rep);
    return BQ_OK;
}

/* ---- Push ------------------------------------------------------------------------------------ */

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

/* A deduplication key's time to live as the scripts get it: whole seconds, at least 1.
 * Callers check the ttl (bq_duration_problem); it is clamped all the same, as a cast of a
 * double out of long long's range is undefined. */
static void ttl_text(char *out, size_t size, double ttl)
{
    snprintf(out, size, "%lld",
             (long long)(ttl >= 1 ? (ttl <= BQ_MAX_DURATION ? ttl : BQ_MAX_DURATION) : 1));
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

/* The plain push's first half (push_send): LPUSH (RPUSH) Q msgs in chunks and the bell, sent;
 * w->conn is left borrowed for plain_recv. */
static bq_status plain_send(struct redis_broker *r, const char *queue, const struct bq_slice *msgs,
                            size_t n, struct bq_push_wait *w, bq_err *err)
{
    char bell[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "bell", bell, err);
    bq_conn *c;
    if (st != BQ_OK || (st = bq_pool_borrow(r->pool, &c, err)) != BQ_OK)
        return st;
    st = append_push(c, to_back(r, queue), queue, bell, msgs, n, &w->ncmds, err);
    w->deadline = bq_now_mono() + r->command_timeout + (double)n / 50000.0;
    if (st == BQ_OK)
        st = bq_conn_flush(c, w->deadline, -1, err);
    if (st != BQ_OK) {
        bq_conn_mark_broken(c);
        bq_pool_return(r->pool, c);
        return st;
    }
    w->conn = c;
    w->unique = false;
    w->n = n;
    return BQ_OK;
}

/* Its second half: the answers, *pushed the messages the server confirmed; gives the
 * connection back. */
static bq_status plain_recv(struct redis_broker *r, struct bq_push_wait *w, size_t *pushed,
                            bq_err *err)
{
    bq_conn *c = w->conn;
    bq_status st = BQ_OK;
    size_t n = w->n, chunk = n < PUSH_CHUNK ? n : PUSH_CHUNK;
    *pushed = 0;
    for (size_t i = 0; i < w->ncmds && st == BQ_OK; i++) {
        redisReply *rep;
        st = bq_conn_read(c, &rep, w->deadline, -1, err);
        if (st != BQ_OK)
            break;
        if (i + 2 >= w->ncmds && rep->type == REDIS_REPLY_ERROR) {
            /* The bell is a wake-up, not data: the operations are queued all the same, and
             * an error would have a retry queue them twice (a worker blocking on the bell
             * reports it). */
            bq_log(BQ_LOG_WARN, "bell_refused", "address", r->base.address, "error", rep->str,
                   NULL);
            freeReplyObject(rep);
            continue;
        }
        st = bq_reply_check(rep, i + 2 < w->ncmds ? "LPUSH" : "bell", err);
        freeReplyObject(rep);
        if (st == BQ_OK && i + 2 < w->ncmds)
            *pushed += (i + 1) * chunk <= n ? chunk : n - i * chunk;
    }
    /* A refused command (WRONGTYPE, OOM) stops the reading with later replies unread: the
     * connection's next borrower would read them as its own. */
    if (st != BQ_OK)
        bq_conn_mark_broken(c);
    if (st == BQ_OK && (st = wait_replicated(r, c, err)) != BQ_OK)
        *pushed = 0;
    bq_pool_return(r->pool, c);
    w->conn = NULL;
    return st;
}

static bq_status redis_push(bq_broker *b, const char *queue, const struct bq_slice *msgs,
                            size_t n, size_t *pushed, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    *pushed = 0;
    if (n == 0)
        return BQ_OK;
    struct bq_push_wait w = {0};
    bq_status st = plain_send(r, queue, msgs, n, &w, err);
    return st == BQ_OK ? plain_recv(r, &w, pushed, err) : st;
}

/* What dedup-N writes over a duplicate's copy before removing it; no message may equal it. */
static const char dedup_hole[] = "\x01" "binduq:duplicate" "\x01";
#define DEDUP_HOLE_LEN (sizeof dedup_hole - 1)

/* A deduplicated push of at least this many goes natively in a MULTI (dedup-N); a smaller
 * one, where the MULTI's extra round trip would cost more than it saves, by enqueue-N. */
#define UNIQUE_MULTI_MIN 64

/* The keys {Q}:dedup:<key> of keys[0..m) into dk, and their addresses into k[2..]. */
static bq_status dedup_keys(const char *queue, const char *const *keys, size_t m, const char **k,
                            char (*dk)[BQ_KEY_MAX], bq_err *err)
{
    for (size_t j = 0; j < m; j++) {
        char suffix[BQ_KEY_MAX];
        snprintf(suffix, sizeof suffix, "dedup:%s", keys[j]);
        bq_status st = bq_key_derive_err(queue, suffix, dk[j], err);
        if (st != BQ_OK)
            return st;
        k[2 + j] = dk[j];
    }
    return BQ_OK;
}

/* What a deduplicated push shares across its chunks. */
struct unique {
    struct redis_broker *r;
    bq_conn *c;
    const char *queue, *bell, *ttl, *front;
    const char **k, **a; /* room for PUSH_CHUNK + 2 each */
    size_t *al;
    char (*dk)[BQ_KEY_MAX];
    char bellkey[BQ_KEY_MAX], ttls[32];
};

/* Checks the messages (none may be the bytes dedup-N reserves), names the bell, and takes
 * room for chunks of up to min(n, PUSH_CHUNK) and a connection. unique_close undoes it. */
static bq_status unique_open(struct unique *u, struct redis_broker *r, const char *queue,
                             const struct bq_slice *msgs, size_t n, double ttl, bq_err *err)
{
    memset(u, 0, sizeof *u);
    u->r = r;
    u->queue = queue;
    u->bell = u->bellkey;
    u->ttl = u->ttls;
    u->front = bq_broker_front(&r->base, queue);
    for (size_t i = 0; i < n; i++) {
        if (msgs[i].len == DEDUP_HOLE_LEN && memcmp(msgs[i].p, dedup_hole, DEDUP_HOLE_LEN) == 0)
            return bq_err_set(err, BQ_EINVAL, "enqueue: message %zu is the bytes dedup-N "
                              "reserves for a duplicate's place", i + 1);
    }
    bq_status st = bq_key_derive_err(queue, "bell", u->bellkey, err);
    if (st != BQ_OK)
        return st;
    ttl_text(u->ttls, sizeof u->ttls, ttl);
    size_t cap = n < PUSH_CHUNK ? n : PUSH_CHUNK;
    u->k = bq_calloc(cap + 2, sizeof *u->k);
    u->a = bq_calloc(cap + 2, sizeof *u->a);
    u->al = bq_calloc(cap + 2, sizeof *u->al);
    u->dk = bq_calloc(cap, sizeof *u->dk);
    if (u->k == NULL || u->a == NULL || u->al == NULL || u->dk == NULL)
        return bq_err_set(err, BQ_ENOMEM, "enqueue: out of memory");
    return bq_pool_borrow(r->pool, &u->c, err);
}

/* Frees what unique_open took; the connection goes back unless keep. */
static void unique_close(struct unique *u, bool keep)
{
    if (u->c != NULL && !keep)
        bq_pool_return(u->r->pool, u->c);
    bq_free(u->k);
    bq_free(u->a);
    bq_free(u->al);
    bq_free(u->dk);
}

/* enqueue-N over msgs[0..n), one call per chunk of PUSH_CHUNK (keys and messages as
 * arguments): a piece of core.push_runs (at most 2 x RUNS_PIECE - 1) is one call, so it is
 * decided whole or not at all (it was two calls of up to 500, and a failure of the second
 * left the first queued but reported undecided). */
static bq_status unique_by_script(struct unique *u, const struct bq_slice *msgs,
                                  const char *const *keys, size_t n, bool *pushed, bq_err *err)
{
    bq_status st = BQ_OK;
    for (size_t i = 0; i < n && st == BQ_OK; i += PUSH_CHUNK) {
        size_t m = n - i < PUSH_CHUNK ? n - i : PUSH_CHUNK;
        u->k[0] = u->queue;
        u->k[1] = u->bell;
        u->a[0] = u->ttl;
        u->al[0] = strlen(u->ttl);
        u->a[1] = u->front;
        u->al[1] = 1;
        st = dedup_keys(u->queue, keys + i, m, u->k, u->dk, err);
        for (size_t j = 0; j < m; j++) {
            u->a[2 + j] = msgs[i + j].p;
            u->al[2 + j] = msgs[i + j].len;
        }
        redisReply *rep = NULL;
        if (st == BQ_OK)
            st = bq_redis_run_script(u->c, S_ENQUEUE, (int)m + 2, u->k, (int)m + 2, u->a, u->al,
                                     u->r->command_timeout, &rep, err);
        if (st == BQ_OK && (rep->type != REDIS_REPLY_ARRAY || rep->elements != m))
            st = bq_err_set(err, BQ_EPROTO, "enqueue-N: unexpected reply");
        for (size_t j = 0; st == BQ_OK && j < m; j++) {
            if (rep->element[j]->type != REDIS_REPLY_INTEGER) {
                st = bq_err_set(err, BQ_EPROTO, "enqueue-N: unexpected reply");
                break;
            }
            pushed[i + j] = rep->element[j]->integer == 1;
        }
        if (rep != NULL)
            freeReplyObject(rep);
    }
    return st;
}

/* Sends MULTI on its own and reads its answer: *refused when the server refused it (an ACL
 * without it, a proxy without transactions); an error only for a failed round trip. A
 * refusal is remembered (and said once): every later deduplicated push goes by enqueue-N. */
static bq_status multi_open(struct unique *u, double deadline, bool *refused, bq_err *err)
{
    static const char *multi[] = {"MULTI"};
    redisReply *rep = NULL;
    bq_status st = bq_conn_append(u->c, 1, multi, NULL, err);
    if (st == BQ_OK)
        st = bq_conn_flush(u->c, deadline, -1, err);
    if (st == BQ_OK)
        st = bq_conn_read(u->c, &rep, deadline, -1, err);
    *refused = st == BQ_OK && bq_reply_check(rep, "MULTI", NULL) != BQ_OK;
    if (rep != NULL)
        freeReplyObject(rep);
    if (*refused && !atomic_exchange(&u->r->no_multi, true))
        bq_log(BQ_LOG_WARN, "multi_refused", "queue", u->queue, "hint",
               "the server refused MULTI: deduplicated batches are pushed through the "
               "enqueue-N script (slower); allow MULTI and EXEC to the producers' user",
               NULL);
    return st;
}

/* Appends, inside a MULTI the server accepted: LPUSH (RPUSH) Q msgs[0..m), EVAL dedup-N with
 * their keys only (it takes the free keys and takes back the copies of the duplicates),
 * EXEC. Three answers follow (unique_replies). */
static bq_status unique_append(struct unique *u, const char *cmd, const struct bq_slice *msgs,
                               const char *const *keys, size_t m, bq_err *err)
{
    static const char *exec[] = {"EXEC"};
    u->a[0] = cmd;
    u->al[0] = 5;
    u->a[1] = u->queue;
    u->al[1] = strlen(u->queue);
    for (size_t j = 0; j < m; j++) {
        u->a[2 + j] = msgs[j].p;
        u->al[2 + j] = msgs[j].len;
    }
    bq_status st = bq_conn_append(u->c, (int)m + 2, u->a, u->al, err);
    u->k[0] = u->queue;
    u->k[1] = u->bell;
    if (st == BQ_OK)
        st = dedup_keys(u->queue, keys, m, u->k, u->dk, err);
    const char *sa[] = {u->ttl, u->front, dedup_hole};
    size_t sal[] = {strlen(u->ttl), 1, DEDUP_HOLE_LEN};
    /* EVAL, not EVALSHA: a NOSCRIPT would come at EXEC, after the push it has to follow. */
    if (st == BQ_OK)
        st = bq_redis_append_script(u->c, S_DEDUP, true, (int)m + 2, u->k, 3, sa, sal, err);
    if (st == BQ_OK)
        st = bq_conn_append(u->c, 1, exec, NULL, err);
    return st;
}

/* Reads unique_append's three answers: QUEUED, QUEUED, and EXEC's [LPUSH's, dedup-N's],
 * which says which of the m were pushed. The first refusal is the one reported (a queued
 * command's, such as MOVED, not EXECABORT's). A failure leaves the connection broken (it may
 * have replies unread). */
static bq_status unique_replies(bq_conn *c, size_t m, bool *pushed, double deadline,
                                bq_err *err)
{
    static const char *names[] = {"LPUSH", "dedup-N", "EXEC"};
    bq_status st = BQ_OK;
    for (int rn = 0; rn < 3 && st == BQ_OK; rn++) {
        redisReply *rep = NULL;
        if ((st = bq_conn_read(c, &rep, deadline, -1, err)) != BQ_OK)
            break;
        if ((st = bq_reply_check(rep, names[rn], err)) == BQ_OK && rn == 2) {
            if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2)
                st = bq_err_set(err, BQ_EPROTO, "enqueue: unexpected EXEC reply");
            else if ((st = bq_reply_check(rep->element[0], "LPUSH", err)) == BQ_OK &&
                     (st = bq_reply_check(rep->element[1], "dedup-N", err)) == BQ_OK) {
                const redisReply *out = rep->element[1];
                if (out->type != REDIS_REPLY_ARRAY || out->elements != m)
                    st = bq_err_set(err, BQ_EPROTO, "dedup-N: unexpected reply");
                for (size_t j = 0; st == BQ_OK && j < m; j++)
                    pushed[j] = out->element[j]->type == REDIS_REPLY_INTEGER &&
                                out->element[j]->integer == 1;
            }
        }
        freeReplyObject(rep);
    }
    if (st != BQ_OK)
        bq_conn_mark_broken(c);
    return st;
}

/* The natively pushed path (a MULTI already accepted for the first chunk): per chunk of
 * PUSH_CHUNK, unique_append, and the next chunk's MULTI in the same round trip; that chunk's
 * rest is sent only once its MULTI was accepted, so a push never runs outside its
 * transaction. *done: how many were decided; a refused MULTI stops there (the rest goes by
 * enqueue-N). A failure leaves the connection broken (it may be inside a MULTI, or have
 * replies unread): closing it drops whatever was queued. */
static bq_status unique_by_multi(struct unique *u, const char *cmd, const struct bq_slice *msgs,
                                 const char *const *keys, size_t n, bool *pushed, size_t *done,
                                 bq_err *err)
{
    static const char *multi[] = {"MULTI"};
    double deadline = bq_now_mono() + u->r->command_timeout + (double)n / 50000.0;
    bq_status st = BQ_OK;
    *done = 0;
    for (size_t i = 0; i < n && st == BQ_OK; i += PUSH_CHUNK) {
        size_t m = n - i < PUSH_CHUNK ? n - i : PUSH_CHUNK;
        bool more = i + m < n;
        st = unique_append(u, cmd, msgs + i, keys + i, m, err);
        if (st == BQ_OK && more)
            st = bq_conn_append(u->c, 1, multi, NULL, err);
        if (st == BQ_OK)
            st = bq_conn_flush(u->c, deadline, -1, err);
        if (st == BQ_OK)
            st = unique_replies(u->c, m, pushed + i, deadline, err);
        bool refused = false;
        if (st == BQ_OK && more) { /* the next chunk's MULTI */
            redisReply *rep = NULL;
            st = bq_conn_read(u->c, &rep, deadline, -1, err);
            refused = st == BQ_OK && bq_reply_check(rep, "MULTI", NULL) != BQ_OK;
            if (rep != NULL)
                freeReplyObject(rep);
        }
        if (st == BQ_OK)
            *done = i + m;
        if (st == BQ_OK && refused) {
            atomic_store(&u->r->no_multi, true);
            break;
        }
    }
    if (st != BQ_OK)
        bq_conn_mark_broken(u->c);
    return st;
}

/* Deduplicated push (bq_broker_ops.push_unique). A batch of UNIQUE_MULTI_MIN or more goes
 * natively in a MULTI, checked by dedup-N, where the server allows MULTI (asked once, then
 * remembered: an ACL that refuses it keeps every push on enqueue-N); anything else by
 * enqueue-N, the messages as arguments of the script. */
static bq_status redis_push_unique(bq_broker *b, const char *queue, const struct bq_slice *msgs,
                                   const char *const *keys, size_t n, double ttl, bool *pushed,
                                   bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    for (size_t i = 0; i < n; i++)
        pushed[i] = false;
    if (n == 0)
        return BQ_OK;
    struct unique u;
    bq_status st = unique_open(&u, r, queue, msgs, n, ttl, err);
    size_t done = 0;
    if (st == BQ_OK && n >= UNIQUE_MULTI_MIN && !atomic_load(&r->no_multi)) {
        bool refused = false;
        st = multi_open(&u, bq_now_mono() + r->command_timeout, &refused, err);
        if (st == BQ_OK && !refused)
            st = unique_by_multi(&u, to_back(r, queue), msgs, keys, n, pushed, &done, err);
    }
    if (st == BQ_OK && done < n)
        st = unique_by_script(&u, msgs + done, keys + done, n - done, pushed + done, err);
    if (st == BQ_OK && (st = wait_replicated(r, u.c, err)) != BQ_OK) {
        for (size_t i = 0; i < n; i++)
            pushed[i] = false;
    }
    unique_close(&u, false);
    return st;
}

/* bq_broker_ops.push_send: a plain push, or a deduplicated one of UNIQUE_MULTI_MIN to
 * PUSH_CHUNK messages while the server takes MULTI, is sent and left to push_recv; any other
 * is made whole here. */
static bq_status redis_push_send(bq_broker *b, const char *queue, const struct bq_slice *msgs,
                                 const char *const *keys, size_t n, double ttl,
                                 struct bq_push_wait *w, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    w->conn = NULL;
    w->n = n;
    for (size_t i = 0; i < n; i++)
        w->pushed[i] = false;
    if (n == 0)
        return BQ_OK;
    if (keys == NULL)
        return plain_send(r, queue, msgs, n, w, err);
    if (n < UNIQUE_MULTI_MIN || n > PUSH_CHUNK || atomic_load(&r->no_multi))
        return redis_push_unique(b, queue, msgs, keys, n, ttl, w->pushed, err);
    struct unique u;
    bool refused = false;
    w->deadline = bq_now_mono() + r->command_timeout + (double)n / 50000.0;
    bq_status st = unique_open(&u, r, queue, msgs, n, ttl, err);
    if (st == BQ_OK)
        st = multi_open(&u, w->deadline, &refused, err);
    if (st == BQ_OK && !refused)
        st = unique_append(&u, to_back(r, queue), msgs, keys, n, err);
    if (st == BQ_OK && !refused)
        st = bq_conn_flush(u.c, w->deadline, -1, err);
    if (st != BQ_OK && u.c != NULL)
        bq_conn_mark_broken(u.c);
    bool sent = st == BQ_OK && !refused;
    if (sent) {
        w->conn = u.c;
        w->unique = true;
        w->ncmds = 3;
    }
    unique_close(&u, sent);
    if (st == BQ_OK && refused) /* remembered: this goes by enqueue-N */
        return redis_push_unique(b, queue, msgs, keys, n, ttl, w->pushed, err);
    return st;
}

/* bq_broker_ops.push_recv. */
static bq_status redis_push_recv(bq_broker *b, struct bq_push_wait *w, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    if (w->conn == NULL)
        return BQ_OK;
    if (!w->unique) {
        size_t pushed = 0;
        bq_status st = plain_recv(r, w, &pushed, err);
        for (size_t i = 0; i < w->n; i++)
            w->pushed[i] = i < pushed;
        return st;
    }
    bq_conn *c = w->conn;
    w->conn = NULL;
    bq_status st = unique_replies(c, w->n, w->pushed, w->deadline, err);
    if (st == BQ_OK && (st = wait_replicated(r, c, err)) != BQ_OK) {
        for (size_t i = 0; i < w->n; i++)
            w->pushed[i] = false;
    }
    bq_pool_return(r->pool, c);
    return st;
}

/* One delay-N call for ops[0..n) (keys and messages travel as arguments). */
static bq_status delay_chunk(struct redis_broker *r, bq_conn *c, const char *queue,
                             const char *const *fixed, const struct bq_delayed *ops, size_t n,
                             bool *pushed, bq_err *err)
{
    size_t nk = 3, na = 3;
    const char **k = bq_calloc(n + 3, sizeof *k);
    const char **a = bq_calloc(3 * n + 3, sizeof *a);
    size_t *al = bq_calloc(3 * n + 3, sizeof *al);
    char (*dk)[BQ_KEY_MAX] = bq_calloc(n, sizeof *dk);
    char (*when)[32] = bq_calloc(n, sizeof *when);
    bq_status st = BQ_OK;
    if (k == NULL || a == NULL || al == NULL || dk == NULL || when == NULL)
        st = bq_err_set(err, BQ_ENOMEM, "delay: out of memory");
    for (size_t i = 0; i < 3 && st == BQ_OK; i++) {
        k[i] = fixed[i];
        a[i] = fixed[3 + i];
        al[i] = strlen(a[i]);
    }
    for (size_t j = 0; j < n && st == BQ_OK; j++) {
        const struct bq_delayed *d = &ops[j];
        if (d->run_at > 0)
            snprintf(when[j], sizeof when[j], "@%lld", llround(d->run_at * 1000.0));
        else
            snprintf(when[j], sizeof when[j], "+%lld", llround(d->delay > 0 ? d->delay * 1000.0 : 0));
        if (d->key != NULL) {
            char suffix[BQ_KEY_MAX];
            snprintf(suffix, sizeof suffix, "dedup:%s", d->key);
            st = bq_key_derive_err(queue, suffix, dk[j], err);
            k[nk++] = dk[j];
        }
        a[na] = when[j];
        al[na++] = strlen(when[j]);
        a[na] = d->key != NULL ? "1" : "0";
        al[na++] = 1;
        a[na] = d->msg.p;
        al[na++] = d->msg.len;
    }
    redisReply *rep = NULL;
    if (st == BQ_OK)
        st = bq_redis_run_script(c, S_DELAY, (int)nk, k, (int)na, a, al, r->command_timeout,
                                 &rep, err);
    if (st == BQ_OK && (rep->type != REDIS_REPLY_ARRAY || rep->elements != n))
        st = bq_err_set(err, BQ_EPROTO, "delay-N: unexpected reply");
    for (size_t j = 0; st == BQ_OK && j < n; j++)
        pushed[j] = rep->element[j]->type == REDIS_REPLY_INTEGER && rep->element[j]->integer == 1;
    if (rep != NULL)
        freeReplyObject(rep);
    bq_free(k);
    bq_free(a);
    bq_free(al);
    bq_free(dk);
    bq_free(when);
    return st;
}

static bq_status redis_push_delayed(bq_broker *b, const char *queue,
                                    const struct bq_delayed *ops, size_t n, double ttl,
                                    bool *pushed, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    for (size_t i = 0; i < n; i++)
        pushed[i] = false;
    if (n == 0)
        return BQ_OK;
    char bell[BQ_KEY_MAX], delayed[BQ_KEY_MAX], control[BQ_KEY_MAX], ttls[32];
    bq_status st = bq_key_derive_err(queue, "bell", bell, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(queue, "delayed", delayed, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(queue, "control", control, err);
    if (st != BQ_OK)
        return st;
    ttl_text(ttls, sizeof ttls, ttl);
    const char *fixed[] = {queue, bell, delayed, ttls, bq_broker_front(b, queue), control};
    bq_conn *c = NULL;
    if ((st = bq_pool_borrow(r->pool, &c, err)) != BQ_OK)
        return st;
    for (size_t i = 0; i < n && st == BQ_OK; i += 500)
        st = delay_chunk(r, c, queue, fixed, ops + i, n - i < 500 ? n - i : 500, pushed + i, err);
    if (st == BQ_OK && (st = wait_replicated(r, c, err)) != BQ_OK) {
        for (size_t i = 0; i < n; i++)
            pushed[i] = false;
    }
    bq_pool_return(r->pool, c);
    return st;
}

/* ---- The node, and the broker ---------------------------------------------------------------- */

static bq_status redis_node(bq_broker *b, char *role, size_t rsize, char *addr, size_t asize,
                            bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    bq_conn *c;
    bq_status st = bq_pool_borrow(r->pool, &c, err);
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
    bq_status st = bq_redis_call((struct redis_broker *)b, &rep, err, argc, argv, lens);
    *out = rep;
    return st;
}

static bq_status redis_ping(bq_broker *b, double *rtt, bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    bq_conn *c;
    bq_status st = bq_pool_borrow(r->pool, &c, err);
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
    .push_send = redis_push_send,
    .push_recv = redis_push_recv,
    .push_delayed = redis_push_delayed,
    .cron = bq_redis_cron,
    .fetch = bq_redis_fetch,
    .interrupt = bq_redis_interrupt,
    .ack = bq_redis_ack,
    .retry = bq_redis_retry,
    .bury = bq_redis_bury,
    .handback = bq_redis_handback,
    .held = bq_redis_held,
    .rate_limit = bq_redis_rate_limit,
    .controls = bq_redis_controls,
    .promote = bq_redis_promote,
    .heartbeat = bq_redis_heartbeat,
    .report = bq_redis_report,
    .reap = bq_redis_reap,
    .unregister = bq_redis_unregister,
    .publish = bq_redis_publish,
    .listen = bq_redis_listen,
    .feed_add = bq_redis_feed_add,
    .feed_read = bq_redis_feed_read,
    .feed_last = bq_redis_feed_last,
    .feed_wake = bq_redis_feed_wake,
    .feed_close = bq_redis_feed_close,
    .ping = redis_ping,
    .free = redis_free,
};

static const struct bq_broker_admin_ops redis_admin_ops = {
    .length = bq_redis_length,
    .range = bq_redis_range,
    .dlq_requeue = bq_redis_dlq_requeue,
    .dlq_remove = bq_redis_dlq_remove,
    .dlq_purge = bq_redis_dlq_purge,
    .node = redis_node,
    .command = redis_command,
    .pool_stats = redis_pool_stats,
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
    r->base.admin = &redis_admin_ops;
    r->base.kind = "redis";
    r->base.feed_max = cfg->feed_max > 0 ? cfg->feed_max : BQ_FEED_MAX_DEFAULT;
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
                      pthread_create(&r->watcher, NULL, bq_redis_watch_sentinels, r) == 0;
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
