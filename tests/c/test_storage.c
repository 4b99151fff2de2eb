/*
 * test_storage.c -- the in-memory storage (src/storage/mem.c) through the storage interface:
 * create once, compare-and-set changes, terminal states, JSON array appends, field
 * set/clear, listing with filters, removal, many threads at once, and the bound on records.
 */
#include "check.h"

#include "../../src/core/alloc.h"
#include "../../src/core/err.h"
#include "../../src/core/log.h"
#include "../../src/storage/storage.h"

#include <pthread.h>

static bq_storage *open_mem(void)
{
    struct bq_storage_config cfg = {"memory", NULL, NULL, 0, 0, 0, NULL, NULL};
    bq_storage *s = NULL;
    CHECK_INT(bq_storage_open(&cfg, &s, NULL), BQ_OK);
    return s;
}

TEST(create_get_and_cas)
{
    bq_storage *s = open_mem();
    struct bq_task_new t = {"t1", "c1", "q", NULL, "[{\"role\":\"user\",\"content\":\"hi\"}]",
                            "{\"k\":1}", NULL, 0, NULL};
    struct bq_task_result r;
    CHECK_INT(s->ops->create(s, &t, &r, NULL), BQ_OK);
    CHECK(r.changed && r.found);
    CHECK_STR(r.state, "submitted");
    CHECK_INT(s->ops->create(s, &t, &r, NULL), BQ_OK);
    CHECK(!r.changed);

    struct bq_task_change c = {.id = "t1", .to = "working", .worker = "w1", .count_attempt = true};
    CHECK_INT(s->ops->change(s, &c, &r, NULL), BQ_OK);
    CHECK(r.changed);
    CHECK_STR(r.state, "working");
    struct bq_task_change cp = {.id = "t1", .from = "working", .checkpoint = "{\"step\":3}",
                                .requested = "pause"};
    CHECK_INT(s->ops->change(s, &cp, &r, NULL), BQ_OK);
    CHECK_STR(r.requested, "pause");
    struct bq_task_change done = {.id = "t1", .from = "working", .to = "completed",
                                  .append_history = "[{\"role\":\"agent\",\"content\":\"yo\"}]",
                                  .append_artifacts = " [ 1 , 2 ] ", .requested = ""};
    CHECK_INT(s->ops->change(s, &done, &r, NULL), BQ_OK);
    CHECK(r.changed);
    CHECK_STR(r.requested, "");

    struct bq_task_rec rec;
    bool found;
    CHECK_INT(s->ops->get(s, "t1", &rec, &found, NULL), BQ_OK);
    CHECK(found);
    CHECK_STR(rec.state, "completed");
    CHECK_STR(rec.context_id, "c1");
    CHECK_STR(rec.queue, "q");
    CHECK_STR(rec.history, "[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"agent\",\"content\":\"yo\"}]");
    CHECK_STR(rec.artifacts, "[ 1 , 2 ]");
    CHECK_STR(rec.metadata, "{\"k\":1}");
    CHECK_STR(rec.checkpoint, "{\"step\":3}");
    CHECK_STR(rec.worker, "w1");
    CHECK(rec.requested == NULL);
    CHECK_INT(rec.attempts, 1);
    CHECK(rec.state_at >= rec.created_at && rec.updated_at >= rec.state_at);
    bq_task_rec_clear(&rec);

    /* Terminal: nothing moves it unless `from` names it. */
    struct bq_task_change cancel = {.id = "t1", .to = "canceled"};
    CHECK_INT(s->ops->change(s, &cancel, &r, NULL), BQ_OK);
    CHECK(!r.changed);
    CHECK_STR(r.state, "completed");
    struct bq_task_change reopen = {.id = "t1", .from = "failed,completed", .to = "submitted"};
    CHECK_INT(s->ops->change(s, &reopen, &r, NULL), BQ_OK);
    CHECK(r.changed);

    struct bq_task_change unknown = {.id = "nope", .to = "working"};
    CHECK_INT(s->ops->change(s, &unknown, &r, NULL), BQ_OK);
    CHECK(!r.found && !r.changed);
    bq_err err;
    struct bq_task_change bad = {.id = "t1", .to = "done"};
    CHECK_INT(s->ops->change(s, &bad, &r, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "unknown state 'done'");
    struct bq_task_change notarray = {.id = "t1", .append_history = "{}"};
    CHECK_INT(s->ops->change(s, &notarray, &r, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "JSON arrays");

    CHECK_INT(s->ops->remove(s, "t1", &found, NULL), BQ_OK);
    CHECK(found);
    CHECK_INT(s->ops->get(s, "t1", &rec, &found, NULL), BQ_OK);
    CHECK(!found);
    bq_storage_unref(s);
}

TEST(list_filters_newest_first)
{
    bq_storage_mem_reset();
    bq_storage *s = open_mem();
    for (int i = 0; i < 10; i++) {
        char id[16];
        snprintf(id, sizeof id, "L%d", i);
        struct bq_task_new t = {id, i % 2 ? "odd" : "even", NULL, i < 3 ? "working" : NULL,
                                NULL, NULL, NULL, 0, NULL};
        struct bq_task_result r;
        CHECK_INT(s->ops->create(s, &t, &r, NULL), BQ_OK);
    }
    struct bq_task_rec *v;
    size_t n;
    struct bq_task_filter f = {NULL, "odd", 0, 3};
    CHECK_INT(s->ops->list(s, &f, &v, &n, NULL), BQ_OK);
    CHECK_INT((int)n, 3);
    CHECK_STR(v[0].id, "L9");
    CHECK_STR(v[2].id, "L5");
    CHECK_STR(v[0].history, "[]");
    bq_task_recs_free(v, n);
    struct bq_task_filter fw = {"working", NULL, 0, 0};
    CHECK_INT(s->ops->list(s, &fw, &v, &n, NULL), BQ_OK);
    CHECK_INT((int)n, 3);
    bq_task_recs_free(v, n);
    struct bq_task_filter old = {NULL, NULL, 3600, 0};
    CHECK_INT(s->ops->list(s, &old, &v, &n, NULL), BQ_OK);
    CHECK_INT((int)n, 0);
    bq_task_recs_free(v, n);
    bq_storage_unref(s);
    bq_storage_mem_reset();
}

static void *hammer(void *arg)
{
    bq_storage *s = arg;
    for (int i = 0; i < 2000; i++) {
        struct bq_task_change c = {.id = "shared", .from = "working", .count_attempt = true};
        struct bq_task_result r;
        s->ops->change(s, &c, &r, NULL);
    }
    return NULL;
}

TEST(threads_share_one_store)
{
    bq_storage *a = open_mem(), *b = open_mem();
    struct bq_task_new t = {"shared", NULL, NULL, "working", NULL, NULL, "w1", 1, NULL};
    struct bq_task_result r;
    CHECK_INT(a->ops->create(a, &t, &r, NULL), BQ_OK);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, hammer, i % 2 ? a : b);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    struct bq_task_rec rec;
    bool found;
    CHECK_INT(b->ops->get(b, "shared", &rec, &found, NULL), BQ_OK);
    CHECK_INT(rec.attempts, 8001); /* 8,000 increments on top of the starting 1 */
    bq_task_rec_clear(&rec);
    bq_storage_unref(a);
    bq_storage_unref(b);
    bq_storage_mem_reset();
}

TEST(open_checks_the_type)
{
    bq_err err;
    bq_storage *s;
    struct bq_storage_config bad = {"redis", NULL, NULL, 0, 0, 0, NULL, NULL};
    CHECK_INT(bq_storage_open(&bad, &s, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "unknown type 'redis'");
    struct bq_storage_config nourl = {"postgres", NULL, NULL, 0, 0, 0, NULL, NULL};
    CHECK_INT(bq_storage_open(&nourl, &s, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "needs a url");
    CHECK(bq_task_state_terminal("canceled"));
    CHECK(!bq_task_state_terminal("paused"));
    CHECK(bq_task_state_in("paused", NULL));
    CHECK(!bq_task_state_in("failed", NULL));
    CHECK(bq_task_state_in("failed", "submitted,failed"));
    CHECK(!bq_task_state_in("fail", "submitted,failed"));
}

static bool has(bq_storage *s, const char *id)
{
    struct bq_task_rec rec;
    bool found = false;
    s->ops->get(s, id, &rec, &found, NULL);
    bq_task_rec_clear(&rec);
    return found;
}

TEST(max_tasks_bounds_the_records)
{
    bq_storage_mem_reset();
    struct bq_storage_config cfg = {"memory", NULL, NULL, 0, 0, 5, NULL, NULL};
    bq_storage *s = NULL;
    CHECK_INT(bq_storage_open(&cfg, &s, NULL), BQ_OK);
    struct bq_task_result r;
    for (int i = 0; i < 8; i++) {
        char id[16];
        snprintf(id, sizeof id, "M%d", i);
        struct bq_task_new t = {id, NULL, NULL, NULL, i % 2 ? "[1]" : "[]", NULL, NULL, 0, NULL};
        CHECK_INT(s->ops->create(s, &t, &r, NULL), BQ_OK);
        struct bq_task_change c = {.id = id, .to = "working"};
        CHECK_INT(s->ops->change(s, &c, &r, NULL), BQ_OK);
        struct bq_task_change d = {.id = id, .to = "completed", .append_artifacts = "[2]"};
        CHECK_INT(s->ops->change(s, &d, &r, NULL), BQ_OK);
        CHECK_STR(r.state, "completed");
    }
    /* The oldest three are forgotten; the rest keep their values. */
    CHECK(!has(s, "M0") && !has(s, "M2") && has(s, "M3") && has(s, "M7"));
    struct bq_task_rec rec;
    bool found;
    CHECK_INT(s->ops->get(s, "M4", &rec, &found, NULL), BQ_OK);
    CHECK_STR(rec.history, "[]");
    CHECK_STR(rec.artifacts, "[2]");
    CHECK_STR(rec.metadata, "{}");
    CHECK_STR(rec.state, "completed");
    bq_task_rec_clear(&rec);
    /* A smaller bound forgets the oldest at once; a larger one keeps them all. */
    cfg.max_tasks = 2;
    bq_storage *t = NULL;
    CHECK_INT(bq_storage_open(&cfg, &t, NULL), BQ_OK);
    CHECK(!has(s, "M5") && has(s, "M6") && has(s, "M7"));
    cfg.max_tasks = 1000;
    bq_storage_unref(t);
    CHECK_INT(bq_storage_open(&cfg, &t, NULL), BQ_OK);
    for (int i = 0; i < 600; i++) {
        char id[16];
        snprintf(id, sizeof id, "N%d", i);
        struct bq_task_new n = {id, NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL};
        CHECK_INT(t->ops->create(t, &n, &r, NULL), BQ_OK);
    }
    CHECK(has(s, "M6") && has(s, "N0") && has(s, "N599"));
    /* An open record outlives finished ones newer than it. */
    bq_storage_unref(t);
    bq_storage_mem_reset();
    cfg.max_tasks = 3;
    CHECK_INT(bq_storage_open(&cfg, &t, NULL), BQ_OK);
    const char *ids[] = {"O1", "O2", "O3", "O4", "O5"};
    for (int i = 0; i < 5; i++) {
        struct bq_task_new n = {ids[i], NULL, NULL, i == 0 ? "working" : "completed", NULL, NULL,
                                NULL, 0, NULL};
        CHECK_INT(t->ops->create(t, &n, &r, NULL), BQ_OK);
    }
    CHECK(has(t, "O1") && !has(t, "O2") && !has(t, "O3") && has(t, "O4") && has(t, "O5"));
    bq_err err;
    cfg.max_tasks = 10000001;
    bq_storage *u = NULL;
    CHECK_INT(bq_storage_open(&cfg, &u, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "max_tasks must be from 1 to 10000000");
    bq_storage_unref(t);
    bq_storage_unref(s);
    bq_storage_mem_reset();
}

/* Without a batch of its own, the memory storage makes a batch of changes one by one, with
 * the same results. */
/* `requested` given at create, and as a condition of a change (if_requested). */
TEST(requested_at_create_and_as_a_condition)
{
    bq_storage *s = open_mem();
    struct bq_task_new t = {"rq", NULL, NULL, "paused", NULL, NULL, NULL, 0, "resume"};
    struct bq_task_result r;
    CHECK_INT(s->ops->create(s, &t, &r, NULL), BQ_OK);
    CHECK_STR(r.requested, "resume");
    struct bq_task_change c = {.id = "rq", .from = "paused", .if_requested = "merge",
                               .requested = "run"};
    CHECK_INT(s->ops->change(s, &c, &r, NULL), BQ_OK);
    CHECK(!r.changed);
    CHECK_STR(r.requested, "resume");
    c.if_requested = "resume";
    CHECK_INT(s->ops->change(s, &c, &r, NULL), BQ_OK);
    CHECK(r.changed);
    CHECK_STR(r.requested, "run");
    struct bq_task_change none = {.id = "rq", .from = "paused", .if_requested = ""};
    CHECK_INT(s->ops->change(s, &none, &r, NULL), BQ_OK);
    CHECK(!r.changed);
    /* a batch with a condition on requested goes one by one, and keeps it */
    struct bq_task_change two[2] = {{.id = "rq", .from = "paused", .if_requested = "merge",
                                     .to = "working"},
                                    {.id = "other", .to = "working"}};
    struct bq_task_result rr[2];
    CHECK_INT(bq_storage_change_many(s, two, 2, rr, NULL), BQ_OK);
    CHECK(!rr[0].changed);
    CHECK_STR(rr[0].state, "paused");
    bq_storage_unref(s);
}

TEST(change_many_one_by_one)
{
    bq_storage_mem_reset();
    bq_storage *s = open_mem();
    struct bq_task_result res[3];
    struct bq_task_new t = {"cmm-1", NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL};
    CHECK_INT(s->ops->create(s, &t, &res[0], NULL), BQ_OK);
    struct bq_task_change c[3] = {{.id = "cmm-1", .from = "submitted", .to = "working", .count_attempt = true},
                                  {.id = "cmm-1", .from = "submitted", .to = "working"},
                                  {.id = "cmm-2", .to = "working"}};
    CHECK_INT(bq_storage_change_many(s, c, 3, res, NULL), BQ_OK);
    CHECK(res[0].changed && res[0].attempts == 1);
    CHECK(!res[1].changed && res[1].found);
    CHECK_STR(res[1].state, "working");
    CHECK(!res[2].changed && !res[2].found);
    bq_storage_unref(s);
    bq_storage_mem_reset();
}

/* A bound of 16,384 or more is split over shards (mem.c): the bound stays exact, listing is
 * newest first across them, and a change of bound deals the records out again. */
TEST(a_large_bound_is_sharded_and_exact)
{
    bq_storage_mem_reset();
    struct bq_storage_config cfg = {"memory", NULL, NULL, 0, 0, 20000, NULL, NULL};
    bq_storage *s = NULL;
    CHECK_INT(bq_storage_open(&cfg, &s, NULL), BQ_OK);
    struct bq_task_result r;
    char id[16];
    for (int i = 0; i < 20500; i++) {
        snprintf(id, sizeof id, "S%d", i);
        struct bq_task_new t = {id, NULL, NULL, "completed", NULL, NULL, NULL, 0, NULL};
        CHECK_INT(s->ops->create(s, &t, &r, NULL), BQ_OK);
    }
    int kept = 0, newest_kept = 0;
    for (int i = 0; i < 20500; i++) {
        snprintf(id, sizeof id, "S%d", i);
        bool h = has(s, id);
        kept += h;
        newest_kept += h && i >= 19500;
    }
    CHECK_INT(kept, 20000);
    CHECK_INT(newest_kept, 1000);
    struct bq_task_rec *v;
    size_t n;
    struct bq_task_filter f = {NULL, NULL, 0, 5};
    CHECK_INT(s->ops->list(s, &f, &v, &n, NULL), BQ_OK);
    CHECK_INT((int)n, 5);
    CHECK_STR(v[0].id, "S20499");
    CHECK_STR(v[4].id, "S20495");
    bq_task_recs_free(v, n);
    /* Down to one shard: exactly the newest 1,000 stay, and stay listed in order. */
    cfg.max_tasks = 1000;
    bq_storage *t = NULL;
    CHECK_INT(bq_storage_open(&cfg, &t, NULL), BQ_OK);
    kept = 0;
    for (int i = 0; i < 20500; i++) {
        snprintf(id, sizeof id, "S%d", i);
        bool h = has(s, id);
        kept += h;
        if (h && i < 19500)
            CHECK(!"an older record was kept");
    }
    CHECK_INT(kept, 1000);
    CHECK_INT(s->ops->list(s, &f, &v, &n, NULL), BQ_OK);
    CHECK_INT((int)n, 5);
    CHECK_STR(v[0].id, "S20499");
    bq_task_recs_free(v, n);
    /* And up again: they are dealt out over the shards, and found there. */
    bq_storage_unref(t);
    cfg.max_tasks = 40000;
    CHECK_INT(bq_storage_open(&cfg, &t, NULL), BQ_OK);
    CHECK(has(t, "S19500") && has(t, "S20499") && !has(t, "S19499"));
    struct bq_task_change c = {.id = "S20000", .from = "completed", .to = "failed"};
    CHECK_INT(t->ops->change(t, &c, &r, NULL), BQ_OK);
    CHECK(r.changed);
    CHECK_INT(t->ops->list(t, &f, &v, &n, NULL), BQ_OK);
    CHECK_STR(v[0].id, "S20499");
    CHECK_STR(v[4].id, "S20495");
    bq_task_recs_free(v, n);
    bq_storage_unref(t);
    bq_storage_unref(s);
    bq_storage_mem_reset();
}

int main(void)
{
    bq_log_set_level("off");
    RUN(create_get_and_cas);
    RUN(list_filters_newest_first);
    RUN(threads_share_one_store);
    RUN(open_checks_the_type);
    RUN(max_tasks_bounds_the_records);
    RUN(a_large_bound_is_sharded_and_exact);
    RUN(change_many_one_by_one);
    RUN(requested_at_create_and_as_a_condition);
    bq_storage_mem_reset();
    return check_report("test_storage");
}
