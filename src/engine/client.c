/*
 * client.c -- the public producer API (binduq.h) over a broker.
 */
#include "client.h"

#include "../core/alloc.h"
#include "../core/err.h"
#include "../core/log.h"
#include "task.h"

#include <stdio.h>
#include <string.h>

bq_status bq_client_new(const struct bq_client_options *opts, bq_client **out, bq_err *err)
{
    *out = NULL;
    bq_client *c = bq_calloc(1, sizeof *c);
    if (c == NULL)
        return bq_err_set(err, BQ_ENOMEM, "bq_client_new: out of memory");
    bq_status st = bq_config_resolve(opts, &c->cfg, err);
    if (st == BQ_OK) {
        struct bq_broker_config bc;
        bq_config_broker(&c->cfg, &bc);
        st = bq_broker_open(&bc, &c->broker, err);
    }
    if (st != BQ_OK) {
        bq_client_free(c);
        return st;
    }
    *out = c;
    return BQ_OK;
}

void bq_client_free(bq_client *c)
{
    if (c == NULL)
        return;
    bq_broker_free(c->broker);
    bq_config_free(&c->cfg);
    bq_free(c);
}

bq_status bq_client_push(bq_client *c, const char *queue, const struct bq_slice *msgs,
                         const char *const *task_ids, size_t n, size_t *pushed, bq_err *err)
{
    if (queue == NULL)
        queue = c->cfg.queue_name;
    bq_status st = c->broker->ops->push(c->broker, queue, msgs, n, pushed, err);
    if (st == BQ_EAUTH)
        bq_broker_explain_auth(c->broker, err);
    if (bq_log_enabled(BQ_LOG_DEBUG)) {
        for (size_t i = 0; i < *pushed; i++)
            bq_log(BQ_LOG_DEBUG, "scheduled", "task_id", task_ids ? task_ids[i] : NULL,
                   "queue", queue, NULL);
    }
    if (st != BQ_OK)
        bq_log(BQ_LOG_ERROR, "schedule_failed", "queue", queue, "error", err ? err->msg : NULL,
               "code", bq_status_name(st), NULL);
    return st;
}

bq_status bq_schedule_many(bq_client *c, const struct bq_task *tasks, size_t n, size_t *n_sent,
                           bq_err *err)
{
    size_t sent = 0;
    if (n_sent == NULL)
        n_sent = &sent;
    *n_sent = 0;
    struct bq_msg *msgs = bq_calloc(n ? n : 1, sizeof *msgs);
    struct bq_slice *slices = bq_calloc(n ? n : 1, sizeof *slices);
    const char **ids = bq_calloc(n ? n : 1, sizeof *ids);
    bq_status st = BQ_OK;
    if (msgs == NULL || slices == NULL || ids == NULL)
        st = bq_err_set(err, BQ_ENOMEM, "schedule: out of memory");
    for (size_t i = 0; i < n && st == BQ_OK; i++) {
        st = bq_task_encode(&tasks[i], &msgs[i], err);
        if (st != BQ_OK && n > 1) {
            char where[32];
            snprintf(where, sizeof where, "tasks[%zu]", i);
            bq_err_prefix(err, where);
        }
        if (st == BQ_OK) {
            slices[i].p = msgs[i].data;
            slices[i].len = msgs[i].len;
            ids[i] = tasks[i].task_id;
        }
    }
    if (st == BQ_OK)
        st = bq_client_push(c, NULL, slices, ids, n, n_sent, err);
    for (size_t i = 0; msgs != NULL && i < n; i++)
        bq_free(msgs[i].data);
    bq_free(msgs);
    bq_free(slices);
    bq_free(ids);
    return st;
}

bq_status bq_schedule(bq_client *c, const struct bq_task *task, bq_err *err)
{
    return bq_schedule_many(c, task, 1, NULL, err);
}

bq_status bq_queue_length(bq_client *c, long long *out, bq_err *err)
{
    return c->broker->ops->length(c->broker, c->cfg.queue_name, BQ_LIST_READY, out, err);
}

bq_status bq_health_check(bq_client *c, struct bq_health *out, bq_err *err)
{
    memset(out, 0, sizeof *out);
    snprintf(out->backend, sizeof out->backend, "%s", c->broker->kind);
    snprintf(out->address, sizeof out->address, "%s", c->broker->address);
    bq_status st = c->broker->ops->ping(c->broker, &out->rtt, err);
    if (st == BQ_OK)
        st = bq_queue_length(c, &out->queue_length, err);
    out->ok = st == BQ_OK;
    return st;
}
