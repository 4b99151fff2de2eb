/*
 * test_worker.c -- the worker engine with C slot ops (no Lua) over the in-memory broker and,
 * when BQ_REDIS_URL is set, over Redis: every message handled once, outcomes routed, drain,
 * stop interrupting a blocked fetch, a failing slot init.
 */
#include "check.h"

#include "../../src/binduq.h"
#include "../../src/broker/broker.h"
#include "../../src/core/alloc.h"
#include "../../src/core/clock.h"
#include "../../src/core/buf.h"
#include "../../src/core/err.h"
#include "../../src/core/log.h"
#include "../../src/engine/worker.h"
#include "../../src/engine/worker_int.h" /* bq_worker_feed_outcome */

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

static atomic_int handled, inits, finis;
static int seen[5000];
static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;

static bq_status ok_init(void *ud, int index, struct bq_slot_ctl *ctl, void **state,
                         bq_err *err)
{
    (void)ud, (void)err, (void)ctl;
    atomic_fetch_add(&inits, 1);
    *state = (void *)(long)(index + 1);
    return BQ_OK;
}

static bq_status bad_init(void *ud, int index, struct bq_slot_ctl *ctl, void **state,
                          bq_err *err)
{
    (void)ud, (void)state, (void)ctl;
    if (index == 1)
        return bq_err_set(err, BQ_EINVAL, "slot %d refuses", index);
    atomic_fetch_add(&inits, 1);
    return BQ_OK;
}

/* "n" -> completed with task_id n; "fail" -> dead; "again" -> retried once after 50 ms,
 * then completed; anything else -> malformed. */
