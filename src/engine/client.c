/*
 * client.c -- the public producer API (binduq.h) over a broker and a storage.
 *
 * bq_schedule_many does what binduq.scheduler (lua/binduq/scheduler.lua) does, in three
 * passes over the tasks: check, encode and route all (nothing happens if one is invalid);
 * store each one's state in order (the first storage failure stops everything before a
 * push); push, one round trip per run of consecutive tasks with the same queue and the same
 * kind of push (plain, or with deduplication keys). The stored history is the "messages"
 * array of the encoded message itself, so the record and the message cannot disagree, and
 * it is written by bq_task_put_message, as the Lua producer's fast path writes it.
 */
#include "client.h"
#include "feed_post.h"

#include "../broker/keys.h"
#include "../core/alloc.h"
#include "../core/buf.h"
#include "../core/clock.h" /* bq_duration_problem */
#include "../core/wire.h"
#include "../core/err.h"
#include "../core/log.h"
#include "metrics.h"
#include "task.h"
#include "worker.h" /* bq_control_format */

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define DEFAULT_DEDUP_TTL 3600.0 /* seconds, as binduq.scheduler's dedup_ttl */


/* Prefixes a storage's message with "storage: " unless it already names the storage. */
static bq_status storage_fail(bq_status st, bq_err *err)
{
    if (err != NULL && strncmp(err->msg, "storage", 7) != 0)
        bq_err_prefix(err, "storage");
    return st;
}

static bq_status open_storage(bq_client *c, const struct bq_client_options *opts, bq_err *err)
{
    struct bq_storage_choice sc;
    bq_status st = bq_config_storage(opts, &sc, err);
    struct bq_broker_config bc;
    if (st == BQ_OK && strcmp(sc.cfg.type, "redis") == 0)
        bq_storage_choice_redis(&sc, &c->cfg, &bc);
    if (st == BQ_OK)
        st = bq_storage_open(&sc.cfg, &c->store, err);
    bq_storage_choice_free(&sc);
    return st == BQ_OK ? BQ_OK : storage_fail(st, err);
}

static bq_status client_open(const struct bq_client_options *opts, bool producer, bq_client **out,
                             bq_err *err)
{
    *out = NULL;
    bq_client *c = bq_calloc(1, sizeof *c);
    if (c == NULL)
        return bq_err_set(err, BQ_ENOMEM, "bq_client_new: out of memory");
    atomic_init(&c->scheduled, 0);
    atomic_init(&c->deduplicated, 0);
    bq_status st = bq_config_resolve(opts, &c->cfg, err);
    const char *why = producer && opts != NULL ? bq_duration_problem(opts->dedup_ttl) : NULL;
    if (st == BQ_OK && why != NULL)
        st = bq_err_set(err, BQ_EINVAL, "dedup_ttl %s", why);
    if (st == BQ_OK) {
        struct bq_broker_config bc;
        bq_config_broker(&c->cfg, &bc);
        st = bq_broker_open(&bc, &c->broker, err);
    }
    if (st == BQ_OK && c->cfg.events_max > 0 && (c->feed_post = bq_feed_post_new(c->broker)) == NULL)
        st = bq_err_set(err, BQ_ENOMEM, "bq_client_new: out of memory");
    if (st == BQ_OK && producer) {
        st = open_storage(c, opts, err);
        c->dedup = opts == NULL || !opts->no_dedup;
        c->dedup_ttl = opts != NULL && opts->dedup_ttl > 0 ? opts->dedup_ttl : DEFAULT_DEDUP_TTL;
        c->route = opts != NULL ? opts->route : NULL;
        c->route_ud = opts != NULL ? opts->route_ud : NULL;
    }
    if (st != BQ_OK) {
        bq_client_free(c);
        return st;
    }
    *out = c;
    return BQ_OK;
}

bq_status bq_client_new(const struct bq_client_options *opts, bq_client **out, bq_err *err)
{
    return client_open(opts, true, out, err);
}

