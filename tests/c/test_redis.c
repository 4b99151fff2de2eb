/*
 * test_redis.c -- connection, pool, broker and the public producer API against a real
 * redis-server. The harness (tests/run) starts one on a free loopback port and passes
 * BQ_REDIS_URL; without it every test here is skipped.
 */
#include "check.h"

#include "../../src/binduq.h"
#include "../../src/broker/broker.h"
#include "../../src/core/alloc.h"
#include "../../src/core/clock.h"
#include "../../src/engine/client.h"
#include "../../src/engine/feed_post.h"
#include "../../src/net/conn.h"
#include "../../src/net/pool.h"

#include <math.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *redis_url;
static char prefix[64];
static struct bq_conn_opts copts = {.connect_timeout = 2.0, .command_timeout = 2.0};

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
    /* Task events off: their writes borrow too, as many times as the poster's thread writes
     * (feed_post.h), which depends on timing; this counts the schedules' own borrows. */
    struct bq_client_options o = {.url = redis_url, .queue_name = queue, .max_connections = 4,
                                  .pool_timeout = 10.0, .events_max = -1};
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
    /* The pool never held more than its bound. (Whether borrowers had to wait depends on the
     * scheduler; pool_borrow_waits_for_a_return shows the waiting deterministically.) */
    CHECK(client->broker->admin->pool_stats(client->broker, &ps));
    CHECK(ps.total <= 4);
    CHECK(ps.opened <= 4);
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

struct borrower {
    bq_pool *p;
    bq_status st;
    double waited;
};

static void *borrow_thread(void *arg)
{
    struct borrower *b = arg;
    bq_conn *c = NULL;
    double t0 = bq_now_mono();
    b->st = bq_pool_borrow(b->p, &c, NULL);
    b->waited = bq_now_mono() - t0;
    if (c != NULL)
        bq_pool_return(b->p, c);
    return NULL;
}

TEST(pool_borrow_waits_for_a_return)
{
    NEED_REDIS();
    struct bq_url u;
    CHECK_INT(bq_url_parse(redis_url, "test", &u, NULL), BQ_OK);
    bq_pool *p;
    CHECK_INT(bq_pool_new(&u, &copts, 1, 5.0, &p, NULL), BQ_OK);
    bq_url_free(&u);
    bq_conn *held;
    CHECK_INT(bq_pool_borrow(p, &held, NULL), BQ_OK);
    struct borrower b = {p, BQ_EIO, 0};
    pthread_t th;
    pthread_create(&th, NULL, borrow_thread, &b);
    usleep(200000);
    bq_pool_return(p, held);
    pthread_join(th, NULL);
    CHECK_INT(b.st, BQ_OK);
    CHECK(b.waited >= 0.15); /* it waited for the return instead of failing */
    struct bq_pool_stats ps;
    bq_pool_stats(p, &ps);
    CHECK_INT(ps.waits, 1);
    CHECK_INT(ps.opened, 1);
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

/* A connection that read a reply in the last BQ_CONN_FRESH seconds is lent without a peek at
 * its socket; an older one is checked. The socket is shut down here, so a peek sees EOF. */
TEST(usable_peeks_only_after_the_fresh_window)
{
    NEED_REDIS();
    bq_conn *c = open_conn(redis_url);
    CHECK(c != NULL);
    if (c == NULL)
        return;
    CHECK_INT(bq_conn_callv(c, NULL, NULL, "PING", NULL), BQ_OK);
    CHECK(shutdown(bq_conn_fd(c), SHUT_RDWR) == 0);
    bool usable = bq_conn_usable(c);
    /* A stalled machine can take longer than the window between the two calls: then either
     * answer is right, and only the second check below counts. */
    if (bq_now_mono() - bq_conn_last_used(c) < BQ_CONN_FRESH)
        CHECK(usable);
    usleep((useconds_t)(BQ_CONN_FRESH * 2e6));
    CHECK(!bq_conn_usable(c));
    CHECK(bq_conn_broken(c));
    bq_conn_close(c);
}

/* One fetch round trip with optional acks; returns the status, *acked if not NULL. */
static bq_status fetch(bq_broker *b, const struct bq_lessee *who, size_t max, double timeout,
                       const struct bq_msg *acks, size_t nacks, size_t *acked,
                       struct bq_batch *out)
{
    struct bq_fetch_req req = {max, timeout, acks, nacks, false, 0, false, NULL, NULL, 0};
    struct bq_fetch_res res;
    memset(&res, 0, sizeof res);
    bq_err err;
    bq_status st = b->ops->fetch(b, who, &req, &res, out, &err);
    if (st != BQ_OK)
        printf("  fetch: %s\n", err.msg);
    if (acked != NULL)
        *acked = res.acked;
    bq_batch_free(&res.dead);
    return st;
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
    const char *who_q[] = {f->queue};
    struct bq_lessee who = {who_q, 1, NULL, "fetcher", BQ_AT_MOST_ONCE, 0, 0};
    f->st = fetch(f->b, &who, 4, 10.0, NULL, 0, NULL, &f->got);
    f->took = bq_now_mono() - t0;
    return NULL;
}

static bq_broker *open_broker(void)
{
    struct bq_broker_config bc = {.url = redis_url, .url_source = "test", .max_connections = 4,
                                  .connect_timeout = 2.0, .command_timeout = 2.0,
                                  .pool_timeout = 2.0};
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
    const char *who_q[] = {queue};
    struct bq_lessee who = {who_q, 1, NULL, "w", BQ_AT_MOST_ONCE, 0, 0};
    CHECK_INT(fetch(b, &who, 4, 1.0, NULL, 0, NULL, &got), BQ_OK); /* BLMPOP */
    CHECK_INT(got.n, 4);
    CHECK_INT(fetch(b, &who, 4, 0, NULL, 0, NULL, &got), BQ_OK); /* RPOP n */
    CHECK_INT(got.n, 8);
    CHECK_INT(fetch(b, &who, 1, 1.0, NULL, 0, NULL, &got), BQ_OK); /* BRPOP */
    CHECK_INT(got.n, 9);
    for (size_t i = 0; i < got.n; i++)
        CHECK_STR(got.msgs[i].data, text[i]);
    long long n;
    CHECK_INT(b->admin->length(b, queue, BQ_LIST_READY, &n, NULL), BQ_OK);
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

/* A deduplicated push that fails part way (here without MULTI, the second call of
 * enqueue-N refused by the ACL) counts in n_sent what the server queued: it used to say 0
 * with 1,000 queued. */
TEST(a_failed_deduplicated_push_counts_what_was_queued)
{
    NEED_REDIS();
    bq_conn *admin = open_conn(redis_url);
    if (admin == NULL)
        return;
    char queue[96], k1[128], k2[128], k3[128], k4[128], url[256];
    snprintf(queue, sizeof queue, "%s:partial", prefix);
    snprintf(k1, sizeof k1, "~%s", queue);
    snprintf(k2, sizeof k2, "~{%s}:bell", queue);
    snprintf(k3, sizeof k3, "~{%s}:events", queue);
    snprintf(k4, sizeof k4, "~{%s}:dedup:run:a*", queue);
    CHECK_INT(bq_conn_callv(admin, NULL, NULL, "ACL", "SETUSER", "partial", "on", ">pw", "resetkeys",
                            k1, k2, k3, k4, "&*", "+@all", "-multi", NULL), BQ_OK);
    const char *rest = strstr(redis_url, "://");
    snprintf(url, sizeof url, "redis://partial:pw@%s", rest != NULL ? rest + 3 : "");
    struct bq_client_options o = {.url = url, .queue_name = queue, .max_connections = 2};
    bq_client *c = NULL;
    bq_err err;
    CHECK_INT(bq_client_new(&o, &c, &err), BQ_OK);
    enum { N = 1100 };
    static struct bq_task tasks[N];
    static char ids[N][16];
    struct bq_message m = {"user", "hi"};
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "%c%d", i < 1000 ? 'a' : 'b', i);
        tasks[i] = (struct bq_task){"run", ids[i], NULL, &m, 1};
    }
    size_t sent = 99;
    if (c != NULL) {
        CHECK_INT(bq_schedule_many(c, tasks, N, &sent, &err), BQ_EAUTH);
        CHECK_INT(sent, 1000);
        redisReply *r = NULL;
        if (bq_conn_callv(admin, &r, NULL, "LLEN", queue, NULL) == BQ_OK) {
            CHECK_INT(r->integer, 1000);
            freeReplyObject(r);
        }
        bq_client_free(c);
    }
    bq_conn_callv(admin, NULL, NULL, "ACL", "DELUSER", "partial", NULL);
    bq_conn_close(admin);
}

TEST(public_api_schedule_length_health)
{
    NEED_REDIS();
    char queue[96];
    snprintf(queue, sizeof queue, "%s:api", prefix);
    struct bq_client_options o = {.url = redis_url, .queue_name = queue, .max_connections = 2};
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
    struct bq_client_options down = {.url = "redis://127.0.0.1:1/0", .queue_name = queue,
                                     .max_connections = 2, .connect_timeout = 1.0,
                                     .command_timeout = 1.0, .pool_timeout = 1.0};
    CHECK_INT(bq_client_new(&down, &c, &err), BQ_OK); /* lazy: opening does not connect */
    CHECK_INT(bq_schedule(c, &tasks[0], &err), BQ_ECONNREFUSED);
    CHECK_INT(bq_health_check(c, &h, &err), BQ_ECONNREFUSED);
    CHECK(!h.ok);
    bq_client_free(c);
}

static long long len_of(bq_broker *b, const char *queue, enum bq_list which)
{
    long long n = -1;
    b->admin->length(b, queue, which, &n, NULL);
    return n;
}

static void push_texts(bq_broker *b, const char *queue, int n, const char *stem)
{
    for (int i = 0; i < n; i++) {
        char t[32];
        snprintf(t, sizeof t, "%s%d", stem, i);
        struct bq_slice m = {t, strlen(t)};
        size_t pushed;
        b->ops->push(b, queue, &m, 1, &pushed, NULL);
    }
}

/* The lease life cycle on both brokers: fetch leases, ack releases, hand back returns to the
 * front, retry goes through the delayed set, bury to the dead-letter list. */