static void handle(void *state, const struct bq_msg *msg, struct bq_outcome *out)
{
    (void)state;
    atomic_fetch_add(&handled, 1);
    if (strcmp(msg->data, "fail") == 0) {
        out->kind = BQ_OUTCOME_DEAD;
        out->reason = bq_strdup("it failed");
        out->json = bq_strdup("{\"code\":\"EHANDLER\",\"message\":\"it failed\"}");
        return;
    }
    if (strcmp(msg->data, "again") == 0) {
        out->kind = BQ_OUTCOME_RETRY;
        out->header = bq_strdup("#bq {\"attempt\":2}");
        out->delay = 0.05;
        out->reason = bq_strdup("try again");
        return;
    }
    if (strcmp(msg->data, "#bq {\"attempt\":2}\nagain") == 0) {
        out->kind = BQ_OUTCOME_COMPLETED;
        out->attempt = 2;
        strcpy(out->task_id, "again");
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

static const struct bq_slot_ops ops = {ok_init, handle, fini, NULL, NULL, NULL, NULL};

/* A prepare that settles nothing, and counts the chunks and their largest size. */
static atomic_int chunks, chunk_max, prepared;
static void count_prepare(void *state, const struct bq_msg *msgs, int n, bool *settled)
{
    (void)state, (void)msgs, (void)settled;
    atomic_fetch_add(&chunks, 1);
    atomic_fetch_add(&prepared, n);
    int m = atomic_load(&chunk_max);
    while (n > m && !atomic_compare_exchange_weak(&chunk_max, &m, n))
        ;
}
static const struct bq_slot_ops chunk_ops = {ok_init, handle, fini, count_prepare, NULL, NULL, NULL};

/* Slots holding several tasks (per_slot > 1): every other message ends at once in start, the
 * rest wait for a later wait, which ends them all after 1 ms; each slot checks it never holds
 * more than MULTI_PER at once and that every place it is given is free. */
#define MULTI_PER 8
struct multi_state {
    struct bq_msg held[MULTI_PER];
    bool busy[MULTI_PER];
    int n, most;
};
static atomic_int multi_most, multi_misuse;

static bq_status multi_init(void *ud, int index, struct bq_slot_ctl *ctl, void **state,
                            bq_err *err)
{
    (void)ud, (void)index, (void)ctl;
    atomic_fetch_add(&inits, 1);
    *state = bq_calloc(1, sizeof(struct multi_state));
    return *state ? BQ_OK : bq_err_set(err, BQ_ENOMEM, "out of memory");
}

static bool multi_start(void *state, int t, const struct bq_msg *msg, struct bq_outcome *out)
{
    struct multi_state *m = state;
    if (t < 0 || t >= MULTI_PER || m->busy[t])
        atomic_fetch_add(&multi_misuse, 1);
    if (atomic_fetch_add(&handled, 0) % 2 == 0) {
        handle(state, msg, out);
        return true;
    }
    m->busy[t] = true;
    m->held[t] = *msg;
    if (++m->n > m->most)
        m->most = m->n;
    int most = atomic_load(&multi_most);
    while (m->most > most && !atomic_compare_exchange_weak(&multi_most, &most, m->most))
        ;
    return false;
}

static int multi_wait(void *state, double timeout, unsigned woken, int *ended,
                      struct bq_outcome *outs)
{
    struct multi_state *m = state;
    (void)timeout, (void)woken;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
    int n = 0;
    for (int t = 0; t < MULTI_PER; t++) {
        if (!m->busy[t])
            continue;
        handle(state, &m->held[t], &outs[t]);
        m->busy[t] = false;
        m->n--;
        ended[n++] = t;
    }
    return n;
}

static void multi_fini(void *state)
{
    bq_free(state);
    atomic_fetch_add(&finis, 1);
}

static const struct bq_slot_ops multi_ops = {multi_init, handle,     multi_fini, NULL,
                                             NULL,       multi_start, multi_wait};

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

static void drain_and_check_ops(const char *url, const char *queue, enum bq_delivery delivery,
                                const struct bq_slot_ops *sops)
{
    reset();
    struct bq_config cfg = {.url = (char *)url, .url_source = "test", .queue_name = (char *)queue,
                            .max_connections = 4, .connect_timeout = 2,
                            .command_timeout = 2, .pool_timeout = 2};
    struct bq_worker_options o = {&cfg, NULL, 0, NULL, 4, 2, 1.0, true, delivery, 5.0, 5.0, 0, 0, 1};
    o.batch = sops->prepare != NULL ? 128 : 0; /* chunks are taken from a deep queue */
    o.per_slot = sops->start != NULL ? MULTI_PER : 1;
    bq_worker *w;
    bq_err err;
    CHECK_INT(bq_worker_new(&o, sops, NULL, &w, &err), BQ_OK);
    if (w == NULL)
        return;
    bq_broker *b = bq_worker_broker(w);
    push_numbers(b, queue, 3000);
    struct bq_slice extra[3] = {{"fail", 4}, {"junk", 4}, {"again", 5}};
    size_t pushed;
    b->ops->push(b, queue, extra, 3, &pushed, NULL);
    CHECK_INT(bq_worker_start(w, true, &err), BQ_OK);
    int results = 0, failed = 0, malformed = 0, retried = 0;
    for (;;) {
        struct bq_event ev;
        bq_worker_next_event(w, 30, -1, &ev);
        if (ev.kind == BQ_EVENT_RESULT) {
            results++;
            failed += ev.outcome.kind == BQ_OUTCOME_DEAD;
            malformed += ev.outcome.kind == BQ_OUTCOME_MALFORMED;
            retried += ev.outcome.kind == BQ_OUTCOME_RETRY;
        }
        enum bq_event_kind k = ev.kind;
        bq_event_clear(&ev);
        if (k == BQ_EVENT_STOPPED || k == BQ_EVENT_NONE)
            break;
    }
    CHECK_INT(results, 3004); /* "again" twice: retried, then completed */
    CHECK_INT(failed, 1);
    CHECK_INT(malformed, 1);
    CHECK_INT(retried, 1);
    int once = 0;
    for (int i = 0; i < 3000; i++)
        once += seen[i] == 1;
    CHECK_INT(once, 3000);
    struct bq_worker_stats st;
    bq_worker_stats(w, &st);
    CHECK_INT(st.completed, 3001);
    CHECK_INT(st.dead_lettered, 2);
    CHECK_INT(st.retried, 1);
    CHECK_INT(st.inflight, 0);
    CHECK_INT(st.lease_lost, 0);
    long long n = -1;
    CHECK_INT(b->admin->length(b, queue, BQ_LIST_DEAD, &n, NULL), BQ_OK);
    CHECK_INT(n, 2);
    CHECK_INT(b->admin->length(b, queue, BQ_LIST_INFLIGHT, &n, NULL), BQ_OK);
    CHECK_INT(n, 0); /* every lease released */
    CHECK_INT(b->admin->length(b, queue, BQ_LIST_DELAYED, &n, NULL), BQ_OK);
    CHECK_INT(n, 0);
    CHECK_INT(b->admin->length(b, queue, BQ_LIST_READY, &n, NULL), BQ_OK);
    CHECK_INT(n, 0);
    bq_worker_free(w);
    CHECK_INT(atomic_load(&inits), 4);
    CHECK_INT(atomic_load(&finis), 4);
}

static void drain_and_check(const char *url, const char *queue, enum bq_delivery delivery)
{
    drain_and_check_ops(url, queue, delivery, &ops);
}

TEST(memory_drain_handles_each_message_once)
{
    drain_and_check(NULL, "test:worker:mem", BQ_AT_LEAST_ONCE);
    drain_and_check(NULL, "test:worker:mem2", BQ_AT_MOST_ONCE);
}

TEST(slots_holding_several_tasks_handle_each_message_once)
{
    atomic_store(&multi_most, 0);
    atomic_store(&multi_misuse, 0);
    drain_and_check_ops(NULL, "test:worker:multi", BQ_AT_LEAST_ONCE, &multi_ops);
    CHECK_INT(atomic_load(&multi_misuse), 0);
    CHECK(atomic_load(&multi_most) > 1);          /* tasks were held together */
    CHECK(atomic_load(&multi_most) <= MULTI_PER); /* never more than per_slot */
    const char *url = getenv("BQ_REDIS_URL");
    char queue[64];
    snprintf(queue, sizeof queue, "test:worker:multi:%d", (int)getpid());
    if (url != NULL && *url != '\0')
        drain_and_check_ops(url, queue, BQ_AT_LEAST_ONCE, &multi_ops);
}

TEST(redis_drain_handles_each_message_once)
{
    const char *url = getenv("BQ_REDIS_URL");
    if (url == NULL || *url == '\0')
        SKIP("BQ_REDIS_URL is not set");
    char queue[64];
    snprintf(queue, sizeof queue, "test:worker:%d", (int)getpid());
    drain_and_check(url, queue, BQ_AT_LEAST_ONCE);
    snprintf(queue, sizeof queue, "test:worker:amo:%d", (int)getpid());
    drain_and_check(url, queue, BQ_AT_MOST_ONCE);
}

/* With a prepare, a deep queue of quick tasks is taken in chunks; each message is still
 * handled once, every outcome as without. */
TEST(chunks_are_prepared_and_each_message_handled_once)
{
    atomic_store(&chunks, 0);
    atomic_store(&chunk_max, 0);
    atomic_store(&prepared, 0);
    drain_and_check_ops(NULL, "test:worker:chunk", BQ_AT_LEAST_ONCE, &chunk_ops);
    CHECK(atomic_load(&chunks) > 0);
    CHECK(atomic_load(&chunk_max) > 1 && atomic_load(&chunk_max) <= BQ_CHUNK_MAX);
    const char *url = getenv("BQ_REDIS_URL");
    if (url != NULL && *url != '\0') {
        char queue[64];
        snprintf(queue, sizeof queue, "test:worker:chunk:%d", (int)getpid());
        drain_and_check_ops(url, queue, BQ_AT_LEAST_ONCE, &chunk_ops);
        snprintf(queue, sizeof queue, "test:worker:chunk:amo:%d", (int)getpid());
        drain_and_check_ops(url, queue, BQ_AT_MOST_ONCE, &chunk_ops);
    }
}

/* A stop while slots hold chunks: what prepare settled is still handled; the rest goes back
 * to the queue unhandled. Nothing is lost, nothing handled twice. */
static atomic_int settled_seen[400], settled_marked[400];
static void settle_prepare(void *state, const struct bq_msg *msgs, int n, bool *settled)
{
    (void)state;
    for (int i = 0; i < n; i++) {
        long v = strtol(msgs[i].data, NULL, 10);
        if (v % 5 == 0) {
            settled[i] = true;
            atomic_store(&settled_marked[v], 1);
        }
    }
}
static void slow_handle(void *state, const struct bq_msg *msg, struct bq_outcome *out)
{
    long v = strtol(msg->data, NULL, 10);
    if (atomic_load(&settled_marked[v]))
        atomic_fetch_add(&settled_seen[v], 1);
    else
        usleep(100);
    handle(state, msg, out);
}

TEST(a_stop_hands_back_a_chunk_but_what_prepare_settled)
{
    reset();
    for (int i = 0; i < 400; i++) {
        atomic_store(&settled_seen[i], 0);
        atomic_store(&settled_marked[i], 0);
    }
    struct bq_slot_ops sops = {ok_init, slow_handle, fini, settle_prepare, NULL, NULL, NULL};
    struct bq_config cfg = {.url = NULL, .url_source = "test", .queue_name = (char *)"test:worker:chunkstop",
                            .max_connections = 2, .connect_timeout = 2,
                            .command_timeout = 2, .pool_timeout = 2};
    struct bq_worker_options o = {&cfg, NULL, 0, NULL, 2, 0, 1.0, false, BQ_AT_LEAST_ONCE, 5.0, 5.0, 128, 0, 1};
    bq_worker *w;
    CHECK_INT(bq_worker_new(&o, &sops, NULL, &w, NULL), BQ_OK);
    bq_broker *b = bq_worker_broker(w);
    push_numbers(b, "test:worker:chunkstop", 400);
    CHECK_INT(bq_worker_start(w, false, NULL), BQ_OK);
    /* stop once chunks were taken (a settled mark) and some tasks ran */
    int marks = 0;
    for (int i = 0; i < 1000 && (atomic_load(&handled) < 60 || marks == 0); i++) {
        usleep(2000);
        marks = 0;
        for (int j = 0; j < 400; j++)
            marks += atomic_load(&settled_marked[j]);
    }
    bq_worker_stop(w);
    enum bq_event_kind kind;
    do {
        struct bq_event ev;
        bq_worker_next_event(w, 10, -1, &ev);
        kind = ev.kind;
        bq_event_clear(&ev);
    } while (kind != BQ_EVENT_STOPPED && kind != BQ_EVENT_NONE);
    CHECK_INT(kind, BQ_EVENT_STOPPED);
    int once = 0, twice = 0, marked = 0, settled_ok = 0;
    for (int i = 0; i < 400; i++) {
        once += seen[i] == 1;
        twice += seen[i] > 1;
        marked += atomic_load(&settled_marked[i]);
        settled_ok += atomic_load(&settled_marked[i]) && atomic_load(&settled_seen[i]) == 1;
    }
    CHECK_INT(twice, 0);
    CHECK(marked > 0);
    CHECK_INT(settled_ok, marked); /* each settled message was handled, once */
    long long ready = -1, inflight = -1;
    CHECK_INT(b->admin->length(b, "test:worker:chunkstop", BQ_LIST_READY, &ready, NULL), BQ_OK);
    CHECK_INT(b->admin->length(b, "test:worker:chunkstop", BQ_LIST_INFLIGHT, &inflight, NULL), BQ_OK);
    CHECK_INT(inflight, 0);
    CHECK_INT((int)ready + once, 400); /* the rest went back to the queue */
    CHECK(once < 400);
    bq_worker_free(w);
}

TEST(stop_interrupts_a_blocked_fetch)
{
    const char *urls[2] = {NULL, getenv("BQ_REDIS_URL")};
    for (int i = 0; i < 2; i++) {
        if (i == 1 && (urls[1] == NULL || *urls[1] == '\0'))
            continue;
        reset();
        struct bq_config cfg = {.url = (char *)urls[i], .url_source = "test", .queue_name = (char *)"test:worker:idle",
                            .max_connections = 2, .connect_timeout = 2,
                            .command_timeout = 2, .pool_timeout = 2};
        struct bq_worker_options o = {&cfg, NULL, 0, NULL, 2, 0, 30.0, false, BQ_AT_LEAST_ONCE, 5.0, 5.0, 0, 0, 1};
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
    struct bq_config cfg = {.url = NULL, .url_source = "test", .queue_name = (char *)"test:worker:bad",
                            .max_connections = 2, .connect_timeout = 2,
                            .command_timeout = 2, .pool_timeout = 2};
    struct bq_worker_options o = {&cfg, NULL, 0, NULL, 3, 0, 1.0, false, BQ_AT_LEAST_ONCE, 5.0, 5.0, 0, 0, 1};
    struct bq_slot_ops bad = {bad_init, handle, fini, NULL, NULL, NULL, NULL};
    bq_worker *w;
    bq_err err;
    CHECK_INT(bq_worker_new(&o, &bad, NULL, &w, &err), BQ_OK);
    CHECK_INT(bq_worker_start(w, false, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "slot 1 refuses");
    bq_worker_free(w);
    CHECK_INT(atomic_load(&inits), 2);
    CHECK_INT(atomic_load(&finis), 2); /* the slots that did start are finalised */
}

/* ---- The control channel reaches the slot that runs the task ------------------------------ */

static atomic_int sleeper_started, sleeper_control;
static _Atomic double sleeper_took;

static bq_status ctl_init(void *ud, int index, struct bq_slot_ctl *ctl, void **state,
                          bq_err *err)
{
    (void)ud, (void)index, (void)err;
    *state = ctl;
    return BQ_OK;
}

/* "sleep:<id>" names task <id> for the control channel and sleeps up to 10 s. */
static void ctl_handle(void *state, const struct bq_msg *msg, struct bq_outcome *out)
{
    struct bq_slot_ctl *ctl = state;
    bq_slot_set_task(ctl, msg->data + 6);
    double t0 = bq_now_mono();
    atomic_store(&sleeper_started, 1);
    bool full = bq_slot_sleep(ctl, 10.0);
    atomic_store(&sleeper_took, bq_now_mono() - t0);
    atomic_store(&sleeper_control, full ? -1 : atomic_load(&ctl->control));
    out->kind = BQ_OUTCOME_CANCELED;
}

static void control_reaches(const char *url, const char *queue)
{
    atomic_store(&sleeper_started, 0);
    atomic_store(&sleeper_control, 0);
    struct bq_config cfg = {.url = (char *)url, .url_source = "test", .queue_name = (char *)queue,
                            .max_connections = 4, .connect_timeout = 2,
                            .command_timeout = 2, .pool_timeout = 2};
    struct bq_worker_options o = {&cfg, NULL, 0, NULL, 2, 0, 1.0, false, BQ_AT_LEAST_ONCE, 5.0, 5.0, 0, 0, 1};
    struct bq_slot_ops cops = {ctl_init, ctl_handle, fini, NULL, NULL, NULL, NULL};
    bq_worker *w;
    bq_err err;
    CHECK_INT(bq_worker_new(&o, &cops, NULL, &w, &err), BQ_OK);
    if (w == NULL)
        return;
    CHECK_INT(bq_worker_start(w, false, &err), BQ_OK);
    bq_broker *b = bq_worker_broker(w);
    struct bq_slice m = {"sleep:T1", 8};
    size_t pushed;
    CHECK_INT(b->ops->push(b, queue, &m, 1, &pushed, NULL), BQ_OK);
    for (int i = 0; i < 500 && !atomic_load(&sleeper_started); i++)
        usleep(10000);
    CHECK_INT(atomic_load(&sleeper_started), 1);
    usleep(100000); /* the listener is subscribed by now */
    /* Another task's cancel changes nothing; this one's wakes the sleeping handler. */
    CHECK_INT(bq_worker_publish(w, BQ_CONTROL_CANCEL, "T2", &err), BQ_OK);
    usleep(50000);
    CHECK_INT(atomic_load(&sleeper_control), 0);
    CHECK_INT(bq_worker_publish(w, BQ_CONTROL_PAUSE, "T1", &err), BQ_OK);
    for (int i = 0; i < 500 && atomic_load(&sleeper_control) == 0; i++)
        usleep(2000);
    CHECK_INT(atomic_load(&sleeper_control), BQ_CONTROL_PAUSE);
    CHECK(atomic_load(&sleeper_took) < 5.0);
    struct bq_worker_stats st;
    for (int i = 0; i < 500; i++) {
        bq_worker_stats(w, &st);
        if (st.canceled == 1)
            break;
        usleep(2000);
    }
    CHECK_INT(st.canceled, 1);
    bq_worker_stop(w);
    bq_worker_join(w);
    bq_worker_free(w);
}

TEST(control_reaches_the_running_slot)
{
    control_reaches(NULL, "test:worker:ctl");
    const char *url = getenv("BQ_REDIS_URL");
    if (url != NULL && *url != '\0') {
        char queue[64];
        snprintf(queue, sizeof queue, "test:worker:ctl:%d", (int)getpid());
        control_reaches(url, queue);
    }
}

/* A cancel or pause for a task named ahead (its chunk started it in storage, it has not run
 * yet) is kept and becomes its control request when it runs; others' requests are not. */
TEST(control_for_a_task_ahead_is_kept_until_it_runs)
{
    struct bq_slot_ctl ctl;
    memset(&ctl, 0, sizeof ctl);
    pthread_mutex_init(&ctl.mu, NULL);
    pthread_cond_init(&ctl.cv, NULL);
    const char *ids[] = {"t-a", "t-b", "t-c"};
    bq_slot_set_ahead(&ctl, ids, 3);
    CHECK(bq_slot_request(&ctl, BQ_CONTROL_CANCEL, "t-b"));
    CHECK(bq_slot_request(&ctl, BQ_CONTROL_PAUSE, "t-c"));
    CHECK(bq_slot_request(&ctl, BQ_CONTROL_PAUSE, "t-b")); /* the cancel stays */
    CHECK(!bq_slot_request(&ctl, BQ_CONTROL_CANCEL, "t-z"));
    bq_slot_set_task(&ctl, "t-a");
    CHECK_INT(atomic_load(&ctl.control), BQ_CONTROL_NONE);
    bq_slot_set_task(&ctl, "t-b");
    CHECK_INT(atomic_load(&ctl.control), BQ_CONTROL_CANCEL);
    bq_slot_set_task(&ctl, "t-c");
    CHECK_INT(atomic_load(&ctl.control), BQ_CONTROL_PAUSE);
    bq_slot_set_task(&ctl, "t-b"); /* taken once: a second naming starts clean */
    CHECK_INT(atomic_load(&ctl.control), BQ_CONTROL_NONE);
    CHECK(!bq_slot_request(&ctl, BQ_CONTROL_CANCEL, "t-a")); /* no longer ahead, not running */
    CHECK(bq_slot_request(&ctl, BQ_CONTROL_CANCEL, "t-b")); /* running now */
    pthread_cond_destroy(&ctl.cv);
    pthread_mutex_destroy(&ctl.mu);
}

/* A cancel or pause that comes after a message was fetched and before its slot named the
 * task is kept for it: the slot takes it as it names the task; a message fetched after the
 * request does not; a request is taken once. */
static struct {
    bq_worker *w;
    struct bq_slot_ctl *ctl;
} late;
static atomic_int late_started, late_go, late_control[2];

static bq_status late_init(void *ud, int index, struct bq_slot_ctl *ctl, void **state,
                           bq_err *err)
{
    (void)ud, (void)index, (void)err;
    late.ctl = ctl;
    *state = NULL;
    return BQ_OK;
}

/* "late:<id>": waits for late_go, then names task <id> as a handler state does (l_slot.c). */
static void late_handle(void *state, const struct bq_msg *msg, struct bq_outcome *out)
{
    (void)state;
    int k = atomic_fetch_add(&late_started, 1);
    for (int i = 0; i < 500 && atomic_load(&late_go) <= k; i++)
        usleep(10000);
    const char *id = msg->data + 5;
    bq_slot_set_task(late.ctl, id);
    int op = bq_worker_claim_control(late.w, id, msg->seq);
    if (op != BQ_CONTROL_NONE)
        bq_slot_request(late.ctl, op, id);
    if (k < 2)
        atomic_store(&late_control[k], atomic_load(&late.ctl->control) + 10);
    bq_slot_set_task(late.ctl, NULL);
    out->kind = BQ_OUTCOME_CANCELED;
}

TEST(control_before_the_task_is_named_is_kept_for_it)
{
    struct bq_config cfg = {.url = NULL, .url_source = "test", .queue_name = (char *)"test:worker:late",
                            .max_connections = 4, .connect_timeout = 2,
                            .command_timeout = 2, .pool_timeout = 2};
    struct bq_worker_options o = {&cfg, NULL, 0, NULL, 1, 0, 1.0, false, BQ_AT_LEAST_ONCE, 5.0, 5.0, 0, 0, 1};
    struct bq_slot_ops lops = {late_init, late_handle, fini, NULL, NULL, NULL, NULL};
    bq_err err;
    CHECK_INT(bq_worker_new(&o, &lops, NULL, &late.w, &err), BQ_OK);
    if (late.w == NULL)
        return;
    CHECK_INT(bq_worker_start(late.w, false, &err), BQ_OK);
    bq_broker *b = bq_worker_broker(late.w);
    struct bq_slice m = {"late:T1", 7};
    size_t pushed;
    CHECK_INT(b->ops->push(b, "test:worker:late", &m, 1, &pushed, NULL), BQ_OK);
    for (int i = 0; i < 500 && atomic_load(&late_started) < 1; i++)
        usleep(10000);
    CHECK_INT(atomic_load(&late_started), 1);
    /* Fetched, not named yet: nobody has it, so it is kept. */
    CHECK(!bq_worker_control(late.w, BQ_CONTROL_PAUSE, "T1"));
    CHECK(!bq_worker_control(late.w, BQ_CONTROL_CANCEL, "T1")); /* a cancel outranks it */
    CHECK(!bq_worker_control(late.w, BQ_CONTROL_PAUSE, "T9"));  /* another task's */
    /* The same task's next message, fetched after the requests, gets none of them. */
    CHECK_INT(b->ops->push(b, "test:worker:late", &m, 1, &pushed, NULL), BQ_OK);
    atomic_store(&late_go, 1);
    for (int i = 0; i < 500 && atomic_load(&late_control[0]) == 0; i++)
        usleep(2000);
    CHECK_INT(atomic_load(&late_control[0]), BQ_CONTROL_CANCEL + 10);
    atomic_store(&late_go, 2);
    for (int i = 0; i < 500 && atomic_load(&late_control[1]) == 0; i++)
        usleep(2000);
    CHECK_INT(atomic_load(&late_control[1]), BQ_CONTROL_NONE + 10);
    /* Taken once: nothing is left for T1; T9's waits for a message of T9. */
    CHECK_INT(bq_worker_claim_control(late.w, "T1", 1), BQ_CONTROL_NONE);
    CHECK_INT(bq_worker_claim_control(late.w, "T9", 1), BQ_CONTROL_PAUSE);
    CHECK_INT(bq_worker_claim_control(late.w, "T9", 1), BQ_CONTROL_NONE);
    bq_worker_stop(late.w);
    bq_worker_join(late.w);
    bq_worker_free(late.w);
}

TEST(control_messages_parse)
{
    char buf[64], id[16];
    CHECK_INT(bq_control_format(buf, sizeof buf, BQ_CONTROL_CANCEL, "abc"), 10);
    CHECK_STR(buf, "cancel abc");
    CHECK_INT(bq_control_parse(buf, strlen(buf), id, sizeof id), BQ_CONTROL_CANCEL);
    CHECK_STR(id, "abc");
    CHECK_INT(bq_control_parse("pause x", 7, id, sizeof id), BQ_CONTROL_PAUSE);
    CHECK_STR(id, "x");
    CHECK_INT(bq_control_parse("pause ", 6, id, sizeof id), BQ_CONTROL_NONE);
    CHECK_INT(bq_control_parse("stop x", 6, id, sizeof id), BQ_CONTROL_NONE);
    CHECK_INT(bq_control_parse("cancel 0123456789abcdefg", 24, id, sizeof id), BQ_CONTROL_NONE);
    CHECK_INT(bq_control_parse("cancel a\0b", 10, id, sizeof id), BQ_CONTROL_NONE);
}

TEST(options_are_checked)
{
    struct bq_config cfg = {.url = NULL, .url_source = "test", .queue_name = (char *)"q",
                            .max_connections = 2, .connect_timeout = 2,
                            .command_timeout = 2, .pool_timeout = 2};
    struct bq_worker_options o = {&cfg, NULL, 0, NULL, 0, 0, 1.0, false, BQ_AT_LEAST_ONCE, 5.0, 5.0, 0, 0, 1};
    bq_worker *w;
    bq_err err;
    CHECK_INT(bq_worker_new(&o, &ops, NULL, &w, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "concurrency");
    o.concurrency = 1;
    o.block_timeout = 0;
    CHECK_INT(bq_worker_new(&o, &ops, NULL, &w, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "block_timeout");
    o.block_timeout = 1;
    o.lease = 0.1;
    CHECK_INT(bq_worker_new(&o, &ops, NULL, &w, &err), BQ_EINVAL);
    CHECK_CONTAINS(err.msg, "lease");
}

/* A worker's id is host:pid:<64 random bits>: two workers of one process (or of two
 * containers sharing a hostname, both pid 1) never share an in-flight list and a lease. */
TEST(worker_ids_carry_64_random_bits)
{
    struct bq_config cfg = {.url = NULL, .url_source = "test", .queue_name = (char *)"test:worker:id",
                            .max_connections = 2, .connect_timeout = 2, .command_timeout = 2,
                            .pool_timeout = 2};
    struct bq_worker_options o = {&cfg, NULL, 0, NULL, 1, 0, 1.0, false, BQ_AT_LEAST_ONCE, 5.0, 5.0, 0, 0, 1};
    bq_worker *a, *b;
    CHECK_INT(bq_worker_new(&o, &ops, NULL, &a, NULL), BQ_OK);
    CHECK_INT(bq_worker_new(&o, &ops, NULL, &b, NULL), BQ_OK);
    if (a == NULL || b == NULL)
        return;
    const char *ra = strrchr(bq_worker_id(a), ':'), *rb = strrchr(bq_worker_id(b), ':');
    CHECK(ra != NULL && rb != NULL);
    if (ra != NULL && rb != NULL) {
        CHECK_INT((int)strlen(ra + 1), 16);
        CHECK_INT((int)strspn(ra + 1, "0123456789abcdef"), 16);
        CHECK(strcmp(ra, rb) != 0);
    }
    bq_worker_free(a);
    bq_worker_free(b);
}

/* At-most-once, a hand-back that fails part way is retried with what it did not push: the
 * messages are pushed from the last, so lo's went back, then hi (not a list) refused; each
 * retry pushed lo's again (6 tries: queued 6 times). */
TEST(an_at_most_once_hand_back_retried_pushes_nothing_twice)
{
    const char *url = getenv("BQ_REDIS_URL");
    if (url == NULL || *url == '\0')
        SKIP("BQ_REDIS_URL is not set");
    char hi[64], lo[64];
    snprintf(hi, sizeof hi, "test:worker:hbhi:%d", (int)getpid());
    snprintf(lo, sizeof lo, "test:worker:hblo:%d", (int)getpid());
    const char *queues[] = {hi, lo};
    struct bq_config cfg = {.url = (char *)url, .url_source = "test", .queue_name = hi,
                            .max_connections = 2, .connect_timeout = 2, .command_timeout = 2,
                            .pool_timeout = 2};
    struct bq_worker_options o = {&cfg, queues, 2, NULL, 1, 0, 1.0, false, BQ_AT_MOST_ONCE, 5.0, 5.0, 0, 0, 1};
    bq_worker *w;
    bq_err err;
    CHECK_INT(bq_worker_new(&o, &ops, NULL, &w, &err), BQ_OK);
    if (w == NULL)
        return;
    bq_broker *b = bq_worker_broker(w);
    const char *set[] = {"SET", hi, "not a list"};
    void *rep = NULL;
    CHECK_INT(b->admin->command(b, hi, 3, set, NULL, &rep, &err), BQ_OK);
    freeReplyObject(rep);
    struct bq_msg msgs[5] = {{(char *)"h1", 2, 0, false, 0, 0}, {(char *)"h2", 2, 0, false, 0, 0},
                             {(char *)"l1", 2, 1, false, 0, 0}, {(char *)"l2", 2, 1, false, 0, 0},
                             {(char *)"l3", 2, 1, false, 0, 0}};
    bq_log_set_level("off"); /* its retries' errors are expected */
    CHECK(!bq_worker_handback(w, msgs, 5, "test"));
    bq_log_set_level("info");
    long long n = -1;
    CHECK_INT(b->admin->length(b, lo, BQ_LIST_READY, &n, &err), BQ_OK);
    CHECK_INT((int)n, 3);
    const char *del[] = {"DEL", hi, lo};
    if (b->admin->command(b, hi, 3, del, NULL, &rep, &err) == BQ_OK)
        freeReplyObject(rep);
    bq_worker_free(w);
}

/* Task events are written in place into the queue's pending buffer: an event that finds no
 * memory for it is left out whole (what was pending before stays as it was, valid JSON), and
 * the next one goes in escaped, with the worker's id; a handled task adds its completion. */
TEST(task_events_are_built_in_place_and_one_without_memory_is_left_out)
{
    reset();
    const char *q = "test:worker:events";
    struct bq_config cfg = {.url = NULL, .url_source = "test", .queue_name = (char *)q,
                            .max_connections = 4, .connect_timeout = 2, .command_timeout = 2,
                            .pool_timeout = 2, .events_max = 100};
    struct bq_worker_options o = {&cfg, NULL, 0, NULL, 1, 2, 1.0, true, BQ_AT_LEAST_ONCE, 5.0, 5.0, 0, 0, 1};
    bq_worker *w;
    bq_err err;
    CHECK_INT(bq_worker_new(&o, &ops, NULL, &w, &err), BQ_OK);
    if (w == NULL)
        return;
    /* No thread of the worker runs yet: only these calls allocate. */
    bq_worker_feed_started(w, q, "first", 5, 1);
    bq_alloc_fail_after(0);
    bq_worker_feed_started(w, q, "lost", 4, 1);
    bq_alloc_fail_after(-1);
    bq_worker_feed_started(w, q, "a\"b", 3, 2);
    struct bq_msg m = {(char *)"x", 1, 0, false, 0, 0};
    struct bq_outcome retry = {.kind = BQ_OUTCOME_RETRY, .task_id = "r", .attempt = 3, .delay = 1.5,
                               .json = (char *)"{\"code\":\"EX\"}"};
    /* One too long for the buffer's room, without memory to grow it: left out whole. */
    char big[4096];
    memset(big, 'x', sizeof big);
    static const char head[] = "{\"code\":\"EBIG\",\"message\":\"";
    memcpy(big, head, sizeof head - 1);
    memcpy(big + sizeof big - 3, "\"}", 3);
    struct bq_outcome dead = {.kind = BQ_OUTCOME_DEAD, .task_id = "big", .attempt = 1, .json = big};
    bq_alloc_fail_after(0);
    bq_worker_feed_outcome(w, &m, &dead);
    bq_alloc_fail_after(-1);
    bq_worker_feed_outcome(w, &m, &retry);
    bq_broker *b = bq_worker_broker(w);
    CHECK_INT(bq_worker_start(w, true, &err), BQ_OK);
    for (;;) {
        struct bq_event ev;
        bq_worker_next_event(w, 30, -1, &ev);
        enum bq_event_kind k = ev.kind;
        bq_event_clear(&ev);
        if (k == BQ_EVENT_STOPPED || k == BQ_EVENT_NONE)
            break;
    }
    struct bq_feed_reader *rd = NULL;
    struct bq_feed_out out = {NULL, 0, 0};
    CHECK_INT(b->ops->feed_read(b, &rd, q, "0-0", 100, 0, &out, NULL), BQ_OK);
    bq_buf all = BQ_BUF_INIT;
    for (size_t i = 0; i < out.n; i++)
        bq_buf_append(&all, out.e[i].json, out.e[i].len);
    const char *text = bq_buf_cstr(&all);
    char worker[160];
    snprintf(worker, sizeof worker, ",\"worker\":\"%s\"}", bq_worker_id(w));
    CHECK_CONTAINS(text, "[{\"event\":\"started\",\"task_id\":\"first\",\"state\":\"working\",\"at\":");
    CHECK_CONTAINS(text, "},{\"event\":\"started\",\"task_id\":\"a\\\"b\",\"state\":\"working\",\"at\":");
    CHECK_CONTAINS(text, "\"attempt\":2");
    CHECK_CONTAINS(text, "{\"event\":\"retried\",\"task_id\":\"r\",\"at\":");
    CHECK_CONTAINS(text, ",\"attempt\":3,\"worker\":");
    CHECK_CONTAINS(text, "\",\"delay\":1.500,\"error\":{\"code\":\"EX\"}}]");
    CHECK_CONTAINS(text, worker);
    CHECK(strstr(text, "lost") == NULL);
    CHECK(strstr(text, "EBIG") == NULL);
    int events = 0;
    for (const char *p = text; (p = strstr(p, "{\"event\":")) != NULL; p++)
        events++;
    CHECK_INT(events, 3);
    bq_buf_free(&all);
    bq_feed_out_free(&out);
    if (rd != NULL)
        b->ops->feed_close(b, rd);
    bq_worker_free(w);
}

int main(void)
{
    bq_log_set_level("off");
    RUN(memory_drain_handles_each_message_once);
    RUN(redis_drain_handles_each_message_once);
    RUN(slots_holding_several_tasks_handle_each_message_once);
    RUN(chunks_are_prepared_and_each_message_handled_once);
    RUN(a_stop_hands_back_a_chunk_but_what_prepare_settled);
    RUN(stop_interrupts_a_blocked_fetch);
    RUN(a_failing_slot_init_fails_the_start);
    RUN(options_are_checked);
    RUN(control_reaches_the_running_slot);
    RUN(control_for_a_task_ahead_is_kept_until_it_runs);
    RUN(control_before_the_task_is_named_is_kept_for_it);
    RUN(control_messages_parse);
    RUN(task_events_are_built_in_place_and_one_without_memory_is_left_out);
    RUN(an_at_most_once_hand_back_retried_pushes_nothing_twice);
    RUN(worker_ids_carry_64_random_bits);
    return check_report("test_worker");
}