bq_status bq_client_new_broker(const struct bq_client_options *opts, bq_client **out,
                               bq_err *err)
{
    return client_open(opts, false, out, err);
}

void bq_client_free(bq_client *c)
{
    if (c == NULL)
        return;
    if (c->feed_rd != NULL)
        c->broker->ops->feed_close(c->broker, c->feed_rd);
    bq_feed_post_free(c->feed_post); /* writes what is pending */
    bq_broker_free(c->broker);
    bq_storage_unref(c->store);
    bq_config_free(&c->cfg);
    bq_free(c);
}

void bq_client_stats(bq_client *c, long long *scheduled, long long *deduplicated)
{
    if (scheduled != NULL)
        *scheduled = atomic_load(&c->scheduled);
    if (deduplicated != NULL)
        *deduplicated = atomic_load(&c->deduplicated);
}

/* Logs a push's outcome: each message pushed at debug level (the first n, or those of
 * pushed[0..n) that are true, with their task ids if known), a failure as an error. */
static void log_push(const char *queue, const char *const *task_ids, const bool *pushed,
                     size_t n, bq_status st, const bq_err *err)
{
    if (bq_log_enabled(BQ_LOG_DEBUG)) {
        for (size_t i = 0; i < n; i++)
            if (pushed == NULL || pushed[i])
                bq_log(BQ_LOG_DEBUG, "scheduled", "task_id", task_ids ? task_ids[i] : NULL,
                       "queue", queue, NULL);
    }
    if (st != BQ_OK)
        bq_log(BQ_LOG_ERROR, "schedule_failed", "queue", queue, "error", err ? err->msg : NULL,
               "code", bq_status_name(st), NULL);
}

bq_status bq_client_push(bq_client *c, const char *queue, const struct bq_slice *msgs,
                         const char *const *task_ids, size_t n, size_t *pushed, bq_err *err)
{
    if (queue == NULL)
        queue = c->cfg.queue_name;
    bq_status st = c->broker->ops->push(c->broker, queue, msgs, n, pushed, err);
    if (st == BQ_EAUTH)
        bq_broker_explain_auth(c->broker, err);
    log_push(queue, task_ids, NULL, *pushed, st, err);
    return st;
}

bq_status bq_client_push_send(bq_client *c, const char *queue, const struct bq_slice *msgs,
                              const char *const *keys, size_t n, double ttl,
                              struct bq_push_wait *w, bq_err *err)
{
    const struct bq_broker_ops *ops = c->broker->ops;
    bq_status st;
    w->conn = NULL;
    w->n = n;
    if (ops->push_send != NULL) {
        st = ops->push_send(c->broker, queue, msgs, keys, n, ttl, w, err);
    } else if (keys != NULL) {
        st = ops->push_unique(c->broker, queue, msgs, keys, n, ttl, w->pushed, err);
    } else {
        size_t pushed = 0;
        st = ops->push(c->broker, queue, msgs, n, &pushed, err);
        for (size_t i = 0; i < n; i++)
            w->pushed[i] = i < pushed;
    }
    if (st != BQ_OK) {
        bq_broker_explain_auth(c->broker, err);
        log_push(queue, NULL, w->pushed, 0, st, err);
    }
    return st;
}

bq_status bq_client_push_recv(bq_client *c, const char *queue, const char *const *task_ids,
                              struct bq_push_wait *w, bq_err *err)
{
    bq_status st = BQ_OK;
    if (w->conn != NULL)
        st = c->broker->ops->push_recv(c->broker, w, err);
    if (st != BQ_OK)
        bq_broker_explain_auth(c->broker, err);
    log_push(queue, task_ids, w->pushed, w->n, st, err);
    return st;
}

/* ---- bq_schedule_many -------------------------------------------------------------------- */

/* One task on its way: its message, where its history is, its queue and dedup key. */
struct item {
    const struct bq_task *task;
    struct bq_msg msg;          /* owned */
    struct bq_task_parts parts; /* parts.conversation_id may point into parts (not moved) */
    char *queue;                /* owned: the routed queue, or a copy of the client's */
    char *key;                  /* owned: "run:<id>" or "cancel:<id>", or NULL */
    const struct bq_when *when; /* NULL: now */
};

