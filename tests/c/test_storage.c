/*
 * test_storage.c -- the in-memory storage (src/storage/mem.c) through the storage interface:
 * create once, compare-and-set changes, terminal states, JSON array appends, field
 * set/clear, listing with filters, removal, many threads at once, and the bound on records;
 * then the same promises of the Redis storage (src/storage/rstore.c) when BQ_REDIS_URL is
 * set, and its own: keys in the queue's slot, finished tasks' TTL, handles sharing tasks.
 */
#include "check.h"

#include "../../src/core/alloc.h"
#include "../../src/core/err.h"
#include "../../src/core/log.h"
#include "../../src/broker/broker.h"
#include "../../src/broker/keys.h"
#include "../../src/storage/storage.h"

#include <hiredis/hiredis.h>
#include <math.h>
#include <pthread.h>
#include <unistd.h>

static bq_storage *open_mem(void)
{
    struct bq_storage_config cfg = {"memory", NULL, NULL, 0, 0, 0, NULL, NULL, NULL, NULL, 0};
    bq_storage *s = NULL;
    CHECK_INT(bq_storage_open(&cfg, &s, NULL), BQ_OK);
    return s;
}

/* The tests of the interface's promises run on each storage in turn: the memory storage,
 * then the Redis storage (src/storage/rstore.c) against the redis-server of BQ_REDIS_URL
 * when it is set. Each Redis reset moves to a queue of its own, so every test starts with
 * no tasks, as mem's reset gives. */
static const char *redis_url;
static bool on_redis;
static char redis_queue[64];
static int redis_round;

static bq_storage *open_redis(const char *queue, double ttl)
{
    struct bq_broker_config bc = {.url = redis_url, .url_source = "BQ_REDIS_URL",
                                  .max_connections = 8, .connect_timeout = 2,
                                  .command_timeout = 5, .pool_timeout = 5};
    struct bq_storage_config cfg = {.type = "redis", .redis = &bc, .queue = queue, .ttl = ttl};
    bq_storage *s = NULL;
    bq_err err;
    bq_status st = bq_storage_open(&cfg, &s, &err);
    if (st != BQ_OK)
        printf("  open_redis: %s\n", err.msg);
    CHECK_INT(st, BQ_OK);
    return s;
}

static bq_storage *open_store(void)
{
    return on_redis ? open_redis(redis_queue, 0) : open_mem();
}

static void reset_store(void)
{
    if (!on_redis) {
        bq_storage_mem_reset();
        return;
    }
    snprintf(redis_queue, sizeof redis_queue, "test-rstore:%d:%d", (int)getpid(), ++redis_round);
}

TEST(create_get_and_cas)
{
    bq_storage *s = open_store();
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
    reset_store();
    bq_storage *s = open_store();
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
    struct bq_task_filter f = {NULL, "odd", 0, 3, 0};
    CHECK_INT(s->ops->list(s, &f, &v, &n, NULL), BQ_OK);
    CHECK_INT((int)n, 3);
    CHECK_STR(v[0].id, "L9");
    CHECK_STR(v[2].id, "L5");
    CHECK_STR(v[0].history, "[]");
    bq_task_recs_free(v, n);
    /* the next page: the odd ones after the first 3 (L3, L1), and past the end */
    struct bq_task_filter page = {NULL, "odd", 0, 3, 3};
    CHECK_INT(s->ops->list(s, &page, &v, &n, NULL), BQ_OK);
    CHECK_INT((int)n, 2);
    CHECK_STR(v[0].id, "L3");
    CHECK_STR(v[1].id, "L1");
    bq_task_recs_free(v, n);
    page.offset = 5;
    CHECK_INT(s->ops->list(s, &page, &v, &n, NULL), BQ_OK);
    CHECK_INT((int)n, 0);
    bq_task_recs_free(v, n);
    struct bq_task_filter fw = {"working", NULL, 0, 0, 0};
    CHECK_INT(s->ops->list(s, &fw, &v, &n, NULL), BQ_OK);
    CHECK_INT((int)n, 3);
    bq_task_recs_free(v, n);
    struct bq_task_filter old = {NULL, NULL, 3600, 0, 0};
    CHECK_INT(s->ops->list(s, &old, &v, &n, NULL), BQ_OK);
    CHECK_INT((int)n, 0);
    bq_task_recs_free(v, n);
    bq_storage_unref(s);
    reset_store();
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
    bq_storage *a = open_store(), *b = open_store();
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
    reset_store();
}

