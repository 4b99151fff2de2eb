/*
 * rstore.c -- the Redis storage: task records in Redis hashes, shared by every process that
 * talks to the same server (see storage.h).
 *
 * The storage is bound to one queue Q (the scheduler's or worker's queue_name) and every key
 * it writes is derived from Q as the broker's are (broker/keys.h), so all of them share Q's
 * Redis Cluster slot and one script may touch any of them:
 *
 *   {Q}:task:<id>        a hash per task: id, state, queue, context_id, history, artifacts,
 *                        metadata, checkpoint, error, requested, worker, attempts, created_at,
 *                        updated_at, state_at (a field is absent when storage.h says NULL)
 *   {Q}:tasks            a sorted set of every task id, scored by created_at (list)
 *   {Q}:tasks:<state>    the same for the tasks in one state (list with a state, such as the
 *                        recovery sweep's "submitted older than ...")
 *
 * A task is found by id alone because the storage's queue names the slot: every process
 * that shares task state must use the same queue_name (the storage's, not the one a task
 * was routed to; a task's own `queue` field is only data). A finished task's hash (completed,
 * failed, canceled, rejected) expires `ttl` seconds after its last change (7 days unless
 * configured; kept for ever when the option is 0); an open one never does. The index entries
 * of expired hashes are removed lazily, by list and a few at each create.
 *
 * Each create, change and remove is one server-side script (the files of lua/binduq/rstore/,
 * embedded in rscripts.h by src/broker/embed.lua; EVALSHA, then EVAL on NOSCRIPT), so every
 * compare-and-set is atomic. Times are the server's clock (TIME in the scripts). JSON columns
 * are kept as text, as the memory storage keeps them. The connection layer is the broker's:
 * the storage opens a broker of its own with the scheduler's settings (or storage.url's)
 * and sends its commands through that broker's `command` (broker.h), which routes by Q's
 * slot, so TLS, ACL users, Sentinel and Cluster work as they do for queues. change_many and
 * start_many are left to the one-by-one fallback (storage.c): a round trip per task.
 */
#include "storage.h"

#include "../broker/broker.h"
#include "../broker/keys.h"
#include "../core/alloc.h"
#include "../core/err.h"
#include "rscripts.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_TTL (7 * 24 * 3600) /* seconds a finished task is kept */
#define MAX_ID 256                  /* bytes of a task id */
#define KEY_SIZE (BQ_KEY_MAX + MAX_ID + 8)

struct rstore {
    bq_storage base;
    bq_broker *b;            /* owned: the pool the commands go through */
    char *queue;             /* owned: the queue whose slot holds every key */
    char prefix[BQ_KEY_MAX]; /* "{Q}:" */
    char ttl[24];            /* seconds a finished task is kept, "0": for ever */
};

enum { R_CREATE = 0, R_CHANGE, R_LIST, R_REMOVE };

static const struct {
    const char *src, *sha, *name;
} scripts[] = {
    {bq_script_create_2, bq_script_create_2_sha, "create-2"},
    {bq_script_change_2, bq_script_change_2_sha, "change-2"},
    {bq_script_list_1, bq_script_list_1_sha, "list-1"},
    {bq_script_remove_2, bq_script_remove_2_sha, "remove-2"},
};

/* ---- Commands ----------------------------------------------------------------------------- */

static bq_status command(struct rstore *r, int argc, const char **argv, const size_t *lens,
                         redisReply **out, bq_err *err)
{
    void *rep = NULL;
    bq_status st = r->b->admin->command(r->b, r->queue, argc, argv, lens, &rep, err);
    *out = rep;
    if (st != BQ_OK) {
        bq_broker_explain_auth(r->b, err);
        if (rep != NULL)
            freeReplyObject(rep);
        *out = NULL;
    }
    return st;
}

#define MAX_ARGS 20

/* Runs script `id` with nkeys keys and nargs NUL-terminated arguments: EVALSHA, then EVAL
 * with its source when the server does not have it cached. *out: the reply (caller frees). */
