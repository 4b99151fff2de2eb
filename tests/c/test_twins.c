/*
 * test_twins.c -- the in-memory broker's twin of each Redis script, held to the script.
 *
 * Every multi-step change of the Redis broker is a server-side script (lua/binduq/redis/);
 * the in-memory broker (src/broker/mem.c) does the same in C. Each row of `twins` below names
 * a script and a scenario that drives the broker operations using it. The scenario runs on
 * both brokers and writes what it observes -- results, counts, the lists' contents -- to a
 * transcript; the two transcripts must be equal byte for byte. A script without a row fails
 * the test, so a new script cannot land without its twin being checked.
 *
 * Needs BQ_REDIS_URL (tests/run starts a redis-server); without it every test here skips.
 */
#include "check.h"

#include "../../src/broker/admin.h"
#include "../../src/broker/broker.h"
#include "../../src/core/clock.h"
#include "../../src/core/log.h"

#include <dirent.h>
#include <pthread.h>
#include <stdarg.h>
#include <unistd.h>

static const char *redis_url;
static char prefix[64];

/* ---- Transcripts ---------------------------------------------------------------------------- */

struct tr {
    char buf[16384];
    size_t len;
};

static void say(struct tr *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->buf + t->len, sizeof t->buf - t->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        t->len += (size_t)n < sizeof t->buf - t->len ? (size_t)n : sizeof t->buf - t->len - 1;
}

/* A message's bytes as text, with its newline shown. */
static void say_msg(struct tr *t, const struct bq_msg *m)
{
    say(t, " [");
    for (size_t i = 0; i < m->len && i < 80; i++)
        say(t, m->data[i] == '\n' ? "\\n" : "%c", m->data[i]);
    say(t, "]%s", m->sealed ? "s" : "");
}

static void say_batch(struct tr *t, const char *what, const struct bq_batch *b)
{
    say(t, "%s %zu:", what, b->n);
    for (size_t i = 0; i < b->n; i++) {
        if (b->msgs[i].q != 0)
            say(t, " q%d", b->msgs[i].q);
        say_msg(t, &b->msgs[i]);
    }
    say(t, "\n");
}

/* Everything a queue holds: the ready list (newest first), the dead-letter list, the counts
 * of delayed and in-flight messages. */
static void say_queue(struct tr *t, bq_broker *b, const char *q)
{
    struct bq_batch ready = {NULL, 0, 0}, dead = {NULL, 0, 0};
    long long delayed = -1, inflight = -1;
    b->admin->range(b, q, BQ_LIST_READY, 0, -1, &ready, NULL);
    b->admin->range(b, q, BQ_LIST_DEAD, 0, -1, &dead, NULL);
    b->admin->length(b, q, BQ_LIST_DELAYED, &delayed, NULL);
    b->admin->length(b, q, BQ_LIST_INFLIGHT, &inflight, NULL);
    say_batch(t, "  ready", &ready);
    say_batch(t, "  dead", &dead);
    say(t, "  delayed %lld inflight %lld\n", delayed, inflight);
    bq_batch_free(&ready);
    bq_batch_free(&dead);
}

static void push(bq_broker *b, const char *q, const char *text)
{
    struct bq_slice m = {text, strlen(text)};
    size_t pushed = 0;
    b->ops->push(b, q, &m, 1, &pushed, NULL);
}

static bq_status fetch(bq_broker *b, const struct bq_lessee *who, size_t max,
                       const struct bq_msg *acks, size_t nacks, struct tr *t,
                       struct bq_batch *out)
{
    /* Each fetch renews the lease (as the worker's do), which registers the worker: Redis
     * counts in-flight messages of registered workers only. */
    struct bq_fetch_req req = {max, 0, acks, nacks, true,
                               who->delivery == BQ_AT_LEAST_ONCE ? 30 : 0, false, NULL, NULL, 0};
    struct bq_fetch_res res;
    memset(&res, 0, sizeof res);
    bq_status st = b->ops->fetch(b, who, &req, &res, out, NULL);
    say(t, "fetch %s acked %zu promoted %zu\n", bq_status_name(st), res.acked, res.promoted);
    bq_batch_free(&res.dead);
    return st;
}