static void lease_cycle(bq_broker *b, const char *queue)
{
    const char *who_q[] = {queue};
    struct bq_lessee who = {who_q, 1, NULL, "w1", BQ_AT_LEAST_ONCE, 0, 0};
    push_texts(b, queue, 6, "m");
    struct bq_batch got = {NULL, 0, 0};
    CHECK_INT(fetch(b, &who, 1, 1.0, NULL, 0, NULL, &got), BQ_OK); /* BLMOVE */
    CHECK_INT(fetch(b, &who, 3, 0, NULL, 0, NULL, &got), BQ_OK); /* fetch-2 */
    CHECK_INT(got.n, 4);
    for (size_t i = 0; i < got.n; i++) {
        char want[32];
        snprintf(want, sizeof want, "m%zu", i);
        CHECK_STR(got.msgs[i].data, want);
    }
    CHECK_INT(len_of(b, queue, BQ_LIST_READY), 2);
    /* Not in the workers set yet (no heartbeat), so INFLIGHT does not see it; the wip list
     * holds them all the same. Register and look again. */
    struct bq_batch dead = {NULL, 0, 0};
    CHECK_INT(b->ops->heartbeat(b, &who, 30, &dead, NULL), BQ_OK);
    CHECK_INT(dead.n, 0);
    if (strcmp(b->kind, "redis") == 0 || strcmp(b->kind, "memory") == 0)
        CHECK_INT(len_of(b, queue, BQ_LIST_INFLIGHT), 4);

    /* ack m0 together with the next fetch */
    struct bq_msg *a0 = &got.msgs[0];
    size_t acked = 0;
    CHECK_INT(fetch(b, &who, 0, 0, a0, 1, &acked, &got), BQ_OK);
    CHECK_INT(acked, 1);
    CHECK_INT(len_of(b, queue, BQ_LIST_INFLIGHT), 3);
    /* acking it again finds nothing: the lease is gone */
    CHECK_INT(b->ops->ack(b, &who, a0, 1, &acked, NULL), BQ_OK);
    CHECK_INT(acked, 0);

    /* hand m1 back: it is the next one taken */
    size_t count = 0;
    CHECK_INT(b->ops->handback(b, &who, &got.msgs[1], 1, &count, NULL), BQ_OK);
    CHECK_INT(count, 1);
    struct bq_batch again = {NULL, 0, 0};
    CHECK_INT(fetch(b, &who, 1, 0, NULL, 0, NULL, &again), BQ_OK);
    CHECK_INT(again.n, 1);
    if (again.n == 1)
        CHECK_STR(again.msgs[0].data, "m1");

    /* retry m2 after 50 ms: delayed, then promoted */
    bool held = false;
    struct bq_msg *a2 = &got.msgs[2];
    struct bq_slice next = {"#bq {\"attempt\":2}\nm2", 20};
    CHECK_INT(b->ops->retry(b, &who, a2, next, 0.05, &held, NULL), BQ_OK);
    CHECK(held);
    CHECK_INT(len_of(b, queue, BQ_LIST_DELAYED), 1);
    size_t moved = 9;
    double due = -2;
    CHECK_INT(b->ops->promote(b, queue, &moved, &due, NULL), BQ_OK);
    CHECK_INT(moved, 0);
    CHECK(due > 0 && due <= 0.06);
    usleep(80000);
    CHECK_INT(b->ops->promote(b, queue, &moved, &due, NULL), BQ_OK);
    CHECK_INT(moved, 1);
    CHECK(due == -1);
    CHECK_INT(len_of(b, queue, BQ_LIST_DELAYED), 0);
    /* a second retry of the same lease finds it gone and schedules nothing */
    CHECK_INT(b->ops->retry(b, &who, a2, next, 0.05, &held, NULL), BQ_OK);
    CHECK(!held);
    CHECK_INT(len_of(b, queue, BQ_LIST_DELAYED), 0);

    /* bury m3 */
    struct bq_msg *a3 = &got.msgs[3];
    struct bq_slice entry = {"{\"reason\":\"x\"}\nm3", 17};
    CHECK_INT(b->ops->bury(b, &who, a3, entry, &held, NULL), BQ_OK);
    CHECK(held);
    CHECK_INT(len_of(b, queue, BQ_LIST_DEAD), 1);

    /* the dead-letter list: requeue puts the original back; remove and purge delete */
    bool done = false;
    CHECK_INT(b->admin->dlq_requeue(b, queue, entry, &done, NULL), BQ_OK);
    CHECK(done);
    CHECK_INT(b->admin->dlq_requeue(b, queue, entry, &done, NULL), BQ_OK);
    CHECK(!done);
    struct bq_batch all = {NULL, 0, 0};
    CHECK_INT(b->admin->range(b, queue, BQ_LIST_READY, 0, 0, &all, NULL), BQ_OK);
    CHECK_INT(all.n, 1);
    if (all.n == 1)
        /* requeued at the back of the line, as a fresh first attempt */
        CHECK_STR(all.msgs[0].data, "#bq {\"attempt\":1,\"requeued\":1}\nm3");
    long long purged = -1;
    struct bq_slice e2 = {"{\"reason\":\"y\"}\nzz", 17};
    struct bq_lessee amo = {who_q, 1, NULL, "w1", BQ_AT_MOST_ONCE, 0, 0};
    struct bq_msg e2m = {(char *)e2.p, e2.len, 0, false, 0, 0};
    CHECK_INT(b->ops->bury(b, &amo, &e2m, e2, &held, NULL), BQ_OK);
    CHECK_INT(b->admin->dlq_remove(b, queue, e2, &done, NULL), BQ_OK);
    CHECK(done);
    CHECK_INT(b->ops->bury(b, &amo, &e2m, e2, &held, NULL), BQ_OK);
    CHECK_INT(b->admin->dlq_purge(b, queue, &purged, NULL), BQ_OK);
    CHECK_INT(purged, 1);
    CHECK_INT(len_of(b, queue, BQ_LIST_DEAD), 0);
    CHECK_INT(b->ops->unregister(b, &who, NULL), BQ_OK);
    bq_batch_free(&dead);
    bq_batch_free(&all);
    bq_batch_free(&again);
    bq_batch_free(&got);
}

/* A producer's poster keeps an entry only for a queue with events pending: one routing to
 * 2,000 queue names, each written, keeps none (it kept all 2,000, and scanned them on every
 * event). */
TEST(the_event_poster_forgets_queues_it_has_written)
{
    bq_broker *b;
    CHECK_INT(bq_broker_open_memory(&b, NULL), BQ_OK);
    bq_feed_post *p = bq_feed_post_new(b);
    REQUIRE(p != NULL);
    static const char ev[] = "{\"event\":\"scheduled\",\"task_id\":\"t\",\"state\":\"submitted\",\"at\":1}";
    for (int i = 0; i < 2000; i++) {
        char q[32];
        snprintf(q, sizeof q, "test:poster:%d", i);
        bq_feed_post_add(p, q, ev, sizeof ev - 1);
    }
    bq_feed_post_flush(p);
    CHECK_INT((int)bq_feed_post_queues(p), 0);
    char last[64];
    CHECK_INT(b->ops->feed_last(b, "test:poster:1999", last, NULL), BQ_OK);
    CHECK(strcmp(last, "0-0") != 0); /* written */
    bq_feed_post_free(p);
    bq_broker_free(b);
}

TEST(lease_cycle_memory)
{
    bq_broker *b;
    CHECK_INT(bq_broker_open_memory(&b, NULL), BQ_OK);
    lease_cycle(b, "test:lease:mem");
    bq_broker_free(b);
}

TEST(lease_cycle_redis)
{
    NEED_REDIS();
    bq_broker *b = open_broker();
    if (b == NULL)
        return;
    char queue[96];
    snprintf(queue, sizeof queue, "%s:lease", prefix);
    lease_cycle(b, queue);
    bq_broker_free(b);
}

/* A fetch of several messages stops at the lessee's byte budget (the first is taken whatever
 * its size), in every mode, and what it leaves stays in order at the front. */
TEST(fetch_stops_at_the_byte_budget)
{
    NEED_REDIS();
    bq_broker *b = open_broker();
    if (b == NULL)
        return;
    char q1[96], q2[96];
    snprintf(q1, sizeof q1, "%s:bytes1", prefix);
    snprintf(q2, sizeof q2, "%s:bytes2", prefix);
    size_t big = 100000;
    char *text = bq_malloc(big + 1);
    struct bq_slice msgs[6];
    char *copies[6];
    for (int i = 0; i < 6; i++) {
        memset(text, 'a' + i, big);
        text[big] = '\0';
        copies[i] = bq_strdup(text);
        msgs[i] = (struct bq_slice){copies[i], big};
    }
    size_t pushed;
    CHECK_INT(b->ops->push(b, q1, msgs, 6, &pushed, NULL), BQ_OK);
    const char *one[] = {q1};
    struct bq_lessee lw = {one, 1, NULL, "wb", BQ_AT_LEAST_ONCE, 0, 250000};
    struct bq_batch got = {NULL, 0, 0};
    CHECK_INT(fetch(b, &lw, 6, 0, NULL, 0, NULL, &got), BQ_OK); /* fetch-2, leased */
    CHECK_INT(got.n, 2); /* 200,000 bytes; a third would pass 250,000 */
    struct bq_lessee lm = {one, 1, NULL, "wb", BQ_AT_MOST_ONCE, 0, 250000};
    CHECK_INT(fetch(b, &lm, 6, 0, NULL, 0, NULL, &got), BQ_OK); /* fetch-2, popped */
    CHECK_INT(got.n, 4);
    struct bq_lessee tiny = {one, 1, NULL, "wb", BQ_AT_MOST_ONCE, 0, 10};
    CHECK_INT(fetch(b, &tiny, 6, 0, NULL, 0, NULL, &got), BQ_OK); /* the first, whatever */
    CHECK_INT(got.n, 5);
    struct bq_lessee bl = {one, 1, NULL, "wb", BQ_AT_MOST_ONCE, 100000, 100000};
    CHECK_INT(fetch(b, &bl, 6, 1.0, NULL, 0, NULL, &got), BQ_OK); /* BLMPOP COUNT 1 */
    CHECK_INT(got.n, 6);
    for (size_t i = 0; i < got.n; i++)
        CHECK(got.msgs[i].len == big && got.msgs[i].data[0] == (char)('a' + i)); /* in order */
    bq_batch_clear(&got);

    /* several queues: the budget counts across them */
    CHECK_INT(b->ops->push(b, q1, msgs, 2, &pushed, NULL), BQ_OK);
    CHECK_INT(b->ops->push(b, q2, msgs + 2, 2, &pushed, NULL), BQ_OK);
    const char *two[] = {q1, q2};
    struct bq_lessee lt = {two, 2, NULL, "wb2", BQ_AT_LEAST_ONCE, 0, 250000};
    CHECK_INT(fetch(b, &lt, 6, 0, NULL, 0, NULL, &got), BQ_OK); /* fetchm-N */
    CHECK_INT(got.n, 2);
    CHECK_INT(fetch(b, &lt, 6, 0, NULL, 0, NULL, &got), BQ_OK);
    CHECK_INT(got.n, 4);
    for (size_t i = 0; i < got.n; i++)
        CHECK(got.msgs[i].data[0] == (char)('a' + i));
    CHECK_INT(len_of(b, q1, BQ_LIST_READY), 0);
    CHECK_INT(len_of(b, q2, BQ_LIST_READY), 0);
    bq_batch_free(&got);
    for (int i = 0; i < 6; i++)
        bq_free(copies[i]);
    bq_free(text);
    bq_broker_free(b);
}

/* The element at `index` of list `key`, as LINDEX answers ("" when there is none). */
static void lindex(bq_broker *b, const char *key, const char *index, char *out, size_t size)
{
    const char *argv[] = {"LINDEX", key, index};
    void *rep = NULL;
    out[0] = '\0';
    if (b->admin->command(b, key, 3, argv, NULL, &rep, NULL) == BQ_OK) {
        redisReply *r = rep;
        if (r->type == REDIS_REPLY_STRING)
            snprintf(out, size, "%s", r->str);
        freeReplyObject(r);
    }
}

/* A queue whose producers RPUSH (Bindu's RedisScheduler) is taken from the left: oldest
 * first in every fetch mode, and what binduq puts back goes where it belongs. */