static bq_status run(struct rstore *r, int id, int nkeys, const char *const *keys, int nargs,
                     const char *const *args, redisReply **out, bq_err *err)
{
    const char *argv[MAX_ARGS + 3];
    char nk[8];
    snprintf(nk, sizeof nk, "%d", nkeys);
    argv[0] = "EVALSHA";
    argv[1] = scripts[id].sha;
    argv[2] = nk;
    int argc = 3;
    for (int i = 0; i < nkeys; i++)
        argv[argc++] = keys[i];
    for (int i = 0; i < nargs; i++)
        argv[argc++] = args[i];
    bq_err e = {.code = BQ_OK};
    bq_err *ep = err != NULL ? err : &e;
    bq_status st = command(r, argc, argv, NULL, out, ep);
    if (st == BQ_EREDIS && strstr(ep->msg, "NOSCRIPT") != NULL) {
        argv[0] = "EVAL";
        argv[1] = scripts[id].src;
        st = command(r, argc, argv, NULL, out, ep);
    }
    if (st != BQ_OK && st != BQ_ENOMEM)
        bq_err_prefix(ep, scripts[id].name);
    return st;
}

/* {Q}:task:<id> into out[KEY_SIZE]. */
static bq_status task_key(const struct rstore *r, const char *id, char *out, bq_err *err)
{
    if (id == NULL || *id == '\0')
        return bq_err_set(err, BQ_EINVAL, "storage: a task needs an id");
    if (strlen(id) >= MAX_ID)
        return bq_err_set(err, BQ_EINVAL, "storage: a task id is longer than %d bytes",
                          MAX_ID - 1);
    snprintf(out, KEY_SIZE, "%stask:%s", r->prefix, id);
    return BQ_OK;
}

/* ---- Replies ------------------------------------------------------------------------------ */

static bool is_str(const redisReply *e)
{
    return e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS;
}

/* Copies s into out[size], cut short if need be. */
static void copy_str(char *out, size_t size, const char *s, size_t n)
{
    if (n >= size)
        n = size - 1;
    memcpy(out, s, n);
    out[n] = '\0';
}

static long long int_of(const redisReply *e)
{
    if (e->type == REDIS_REPLY_INTEGER)
        return e->integer;
    return is_str(e) ? strtoll(e->str, NULL, 10) : 0;
}

/* Reads {[found,] changed, state, requested, attempts} into res. */
static bq_status take_result(const redisReply *rep, bool with_found, struct bq_task_result *res,
                             const char *what, bq_err *err)
{
    memset(res, 0, sizeof *res);
    size_t n = with_found ? 5 : 4, o = with_found ? 1 : 0;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != n || !is_str(rep->element[o + 1]) ||
        !is_str(rep->element[o + 2]))
        return bq_err_set(err, BQ_EPROTO, "storage %s: unexpected reply from Redis", what);
    res->found = with_found ? int_of(rep->element[0]) == 1 : true;
    res->changed = int_of(rep->element[o]) == 1;
    copy_str(res->state, sizeof res->state, rep->element[o + 1]->str, rep->element[o + 1]->len);
    copy_str(res->requested, sizeof res->requested, rep->element[o + 2]->str,
             rep->element[o + 2]->len);
    res->attempts = (int)int_of(rep->element[o + 3]);
    return BQ_OK;
}

/* Fills rec from a flat field/value array (HGETALL); false when out of memory. */
static bool take_rec(const redisReply *h, struct bq_task_rec *rec)
{
    memset(rec, 0, sizeof *rec);
    static const char *const names[] = {"id",        "context_id", "state",    "queue",
                                        "history",   "artifacts",  "metadata", "checkpoint",
                                        "error",     "requested",  "worker"};
    char **fields[] = {&rec->id,        &rec->context_id, &rec->state,     &rec->queue,
                       &rec->history,   &rec->artifacts,  &rec->metadata,  &rec->checkpoint,
                       &rec->error,     &rec->requested,  &rec->worker};
    bool ok = true;
    for (size_t i = 0; i + 1 < h->elements; i += 2) {
        const redisReply *k = h->element[i], *v = h->element[i + 1];
        if (!is_str(k) || !is_str(v))
            continue;
        for (size_t f = 0; f < sizeof names / sizeof names[0]; f++) {
            if (strcmp(k->str, names[f]) == 0) {
                bq_free(*fields[f]);
                *fields[f] = bq_strndup(v->str, v->len);
                ok = ok && *fields[f] != NULL;
                break;
            }
        }
        if (strcmp(k->str, "attempts") == 0)
            rec->attempts = atoi(v->str);
        else if (strcmp(k->str, "created_at") == 0)
            rec->created_at = strtod(v->str, NULL);
        else if (strcmp(k->str, "updated_at") == 0)
            rec->updated_at = strtod(v->str, NULL);
        else if (strcmp(k->str, "state_at") == 0)
            rec->state_at = strtod(v->str, NULL);
    }
    /* JSON columns are never NULL in a loaded record */
    if (ok && rec->history == NULL)
        ok = (rec->history = bq_strdup("[]")) != NULL;
    if (ok && rec->artifacts == NULL)
        ok = (rec->artifacts = bq_strdup("[]")) != NULL;
    if (ok && rec->metadata == NULL)
        ok = (rec->metadata = bq_strdup("{}")) != NULL;
    if (ok && rec->state == NULL)
        ok = (rec->state = bq_strdup("")) != NULL;
    if (!ok)
        bq_task_rec_clear(rec);
    return ok;
}