/* A lessee of one queue. */
#define WHO(name, q, worker, delivery)                                                         \
    const char *name##_q[] = {q};                                                              \
    struct bq_lessee name = {name##_q, 1, NULL, worker, delivery, 0, 0}

/* ---- Scenarios: one per script -------------------------------------------------------------- */

/* enqueue-N: a push per key, each key taken for ttl; a repeated key is not pushed. */
static void push_unique(bq_broker *b, const char *q, struct tr *t)
{
    struct bq_slice msgs[] = {{"a1", 2}, {"b1", 2}, {"a2", 2}};
    const char *keys[] = {"run:a", "run:b", "run:a"};
    bool pushed[3] = {false, false, false};
    bq_status st = b->ops->push_unique(b, q, msgs, keys, 3, 60, pushed, NULL);
    say(t, "push_unique %s %d%d%d\n", bq_status_name(st), pushed[0], pushed[1], pushed[2]);
    st = b->ops->push_unique(b, q, &msgs[1], &keys[1], 1, 60, pushed, NULL);
    say(t, "again %s %d\n", bq_status_name(st), pushed[0]);
    say_queue(t, b, q);
}

/* dedup-N: a batch of 64 or more is pushed natively in a MULTI, and dedup-N takes back the
 * duplicates' copies (of an earlier batch, and within the batch); the earlier contents stay. */
static void push_unique_many(bq_broker *b, const char *q, struct tr *t)
{
    push(b, q, "before");
    enum { N = 70 };
    char text[N][16], key[N][24];
    struct bq_slice msgs[N];
    const char *keys[N];
    bool pushed[N];
    for (int i = 0; i < N; i++) {
        snprintf(text[i], sizeof text[i], "u%d", i);
        snprintf(key[i], sizeof key[i], "run:%d", i % 10 == 9 ? i - 4 : i);
        msgs[i] = (struct bq_slice){text[i], strlen(text[i])};
        keys[i] = key[i];
    }
    struct bq_slice first = {"early", 5};
    const char *first_key = "run:33";
    bq_status st = b->ops->push_unique(b, q, &first, &first_key, 1, 60, pushed, NULL);
    say(t, "one %s %d\n", bq_status_name(st), pushed[0]);
    st = b->ops->push_unique(b, q, msgs, keys, N, 60, pushed, NULL);
    say(t, "many %s ", bq_status_name(st));
    for (int i = 0; i < N; i++)
        say(t, "%d", pushed[i]);
    say(t, "\n");
    say_queue(t, b, q);
}

/* delay-N: operations queued for later wait in the delayed set (a duplicate key or the same
 * bytes again queue nothing); one already due is pushed at once; promotion moves them when
 * due. */
static void push_delayed(bq_broker *b, const char *q, struct tr *t)
{
    double past = bq_now_wall() - 60;
    struct bq_delayed ops[] = {
        {{"now", 3}, NULL, 0, 0},         /* due now: pushed */
        {{"later", 5}, "run:l", 30, 0},   /* waits 30 s */
        {{"again", 5}, "run:l", 40, 0},   /* its key is taken: a duplicate */
        {{"later", 5}, NULL, 50, 0},      /* the same bytes wait: a duplicate */
        {{"soon", 4}, NULL, 20, 0},       /* waits 20 s: the earliest */
        {{"past", 4}, "run:p", 0, past},  /* a time already past: pushed */
    };
    bool pushed[6] = {false, false, false, false, false, false};
    bq_status st = b->ops->push_delayed(b, q, ops, 6, 60, pushed, NULL);
    say(t, "push_delayed %s %d%d%d%d%d%d\n", bq_status_name(st), pushed[0], pushed[1], pushed[2],
        pushed[3], pushed[4], pushed[5]);
    say_queue(t, b, q);
    size_t moved = 0;
    double due = 0;
    st = b->ops->promote(b, q, &moved, &due, NULL);
    say(t, "promote %s moved %zu next due in %.0f s\n", bq_status_name(st), moved, due);
    struct bq_delayed dup = {{"other", 5}, "run:p", 5, 0};
    st = b->ops->push_delayed(b, q, &dup, 1, 60, pushed, NULL);
    say(t, "key of a pushed one %s %d\n", bq_status_name(st), pushed[0]);
    say_queue(t, b, q);
}

/* fetch-2: a batch taken at once, leased (at-least-once) or popped (at-most-once), stopped
 * at the byte budget. */
static void fetch_batch(bq_broker *b, const char *q, struct tr *t)
{
    for (int i = 0; i < 6; i++) {
        char m[32];
        snprintf(m, sizeof m, "m%d-xxxxxxxx", i);
        push(b, q, m);
    }
    WHO(alo, q, "w-alo", BQ_AT_LEAST_ONCE);
    alo.max_bytes = 25; /* two messages of 11 bytes, then a third passes it */
    struct bq_batch got = {NULL, 0, 0};
    fetch(b, &alo, 5, NULL, 0, t, &got);
    say_batch(t, "leased", &got);
    say_queue(t, b, q);
    WHO(amo, q, "w-amo", BQ_AT_MOST_ONCE);
    struct bq_batch popped = {NULL, 0, 0};
    fetch(b, &amo, 2, NULL, 0, t, &popped);
    say_batch(t, "popped", &popped);
    /* the leased ones acknowledged with the next fetch */
    fetch(b, &alo, 0, got.msgs, got.n, t, &popped);
    say_queue(t, b, q);
    bq_batch_free(&got);
    bq_batch_free(&popped);
}

/* fetchm-N: several queues at once, in priority order, each message tagged with its queue. */
static void fetch_many(bq_broker *b, const char *q, struct tr *t)
{
    char q2[128];
    snprintf(q2, sizeof q2, "%s:low", q);
    push(b, q2, "low0");
    push(b, q2, "low1");
    push(b, q, "high0");
    const char *qs[] = {q, q2};
    struct bq_lessee who = {qs, 2, NULL, "w-m", BQ_AT_LEAST_ONCE, 0, 0};
    struct bq_batch got = {NULL, 0, 0};
    fetch(b, &who, 2, NULL, 0, t, &got);
    say_batch(t, "strict", &got);
    fetch(b, &who, 0, got.msgs, got.n, t, &got);
    int weights[] = {1, 3};
    who.weights = weights;
    push(b, q, "high1");
    push(b, q, "high2");
    struct bq_batch wgot = {NULL, 0, 0};
    fetch(b, &who, 3, NULL, 0, t, &wgot);
    say_batch(t, "weighted", &wgot);
    fetch(b, &who, 0, wgot.msgs, wgot.n, t, &wgot);
    say_queue(t, b, q);
    say_queue(t, b, q2);
    bq_batch_free(&got);
    bq_batch_free(&wgot);
}

/* retry-3 and promote-2: a retry releases the lease into the delayed set; promotion moves
 * it back when due; a retry of a lost lease schedules nothing. */
static void retry_promote(bq_broker *b, const char *q, struct tr *t)
{
    push(b, q, "r0");
    push(b, q, "r1");
    WHO(who, q, "w-r", BQ_AT_LEAST_ONCE);
    struct bq_batch got = {NULL, 0, 0};
    fetch(b, &who, 2, NULL, 0, t, &got);
    if (got.n != 2)
        goto out;
    static const char n0[] = "#bq {\"attempt\":2,\"id\":\"r0\"}\nr0";
    static const char n1[] = "#bq {\"attempt\":2,\"id\":\"r1\"}\nr1";
    bool held = false;
    bq_status st = b->ops->retry(b, &who, &got.msgs[0], (struct bq_slice){n0, sizeof n0 - 1},
                                 0, &held, NULL);
    say(t, "retry now %s held %d\n", bq_status_name(st), held);
    st = b->ops->retry(b, &who, &got.msgs[1], (struct bq_slice){n1, sizeof n1 - 1}, 30, &held,
                       NULL);
    say(t, "retry later %s held %d\n", bq_status_name(st), held);
    st = b->ops->retry(b, &who, &got.msgs[1], (struct bq_slice){n1, sizeof n1 - 1}, 0, &held,
                       NULL);
    say(t, "retry again %s held %d\n", bq_status_name(st), held);
    size_t moved = 0;
    double due = 0;
    st = b->ops->promote(b, q, &moved, &due, NULL);
    say(t, "promote %s moved %zu next due in %.0f s\n", bq_status_name(st), moved, due);
    say_queue(t, b, q);
    struct bq_batch back = {NULL, 0, 0};
    fetch(b, &who, 1, NULL, 0, t, &back);
    say_batch(t, "retried", &back);
    fetch(b, &who, 0, back.msgs, back.n, t, &back);
    bq_batch_free(&back);
out:
    bq_batch_free(&got);
}

/* bury-3 and requeue-3: a dead letter, requeued once at the back of the line as a fresh first
 * attempt; removed; purged. */
static void bury_requeue(bq_broker *b, const char *q, struct tr *t)
{
    push(b, q, "d0");
    push(b, q, "d1");
    push(b, q, "keep");
    WHO(who, q, "w-d", BQ_AT_LEAST_ONCE);
    struct bq_batch got = {NULL, 0, 0};
    fetch(b, &who, 2, NULL, 0, t, &got);
    if (got.n != 2)
        goto out;
    struct bq_slice e0 = {"{\"reason\":\"r0\"}\nd0", 18};
    struct bq_slice e1 = {"{\"reason\":\"r1\"}\nd1", 18};
    bool held = false;
    bq_status st = b->ops->bury(b, &who, &got.msgs[0], e0, &held, NULL);
    say(t, "bury %s held %d\n", bq_status_name(st), held);
    st = b->ops->bury(b, &who, &got.msgs[0], e0, &held, NULL);
    say(t, "bury again %s held %d\n", bq_status_name(st), held);
    st = b->ops->bury(b, &who, &got.msgs[1], e1, &held, NULL);
    say_queue(t, b, q);
    bool done = false;
    st = b->admin->dlq_requeue(b, q, e0, &done, NULL);
    say(t, "requeue %s done %d\n", bq_status_name(st), done);
    st = b->admin->dlq_requeue(b, q, e0, &done, NULL);
    say(t, "requeue again %s done %d\n", bq_status_name(st), done);
    say_queue(t, b, q);
    st = b->admin->dlq_remove(b, q, e1, &done, NULL);
    say(t, "remove %s done %d\n", bq_status_name(st), done);
    b->ops->bury(b, &who, &got.msgs[1], e1, &held, NULL); /* the lease is gone: nothing */
    long long purged = -1;
    st = b->admin->dlq_purge(b, q, &purged, NULL);
    say(t, "purge %s %lld\n", bq_status_name(st), purged);
    say_queue(t, b, q);
out:
    bq_batch_free(&got);
}

/* burybig-3: a message over the fetch's max_size arrives as its first bytes with its true
 * length, and is dead-lettered without ever being read whole. */
static void bury_big(bq_broker *b, const char *q, struct tr *t)
{
    char big[600];
    memset(big, 'b', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    push(b, q, big);
    push(b, q, "small");
    WHO(who, q, "w-big", BQ_AT_LEAST_ONCE);
    who.max_size = 300;
    struct bq_batch got = {NULL, 0, 0};
    fetch(b, &who, 2, NULL, 0, t, &got);
    /* Redis hands an oversized message as its first bytes with `oversize` set; the memory
     * broker, which holds it already, hands it whole. The worker treats both alike (the size
     * is oversize, or else len: worker.c's set_aside_large), and so does this transcript. */
    for (size_t i = 0; i < got.n; i++) {
        size_t size = got.msgs[i].oversize > 0 ? got.msgs[i].oversize : got.msgs[i].len;
        say(t, "got %zu: %zu bytes%s, starts %.5s\n", i, size, size > 300 ? " (too large)" : "",
            got.msgs[i].data);
    }
    size_t big_size = got.n == 2 ? (got.msgs[0].oversize > 0 ? got.msgs[0].oversize : got.msgs[0].len) : 0;
    if (big_size > 300) {
        struct bq_slice e = {"{\"reason\":\"too large\"}\n", 23};
        bool held = false;
        bq_status st = b->ops->bury(b, &who, &got.msgs[0], e, &held, NULL);
        say(t, "bury big %s held %d\n", bq_status_name(st), held);
        struct bq_batch none = {NULL, 0, 0};
        fetch(b, &who, 0, &got.msgs[1], 1, t, &none);
        bq_batch_free(&none);
    }
    long long dead = -1, inflight = -1;
    b->admin->length(b, q, BQ_LIST_DEAD, &dead, NULL);
    b->admin->length(b, q, BQ_LIST_INFLIGHT, &inflight, NULL);
    say(t, "dead %lld inflight %lld\n", dead, inflight);
    bq_batch_free(&got);
}

/* handback-2: leased messages go back to the front of the queue at once. */
static void handback(bq_broker *b, const char *q, struct tr *t)
{
    push(b, q, "h0");
    push(b, q, "h1");
    push(b, q, "h2");
    WHO(who, q, "w-h", BQ_AT_LEAST_ONCE);
    struct bq_batch got = {NULL, 0, 0};
    fetch(b, &who, 2, NULL, 0, t, &got);
    size_t count = 0;
    bq_status st = b->ops->handback(b, &who, got.msgs, got.n, &count, NULL);
    say(t, "handback %s %zu\n", bq_status_name(st), count);
    st = b->ops->handback(b, &who, got.msgs, got.n, &count, NULL);
    say(t, "handback again %s %zu\n", bq_status_name(st), count);
    say_queue(t, b, q);
    struct bq_batch again = {NULL, 0, 0};
    fetch(b, &who, 3, NULL, 0, t, &again);
    say_batch(t, "taken", &again);
    fetch(b, &who, 0, again.msgs, again.n, t, &again);
    bq_batch_free(&got);
    bq_batch_free(&again);
}

/* heartbeat-N, reap-4, unregister-2: a worker whose lease ran out is found by another's
 * heartbeat, and its messages go back with the attempt they used up; a worker that leaves
 * with nothing in flight leaves no record. */
static void lease_reap(bq_broker *b, const char *q, struct tr *t)
{
    push(b, q, "l0");
    push(b, q, "#bq {\"attempt\":3}\nl1");
    WHO(dead, q, "w-dead", BQ_AT_LEAST_ONCE);
    WHO(live, q, "w-live", BQ_AT_LEAST_ONCE);
    WHO(gone, q, "w-gone", BQ_AT_LEAST_ONCE);
    struct bq_batch ids = {NULL, 0, 0};
    b->ops->heartbeat(b, &dead, 0.2, &ids, NULL);
    b->ops->heartbeat(b, &gone, 0.2, &ids, NULL);
    bq_status st = b->ops->unregister(b, &gone, NULL);
    say(t, "unregister %s\n", bq_status_name(st));
    struct bq_batch got = {NULL, 0, 0};
    struct bq_fetch_req req = {2, 0, NULL, 0, false, 0, false, NULL, NULL, 0}; /* no renewal: its lease runs out */
    struct bq_fetch_res res;
    memset(&res, 0, sizeof res);
    st = b->ops->fetch(b, &dead, &req, &res, &got, NULL);
    say(t, "fetch %s took %zu\n", bq_status_name(st), got.n);
    bq_batch_free(&res.dead);
    long long recovered = 0;
    st = b->ops->reap(b, q, "w-dead", &recovered, NULL);
    say(t, "reap early %s %lld\n", bq_status_name(st), recovered);
    usleep(400000);
    bq_batch_clear(&ids);
    st = b->ops->heartbeat(b, &live, 30, &ids, NULL);
    say_batch(t, "dead workers", &ids);
    st = b->ops->reap(b, q, "w-dead", &recovered, NULL);
    say(t, "reap %s %lld\n", bq_status_name(st), recovered);
    say_queue(t, b, q);
    struct bq_batch back = {NULL, 0, 0};
    fetch(b, &live, 2, NULL, 0, t, &back);
    fetch(b, &live, 0, back.msgs, back.n, t, &back);
    st = b->ops->unregister(b, &live, NULL);
    say(t, "unregister %s\n", bq_status_name(st));
    bq_batch_free(&ids);
    bq_batch_free(&got);
    bq_batch_free(&back);
}

/* ratelimit-N: at most `limit` a period per key, in order, in one step. */
static void rate_limit(bq_broker *b, const char *q, struct tr *t)
{
    WHO(who, q, "w-rl", BQ_AT_LEAST_ONCE);
    struct bq_msg m = {(char *)"x", 1, 0, false, 0, 0};
    struct bq_admission reqs[4] = {{&m, "k", -1, 0}, {&m, "k", -1, 0}, {&m, "other", -1, 0},
                                   {&m, "k", -1, 0}};
    bq_status st = b->ops->rate_limit(b, &who, 2, 10, reqs, 4, NULL);
    say(t, "rate_limit %s", bq_status_name(st));
    for (int i = 0; i < 4; i++)
        say(t, " %d/%s", reqs[i].verdict,
            reqs[i].verdict == 1 ? "now" : reqs[i].value > 9 && reqs[i].value <= 10 ? "~10s" : "?");
    say(t, "\n");
}

/* checkseal-1 (and ack-2): a "#bq" header binduq wrote is sealed, a copy pushed by anyone is
 * not; acknowledging a sealed message releases it. */
static void seals(bq_broker *b, const char *q, struct tr *t)
{
    push(b, q, "#bq {\"attempt\":2,\"id\":\"forged\"}\nf");
    push(b, q, "s0");
    WHO(who, q, "w-s", BQ_AT_LEAST_ONCE);
    struct bq_batch got = {NULL, 0, 0};
    fetch(b, &who, 2, NULL, 0, t, &got);
    say_batch(t, "first", &got);
    if (got.n != 2)
        goto out;
    static const char next[] = "#bq {\"attempt\":2,\"id\":\"s0\"}\ns0";
    bool held = false;
    b->ops->retry(b, &who, &got.msgs[1], (struct bq_slice){next, sizeof next - 1}, 0, &held,
                  NULL);
    struct bq_batch again = {NULL, 0, 0};
    fetch(b, &who, 1, &got.msgs[0], 1, t, &again);
    say_batch(t, "retried", &again);
    size_t acked = 0;
    bq_status st = b->ops->ack(b, &who, again.msgs, again.n, &acked, NULL);
    say(t, "ack %s %zu\n", bq_status_name(st), acked);
    st = b->ops->ack(b, &who, again.msgs, again.n, &acked, NULL);
    say(t, "ack again %s %zu\n", bq_status_name(st), acked);
    say_queue(t, b, q);
    bq_batch_free(&again);
out:
    bq_batch_free(&got);
}

static const struct twin {
    const char *scripts; /* the scripts the scenario drives, space-separated */
    const char *name;
    void (*run)(bq_broker *b, const char *q, struct tr *t);
} twins[] = {
    {"enqueue-N", "push_unique", push_unique},
    {"dedup-N", "push_unique_many", push_unique_many},
    {"delay-N", "push_delayed", push_delayed},
    {"fetch-2", "fetch_batch", fetch_batch},
    {"fetchm-N", "fetch_many", fetch_many},
    {"retry-3 promote-2", "retry_promote", retry_promote},
    {"bury-3 requeue-3", "bury_requeue", bury_requeue},
    {"burybig-3", "bury_big", bury_big},
    {"handback-2", "handback", handback},
    /* heartbeat-N, reap-4 and unregister-2 have no twin: in one process the memory broker's
     * leases need no heartbeat (a process that dies takes its memory with it), so nothing is
     * ever reaped. The scenario runs on Redis alone, to hold its transcript. */
    {"heartbeat-N reap-4 unregister-2", "lease_reap", NULL},
    {"ratelimit-N", "rate_limit", rate_limit},
    {"checkseal-1 ack-2", "seals", seals},
    /* controls-3 has no twin: the memory broker's producers reach running tasks through its
     * control channel, so it offers no scan (bq_broker_ops.controls is NULL there). */
    {"controls-3", "controls", NULL},
    /* cron-4 has no twin: the memory broker's schedules fire in its one process, which keeps
     * their claims itself (lua/binduq/recurring.lua; bq_broker_ops.cron is NULL there). The
     * scenario is tests/integration/recurring_spec.lua's, on Redis. */
    {"cron-4", "cron", NULL},
    /* report-N has no twin: a worker's description and its counts per minute are for the
     * dashboard, which reads Redis (bq_broker_ops.report is NULL on the memory broker). The
     * scenario is tests/integration/dashboard_spec.lua's, on Redis. */
    {"report-N", "report", NULL},
};

static bq_broker *open_redis(void)
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

TEST(every_script_has_a_row)
{
    DIR *d = opendir("lua/binduq/redis");
    REQUIRE(d != NULL);
    int scripts = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".lua") != 0)
            continue;
        scripts++;
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(n - 4), e->d_name);
        bool found = false;
        for (size_t i = 0; i < sizeof twins / sizeof twins[0] && !found; i++) {
            const char *s = twins[i].scripts;
            for (const char *p = strstr(s, name); p != NULL && !found; p = strstr(p + 1, name))
                found = (p == s || p[-1] == ' ') && (p[strlen(name)] == ' ' || p[strlen(name)] == '\0');
        }
        if (!found)
            printf("  lua/binduq/redis/%s: no scenario in test_twins.c\n", e->d_name);
        CHECK(found);
    }
    closedir(d);
    CHECK(scripts >= 16);
}