TEST(queue_order_rpush_is_fifo_from_the_left)
{
    NEED_REDIS();
    char queue[96], mixed[96];
    snprintf(queue, sizeof queue, "%s:rpush", prefix);
    snprintf(mixed, sizeof mixed, "%s:lpushed", prefix);
    struct bq_orders orders = {BQ_ORDER_RPUSH, 0, NULL, NULL};
    CHECK_INT(bq_orders_set(&orders, mixed, BQ_ORDER_LPUSH), BQ_OK);
    CHECK_INT(bq_orders_of(&orders, queue), BQ_ORDER_RPUSH);
    CHECK_INT(bq_orders_of(&orders, mixed), BQ_ORDER_LPUSH);
    struct bq_broker_config bc = {.url = redis_url, .url_source = "test", .max_connections = 4,
                                  .connect_timeout = 2.0, .command_timeout = 2.0,
                                  .pool_timeout = 2.0, .orders = &orders};
    bq_broker *b = NULL;
    CHECK_INT(bq_broker_open(&bc, &b, NULL), BQ_OK);
    bq_orders_free(&orders); /* the broker keeps its own copy */
    if (b == NULL)
        return;
    char at[64];
    push_texts(b, queue, 3, "p");
    lindex(b, queue, "0", at, sizeof at);
    CHECK_STR(at, "p0"); /* RPUSH: the oldest at the left */
    lindex(b, queue, "-1", at, sizeof at);
    CHECK_STR(at, "p2");
    struct bq_batch got = {NULL, 0, 0};
    const char *who_q[] = {queue};
    struct bq_lessee amo = {who_q, 1, NULL, "w", BQ_AT_MOST_ONCE, 0, 0};
    push_texts(b, queue, 3, "q");
    CHECK_INT(fetch(b, &amo, 2, 1.0, NULL, 0, NULL, &got), BQ_OK); /* BLMPOP LEFT */
    CHECK_INT(fetch(b, &amo, 2, 0, NULL, 0, NULL, &got), BQ_OK);   /* LPOP n */
    CHECK_INT(fetch(b, &amo, 1, 1.0, NULL, 0, NULL, &got), BQ_OK); /* BLPOP */
    CHECK_INT(got.n, 5);
    const char *want[] = {"p0", "p1", "p2", "q0", "q1"};
    for (size_t i = 0; i < got.n && i < 5; i++)
        CHECK_STR(got.msgs[i].data, want[i]);
    bq_batch_clear(&got);
    CHECK_INT(fetch(b, &amo, 1, 0, NULL, 0, NULL, &got), BQ_OK); /* empty it: q2 */
    bq_batch_clear(&got);

    /* the whole lease cycle, as on a queue whose producers LPUSH */
    lease_cycle(b, queue);
    /* the range newest first, whichever end that is */
    struct bq_batch all = {NULL, 0, 0};
    CHECK_INT(b->admin->range(b, queue, BQ_LIST_READY, 0, -1, &all, NULL), BQ_OK);
    CHECK_INT(all.n, 4); /* m4 m5, m2 promoted to the front, m3 requeued at the back */
    if (all.n == 4) {
        CHECK_CONTAINS(all.msgs[0].data, "\nm3");
        CHECK_STR(all.msgs[1].data, "m5");
        CHECK_STR(all.msgs[2].data, "m4");
        CHECK_CONTAINS(all.msgs[3].data, "\nm2");
    }
    bq_batch_free(&all);

    /* a dead worker's tasks return to the front, oldest first */
    char rq[96];
    snprintf(rq, sizeof rq, "%s:rpush-reap", prefix);
    const char *rq_q[] = {rq};
    struct bq_lessee dead = {rq_q, 1, NULL, "dead-r", BQ_AT_LEAST_ONCE, 0, 0};
    struct bq_lessee alive = {rq_q, 1, NULL, "live-r", BQ_AT_LEAST_ONCE, 0, 0};
    struct bq_batch ids = {NULL, 0, 0};
    push_texts(b, rq, 3, "r");
    CHECK_INT(b->ops->heartbeat(b, &dead, 0.2, &ids, NULL), BQ_OK);
    CHECK_INT(fetch(b, &dead, 2, 0, NULL, 0, NULL, &got), BQ_OK); /* fetch-2 with LPOP */
    CHECK_INT(got.n, 2);
    usleep(300000);
    long long recovered = 0;
    CHECK_INT(b->ops->reap(b, rq, "dead-r", &recovered, NULL), BQ_OK);
    CHECK_INT(recovered, 2);
    bq_batch_clear(&got);
    CHECK_INT(fetch(b, &alive, 3, 0, NULL, 0, NULL, &got), BQ_OK);
    CHECK_INT(got.n, 3);
    for (size_t i = 0; i < got.n; i++) {
        char tail[32];
        snprintf(tail, sizeof tail, "r%zu", i);
        CHECK_CONTAINS(got.msgs[i].data, tail);
    }
    bq_batch_clear(&got);
    b->ops->unregister(b, &alive, NULL);

    /* several queues of different orders, each taken oldest first (fetchm-N), by priority */
    snprintf(queue, sizeof queue, "%s:rpush2", prefix); /* a fresh one */
    push_texts(b, mixed, 2, "l");
    push_texts(b, queue, 2, "h");
    lindex(b, mixed, "0", at, sizeof at);
    CHECK_STR(at, "l1"); /* the LPUSH queue keeps its newest at the left */
    const char *two[] = {queue, mixed};
    struct bq_lessee both = {two, 2, NULL, "w2", BQ_AT_LEAST_ONCE, 0, 0};
    CHECK_INT(fetch(b, &both, 4, 0, NULL, 0, NULL, &got), BQ_OK);
    CHECK_INT(got.n, 4);
    const char *want2[] = {"h0", "h1", "l0", "l1"};
    for (size_t i = 0; i < got.n && i < 4; i++)
        CHECK_STR(got.msgs[i].data, want2[i]);
    size_t count = 0;
    CHECK_INT(b->ops->handback(b, &both, got.msgs, got.n, &count, NULL), BQ_OK);
    CHECK_INT(count, 4);
    lindex(b, queue, "0", at, sizeof at);
    CHECK_STR(at, "h0"); /* handed back to the front, in order */
    lindex(b, mixed, "-1", at, sizeof at);
    CHECK_STR(at, "l0");
    bq_batch_free(&ids);
    bq_batch_free(&got);
    bq_broker_free(b);
}

/* What binduq queues again in Bindu's format keeps its header inside (broker.h), sealed:
 * a task recovered from a dead worker and a requeued dead letter. */
TEST(bindu_format_headers_are_embedded_and_sealed)
{
    NEED_REDIS();
    bq_broker *b = open_broker();
    if (b == NULL)
        return;
    char queue[96];
    snprintf(queue, sizeof queue, "%s:embed", prefix);
    static const char op[] = "{\"operation\": \"run\", \"params\": {\"task_id\": \"e1\"}, "
                             "\"trace_id\": null, \"span_id\": null}";
    struct bq_slice m = {op, sizeof op - 1};
    size_t pushed;
    CHECK_INT(b->ops->push(b, queue, &m, 1, &pushed, NULL), BQ_OK);
    const char *qs[] = {queue};
    struct bq_lessee dead = {qs, 1, NULL, "dead-e", BQ_AT_LEAST_ONCE, 0, 0};
    struct bq_lessee live = {qs, 1, NULL, "live-e", BQ_AT_LEAST_ONCE, 0, 0};
    struct bq_batch ids = {NULL, 0, 0}, got = {NULL, 0, 0};
    CHECK_INT(b->ops->heartbeat(b, &dead, 0.2, &ids, NULL), BQ_OK);
    CHECK_INT(fetch(b, &dead, 1, 0, NULL, 0, NULL, &got), BQ_OK);
    CHECK_INT(got.n, 1);
    CHECK(!got.msgs[0].sealed);
    bq_batch_clear(&got);
    usleep(300000);
    long long recovered = 0;
    CHECK_INT(b->ops->reap(b, queue, "dead-e", &recovered, NULL), BQ_OK);
    CHECK_INT(recovered, 1);
    CHECK_INT(b->ops->heartbeat(b, &live, 30, &ids, NULL), BQ_OK);
    CHECK_INT(fetch(b, &live, 1, 0, NULL, 0, NULL, &got), BQ_OK);
    CHECK_INT(got.n, 1);
    if (got.n == 1) {
        const struct bq_msg *r = &got.msgs[0];
        CHECK(r->sealed);
        size_t k = bq_embedded_header(r->data, r->len);
        CHECK_INT(k, sizeof op - 2); /* the original, less its '}', then the header */
        CHECK(memcmp(r->data, op, sizeof op - 2) == 0);
        CHECK_CONTAINS(r->data + k, "\"attempt\":2");
        CHECK_CONTAINS(r->data + k, "\"redelivered\":1");
        struct bq_batch again = {NULL, 0, 0};
        size_t acked;
        CHECK_INT(fetch(b, &live, 0, 0, r, 1, &acked, &again), BQ_OK); /* ack: releases the seal */
        CHECK_INT(acked, 1);
        bq_batch_free(&again);
    }
    bq_batch_clear(&got);
    /* a requeued dead letter */
    char entry[512];
    int n = snprintf(entry, sizeof entry, "{\"reason\":\"x\"}\n%s", op);
    bool done = false, held = false;
    struct bq_lessee amo = {qs, 1, NULL, "live-e", BQ_AT_MOST_ONCE, 0, 0};
    struct bq_msg em = {(char *)op, sizeof op - 1, 0, false, 0, 0};
    CHECK_INT(b->ops->bury(b, &amo, &em, (struct bq_slice){entry, (size_t)n}, &held, NULL), BQ_OK);
    CHECK_INT(b->admin->dlq_requeue(b, queue, (struct bq_slice){entry, (size_t)n}, &done, NULL),
              BQ_OK);
    CHECK(done);
    CHECK_INT(fetch(b, &live, 1, 0, NULL, 0, NULL, &got), BQ_OK);
    CHECK_INT(got.n, 1);
    if (got.n == 1) {
        CHECK(got.msgs[0].sealed);
        size_t k = bq_embedded_header(got.msgs[0].data, got.msgs[0].len);
        CHECK_INT(k, sizeof op - 2);
        CHECK_STR(got.msgs[0].data + k, ",\"binduq\":{\"attempt\":1,\"requeued\":1}}");
        size_t acked;
        struct bq_batch none = {NULL, 0, 0};
        CHECK_INT(fetch(b, &live, 0, 0, got.msgs, 1, &acked, &none), BQ_OK);
        bq_batch_free(&none);
    }
    char seals[128];
    snprintf(seals, sizeof seals, "{%s}:seals", queue);
    long long left = -1;
    const char *argv[] = {"HLEN", seals};
    void *rep = NULL;
    if (b->admin->command(b, queue, 2, argv, NULL, &rep, NULL) == BQ_OK) {
        left = ((redisReply *)rep)->integer;
        freeReplyObject(rep);
    }
    CHECK_INT(left, 0); /* every seal released */
    b->ops->unregister(b, &live, NULL);
    bq_batch_free(&ids);
    bq_batch_free(&got);
    bq_broker_free(b);
}

TEST(a_dead_workers_tasks_are_reaped_with_their_attempt_counted)
{
    NEED_REDIS();
    bq_broker *b = open_broker();
    if (b == NULL)
        return;
    char queue[96];
    snprintf(queue, sizeof queue, "%s:reap", prefix);
    const char *dead_q[] = {queue};
    struct bq_lessee dead = {dead_q, 1, NULL, "dead-worker", BQ_AT_LEAST_ONCE, 0, 0};
    const char *alive_q[] = {queue};
    struct bq_lessee alive = {alive_q, 1, NULL, "live-worker", BQ_AT_LEAST_ONCE, 0, 0};
    push_texts(b, queue, 3, "r");
    struct bq_batch ids = {NULL, 0, 0};
    CHECK_INT(b->ops->heartbeat(b, &dead, 0.3, &ids, NULL), BQ_OK);
    struct bq_batch got = {NULL, 0, 0};
    CHECK_INT(fetch(b, &dead, 3, 0, NULL, 0, NULL, &got), BQ_OK);
    CHECK_INT(got.n, 3);
    CHECK_INT(b->ops->heartbeat(b, &alive, 30, &ids, NULL), BQ_OK);
    CHECK_INT(ids.n, 0); /* the lease still runs */
    long long recovered = 0;
    CHECK_INT(b->ops->reap(b, queue, "dead-worker", &recovered, NULL), BQ_OK);
    CHECK_INT(recovered, -1); /* reaping a live worker does nothing */
    usleep(400000);
    CHECK_INT(b->ops->heartbeat(b, &alive, 30, &ids, NULL), BQ_OK);
    CHECK_INT(ids.n, 1);
    if (ids.n == 1)
        CHECK_STR(ids.msgs[0].data, "dead-worker");
    CHECK_INT(b->ops->reap(b, queue, "dead-worker", &recovered, NULL), BQ_OK);
    CHECK_INT(recovered, 3);
    bq_batch_free(&ids);
    CHECK_INT(len_of(b, queue, BQ_LIST_INFLIGHT), 0);
    struct bq_batch back = {NULL, 0, 0};
    CHECK_INT(fetch(b, &alive, 3, 0, NULL, 0, NULL, &back), BQ_OK);
    CHECK_INT(back.n, 3);
    /* oldest first again, each with a header counting the attempt the dead worker used */
    for (size_t i = 0; i < back.n; i++) {
        CHECK_CONTAINS(back.msgs[i].data, "\"attempt\":2");
        CHECK_CONTAINS(back.msgs[i].data, "\"redelivered\":1");
        char tail[32];
        snprintf(tail, sizeof tail, "\nr%zu", i);
        CHECK_CONTAINS(back.msgs[i].data, tail);
    }
    bq_batch_free(&got);
    bq_batch_free(&back);
    bq_broker_free(b);
}

