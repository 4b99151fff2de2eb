/*
 * test_client.c -- the C producer (bq_client_new, bq_schedule_many) does what the Lua producer
 * does: it records a run "submitted", stores and publishes cancel and pause, deduplicates run
 * and cancel, routes, and counts. Against a real redis-server (BQ_REDIS_URL) and, where
 * storage matters, a real PostgreSQL (BQ_PG_URL); tests/run starts both. Without them the
 * tests that need them are skipped.
 */
#include "check.h"

#include "../../src/binduq.h"
#include "../../src/broker/broker.h"
#include "../../src/core/alloc.h"
#include "../../src/core/err.h"
#include "../../src/core/log.h"
#include "../../src/core/wire.h"
#include "../../src/engine/client.h"
#include "../../src/engine/metrics.h"
#include "../../src/storage/storage.h"

#include <hiredis/hiredis.h>
#include <postgresql/libpq-fe.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *redis_url, *pg_url;
static char prefix[64];

#define NEED_REDIS()                                                                           \
    do {                                                                                       \
        if (redis_url == NULL)                                                                 \
            SKIP("BQ_REDIS_URL is not set");                                                   \
    } while (0)

#define NEED_PG()                                                                              \
    do {                                                                                       \
        if (pg_url == NULL)                                                                    \
            SKIP("BQ_PG_URL is not set");                                                      \
    } while (0)

/* A client on Redis with a queue of this test's own; memory storage unless o says. */
static bq_client *open_client(struct bq_client_options *o, const char *name, char *queue,
                              size_t qsize)
{
    snprintf(queue, qsize, "%s:%s", prefix, name);
    o->url = redis_url;
    o->queue_name = queue;
    bq_client *c = NULL;
    bq_err err;
    if (bq_client_new(o, &c, &err) != BQ_OK)
        printf("  bq_client_new: %s\n", err.msg);
    return c;
}

static long long qlen(bq_client *c, const char *queue)
{
    long long n = -1;
    c->broker->admin->length(c->broker, queue, BQ_LIST_READY, &n, NULL);
    return n;
}

/* The memory storage's record of id (the storage is one per process). */
static bool mem_get(const char *id, struct bq_task_rec *rec)
{
    bq_storage *s;
    bool found = false;
    if (bq_storage_mem_open(0, &s, NULL) != BQ_OK)
        return false;
    if (s->ops->get(s, id, rec, &found, NULL) != BQ_OK)
        found = false;
    bq_storage_unref(s);
    return found;
}

/* The messages of queue, oldest first (workers take from the right). */
static redisReply *lrange(bq_client *c, const char *queue)
{
    const char *argv[] = {"LRANGE", queue, "0", "-1"};
    void *r = NULL;
    if (c->broker->admin->command(c->broker, queue, 4, argv, NULL, &r, NULL) != BQ_OK)
        return NULL;
    return r;
}

static const struct bq_message hi[] = {{"user", "hi"}};

TEST(a_run_is_recorded_submitted_before_it_is_pushed)
{
    NEED_REDIS();
    struct bq_client_options o = {0};
    char queue[96], id[96];
    bq_client *c = open_client(&o, "rec", queue, sizeof queue);
    REQUIRE(c != NULL);
    snprintf(id, sizeof id, "%s:rec:1", prefix);
    struct bq_message m[2] = {{"user", "What is \"AI\"?\n"}, {"agent", "tab\tand \xc3\xa9"}};
    struct bq_task t = {"run", id, NULL, m, 2};
    bq_err err;
    CHECK_INT(bq_schedule(c, &t, &err), BQ_OK);
    struct bq_task_rec rec;
    REQUIRE(mem_get(id, &rec));
    CHECK_STR(rec.state, "submitted");
    CHECK_STR(rec.queue, queue);
    CHECK_STR(rec.history, "[{\"role\":\"user\",\"content\":\"What is \\\"AI\\\"?\\n\"},"
                           "{\"role\":\"agent\",\"content\":\"tab\\tand \xc3\xa9\"}]");
    CHECK_STR(rec.metadata, "{}");
    /* The conversation id made for it is the one in the message. */
    REQUIRE(rec.context_id != NULL);
    CHECK_INT(strlen(rec.context_id), 36);
    redisReply *r = lrange(c, queue);
    REQUIRE(r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 1);
    char want[96];
    snprintf(want, sizeof want, "\"conversation_id\":\"%s\"", rec.context_id);
    CHECK_CONTAINS(r->element[0]->str, want);
    CHECK_CONTAINS(r->element[0]->str, rec.history);
    freeReplyObject(r);
    bq_task_rec_clear(&rec);
    bq_client_free(c);
}

/* storage_type "redis": the run is recorded in the client's own Redis, in its queue's slot,
 * where another client (another process) finds it; a cancel there finishes it with a TTL. */
TEST(a_run_is_recorded_in_redis_with_storage_type_redis)
{
    NEED_REDIS();
    struct bq_client_options o = {.storage_type = "redis"};
    char queue[96], id[96], key[256];
    bq_client *c = open_client(&o, "rstore", queue, sizeof queue);
    REQUIRE(c != NULL);
    REQUIRE(c->store != NULL);
    CHECK_STR(c->store->ops->name, "redis");
    snprintf(id, sizeof id, "%s:rstore:1", prefix);
    struct bq_task t = {"run", id, "conv-r", hi, 1};
    bq_err err;
    CHECK_INT(bq_schedule(c, &t, &err), BQ_OK);
    struct bq_client_options o2 = {.storage_type = "redis"};
    char queue2[96];
    bq_client *other = open_client(&o2, "rstore", queue2, sizeof queue2);
    REQUIRE(other != NULL);
    struct bq_task_rec rec;
    bool found = false;
    CHECK_INT(other->store->ops->get(other->store, id, &rec, &found, &err), BQ_OK);
    REQUIRE(found);
    CHECK_STR(rec.state, "submitted");
    CHECK_STR(rec.context_id, "conv-r");
    CHECK_STR(rec.history, "[{\"role\":\"user\",\"content\":\"hi\"}]");
    bq_task_rec_clear(&rec);
    snprintf(key, sizeof key, "{%s}:task:%s", queue, id);
    const char *ttl[] = {"TTL", key};
    void *out = NULL;
    CHECK_INT(c->broker->admin->command(c->broker, queue, 2, ttl, NULL, &out, &err), BQ_OK);
    CHECK(out != NULL && ((redisReply *)out)->integer == -1); /* open: kept */
    freeReplyObject(out);
    struct bq_task cancel = {"cancel", id, NULL, NULL, 0};
    CHECK_INT(bq_schedule(c, &cancel, &err), BQ_OK);
    CHECK_INT(other->store->ops->get(other->store, id, &rec, &found, &err), BQ_OK);
    CHECK_STR(rec.state, "canceled");
    bq_task_rec_clear(&rec);
    out = NULL;
    CHECK_INT(c->broker->admin->command(c->broker, queue, 2, ttl, NULL, &out, &err), BQ_OK);
    CHECK(out != NULL && ((redisReply *)out)->integer > 7 * 86400 - 60); /* finished: 7 days */
    freeReplyObject(out);
    bq_client_free(other);
    bq_client_free(c);
}