TEST(the_memory_broker_does_what_each_script_does)
{
    if (redis_url == NULL)
        SKIP("BQ_REDIS_URL is not set");
    bq_broker *mem = NULL, *red = open_redis();
    REQUIRE(bq_broker_open_memory(&mem, NULL) == BQ_OK);
    if (red == NULL) {
        bq_broker_free(mem);
        CHECK(red != NULL);
        return;
    }
    CHECK(mem->ops->controls == NULL);
    for (size_t i = 0; i < sizeof twins / sizeof twins[0]; i++) {
        if (twins[i].run == NULL)
            continue;
        static struct tr tm, tr;
        memset(&tm, 0, sizeof tm);
        memset(&tr, 0, sizeof tr);
        char q[128];
        snprintf(q, sizeof q, "%s:%s", prefix, twins[i].name);
        twins[i].run(mem, q, &tm);
        twins[i].run(red, q, &tr);
        if (strcmp(tm.buf, tr.buf) != 0) {
            printf("  %s (%s): the brokers differ\n--- memory\n%s--- redis\n%s", twins[i].name,
                   twins[i].scripts, tm.buf, tr.buf);
            CHECK(false);
        }
        CHECK(tm.len > 30); /* the scenario ran and said something */
    }
    bq_broker_free(red);
    bq_broker_free(mem);
}