/* The seals (broker.h): a "#bq" header counts only on a message binduq queued again. */
static void seal_cycle(bq_broker *b, const char *queue, bq_conn *admin)
{
    const char *who_q[] = {queue};
    struct bq_lessee who = {who_q, 1, NULL, "sw", BQ_AT_LEAST_ONCE, 0, 0};
    struct bq_batch ids = {NULL, 0, 0}, got = {NULL, 0, 0};
    CHECK_INT(b->ops->heartbeat(b, &who, 30, &ids, NULL), BQ_OK);
    static const char forged[] = "#bq {\"attempt\":2,\"redelivered\":1}\n{\"type\":\"run\"}";
    struct bq_slice in[] = {{"plain", 5}, {forged, sizeof forged - 1}, {"m", 1}};
    size_t pushed;
    CHECK_INT(b->ops->push(b, queue, in, 3, &pushed, NULL), BQ_OK);
    CHECK_INT(fetch(b, &who, 3, 0, NULL, 0, NULL, &got), BQ_OK);
    CHECK_INT(got.n, 3);
    if (got.n != 3)
        goto out;
    CHECK(!got.msgs[1].sealed); /* a producer wrote that header */

    /* m is retried: its retry form is sealed; a copy of that header line on other bytes,
     * pushed by anyone, is not */
    static const char next[] = "#bq {\"attempt\":2,\"id\":\"x1\"}\nm";
    static const char copy[] = "#bq {\"attempt\":2,\"id\":\"x1\"}\nother";
    bool held = false;
    CHECK_INT(b->ops->retry(b, &who, &got.msgs[2], (struct bq_slice){next, sizeof next - 1}, 0,
                            &held, NULL), BQ_OK);
    CHECK(held);
    size_t moved;
    double due;
    CHECK_INT(b->ops->promote(b, queue, &moved, &due, NULL), BQ_OK);
    CHECK_INT(moved, 1);
    struct bq_slice c1 = {copy, sizeof copy - 1};
    CHECK_INT(b->ops->push(b, queue, &c1, 1, &pushed, NULL), BQ_OK);
    CHECK_INT(fetch(b, &who, 2, 0, NULL, 0, NULL, &got), BQ_OK);
    CHECK_INT(got.n, 5);
    if (got.n != 5)
        goto out;
    CHECK_STR(got.msgs[3].data, next);
    CHECK(got.msgs[3].sealed);
    CHECK_STR(got.msgs[4].data, copy);
    CHECK(!got.msgs[4].sealed);

    /* the forged one is dead-lettered, then requeued by an operator: now binduq wrote it */
    struct bq_slice entry = {"{\"reason\":\"forged\"}\nbody", 24};
    CHECK_INT(b->ops->bury(b, &who, &got.msgs[1], entry, &held, NULL), BQ_OK);
    bool done = false;
    CHECK_INT(b->admin->dlq_requeue(b, queue, entry, &done, NULL), BQ_OK);
    CHECK(done);
    CHECK_INT(fetch(b, &who, 1, 0, NULL, 0, NULL, &got), BQ_OK);
    CHECK_INT(got.n, 6);
    if (got.n != 6)
        goto out;
    CHECK_STR(got.msgs[5].data, "#bq {\"attempt\":1,\"requeued\":1}\nbody");
    CHECK(got.msgs[5].sealed);
    if (admin == NULL)
        goto out;

    /* Redis: a dead worker's forged header stays part of the body it is recovered with;
     * its sealed one is updated. Every seal is released once the messages are done. */
    char seals[128];
    snprintf(seals, sizeof seals, "{%s}:seals", queue);
    const char *dq[] = {queue};
    struct bq_lessee dead = {dq, 1, NULL, "sdead", BQ_AT_LEAST_ONCE, 0, 0};
    CHECK_INT(b->ops->heartbeat(b, &dead, 0.2, &ids, NULL), BQ_OK);
    struct bq_slice again[] = {{forged, sizeof forged - 1}};
    CHECK_INT(b->ops->push(b, queue, again, 1, &pushed, NULL), BQ_OK);
    struct bq_batch dgot = {NULL, 0, 0};
    CHECK_INT(fetch(b, &dead, 1, 0, NULL, 0, NULL, &dgot), BQ_OK);
    /* the dead worker also held the sealed requeued message (handed over by hand here) */
    size_t n = 0;
    CHECK_INT(b->ops->handback(b, &who, &got.msgs[5], 1, &n, NULL), BQ_OK);
    CHECK_INT(fetch(b, &dead, 1, 0, NULL, 0, NULL, &dgot), BQ_OK);
    CHECK_INT(dgot.n, 2);
    usleep(300000);
    long long recovered = 0;
    CHECK_INT(b->ops->reap(b, queue, "sdead", &recovered, NULL), BQ_OK);
    CHECK_INT(recovered, 2);
    struct bq_batch back = {NULL, 0, 0};
    CHECK_INT(fetch(b, &who, 2, 0, NULL, 0, NULL, &back), BQ_OK);
    CHECK_INT(back.n, 2);
    for (size_t i = 0; i < back.n; i++) {
        CHECK(back.msgs[i].sealed);
        CHECK_CONTAINS(back.msgs[i].data, "\"redelivered\":1");
    }
    if (back.n == 2) {
        /* oldest first: the forged one, its whole text now the body */
        CHECK_CONTAINS(back.msgs[0].data, "}\n#bq {\"attempt\":2,\"redelivered\":1}\n");
        CHECK_CONTAINS(back.msgs[1].data, "\"attempt\":2");
        CHECK_CONTAINS(back.msgs[1].data, "\"requeued\":1");
        CHECK_CONTAINS(back.msgs[1].data, "}\nbody");
    }
    /* acknowledge everything still held: no seal is left behind */
    struct bq_msg acks[] = {got.msgs[0], got.msgs[3], got.msgs[4], back.msgs[0], back.msgs[1]};
    size_t acked = 0;
    CHECK_INT(b->ops->ack(b, &who, acks, back.n == 2 ? 5 : 3, &acked, NULL), BQ_OK);
    CHECK_INT(acked, back.n == 2 ? 5 : 3);
    redisReply *r = NULL;
    CHECK_INT(bq_conn_callv(admin, &r, NULL, "HLEN", seals, NULL), BQ_OK);
    CHECK_INT(r ? r->integer : -1, 0);
    if (r)
        freeReplyObject(r);
    bq_batch_free(&dgot);
    bq_batch_free(&back);
out:
    bq_batch_free(&ids);
    bq_batch_free(&got);
}

TEST(seals_tell_binduqs_headers_from_forged_ones_memory)
{
    bq_broker *b;
    CHECK_INT(bq_broker_open_memory(&b, NULL), BQ_OK);
    seal_cycle(b, "test:seal:mem", NULL);
    bq_broker_free(b);
}

TEST(seals_tell_binduqs_headers_from_forged_ones_redis)
{
    NEED_REDIS();
    bq_broker *b = open_broker();
    bq_conn *admin = open_conn(redis_url);
    char queue[96];
    snprintf(queue, sizeof queue, "%s:seal", prefix);
    if (b != NULL && admin != NULL)
        seal_cycle(b, queue, admin);
    bq_conn_close(admin);
    bq_broker_free(b);
}

TEST(scripts_survive_a_flushed_script_cache)
{
    NEED_REDIS();
    bq_broker *b = open_broker();
    bq_conn *admin = open_conn(redis_url);
    if (b == NULL || admin == NULL) {
        bq_broker_free(b);
        bq_conn_close(admin);
        return;
    }
    char queue[96];
    snprintf(queue, sizeof queue, "%s:noscript", prefix);
    const char *who_q[] = {queue};
    struct bq_lessee who = {who_q, 1, NULL, "w", BQ_AT_LEAST_ONCE, 0, 0};
    push_texts(b, queue, 4, "s");
    struct bq_batch got = {NULL, 0, 0};
    CHECK_INT(fetch(b, &who, 2, 0, NULL, 0, NULL, &got), BQ_OK);
    CHECK_INT(bq_conn_callv(admin, NULL, NULL, "SCRIPT", "FLUSH", NULL), BQ_OK);
    /* The round trip that meets the empty cache takes nothing and reloads the scripts; the
     * next one works. */
    CHECK_INT(fetch(b, &who, 2, 0, NULL, 0, NULL, &got), BQ_OK);
    CHECK_INT(got.n, 2);
    CHECK_INT(fetch(b, &who, 2, 0, NULL, 0, NULL, &got), BQ_OK);
    CHECK_INT(got.n, 4);
    CHECK_INT(bq_conn_callv(admin, NULL, NULL, "SCRIPT", "FLUSH", NULL), BQ_OK);
    size_t moved;
    double due;
    CHECK_INT(b->ops->promote(b, queue, &moved, &due, NULL), BQ_OK);
    bq_batch_free(&got);
    bq_conn_close(admin);
    bq_broker_free(b);
}

/* A broker as ACL user `user` (made by admin, password "pw-<user>"), who may run every
 * command but `denied`; NULL (a failed check) if it cannot be opened. */
static bq_broker *open_without(bq_conn *admin, const char *user, const char *denied,
                               int max_connections)
{
    char pass[64], minus[64], url[256];
    snprintf(pass, sizeof pass, ">pw-%s", user);
    snprintf(minus, sizeof minus, "-%s", denied);
    CHECK_INT(bq_conn_callv(admin, NULL, NULL, "ACL", "SETUSER", user, "on", pass, "~*", "&*",
                            "+@all", minus, NULL), BQ_OK);
    const char *rest = strstr(redis_url, "://");
    snprintf(url, sizeof url, "redis://%s:pw-%s@%s", user, user, rest != NULL ? rest + 3 : "");
    struct bq_broker_config bc = {.url = url, .url_source = "test",
                                  .max_connections = max_connections, .connect_timeout = 2.0,
                                  .command_timeout = 2.0, .pool_timeout = 2.0};
    bq_broker *b = NULL;
    CHECK_INT(bq_broker_open(&bc, &b, NULL), BQ_OK);
    return b;
}

/* An error reply in the middle of a fetch's pipeline (here LREM refused by ACL; after a
 * restart, LOADING) left the later replies unread, and the next round trip read them as its
 * own: acknowledgements counted wrong, BLMOVE answered with a script's NOSCRIPT, tasks run
 * twice. The connection must not be used again after such a failure. */
