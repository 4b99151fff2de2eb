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
 *
 * Prints "<tasks per second>" on one line. The tasks are runs with one user message, sized
 * so that the encoded JSON is about PAYLOAD bytes.
 */
#include <binduq.h>
#include <hiredis/hiredis.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
        return fail("usage", "MODE is lpush-loop, schedule or schedule-many");
    }
    free(text);
    printf("%.0f\n", (double)n / (t1 - t0));
    return 0;
}
