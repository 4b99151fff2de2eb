/*
 * test_worker.c -- the worker engine with C slot ops (no Lua) over the in-memory broker and,
 * when BQ_REDIS_URL is set, over Redis: every message handled once, outcomes routed, drain,
 * stop interrupting a blocked fetch, a failing slot init.
 */
#include "check.h"

#include "../../src/broker/broker.h"
#include "../../src/core/alloc.h"
#include "../../src/core/clock.h"
#include "../../src/core/err.h"
#include "../../src/core/log.h"
#include "../../src/engine/worker.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

static atomic_int handled, inits, finis;
static int seen[5000];
static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;

static bq_status ok_init(void *ud, int index, void **state, bq_err *err)
{
    (void)ud, (void)err;
    atomic_fetch_add(&inits, 1);
    *state = (void *)(long)(index + 1);
    return BQ_OK;
}

static bq_status bad_init(void *ud, int index, void **state, bq_err *err)
{
    (void)ud, (void)state;
    if (index == 1)
        return bq_err_set(err, BQ_EINVAL, "slot %d refuses", index);
    atomic_fetch_add(&inits, 1);
    return BQ_OK;
}

/* "n" -> completed with task_id n; "fail" -> failed; anything else -> malformed. */
static void handle(void *state, const struct bq_msg *msg, struct bq_outcome *out)
{
    (void)state;
    atomic_fetch_add(&handled, 1);
    if (strcmp(msg->data, "fail") == 0) {
        out->kind = BQ_OUTCOME_FAILED;
        out->reason = bq_strdup("it failed");
        out->json = bq_strdup("{\"code\":\"EHANDLER\",\"message\":\"it failed\"}");
        return;
    }
    char *end;
    long n = strtol(msg->data, &end, 10);
    if (*end != '\0' || n < 0 || n >= 5000) {
        out->kind = BQ_OUTCOME_MALFORMED;
        out->reason = bq_strdup("not a number");
        return;
    }
    pthread_mutex_lock(&seen_mu);
    seen[n]++;
    pthread_mutex_unlock(&seen_mu);
    out->kind = BQ_OUTCOME_COMPLETED;
    snprintf(out->task_id, sizeof out->task_id, "%ld", n);
}

static void fini(void *state)
{
    (void)state;
    atomic_fetch_add(&finis, 1);
}

static void reset(void)
{
    atomic_store(&handled, 0);
    atomic_store(&inits, 0);
    atomic_store(&finis, 0);
    memset(seen, 0, sizeof seen);
}

static const struct bq_slot_ops ops = {ok_init, handle, fini};

static void push_numbers(bq_broker *b, const char *queue, int n)
{
    for (int i = 0; i < n; i++) {
        char s[16];
        snprintf(s, sizeof s, "%d", i);
        struct bq_slice m = {s, strlen(s)};
        size_t pushed;
        b->ops->push(b, queue, &m, 1, &pushed, NULL);
    }
}

static void drain_and_check(const char *url, const char *queue)
{
    reset();
    struct bq_config cfg = {(char *)url, "test", (char *)queue, 4, 2, 2, 2};
    struct bq_worker_options o = {&cfg, 4, 1.0, true};
    bq_worker *w;
    bq_err err;
    CHECK_INT(bq_worker_new(&o, &ops, NULL, &w, &err), BQ_OK);
    if (w == NULL)
        return;
    bq_broker *b = bq_worker_broker(w);
    push_numbers(b, queue, 3000);
    struct bq_slice extra[2] = {{"fail", 4}, {"junk", 4}};
    size_t pushed;
    b->ops->push(b, queue, extra, 2, &pushed, NULL);
    CHECK_INT(bq_worker_start(w, true, &err), BQ_OK);
    int results = 0, failed = 0, malformed = 0;
    for (;;) {
        struct bq_event ev;
        bq_worker_next_event(w, 30, -1, &ev);
        if (ev.kind == BQ_EVENT_RESULT) {
            results++;
            failed += ev.outcome.kind == BQ_OUTCOME_FAILED;
            malformed += ev.outcome.kind == BQ_OUTCOME_MALFORMED;
        }
        enum bq_event_kind k = ev.kind;
        bq_event_clear(&ev);
        if (k == BQ_EVENT_STOPPED || k == BQ_EVENT_NONE)
            break;
    }
    CHECK_INT(results, 3002);
    CHECK_INT(failed, 1);
    CHECK_INT(malformed, 1);
    int once = 0;
    for (int i = 0; i < 3000; i++)
        once += seen[i] == 1;
    CHECK_INT(once, 3000);
    struct bq_worker_stats st;
    bq_worker_stats(w, &st);
    CHECK_INT(st.completed, 3000);
    CHECK_INT(st.dead_lettered, 2);
    CHECK_INT(st.inflight, 0);
    long long dead = 0;
    CHECK_INT(b->ops->length(b, queue, BQ_LIST_DEAD, &dead, NULL), BQ_OK);
    CHECK_INT(dead, 2);
    bq_worker_free(w);
    CHECK_INT(atomic_load(&inits), 4);
    CHECK_INT(atomic_load(&finis), 4);
}

