/*
 * storage.c -- what the storage implementations share: opening by configuration, reference
 * counting, records, and the state names (see storage.h).
 */
#include "storage.h"

#include "../core/alloc.h"
#include "../core/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const open_states[] = {"submitted", "working", "input-required",
                                          "auth-required", "paused"};
static const char *const terminal_states[] = {"completed", "failed", "canceled", "rejected"};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

bool bq_task_state_terminal(const char *state)
{
    /* The memory storage keeps the names below (bq_task_state_name): their addresses answer
     * without comparing text. */
    for (size_t i = 0; i < COUNT(terminal_states); i++) {
        if (state == terminal_states[i])
            return true;
    }
    for (size_t i = 0; i < COUNT(open_states); i++) {
        if (state == open_states[i])
            return false;
    }
    for (size_t i = 0; state != NULL && i < COUNT(terminal_states); i++) {
        if (strcmp(state, terminal_states[i]) == 0)
            return true;
    }
    return false;
}

const char *bq_task_state_name(const char *state)
{
    if (state == NULL)
        return NULL;
    /* The first letters tell the names apart but for two, so mostly one strcmp. */
    for (size_t i = 0; i < COUNT(open_states); i++) {
        if (state[0] == open_states[i][0] && strcmp(state, open_states[i]) == 0)
            return open_states[i];
    }
    for (size_t i = 0; i < COUNT(terminal_states); i++) {
        if (state[0] == terminal_states[i][0] && strcmp(state, terminal_states[i]) == 0)
            return terminal_states[i];
    }
    return NULL;
}

bool bq_task_state_valid(const char *state)
{
    return bq_task_state_name(state) != NULL;
}

bool bq_task_state_in(const char *state, const char *from)
{
    if (from == NULL)
        return bq_task_state_valid(state) && !bq_task_state_terminal(state);
    size_t n = strlen(state);
    for (const char *p = from;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == n && strncmp(p, state, n) == 0)
            return true;
        if (comma == NULL)
            return false;
        p = comma + 1;
    }
}

void bq_task_rec_clear(struct bq_task_rec *r)
{
    if (r == NULL)
        return;
    char **f[] = {&r->id,       &r->context_id, &r->state,      &r->queue,
                  &r->history,  &r->artifacts,  &r->metadata,   &r->checkpoint,
                  &r->error,    &r->requested,  &r->worker};
    for (size_t i = 0; i < COUNT(f); i++)
        bq_free(*f[i]);
    memset(r, 0, sizeof *r);
}

void bq_task_recs_free(struct bq_task_rec *r, size_t n)
{
    for (size_t i = 0; r != NULL && i < n; i++)
        bq_task_rec_clear(&r[i]);
    bq_free(r);
}

bq_status bq_storage_open(const struct bq_storage_config *cfg, bq_storage **out, bq_err *err)
{
    *out = NULL;
    const char *type = cfg ? cfg->type : NULL;
    const char *url = cfg ? cfg->url : NULL;
    if (type == NULL)
        type = url != NULL && *url != '\0' ? "postgres" : "memory";
    if (strcmp(type, "memory") == 0)
        return bq_storage_mem_open(cfg ? cfg->max_tasks : 0, out, err);
    if (strcmp(type, "postgres") == 0 || strcmp(type, "postgresql") == 0) {
        if (url == NULL || *url == '\0')
            return bq_err_set(err, BQ_EINVAL, "storage: type \"postgres\" needs a url "
                              "(storage.url or DATABASE_URL)");
        return bq_storage_pg_open(cfg, out, err);
    }
    if (strcmp(type, "redis") == 0)
        return bq_storage_redis_open(cfg, out, err);
    return bq_err_set(err, BQ_EINVAL, "storage: unknown type '%.40s' (expected \"memory\", "
                      "\"postgres\" or \"redis\")", type);
}

bq_storage *bq_storage_ref(bq_storage *s)
{
    if (s != NULL)
        atomic_fetch_add(&s->refs, 1);
    return s;
}

void bq_storage_unref(bq_storage *s)
{
    if (s != NULL && atomic_fetch_sub(&s->refs, 1) == 1)
        s->ops->destroy(s);
}

/* Whether the storage batches and the n ids are distinct (n small: quadratic is fine). */
static bool batchable(bool op, const char *const *ids, size_t n, size_t stride)
{
    bool ok = op && n > 1 && n <= BQ_CHANGE_MANY_MAX;
    for (size_t i = 0; ok && i < n; i++) {
        const char *a = *(const char *const *)((const char *)ids + i * stride);
        for (size_t j = 0; ok && j < i; j++) {
            const char *b = *(const char *const *)((const char *)ids + j * stride);
            ok = a != NULL && b != NULL && strcmp(a, b) != 0;
        }
    }
    return ok;
}

/* One task of a batch made one by one failed with e: res says so, alone. */
static void fail_one(struct bq_task_result *res, const bq_err *e)
{
    memset(res, 0, sizeof *res);
    res->status = e->code;
    snprintf(res->why, sizeof res->why, "%.*s", (int)sizeof res->why - 1, e->msg);
}