/* ---- Arguments ---------------------------------------------------------------------------- */

/* An optional argument as the scripts take it: "" for NULL, else "=" and the value; *buf
 * (freed by the caller) holds it. */
static const char *opt(const char *v, char **buf, bool *oom)
{
    if (v == NULL)
        return "";
    size_t n = strlen(v);
    *buf = bq_malloc(n + 2);
    if (*buf == NULL) {
        *oom = true;
        return "";
    }
    (*buf)[0] = '=';
    memcpy(*buf + 1, v, n + 1);
    return *buf;
}

/* True if s is a JSON array as far as its brackets go (the memory storage's check). */
static bool looks_like_array(const char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
        s++;
    size_t n = strlen(s);
    while (n > 0 && strchr(" \t\r\n", s[n - 1]))
        n--;
    return n >= 2 && s[0] == '[' && s[n - 1] == ']';
}

/* ---- Operations --------------------------------------------------------------------------- */

static bq_status r_create(bq_storage *s, const struct bq_task_new *t, struct bq_task_result *res,
                          bq_err *err)
{
    struct rstore *r = (struct rstore *)s;
    const char *state = t->state ? t->state : "submitted";
    char key[KEY_SIZE], idx[BQ_KEY_MAX + 8], att[16];
    if (t->id == NULL || *t->id == '\0')
        return bq_err_set(err, BQ_EINVAL, "storage create: a task needs an id");
    if (!bq_task_state_valid(state))
        return bq_err_set(err, BQ_EINVAL, "storage create: unknown state '%.30s'", state);
    bq_status st = task_key(r, t->id, key, err);
    if (st != BQ_OK)
        return st;
    snprintf(idx, sizeof idx, "%stasks", r->prefix);
    snprintf(att, sizeof att, "%d", t->attempts > 0 ? t->attempts : 0);
    char *b[4] = {NULL, NULL, NULL, NULL};
    bool oom = false;
    const char *keys[2] = {key, idx};
    const char *args[11] = {
        r->prefix, t->id, state, t->history ? t->history : "[]",
        t->metadata ? t->metadata : "{}", att,
        opt(t->context_id, &b[0], &oom), opt(t->queue, &b[1], &oom), opt(t->worker, &b[2], &oom),
        opt(t->requested && *t->requested ? t->requested : NULL, &b[3], &oom), r->ttl,
    };
    redisReply *rep = NULL;
    if (oom)
        st = bq_err_set(err, BQ_ENOMEM, "storage create: out of memory");
    else if ((st = run(r, R_CREATE, 2, keys, 11, args, &rep, err)) == BQ_OK)
        st = take_result(rep, false, res, "create", err);
    for (int i = 0; i < 4; i++)
        bq_free(b[i]);
    if (rep != NULL)
        freeReplyObject(rep);
    return st;
}

static bq_status r_get(bq_storage *s, const char *id, struct bq_task_rec *out, bool *found,
                       bq_err *err)
{
    struct rstore *r = (struct rstore *)s;
    memset(out, 0, sizeof *out);
    *found = false;
    char key[KEY_SIZE];
    bq_status st = task_key(r, id, key, err);
    if (st != BQ_OK)
        return st;
    const char *argv[2] = {"HGETALL", key};
    redisReply *rep;
    if ((st = command(r, 2, argv, NULL, &rep, err)) != BQ_OK)
        return st;
    if (rep->type != REDIS_REPLY_ARRAY) {
        st = bq_err_set(err, BQ_EPROTO, "storage get: unexpected reply from Redis");
    } else if (rep->elements > 0) {
        if (take_rec(rep, out))
            *found = true;
        else
            st = bq_err_set(err, BQ_ENOMEM, "storage get: out of memory");
    }
    freeReplyObject(rep);
    return st;
}