TEST(memory_drain_handles_each_message_once)
{
    drain_and_check(NULL, "test:worker:mem");
}

TEST(redis_drain_handles_each_message_once)
{
    const char *url = getenv("BQ_REDIS_URL");
    if (url == NULL || *url == '\0')
        SKIP("BQ_REDIS_URL is not set");
    char queue[64];
    snprintf(queue, sizeof queue, "test:worker:%d", (int)getpid());
    drain_and_check(url, queue);
}

TEST(stop_interrupts_a_blocked_fetch)
{
    const char *urls[2] = {NULL, getenv("BQ_REDIS_URL")};
    for (int i = 0; i < 2; i++) {
        if (i == 1 && (urls[1] == NULL || *urls[1] == '\0'))
            continue;
        reset();
        struct bq_config cfg = {(char *)urls[i], "test", (char *)"test:worker:idle", 2, 2, 2, 2};
        struct bq_worker_options o = {&cfg, 2, 30.0, false};
        bq_worker *w;
        CHECK_INT(bq_worker_new(&o, &ops, NULL, &w, NULL), BQ_OK);
        CHECK_INT(bq_worker_start(w, false, NULL), BQ_OK);
        usleep(200000);
        double t0 = bq_now_mono();
        bq_worker_stop(w);
        struct bq_event ev;
        bq_worker_next_event(w, 10, -1, &ev);
        CHECK_INT(ev.kind, BQ_EVENT_STOPPED);
        CHECK(bq_now_mono() - t0 < 5.0); /* not the 30 s blocking timeout */
        bq_event_clear(&ev);
        bq_worker_free(w);
        CHECK_INT(atomic_load(&finis), 2);
    }
}

TEST(a_failing_slot_init_fails_the_start)
{
    reset();
    struct bq_config cfg = {NULL, "test", (char *)"test:worker:bad", 2, 2, 2, 2};
    struct bq_worker_options o = {&cfg, 3, 1.0, false};
    struct bq_slot_ops bad = {bad_init, handle, fini};
    bq_worker *w;
    bq_err err;
    CHECK_INT(bq_worker_new(&o, &bad, NULL, &w, &err), BQ_OK);
    CHECK_INT(bq_worker_start(w, false, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "slot 1 refuses");
    bq_worker_free(w);
    CHECK_INT(atomic_load(&inits), 2);
    CHECK_INT(atomic_load(&finis), 2); /* the slots that did start are finalised */
}

TEST(options_are_checked)
{
    struct bq_config cfg = {NULL, "test", (char *)"q", 2, 2, 2, 2};
    struct bq_worker_options o = {&cfg, 0, 1.0, false};
    bq_worker *w;
    bq_err err;
    CHECK_INT(bq_worker_new(&o, &ops, NULL, &w, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "concurrency");
    o.concurrency = 1;
    o.block_timeout = 0;
    CHECK_INT(bq_worker_new(&o, &ops, NULL, &w, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "block_timeout");
}

int main(void)
{
    bq_log_set_level("off");
    RUN(memory_drain_handles_each_message_once);
    RUN(redis_drain_handles_each_message_once);
    RUN(stop_interrupts_a_blocked_fetch);
    RUN(a_failing_slot_init_fails_the_start);
    RUN(options_are_checked);
    return check_report("test_worker");
}