TEST(a_failed_pipeline_does_not_leave_replies_for_the_next)
{
    NEED_REDIS();
    bq_conn *admin = open_conn(redis_url);
    if (admin == NULL)
        return;
    bq_broker *b = open_without(admin, "nolrem", "lrem", 2);
    if (b != NULL) {
        char queue[96];
        snprintf(queue, sizeof queue, "%s:desync", prefix);
        const char *who_q[] = {queue};
        struct bq_lessee who = {who_q, 1, NULL, "w", BQ_AT_LEAST_ONCE, 0, 0};
        push_texts(b, queue, 6, "d");
        struct bq_batch got = {NULL, 0, 0}, more = {NULL, 0, 0};
        CHECK_INT(fetch(b, &who, 2, 0, NULL, 0, NULL, &got), BQ_OK);
        CHECK_INT(got.n, 2);
        /* acknowledging the two: LREM is refused, the round trip fails */
        CHECK(fetch(b, &who, 2, 0, got.msgs, got.n, NULL, &more) != BQ_OK);
        /* The next round trip reads its own replies. (The failed one's fetch took d2 and d3
         * into the in-flight list; its reply was never read: orphans, which a worker's orphan
         * check hands back.) */
        bq_batch_clear(&more);
        CHECK_INT(fetch(b, &who, 2, 0, NULL, 0, NULL, &more), BQ_OK);
        CHECK_INT(more.n, 2);
        if (more.n == 2) {
            CHECK_STR(more.msgs[0].data, "d4");
            CHECK_STR(more.msgs[1].data, "d5");
        }
        bq_batch_free(&got);
        bq_batch_free(&more);
        bq_broker_free(b);
    }
    bq_conn_callv(admin, NULL, NULL, "ACL", "DELUSER", "nolrem", NULL);
    bq_conn_close(admin);
}

/* A broker whose pool holds one connection (so a reply left unread would reach the next
 * borrower), with the queue orders given (NULL: the defaults). */
static bq_broker *open_single(const struct bq_orders *orders)
{
    struct bq_broker_config bc = {.url = redis_url, .url_source = "test", .max_connections = 1,
                                  .connect_timeout = 2.0, .command_timeout = 2.0,
                                  .pool_timeout = 2.0, .orders = orders};
    bq_broker *b = NULL;
    CHECK_INT(bq_broker_open(&bc, &b, NULL), BQ_OK);
    return b;
}

/* The same on a pooled connection: a push whose LPUSH Redis refuses (the key holds a string)
 * stopped reading its pipeline there, and the bell's two replies, left unread, were read by
 * the next borrower of that connection as its own. */
TEST(a_refused_push_does_not_leave_replies_for_the_next)
{
    NEED_REDIS();
    bq_broker *b = open_single(NULL);
    bq_conn *admin = open_conn(redis_url);
    if (b == NULL || admin == NULL) {
        bq_broker_free(b);
        bq_conn_close(admin);
        return;
    }
    char wrong[96], right[96];
    snprintf(wrong, sizeof wrong, "%s:wrongtype", prefix);
    snprintf(right, sizeof right, "%s:three", prefix);
    CHECK_INT(bq_conn_callv(admin, NULL, NULL, "SET", wrong, "a string", NULL), BQ_OK);
    push_texts(b, right, 3, "t");
    struct bq_slice m = {"x", 1};
    size_t pushed = 9;
    bq_err err;
    CHECK_INT(b->ops->push(b, wrong, &m, 1, &pushed, &err), BQ_EREDIS);
    CHECK_CONTAINS(err.msg, "WRONGTYPE");
    CHECK_INT(pushed, 0);
    long long n = -1;
    CHECK_INT(b->admin->length(b, right, BQ_LIST_READY, &n, NULL), BQ_OK);
    CHECK_INT(n, 3);
    long long count = -1;
    CHECK_INT(b->admin->dlq_purge(b, right, &count, NULL), BQ_OK);
    CHECK_INT(count, 0);
    bq_conn_callv(admin, NULL, NULL, "DEL", wrong, right, NULL);
    bq_conn_close(admin);
    bq_broker_free(b);
}

/* Deduplicated pushes (enqueue-N in a MULTI after the native push): duplicates -- of an
 * earlier batch, and within a batch -- are taken back from wherever they fell among the
 * pushed (over several chunks of 1,000), the queue's earlier contents untouched, in both
 * queue orders; a queue that is not a list takes no key; a message that is the placeholder
 * is refused; the push needs no cached script. */