TEST(open_checks_the_type)
{
    bq_err err;
    bq_storage *s;
    struct bq_storage_config bad = {"mongo", NULL, NULL, 0, 0, 0, NULL, NULL, NULL, NULL, 0};
    CHECK_INT(bq_storage_open(&bad, &s, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "unknown type 'mongo'");
    struct bq_storage_config noredis = {"redis", NULL, NULL, 0, 0, 0, NULL, NULL, NULL, NULL, 0};
    CHECK_INT(bq_storage_open(&noredis, &s, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "needs a Redis URL");
    struct bq_storage_config nourl = {"postgres", NULL, NULL, 0, 0, 0, NULL, NULL, NULL, NULL, 0};
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
    struct bq_storage_config cfg = {"memory", NULL, NULL, 0, 0, 5, NULL, NULL, NULL, NULL, 0};
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
    bq_storage *s = open_store();
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
    reset_store();
    bq_storage *s = open_store();
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
    reset_store();
}

/* A bound of 16,384 or more is split over shards (mem.c): the bound stays exact, listing is
 * newest first across them, and a change of bound deals the records out again. */
TEST(a_large_bound_is_sharded_and_exact)
{
    bq_storage_mem_reset();
    struct bq_storage_config cfg = {"memory", NULL, NULL, 0, 0, 20000, NULL, NULL, NULL, NULL, 0};
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
    struct bq_task_filter f = {NULL, NULL, 0, 5, 0};
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

/* A batch of changes and of starts, each change still an exact compare-and-set: made where
 * the state allows, refused (with the state that refused it) where not, unknown ids not
 * found; a start counts the attempt and records a task nobody recorded as working. The Redis
 * storage makes each batch in one script, the memory storage one by one: the same results. */
TEST(batches_of_changes_and_starts)
{
    reset_store();
    bq_storage *s = open_store();
    REQUIRE(s != NULL);
    CHECK(on_redis == (s->ops->change_many != NULL && s->ops->start_many != NULL));
    struct bq_task_result res[4];
    const char *ids[] = {"cm-1", "cm-2", "cm-3"};
    for (int i = 0; i < 3; i++) {
        struct bq_task_new t = {ids[i], NULL, NULL, NULL, i == 0 ? "[1]" : NULL, NULL, NULL, 0,
                                i == 1 ? "pause" : NULL};
        CHECK_INT(s->ops->create(s, &t, &res[0], NULL), BQ_OK);
    }
    struct bq_task_change done = {.id = "cm-3", .to = "completed"};
    CHECK_INT(s->ops->change(s, &done, &res[0], NULL), BQ_OK);
    struct bq_task_change c[4];
    const char *cids[] = {"cm-1", "cm-2", "cm-3", "cm-nope"};
    for (int i = 0; i < 4; i++)
        c[i] = (struct bq_task_change){.id = cids[i], .from = "submitted", .to = "working",
                                       .count_attempt = true, .worker = "w-7", .requested = ""};
    c[0].append_history = "[\"two\"]";
    CHECK_INT(bq_storage_change_many(s, c, 4, res, NULL), BQ_OK);
    CHECK(res[0].changed && res[0].found);
    CHECK_STR(res[0].state, "working");
    CHECK_INT(res[0].attempts, 1);
    CHECK(res[1].changed);
    CHECK_STR(res[1].requested, "");
    CHECK(!res[2].changed && res[2].found);
    CHECK_STR(res[2].state, "completed");
    CHECK_INT(res[2].attempts, 0);
    CHECK(!res[3].changed && !res[3].found);
    struct bq_task_rec r;
    bool found = false;
    CHECK_INT(s->ops->get(s, "cm-1", &r, &found, NULL), BQ_OK);
    REQUIRE(found);
    CHECK_STR(r.history, "[1,\"two\"]");
    CHECK_STR(r.worker, "w-7");
    bq_task_rec_clear(&r);
    if (on_redis) {
        /* a bad change refuses the whole batch before anything is sent */
        struct bq_task_change bad[2] = {{.id = "cm-1", .from = "working", .to = "completed"},
                                        {.id = "cm-2", .to = "nonsense"}};
        bq_err err;
        CHECK_INT(bq_storage_change_many(s, bad, 2, res, &err), BQ_EINVAL);
        CHECK_CONTAINS(err.msg, "unknown state 'nonsense'");
        CHECK(!res[0].found && !res[0].changed);
        CHECK_INT(s->ops->get(s, "cm-1", &r, &found, NULL), BQ_OK);
        CHECK_STR(r.state, "working");
        bq_task_rec_clear(&r);
    }

    /* starts: one submitted, one nobody recorded, one finished */
    struct bq_task_new t = {"st-1", NULL, NULL, NULL, NULL, NULL, NULL, 0, "pause"};
    CHECK_INT(s->ops->create(s, &t, &res[0], NULL), BQ_OK);
    struct bq_task_new starts[4] = {{"st-1", NULL, "q", NULL, NULL, NULL, "w-8", 0, NULL},
                                    {"st-2", "ctx", "q", NULL, "[\"hi\"]", "{\"m\":1}", "w-8", 0,
                                     NULL},
                                    {"cm-3", NULL, "q", NULL, NULL, NULL, "w-8", 0, NULL},
                                    {"st-3", "ctx3", "q3", NULL, "[3]", NULL, "w-9", 0, NULL}};
    CHECK_INT(bq_storage_start_many(s, starts, 4, res, NULL), BQ_OK);
    CHECK(res[3].changed && res[3].found && res[3].attempts == 1);
    CHECK(res[0].changed && res[0].found && res[0].attempts == 1);
    CHECK_STR(res[0].state, "working");
    CHECK_STR(res[0].requested, "");
    CHECK(res[1].changed && res[1].found && res[1].attempts == 1);
    CHECK_STR(res[1].state, "working");
    CHECK(!res[2].changed && res[2].found);
    CHECK_STR(res[2].state, "completed");
    CHECK_INT(s->ops->get(s, "st-2", &r, &found, NULL), BQ_OK);
    REQUIRE(found);
    CHECK_STR(r.state, "working");
    CHECK_STR(r.context_id, "ctx");
    CHECK_STR(r.history, "[\"hi\"]");
    CHECK_STR(r.metadata, "{\"m\":1}");
    CHECK_STR(r.worker, "w-8");
    CHECK_INT(r.attempts, 1);
    bq_task_rec_clear(&r);
    CHECK_INT(s->ops->get(s, "st-3", &r, &found, NULL), BQ_OK); /* the second one made */
    REQUIRE(found);
    CHECK_STR(r.state, "working");
    CHECK_STR(r.context_id, "ctx3");
    CHECK_STR(r.queue, "q3");
    CHECK_STR(r.history, "[3]");
    CHECK_STR(r.metadata, "{}");
    CHECK_STR(r.worker, "w-9");
    bq_task_rec_clear(&r);
    CHECK_INT(s->ops->get(s, "st-1", &r, &found, NULL), BQ_OK);
    CHECK_STR(r.worker, "w-8");
    CHECK(r.requested == NULL);
    bq_task_rec_clear(&r);
    bq_storage_unref(s);
    reset_store();
}

/* A chunk's finished states and the next chunk's starts together (change_start_many): the
 * changes first, then the starts, with the same results as the two batches one after the
 * other, also for an id in both. The Redis storage makes them in one script. */
TEST(changes_then_starts_together)
{
    reset_store();
    bq_storage *s = open_store();
    REQUIRE(s != NULL);
    CHECK(on_redis == (s->ops->change_start_many != NULL));
    struct bq_task_result r0, rc[2], rt[3];
    const char *ids[] = {"cs-1", "cs-2", "cs-3"};
    for (int i = 0; i < 3; i++) {
        struct bq_task_new t = {ids[i], NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL};
        CHECK_INT(s->ops->create(s, &t, &r0, NULL), BQ_OK);
    }
    struct bq_task_change w1 = {.id = "cs-1", .to = "working"};
    struct bq_task_change k2 = {.id = "cs-2", .to = "canceled"};
    CHECK_INT(s->ops->change(s, &w1, &r0, NULL), BQ_OK);
    CHECK_INT(s->ops->change(s, &k2, &r0, NULL), BQ_OK);
    struct bq_task_change c[2] = {{.id = "cs-1", .from = "working", .to = "completed",
                                   .append_history = "[\"ok\"]", .requested = "", .error = ""},
                                  {.id = "cs-2", .from = "working", .to = "completed"}};
    struct bq_task_new t[3] = {{"cs-3", NULL, "q", NULL, NULL, NULL, "w-1", 0, NULL},
                               {"cs-4", "ctx", "q4", NULL, "[4]", NULL, "w-1", 0, NULL},
                               {"cs-1", NULL, "q", NULL, NULL, NULL, "w-1", 0, NULL}};
    bool started = false;
    bq_err err;
    CHECK_INT(bq_storage_change_start_many(s, c, 2, t, 3, rc, rt, &started, &err), BQ_OK);
    CHECK(started);
    CHECK(rc[0].changed);
    CHECK_STR(rc[0].state, "completed");
    CHECK(!rc[1].changed && rc[1].found);
    CHECK_STR(rc[1].state, "canceled");
    CHECK(rt[0].changed && rt[0].attempts == 1);
    CHECK_STR(rt[0].state, "working");
    CHECK(rt[1].changed && rt[1].found);
    CHECK(!rt[2].changed); /* cs-1 in both: its start saw it completed */
    CHECK_STR(rt[2].state, "completed");
    struct bq_task_rec r;
    bool found = false;
    CHECK_INT(s->ops->get(s, "cs-4", &r, &found, NULL), BQ_OK);
    REQUIRE(found);
    CHECK_STR(r.state, "working");
    CHECK_STR(r.queue, "q4");
    CHECK_STR(r.history, "[4]");
    CHECK_STR(r.worker, "w-1");
    bq_task_rec_clear(&r);
    CHECK_INT(s->ops->get(s, "cs-1", &r, &found, NULL), BQ_OK);
    CHECK_STR(r.history, "[\"ok\"]");
    bq_task_rec_clear(&r);
    bq_storage_unref(s);
    reset_store();
}

/* ---- The Redis storage's own promises --------------------------------------------------- */

static bq_broker *raw;

/* One command on the test server; its reply as an integer (or the length of an array), and
 * a copy of a string reply in str[64] when given. */
static long long rcmd(char *str, int argc, const char **argv)
{
    void *out = NULL;
    bq_err err;
    bq_status st = raw->admin->command(raw, "x", argc, argv, NULL, &out, &err);
    if (st != BQ_OK) {
        printf("  %s: %s\n", argv[0], err.msg);
        return -99;
    }
    redisReply *r = out;
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer
                  : r->type == REDIS_REPLY_ARRAY ? (long long)r->elements
                                                 : 0;
    if (str != NULL)
        snprintf(str, 64, "%s", r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
    return v;
}

static long long ttl_of(const char *key)
{
    const char *argv[] = {"TTL", key};
    return rcmd(NULL, 2, argv);
}

/* Every key is in the queue's slot; a finished task's hash expires after ttl, an open one
 * (or one reopened) never; the option's 0 (here < 0) keeps finished ones. */
TEST(redis_keys_share_the_slot_and_finished_tasks_expire)
{
    reset_store();
    bq_storage *s = open_redis(redis_queue, 100);
    REQUIRE(s != NULL);
    struct bq_task_new t = {"x1", "c", "elsewhere", NULL, NULL, NULL, NULL, 0, NULL};
    struct bq_task_result r;
    CHECK_INT(s->ops->create(s, &t, &r, NULL), BQ_OK);
    char key[128], idx[128], done[128];
    snprintf(key, sizeof key, "{%s}:task:x1", redis_queue);
    snprintf(idx, sizeof idx, "{%s}:tasks", redis_queue);
    snprintf(done, sizeof done, "{%s}:tasks:completed", redis_queue);
    CHECK(bq_key_slot(key) == bq_key_slot(redis_queue) && bq_key_slot(idx) == bq_key_slot(key));
    CHECK_INT(ttl_of(key), -1);
    /* the index's score is the record's created_at */
    struct bq_task_rec rec;
    bool found = false;
    CHECK_INT(s->ops->get(s, "x1", &rec, &found, NULL), BQ_OK);
    REQUIRE(found);
    const char *zi[] = {"ZSCORE", idx, "x1"};
    char at[64];
    rcmd(at, 3, zi);
    CHECK(fabs(strtod(at, NULL) - rec.created_at) < 2e-6);
    CHECK_STR(rec.queue, "elsewhere"); /* data: the keys follow the storage's queue */
    bq_task_rec_clear(&rec);
    struct bq_task_change c = {.id = "x1", .to = "completed"};
    CHECK_INT(s->ops->change(s, &c, &r, NULL), BQ_OK);
    CHECK(r.changed);
    long long ttl = ttl_of(key);
    CHECK(ttl > 90 && ttl <= 100);
    const char *zs[] = {"ZSCORE", done, "x1"};
    char score[64];
    rcmd(score, 3, zs);
    CHECK(strlen(score) > 0);
    /* reopened (an operator's requeue names the terminal state): no expiry again */
    struct bq_task_change reopen = {.id = "x1", .from = "completed", .to = "submitted"};
    CHECK_INT(s->ops->change(s, &reopen, &r, NULL), BQ_OK);
    CHECK(r.changed);
    CHECK_INT(ttl_of(key), -1);
    CHECK_INT(rcmd(score, 3, zs), 0);
    CHECK_STR(score, ""); /* left the completed index */
    bq_storage_unref(s);

    bq_storage *keep = open_redis(redis_queue, -1);
    REQUIRE(keep != NULL);
    CHECK_INT(keep->ops->change(keep, &c, &r, NULL), BQ_OK);
    CHECK(r.changed);
    CHECK_INT(ttl_of(key), -1);
    /* a hash gone (expired) leaves its index entries, which list drops */
    const char *del[] = {"DEL", key};
    CHECK_INT(rcmd(NULL, 2, del), 1);
    const char *zcard[] = {"ZCARD", idx};
    CHECK_INT(rcmd(NULL, 2, zcard), 1);
    struct bq_task_rec *v;
    size_t n;
    CHECK_INT(keep->ops->list(keep, NULL, &v, &n, NULL), BQ_OK);
    CHECK_INT((int)n, 0);
    bq_task_recs_free(v, n);
    CHECK_INT(rcmd(NULL, 2, zcard), 0);
    bq_storage_unref(keep);
}

/* A finished task's hash expires; {Q}:expiring says when, and the next create
 * removes its index entries, even behind an older task that is still open (the indexes are in
 * creation order, so the oldest entries are no guide). A task reopened leaves {Q}:expiring. */
TEST(redis_expired_tasks_leave_the_indexes)
{
    reset_store();
    bq_storage *s = open_redis(redis_queue, 1);
    REQUIRE(s != NULL);
    struct bq_task_result r;
    const char *ids[] = {"old1", "old2", "old3", "old4", "f1", "f2"};
    for (int i = 0; i < 6; i++) {
        struct bq_task_new t = {ids[i], NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL};
        CHECK_INT(s->ops->create(s, &t, &r, NULL), BQ_OK);
    }
    struct bq_task_change done[2] = {{.id = "f1", .to = "completed"}, {.id = "f2", .to = "failed"}};
    struct bq_task_result rr[2];
    CHECK_INT(bq_storage_change_many(s, done, 2, rr, NULL), BQ_OK);
    CHECK(rr[0].changed && rr[1].changed);
    char idx[128], exp[128], completed[128];
    snprintf(idx, sizeof idx, "{%s}:tasks", redis_queue);
    snprintf(exp, sizeof exp, "{%s}:expiring", redis_queue);
    snprintf(completed, sizeof completed, "{%s}:tasks:completed", redis_queue);
    const char *zexp[] = {"ZCARD", exp}, *zidx[] = {"ZCARD", idx}, *zdone[] = {"ZCARD", completed};
    CHECK_INT(rcmd(NULL, 2, zexp), 2);
    struct bq_task_change reopen = {.id = "f2", .from = "failed", .to = "submitted"};
    CHECK_INT(s->ops->change(s, &reopen, &r, NULL), BQ_OK);
    CHECK(r.changed);
    CHECK_INT(rcmd(NULL, 2, zexp), 1); /* f1 only */
    sleep(2);
    struct bq_task_new t = {"new", NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL};
    CHECK_INT(s->ops->create(s, &t, &r, NULL), BQ_OK);
    CHECK_INT(rcmd(NULL, 2, zexp), 0);
    CHECK_INT(rcmd(NULL, 2, zidx), 6); /* old1-4, f2, new */
    CHECK_INT(rcmd(NULL, 2, zdone), 0);
    struct bq_task_rec rec;
    bool found = true;
    CHECK_INT(s->ops->get(s, "f1", &rec, &found, NULL), BQ_OK);
    CHECK(!found);
    CHECK_INT(s->ops->get(s, "old1", &rec, &found, NULL), BQ_OK);
    CHECK(found);
    bq_task_rec_clear(&rec);
    bq_storage_unref(s);
}

/* Two handles with pools of their own (as two processes have) see one set of tasks, and the
 * scripts are loaded again after SCRIPT FLUSH (EVALSHA's NOSCRIPT, then EVAL). */
TEST(redis_handles_share_tasks_and_reload_scripts)
{
    reset_store();
    bq_storage *a = open_redis(redis_queue, 0), *b = open_redis(redis_queue, 0);
    REQUIRE(a != NULL && b != NULL);
    struct bq_task_new t = {"sh1", NULL, NULL, NULL, "[1]", NULL, NULL, 0, NULL};
    struct bq_task_result r;
    CHECK_INT(a->ops->create(a, &t, &r, NULL), BQ_OK);
    const char *flush[] = {"SCRIPT", "FLUSH"};
    rcmd(NULL, 2, flush);
    struct bq_task_change c = {.id = "sh1", .from = "submitted", .to = "working",
                               .append_history = "[2]", .checkpoint = "{\"at\":1}",
                               .count_attempt = true};
    CHECK_INT(b->ops->change(b, &c, &r, NULL), BQ_OK);
    CHECK(r.changed && r.attempts == 1);
    CHECK_INT(b->ops->change(b, &c, &r, NULL), BQ_OK); /* compare-and-set: no longer submitted */
    CHECK(!r.changed && r.found);
    CHECK_STR(r.state, "working");
    struct bq_task_rec rec;
    bool found = false;
    CHECK_INT(a->ops->get(a, "sh1", &rec, &found, NULL), BQ_OK);
    REQUIRE(found);
    CHECK_STR(rec.history, "[1,2]");
    CHECK_STR(rec.checkpoint, "{\"at\":1}");
    CHECK_STR(rec.state, "working");
    CHECK(rec.error == NULL && rec.requested == NULL && rec.context_id == NULL);
    bq_task_rec_clear(&rec);
    /* another queue is another set of tasks */
    bq_storage *other = open_redis("test-rstore:other", 0);
    REQUIRE(other != NULL);
    CHECK_INT(other->ops->get(other, "sh1", &rec, &found, NULL), BQ_OK);
    CHECK(!found);
    CHECK_INT(a->ops->ping(a, NULL), BQ_OK);
    bq_storage_unref(other);
    bq_storage_unref(a);
    bq_storage_unref(b);
}

static void run_conformance(void)
{
    RUN(create_get_and_cas);
    RUN(list_filters_newest_first);
    RUN(threads_share_one_store);
    RUN(change_many_one_by_one);
    RUN(requested_at_create_and_as_a_condition);
    RUN(batches_of_changes_and_starts);
    RUN(changes_then_starts_together);
}

int main(void)
{
    bq_log_set_level("off");
    run_conformance();
    RUN(open_checks_the_type);
    RUN(max_tasks_bounds_the_records);
    RUN(a_large_bound_is_sharded_and_exact);
    bq_storage_mem_reset();
    redis_url = getenv("BQ_REDIS_URL");
    if (redis_url != NULL && *redis_url != '\0') {
        printf("-- the same on the Redis storage (%s)\n", redis_url);
        struct bq_broker_config bc = {.url = redis_url, .max_connections = 2,
                                      .connect_timeout = 2, .command_timeout = 5,
                                      .pool_timeout = 5};
        bq_err err;
        if (bq_broker_open(&bc, &raw, &err) != BQ_OK) {
            printf("  %s\n", err.msg);
            return 1;
        }
        on_redis = true;
        reset_store();
        run_conformance();
        RUN(redis_keys_share_the_slot_and_finished_tasks_expire);
        RUN(redis_handles_share_tasks_and_reload_scripts);
        RUN(redis_expired_tasks_leave_the_indexes);
        bq_broker_free(raw);
    } else {
        printf("skip the Redis storage's tests (BQ_REDIS_URL is not set)\n");
    }
    return check_report("test_storage");
}
