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
 *   {Q}:expiring         the finished tasks whose hash expires, scored by when
 *
 * A task is found by id alone because the storage's queue names the slot: every process
 * that shares task state must use the same queue_name (the storage's, not the one a task
 * was routed to; a task's own `queue` field is only data). A finished task's hash (completed,
 * failed, canceled, rejected) expires `ttl` seconds after its last change (7 days unless
 * configured; kept for ever when the option is 0); an open one never does. The index entries
 * of expired hashes are removed soon after: each create removes those of up to 8 tasks, or
 * twice as many as it records, whose time in {Q}:expiring has passed, and list drops any it
 * meets.
 *
 * Each create, change and remove is one server-side script (the files of lua/binduq/rstore/,
 * embedded in rscripts.h by src/broker/embed.lua; EVALSHA, then EVAL on NOSCRIPT), so every
 * compare-and-set is atomic. Times are the server's clock (TIME in the scripts). JSON columns
 * are kept as text, as the memory storage keeps them. The connection layer is the broker's:
 * the storage opens a broker of its own with the scheduler's settings (or storage.url's)
 * and sends its commands through that broker's `command` (broker.h), which routes by Q's
 * slot, so TLS, ACL users, Sentinel and Cluster work as they do for queues. create and
 * change take any number of tasks, so a batch of changes (change_many) is one script, and a
 * batch of starts (start_many) one, or two when some tasks were never recorded.
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
    {bq_script_create_N, bq_script_create_N_sha, "storage create-N"},
    {bq_script_change_N, bq_script_change_N_sha, "storage change-N"},
    {bq_script_list_1, bq_script_list_1_sha, "storage list-1"},
    {bq_script_remove_2, bq_script_remove_2_sha, "storage remove-2"},
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

/* Runs script `id` with nkeys keys and nargs NUL-terminated arguments: EVALSHA, then EVAL
 * with its source when the server does not have it cached. *out: the reply (caller frees). */
static bq_status run(struct rstore *r, int id, int nkeys, const char *const *keys, int nargs,
                     const char *const *args, redisReply **out, bq_err *err)
{
    *out = NULL;
    const char **argv = bq_calloc((size_t)(3 + nkeys + nargs), sizeof *argv);
    if (argv == NULL)
        return bq_err_set(err, BQ_ENOMEM, "storage: out of memory");
    char nk[16];
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
    bq_free(argv);
    if (st != BQ_OK && st != BQ_ENOMEM)
        bq_err_prefix(ep, scripts[id].name);
    return st;
}

/* ---- Argument lists -------------------------------------------------------------------------
 * A script's keys or arguments, with the strings made for them owned by the list. A failed
 * allocation is remembered (oom) and reported once the list is complete. */

struct list {
    const char **v;
    char **owned;
    size_t n, nowned, cap; /* v and owned have room for cap each */
    bool oom;
};

/* Makes room for cap entries (no list is longer than its caller works out). */
static void list_init(struct list *l, size_t cap)
{
    memset(l, 0, sizeof *l);
    l->v = bq_calloc(cap, sizeof *l->v);
    l->owned = bq_calloc(cap, sizeof *l->owned);
    l->cap = cap;
    l->oom = l->v == NULL || l->owned == NULL;
}

static void add(struct list *l, const char *s)
{
    if (l->oom || l->n >= l->cap) {
        l->oom = true;
        return;
    }
    l->v[l->n++] = s;
}

/* Adds s, which the list then owns (NULL: out of memory). */
static void add_owned(struct list *l, char *s)
{
    if (s == NULL || l->oom || l->nowned >= l->cap) {
        bq_free(s);
        l->oom = true;
        return;
    }
    l->owned[l->nowned++] = s;
    add(l, s);
}

/* An optional argument as the scripts take it: "" for NULL, else "=" and the value. */
static void add_opt(struct list *l, const char *v)
{
    if (v == NULL) {
        add(l, "");
        return;
    }
    size_t n = strlen(v);
    char *b = bq_malloc(n + 2);
    if (b != NULL) {
        b[0] = '=';
        memcpy(b + 1, v, n + 1);
    }
    add_owned(l, b);
}

static void add_int(struct list *l, long long x)
{
    char *b = bq_malloc(24);
    if (b != NULL)
        snprintf(b, 24, "%lld", x);
    add_owned(l, b);
}

