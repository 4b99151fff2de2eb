/*
 * test_redis.c -- connection, pool, broker and the public producer API against a real
 * redis-server. The harness (tests/run) starts one on a free loopback port and passes
 * BQ_REDIS_URL; without it every test here is skipped.
 */
#include "check.h"

#include "../../src/binduq.h"
#include "../../src/broker/broker.h"
#include "../../src/core/clock.h"
#include "../../src/engine/client.h"
#include "../../src/net/conn.h"
#include "../../src/net/pool.h"

#include <pthread.h>
#include <unistd.h>

static const char *redis_url;
static char prefix[64];
static struct bq_conn_opts copts = {2.0, 2.0};

#define NEED_REDIS()                                                                           \
    do {                                                                                       \
        if (redis_url == NULL)                                                                 \
            SKIP("BQ_REDIS_URL is not set");                                                   \
    } while (0)

static bq_conn *open_conn(const char *url)
{
    struct bq_url u;
    bq_conn *c = NULL;
    bq_err err;
    if (bq_url_parse(url, "test", &u, &err) == BQ_OK && bq_conn_open(&u, &copts, &c, &err) != BQ_OK)
        printf("  open %s: %s\n", url, err.msg);
    bq_url_free(&u);
    return c;
}

/* redis://host:port/db of BQ_REDIS_URL with other credentials. */
static void url_with_auth(char *out, size_t size, const char *userinfo)
{
    const char *hostpart = strstr(redis_url, "://") + 3;
    snprintf(out, size, "redis://%s@%s", userinfo, hostpart);
}

TEST(conn_binary_safe_roundtrip_and_pipeline)
{
    NEED_REDIS();
    bq_conn *c = open_conn(redis_url);
    CHECK(c != NULL);
    if (c == NULL)
        return;
    char key[96];
    snprintf(key, sizeof key, "%s:bin", prefix);
    const char val[] = "a\0b\r\nc";
    const char *argv[] = {"SET", key, val};
    size_t lens[] = {3, strlen(key), sizeof val - 1};
    CHECK_INT(bq_conn_call(c, NULL, NULL, 3, argv, lens), BQ_OK);
    redisReply *r;
    CHECK_INT(bq_conn_callv(c, &r, NULL, "GET", key, NULL), BQ_OK);
    CHECK_INT(r->len, sizeof val - 1);
    CHECK(memcmp(r->str, val, sizeof val - 1) == 0);
    freeReplyObject(r);

    /* 100 pipelined INCRs, one flush, 100 replies in order. */
    snprintf(key, sizeof key, "%s:ctr", prefix);
    for (int i = 0; i < 100; i++) {
        const char *a[] = {"INCR", key};
        CHECK_INT(bq_conn_append(c, 2, a, NULL, NULL), BQ_OK);
    }
    CHECK_INT(bq_conn_flush(c, bq_now_mono() + 2, -1, NULL), BQ_OK);
    long long last = 0;
    for (int i = 0; i < 100; i++) {
        CHECK_INT(bq_conn_read(c, &r, bq_now_mono() + 2, -1, NULL), BQ_OK);
        last = r->integer;
        freeReplyObject(r);
    }
    CHECK_INT(last, 100);

    bq_err err;
    CHECK_INT(bq_conn_callv(c, NULL, &err, "LPUSH", NULL), BQ_EREDIS);
    CHECK_CONTAINS(err.msg, "LPUSH: ERR wrong number of arguments");
    CHECK(bq_conn_usable(c)); /* an error reply leaves the connection usable */
    bq_conn_close(c);
}