static void unique_push_in_order(enum bq_order order, const char *tag)
{
    char queue[96];
    snprintf(queue, sizeof queue, "%s:unique:%s", prefix, tag);
    struct bq_orders orders = {order, 0, NULL, NULL};
    bq_broker *b = open_single(&orders);
    if (b == NULL)
        return;
    push_texts(b, queue, 2, "old"); /* there before: stays where it is */
    enum { N = 2500 };
    static char text[N][16], key[N][16];
    static struct bq_slice msgs[N];
    static const char *keys[N];
    static bool pushed[N];
    for (int i = 0; i < N; i++) {
        snprintf(text[i], sizeof text[i], "m%d", i);
        /* every 7th repeats the key of the one 3 before it (in the same chunk or the one
         * before); 999, 1000 and 1001 straddle the chunks */
        snprintf(key[i], sizeof key[i], "run:%d", i % 7 == 6 || i == 1001 ? i - 3 : i);
        msgs[i] = (struct bq_slice){text[i], strlen(text[i])};
        keys[i] = key[i];
    }
    /* a key taken by an earlier push, within the first chunk and the last */
    struct bq_slice early[] = {{"e10", 3}, {"e2400", 5}};
    const char *early_keys[] = {"run:10", "run:2400"};
    bool early_pushed[2] = {false, false};
    CHECK_INT(b->ops->push_unique(b, queue, early, early_keys, 2, 60, early_pushed, NULL), BQ_OK);
    CHECK(early_pushed[0] && early_pushed[1]);
    bq_conn *admin = open_conn(redis_url);
    if (admin != NULL)
        CHECK_INT(bq_conn_callv(admin, NULL, NULL, "SCRIPT", "FLUSH", NULL), BQ_OK);
    CHECK_INT(b->ops->push_unique(b, queue, msgs, keys, N, 60, pushed, NULL), BQ_OK);
    int want_n = 0, bad = 0;
    for (int i = 0; i < N; i++) {
        bool dup = i % 7 == 6 || i == 1001 || i == 10 || i == 2400;
        bad += pushed[i] == dup;
        want_n += !dup;
    }
    CHECK_INT(bad, 0);
    struct bq_batch all = {NULL, 0, 0};
    CHECK_INT(b->admin->range(b, queue, BQ_LIST_READY, 0, -1, &all, NULL), BQ_OK);
    CHECK_INT(all.n, (size_t)want_n + 4);
    if (all.n == (size_t)want_n + 4) {
        /* newest first: the batch's survivors in reverse, then the earlier push, then old */
        size_t at = 0;
        for (int i = N - 1; i >= 0 && bad == 0; i--) {
            if (!pushed[i])
                continue;
            if (strcmp(all.msgs[at].data, text[i]) != 0) {
                printf("  %s: at %zu: %s, want %s\n", tag, at, all.msgs[at].data, text[i]);
                bad++;
            }
            at++;
        }
        CHECK_INT(bad, 0);
        CHECK_STR(all.msgs[all.n - 4].data, "e2400");
        CHECK_STR(all.msgs[all.n - 3].data, "e10");
        CHECK_STR(all.msgs[all.n - 2].data, "old1");
        CHECK_STR(all.msgs[all.n - 1].data, "old0");
    }
    bq_batch_free(&all);
    /* the same again: all duplicates, nothing pushed, nothing left behind */
    CHECK_INT(b->ops->push_unique(b, queue, msgs, keys, 1500, 60, pushed, NULL), BQ_OK);
    bad = 0;
    for (int i = 0; i < 1500; i++)
        bad += pushed[i];
    CHECK_INT(bad, 0);
    long long n = -1;
    CHECK_INT(b->admin->length(b, queue, BQ_LIST_READY, &n, NULL), BQ_OK);
    CHECK_INT(n, want_n + 4);
    /* a message that is the placeholder is refused, nothing sent */
    struct bq_slice hole = {"\x01" "binduq:duplicate" "\x01", 18};
    const char *hole_key = "run:hole";
    bq_err err;
    CHECK_INT(b->ops->push_unique(b, queue, &hole, &hole_key, 1, 60, pushed, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "reserves");
    /* a queue that is not a list: refused, and its key not taken */
    char wrong[128];
    snprintf(wrong, sizeof wrong, "%s:wrong", queue);
    struct bq_slice one = {"w", 1};
    const char *one_key = "run:w";
    if (admin != NULL)
        CHECK_INT(bq_conn_callv(admin, NULL, NULL, "SET", wrong, "a string", NULL), BQ_OK);
    pushed[0] = true;
    CHECK_INT(b->ops->push_unique(b, wrong, &one, &one_key, 1, 60, pushed, &err), BQ_EREDIS);
    CHECK_CONTAINS(err.msg, "WRONGTYPE");
    CHECK(!pushed[0]);
    if (admin != NULL)
        CHECK_INT(bq_conn_callv(admin, NULL, NULL, "DEL", wrong, NULL), BQ_OK);
    CHECK_INT(b->ops->push_unique(b, wrong, &one, &one_key, 1, 60, pushed, &err), BQ_OK);
    CHECK(pushed[0]); /* the key was free: the refused push had not taken it */
    if (admin != NULL) {
        bq_conn_callv(admin, NULL, NULL, "DEL", queue, wrong, NULL);
        bq_conn_close(admin);
    }
    bq_broker_free(b);
}

TEST(a_deduplicated_push_takes_back_only_the_duplicates)
{
    NEED_REDIS();
    unique_push_in_order(BQ_ORDER_LPUSH, "lpush");
    unique_push_in_order(BQ_ORDER_RPUSH, "rpush");
}

/* A push in two halves (push_send, then push_recv: core.push_runs) answers as the whole
 * push does: a deduplicated one in a MULTI (duplicates within it and of an earlier push
 * taken back, the rest in order), a plain one, and a refused one, whose answers are all read
 * so the connection's next borrower (the pool has one) gets its own; and one too small for
 * a transaction is made whole by push_send. */
TEST(a_push_in_two_halves_answers_as_a_whole_one)
{
    NEED_REDIS();
    bq_broker *b = open_single(NULL);
    bq_conn *admin = open_conn(redis_url);
    if (b == NULL || admin == NULL) {
        bq_broker_free(b);
        bq_conn_close(admin);
        return;
    }
    char queue[96], plainq[112], wrong[112];
    snprintf(queue, sizeof queue, "%s:halves", prefix);
    snprintf(plainq, sizeof plainq, "%s:plain", queue);
    snprintf(wrong, sizeof wrong, "%s:wrong", queue);
    enum { N = 300 };
    static char text[N][16], key[N][16];
    static struct bq_slice msgs[N];
    static const char *keys[N];
    static bool pushed[N];
    for (int i = 0; i < N; i++) {
        snprintf(text[i], sizeof text[i], "h%d", i);
        snprintf(key[i], sizeof key[i], "run:%d", i % 10 == 9 ? i - 1 : i); /* 9 repeats 8 */
        msgs[i] = (struct bq_slice){text[i], strlen(text[i])};
        keys[i] = key[i];
    }
    struct bq_slice early = {"e5", 2};
    const char *early_key = "run:5";
    bool early_pushed = false;
    CHECK_INT(b->ops->push_unique(b, queue, &early, &early_key, 1, 60, &early_pushed, NULL), BQ_OK);
    struct bq_push_wait w = {.pushed = pushed};
    bq_err err;
    CHECK_INT(b->ops->push_send(b, queue, msgs, keys, N, 60, &w, &err), BQ_OK);
    CHECK(w.conn != NULL);
    CHECK_INT(b->ops->push_recv(b, &w, &err), BQ_OK);
    CHECK(w.conn == NULL);
    int bad = 0, want = 0;
    for (int i = 0; i < N; i++) {
        bool dup = i % 10 == 9 || i == 5;
        bad += pushed[i] == dup;
        want += !dup;
    }
    CHECK_INT(bad, 0);
    struct bq_batch all = {NULL, 0, 0};
    CHECK_INT(b->admin->range(b, queue, BQ_LIST_READY, 0, -1, &all, NULL), BQ_OK);
    CHECK_INT(all.n, (size_t)want + 1);
    if (all.n == (size_t)want + 1) { /* newest first, the earlier push last */
        size_t at = 0;
        for (int i = N - 1; i >= 0; i--)
            if (pushed[i] && strcmp(all.msgs[at++].data, text[i]) != 0)
                bad++;
        CHECK_INT(bad, 0);
        CHECK_STR(all.msgs[all.n - 1].data, "e5");
    }
    bq_batch_free(&all);
    /* plain */
    CHECK_INT(b->ops->push_send(b, plainq, msgs, NULL, N, 0, &w, &err), BQ_OK);
    CHECK(w.conn != NULL);
    CHECK_INT(b->ops->push_recv(b, &w, &err), BQ_OK);
    bad = 0;
    for (int i = 0; i < N; i++)
        bad += !pushed[i];
    CHECK_INT(bad, 0);
    long long n = -1;
    CHECK_INT(b->admin->length(b, plainq, BQ_LIST_READY, &n, NULL), BQ_OK);
    CHECK_INT(n, N);
    /* refused at EXEC, and plain: every answer read, nothing pushed, no key taken */
    CHECK_INT(bq_conn_callv(admin, NULL, NULL, "SET", wrong, "a string", NULL), BQ_OK);
    for (int k = 0; k < 2; k++) {
        pushed[0] = true;
        CHECK_INT(b->ops->push_send(b, wrong, msgs, k == 0 ? keys : NULL, N, 60, &w, &err),
                  BQ_OK);
        CHECK_INT(b->ops->push_recv(b, &w, &err), BQ_EREDIS);
        CHECK_CONTAINS(err.msg, "WRONGTYPE");
        CHECK(!pushed[0]);
        CHECK_INT(b->admin->length(b, plainq, BQ_LIST_READY, &n, NULL), BQ_OK); /* next borrower */
        CHECK_INT(n, N);
    }
    /* too few for a transaction: made whole (enqueue-N) by push_send */
    CHECK_INT(bq_conn_callv(admin, NULL, NULL, "DEL", wrong, NULL), BQ_OK);
    CHECK_INT(b->ops->push_send(b, wrong, msgs, keys, 10, 60, &w, &err), BQ_OK);
    CHECK(w.conn == NULL);
    CHECK(pushed[0] && !pushed[9]); /* the key of 0 was free: the refused pushes took none */
    CHECK_INT(b->ops->push_recv(b, &w, &err), BQ_OK);
    bq_conn_callv(admin, NULL, NULL, "DEL", queue, plainq, wrong, NULL);
    bq_conn_close(admin);
    bq_broker_free(b);
}

/* A producer whose user may not MULTI (an ACL of the commands it used to need) pushes a
 * large deduplicated batch through enqueue-N instead: the same answers, nothing pushed
 * outside a transaction, and the refusal remembered. */
TEST(a_deduplicated_push_without_multi_takes_the_script)
{
    NEED_REDIS();
    bq_conn *admin = open_conn(redis_url);
    if (admin == NULL)
        return;
    bq_broker *b = open_without(admin, "nomulti", "multi", 1);
    if (b != NULL) {
        char queue[96];
        snprintf(queue, sizeof queue, "%s:nomulti", prefix);
        enum { N = 700 };
        static char text[N][16], key[N][16];
        static struct bq_slice msgs[N];
        static const char *keys[N];
        static bool pushed[N];
        for (int round = 0; round < 2; round++) {
            for (int i = 0; i < N; i++) {
                snprintf(text[i], sizeof text[i], "r%dm%d", round, i);
                snprintf(key[i], sizeof key[i], "run:%d", i % 100 == 99 ? i - 1 : i + round * 350);
                msgs[i] = (struct bq_slice){text[i], strlen(text[i])};
                keys[i] = key[i];
            }
            bq_err err;
            CHECK_INT(b->ops->push_unique(b, queue, msgs, keys, N, 60, pushed, &err), BQ_OK);
            int sent = 0, bad = 0;
            for (int i = 0; i < N; i++) {
                /* round 0: every 100th repeats its neighbour's key; round 1: keys 350..699
                 * (but for the 100th ones, which round 0 did not take) and the repeats were
                 * taken by round 0 */
                bool dup = i % 100 == 99 || (round == 1 && i + 350 < N && (i + 350) % 100 != 99);
                bad += pushed[i] == dup;
                sent += pushed[i];
            }
            CHECK_INT(bad, 0);
            long long n = -1;
            CHECK_INT(b->admin->length(b, queue, BQ_LIST_READY, &n, NULL), BQ_OK);
            CHECK_INT(n, round == 0 ? 693 : 693 + sent);
        }
        bq_conn_callv(admin, NULL, NULL, "DEL", queue, NULL);
        bq_broker_free(b);
        /* a broker whose first deduplicated push is in two halves: MULTI refused, push_send
         * makes it whole by the script */
        b = open_without(admin, "nomulti", "multi", 1);
        if (b != NULL) {
            for (int i = 0; i < 100; i++)
                snprintf(key[i], sizeof key[i], "h%d", i % 10 == 9 ? i - 1 : i);
            struct bq_push_wait w = {.pushed = pushed};
            bq_err err;
            CHECK_INT(b->ops->push_send(b, queue, msgs, keys, 100, 60, &w, &err), BQ_OK);
            CHECK(w.conn == NULL);
            int bad = 0;
            for (int i = 0; i < 100; i++)
                bad += pushed[i] == (i % 10 == 9);
            CHECK_INT(bad, 0);
            CHECK_INT(b->ops->push_recv(b, &w, &err), BQ_OK);
            long long n = -1;
            CHECK_INT(b->admin->length(b, queue, BQ_LIST_READY, &n, NULL), BQ_OK);
            CHECK_INT(n, 90);
            bq_conn_callv(admin, NULL, NULL, "DEL", queue, NULL);
            bq_broker_free(b);
        }
    }
    bq_conn_callv(admin, NULL, NULL, "ACL", "DELUSER", "nomulti", NULL);
    bq_conn_close(admin);
}

/* ratelimit-N asks a batch whose keys are all new with one EXISTS, writes one entry per call
 * in a key (counting its admissions, with '#' holding the key's total), and leaves a key's
 * few entries that left the window in place while even counting them there is room: the
 * verdicts stay those of the exact sliding window ("at most 10 a second"). */
static void admit(bq_broker *b, const struct bq_lessee *who, const char *const *keys, int n,
                  long limit, double period, char *out, double *wait)
{
    struct bq_msg m = {(char *)"x", 1, 0, false, 0, 0};
    struct bq_admission reqs[40];
    for (int i = 0; i < n; i++)
        reqs[i] = (struct bq_admission){&m, keys[i], -1, 0};
    bq_status st = b->ops->rate_limit(b, who, limit, period, reqs, (size_t)n, NULL);
    out[0] = st == BQ_OK ? '\0' : '!';
    out[1] = '\0';
    for (int i = 0; i < n; i++) {
        strcat(out, reqs[i].verdict == 1 ? "1" : reqs[i].verdict == 0 ? "0" : "?");
        if (reqs[i].verdict == 0 && wait != NULL)
            *wait = reqs[i].value;
    }
}

/* A key's entries: how many members it holds, '#' (minus the admissions it counts, or 1 when
 * it has none) and how many members end in "*<digits>". */
static void rl_layout(bq_conn *admin, const char *rl, long long *members, long long *hash,
                      long long *counted)
{
    redisReply *r = NULL;
    *members = *counted = -1;
    *hash = 1;
    if (bq_conn_callv(admin, &r, NULL, "ZRANGE", rl, "0", "-1", "WITHSCORES", NULL) != BQ_OK)
        return;
    *members = (long long)r->elements / 2;
    *counted = 0;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const char *m = r->element[i]->str;
        if (strcmp(m, "#") == 0) {
            *hash = atoll(r->element[i + 1]->str);
            continue;
        }
        const char *star = strrchr(m, '*');
        *counted += star != NULL && star[1] != '\0' && strspn(star + 1, "0123456789") == strlen(star + 1);
    }
    freeReplyObject(r);
}

/* The rate-limit tests' broker and admin connection; false (both closed) if either failed. */
static bool rl_open(bq_broker **b, bq_conn **admin)
{
    *b = open_broker();
    *admin = open_conn(redis_url);
    if (*b != NULL && *admin != NULL)
        return true;
    bq_broker_free(*b);
    bq_conn_close(*admin);
    return false;
}

/* Two entries of one admission each at time now (ms), as a key without '#' holds them. */
static void put_singles(bq_conn *admin, const char *rl, const char *now)
{
    CHECK_INT(bq_conn_callv(admin, NULL, NULL, "ZADD", rl, now, "w:1*x:123", now, "w:2:456",
                            NULL), BQ_OK);
    CHECK_INT(bq_conn_callv(admin, NULL, NULL, "PEXPIRE", rl, "5000", NULL), BQ_OK);
}

TEST(the_rate_limit_stays_exact_with_stale_entries_left_in_place)
{
    NEED_REDIS();
    bq_broker *b;
    bq_conn *admin;
    if (!rl_open(&b, &admin))
        return;
    char queue[96], rl[160];
    snprintf(queue, sizeof queue, "%s:rl", prefix);
    const char *who_q[] = {queue};
    struct bq_lessee who = {who_q, 1, NULL, "w", BQ_AT_LEAST_ONCE, 0, 0};
    const char *k[12] = {"k", "k", "k", "k", "k", "k", "k", "k", "k", "k", "k", "k"};
    char v[48];
    double wait = -1;
    long long members, hash, counted;
    admit(b, &who, k, 2, 10, 1.0, v, NULL); /* a new key: admitted */
    CHECK_STR(v, "11");
    bq_sleep(1.2); /* both left the window (and the key expired) */
    admit(b, &who, k, 2, 10, 1.0, v, NULL);
    CHECK_STR(v, "11");
    /* one entry for the call's two admissions, and '#' counting them */
    snprintf(rl, sizeof rl, "{%s}:rlog:k", queue);
    rl_layout(admin, rl, &members, &hash, &counted);
    CHECK_INT(members, 2);
    CHECK_INT(hash, -2);
    CHECK_INT(counted, 1);
    admit(b, &who, k, 6, 10, 1.0, v, NULL); /* 8 in the window */
    CHECK_STR(v, "111111");
    admit(b, &who, k, 3, 10, 1.0, v, &wait); /* room for 2 */
    CHECK_STR(v, "110");
    CHECK(wait > 0.5 && wait <= 1.0); /* until the first entry (of 2) leaves the window */
    rl_layout(admin, rl, &members, &hash, &counted);
    CHECK_INT(members, 4);
    CHECK_INT(hash, -10);
    const char *mixed[] = {"k", "new-a", "new-b", "k"};
    admit(b, &who, mixed, 4, 10, 1.0, v, NULL);
    CHECK_STR(v, "0110");
    /* stale entries kept while there is room counting them, and the key's window exact */
    const char *s[] = {"s", "s", "s"};
    snprintf(rl, sizeof rl, "{%s}:rlog:s", queue);
    admit(b, &who, s, 3, 5, 0.3, v, NULL);
    CHECK_STR(v, "111");
    bq_sleep(0.2);
    admit(b, &who, s, 1, 5, 0.3, v, NULL); /* 4 in the window */
    CHECK_STR(v, "1");
    bq_sleep(0.15); /* the first 3 left it: 1 in the window, 4 stored */
    rl_layout(admin, rl, &members, &hash, &counted);
    CHECK_INT(members, 3);
    CHECK_INT(hash, -4);
    admit(b, &who, s, 2, 5, 0.3, v, NULL); /* 4 + 2 > 5: the stale ones go, then there is room */
    CHECK_STR(v, "11");
    rl_layout(admin, rl, &members, &hash, &counted); /* '#', the one of 0.2 s, the two */
    CHECK_INT(members, 3);
    CHECK_INT(hash, -3);
    admit(b, &who, s, 3, 5, 0.3, v, NULL); /* 3 in the window: room for 2 */
    CHECK_STR(v, "110");
    /* a key of 64 admissions or more is trimmed at each call: its entries that left the
     * window go, each taking its count off '#' */
    static const char *many[40];
    for (int i = 0; i < 40; i++)
        many[i] = "m";
    snprintf(rl, sizeof rl, "{%s}:rlog:m", queue);
    admit(b, &who, many, 32, 1000, 0.3, v, NULL);
    admit(b, &who, many, 32, 1000, 0.3, v, NULL);
    admit(b, &who, many, 32, 1000, 0.3, v, NULL);
    CHECK_STR(v, "11111111111111111111111111111111");
    bq_sleep(0.2);
    admit(b, &who, many, 1, 1000, 0.3, v, NULL); /* 96 >= 64, none stale yet */
    CHECK_STR(v, "1");
    rl_layout(admin, rl, &members, &hash, &counted);
    CHECK_INT(members, 5);
    CHECK_INT(hash, -97);
    CHECK_INT(counted, 3);
    bq_sleep(0.15); /* the three of 32 left the window; the one of 0.2 s did not */
    admit(b, &who, many, 1, 1000, 0.3, v, NULL);
    CHECK_STR(v, "1");
    rl_layout(admin, rl, &members, &hash, &counted);
    CHECK_INT(members, 3);
    CHECK_INT(hash, -2);
    CHECK_INT(counted, 0);
    bq_conn_close(admin);
    bq_broker_free(b);
}