static bool is(const struct bq_task *t, const char *type)
{
    return strcmp(t->type, type) == 0;
}

/* Checks, encodes and routes one task (`when` may be NULL: now). */
static bq_status prepare(bq_client *c, const struct bq_task *t, const struct bq_when *when,
                         struct item *it, bq_err *err)
{
    it->task = t;
    if (when != NULL) {
        const char *why = bq_wire_when_problem(when->delay != 0, when->delay, when->run_at != 0,
                                               when->run_at, bq_now_wall());
        if (why != NULL)
            return bq_err_set(err, BQ_EINVAL, "%s", why);
        if (when->delay != 0 || when->run_at != 0)
            it->when = when;
    }
    bq_status st = bq_task_encode_parts(t, &it->msg, &it->parts, err);
    if (st != BQ_OK)
        return st;
    const char *q = c->route != NULL ? c->route(t, c->route_ud) : NULL;
    if (q != NULL) {
        const char *why = bq_queue_name_problem(q);
        if (why != NULL)
            return bq_err_set(err, BQ_EINVAL, "route: queue '%.200s' %s", q, why);
    }
    it->queue = bq_strdup(q != NULL ? q : c->cfg.queue_name);
    if (it->queue == NULL)
        return bq_err_set(err, BQ_ENOMEM, "schedule: out of memory");
    if (c->dedup && (is(t, "run") || is(t, "cancel"))) {
        size_t n = strlen(t->type) + 1 + strlen(t->task_id) + 1;
        if ((it->key = bq_malloc(n)) == NULL)
            return bq_err_set(err, BQ_ENOMEM, "schedule: out of memory");
        snprintf(it->key, n, "%s:%s", t->type, t->task_id);
    }
    return BQ_OK;
}

/* "cancel <id>" or "pause <id>" on the control channel of the client's queue, which the
 * workers of that queue listen to. A publication that fails is not an error (the operation
 * is queued too), as in binduq.scheduler. */
static void publish(bq_client *c, enum bq_control op, const char *task_id)
{
    char msg[BQ_MAX_ID_LEN + 16];
    int n = bq_control_format(msg, sizeof msg, op, task_id);
    long long receivers = 0;
    bq_err err;
    if (n > 0 && c->broker->ops->publish(c->broker, c->cfg.queue_name,
                                         (struct bq_slice){msg, (size_t)n}, &receivers,
                                         &err) != BQ_OK)
        bq_log(BQ_LOG_WARN, "control_publish_failed", "task_id", task_id, "queue",
               c->cfg.queue_name, "error", err.msg, NULL);
}

static void emit_state(bq_client *c, const char *queue, const char *event, const char *id);

/* The stored side of one task, before anything is pushed (scheduler.lua's store_op): a cancel
 * or a pause that changed the stored task says so in a task event, as binduq.scheduler's. */
