/*
 * schedule.c -- scheduling tasks from C through libbinduq's one public header.
 *
 *   cc -o schedule_c examples/schedule.c $(pkg-config --cflags --libs binduq)
 *   (or: -lbinduq -lhiredis -lpthread -lm -ldl when binduq is installed under /usr/local)
 *   REDIS_URL=redis://127.0.0.1:6379/0 ./schedule_c [count] [prefix]
 *
 * Schedules `count` run tasks (default 3) with ids "<prefix>-<n>" and prints how many were
 * queued, how many were duplicates and the queue length. Each run is first recorded as
 * "submitted" in the task storage (DATABASE_URL's PostgreSQL, else this process's memory), as
 * the Lua scheduler records it; a run whose id was scheduled within the last hour is a
 * duplicate and is not queued again (run it twice with the same prefix to see it).
 * Without REDIS_URL the tasks go to this process's in-memory scheduler, which is only useful
 * to see the API work: nothing outside the process can run them.
 */
#include <binduq.h>

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    int count = argc > 1 ? atoi(argv[1]) : 3;
    const char *prefix = argc > 2 ? argv[2] : "c-task";
    bq_client *client;
    bq_err err;
    if (bq_client_new(NULL, &client, &err) != BQ_OK) {
        fprintf(stderr, "schedule_c: %s (%s)\n", err.msg, bq_status_name(err.code));
        return 1;
    }
    for (int i = 1; i <= count; i++) {
        char id[64], text[64];
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        snprintf(text, sizeof text, "hello from C, task %d", i);
        struct bq_message msg = {"user", text};
        struct bq_task task = {"run", id, NULL, &msg, 1};
        if (bq_schedule(client, &task, &err) != BQ_OK) {
            fprintf(stderr, "schedule_c: %s (%s)\n", err.msg, bq_status_name(err.code));
            bq_client_free(client);
            return 1;
        }
    }
    long long len = 0;
    if (bq_queue_length(client, &len, &err) != BQ_OK) {
        fprintf(stderr, "schedule_c: %s (%s)\n", err.msg, bq_status_name(err.code));
        bq_client_free(client);
        return 1;
    }
    long long scheduled = 0, duplicates = 0;
    bq_client_stats(client, &scheduled, &duplicates);
    printf("scheduled %lld tasks (%lld duplicates); queue length %lld\n", scheduled, duplicates,
           len);
    bq_client_free(client);
    return 0;
}