/* A key without '#' counts each entry one, whatever its tag holds, and '#' added over such
 * entries counts them; a trim that admits nothing (the limit lowered) sets '#' to what is
 * left; and a worker's id of any length keeps each call's entry its own: an id of 48 bytes or
 * more used to fill the entry's 47 bytes, the same for every call, so that a key never counted
 * more than one admission. */
TEST(the_rate_limit_counts_single_entries_and_long_worker_ids)
{
    NEED_REDIS();
    bq_broker *b;
    bq_conn *admin;
    if (!rl_open(&b, &admin))
        return;
    char queue[96], rl[160];
    snprintf(queue, sizeof queue, "%s:rl2", prefix);
    snprintf(rl, sizeof rl, "{%s}:rlog:old", queue);
    const char *who_q[] = {queue};
    static const char long_id[] = "binduq-worker-deployment-5d8f7c9b6-x7k2p.example:1:ab12";
    struct bq_lessee who = {who_q, 1, NULL, long_id, BQ_AT_LEAST_ONCE, 0, 0};
    redisReply *r = NULL;
    CHECK_INT(bq_conn_callv(admin, &r, NULL, "TIME", NULL), BQ_OK);
    char now[32] = "0";
    if (r != NULL) {
        snprintf(now, sizeof now, "%lld",
                 atoll(r->element[0]->str) * 1000 + atoll(r->element[1]->str) / 1000);
        freeReplyObject(r);
    }
    put_singles(admin, rl, now);
    const char *old[] = {"old", "old"};
    char v[48];
    admit(b, &who, old, 2, 3, 5.0, v, NULL); /* 2 in the window: room for 1 */
    CHECK_STR(v, "10");
    admit(b, &who, old, 1, 3, 5.0, v, NULL);
    CHECK_STR(v, "0");
    /* '#' added over entries of one each: it counts them */
    snprintf(rl, sizeof rl, "{%s}:rlog:old2", queue);
    put_singles(admin, rl, now);
    const char *old2[] = {"old2", "old2", "old2"};
    admit(b, &who, old2, 2, 5, 5.0, v, NULL);
    CHECK_STR(v, "11");
    long long members, hash, counted;
    rl_layout(admin, rl, &members, &hash, &counted);
    CHECK_INT(members, 4);
    CHECK_INT(hash, -4);
    admit(b, &who, old2, 3, 5, 5.0, v, NULL);
    CHECK_STR(v, "100");
    /* 10, then 5 more; the 10 leave the window; a limit of 3 trims them and admits nothing */
    snprintf(rl, sizeof rl, "{%s}:rlog:low", queue);
    const char *low[] = {"low", "low", "low", "low", "low", "low", "low", "low", "low", "low"};
    admit(b, &who, low, 10, 20, 0.3, v, NULL);
    CHECK_STR(v, "1111111111");
    bq_sleep(0.2);
    admit(b, &who, low, 5, 20, 0.3, v, NULL);
    CHECK_STR(v, "11111");
    bq_sleep(0.15);
    admit(b, &who, low, 1, 3, 0.3, v, NULL);
    CHECK_STR(v, "0");
    rl_layout(admin, rl, &members, &hash, &counted);
    CHECK_INT(members, 2);
    CHECK_INT(hash, -5);
    /* a batch that fails on a key of another type trims none of its keys first */
    snprintf(rl, sizeof rl, "{%s}:rlog:t", queue);
    char other[160];
    snprintf(other, sizeof other, "{%s}:rlog:str", queue);
    CHECK_INT(bq_conn_callv(admin, NULL, NULL, "SET", other, "x", NULL), BQ_OK);
    const char *t3[] = {"t", "t", "t", "str"};
    admit(b, &who, t3, 3, 5, 0.3, v, NULL);
    bq_sleep(0.2);
    admit(b, &who, t3, 1, 5, 0.3, v, NULL);
    bq_sleep(0.15);
    admit(b, &who, t3, 4, 5, 0.3, v, NULL); /* WRONGTYPE */
    CHECK_STR(v, "!1111");
    rl_layout(admin, rl, &members, &hash, &counted);
    CHECK_INT(members, 3);
    CHECK_INT(hash, -4);
    admit(b, &who, t3, 3, 5, 0.3, v, NULL); /* 1 in the window: room for 4 */
    CHECK_STR(v, "111");
    admit(b, &who, t3, 1, 5, 0.0004, v, NULL); /* under a millisecond: refused, not unlimited */
    CHECK_STR(v, "!1");
    const char *one[] = {"long"};
    for (int i = 0; i < 4; i++) {
        admit(b, &who, one, 1, 2, 5.0, v, NULL); /* one at a time, each its own call */
        CHECK_STR(v, i < 2 ? "1" : "0");
    }
    bq_conn_close(admin);
    bq_broker_free(b);
}

/* ratelimit-N against the definition, under random batches: every window of a period holds at
 * most `limit` admissions of a key (checked at each admission, by the times the script
 * answers), an operation is refused only when its key's window is full, and within a call a
 * key's operations are admitted first and refused after. Two phases: a small limit with
 * three keys, and a limit of 100 in batches of up to 40, whose keys are trimmed at each call. */
struct rl_log {
    long long t[4096];
    int n;
};

static int rl_in_window(const struct rl_log *g, long long from, long long to)
{
    int c = 0;
    for (int i = 0; i < g->n; i++)
        c += g->t[i] > from && g->t[i] <= to;
    return c;
}

TEST(the_rate_limit_holds_its_definition_under_random_batches)
{
    NEED_REDIS();
    bq_broker *b = open_broker();
    if (b == NULL)
        return;
    static const char *names[] = {"a", "b", "c"};
    static struct rl_log logs[3];
    unsigned long long seed = 0x9e3779b97f4a7c15ULL;
    for (int phase = 0; phase < 2; phase++) {
        char queue[96];
        snprintf(queue, sizeof queue, "%s:rlp%d", prefix, phase);
        const char *who_q[] = {queue};
        struct bq_lessee who = {who_q, 1, NULL, "w", BQ_AT_LEAST_ONCE, 0, 0};
        long limit = phase == 0 ? 3 : 100;
        int nkeys = phase == 0 ? 3 : 2, most = phase == 0 ? 8 : 40, calls = phase == 0 ? 120 : 60;
        unsigned pause = phase == 0 ? 40 : 8; /* ms between calls, at most */
        long long period = 100; /* ms */
        memset(logs, 0, sizeof logs);
        int admitted = 0, refused = 0, bad = 0;
        for (int c = 0; c < calls && bad == 0; c++) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            int n = 1 + (int)((seed >> 33) % (unsigned)most);
            struct bq_msg m = {(char *)"x", 1, 0, false, 0, 0};
            struct bq_admission reqs[40];
            int key[40];
            for (int i = 0; i < n; i++) {
                seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
                key[i] = (int)((seed >> 33) % (unsigned)nkeys);
                reqs[i] = (struct bq_admission){&m, names[key[i]], -1, 0};
            }
            long long t0 = (long long)(bq_now_wall() * 1000.0) - 1;
            bq_status st = b->ops->rate_limit(b, &who, limit, (double)period / 1000.0, reqs,
                                              (size_t)n, NULL);
            long long t1 = (long long)(bq_now_wall() * 1000.0) + 1;
            CHECK_INT(st, BQ_OK);
            if (st != BQ_OK)
                break;
            bool shut[3] = {false, false, false};
            long long at = -1; /* the call's instant, if it admitted any */
            for (int i = 0; i < n; i++) {
                if (reqs[i].verdict == 1)
                    at = llround(reqs[i].value * 1000.0);
            }
            for (int i = 0; i < n; i++) {
                struct rl_log *g = &logs[key[i]];
                if (reqs[i].verdict == 1) {
                    admitted++;
                    bad += shut[key[i]] || llround(reqs[i].value * 1000.0) != at || g->n == 4096;
                    if (g->n < 4096)
                        g->t[g->n++] = at;
                    /* the window ending at this admission */
                    bad += rl_in_window(g, at - period, at) > limit;
                } else {
                    refused++;
                    shut[key[i]] = true;
                    /* full at the call's instant (within [t0, t1] if none was admitted) */
                    long long from = at >= 0 ? at - period : t0 - period, to = at >= 0 ? at : t1;
                    bad += rl_in_window(g, from, to) < limit || reqs[i].value <= 0 ||
                           reqs[i].value > (double)period / 1000.0;
                }
                if (bad > 0) {
                    printf("  phase %d call %d op %d (key %s): verdict %d value %.3f\n", phase, c,
                           i, names[key[i]], reqs[i].verdict, reqs[i].value);
                    break;
                }
            }
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            bq_sleep((double)((seed >> 33) % pause) / 1000.0);
        }
        printf("  phase %d: %d admitted, %d refused\n", phase, admitted, refused);
        CHECK_INT(bad, 0);
        CHECK(admitted > 50 && refused > 20); /* both verdicts were exercised */
    }
    bq_broker_free(b);
}

/* Issue 16 #9: a reply over a connection's limits fails the read with a clear error before the
 * reader allocates for it; replies that came whole before it are still read; the connection is
 * broken, and the pool opens a new one for the next call. */
