/*
 * cbench.c -- the C side of `make bench` (tests/bench/bench.lua runs it).
 *
 *   cbench MODE HOST PORT QUEUE N PAYLOAD
 *
 * MODE
 *   lpush-loop      a plain hiredis loop: redisCommand("LPUSH queue <payload>") N times, one
 *                   round trip each -- the floor for one-at-a-time enqueue
 *   schedule        bq_schedule N times (validate, encode, one LPUSH round trip each)
 *   schedule-many   bq_schedule_many in batches of 1,000 (one pipelined round trip each)
 *   pickup          a plain hiredis consumer process blocked in BRPOP on an empty queue, and
 *                   this process sending N LPUSHes one at a time, 2 ms apart, each carrying
 *                   the monotonic time taken just before it -- the floor for the pickup
 *                   latency at idle (the same idle gap the bench's binduq producer leaves).
 *                   Prints "<pickup p50 ms> <pickup p99 ms> <LPUSH p50 ms> <LPUSH p99 ms>".
 *
 * The other modes print "<tasks per second>" on one line. The tasks are runs with one user message, sized
 * so that the encoded JSON is about PAYLOAD bytes.
 */
#include <binduq.h>
#include <hiredis/hiredis.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int fail(const char *what, const char *msg)
{
    fprintf(stderr, "cbench: %s: %s\n", what, msg);
    return 1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-th quantile of the n sorted values v (the value at rank ceil(q n)). */
static double quantile(const double *v, long n, double q)
{
    long k = (long)(q * (double)n + 0.999999);
    return v[k < 1 ? 0 : (k > n ? n - 1 : k - 1)];
}

/* The pickup mode: a child consumer in BRPOP, this process the producer. The child writes its
 * sorted latencies' p50 and p99 into the pipe; the producer adds its own LPUSH calls'. */
static int pickup(const char *host, int port, const char *queue, long n)
{
    int fds[2];
    double *lat = malloc((size_t)n * sizeof *lat);
    if (lat == NULL || pipe(fds) != 0)
        return fail("pickup", "out of memory or pipes");
    pid_t pid = fork();
    if (pid < 0)
        return fail("pickup", "fork failed");
    if (pid == 0) {
        close(fds[0]);
        redisContext *rc = redisConnect(host, port);
        if (rc == NULL || rc->err) {
            fail("connect", rc ? rc->errstr : "out of memory");
            _exit(1);
        }
        for (long i = 0; i < n; i++) {
            redisReply *r = redisCommand(rc, "BRPOP %s 10", queue);
            double t = now();
            if (r == NULL) {
                fail("BRPOP", rc->errstr);
                _exit(1);
            }
            if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
                fail("BRPOP", "no task within 10 s");
                _exit(1);
            }
            lat[i] = (t - atof(r->element[1]->str)) * 1000;
            freeReplyObject(r);
        }
        qsort(lat, (size_t)n, sizeof *lat, cmp_double);
        double out[2] = {quantile(lat, n, 0.5), quantile(lat, n, 0.99)};
        _exit(write(fds[1], out, sizeof out) == (ssize_t)sizeof out ? 0 : 1);
    }
    close(fds[1]);
    redisContext *rc = redisConnect(host, port);
    if (rc == NULL || rc->err)
        return fail("connect", rc ? rc->errstr : "out of memory");
    struct timespec gap = {0, 2000000}, settle = {0, 300000000};
    nanosleep(&settle, NULL); /* the consumer is in its BRPOP */
    for (long i = 0; i < n; i++) {
        nanosleep(&gap, NULL);
        char t0s[32];
        double t0 = now();
        snprintf(t0s, sizeof t0s, "%.9f", t0);
        redisReply *r = redisCommand(rc, "LPUSH %s %s", queue, t0s);
        if (r == NULL)
            return fail("LPUSH", rc->errstr);
        freeReplyObject(r);
        lat[i] = (now() - t0) * 1000;
    }
    redisFree(rc);
    double got[2];
    int status;
    bool ok = read(fds[0], got, sizeof got) == (ssize_t)sizeof got;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0 || !ok)
        return fail("pickup", "the consumer failed");
    qsort(lat, (size_t)n, sizeof *lat, cmp_double);
    printf("%.4f %.4f %.4f %.4f\n", got[0], got[1], quantile(lat, n, 0.5), quantile(lat, n, 0.99));
    free(lat);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 7)
        return fail("usage", "cbench MODE HOST PORT QUEUE N PAYLOAD");
    const char *mode = argv[1], *host = argv[2], *queue = argv[4];
    int port = atoi(argv[3]);
    long n = atol(argv[5]);
    long payload = atol(argv[6]);
    if (port <= 0 || n <= 0 || payload < 150 || payload > 100000)
        return fail("usage", "bad PORT, N or PAYLOAD");
    if (strcmp(mode, "pickup") == 0)
        return pickup(host, port, queue, n);
    /* The message text: PAYLOAD less the JSON around it (~154 bytes with id and timestamp). */
    size_t text_len = (size_t)payload - 154;
    char *text = malloc(text_len + 1);
    if (text == NULL)
        return fail("setup", "out of memory");
    memset(text, 'x', text_len);
    text[text_len] = '\0';
    double t0, t1;

    if (strcmp(mode, "lpush-loop") == 0) {
        redisContext *rc = redisConnect(host, port);
        if (rc == NULL || rc->err)
            return fail("connect", rc ? rc->errstr : "out of memory");
        /* The same bytes a scheduled task would be, give or take the id. */
        char *value = malloc((size_t)payload);
        if (value == NULL)
            return fail("setup", "out of memory");
        memset(value, 'x', (size_t)payload);
        t0 = now();
        for (long i = 0; i < n; i++) {
            redisReply *r = redisCommand(rc, "LPUSH %s %b", queue, value, (size_t)payload);
            if (r == NULL)
                return fail("LPUSH", rc->errstr);
            freeReplyObject(r);
        }
        t1 = now();
        free(value);
        redisFree(rc);
    } else if (strcmp(mode, "schedule") == 0 || strcmp(mode, "schedule-many") == 0) {
        char url[128];
        snprintf(url, sizeof url, "redis://%s:%d/0", host, port);
        struct bq_client_options opts;
        memset(&opts, 0, sizeof opts);
        opts.url = url;
        /* As the Lua enqueue lines: deduplication off (the dedup line measures it); each run
         * is still recorded in this process' memory storage, as the Lua producer does. */
        opts.no_dedup = true;
        opts.queue_name = queue;
        bq_client *client;
        bq_err err;
        if (bq_client_new(&opts, &client, &err) != BQ_OK)
            return fail("bq_client_new", err.msg);
        enum { BATCH = 1000 };
        static char ids[BATCH][32];
        static struct bq_message msgs[BATCH];
        static struct bq_task tasks[BATCH];
        bool many = strcmp(mode, "schedule-many") == 0;
        t0 = now();
        for (long done = 0; done < n;) {
            size_t k = many ? (size_t)(n - done < BATCH ? n - done : BATCH) : 1;
            for (size_t j = 0; j < k; j++) {
                snprintf(ids[j], sizeof ids[j], "cb-%ld", done + (long)j);
                msgs[j] = (struct bq_message){"user", text};
                tasks[j] = (struct bq_task){"run", ids[j], "c", &msgs[j], 1};
            }
            size_t sent = 0;
            bq_status st = many ? bq_schedule_many(client, tasks, k, &sent, &err)
                                : bq_schedule(client, &tasks[0], &err);
            if (st != BQ_OK)
                return fail(mode, err.msg);
            done += (long)k;
        }
        t1 = now();
        bq_client_free(client);
    } else {
        return fail("usage", "MODE is lpush-loop, schedule, schedule-many or pickup");
    }
    free(text);
    printf("%.0f\n", (double)n / (t1 - t0));
    return 0;
}