TEST(auth_errors_are_clear_and_secret)
{
    NEED_REDIS();
    char url[256];
    bq_err err;
    struct bq_url u;
    bq_conn *c = NULL;

    /* The default user has no password on the test server. */
    url_with_auth(url, sizeof url, ":hunter2");
    CHECK_INT(bq_url_parse(url, "test", &u, NULL), BQ_OK);
    CHECK_INT(bq_conn_open(&u, &copts, &c, &err), BQ_EAUTH);
    CHECK_CONTAINS(err.msg, "AUTH");
    CHECK_NOT_CONTAINS(err.msg, "hunter2");
    bq_url_free(&u);

    /* An ACL user whose password needs percent-encoding. */
    bq_conn *admin = open_conn(redis_url);
    CHECK(admin != NULL);
    if (admin == NULL)
        return;
    char user[80];
    snprintf(user, sizeof user, "binduq_test_%d", (int)getpid());
    CHECK_INT(bq_conn_callv(admin, NULL, &err, "ACL", "SETUSER", user, "on", ">p@ss w:rd",
                            "~*", "+@all", NULL), BQ_OK);
    char userinfo[160];
    snprintf(userinfo, sizeof userinfo, "%s:p%%40ss%%20w%%3Ard", user);
    url_with_auth(url, sizeof url, userinfo);
    CHECK_INT(bq_url_parse(url, "test", &u, NULL), BQ_OK);
    CHECK_INT(bq_conn_open(&u, &copts, &c, &err), BQ_OK);
    redisReply *r = NULL;
    if (c != NULL && bq_conn_callv(c, &r, NULL, "ACL", "WHOAMI", NULL) == BQ_OK) {
        CHECK_STR(r->str, user);
        freeReplyObject(r);
    }
    bq_conn_close(c);
    c = NULL;
    bq_url_free(&u);

    snprintf(userinfo, sizeof userinfo, "%s:wrongsecret", user);
    url_with_auth(url, sizeof url, userinfo);
    CHECK_INT(bq_url_parse(url, "test", &u, NULL), BQ_OK);
    CHECK_INT(bq_conn_open(&u, &copts, &c, &err), BQ_EAUTH);
    CHECK_CONTAINS(err.msg, "WRONGPASS");
    CHECK_NOT_CONTAINS(err.msg, "wrongsecret");
    bq_url_free(&u);
    bq_conn_callv(admin, NULL, NULL, "ACL", "DELUSER", user, NULL);
    bq_conn_close(admin);
}

TEST(connect_refused_names_the_address)
{
    struct bq_url u;
    bq_conn *c = NULL;
    bq_err err;
    /* Port 1 on loopback: nothing listens there. */
    CHECK_INT(bq_url_parse("redis://127.0.0.1:1/0", "test", &u, NULL), BQ_OK);
    CHECK_INT(bq_conn_open(&u, &copts, &c, &err), BQ_ECONNREFUSED);
    CHECK_CONTAINS(err.msg, "connect 127.0.0.1:1");
    bq_url_free(&u);
    CHECK_INT(bq_url_parse("unix:///nonexistent/redis.sock", "test", &u, NULL), BQ_OK);
    CHECK_INT(bq_conn_open(&u, &copts, &c, &err), BQ_ECONNREFUSED);
    bq_url_free(&u);
}

struct burst {
    bq_client *client;
    int id, ok, failed;
};

static void *burst_thread(void *arg)
{
    struct burst *b = arg;
    for (int i = 0; i < 20; i++) {
        char id[64];
        snprintf(id, sizeof id, "burst-%d-%d", b->id, i);
        struct bq_message m = {"user", "hello"};
        struct bq_task t = {"run", id, NULL, &m, 1};
        bq_err err;
        if (bq_schedule(b->client, &t, &err) == BQ_OK) {
            b->ok++;
        } else {
            b->failed++;
            printf("  thread %d: %s\n", b->id, err.msg);
        }
    }
    return NULL;
}

TEST(pool_burst_of_1000_schedules_from_50_threads_with_4_connections)
{
    NEED_REDIS();
    char queue[96];
    snprintf(queue, sizeof queue, "%s:burst", prefix);
    struct bq_client_options o = {redis_url, queue, 4, 0, 0, 10.0, false};
    bq_client *client;
    bq_err err;
    CHECK_INT(bq_client_new(&o, &client, &err), BQ_OK);
    struct burst b[50];
    pthread_t th[50];
    for (int i = 0; i < 50; i++) {
        b[i] = (struct burst){client, i, 0, 0};
        pthread_create(&th[i], NULL, burst_thread, &b[i]);
    }
    int ok = 0, failed = 0;
    for (int i = 0; i < 50; i++) {
        pthread_join(th[i], NULL);
        ok += b[i].ok;
        failed += b[i].failed;
    }
    CHECK_INT(ok, 1000);
    CHECK_INT(failed, 0);
    long long n = 0;
    CHECK_INT(bq_queue_length(client, &n, NULL), BQ_OK);
    CHECK_INT(n, 1000);
    struct bq_pool_stats ps;
    /* The pool never held more than its bound and some borrowers had to wait. */
    CHECK(client->broker->ops->pool_stats(client->broker, &ps));
    CHECK(ps.total <= 4);
    CHECK(ps.opened <= 4);
    CHECK(ps.waits > 0);
    CHECK_INT(ps.borrows, 1001);
    bq_client_free(client);
}