static bq_status store_op(bq_client *c, struct item *it, bq_err *err)
{
    const struct bq_task *t = it->task;
    struct bq_task_result res;
    bq_status st = BQ_OK;
    if (c->store == NULL)
        return BQ_OK;
    /* A delayed cancel or pause changes nothing before it comes due: the worker that takes
     * it then stores it (and reaches a running task), as one from Bindu's API. */
    if (it->when != NULL && !is(t, "run"))
        return BQ_OK;
    if (is(t, "run")) {
        /* The history is the message's "messages" array: NUL-terminated for the call. */
        char *end = it->msg.data + it->parts.history_off + it->parts.history_len;
        char saved = *end;
        *end = '\0';
        struct bq_task_new nt = {.id = t->task_id,
                                 .context_id = it->parts.conversation_id,
                                 .queue = it->queue,
                                 .history = it->msg.data + it->parts.history_off};
        st = c->store->ops->create(c->store, &nt, &res, err);
        *end = saved;
    } else if (is(t, "cancel")) {
        struct bq_task_change ch = {.id = t->task_id, .to = "canceled"};
        st = c->store->ops->change(c->store, &ch, &res, err);
        bool changed = st == BQ_OK && res.changed;
        if (st == BQ_OK && !res.found) {
            struct bq_task_new nt = {.id = t->task_id, .state = "canceled"};
            bq_err ignored;
            c->store->ops->create(c->store, &nt, &res, &ignored);
        }
        if (st == BQ_OK)
            publish(c, BQ_CONTROL_CANCEL, t->task_id);
        if (changed)
            emit_state(c, it->queue, "canceled", t->task_id);
    } else if (is(t, "pause")) {
        /* Its queued copy comes later: "copy" and "pause-sent" tell the worker that handles
         * it that this pause was applied already (binduq.lifecycle.order). */
        struct bq_task_change ch = {.id = t->task_id, .from = "submitted", .to = "paused",
                                    .requested = "copy"};
        st = c->store->ops->change(c->store, &ch, &res, err);
        if (st == BQ_OK && res.changed)
            emit_state(c, it->queue, "paused", t->task_id);
        if (st == BQ_OK && !res.changed && strcmp(res.state, "working") == 0) {
            struct bq_task_change req = {.id = t->task_id, .from = "working",
                                         .requested = "pause-sent"};
            bq_err ignored;
            c->store->ops->change(c->store, &req, &res, &ignored);
            publish(c, BQ_CONTROL_PAUSE, t->task_id);
        }
    }
    return st == BQ_OK ? BQ_OK : storage_fail(st, err);
}

/* Appends to b (after a comma when it holds some) the task event `event` of task `id` in
 * `state`, as binduq.scheduler writes them: at `now`, due at `due` when that is > 0. */
static void put_event(bq_buf *b, const char *event, const char *id, const char *state,
                      double now, double due)
{
    if (b->len > 0)
        bq_buf_putc(b, ',');
    BQ_BUF_LIT(b, "{\"event\":\"");
    bq_buf_puts(b, event);
    BQ_BUF_LIT(b, "\",\"task_id\":");
    bq_buf_json_str(b, id, strlen(id));
    BQ_BUF_LIT(b, ",\"state\":\"");
    bq_buf_puts(b, state);
    BQ_BUF_LIT(b, "\",\"at\":");
    bq_buf_put_secs(b, now);
    if (due > 0) {
        BQ_BUF_LIT(b, ",\"due_at\":");
        bq_buf_put_secs(b, due);
    }
    bq_buf_putc(b, '}');
}

/* Hands the events in b to the client's poster (feed_post.h), which costs the caller no
 * round trip, and frees b. */
static void post_events(bq_client *c, const char *queue, bq_buf *b)
{
    if (b->len > 0 && !b->oom)
        bq_feed_post_add(c->feed_post, queue, b->p, b->len);
    bq_buf_free(b);
}

/* The task event of a cancel or pause that changed task `id` (its state is the event's). */
static void emit_state(bq_client *c, const char *queue, const char *event, const char *id)
{
    if (c->feed_post == NULL)
        return;
    bq_buf b = BQ_BUF_INIT;
    put_event(&b, event, id, event, bq_now_wall(), 0);
    post_events(c, queue, &b);
}

/* The "scheduled" task events of the runs among items[0..n) that were pushed (pushed NULL:
 * all). */
static void emit_scheduled(bq_client *c, const char *queue, const struct item *items, size_t n,
                           const bool *pushed)
{
    if (c->feed_post == NULL)
        return;
    bq_buf b = BQ_BUF_INIT;
    double now = bq_now_wall();
    for (size_t i = 0; i < n; i++) {
        if ((pushed != NULL && !pushed[i]) || !is(items[i].task, "run"))
            continue;
        const struct bq_when *w = items[i].when;
        put_event(&b, "scheduled", items[i].task->task_id, "submitted", now,
                      w == NULL ? 0 : w->run_at != 0 ? w->run_at : now + w->delay);
    }
    post_events(c, queue, &b);
}