/* The admin operations (admin.h) as an operator sees a queue, on either broker. */
static void count_progress(void *ud, long long done, long long left)
{
    say(ud, "  progress %lld done %lld left\n", done, left);
}

static void admin_view(bq_broker *b, const char *q, struct tr *t)
{
    for (int i = 0; i < 5; i++) {
        char m[16];
        snprintf(m, sizeof m, "op%d", i);
        push(b, q, m);
    }
    struct bq_batch peek = {NULL, 0, 0};
    bq_status st = bq_admin_peek(b, q, 3, &peek, NULL);
    say(t, "peek %s", bq_status_name(st));
    say_batch(t, "", &peek);
    WHO(who, q, "w-admin", BQ_AT_LEAST_ONCE);
    struct bq_batch got = {NULL, 0, 0};
    fetch(b, &who, 1, NULL, 0, t, &got);
    struct bq_queue_stats s;
    st = bq_admin_stats(b, q, false, &s, NULL);
    say(t, "stats %s ready %lld delayed %lld inflight %lld dead %lld seen %d\n", bq_status_name(st),
        s.ready, s.delayed, s.inflight, s.dead, s.seen);
    bq_queue_stats_free(&s);
    long long removed = 0;
    st = bq_admin_purge_ready(b, q, 3, &removed, count_progress, t, NULL);
    say(t, "purge %s %lld\n", bq_status_name(st), removed);
    fetch(b, &who, 0, got.msgs, got.n, t, &got);
    st = bq_admin_stats(b, q, false, &s, NULL);
    /* (not `seen`: Redis keeps the worker's record, the memory broker keeps none) */
    say(t, "stats %s ready %lld inflight %lld\n", bq_status_name(st), s.ready, s.inflight);
    bq_queue_stats_free(&s);
    bq_batch_free(&peek);
    bq_batch_free(&got);
}