TEST(pool_times_out_when_exhausted)
{
    NEED_REDIS();
    struct bq_url u;
    CHECK_INT(bq_url_parse(redis_url, "test", &u, NULL), BQ_OK);
    bq_pool *p;
    CHECK_INT(bq_pool_new(&u, &copts, 1, 0.2, &p, NULL), BQ_OK);
    bq_url_free(&u);
    bq_conn *c1, *c2;
    bq_err err;
    CHECK_INT(bq_pool_borrow(p, &c1, &err), BQ_OK);
    CHECK_INT(bq_pool_borrow(p, &c2, &err), BQ_ETIMEDOUT);
    CHECK_CONTAINS(err.msg, "max_connections");
    bq_pool_return(p, c1);
    CHECK_INT(bq_pool_borrow(p, &c2, &err), BQ_OK);
    CHECK(c2 == c1); /* the idle connection is reused */
    bq_pool_return(p, c2);
    bq_pool_free(p);
}

TEST(pool_replaces_dead_connections)
{
    NEED_REDIS();
    struct bq_url u;
    CHECK_INT(bq_url_parse(redis_url, "test", &u, NULL), BQ_OK);
    bq_pool *p;
    CHECK_INT(bq_pool_new(&u, &copts, 3, 1.0, &p, NULL), BQ_OK);
    bq_url_free(&u);
    bq_conn *c[3];
    for (int i = 0; i < 3; i++)
        CHECK_INT(bq_pool_borrow(p, &c[i], NULL), BQ_OK);
    for (int i = 0; i < 3; i++)
        bq_pool_return(p, c[i]);
    /* Kill every other client, as a server restart would. */
    bq_conn *killer = open_conn(redis_url);
    CHECK(killer != NULL);
    if (killer != NULL) {
        CHECK_INT(bq_conn_callv(killer, NULL, NULL, "CLIENT", "KILL", "TYPE", "normal",
                                "SKIPME", "yes", NULL), BQ_OK);
        bq_conn_close(killer);
    }
    usleep(50000);
    bq_conn *fresh;
    bq_err err;
    CHECK_INT(bq_pool_borrow(p, &fresh, &err), BQ_OK);
    CHECK_INT(bq_conn_callv(fresh, NULL, &err, "PING", NULL), BQ_OK);
    bq_pool_return(p, fresh);
    struct bq_pool_stats ps;
    bq_pool_stats(p, &ps);
    CHECK_INT(ps.discarded, 3);
    CHECK_INT(ps.opened, 4);
    bq_pool_free(p);
}

struct fetcher {
    bq_broker *b;
    const char *queue;
    struct bq_batch got;
    bq_status st;
    double took;
};

static void *fetch_thread(void *arg)
{
    struct fetcher *f = arg;
    double t0 = bq_now_mono();
    f->st = f->b->ops->fetch(f->b, f->queue, 4, 10.0, &f->got, NULL);
    f->took = bq_now_mono() - t0;
    return NULL;
}

static bq_broker *open_broker(void)
{
    struct bq_broker_config bc = {redis_url, "test", 4, 2.0, 2.0, 2.0};
    bq_broker *b = NULL;
    bq_err err;
    if (bq_broker_open(&bc, &b, &err) != BQ_OK)
        printf("  broker: %s\n", err.msg);
    return b;
}

TEST(broker_fetch_is_fifo_and_batched)
{
    NEED_REDIS();
    bq_broker *b = open_broker();
    if (b == NULL)
        return;
    char queue[96];
    snprintf(queue, sizeof queue, "%s:fifo", prefix);
    struct bq_slice msgs[10];
    char text[10][16];
    for (int i = 0; i < 10; i++) {
        snprintf(text[i], sizeof text[i], "m%d", i);
        msgs[i] = (struct bq_slice){text[i], strlen(text[i])};
    }
    size_t pushed;
    CHECK_INT(b->ops->push(b, queue, msgs, 10, &pushed, NULL), BQ_OK);
    CHECK_INT(pushed, 10);
    struct bq_batch got = {NULL, 0, 0};
    CHECK_INT(b->ops->fetch(b, queue, 4, 1.0, &got, NULL), BQ_OK); /* blocking form */
    CHECK_INT(got.n, 4);
    CHECK_INT(b->ops->fetch(b, queue, 4, 0, &got, NULL), BQ_OK); /* non-blocking form */
    CHECK_INT(got.n, 8);
    CHECK_INT(b->ops->fetch(b, queue, 1, 1.0, &got, NULL), BQ_OK); /* BRPOP form */
    CHECK_INT(got.n, 9);
    for (size_t i = 0; i < got.n; i++)
        CHECK_STR(got.msgs[i].data, text[i]);
    long long n;
    CHECK_INT(b->ops->length(b, queue, BQ_LIST_READY, &n, NULL), BQ_OK);
    CHECK_INT(n, 1);
    bq_batch_free(&got);
    bq_broker_free(b);
}