static void list_free(struct list *l)
{
    for (size_t i = 0; i < l->nowned; i++)
        bq_free(l->owned[i]);
    bq_free(l->owned);
    bq_free(l->v);
    memset(l, 0, sizeof *l);
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

/* Reads e[0..4) {changed, state, requested, attempts}, or e[0..5) with found first, into
 * res. */
static bq_status take_result(redisReply *const *e, bool with_found, struct bq_task_result *res,
                             const char *what, bq_err *err)
{
    memset(res, 0, sizeof *res);
    size_t o = with_found ? 1 : 0;
    if (!is_str(e[o + 1]) || !is_str(e[o + 2]))
        return bq_err_set(err, BQ_EPROTO, "storage %s: unexpected reply from Redis", what);
    res->found = with_found ? int_of(e[0]) == 1 : true;
    res->changed = int_of(e[o]) == 1;
    copy_str(res->state, sizeof res->state, e[o + 1]->str, e[o + 1]->len);
    copy_str(res->requested, sizeof res->requested, e[o + 2]->str, e[o + 2]->len);
    res->attempts = (int)int_of(e[o + 3]);
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

/* Adds task t's key to keys ({Q}:task:<id>). */
static bq_status add_key(const struct rstore *r, struct list *keys, const char *id, bq_err *err)
{
    char *key = bq_malloc(KEY_SIZE);
    if (key == NULL) {
        keys->oom = true;
        return BQ_OK;
    }
    bq_status st = task_key(r, id, key, err);
    if (st != BQ_OK) {
        bq_free(key);
        return st;
    }
    add_owned(keys, key);
    return BQ_OK;
}

/* Creates tasks[0..n) in one script (create-N); res[i] as create's. */
static bq_status create_many(struct rstore *r, const struct bq_task_new *tasks, size_t n,
                             struct bq_task_result *res, bq_err *err)
{
    struct list keys, args;
    list_init(&keys, n + 1);
    list_init(&args, 2 + 9 * n);
    char idx[BQ_KEY_MAX + 8];
    snprintf(idx, sizeof idx, "%stasks", r->prefix);
    add(&keys, idx);
    add(&args, r->prefix);
    add(&args, r->ttl);
    bq_status st = BQ_OK;
    for (size_t i = 0; i < n && st == BQ_OK; i++) {
        const struct bq_task_new *t = &tasks[i];
        const char *state = t->state ? t->state : "submitted";
        if (t->id == NULL || *t->id == '\0')
            st = bq_err_set(err, BQ_EINVAL, "storage create: a task needs an id");
        else if (!bq_task_state_valid(state))
            st = bq_err_set(err, BQ_EINVAL, "storage create: unknown state '%.30s'", state);
        else
            st = add_key(r, &keys, t->id, err);
        add(&args, t->id);
        add(&args, state);
        add(&args, t->history ? t->history : "[]");
        add(&args, t->metadata ? t->metadata : "{}");
        add_int(&args, t->attempts > 0 ? t->attempts : 0);
        add_opt(&args, t->context_id);
        add_opt(&args, t->queue);
        add_opt(&args, t->worker);
        add_opt(&args, t->requested && *t->requested ? t->requested : NULL);
    }
    redisReply *rep = NULL;
    if (st == BQ_OK && (keys.oom || args.oom))
        st = bq_err_set(err, BQ_ENOMEM, "storage create: out of memory");
    if (st == BQ_OK)
        st = run(r, R_CREATE, (int)keys.n, keys.v, (int)args.n, args.v, &rep, err);
    if (st == BQ_OK && (rep->type != REDIS_REPLY_ARRAY || rep->elements != 4 * n))
        st = bq_err_set(err, BQ_EPROTO, "storage create: unexpected reply from Redis");
    for (size_t i = 0; st == BQ_OK && i < n; i++)
        st = take_result(rep->element + 4 * i, false, &res[i], "create", err);
    if (rep != NULL)
        freeReplyObject(rep);
    list_free(&keys);
    list_free(&args);
    return st;
}

static bq_status r_create(bq_storage *s, const struct bq_task_new *t, struct bq_task_result *res,
                          bq_err *err)
{
    return create_many((struct rstore *)s, t, 1, res, err);
}

static bq_status r_create_many(bq_storage *s, const struct bq_task_new *t, size_t n,
                               struct bq_task_result *res, bq_err *err)
{
    return create_many((struct rstore *)s, t, n, res, err);
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

/* Makes changes[0..n) in one script (change-N); res[i] as change's. */
static bq_status change_many(struct rstore *r, const struct bq_task_change *changes, size_t n,
                             struct bq_task_result *res, bq_err *err)
{
    memset(res, 0, n * sizeof *res);
    struct list keys, args;
    list_init(&keys, n + 1);
    list_init(&args, 2 + 11 * n);
    char idx[BQ_KEY_MAX + 8];
    snprintf(idx, sizeof idx, "%stasks", r->prefix);
    add(&keys, idx);
    add(&args, r->prefix);
    add(&args, r->ttl);
    bq_status st = BQ_OK;
    for (size_t i = 0; i < n && st == BQ_OK; i++) {
        const struct bq_task_change *c = &changes[i];
        if (c->to != NULL && !bq_task_state_valid(c->to))
            st = bq_err_set(err, BQ_EINVAL, "storage change: unknown state '%.30s'", c->to);
        else if ((c->append_history && !looks_like_array(c->append_history)) ||
                 (c->append_artifacts && !looks_like_array(c->append_artifacts)))
            st = bq_err_set(err, BQ_EINVAL, "storage change: history and artifacts must be "
                            "JSON arrays");
        else
            st = add_key(r, &keys, c->id, err);
        add(&args, c->id ? c->id : "");
        add_opt(&args, c->from);
        add(&args, c->to ? c->to : "");
        add(&args, c->append_history ? c->append_history : "");
        add(&args, c->append_artifacts ? c->append_artifacts : "");
        add_opt(&args, c->checkpoint);
        add_opt(&args, c->error);
        add_opt(&args, c->requested);
        add_opt(&args, c->worker);
        add(&args, c->count_attempt ? "1" : "0");
        add_opt(&args, c->if_requested);
    }
    redisReply *rep = NULL;
    if (st == BQ_OK && (keys.oom || args.oom))
        st = bq_err_set(err, BQ_ENOMEM, "storage change: out of memory");
    if (st == BQ_OK)
        st = run(r, R_CHANGE, (int)keys.n, keys.v, (int)args.n, args.v, &rep, err);
    if (st == BQ_OK && (rep->type != REDIS_REPLY_ARRAY || rep->elements != 5 * n))
        st = bq_err_set(err, BQ_EPROTO, "storage change: unexpected reply from Redis");
    for (size_t i = 0; st == BQ_OK && i < n; i++)
        st = take_result(rep->element + 5 * i, true, &res[i], "change", err);
    if (st != BQ_OK)
        memset(res, 0, n * sizeof *res);
    if (rep != NULL)
        freeReplyObject(rep);
    list_free(&keys);
    list_free(&args);
    return st;
}

static bq_status r_change(bq_storage *s, const struct bq_task_change *c,
                          struct bq_task_result *res, bq_err *err)
{
    return change_many((struct rstore *)s, c, 1, res, err);
}

static bq_status r_change_many(bq_storage *s, const struct bq_task_change *changes, size_t n,
                               struct bq_task_result *res, bq_err *err)
{
    return change_many((struct rstore *)s, changes, n, res, err);
}

/* The changes of starting tasks[0..n) (submitted -> working, the attempt counted). */
static void start_changes(const struct bq_task_new *tasks, size_t n, struct bq_task_change *c)
{
    for (size_t i = 0; i < n; i++)
        c[i] = (struct bq_task_change){.id = tasks[i].id, .from = "submitted", .to = "working",
                                       .requested = "", .worker = tasks[i].worker,
                                       .count_attempt = true};
}

/* Creates working, with one attempt, the tasks[i] whose start found no record (res[i]). */
static bq_status create_unfound(struct rstore *r, const struct bq_task_new *tasks, size_t n,
                                struct bq_task_result *res, bq_err *err)
{
    struct bq_task_new fresh[BQ_CHANGE_MANY_MAX];
    size_t at[BQ_CHANGE_MANY_MAX], m = 0;
    for (size_t i = 0; i < n; i++) {
        if (!res[i].found) {
            fresh[m] = tasks[i];
            fresh[m].state = "working";
            fresh[m].attempts = 1;
            at[m++] = i;
        }
    }
    if (m == 0)
        return BQ_OK;
    struct bq_task_result made[BQ_CHANGE_MANY_MAX];
    bq_status st = create_many(r, fresh, m, made, err);
    for (size_t i = 0; st == BQ_OK && i < m; i++)
        res[at[i]] = made[i];
    if (st != BQ_OK)
        memset(res, 0, n * sizeof *res);
    return st;
}

/* bq_storage_start_many's start: one script for the changes, and one more creating the tasks
 * nobody recorded (a producer that does not record them, such as Bindu's). */
static bq_status r_start_many(bq_storage *s, const struct bq_task_new *tasks, size_t n,
                              struct bq_task_result *res, bq_err *err)
{
    struct rstore *r = (struct rstore *)s;
    struct bq_task_change c[BQ_CHANGE_MANY_MAX];
    if (n == 0 || n > BQ_CHANGE_MANY_MAX)
        return bq_err_set(err, BQ_EINVAL, "storage start: from 1 to %d tasks at once",
                          BQ_CHANGE_MANY_MAX);
    start_changes(tasks, n, c);
    bq_status st = change_many(r, c, n, res, err);
    return st != BQ_OK ? st : create_unfound(r, tasks, n, res, err);
}

/* bq_storage_change_start_many's: the changes and the starts in one script (it makes them
 * one after the other), then the creations as r_start_many's. */
static bq_status r_change_start_many(bq_storage *s, const struct bq_task_change *changes,
                                     size_t nc, const struct bq_task_new *tasks, size_t nt,
                                     struct bq_task_result *rc, struct bq_task_result *rt,
                                     bq_err *err)
{
    struct rstore *r = (struct rstore *)s;
    struct bq_task_change c[2 * BQ_CHANGE_MANY_MAX];
    struct bq_task_result res[2 * BQ_CHANGE_MANY_MAX];
    if (nc > BQ_CHANGE_MANY_MAX || nt == 0 || nt > BQ_CHANGE_MANY_MAX)
        return bq_err_set(err, BQ_EINVAL, "storage change_start_many: from 1 to %d of each",
                          BQ_CHANGE_MANY_MAX);
    memcpy(c, changes, nc * sizeof *c);
    start_changes(tasks, nt, c + nc);
    bq_status st = change_many(r, c, nc + nt, res, err);
    if (st != BQ_OK)
        return st;
    memcpy(rc, res, nc * sizeof *rc);
    memcpy(rt, res + nc, nt * sizeof *rt);
    return create_unfound(r, tasks, nt, rt, err);
}

static bq_status r_list(bq_storage *s, const struct bq_task_filter *f, struct bq_task_rec **out,
                        size_t *n, bq_err *err)
{
    struct rstore *r = (struct rstore *)s;
    static const struct bq_task_filter all = {NULL, NULL, 0, 0, 0};
    if (f == NULL)
        f = &all;
    *out = NULL;
    *n = 0;
    if (f->state != NULL && !bq_task_state_valid(f->state))
        return BQ_OK; /* no task is in a state that does not exist */
    char idx[BQ_KEY_MAX + 32], cut[40], limit[16], skip[16];
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
    const char *keys[1] = {idx};
    struct list args;
    list_init(&args, 6);
    add(&args, r->prefix);
    add_opt(&args, f->context_id);
    add(&args, f->state ? f->state : "");
    add(&args, cut);
    add(&args, limit);
    snprintf(skip, sizeof skip, "%d", f->offset > 0 ? f->offset : 0);
    add(&args, skip);
    redisReply *rep = NULL;
    bq_status st = args.oom ? bq_err_set(err, BQ_ENOMEM, "storage list: out of memory")
                            : run(r, R_LIST, 1, keys, 6, args.v, &rep, err);
    list_free(&args);
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
    "redis", r_create, r_get, r_change, r_list, r_remove, r_ping, r_destroy, r_change_many,
    r_start_many, r_create_many, r_change_start_many,
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
    if (!(cfg->ttl <= 1e9)) /* NaN too */
        return bq_err_set(err, BQ_EINVAL, "storage: ttl must be a number of seconds up to 1e9");
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
    /* the scheduler's settings, but for the pool's own options when the section has them */
    struct bq_broker_config bc = *cfg->redis;
    if (cfg->max_connections > 0)
        bc.max_connections = cfg->max_connections;
    if (cfg->connect_timeout > 0)
        bc.connect_timeout = cfg->connect_timeout;
    bq_status st = bq_broker_open(&bc, &r->b, err);
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