TEST(the_admin_operations_answer_alike_on_both_brokers)
{
    if (redis_url == NULL)
        SKIP("BQ_REDIS_URL is not set");
    bq_broker *mem = NULL, *red = open_redis();
    REQUIRE(bq_broker_open_memory(&mem, NULL) == BQ_OK);
    if (red == NULL) {
        bq_broker_free(mem);
        CHECK(red != NULL);
        return;
    }
    static struct tr tm, tr;
    char q[128];
    snprintf(q, sizeof q, "%s:admin", prefix);
    admin_view(mem, q, &tm);
    admin_view(red, q, &tr);
    CHECK_STR(tm.buf, tr.buf);
    CHECK_CONTAINS(tr.buf, "peek OK 3: [op0] [op1] [op2]");
    CHECK_CONTAINS(tr.buf, "stats OK ready 4 delayed 0 inflight 1 dead 0 seen 1");
    CHECK_CONTAINS(tr.buf, "purge OK 4");
    /* Redis only: the worker records, byte for byte, and the queues that have keys. */
    char hostile[] = "w\0\x1b[2J";
    const char *qs[] = {q};
    struct bq_lessee who = {qs, 1, NULL, hostile, BQ_AT_LEAST_ONCE, 0, 0};
    struct bq_batch dead = {NULL, 0, 0};
    push(red, q, "held");
    red->ops->heartbeat(red, &who, 30, &dead, NULL);
    struct bq_batch got = {NULL, 0, 0};
    struct bq_fetch_req req = {1, 0, NULL, 0, false, 30, false, NULL, NULL, 0};
    struct bq_fetch_res res;
    memset(&res, 0, sizeof res);
    CHECK_INT(red->ops->fetch(red, &who, &req, &res, &got, NULL), BQ_OK);
    struct bq_queue_stats s;
    REQUIRE(bq_admin_stats(red, q, true, &s, NULL) == BQ_OK);
    bool found = false;
    for (size_t i = 0; i < s.nworkers; i++) {
        if (s.workers[i].id_len == 1 && s.workers[i].id[0] == 'w') { /* the id ends at its NUL */
            found = true;
            CHECK(s.workers[i].lease_left > 25 && s.workers[i].lease_left <= 30);
            CHECK_INT(s.workers[i].inflight, 1);
            CHECK(s.workers[i].first != NULL && strcmp(s.workers[i].first, "held") == 0);
        }
    }
    CHECK(found);
    CHECK_INT(s.live, 2); /* w-admin and this one */
    bq_queue_stats_free(&s);
    struct bq_batch names = {NULL, 0, 0};
    bool partial = true;
    CHECK_INT(bq_admin_queues(red, q, 100000, &names, &partial, NULL), BQ_OK);
    bool listed = false;
    for (size_t i = 0; i < names.n; i++)
        listed = listed || strcmp(names.msgs[i].data, q) == 0;
    CHECK(listed);
    CHECK(!partial);
    CHECK_INT(bq_admin_queues(mem, q, 100, &names, &partial, NULL), BQ_EUNSUPPORTED);
    bq_batch_free(&names);
    bq_batch_free(&got);
    bq_batch_free(&res.dead);
    bq_batch_free(&dead);
    bq_broker_free(red);
    bq_broker_free(mem);
}

