/*
 * worker.h -- the worker engine: a dispatcher thread that fetches task operations from a
 * broker and `concurrency` slot threads that handle them.
 *
 *   dispatcher thread                 slot threads (one per concurrency unit)
 *     wait until a slot is free          init: build the handler environment (a Lua state)
 *     fetch up to free-slot count  --->  take a message, handle it, report the outcome:
 *     (blocking, no polling)              log, dead-letter malformed/failed ones, queue an event
 *
 * The engine knows nothing about Lua: a slot is driven through bq_slot_ops, which the Lua
 * binding implements with one Lua state per slot thread, so no Lua state is ever touched by
 * two threads. The dispatcher fetches only as many messages as there are free slots, so a
 * worker never hoards tasks that another worker could run now.
 *
 * The thread that owns the bq_worker (the "main" thread, running the user's script) talks to
 * it through start/stop and an event queue: results (if requested) and the final STOPPED
 * event. Waiting for events can also watch a signal descriptor.
 */
#ifndef BINDUQ_WORKER_H
#define BINDUQ_WORKER_H

#include "../binduq.h"
#include "../broker/broker.h"
#include "config.h"
#include "task.h"

#include <stdbool.h>

typedef struct bq_worker bq_worker;

enum bq_outcome_kind {
    BQ_OUTCOME_COMPLETED = 0, /* the handler returned a result */
    BQ_OUTCOME_FAILED,        /* the handler raised or returned nil, err */
    BQ_OUTCOME_MALFORMED,     /* the message could not be decoded or validated */
};

/* What a slot reports for one message. The slot fills it; the engine frees the strings. */
struct bq_outcome {
    enum bq_outcome_kind kind;
    char task_id[BQ_MAX_ID_LEN + 1]; /* "" when unknown */
    char type[16];                   /* "" when unknown */
    char *reason; /* owned: why a message failed or was malformed (one line of text) */
    char *json;   /* owned: the result (completed, if results were asked for) or the error
                   * object {code, message, traceback, retryable} (failed) */
};

struct bq_slot_ops {
    /* On the slot thread, before any task: builds the slot's state. On failure it releases
     * whatever it built; fini is then not called. */
    bq_status (*init)(void *ud, int index, void **state, bq_err *err);
    /* On the slot thread: handles one message and fills out (zeroed by the engine). */
    void (*handle)(void *state, const struct bq_msg *msg, struct bq_outcome *out);
    /* On the slot thread, after the last task. */
    void (*fini)(void *state);
};

struct bq_worker_options {
    const struct bq_config *cfg; /* scheduler settings; copied */
    int concurrency;             /* slot threads, >= 1 */
    double block_timeout;        /* seconds a blocking fetch waits before it is renewed */
    bool want_results;           /* queue a RESULT event per handled message */
};

bq_status bq_worker_new(const struct bq_worker_options *opts, const struct bq_slot_ops *ops,
                        void *ud, bq_worker **out, bq_err *err);

/* Starts the slot threads, waits until every slot's init has finished, then starts the
 * dispatcher. If an init fails, the others are stopped and its error returned. In `drain`
 * mode the dispatcher never blocks: the worker stops by itself once the queue is empty and
 * no task is in flight. */
bq_status bq_worker_start(bq_worker *w, bool drain, bq_err *err);

/* Asks for a graceful stop: fetching stops (a blocked fetch is interrupted), messages already
 * fetched are still handled, then the threads exit and a STOPPED event is queued. Any thread;
 * idempotent. */
void bq_worker_stop(bq_worker *w);

/* Switches a running worker to drain mode: it stops by itself once the queue is empty and no
 * task is in flight. Any thread; idempotent. */
void bq_worker_drain(bq_worker *w);

enum bq_event_kind {
    BQ_EVENT_NONE = 0, /* the wait timed out */
    BQ_EVENT_RESULT,   /* one message was handled (only with want_results) */
    BQ_EVENT_SIGNAL,   /* the signal descriptor became readable */
    BQ_EVENT_STOPPED,  /* every thread has exited */
};

struct bq_event {
    enum bq_event_kind kind;
    struct bq_outcome outcome; /* RESULT: the outcome; strings owned by the event */
    double duration;           /* RESULT: seconds spent in the slot's handle */
};

/* Waits up to `timeout` seconds (negative: forever) for the next event. `sigfd` (or -1) is
 * watched too. Release the event with bq_event_clear. */
void bq_worker_next_event(bq_worker *w, double timeout, int sigfd, struct bq_event *ev);
void bq_event_clear(struct bq_event *ev);

/* Waits for the threads to exit (after stop or drain). */
void bq_worker_join(bq_worker *w);

/* Stops, joins and frees. */
void bq_worker_free(bq_worker *w);

const char *bq_worker_id(const bq_worker *w);
const char *bq_worker_queue(const bq_worker *w);
bq_broker *bq_worker_broker(bq_worker *w);

struct bq_worker_stats {
    long long fetched, completed, failed, malformed, dead_lettered;
    int inflight;
};
void bq_worker_stats(bq_worker *w, struct bq_worker_stats *out);

#endif
