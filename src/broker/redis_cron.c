/*
 * redis_cron.c -- recurring schedules on Redis: one cron-4 call claims a schedule's ticks and
 * queues their runs, or pauses, resumes or removes it (broker.h, "Recurring schedules").
 */
#include "redis_int.h"

#include "../core/alloc.h"

#include <stdio.h>
#include <string.h>

static const char *const ACTIONS[] = {
    [BQ_CRON_FIRE] = "fire",
    [BQ_CRON_PAUSE] = "pause",
    [BQ_CRON_RESUME] = "resume",
    [BQ_CRON_REMOVE] = "remove",
};

/* A schedule's name: 1 to 100 bytes of letters, digits, '_', '-', '.' (it is part of hash
 * fields and task ids). */
static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 100)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-' || ch == '.'))
            return false;
    }
    return true;
}

static long long reply_int(const redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer;
    return 0;
}

bq_status bq_redis_cron(bq_broker *b, const char *queue, const char *name,
                        enum bq_cron_action action, struct bq_slice decl,
                        const struct bq_tick *ticks, size_t n, struct bq_cron_res *res,
                        bq_err *err)
{
    struct redis_broker *r = (struct redis_broker *)b;
    memset(res, 0, sizeof *res);
    res->last = -1;
    if (!name_ok(name))
        return bq_err_set(err, BQ_EINVAL, "cron: a schedule's name is 1 to 100 letters, digits, "
                          "'_', '-' or '.'");
    if (action < BQ_CRON_FIRE || action > BQ_CRON_REMOVE || (action != BQ_CRON_FIRE && n > 0))
        return bq_err_set(err, BQ_EINVAL, "cron: bad action");
    if (n > 10000)
        return bq_err_set(err, BQ_EINVAL, "cron: at most 10000 ticks at once");
    char bell[BQ_KEY_MAX], delayed[BQ_KEY_MAX], cron[BQ_KEY_MAX], control[BQ_KEY_MAX];
    bq_status st = bq_key_derive_err(queue, "bell", bell, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(queue, "delayed", delayed, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(queue, "cron", cron, err);
    if (st == BQ_OK)
        st = bq_key_derive_err(queue, "control", control, err);
    if (st != BQ_OK)
        return st;
    size_t nargs = 5 + 3 * n;
    const char **args = bq_calloc(nargs, sizeof *args);
    size_t *lens = bq_calloc(nargs, sizeof *lens);
    char (*nums)[2][24] = bq_calloc(n ? n : 1, sizeof *nums);
    if (args == NULL || lens == NULL || nums == NULL) {
        bq_free(args);
        bq_free(lens);
        bq_free(nums);
        return bq_err_set(err, BQ_ENOMEM, "cron: out of memory");
    }
    args[0] = name;
    args[1] = ACTIONS[action];
    args[2] = decl.len > 0 ? decl.p : "";
    lens[2] = decl.len;
    args[3] = bq_broker_front(b, queue);
    args[4] = control;
    for (size_t i = 0; i < 5; i++)
        if (i != 2)
            lens[i] = strlen(args[i]);
    for (size_t i = 0; i < n; i++) {
        snprintf(nums[i][0], sizeof nums[i][0], "%lld", ticks[i].tick);
        snprintf(nums[i][1], sizeof nums[i][1], "%lld", (long long)(ticks[i].due * 1000.0));
        args[5 + 3 * i] = nums[i][0];
        lens[5 + 3 * i] = strlen(nums[i][0]);
        args[6 + 3 * i] = nums[i][1];
        lens[6 + 3 * i] = strlen(nums[i][1]);
        args[7 + 3 * i] = ticks[i].msg.p;
        lens[7 + 3 * i] = ticks[i].msg.len;
    }
    const char *keys[] = {queue, bell, delayed, cron};
    redisReply *rep = NULL;
    st = bq_redis_script(r, S_CRON, 4, keys, (int)nargs, args, lens, &rep, err);
    bq_free(args);
    bq_free(lens);
    bq_free(nums);
    if (st != BQ_OK)
        return st;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3) {
        freeReplyObject(rep);
        return bq_err_set(err, BQ_EPROTO, "cron-4: unexpected reply");
    }
    res->fired = reply_int(rep->element[0]);
    res->last = reply_int(rep->element[1]);
    long long state = reply_int(rep->element[2]);
    res->state = state >= 0 && state <= BQ_CRON_UNKNOWN ? (enum bq_cron_state)state
                                                        : BQ_CRON_UNKNOWN;
    freeReplyObject(rep);
    return BQ_OK;
}