static bq_status r_change(bq_storage *s, const struct bq_task_change *c,
                          struct bq_task_result *res, bq_err *err)
{
    struct rstore *r = (struct rstore *)s;
    memset(res, 0, sizeof *res);
    if (c->to != NULL && !bq_task_state_valid(c->to))
        return bq_err_set(err, BQ_EINVAL, "storage change: unknown state '%.30s'", c->to);
    if ((c->append_history && !looks_like_array(c->append_history)) ||
        (c->append_artifacts && !looks_like_array(c->append_artifacts)))
        return bq_err_set(err, BQ_EINVAL, "storage change: history and artifacts must be JSON "
                          "arrays");
    char key[KEY_SIZE], idx[BQ_KEY_MAX + 8];
    bq_status st = task_key(r, c->id, key, err);
    if (st != BQ_OK)
        return st;
    snprintf(idx, sizeof idx, "%stasks", r->prefix);
    char *b[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    bool oom = false;
    const char *keys[2] = {key, idx};
    const char *args[13] = {
        r->prefix,
        c->id,
        opt(c->from, &b[0], &oom),
        c->to ? c->to : "",
        c->append_history ? c->append_history : "",
        c->append_artifacts ? c->append_artifacts : "",
        opt(c->checkpoint, &b[1], &oom),
        opt(c->error, &b[2], &oom),
        opt(c->requested, &b[3], &oom),
        opt(c->worker, &b[4], &oom),
        c->count_attempt ? "1" : "0",
        opt(c->if_requested, &b[5], &oom),
        r->ttl,
    };
    redisReply *rep = NULL;
    if (oom)
        st = bq_err_set(err, BQ_ENOMEM, "storage change: out of memory");
    else if ((st = run(r, R_CHANGE, 2, keys, 13, args, &rep, err)) == BQ_OK)
        st = take_result(rep, true, res, "change", err);
    for (int i = 0; i < 6; i++)
        bq_free(b[i]);
    if (rep != NULL)
        freeReplyObject(rep);
    return st;
}

static bq_status r_list(bq_storage *s, const struct bq_task_filter *f, struct bq_task_rec **out,
                        size_t *n, bq_err *err)
{
    struct rstore *r = (struct rstore *)s;
    static const struct bq_task_filter all = {NULL, NULL, 0, 0};
    if (f == NULL)
        f = &all;
    *out = NULL;
    *n = 0;
    if (f->state != NULL && !bq_task_state_valid(f->state))
        return BQ_OK; /* no task is in a state that does not exist */
    char idx[BQ_KEY_MAX + 32], cut[40], limit[16];
    snprintf(idx, sizeof idx, "%stasks%s%s", r->prefix, f->state ? ":" : "",
             f->state ? f->state : "");
    cut[0] = '0';
    cut[1] = '\0';
    if (f->older_than > 0) {
        /* the cut is the server's clock less older_than: TIME first, for the same clock the
         * scripts stamp with */
        const char *argv[1] = {"TIME"};
        redisReply *t;
        bq_status st = command(r, 1, argv, NULL, &t, err);
        if (st != BQ_OK)
            return st;
        double now = 0;
        if (t->type == REDIS_REPLY_ARRAY && t->elements == 2 && is_str(t->element[0]) &&
            is_str(t->element[1]))
            now = strtod(t->element[0]->str, NULL) + strtod(t->element[1]->str, NULL) / 1e6;
        freeReplyObject(t);
        if (now <= 0)
            return bq_err_set(err, BQ_EPROTO, "storage list: unexpected reply to TIME");
        snprintf(cut, sizeof cut, "%.6f", now - f->older_than);
    }
    snprintf(limit, sizeof limit, "%d", f->limit > 0 ? f->limit : 100);
    char *b = NULL;
    bool oom = false;
    const char *keys[1] = {idx};
    const char *args[5] = {r->prefix, opt(f->context_id, &b, &oom), f->state ? f->state : "",
                           cut, limit};
    if (oom)
        return bq_err_set(err, BQ_ENOMEM, "storage list: out of memory");
    redisReply *rep = NULL;
    bq_status st = run(r, R_LIST, 1, keys, 5, args, &rep, err);
    bq_free(b);
    if (st != BQ_OK)
        return st;
    if (rep->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(rep);
        return bq_err_set(err, BQ_EPROTO, "storage list: unexpected reply from Redis");
    }
    struct bq_task_rec *v = bq_calloc(rep->elements > 0 ? rep->elements : 1, sizeof *v);
    if (v == NULL) {
        freeReplyObject(rep);
        return bq_err_set(err, BQ_ENOMEM, "storage list: out of memory");
    }
    size_t k = 0;
    for (size_t i = 0; i < rep->elements; i++) {
        if (rep->element[i]->type != REDIS_REPLY_ARRAY)
            continue;
        if (!take_rec(rep->element[i], &v[k])) {
            st = bq_err_set(err, BQ_ENOMEM, "storage list: out of memory");
            break;
        }
        k++;
    }
    freeReplyObject(rep);
    if (st != BQ_OK) {
        bq_task_recs_free(v, k);
        return st;
    }
    *out = v;
    *n = k;
    return BQ_OK;
}

static bq_status r_remove(bq_storage *s, const char *id, bool *found, bq_err *err)
{
    struct rstore *r = (struct rstore *)s;
    *found = false;
    char key[KEY_SIZE], idx[BQ_KEY_MAX + 8];
    bq_status st = task_key(r, id, key, err);
    if (st != BQ_OK)
        return st;
    snprintf(idx, sizeof idx, "%stasks", r->prefix);
    const char *keys[2] = {key, idx}, *args[2] = {r->prefix, id};
    redisReply *rep;
    if ((st = run(r, R_REMOVE, 2, keys, 2, args, &rep, err)) != BQ_OK)
        return st;
    *found = int_of(rep) == 1;
    freeReplyObject(rep);
    return BQ_OK;
}

static bq_status r_ping(bq_storage *s, bq_err *err)
{
    struct rstore *r = (struct rstore *)s;
    double rtt;
    bq_status st = r->b->ops->ping(r->b, &rtt, err);
    if (st != BQ_OK)
        bq_broker_explain_auth(r->b, err);
    return st;
}

static void r_destroy(bq_storage *s)
{
    struct rstore *r = (struct rstore *)s;
    bq_broker_free(r->b);
    bq_free(r->queue);
    bq_free(r);
}

static const struct bq_storage_ops redis_ops = {
    "redis", r_create, r_get, r_change, r_list, r_remove, r_ping, r_destroy, NULL, NULL,
};

bq_status bq_storage_redis_open(const struct bq_storage_config *cfg, bq_storage **out,
                                bq_err *err)
{
    *out = NULL;
    if (cfg->redis == NULL || cfg->redis->url == NULL || *cfg->redis->url == '\0')
        return bq_err_set(err, BQ_EINVAL, "storage: type \"redis\" needs a Redis URL "
                          "(storage.url, or the scheduler's: scheduler.url or REDIS_URL)");
    const char *queue = cfg->queue != NULL ? cfg->queue : "bindu:tasks";
    const char *why = bq_queue_name_problem(queue);
    if (why != NULL)
        return bq_err_set(err, BQ_EINVAL, "storage: queue name '%.60s' %s", queue, why);
    if (cfg->ttl > 1e9)
        return bq_err_set(err, BQ_EINVAL, "storage: ttl must be at most 1e9 seconds");
    struct rstore *r = bq_calloc(1, sizeof *r);
    if (r == NULL || (r->queue = bq_strdup(queue)) == NULL) {
        bq_free(r);
        return bq_err_set(err, BQ_ENOMEM, "storage: out of memory");
    }
    bq_key_prefix(queue, r->prefix, sizeof r->prefix);
    long long ttl = cfg->ttl < 0 ? 0 : cfg->ttl == 0 ? DEFAULT_TTL : (long long)(cfg->ttl + 0.5);
    if (cfg->ttl > 0 && ttl < 1)
        ttl = 1;
    snprintf(r->ttl, sizeof r->ttl, "%lld", ttl);
    bq_status st = bq_broker_open(cfg->redis, &r->b, err);
    if (st == BQ_OK && strcmp(r->b->kind, "memory") == 0)
        st = bq_err_set(err, BQ_EINVAL, "storage: type \"redis\" needs a Redis URL");
    if (st != BQ_OK) {
        bq_broker_free(r->b);
        bq_free(r->queue);
        bq_free(r);
        return st;
    }
    r->base.ops = &redis_ops;
    atomic_init(&r->base.refs, 1);
    *out = &r->base;
    return BQ_OK;
}