TEST(broker_fetch_is_interruptible_and_loses_nothing)
{
    NEED_REDIS();
    bq_broker *b = open_broker();
    if (b == NULL)
        return;
    char queue[96];
    snprintf(queue, sizeof queue, "%s:intr", prefix);
    struct fetcher f = {b, queue, {NULL, 0, 0}, BQ_OK, 0};
    pthread_t th;
    pthread_create(&th, NULL, fetch_thread, &f);
    usleep(200000);
    b->ops->interrupt(b);
    pthread_join(th, NULL);
    CHECK_INT(f.st, BQ_OK);
    CHECK_INT(f.got.n, 0);
    CHECK(f.took < 5.0); /* CLIENT UNBLOCK, not the 10 s blocking timeout */

    /* A message pushed after the fetch starts wakes it at once. */
    pthread_create(&th, NULL, fetch_thread, &f);
    usleep(100000);
    struct bq_slice m = {"late", 4};
    size_t pushed;
    CHECK_INT(b->ops->push(b, queue, &m, 1, &pushed, NULL), BQ_OK);
    pthread_join(th, NULL);
    CHECK_INT(f.got.n, 1);
    if (f.got.n == 1)
        CHECK_STR(f.got.msgs[0].data, "late");
    bq_batch_free(&f.got);
    bq_broker_free(b);
}

TEST(public_api_schedule_length_health)
{
    NEED_REDIS();
    char queue[96];
    snprintf(queue, sizeof queue, "%s:api", prefix);
    struct bq_client_options o = {redis_url, queue, 2, 0, 0, 0, false};
    bq_client *c;
    bq_err err;
    CHECK_INT(bq_client_new(&o, &c, &err), BQ_OK);
    struct bq_message m = {"user", "hi"};
    struct bq_task tasks[3] = {{"run", "a", NULL, &m, 1}, {"cancel", "a", NULL, NULL, 0},
                               {"run", NULL, NULL, &m, 1}};
    size_t sent = 99;
    /* One invalid task: nothing at all is sent. */
    CHECK_INT(bq_schedule_many(c, tasks, 3, &sent, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "tasks[2]: task_id is required");
    CHECK_INT(sent, 0);
    CHECK_INT(bq_schedule_many(c, tasks, 2, &sent, &err), BQ_OK);
    CHECK_INT(sent, 2);
    struct bq_health h;
    CHECK_INT(bq_health_check(c, &h, &err), BQ_OK);
    CHECK(h.ok);
    CHECK_INT(h.queue_length, 2);
    CHECK_STR(h.backend, "redis");
    CHECK(h.rtt > 0 && h.rtt < 1.0);
    bq_client_free(c);

    /* A server that is down: a clear error, not a hang. */
    struct bq_client_options down = {"redis://127.0.0.1:1/0", queue, 2, 1.0, 1.0, 1.0, false};
    CHECK_INT(bq_client_new(&down, &c, &err), BQ_OK); /* lazy: opening does not connect */
    CHECK_INT(bq_schedule(c, &tasks[0], &err), BQ_ECONNREFUSED);
    CHECK_INT(bq_health_check(c, &h, &err), BQ_ECONNREFUSED);
    CHECK(!h.ok);
    bq_client_free(c);
}

int main(void)
{
    redis_url = getenv("BQ_REDIS_URL");
    if (redis_url != NULL && *redis_url == '\0')
        redis_url = NULL;
    snprintf(prefix, sizeof prefix, "test:%d", (int)getpid());
    bq_log_set_level("off");
    RUN(conn_binary_safe_roundtrip_and_pipeline);
    RUN(auth_errors_are_clear_and_secret);
    RUN(connect_refused_names_the_address);
    RUN(pool_burst_of_1000_schedules_from_50_threads_with_4_connections);
    RUN(pool_times_out_when_exhausted);
    RUN(pool_replaces_dead_connections);
    RUN(broker_fetch_is_fifo_and_batched);
    RUN(broker_fetch_is_interruptible_and_loses_nothing);
    RUN(public_api_schedule_length_health);
    return check_report("test_redis");
}