TEST(duplicates_of_run_and_cancel_are_not_pushed_and_are_counted)
{
    NEED_REDIS();
    struct bq_client_options o = {0};
    char queue[96], id[96];
    bq_client *c = open_client(&o, "dedup", queue, sizeof queue);
    REQUIRE(c != NULL);
    snprintf(id, sizeof id, "%s:dedup:1", prefix);
    struct bq_task t[4] = {{"run", id, "conv", hi, 1},
                           {"run", id, "conv", hi, 1},
                           {"pause", id, NULL, NULL, 0},
                           {"pause", id, NULL, NULL, 0}};
    size_t sent = 99;
    bq_err err;
    /* run, run (duplicate), pause, pause (pauses repeat legitimately). */
    CHECK_INT(bq_schedule_many(c, t, 4, &sent, &err), BQ_OK);
    CHECK_INT(sent, 3);
    CHECK_INT(bq_schedule_many(c, t, 1, &sent, &err), BQ_OK);
    CHECK_INT(sent, 0); /* the key holds across calls */
    CHECK_INT(qlen(c, queue), 3);
    long long scheduled = -1, dups = -1;
    bq_client_stats(c, &scheduled, &dups);
    CHECK_INT(scheduled, 3);
    CHECK_INT(dups, 2);
    char *text = NULL;
    size_t len;
    REQUIRE(bq_metrics_render(&text, &len) == BQ_OK);
    char want[160];
    snprintf(want, sizeof want, "binduq_tasks_scheduled_total{queue=\"%s\"} 3\n", queue);
    CHECK_CONTAINS(text, want);
    snprintf(want, sizeof want, "binduq_tasks_deduplicated_total{queue=\"%s\"} 2\n", queue);
    CHECK_CONTAINS(text, want);
    bq_free(text);
    bq_client_free(c);

    /* With no_dedup both runs are pushed. */
    struct bq_client_options off = {.no_dedup = true};
    c = open_client(&off, "nodedup", queue, sizeof queue);
    REQUIRE(c != NULL);
    CHECK_INT(bq_schedule_many(c, t, 2, &sent, &err), BQ_OK);
    CHECK_INT(sent, 2);
    CHECK_INT(qlen(c, queue), 2);
    bq_client_stats(c, &scheduled, &dups);
    CHECK_INT(scheduled, 2);
    CHECK_INT(dups, 0);
    bq_client_free(c);

    /* A TTL that is not a duration is refused, naming the option. */
    struct bq_client_options bad = {.dedup_ttl = -1};
    snprintf(queue, sizeof queue, "%s:badttl", prefix);
    bad.url = redis_url;
    bad.queue_name = queue;
    CHECK_INT(bq_client_new(&bad, &c, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "dedup_ttl is negative");
}

/* A listener on a queue's control channel, on a thread of its own. */
struct listener {
    bq_client *c;
    const char *queue;
    int stop[2];
    pthread_t th;
    atomic_int ready, n;
    char got[4][128];
};

static void on_control(void *ud, const char *msg, size_t len)
{
    struct listener *l = ud;
    int i = atomic_load(&l->n);
    if (i < 4) {
        snprintf(l->got[i], sizeof l->got[i], "%.*s", (int)len, msg);
        atomic_store(&l->n, i + 1);
    }
}

static void on_ready(void *ud)
{
    atomic_store(&((struct listener *)ud)->ready, 1);
}

static void *listen_thread(void *arg)
{
    struct listener *l = arg;
    l->c->broker->ops->listen(l->c->broker, l->queue, on_control, on_ready, l, l->stop[0],
                              NULL);
    return NULL;
}

static bool listen_start(struct listener *l, bq_client *c, const char *queue)
{
    memset(l, 0, sizeof *l);
    l->c = c;
    l->queue = queue;
    if (pipe(l->stop) != 0 || pthread_create(&l->th, NULL, listen_thread, l) != 0)
        return false;
    for (int i = 0; i < 500 && !atomic_load(&l->ready); i++)
        usleep(10000);
    return atomic_load(&l->ready);
}

/* Waits up to 5 s for n messages. */
static int listen_wait(struct listener *l, int n)
{
    for (int i = 0; i < 500 && atomic_load(&l->n) < n; i++)
        usleep(10000);
    return atomic_load(&l->n);
}

static void listen_stop(struct listener *l)
{
    (void)!write(l->stop[1], "x", 1);
    pthread_join(l->th, NULL);
    close(l->stop[0]);
    close(l->stop[1]);
}

TEST(a_cancel_is_stored_and_published_on_the_control_channel)
{
    NEED_REDIS();
    struct bq_client_options o = {0};
    char queue[96], id[96], unknown[96], want[160];
    bq_client *c = open_client(&o, "cancel", queue, sizeof queue);
    REQUIRE(c != NULL);
    struct listener l;
    REQUIRE(listen_start(&l, c, queue));
    snprintf(id, sizeof id, "%s:cancel:1", prefix);
    snprintf(unknown, sizeof unknown, "%s:cancel:unknown", prefix);
    struct bq_task t[3] = {{"run", id, NULL, hi, 1},
                           {"cancel", id, NULL, NULL, 0},
                           {"cancel", unknown, NULL, NULL, 0}};
    size_t sent;
    bq_err err;
    CHECK_INT(bq_schedule_many(c, t, 3, &sent, &err), BQ_OK);
    CHECK_INT(sent, 3);
    CHECK_INT(listen_wait(&l, 2), 2);
    snprintf(want, sizeof want, "cancel %s", id);
    CHECK_STR(l.got[0], want);
    snprintf(want, sizeof want, "cancel %s", unknown);
    CHECK_STR(l.got[1], want);
    listen_stop(&l);
    struct bq_task_rec rec;
    REQUIRE(mem_get(id, &rec));
    CHECK_STR(rec.state, "canceled");
    bq_task_rec_clear(&rec);
    REQUIRE(mem_get(unknown, &rec)); /* nobody recorded it: created canceled */
    CHECK_STR(rec.state, "canceled");
    bq_task_rec_clear(&rec);
    /* A second cancel of the same task is a duplicate: published again, not pushed. */
    CHECK_INT(bq_schedule_many(c, &t[1], 1, &sent, &err), BQ_OK);
    CHECK_INT(sent, 0);
    CHECK_INT(qlen(c, queue), 3);
    bq_client_free(c);
}

/* The members of {Q}:delayed with their scores, as "member score ..." (ZRANGE WITHSCORES). */
static redisReply *delayed_set(bq_client *c, const char *queue)
{
    char key[256];
    snprintf(key, sizeof key, "{%s}:delayed", queue);
    const char *argv[] = {"ZRANGE", key, "0", "-1", "WITHSCORES"};
    void *r = NULL;
    if (c->broker->admin->command(c->broker, queue, 5, argv, NULL, &r, NULL) != BQ_OK)
        return NULL;
    return r;
}

TEST(delayed_tasks_wait_in_the_delayed_set_and_bad_times_are_refused)
{
    NEED_REDIS();
    struct bq_client_options o = {0};
    char queue[96], id[96], id2[96];
    bq_client *c = open_client(&o, "delay", queue, sizeof queue);
    REQUIRE(c != NULL);
    snprintf(id, sizeof id, "%s:delay:1", prefix);
    snprintf(id2, sizeof id2, "%s:delay:2", prefix);
    /* Refused, naming the task and the field; nothing stored or pushed. */
    struct bq_task bad[2] = {{"run", id, NULL, hi, 1}, {"run", id2, NULL, hi, 1}};
    struct bq_when badw[2] = {{0, 0}, {-1, 0}};
    size_t sent = 9;
    bq_err err;
    CHECK_INT(bq_schedule_many_when(c, bad, badw, 2, &sent, &err), BQ_EINVAL);
    CHECK_STR(err.msg, "tasks[1]: delay is negative");
    CHECK_INT(sent, 0);
    struct bq_when both = {1, 2e9};
    CHECK_INT(bq_schedule_when(c, &bad[0], &both, &err), BQ_EINVAL);
    CHECK_STR(err.msg, BQ_WIRE_WHEN_BOTH);
    struct bq_when nan = {NAN, 0};
    CHECK_INT(bq_schedule_when(c, &bad[0], &nan, &err), BQ_EINVAL);
    CHECK_STR(err.msg, "delay is not a number");
    struct bq_task_rec rec;
    CHECK(!mem_get(id, &rec));
    /* A run in 60 s (recorded submitted), its duplicate, a cancel in 30 s (not stored yet),
     * a run at a time already past (pushed at once). */
    struct bq_task t[4] = {{"run", id, NULL, hi, 1},
                           {"run", id, NULL, hi, 1},
                           {"cancel", id, NULL, NULL, 0},
                           {"run", id2, NULL, hi, 1}};
    struct bq_when w[4] = {{60, 0}, {60, 0}, {30, 0}, {0, 1.0e9}};
    CHECK_INT(bq_schedule_many_when(c, t, w, 4, &sent, &err), BQ_OK);
    CHECK_INT(sent, 3);
    long long sc = 0, dd = 0;
    bq_client_stats(c, &sc, &dd);
    CHECK_INT(sc, 3);
    CHECK_INT(dd, 1);
    REQUIRE(mem_get(id, &rec));
    CHECK_STR(rec.state, "submitted"); /* the delayed cancel changed nothing yet */
    bq_task_rec_clear(&rec);
    CHECK_INT(qlen(c, queue), 1);
    long long delayed = 0;
    CHECK_INT(c->broker->admin->length(c->broker, queue, BQ_LIST_DELAYED, &delayed, NULL), BQ_OK);
    CHECK_INT(delayed, 2);
    /* Scores are due times in ms by Redis' clock: the cancel first, 30 s before the run. */
    redisReply *r = delayed_set(c, queue);
    REQUIRE(r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 4);
    CHECK_CONTAINS(r->element[0]->str, "\"type\":\"cancel\"");
    double d = atof(r->element[3]->str) - atof(r->element[1]->str);
    CHECK(d >= 29990 && d <= 30010);
    freeReplyObject(r);
    bq_client_free(c);
}

TEST(a_pause_parks_a_submitted_task_and_asks_a_running_one)
{
    NEED_REDIS();
    struct bq_client_options o = {0};
    char queue[96], queued[96], running[96], want[160];
    bq_client *c = open_client(&o, "pause", queue, sizeof queue);
    REQUIRE(c != NULL);
    struct listener l;
    REQUIRE(listen_start(&l, c, queue));
    snprintf(queued, sizeof queued, "%s:pause:queued", prefix);
    snprintf(running, sizeof running, "%s:pause:running", prefix);
    struct bq_task runs[2] = {{"run", queued, NULL, hi, 1}, {"run", running, NULL, hi, 1}};
    bq_err err;
    CHECK_INT(bq_schedule_many(c, runs, 2, NULL, &err), BQ_OK);
    /* A worker took the second one. */
    struct bq_task_change start = {.id = running, .from = "submitted", .to = "working"};
    struct bq_task_result res;
    CHECK_INT(c->store->ops->change(c->store, &start, &res, &err), BQ_OK);
    CHECK(res.changed);
    struct bq_task pauses[2] = {{"pause", queued, NULL, NULL, 0},
                                {"pause", running, NULL, NULL, 0}};
    CHECK_INT(bq_schedule_many(c, pauses, 2, NULL, &err), BQ_OK);
    struct bq_task_rec rec;
    REQUIRE(mem_get(queued, &rec));
    CHECK_STR(rec.state, "paused");
    CHECK_STR(rec.requested, "copy"); /* its queued copy is still to come (lifecycle/order.lua) */
    bq_task_rec_clear(&rec);
    REQUIRE(mem_get(running, &rec));
    CHECK_STR(rec.state, "working");
    CHECK_STR(rec.requested, "pause-sent");
    bq_task_rec_clear(&rec);
    /* Only the running one's pause is published. */
    CHECK_INT(listen_wait(&l, 1), 1);
    usleep(50000);
    CHECK_INT(atomic_load(&l.n), 1);
    snprintf(want, sizeof want, "pause %s", running);
    CHECK_STR(l.got[0], want);
    listen_stop(&l);
    CHECK_INT(qlen(c, queue), 4);
    bq_client_free(c);
}

/* Tasks whose id ends in "!" go to the queue in ud. */
static const char *route_bang(const struct bq_task *t, void *ud)
{
    size_t n = strlen(t->task_id);
    return t->task_id[n - 1] == '!' ? ud : NULL;
}

static const char *route_bad(const struct bq_task *t, void *ud)
{
    (void)ud;
    return strcmp(t->type, "cancel") == 0 ? "a}b" : NULL;
}

TEST(the_route_callback_picks_the_queue)
{
    NEED_REDIS();
    char urgent[96], queue[96], a[96], b[96], d[96];
    snprintf(urgent, sizeof urgent, "%s:route:urgent", prefix);
    struct bq_client_options o = {.route = route_bang, .route_ud = urgent};
    bq_client *c = open_client(&o, "route", queue, sizeof queue);
    REQUIRE(c != NULL);
    snprintf(a, sizeof a, "%s:route:a", prefix);
    snprintf(b, sizeof b, "%s:route:b!", prefix);
    snprintf(d, sizeof d, "%s:route:d!", prefix);
    struct bq_task t[4] = {{"run", a, NULL, hi, 1},
                           {"run", b, NULL, hi, 1},
                           {"resume", b, NULL, hi, 1},
                           {"run", d, NULL, hi, 1}};
    size_t sent;
    bq_err err;
    CHECK_INT(bq_schedule_many(c, t, 4, &sent, &err), BQ_OK);
    CHECK_INT(sent, 4);
    CHECK_INT(qlen(c, queue), 1);
    CHECK_INT(qlen(c, urgent), 3);
    struct bq_task_rec rec;
    REQUIRE(mem_get(b, &rec));
    CHECK_STR(rec.queue, urgent); /* the recovery sweep pushes it there again */
    bq_task_rec_clear(&rec);
    /* In order within the queue: run b, resume b, run d (workers take from the right). */
    redisReply *r = lrange(c, urgent);
    REQUIRE(r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 3);
    CHECK_CONTAINS(r->element[2]->str, "\"type\":\"run\"");
    CHECK_CONTAINS(r->element[1]->str, "\"type\":\"resume\"");
    CHECK_CONTAINS(r->element[0]->str, d);
    freeReplyObject(r);
    long long scheduled;
    bq_client_stats(c, &scheduled, NULL);
    CHECK_INT(scheduled, 4);
    bq_client_free(c);

    /* A route to a queue that cannot be one: refused before anything is stored. */
    struct bq_client_options o2 = {.route = route_bad};
    c = open_client(&o2, "route2", queue, sizeof queue);
    REQUIRE(c != NULL);
    char e[96];
    snprintf(e, sizeof e, "%s:route:e", prefix);
    struct bq_task t2[2] = {{"run", e, NULL, hi, 1}, {"cancel", e, NULL, NULL, 0}};
    CHECK_INT(bq_schedule_many(c, t2, 2, &sent, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "tasks[1]: route: queue 'a}b'");
    CHECK_INT(sent, 0);
    CHECK(!mem_get(e, &rec));
    CHECK_INT(qlen(c, queue), 0);
    bq_client_free(c);
}

/* Task i (of "<stem>-<i>") to queue i % 3 of the three in ud. */
static const char *route_turn(const struct bq_task *t, void *ud)
{
    const char *const *qs = ud;
    const char *dash = strrchr(t->task_id, '-');
    return qs[(dash != NULL ? atoi(dash + 1) : 0) % 3];
}

/* The LPUSH calls counted by the server since the last CONFIG RESETSTAT. */
static long long lpushes(bq_client *c, const char *queue)
{
    const char *reset[] = {"CONFIG", "RESETSTAT"}, *info[] = {"INFO", "commandstats"};
    void *r = NULL;
    long long n = -1;
    if (c->broker->admin->command(c->broker, queue, 2, info, NULL, &r, NULL) == BQ_OK) {
        const redisReply *rep = r;
        const char *at = rep->type == REDIS_REPLY_STRING
                             ? strstr(rep->str, "cmdstat_lpush:calls=") : NULL;
        n = at != NULL ? atoll(at + strlen("cmdstat_lpush:calls=")) : 0;
        freeReplyObject(r);
    }
    r = NULL;
    if (c->broker->admin->command(c->broker, queue, 2, reset, NULL, &r, NULL) == BQ_OK)
        freeReplyObject(r);
    return n;
}

/* Tasks routed in turn over three queues went one push each (only tasks next to each other
 * for the same queue shared one); now a push per queue and kind, each queue in order. */
TEST(tasks_routed_in_turn_take_a_push_per_queue_in_order)
{
    NEED_REDIS();
    char q[3][96], queue[96];
    const char *qs[3] = {q[0], q[1], q[2]};
    for (int k = 0; k < 3; k++)
        snprintf(q[k], sizeof q[k], "%s:turn:%c", prefix, 'a' + k);
    struct bq_client_options o = {.route = route_turn, .route_ud = (void *)qs, .no_dedup = true};
    bq_client *c = open_client(&o, "turn", queue, sizeof queue);
    REQUIRE(c != NULL);
    enum { N = 300 };
    static char id[N][32];
    static struct bq_task t[N];
    for (int i = 0; i < N; i++) {
        snprintf(id[i], sizeof id[i], "turn-%d", i);
        t[i] = (struct bq_task){"run", id[i], NULL, hi, 1};
    }
    size_t sent = 0;
    bq_err err;
    lpushes(c, queue); /* resets the counts */
    CHECK_INT(bq_schedule_many(c, t, N, &sent, &err), BQ_OK);
    CHECK_INT(sent, N);
    /* a push of messages and one ring of the bell a queue: 6, where a push a task made 600 */
    CHECK_INT(lpushes(c, queue), 6);
    for (int k = 0; k < 3; k++) {
        redisReply *r = lrange(c, q[k]);
        REQUIRE(r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == N / 3);
        int bad = 0;
        for (size_t j = 0; j < r->elements; j++) { /* LPUSH: the first at the tail */
            char want[48];
            snprintf(want, sizeof want, "\"task_id\":\"turn-%d\"",
                     (int)(3 * (r->elements - 1 - j)) + k);
            bad += strstr(r->element[j]->str, want) == NULL;
        }
        CHECK_INT(bad, 0);
        freeReplyObject(r);
    }
    /* a queue's tasks of another kind keep their place: a run, its pause, its resume */
    static char x[3][32];
    struct bq_task u[4];
    snprintf(x[0], sizeof x[0], "x-0");
    snprintf(x[1], sizeof x[1], "y-1");
    u[0] = (struct bq_task){"run", x[0], NULL, hi, 1};
    u[1] = (struct bq_task){"run", x[1], NULL, hi, 1};
    u[2] = (struct bq_task){"pause", x[0], NULL, NULL, 0};
    u[3] = (struct bq_task){"resume", x[0], NULL, NULL, 0};
    CHECK_INT(bq_schedule_many(c, u, 4, &sent, &err), BQ_OK);
    redisReply *r = lrange(c, q[0]);
    REQUIRE(r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == N / 3 + 3);
    CHECK_CONTAINS(r->element[0]->str, "\"type\":\"resume\"");
    CHECK_CONTAINS(r->element[1]->str, "\"type\":\"pause\"");
    CHECK_CONTAINS(r->element[2]->str, "\"task_id\":\"x-0\"");
    freeReplyObject(r);
    const char *del[] = {"DEL", q[0], q[1], q[2]};
    void *d = NULL;
    if (c->broker->admin->command(c->broker, queue, 4, del, NULL, &d, NULL) == BQ_OK)
        freeReplyObject(d);
    bq_client_free(c);
}

/* A storage whose every call fails: to see that nothing is pushed after a failure. */
static atomic_int failing_calls;

static bq_status failing_create(bq_storage *s, const struct bq_task_new *t,
                                struct bq_task_result *res, bq_err *err)
{
    (void)s;
    (void)res;
    atomic_fetch_add(&failing_calls, 1);
    return bq_err_set(err, BQ_EPG, "PQexec: no room for %s", t->id);
}

static bq_status failing_change(bq_storage *s, const struct bq_task_change *ch,
                                struct bq_task_result *res, bq_err *err)
{
    (void)s;
    (void)ch;
    (void)res;
    atomic_fetch_add(&failing_calls, 1);
    return bq_err_set(err, BQ_EPG, "PQexec: the server is gone");
}

static void failing_destroy(bq_storage *s)
{
    bq_free(s);
}

static const struct bq_storage_ops failing_ops = {
    .name = "failing", .create = failing_create, .change = failing_change,
    .destroy = failing_destroy};

TEST(a_storage_failure_stops_the_push)
{
    NEED_REDIS();
    struct bq_client_options o = {0};
    char queue[96], a[96], b[96];
    bq_client *c = open_client(&o, "storefail", queue, sizeof queue);
    REQUIRE(c != NULL);
    bq_storage *f = bq_calloc(1, sizeof *f);
    REQUIRE(f != NULL);
    f->ops = &failing_ops;
    atomic_init(&f->refs, 1);
    bq_storage_unref(c->store);
    c->store = f;
    snprintf(a, sizeof a, "%s:storefail:a", prefix);
    snprintf(b, sizeof b, "%s:storefail:b", prefix);
    struct bq_task t[2] = {{"run", a, NULL, hi, 1}, {"cancel", b, NULL, NULL, 0}};
    size_t sent = 99;
    bq_err err;
    CHECK_INT(bq_schedule_many(c, t, 2, &sent, &err), BQ_EPG);
    char want[160];
    snprintf(want, sizeof want, "tasks[0]: storage: PQexec: no room for %s", a);
    CHECK_STR(err.msg, want);
    CHECK_INT(sent, 0);
    CHECK_INT(atomic_load(&failing_calls), 1); /* the first failure stops the rest */
    CHECK_INT(bq_schedule(c, &t[1], &err), BQ_EPG);
    CHECK_STR(err.msg, "storage: PQexec: the server is gone");
    CHECK_INT(qlen(c, queue), 0);
    long long scheduled;
    bq_client_stats(c, &scheduled, NULL);
    CHECK_INT(scheduled, 0);
    bq_client_free(c);
}

/* ---- PostgreSQL ---------------------------------------------------------------------------- */

static bool pg_exec(const char *sql)
{
    PGconn *pg = PQconnectdb(pg_url);
    bool ok = PQstatus(pg) == CONNECTION_OK;
    if (ok) {
        PGresult *r = PQexec(pg, sql);
        ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            printf("  %s: %s", sql, PQerrorMessage(pg));
        PQclear(r);
    }
    PQfinish(pg);
    return ok;
}

TEST(a_run_is_recorded_in_postgres_and_its_failure_stops_the_push)
{
    NEED_REDIS();
    NEED_PG();
    char schema[64], sql[160], queue[96], id[96];
    snprintf(schema, sizeof schema, "binduq_client_%d", (int)getpid());
    struct bq_client_options o = {.storage_url = pg_url, .storage_schema = schema};
    bq_client *c = open_client(&o, "pg", queue, sizeof queue);
    REQUIRE(c != NULL);
    CHECK_STR(c->store->ops->name, "postgres");
    snprintf(id, sizeof id, "%s:pg:1", prefix);
    struct bq_message m[1] = {{"user", "caf\xc3\xa9 \"q\""}};
    struct bq_task t = {"run", id, "conv-pg", m, 1};
    bq_err err;
    CHECK_INT(bq_schedule(c, &t, &err), BQ_OK);
    struct bq_task_rec rec;
    bool found = false;
    CHECK_INT(c->store->ops->get(c->store, id, &rec, &found, &err), BQ_OK);
    REQUIRE(found);
    CHECK_STR(rec.state, "submitted");
    CHECK_STR(rec.context_id, "conv-pg");
    CHECK_STR(rec.queue, queue);
    /* jsonb gives back its own rendering of the same JSON. */
    CHECK_STR(rec.history, "[{\"role\": \"user\", \"content\": \"caf\xc3\xa9 \\\"q\\\"\"}]");
    bq_task_rec_clear(&rec);
    CHECK_INT(qlen(c, queue), 1);

    /* The table is gone: the storage fails, and the run is not pushed. */
    snprintf(sql, sizeof sql, "SET client_min_messages = warning; DROP SCHEMA %s CASCADE",
             schema);
    CHECK(pg_exec(sql));
    snprintf(id, sizeof id, "%s:pg:2", prefix);
    CHECK(bq_schedule(c, &t, &err) != BQ_OK);
    CHECK(strncmp(err.msg, "storage: ", 9) == 0);
    printf("  (%s)\n", err.msg);
    CHECK_INT(qlen(c, queue), 1);
    bq_client_free(c);

    /* A PostgreSQL that is not there: bq_client_new says so. */
    struct bq_client_options down = {.storage_url = "postgresql://127.0.0.1:1/none"};
    down.url = redis_url;
    CHECK(bq_client_new(&down, &c, &err) != BQ_OK);
    CHECK(c == NULL);
    CHECK(strncmp(err.msg, "storage: ", 9) == 0);
}

/* ---- The environment, as binduq.storage reads it -------------------------------------- */

TEST(the_storage_comes_from_the_environment_as_the_lua_side_reads_it)
{
    struct bq_storage_choice sc;
    bq_err err;
    const char *vars[] = {"STORAGE_TYPE", "DATABASE_URL", "POSTGRES_URL",
                          "BINDUQ_STORAGE_LAYOUT", "POSTGRES_DID", "DID"};
    char *saved[6];
    for (int i = 0; i < 6; i++) {
        const char *v = getenv(vars[i]);
        saved[i] = v ? strdup(v) : NULL;
        unsetenv(vars[i]);
    }
    CHECK_INT(bq_config_storage(NULL, &sc, &err), BQ_OK);
    CHECK_STR(sc.cfg.type, "memory");
    CHECK(sc.cfg.url == NULL);
    bq_storage_choice_free(&sc);

    setenv("POSTGRES_URL", "postgresql://p@h/b", 1);
    CHECK_INT(bq_config_storage(NULL, &sc, &err), BQ_OK);
    CHECK_STR(sc.cfg.type, "postgres");
    CHECK_STR(sc.cfg.url, "postgresql://p@h/b");
    bq_storage_choice_free(&sc);
    setenv("DATABASE_URL", "postgresql://d@h/b", 1);
    CHECK_INT(bq_config_storage(NULL, &sc, &err), BQ_OK);
    CHECK_STR(sc.cfg.url, "postgresql://d@h/b"); /* DATABASE_URL first */
    bq_storage_choice_free(&sc);

    setenv("STORAGE_TYPE", "Memory", 1); /* beats the URL; any case */
    CHECK_INT(bq_config_storage(NULL, &sc, &err), BQ_OK);
    CHECK_STR(sc.cfg.type, "memory");
    CHECK(sc.cfg.url == NULL);
    bq_storage_choice_free(&sc);
    struct bq_client_options o = {.storage_url = "postgresql://o@h/b"};
    CHECK_INT(bq_config_storage(&o, &sc, &err), BQ_OK); /* an option beats STORAGE_TYPE */
    CHECK_STR(sc.cfg.type, "postgres");
    CHECK_STR(sc.cfg.url, "postgresql://o@h/b");
    bq_storage_choice_free(&sc);
    setenv("STORAGE_TYPE", "REDIS", 1); /* the scheduler's Redis: no url of its own */
    CHECK_INT(bq_config_storage(NULL, &sc, &err), BQ_OK);
    CHECK_STR(sc.cfg.type, "redis");
    CHECK(sc.cfg.url == NULL);
    bq_storage_choice_free(&sc);
    setenv("STORAGE_TYPE", "sqlite", 1);
    CHECK_INT(bq_config_storage(NULL, &sc, &err), BQ_EINVAL);
    CHECK_STR(err.msg, "STORAGE_TYPE: expected memory, postgres or redis, got 'sqlite'");
    bq_storage_choice_free(&sc);
    unsetenv("STORAGE_TYPE");

    struct bq_client_options pg = {.storage_type = "postgresql"};
    unsetenv("DATABASE_URL");
    unsetenv("POSTGRES_URL");
    CHECK_INT(bq_config_storage(&pg, &sc, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "needs a url");
    bq_storage_choice_free(&sc);
    struct bq_client_options weird = {.storage_type = "sqlite"};
    CHECK_INT(bq_config_storage(&weird, &sc, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "storage type 'sqlite' is not supported");
    bq_storage_choice_free(&sc);

    /* Bindu's layout: the schema named after the agent's DID. */
    setenv("DATABASE_URL", "postgresql://d@h/b", 1);
    setenv("BINDUQ_STORAGE_LAYOUT", "bindu", 1);
    setenv("DID", "did:bindu:Alice:Agent-1", 1);
    CHECK_INT(bq_config_storage(NULL, &sc, &err), BQ_OK);
    CHECK_STR(sc.cfg.layout, "bindu");
    CHECK_STR(sc.cfg.schema, "did_bindu_alice_agent_1");
    bq_storage_choice_free(&sc);
    setenv("POSTGRES_DID", "9lives", 1);
    CHECK_INT(bq_config_storage(NULL, &sc, &err), BQ_OK);
    CHECK_STR(sc.cfg.schema, "schema_9lives");
    bq_storage_choice_free(&sc);

    for (int i = 0; i < 6; i++) {
        if (saved[i])
            setenv(vars[i], saved[i], 1);
        else
            unsetenv(vars[i]);
        free(saved[i]);
    }
}

/* ---- The same bytes as the Lua producer ---------------------------------------------------- */

/* Runs the Lua producer (build/binduq/core.so, lua/) in a child lua5.4 on the in-memory
 * scheduler and storage, scheduling one run with `route` (a Lua expression: "nil" takes the
 * fast path of src/lua/l_produce.c, a function task.lua's general path) and writing the
 * stored record's history. Returns false when lua5.4 or the module is missing. */
static bool lua_history(const char *route, const char *msgs, char *out, size_t size)
{
    if (access("build/binduq/core.so", R_OK) != 0)
        return false;
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/?.so;;' "
             "BINDUQ_LOG_LEVEL=off lua5.4 -e '"
             "local bq = require(\"binduq\") "
             "local s = bq.scheduler{type = \"memory\", queue_name = \"cmp\", route = %s} "
             "assert(s:run{task_id = \"lua-1\", conversation_id = \"conv-1\", messages = %s}) "
             "io.write(s:storage():get(\"lua-1\").history)' 2>&1",
             route, msgs);
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return false;
    size_t n = fread(out, 1, size - 1, p);
    out[n] = '\0';
    return pclose(p) == 0;
}

TEST(a_run_scheduled_from_c_stores_the_same_history_as_from_lua)
{
    if (access("build/binduq/core.so", R_OK) != 0 || system("lua5.4 -v > /dev/null 2>&1") != 0)
        SKIP("needs lua5.4 and build/binduq/core.so (make)");
    struct bq_client_options o = {.memory = true, .queue_name = "cmp-c"};
    bq_client *c;
    bq_err err;
    REQUIRE(bq_client_new(&o, &c, &err) == BQ_OK);
    /* The Lua literals and the same messages in C: quotes, backslashes, newlines, tabs,
     * control bytes, '/', UTF-8. Compared with both paths of the Lua producer: plain runs
     * (no policy: src/lua/l_produce.c) and task.lua's (a route policy). */
    const char *lua_common = "{\"plain\", {role = \"agent\", content = \"q\\\"uote\\\\ nl\\n"
                             "tab\\t ctl\\1 \\u{e9}\\u{20ac}\\u{1F600}\"}, \"\"}";
    struct bq_message common[3] = {
        {"user", "plain"},
        {"agent", "q\"uote\\ nl\ntab\t ctl\x01 \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"},
        {"user", ""},
    };
    const char *lua_more = "{\"a/b \\b\\f\\127\"}";
    struct bq_message more[1] = {{"user", "a/b \b\f\x7f"}};
    const struct {
        const char *route, *lua;
        const struct bq_message *c;
        size_t n;
        const char *id;
    } cases[] = {
        {"nil", lua_common, common, 3, "c-1"},
        {"nil", lua_more, more, 1, "c-2"},
        {"function() return nil end", lua_common, common, 3, "c-3"},
        {"function() return nil end", lua_more, more, 1, "c-4"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char lua[4096];
        bool ok = lua_history(cases[i].route, cases[i].lua, lua, sizeof lua);
        if (!ok)
            printf("  lua: %s\n", lua);
        CHECK(ok);
        struct bq_task t = {"run", cases[i].id, "conv-1", cases[i].c, cases[i].n};
        CHECK_INT(bq_schedule(c, &t, &err), BQ_OK);
        struct bq_task_rec rec;
        bool found = mem_get(cases[i].id, &rec);
        CHECK(found);
        if (!ok || !found)
            break;
        CHECK_STR(rec.history, lua);
        CHECK_STR(rec.context_id, "conv-1");
        bq_task_rec_clear(&rec);
    }
    bq_client_free(c);
}

/* In a child process (the warning is once per process): a C producer on the in-memory
 * scheduler, with no worker in its process, says so once, as the Lua producer does. */
TEST(a_memory_producer_without_a_worker_warns_once)
{
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    fflush(stdout);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        bq_log_set_level("info");
        bq_log_set_format("text");
        struct bq_client_options o = {.memory = true, .queue_name = "warn:q"};
        bq_client *c = NULL;
        if (bq_client_new(&o, &c, NULL) != BQ_OK)
            _exit(3);
        struct bq_message m = {"user", "x"};
        struct bq_task t1 = {"run", "w1", NULL, &m, 1}, t2 = {"run", "w2", NULL, &m, 1};
        bq_status st = bq_schedule(c, &t1, NULL);
        if (st == BQ_OK)
            st = bq_schedule(c, &t2, NULL);
        bq_client_free(c);
        _exit(st == BQ_OK ? 0 : 4);
    }
    close(fds[1]);
    char out[8192];
    size_t len = 0;
    for (ssize_t n; (n = read(fds[0], out + len, sizeof out - 1 - len)) > 0;)
        len += (size_t)n;
    out[len] = '\0';
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    const char *first = strstr(out, " warn memory_scheduler_no_worker ");
    CHECK(first != NULL);
    CHECK(first == NULL || strstr(first + 10, "memory_scheduler_no_worker") == NULL); /* once */
    CHECK_CONTAINS(out, "queue=warn:q");
    CHECK_CONTAINS(out, "lost when it exits");
}

struct seen_events {
    char text[4096];
    char last[BQ_EVENT_ID_MAX];
    size_t entries;
};

static void on_entry(void *ud, const char *id, const char *json, size_t len)
{
    struct seen_events *s = ud;
    size_t have = strlen(s->text);
    snprintf(s->text + have, sizeof s->text - have, "%.*s\n", (int)len, json);
    snprintf(s->last, sizeof s->last, "%s", id);
    s->entries++;
}

TEST(runs_scheduled_from_c_are_task_events_a_c_reader_follows)
{
    NEED_REDIS();
    struct bq_client_options o = {0};
    char queue[96], id[96], id2[96];
    bq_client *c = open_client(&o, "events", queue, sizeof queue);
    REQUIRE(c != NULL);
    snprintf(id, sizeof id, "%s:ev:\"1\"", prefix);
    snprintf(id2, sizeof id2, "%s:ev:2", prefix);
    char last[BQ_EVENT_ID_MAX];
    bq_err err;
    CHECK_INT(bq_events_last(c, NULL, last, &err), BQ_OK);
    CHECK_STR(last, "0-0");
    struct bq_task t[3] = {{"run", id, NULL, hi, 1}, {"run", id, NULL, hi, 1}, {"cancel", id2, NULL, NULL, 0}};
    size_t sent = 0;
    CHECK_INT(bq_schedule_many(c, t, 3, &sent, &err), BQ_OK);
    CHECK_INT(sent, 2); /* the second run was a duplicate */
    struct bq_when later = {60, 0};
    CHECK_INT(bq_schedule_when(c, &(struct bq_task){"run", id2, NULL, hi, 1}, &later, &err), BQ_OK);
    /* The producer's events are written by its poster within a millisecond (feed_post.h):
     * read until both runs' are in, the scheduled run's first. */
    struct seen_events s = {"", "", 0};
    size_t n = 0;
    snprintf(s.last, sizeof s.last, "%s", last);
    for (int i = 0; i < 20 && strstr(s.text, "\"due_at\":") == NULL; i++)
        CHECK_INT(bq_events_read(c, NULL, s.last, 100, 1.0, on_entry, &s, &n, &err), BQ_OK);
    /* one "scheduled" for the run pushed (none for its duplicate or the cancel), one for the
     * delayed run, with its due time; the id escaped as JSON */
    char want[256];
    snprintf(want, sizeof want, "{\"event\":\"scheduled\",\"task_id\":\"%s:ev:\\\"1\\\"\",\"state\":\"submitted\",\"at\":", prefix);
    CHECK(strncmp(s.text, "[", 1) == 0 && strncmp(s.text + 1, want, strlen(want)) == 0);
    CHECK_CONTAINS(s.text, "\"due_at\":");
    int scheduled = 0;
    for (const char *p = s.text; (p = strstr(p, "\"scheduled\"")) != NULL; p++)
        scheduled++;
    CHECK_INT(scheduled, 2);
    /* after the newest: nothing, and a wait that ends on time */
    n = 9;
    CHECK_INT(bq_events_read(c, NULL, s.last, 100, 0.05, on_entry, &s, &n, &err), BQ_OK);
    CHECK_INT(n, 0);
    CHECK_INT(bq_events_read(c, NULL, "yesterday", 100, 0, on_entry, &s, &n, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "'yesterday' is not an event id");
    /* A cancel and a pause that change a stored task say so, as binduq.scheduler's do (the
     * C producer wrote neither until 2026-12-06): id4 canceled, id3 paused. */
    char id3[96], id4[96];
    snprintf(id3, sizeof id3, "%s:ev:3", prefix);
    snprintf(id4, sizeof id4, "%s:ev:4", prefix);
    struct bq_task runs2[2] = {{"run", id3, NULL, hi, 1}, {"run", id4, NULL, hi, 1}};
    CHECK_INT(bq_schedule_many(c, runs2, 2, &sent, &err), BQ_OK);
    struct bq_task ops2[2] = {{"cancel", id4, NULL, NULL, 0}, {"pause", id3, NULL, NULL, 0}};
    CHECK_INT(bq_schedule_many(c, ops2, 2, &sent, &err), BQ_OK);
    s.text[0] = '\0';
    for (int i = 0; i < 20 && strstr(s.text, "\"paused\"") == NULL; i++)
        CHECK_INT(bq_events_read(c, NULL, s.last, 100, 1.0, on_entry, &s, &n, &err), BQ_OK);
    snprintf(want, sizeof want, "{\"event\":\"canceled\",\"task_id\":\"%s\",\"state\":\"canceled\",\"at\":", id4);
    CHECK_CONTAINS(s.text, want);
    snprintf(want, sizeof want, "{\"event\":\"paused\",\"task_id\":\"%s\",\"state\":\"paused\",\"at\":", id3);
    CHECK_CONTAINS(s.text, want);
    bq_client_free(c);
    /* events off: nothing written, reading is refused */
    struct bq_client_options off = {.events_max = -1};
    c = open_client(&off, "events-off", queue, sizeof queue);
    REQUIRE(c != NULL);
    snprintf(id, sizeof id, "%s:evoff:1", prefix);
    CHECK_INT(bq_schedule(c, &(struct bq_task){"run", id, NULL, hi, 1}, &err), BQ_OK);
    CHECK_INT(bq_events_last(c, NULL, last, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "task events are off");
    char key[128];
    snprintf(key, sizeof key, "{%s}:events", queue);
    const char *argv[] = {"EXISTS", key};
    void *r = NULL;
    REQUIRE(c->broker->admin->command(c->broker, queue, 2, argv, NULL, &r, NULL) == BQ_OK);
    CHECK_INT(((redisReply *)r)->integer, 0);
    freeReplyObject(r);
    bq_client_free(c);
}

int main(void)
{
    redis_url = getenv("BQ_REDIS_URL");
    if (redis_url != NULL && *redis_url == '\0')
        redis_url = NULL;
    pg_url = getenv("BQ_PG_URL");
    if (pg_url != NULL && *pg_url == '\0')
        pg_url = NULL;
    snprintf(prefix, sizeof prefix, "test:%d", (int)getpid());
    bq_log_set_level("off");
    /* first: the warning is once per process, and a child inherits whether it was said */
    RUN(a_memory_producer_without_a_worker_warns_once);
    RUN(a_run_is_recorded_submitted_before_it_is_pushed);
    RUN(a_run_is_recorded_in_redis_with_storage_type_redis);
    RUN(duplicates_of_run_and_cancel_are_not_pushed_and_are_counted);
    RUN(a_cancel_is_stored_and_published_on_the_control_channel);
    RUN(a_pause_parks_a_submitted_task_and_asks_a_running_one);
    RUN(delayed_tasks_wait_in_the_delayed_set_and_bad_times_are_refused);
    RUN(the_route_callback_picks_the_queue);
    RUN(tasks_routed_in_turn_take_a_push_per_queue_in_order);
    RUN(a_storage_failure_stops_the_push);
    RUN(a_run_is_recorded_in_postgres_and_its_failure_stops_the_push);
    RUN(the_storage_comes_from_the_environment_as_the_lua_side_reads_it);
    RUN(a_run_scheduled_from_c_stores_the_same_history_as_from_lua);
    RUN(runs_scheduled_from_c_are_task_events_a_c_reader_follows);
    return check_report("test_client");
}