TEST(conn_refuses_a_reply_over_its_limits)
{
    NEED_REDIS();
    struct bq_url u;
    CHECK_INT(bq_url_parse(redis_url, "test", &u, NULL), BQ_OK);
    struct bq_conn_opts o = copts;
    o.max_reply_elements = 100;
    o.max_reply_bytes = 4096;
    bq_pool *p;
    CHECK_INT(bq_pool_new(&u, &o, 1, 1.0, &p, NULL), BQ_OK);
    bq_url_free(&u);
    char key[96], big[96];
    snprintf(key, sizeof key, "%s:long", prefix);
    snprintf(big, sizeof big, "%s:big", prefix);
    const char *argv[152] = {"RPUSH", key};
    for (int i = 2; i < 152; i++)
        argv[i] = "x";
    bq_conn *c;
    bq_err err;
    CHECK_INT(bq_pool_borrow(p, &c, &err), BQ_OK);
    CHECK_INT(bq_conn_call(c, NULL, &err, 152, argv, NULL), BQ_OK);
    /* 99 elements and the reply itself: exactly the limit. */
    redisReply *r = NULL;
    CHECK_INT(bq_conn_callv(c, &r, &err, "LRANGE", key, "0", "98", NULL), BQ_OK);
    CHECK_INT(r != NULL ? (long long)r->elements : -1, 99);
    freeReplyObject(r);
    /* Pipelined: PING, an LRANGE of 150 elements, PING. */
    const char *ping[] = {"PING"}, *lrange[] = {"LRANGE", key, "0", "-1"};
    CHECK_INT(bq_conn_append(c, 1, ping, NULL, NULL), BQ_OK);
    CHECK_INT(bq_conn_append(c, 4, lrange, NULL, NULL), BQ_OK);
    CHECK_INT(bq_conn_append(c, 1, ping, NULL, NULL), BQ_OK);
    CHECK_INT(bq_conn_flush(c, bq_now_mono() + 2, -1, NULL), BQ_OK);
    CHECK_INT(bq_conn_read(c, &r, bq_now_mono() + 2, -1, &err), BQ_OK);
    CHECK_STR(r != NULL ? r->str : NULL, "PONG");
    freeReplyObject(r);
    CHECK_INT(bq_conn_read(c, &r, bq_now_mono() + 2, -1, &err), BQ_ETOOBIG);
    CHECK(r == NULL);
    CHECK_CONTAINS(err.msg, "reply from 127.0.0.1:");
    CHECK_CONTAINS(err.msg, " exceeds 100 elements");
    CHECK(bq_conn_broken(c));
    CHECK_INT(bq_conn_read(c, &r, bq_now_mono() + 2, -1, &err), BQ_ETOOBIG);
    CHECK_INT(bq_conn_callv(c, NULL, &err, "PING", NULL), BQ_EIO); /* nothing more is sent */
    bq_pool_return(p, c);

    /* The next call gets a new connection; a bulk string over the byte limit fails too. */
    CHECK_INT(bq_pool_borrow(p, &c, &err), BQ_OK);
    CHECK_INT(bq_conn_callv(c, NULL, &err, "PING", NULL), BQ_OK);
    char val[4088]; /* "$4087\r\n" + 4087 + "\r\n" = 4096 bytes */
    memset(val, 'v', sizeof val - 1);
    val[sizeof val - 1] = '\0';
    CHECK_INT(bq_conn_callv(c, NULL, &err, "SET", big, val, NULL), BQ_OK);
    CHECK_INT(bq_conn_callv(c, &r, &err, "GET", big, NULL), BQ_OK);
    CHECK_INT(r != NULL ? (long long)r->len : -1, 4087);
    freeReplyObject(r);
    CHECK_INT(bq_conn_callv(c, NULL, &err, "APPEND", big, "v", NULL), BQ_OK);
    CHECK_INT(bq_conn_callv(c, &r, &err, "GET", big, NULL), BQ_ETOOBIG);
    CHECK_CONTAINS(err.msg, " exceeds 4096 bytes");
    bq_pool_return(p, c);
    CHECK_INT(bq_pool_borrow(p, &c, &err), BQ_OK);
    CHECK_INT(bq_conn_callv(c, NULL, &err, "DEL", key, big, NULL), BQ_OK);
    bq_pool_return(p, c);
    struct bq_pool_stats ps;
    bq_pool_stats(p, &ps);
    CHECK_INT(ps.opened, 3);
    CHECK_INT(ps.discarded, 2);
    bq_pool_free(p);
}

/* A hostile server (a unix socket served by a thread here): an array header announcing two
 * million elements is refused at once with the default limits, where hiredis alone would
 * calloc 16 MB of pointers and wait for them; a bulk header of 1 GiB likewise. */
struct hostile {
    int lfd;
    const char *reply;
};

static void *serve_hostile(void *arg)
{
    struct hostile *h = arg;
    int fd = accept(h->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    char buf[256];
    if (read(fd, buf, sizeof buf) > 0) { /* the command */
        /* It may fail: a client that never sent PING has gone already. */
        ssize_t sent = send(fd, h->reply, strlen(h->reply), MSG_NOSIGNAL);
        (void)sent;
    }
    /* Hold the connection until the client closes it. */
    while (read(fd, buf, sizeof buf) > 0) {
    }
    close(fd);
    return NULL;
}

/* Sends PING to a server that answers `reply`; returns the status, err set. */
static bq_status hostile_ping(const char *reply, int n, bq_err *err)
{
    char path[108], url[160];
    snprintf(path, sizeof path, "/tmp/binduq-hostile-%d-%d.sock", (int)getpid(), n);
    snprintf(url, sizeof url, "unix://%s", path);
    unlink(path);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
    struct hostile h = {socket(AF_UNIX, SOCK_STREAM, 0), reply};
    pthread_t t;
    if (h.lfd < 0 || bind(h.lfd, (struct sockaddr *)&sun, sizeof sun) != 0 ||
        listen(h.lfd, 1) != 0 || pthread_create(&t, NULL, serve_hostile, &h) != 0) {
        perror("hostile server");
        exit(2);
    }
    struct bq_url u;
    bq_conn *c = NULL;
    bq_status st = bq_url_parse(url, "test", &u, err);
    if (st == BQ_OK)
        st = bq_conn_open(&u, &copts, &c, err);
    bq_url_free(&u);
    if (st == BQ_OK) {
        st = bq_conn_callv(c, NULL, err, "PING", NULL);
        CHECK(st == BQ_OK || bq_conn_broken(c));
        bq_conn_close(c);
    } else {
        /* Let the server thread go. */
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&sun, sizeof sun) == 0 && write(fd, "x", 1) != 1)
            perror("hostile release");
        close(fd);
    }
    pthread_join(t, NULL);
    close(h.lfd);
    unlink(path);
    return st;
}

TEST(conn_refuses_hostile_headers_at_once)
{
    const char *replies[] = {"*2000000\r\n:1\r\n:1\r\n", "$1073741824\r\naaaa",
                             "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n"};
    const char *want[] = {" exceeds 1000000 elements", " exceeds 536870912 bytes",
                          "bad reply: No support for nested multi bulk replies with depth > 7"};
    for (int i = 0; i < 3; i++) {
        bq_err err;
        double t0 = bq_now_mono();
        CHECK_INT(hostile_ping(replies[i], i, &err), i < 2 ? BQ_ETOOBIG : BQ_EPROTO);
        CHECK_CONTAINS(err.msg, want[i]);
        CHECK(bq_now_mono() - t0 < 1.0); /* at once, not at the command timeout */
    }
}

/* BINDUQ_MAX_REPLY_BYTES and BINDUQ_MAX_REPLY_ELEMENTS set the limits when the options do
 * not; anything but a positive integer fails the connection (read once a process, so each
 * case runs in a child). */
TEST(reply_limits_from_the_environment)
{
    const char *vars[] = {"BINDUQ_MAX_REPLY_ELEMENTS", "BINDUQ_MAX_REPLY_ELEMENTS",
                          "BINDUQ_MAX_REPLY_BYTES", "BINDUQ_MAX_REPLY_BYTES"};
    const char *vals[] = {"3", "12x", "0", "10"};
    const char *reply[] = {"*3\r\n:1\r\n:2\r\n*1\r\n:3\r\n", "+PONG\r\n", "+PONG\r\n",
                           "$4\r\nabcd\r\n"};
    const bq_status want[] = {BQ_ETOOBIG, BQ_EINVAL, BQ_EINVAL, BQ_OK};
    const char *msg[] = {"exceeds 3 elements", "BINDUQ_MAX_REPLY_ELEMENTS: expected a positive",
                         "BINDUQ_MAX_REPLY_BYTES: expected a positive", ""};
    for (int i = 0; i < 4; i++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            setenv(vars[i], vals[i], 1);
            bq_err err;
            err.msg[0] = '\0';
            bq_status st = hostile_ping(reply[i], 10 + i, &err);
            if (st != want[i] || strstr(err.msg, msg[i]) == NULL) {
                printf("  %s=%s: %s (%s)\n", vars[i], vals[i], bq_status_name(st), err.msg);
                fflush(stdout);
                _exit(1);
            }
            _exit(0);
        }
        int status = -1;
        waitpid(pid, &status, 0);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
}

/* The controls scan (controls-3) reports only ids the decoders would take: a "\u0000" in a
 * queued cancel's id decodes to a zero byte, and cut there it named another task. */
TEST(the_controls_scan_reports_no_id_a_decoder_would_refuse)
{
    NEED_REDIS();
    bq_broker *b = open_broker();
    REQUIRE(b != NULL);
    char queue[96];
    snprintf(queue, sizeof queue, "%s:ctlscan", prefix);
    const char *ops[] = {"{\"type\":\"cancel\",\"task_id\":\"victim\\u0000attacker\"}",
                         "{\"operation\":\"cancel\",\"params\":{\"task_id\":\"victim\\u0000\"}}",
                         "{\"type\":\"cancel\",\"task_id\":\"victim\\n\"}",
                         "{\"type\":\"cancel\",\"task_id\":\"fine-1\"}"};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        struct bq_slice m = {ops[i], strlen(ops[i])};
        size_t pushed = 0;
        CHECK_INT(b->ops->push(b, queue, &m, 1, &pushed, NULL), BQ_OK);
    }
    struct bq_batch found = {NULL, 0, 0};
    CHECK_INT(b->ops->controls(b, queue, 0.001, 1000, &found, NULL), BQ_OK);
    CHECK_INT(found.n, 1);
    if (found.n == 1) {
        CHECK_INT(found.msgs[0].len, strlen("cancel fine-1"));
        CHECK_STR(found.msgs[0].data, "cancel fine-1");
    }
    bq_batch_free(&found);
    bq_broker_free(b);
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
    RUN(pool_borrow_waits_for_a_return);
    RUN(pool_replaces_dead_connections);
    RUN(usable_peeks_only_after_the_fresh_window);
    RUN(broker_fetch_is_fifo_and_batched);
    RUN(broker_fetch_is_interruptible_and_loses_nothing);
    RUN(a_failed_deduplicated_push_counts_what_was_queued);
    RUN(public_api_schedule_length_health);
    RUN(the_event_poster_forgets_queues_it_has_written);
    RUN(lease_cycle_memory);
    RUN(lease_cycle_redis);
    RUN(queue_order_rpush_is_fifo_from_the_left);
    RUN(fetch_stops_at_the_byte_budget);
    RUN(a_dead_workers_tasks_are_reaped_with_their_attempt_counted);
    RUN(bindu_format_headers_are_embedded_and_sealed);
    RUN(seals_tell_binduqs_headers_from_forged_ones_memory);
    RUN(seals_tell_binduqs_headers_from_forged_ones_redis);
    RUN(scripts_survive_a_flushed_script_cache);
    RUN(a_failed_pipeline_does_not_leave_replies_for_the_next);
    RUN(a_refused_push_does_not_leave_replies_for_the_next);
    RUN(a_deduplicated_push_takes_back_only_the_duplicates);
    RUN(a_push_in_two_halves_answers_as_a_whole_one);
    RUN(a_deduplicated_push_without_multi_takes_the_script);
    RUN(the_rate_limit_stays_exact_with_stale_entries_left_in_place);
    RUN(the_rate_limit_counts_single_entries_and_long_worker_ids);
    RUN(the_rate_limit_holds_its_definition_under_random_batches);
    RUN(conn_refuses_a_reply_over_its_limits);
    RUN(conn_refuses_hostile_headers_at_once);
    RUN(reply_limits_from_the_environment);
    RUN(the_controls_scan_reports_no_id_a_decoder_would_refuse);
    return check_report("test_redis");
}