/* After task i of n made one by one failed with e (st): whether the batch goes on. A task
 * the server refused (BQ_EPG) fails alone. Any other error (a lost connection, no connection
 * free) ends it: with nothing made yet it is the call's (*ret, results zeroed); else task i
 * (its fate unknown) and those after it fail with it and the call succeeds. */
static bool one_failed(bq_status st, const bq_err *e, size_t i, size_t n, bool made,
                       struct bq_task_result *res, bq_status *ret, bq_err *err)
{
    if (st == BQ_EPG) {
        fail_one(&res[i], e);
        return true;
    }
    if (!made) {
        memset(res, 0, n * sizeof *res);
        if (err != NULL)
            *err = *e;
        *ret = st;
    } else {
        for (size_t k = i; k < n; k++)
            fail_one(&res[k], e);
        *ret = BQ_OK;
    }
    return false;
}

bq_status bq_storage_start_many(bq_storage *s, const struct bq_task_new *tasks, size_t n,
                                struct bq_task_result *res, bq_err *err)
{
    memset(res, 0, n * sizeof *res);
    if (batchable(s->ops->start_many != NULL, &tasks[0].id, n, sizeof *tasks))
        return s->ops->start_many(s, tasks, n, res, err);
    bool made = false;
    for (size_t i = 0; i < n; i++) {
        struct bq_task_change c = {.id = tasks[i].id, .from = "submitted", .to = "working",
                                   .requested = "", .worker = tasks[i].worker,
                                   .count_attempt = true};
        bq_err e;
        bq_status st = s->ops->change(s, &c, &res[i], &e);
        if (st == BQ_OK && !res[i].found) {
            struct bq_task_new t = tasks[i];
            t.state = "working";
            t.attempts = 1;
            st = s->ops->create(s, &t, &res[i], &e);
        }
        if (st == BQ_OK) {
            made = true;
            continue;
        }
        bq_status ret;
        if (!one_failed(st, &e, i, n, made, res, &ret, err))
            return ret;
    }
    return BQ_OK;
}

bq_status bq_storage_change_many(bq_storage *s, const struct bq_task_change *changes, size_t n,
                                 struct bq_task_result *res, bq_err *err)
{
    memset(res, 0, n * sizeof *res);
    bool plain = true; /* the batch statements compare states only */
    for (size_t i = 0; i < n && plain; i++)
        plain = changes[i].if_requested == NULL;
    if (plain && batchable(s->ops->change_many != NULL, &changes[0].id, n, sizeof *changes)) {
        bq_status st = s->ops->change_many(s, changes, n, res, err);
        if (st != BQ_EPG)
            return st;
        /* Refused for its data (a text jsonb cannot hold, say): nothing was made, so one by
         * one below, and the change that holds the bad text fails alone. A lost connection
         * (BQ_EIO) is not retried so: the batch may have been made. */
        memset(res, 0, n * sizeof *res);
    }
    bool made = false;
    for (size_t i = 0; i < n; i++) {
        bq_err e;
        bq_status st = s->ops->change(s, &changes[i], &res[i], &e);
        if (st == BQ_OK) {
            made = true;
            continue;
        }
        bq_status ret;
        if (!one_failed(st, &e, i, n, made, res, &ret, err))
            return ret;
    }
    return BQ_OK;
}

static int cmp_ids(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

bq_status bq_storage_change_start_many(bq_storage *s, const struct bq_task_change *changes,
                                       size_t nc, const struct bq_task_new *tasks, size_t nt,
                                       struct bq_task_result *rc, struct bq_task_result *rt,
                                       bool *started, bq_err *err)
{
    memset(rc, 0, nc * sizeof *rc);
    memset(rt, 0, nt * sizeof *rt);
    *started = false;
    /* One statement when the storage has it and the ids are distinct across both (sorted:
     * up to 128 of them, the pairs would be 8,000 comparisons). */
    bool one = s->ops->change_start_many != NULL && nc >= 1 && nt >= 1 &&
               nc <= BQ_CHANGE_MANY_MAX && nt <= BQ_CHANGE_MANY_MAX;
    const char *ids[2 * BQ_CHANGE_MANY_MAX];
    for (size_t i = 0; one && i < nc; i++) {
        ids[i] = changes[i].id;
        one = ids[i] != NULL && changes[i].if_requested == NULL;
    }
    for (size_t i = 0; one && i < nt; i++) {
        ids[nc + i] = tasks[i].id;
        one = ids[nc + i] != NULL;
    }
    if (one) {
        qsort(ids, nc + nt, sizeof *ids, cmp_ids);
        for (size_t i = 1; one && i < nc + nt; i++)
            one = strcmp(ids[i - 1], ids[i]) != 0;
    }
    if (one) {
        bq_status st = s->ops->change_start_many(s, changes, nc, tasks, nt, rc, rt, err);
        *started = st == BQ_OK;
        if (st != BQ_EPG)
            return st;
        /* Refused for its data (a text jsonb cannot hold, say): rolled back, so each half
         * again on its own below. The changes made one by one if need be, the one with the
         * bad data failing alone; the starts, if refused, are left to each task. */
    }
    bq_status st = bq_storage_change_many(s, changes, nc, rc, err);
    if (st == BQ_OK)
        *started = bq_storage_start_many(s, tasks, nt, rt, err) == BQ_OK;
    return st;
}