/* The scenario of the scripts without a twin, on Redis: its transcript, as it must read. */
TEST(leases_are_reaped_on_redis)
{
    if (redis_url == NULL)
        SKIP("BQ_REDIS_URL is not set");
    bq_broker *red = open_redis();
    REQUIRE(red != NULL);
    static struct tr t;
    char q[128];
    snprintf(q, sizeof q, "%s:lease_reap", prefix);
    lease_reap(red, q, &t);
    CHECK_STR(t.buf, "unregister OK\n"
                     "fetch OK took 2\n"
                     "reap early OK -1\n"
                     "dead workers 1: [w-dead]\n"
                     "reap OK 2\n"
                     "  ready 2: [#bq {\"attempt\":2,\"redelivered\":1}\\n#bq {\"attempt\":3}\\nl1]"
                     " [#bq {\"attempt\":2,\"redelivered\":1}\\nl0]\n"
                     "  dead 0:\n"
                     "  delayed 0 inflight 0\n"
                     "fetch OK acked 0 promoted 0\n"
                     "fetch OK acked 2 promoted 0\n"
                     "unregister OK\n");
    bq_broker_free(red);
}

/* ---- Task events: each queue's stream {Q}:events, on either broker -------------------------- */

static void say_feed(struct tr *t, const char *what, bq_status st, const struct bq_feed_out *o)
{
    say(t, "%s %s %zu:", what, bq_status_name(st), o->n);
    for (size_t i = 0; i < o->n; i++) {
        say(t, " %s", o->e[i].json);
        if (i > 0 && bq_feed_id_cmp(o->e[i].id, o->e[i - 1].id) <= 0)
            say(t, " (id not after the one before)");
    }
    say(t, "\n");
}