void bq_client_emit_runs(bq_client *c, const char *queue, const char *const *ids,
                         const bool *pushed, size_t n)
{
    if (c->feed_post == NULL)
        return;
    bq_buf b = BQ_BUF_INIT;
    double now = bq_now_wall();
    for (size_t i = 0; i < n; i++)
        if (pushed[i])
            put_event(&b, "scheduled", ids[i], "submitted", now, 0);
    post_events(c, queue, &b);
}

/* Pushes items[0..n) (one queue, all with keys or none). Adds the pushed and the duplicates
 * to *sent and *dups, and counts them in the metrics and the client's stats. */
static bq_status push_group(bq_client *c, const struct item *items, size_t n, size_t *sent,
                            size_t *dups, bq_err *err)
{
    const char *queue = items[0].queue;
    bool keyed = items[0].key != NULL, delayed = items[0].when != NULL;
    struct bq_slice *slices = bq_calloc(n, sizeof *slices);
    const char **aux = bq_calloc(n, sizeof *aux); /* the task ids, or the keys */
    bool *pushed = keyed || delayed ? bq_calloc(n, sizeof *pushed) : NULL;
    struct bq_delayed *later = delayed ? bq_calloc(n, sizeof *later) : NULL;
    if (slices == NULL || aux == NULL || ((keyed || delayed) && pushed == NULL) ||
        (delayed && later == NULL)) {
        bq_free(slices);
        bq_free(aux);
        bq_free(pushed);
        bq_free(later);
        return bq_err_set(err, BQ_ENOMEM, "schedule: out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        slices[i] = (struct bq_slice){items[i].msg.data, items[i].msg.len};
        aux[i] = keyed ? items[i].key : items[i].task->task_id;
    }
    size_t ok = 0;
    bq_status st;
    for (size_t i = 0; delayed && i < n; i++)
        later[i] = (struct bq_delayed){slices[i], items[i].key, items[i].when->delay,
                                       items[i].when->run_at};
    if (delayed || keyed) {
        st = delayed ? c->broker->ops->push_delayed(c->broker, queue, later, n, c->dedup_ttl,
                                                    pushed, err)
                     : c->broker->ops->push_unique(c->broker, queue, slices, aux, n,
                                                   c->dedup_ttl, pushed, err);
        /* pushed[] holds what the server confirmed, also when a later chunk failed: those
         * are queued, and *n_sent says so */
        for (size_t i = 0; i < n; i++) {
            ok += pushed[i];
            if (bq_log_enabled(BQ_LOG_DEBUG) && (pushed[i] || st == BQ_OK))
                bq_log(BQ_LOG_DEBUG, pushed[i] ? "scheduled" : "deduplicated", "task_id",
                       items[i].task->task_id, "queue", queue, NULL);
        }
        if (st != BQ_OK)
            bq_log(BQ_LOG_ERROR, "schedule_failed", "queue", queue, "error",
                   err ? err->msg : NULL, "code", bq_status_name(st), NULL);
    } else {
        st = bq_client_push(c, queue, slices, aux, n, &ok, err);
    }
    if (ok > 0 && strcmp(c->broker->kind, "memory") == 0 && bq_memory_warning_due())
        bq_log(BQ_LOG_WARN, "memory_scheduler_no_worker", "queue", queue, "warning",
               BQ_MEMORY_WARNING, NULL);
    if (ok > 0 && (st == BQ_OK || keyed || delayed))
        emit_scheduled(c, queue, items, n, keyed || delayed ? pushed : NULL);
    size_t dup = st == BQ_OK && (keyed || delayed) ? n - ok : 0;
    *sent += ok;
    *dups += dup;
    bq_metrics_scheduled(queue, (long long)ok, (long long)dup);
    atomic_fetch_add(&c->scheduled, (long long)ok);
    atomic_fetch_add(&c->deduplicated, (long long)dup);
    bq_free(slices);
    bq_free(aux);
    bq_free(pushed);
    bq_free(later);
    return st;
}

/* One push a group: a queue's tasks of one kind (deduplicated or not, delayed or not), in
 * their order. A task joins its queue's last group when it is of the same kind, so tasks
 * routed in turn over several queues take a push per queue, not one each, and a queue's
 * run, pause and resume still go in the order given (queues were never ordered among
 * themselves); as binduq.scheduler's schedule_many. *ordered: the items (shallow copies)
 * group after group; ends[g]: where group g ends in it. */
static bq_status group_items(const struct item *items, size_t n, struct item **ordered,
                             size_t **ends, size_t *ngroups, bq_err *err)
{
    /* Each queue's last group, by the queue's name: open addressing over 2n slots. */
    size_t cap = 2;
    while (cap < 2 * n)
        cap *= 2;
    struct slot {
        const char *queue;
        size_t group;
    } *map = bq_calloc(cap, sizeof *map);
    size_t *gid = bq_calloc(n, sizeof *gid), *count = bq_calloc(n + 1, sizeof *count);
    const struct item **first = bq_calloc(n, sizeof *first); /* each group's first item */
    *ordered = bq_calloc(n, sizeof **ordered);
    *ends = bq_calloc(n, sizeof **ends);
    *ngroups = 0;
    bq_status st = BQ_OK;
    if (map == NULL || gid == NULL || count == NULL || first == NULL || *ordered == NULL ||
        *ends == NULL)
        st = bq_err_set(err, BQ_ENOMEM, "schedule: out of memory");
    for (size_t i = 0; i < n && st == BQ_OK; i++) {
        const struct item *it = &items[i];
        uint32_t h = 2166136261u; /* FNV-1a */
        for (const unsigned char *p = (const unsigned char *)it->queue; *p != '\0'; p++)
            h = (h ^ *p) * 16777619u;
        size_t k = h & (cap - 1);
        while (map[k].queue != NULL && strcmp(map[k].queue, it->queue) != 0)
            k = (k + 1) & (cap - 1);
        const struct item *f = map[k].queue != NULL ? first[map[k].group] : NULL;
        if (f == NULL || (f->key != NULL) != (it->key != NULL) ||
            (f->when != NULL) != (it->when != NULL)) {
            map[k] = (struct slot){it->queue, *ngroups};
            first[(*ngroups)++] = it;
        }
        gid[i] = map[k].group;
        count[gid[i] + 1]++;
    }
    /* A stable counting sort by group. */
    for (size_t g = 0; g < *ngroups && st == BQ_OK; g++) {
        count[g + 1] += count[g];
        (*ends)[g] = count[g + 1];
    }
    for (size_t i = 0; i < n && st == BQ_OK; i++)
        (*ordered)[count[gid[i]]++] = items[i];
    bq_free(map);
    bq_free(gid);
    bq_free(count);
    bq_free(first);
    return st;
}

bq_status bq_schedule_many(bq_client *c, const struct bq_task *tasks, size_t n, size_t *n_sent,
                           bq_err *err)
{
    return bq_schedule_many_when(c, tasks, NULL, n, n_sent, err);
}

bq_status bq_schedule_when(bq_client *c, const struct bq_task *task, const struct bq_when *when,
                           bq_err *err)
{
    return bq_schedule_many_when(c, task, when, 1, NULL, err);
}

bq_status bq_schedule_many_when(bq_client *c, const struct bq_task *tasks,
                                const struct bq_when *when, size_t n, size_t *n_sent, bq_err *err)
{
    size_t sent = 0, dups = 0;
    if (n_sent == NULL)
        n_sent = &sent;
    *n_sent = 0;
    if (n == 0)
        return BQ_OK;
    if (tasks == NULL)
        return bq_err_set(err, BQ_EINVAL, "tasks is NULL but n is %zu", n);
    struct item *items = bq_calloc(n, sizeof *items);
    if (items == NULL)
        return bq_err_set(err, BQ_ENOMEM, "schedule: out of memory");
    bq_status st = BQ_OK;
    char where[32];
    for (size_t i = 0; i < n && st == BQ_OK; i++) {
        if ((st = prepare(c, &tasks[i], when != NULL ? &when[i] : NULL, &items[i], err)) !=
                BQ_OK &&
            n > 1) {
            snprintf(where, sizeof where, "tasks[%zu]", i);
            bq_err_prefix(err, where);
        }
    }
    for (size_t i = 0; i < n && st == BQ_OK; i++) {
        if ((st = store_op(c, &items[i], err)) != BQ_OK && n > 1) {
            snprintf(where, sizeof where, "tasks[%zu]", i);
            bq_err_prefix(err, where);
        }
    }
    struct item *ordered = NULL;
    size_t *ends = NULL, ngroups = 0;
    if (st == BQ_OK)
        st = group_items(items, n, &ordered, &ends, &ngroups, err);
    for (size_t g = 0, from = 0; g < ngroups && st == BQ_OK; from = ends[g++])
        st = push_group(c, &ordered[from], ends[g] - from, n_sent, &dups, err);
    bq_free(ordered);
    bq_free(ends);
    for (size_t i = 0; i < n; i++) {
        bq_free(items[i].msg.data);
        bq_free(items[i].queue);
        bq_free(items[i].key);
    }
    bq_free(items);
    return st;
}

bq_status bq_schedule(bq_client *c, const struct bq_task *task, bq_err *err)
{
    return bq_schedule_many(c, task, 1, NULL, err);
}

bq_status bq_queue_length(bq_client *c, long long *out, bq_err *err)
{
    return c->broker->admin->length(c->broker, c->cfg.queue_name, BQ_LIST_READY, out, err);
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

/* ---- Task events --------------------------------------------------------------------------- */

_Static_assert(BQ_EVENT_ID_MAX == BQ_FEED_ID_MAX, "binduq.h's event id size is the broker's");

static bq_status events_queue(bq_client *c, const char **queue, bq_err *err)
{
    if (c->cfg.events_max <= 0)
        return bq_err_set(err, BQ_EINVAL, "events: task events are off in this client's "
                                          "configuration (events_max < 0 or BINDUQ_EVENTS_MAX=0)");
    if (*queue == NULL)
        *queue = c->cfg.queue_name;
    const char *why = bq_queue_name_problem(*queue);
    if (why != NULL)
        return bq_err_set(err, BQ_EINVAL, "events: queue '%.200s' %s", *queue, why);
    return BQ_OK;
}

bq_status bq_events_last(bq_client *c, const char *queue, char id[BQ_EVENT_ID_MAX], bq_err *err)
{
    bq_status st = events_queue(c, &queue, err);
    if (st != BQ_OK)
        return st;
    return c->broker->ops->feed_last(c->broker, queue, id, err);
}

bq_status bq_events_read(bq_client *c, const char *queue, const char *after, size_t max,
                         double timeout,
                         void (*on_entry)(void *ud, const char *id, const char *json, size_t len),
                         void *ud, size_t *n, bq_err *err)
{
    if (n != NULL)
        *n = 0;
    bq_status st = events_queue(c, &queue, err);
    if (st != BQ_OK)
        return st;
    if (after == NULL || on_entry == NULL || max == 0)
        return bq_err_set(err, BQ_EINVAL, "events: after and on_entry are required, max >= 1");
    const char *why = bq_duration_problem(timeout);
    if (why != NULL)
        return bq_err_set(err, BQ_EINVAL, "events: timeout %s", why);
    struct bq_feed_out out = {NULL, 0, 0};
    st = c->broker->ops->feed_read(c->broker, &c->feed_rd, queue, after, max > 10000 ? 10000 : max,
                                   timeout, &out, err);
    for (size_t i = 0; st == BQ_OK && i < out.n; i++)
        on_entry(ud, out.e[i].id, out.e[i].json, out.e[i].len);
    if (st == BQ_OK && n != NULL)
        *n = out.n;
    bq_feed_out_free(&out);
    return st;
}