struct late_add {
    bq_broker *b;
    const char *q;
};

static void *add_later(void *ud)
{
    struct late_add *l = ud;
    usleep(100 * 1000);
    struct bq_slice e = {"[{\"task_id\":\"late\",\"event\":\"completed\"}]", 41};
    l->b->ops->feed_add(l->b, l->q, &e, 1, NULL);
    return NULL;
}

/* What a follower sees: nothing before the first entry, the entries after any id in order,
 * the ones a fetch writes before its acks, a wait ended by an entry another thread adds. */
static void feed_scenario(bq_broker *b, const char *q, struct tr *t)
{
    char last[BQ_FEED_ID_MAX], first[BQ_FEED_ID_MAX];
    bq_status st = b->ops->feed_last(b, q, last, NULL);
    say(t, "last %s %s\n", bq_status_name(st), last);
    struct bq_slice es[] = {{"[{\"task_id\":\"a\",\"event\":\"scheduled\"}]", 38},
                            {"[{\"task_id\":\"b\",\"event\":\"scheduled\"}]", 38},
                            {"[{\"task_id\":\"c\",\"event\":\"canceled\"}]", 37}};
    st = b->ops->feed_add(b, q, es, 3, NULL);
    say(t, "add %s\n", bq_status_name(st));
    struct bq_feed_reader *rd = NULL;
    struct bq_feed_out o = {NULL, 0, 0};
    st = b->ops->feed_read(b, &rd, q, "0-0", 2, 0, &o, NULL);
    say_feed(t, "read 2", st, &o);
    snprintf(first, sizeof first, "%s", o.n > 0 ? o.e[0].id : "0-0");
    bq_feed_out_clear(&o);
    st = b->ops->feed_read(b, &rd, q, first, 10, 0, &o, NULL);
    say_feed(t, "after the first", st, &o);
    b->ops->feed_last(b, q, last, NULL);
    say(t, "last is the newest %d\n", o.n == 2 && strcmp(last, o.e[1].id) == 0);
    bq_feed_out_clear(&o);
    st = b->ops->feed_read(b, &rd, q, last, 10, 0, &o, NULL);
    say_feed(t, "after the last", st, &o);
    bq_err err;
    st = b->ops->feed_read(b, &rd, q, "12-x", 10, 0, &o, &err);
    say(t, "bad id %s %s\n", bq_status_name(st), st == BQ_OK ? "" : err.msg);
    st = b->ops->feed_read(b, &rd, q, "18446744073709551615-18446744073709551615", 10, 0, &o, NULL);
    say(t, "the largest id %s %zu\n", bq_status_name(st), o.n);
    st = b->ops->feed_read(b, &rd, q, "18446744073709551616-0", 10, 0, &o, NULL);
    say(t, "past the largest %s\n", bq_status_name(st));
    /* a fetch writes its events before it acks */
    push(b, q, "m1");
    WHO(who, q, "w-feed", BQ_AT_LEAST_ONCE);
    struct bq_batch got = {NULL, 0, 0};
    fetch(b, &who, 1, NULL, 0, t, &got);
    struct bq_slice done = {"[{\"task_id\":\"m1\",\"event\":\"completed\"}]", 39};
    int fq = 0;
    struct bq_fetch_req req = {0, 0, got.msgs, got.n, false, 0, false, &done, &fq, 1};
    struct bq_fetch_res res;
    memset(&res, 0, sizeof res);
    struct bq_batch empty = {NULL, 0, 0};
    st = b->ops->fetch(b, &who, &req, &res, &empty, NULL);
    say(t, "fetch with an event %s acked %zu\n", bq_status_name(st), res.acked);
    bq_batch_free(&res.dead);
    st = b->ops->feed_read(b, &rd, q, last, 10, 0, &o, NULL);
    say_feed(t, "the fetch's", st, &o);
    if (o.n > 0)
        snprintf(last, sizeof last, "%s", o.e[o.n - 1].id);
    bq_feed_out_clear(&o);
    /* a wait ends when another thread adds */
    struct late_add l = {b, q};
    pthread_t th;
    pthread_create(&th, NULL, add_later, &l);
    double t0 = bq_now_mono();
    st = b->ops->feed_read(b, &rd, q, last, 10, 5.0, &o, NULL);
    double waited = bq_now_mono() - t0;
    pthread_join(th, NULL);
    say_feed(t, "waited", st, &o);
    say(t, "woken in time %d\n", waited >= 0.05 && waited < 2.0);
    bq_feed_out_clear(&o);
    /* an empty wait times out */
    t0 = bq_now_mono();
    b->ops->feed_last(b, q, last, NULL);
    st = b->ops->feed_read(b, &rd, q, last, 10, 0.2, &o, NULL);
    waited = bq_now_mono() - t0;
    say(t, "timed out %s %zu %d\n", bq_status_name(st), o.n, waited >= 0.15 && waited < 2.0);
    bq_feed_out_free(&o);
    b->ops->feed_close(b, rd);
    bq_batch_free(&got);
    bq_batch_free(&empty);
}

TEST(task_events_read_alike_on_both_brokers)
{
    if (redis_url == NULL)
        SKIP("BQ_REDIS_URL is not set");
    bq_broker *mem = NULL, *red = open_redis();
    REQUIRE(bq_broker_open_memory(&mem, NULL) == BQ_OK);
    if (red == NULL) {
        bq_broker_free(mem);
        CHECK(red != NULL);
        return;
    }
    static struct tr tm, tr;
    char q[128];
    snprintf(q, sizeof q, "%s:feed", prefix);
    feed_scenario(mem, q, &tm);
    feed_scenario(red, q, &tr);
    CHECK_STR(tm.buf, tr.buf);
    CHECK_STR(tr.buf,
              "last OK 0-0\n"
              "add OK\n"
              "read 2 OK 2: [{\"task_id\":\"a\",\"event\":\"scheduled\"}] [{\"task_id\":\"b\",\"event\":\"scheduled\"}]\n"
              "after the first OK 2: [{\"task_id\":\"b\",\"event\":\"scheduled\"}] [{\"task_id\":\"c\",\"event\":\"canceled\"}]\n"
              "last is the newest 1\n"
              "after the last OK 0:\n"
              "bad id EINVAL events: '12-x' is not an event id (<ms>-<seq>)\n"
              "the largest id OK 0\n"
              "past the largest EINVAL\n"
              "fetch OK acked 0 promoted 0\n"
              "fetch with an event OK acked 1\n"
              "the fetch's OK 1: [{\"task_id\":\"m1\",\"event\":\"completed\"}]\n"
              "waited OK 1: [{\"task_id\":\"late\",\"event\":\"completed\"}]\n"
              "woken in time 1\n"
              "timed out OK 0 1\n");
    bq_broker_free(red);
    bq_broker_free(mem);
}

TEST(event_ids_compare_as_two_numbers)
{
    CHECK(bq_feed_id_valid("0-0"));
    CHECK(bq_feed_id_valid("1796391331144-18446744073709551615"));
    CHECK(!bq_feed_id_valid("18446744073709551616-0"));
    CHECK(!bq_feed_id_valid("1-"));
    CHECK(!bq_feed_id_valid("-1"));
    CHECK(!bq_feed_id_valid("1-2-3"));
    CHECK(!bq_feed_id_valid("1 -2"));
    CHECK(!bq_feed_id_valid(""));
    CHECK(!bq_feed_id_valid(NULL));
    CHECK_INT(bq_feed_id_cmp("10-0", "9-5"), 1);
    CHECK_INT(bq_feed_id_cmp("9-5", "9-10"), -1);
    CHECK_INT(bq_feed_id_cmp("7-7", "7-7"), 0);
}

int main(void)
{
    redis_url = getenv("BQ_REDIS_URL");
    if (redis_url != NULL && *redis_url == '\0')
        redis_url = NULL;
    snprintf(prefix, sizeof prefix, "twin:%d:%lld", (int)getpid(), (long long)bq_now_wall());
    bq_log_set_level("off");
    RUN(every_script_has_a_row);
    RUN(the_memory_broker_does_what_each_script_does);
    RUN(leases_are_reaped_on_redis);
    RUN(the_admin_operations_answer_alike_on_both_brokers);
    RUN(task_events_read_alike_on_both_brokers);
    RUN(event_ids_compare_as_two_numbers);
    return check_report("test_twins");
}
