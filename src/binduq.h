/*
 * binduq.h -- the one installed header of libbinduq.
 *
 * binduq moves task operations (run, pause, resume, cancel) through a Redis list, or through an
 * in-process memory queue when no Redis is configured, to handlers written in Lua. This header
 * is the C producer side: open a client, schedule tasks, ask for queue length and health.
 *
 * Conventions (they hold for every function below unless its comment says otherwise):
 *  - Arguments are borrowed: the library copies what it keeps.
 *  - A returned pointer belongs to the caller and is released with the matching bq_*_free,
 *    which accepts NULL.
 *  - A fallible function returns bq_status (BQ_OK is 0, failures are negative) and takes a
 *    `bq_err *err` as its last parameter, which may be NULL. On failure err->code is the same
 *    status and err->msg a readable sentence naming the failing call. Messages never contain a
 *    password.
 *  - A bq_client is safe to use from many threads at once: its connections are pooled.
 */
#ifndef BINDUQ_H
#define BINDUQ_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(BQ_BUILDING) && defined(__GNUC__)
#define BQ_API __attribute__((visibility("default")))
#else
#define BQ_API
#endif

#define BQ_VERSION_MAJOR 0
#define BQ_VERSION_MINOR 1
#define BQ_VERSION_PATCH 0
#define BQ_VERSION_STRING "0.1.0"

/* Status codes. The names returned by bq_status_name() are stable and are also the `code`
 * strings of the Lua API ("ETIMEDOUT", ...). */
typedef enum bq_status {
    BQ_OK = 0,
    BQ_ENOMEM = -1,        /* out of memory */
    BQ_EINVAL = -2,        /* bad argument or configuration */
    BQ_EIO = -3,           /* socket error or connection lost */
    BQ_ETIMEDOUT = -4,     /* a deadline passed */
    BQ_EPROTO = -5,        /* the server spoke something we could not parse */
    BQ_EREDIS = -6,        /* Redis answered with an error reply */
    BQ_EPG = -7,           /* PostgreSQL error */
    BQ_ECLOSED = -8,       /* the object was closed or is shutting down */
    BQ_ECONNREFUSED = -9,  /* nothing listens at the address */
    BQ_ENOTFOUND = -10,    /* the host name does not resolve */
    BQ_EAUTH = -11,        /* the server refused our credentials */
    BQ_EUNSUPPORTED = -12, /* a feature this build or this server does not have */
    BQ_EINTR = -13,        /* a wait was interrupted on purpose (shutdown) */
    BQ_ETOOBIG = -14,      /* a message exceeds the configured maximum size */
} bq_status;

typedef struct bq_err {
    bq_status code;
    char msg[256];
} bq_err;

/* "ETIMEDOUT" for BQ_ETIMEDOUT, "OK" for BQ_OK, "EUNKNOWN" for anything else. */
BQ_API const char *bq_status_name(bq_status code);

/* The library version, "0.1.0". */
BQ_API const char *bq_version(void);

/* ---- Logging ------------------------------------------------------------------------------ */

/* binduq logs one line per event to stderr. Defaults come from BINDUQ_LOG_LEVEL
 * (debug|info|warn|error|off, default info) and BINDUQ_LOG_FORMAT (text|json, default text).
 * These calls override the environment. They return BQ_EINVAL for an unknown name. */
BQ_API bq_status bq_log_set_level(const char *level);
BQ_API bq_status bq_log_set_format(const char *format);

/* ---- Client (producer side) ---------------------------------------------------------------- */

typedef struct bq_client bq_client;
struct bq_task; /* below: a task operation (the route callback takes one) */

/* Options for bq_client_new. Zero/NULL fields take the environment, then the default:
 *   url              REDIS_URL; unset means the in-memory scheduler of this process;
 *                    redis://, rediss:// (TLS), unix://, redis+sentinel://
 *   queue_name       REDIS_QUEUE_NAME, default "bindu:tasks"
 *   max_connections  REDIS_MAX_CONNECTIONS, default 10
 *   connect_timeout  seconds, default 5
 *   command_timeout  seconds, default 5
 *   pool_timeout     seconds a caller waits for a free pooled connection, default 5
 *   memory           true forces the in-memory scheduler even when REDIS_URL is set
 *   order            which end of a queue producers push to: "lpush" (the documentation's
 *                    producers, workers take from the right; the default) or "rpush" (Bindu's
 *                    RedisScheduler, workers take from the left); BINDUQ_QUEUE_ORDER
 *   queue_orders     per-queue exceptions: {queue, order, queue, order, ..., NULL} */
struct bq_client_options {
    const char *url;
    const char *queue_name;
    int max_connections;
    double connect_timeout;
    double command_timeout;
    double pool_timeout;
    bool memory;
    const char *order;
    const char *const *queue_orders;
    /* TLS, for rediss:// URLs (each also from BINDUQ_TLS_<NAME> in capitals):
     *   tls_ca_file, tls_ca_dir   trusted CAs (PEM file, hashed directory); default: the
     *                             system's store
     *   tls_cert_file, tls_key_file  a client certificate and key (mutual TLS)
     *   tls_server_name           the name sent (SNI) and verified; default: the host
     *   tls_insecure              no certificate verification (tests only) */
    const char *tls_ca_file;
    const char *tls_ca_dir;
    const char *tls_cert_file;
    const char *tls_key_file;
    const char *tls_server_name;
    bool tls_insecure;
    /* Durability of enqueues: after each push, WAIT until `wait_replicas` replicas have it
     * (at most `wait_timeout` seconds, default 1), else the push fails with BQ_ETIMEDOUT
     * (the task may or may not be queued). 0: no waiting. */
    int wait_replicas;
    double wait_timeout;
    /* What the Lua producer does besides pushing (see bq_schedule_many). Appended after the
     * fields above, so positional initializers written for them still compile.
     *
     * Task state is recorded in a storage:
     *   storage_type    "memory", "postgres" or "redis"; NULL: STORAGE_TYPE, else
     *                   "postgres" when storage_url, DATABASE_URL or POSTGRES_URL is set,
     *                   else "memory" (the storage of this process, shared with the workers
     *                   it runs). "redis": hashes in this client's Redis, in the slot of its
     *                   queue_name (docs/lifecycle.md)
     *   storage_url     postgresql://...; NULL: DATABASE_URL, else POSTGRES_URL ("redis":
     *                   a Redis URL; NULL: the client's own)
     *   storage_schema  PostgreSQL schema; NULL: "binduq" (with BINDUQ_STORAGE_LAYOUT=bindu,
     *                   Bindu's tables in the schema named after POSTGRES_DID or DID)
     * Deduplication of run and cancel (keys "run:<task_id>", "cancel:<task_id>"; pause and
     * resume legitimately repeat):
     *   no_dedup        true turns it off (it is on by default)
     *   dedup_ttl       seconds a key holds; 0: 3600
     * Routing:
     *   route           called once per task in bq_schedule_many, before anything is stored:
     *                   returns the queue the task goes to, or NULL for the client's queue.
     *                   The string is copied at once. Called from the scheduling thread.
     *   route_ud        passed to route as is */
    const char *storage_type;
    const char *storage_url;
    const char *storage_schema;
    bool no_dedup;
    double dedup_ttl;
    const char *(*route)(const struct bq_task *task, void *ud);
    void *route_ud;
    /* Task events (docs/events.md): the entries each queue's stream {Q}:events keeps, about.
     * 0: BINDUQ_EVENTS_MAX, else 1,000; negative (or BINDUQ_EVENTS_MAX=0): no task events
     * are written. */
    long events_max;
};

/* Opens a client. Connections to Redis are made lazily, so a client opens even while Redis is
 * down; the first command reports the failure. The storage is opened at once: a PostgreSQL
 * that cannot be reached fails here ("storage: ..."). `opts` may be NULL. */
BQ_API bq_status bq_client_new(const struct bq_client_options *opts, bq_client **out,
                               bq_err *err);
BQ_API void bq_client_free(bq_client *client);

/* One chat message of a task. */
struct bq_message {
    const char *role;    /* "user", "agent", ... */
    const char *content; /* UTF-8 text */
};

/* A task operation in binduq's native wire format. `type` is "run", "pause", "resume" or
 * "cancel"; `task_id` is required for all four. `conversation_id` may be NULL (a run without
 * one gets a fresh UUID). `messages` are required for run (at least one) and allowed for
 * resume. */
struct bq_task {
    const char *type;
    const char *task_id;
    const char *conversation_id;
    const struct bq_message *messages;
    size_t n_messages;
};

/* Validates and schedules one task: bq_schedule_many with n = 1 (a duplicate is BQ_OK too;
 * bq_schedule_many's *n_sent, or bq_client_stats, tells). */
BQ_API bq_status bq_schedule(bq_client *client, const struct bq_task *task, bq_err *err);

/* Schedules n tasks, as the Lua producer (binduq.scheduler) does:
 *  1. every task is validated and encoded, and routed (opts->route); on a validation error
 *     (BQ_EINVAL, the message names the task, "tasks[2]: task_id is required", when n > 1)
 *     nothing is stored or sent and *n_sent is 0;
 *  2. each task's state is stored, in order: a run is recorded "submitted" (with its queue,
 *     conversation id and messages as its history); a cancel makes the task "canceled" (a
 *     task nobody recorded is created canceled) and is published on the control channel of
 *     the client's queue, so a running handler stops within milliseconds; a pause makes a
 *     submitted task "paused", and for a running one records the request and publishes it.
 *     A storage failure returns its error ("storage: ...") with nothing pushed;
 *  3. the tasks are pushed (LPUSH or RPUSH, see `order`), one pipelined round trip per queue
 *     and kind of push (deduplicated or not, delayed or not), each queue's tasks in their
 *     order (tasks routed in turn over queues: a push per queue); a run or cancel is
 *     pushed only if its deduplication key is free, and takes it for dedup_ttl seconds, in
 *     one atomic step.
 * *n_sent (n_sent may be NULL) counts the tasks pushed: on BQ_OK the other n - *n_sent were
 * duplicates. On a push failure *n_sent says how many were pushed before it. Counted in the
 * process's metrics (binduq_tasks_scheduled_total, binduq_tasks_deduplicated_total) and in
 * bq_client_stats.
 * If the process dies between the store and the push, a worker's recovery sweep pushes the
 * submitted run again. */
BQ_API bq_status bq_schedule_many(bq_client *client, const struct bq_task *tasks, size_t n,
                                  size_t *n_sent, bq_err *err);

/* When a task runs (bq_schedule_many_when): at most one of the two is set; both 0 means now.
 *   delay   seconds from now, from 0 to 365 days, by Redis' clock (the due time is computed
 *           by the server, so the producer's clock does not matter)
 *   run_at  seconds since the epoch; one already past runs at once; at most 365 days ahead
 * A delayed task waits in its queue's delayed set ({Q}:delayed) and is moved to the queue
 * when due, as a retry is; a worker blocked on the queue wakes for it on time. */
struct bq_when {
    double delay;
    double run_at;
};

/* bq_schedule_many with a time for each task: when[i] for tasks[i] (`when` may be NULL: all
 * now). A negative, NaN or too long delay, or both fields set, is BQ_EINVAL naming the field
 * ("tasks[1]: delay is negative"), with nothing stored or sent. A delayed run is recorded
 * "submitted" at once (a cancel meanwhile makes it "canceled", and it is skipped when it
 * comes due); a delayed cancel or pause is stored and published only when it comes due,
 * by the worker that takes it. Deduplication keys of delayed tasks hold dedup_ttl seconds
 * past their due time, and route() chooses the queue as for any task. */
BQ_API bq_status bq_schedule_many_when(bq_client *client, const struct bq_task *tasks,
                                       const struct bq_when *when, size_t n, size_t *n_sent,
                                       bq_err *err);

/* bq_schedule_many_when for one task. */
BQ_API bq_status bq_schedule_when(bq_client *client, const struct bq_task *task,
                                  const struct bq_when *when, bq_err *err);

/* The tasks this client pushed and the ones it found duplicate since it was opened (either
 * pointer may be NULL). */
BQ_API void bq_client_stats(bq_client *client, long long *scheduled, long long *deduplicated);

/* Number of task operations waiting in the client's queue. */
BQ_API bq_status bq_queue_length(bq_client *client, long long *out, bq_err *err);

struct bq_health {
    bool ok;
    double rtt;          /* seconds, PING round trip (0 for the in-memory scheduler) */
    long long queue_length;
    char backend[16];    /* "redis" or "memory" */
    char address[128];   /* host:port or socket path, no credentials */
};

/* PINGs the server and measures the queue. Returns the failure when the server is down. */
BQ_API bq_status bq_health_check(bq_client *client, struct bq_health *out, bq_err *err);

/* ---- Task events (docs/events.md) ------------------------------------------------------
 * Each queue keeps a capped stream of what happened to its tasks. An entry has an id
 * ("<ms>-<seq>", growing) and a JSON array of events (objects with "event", "task_id", "at"
 * and, as they apply, "state", "attempt", "worker", "progress", ...). Reading after the id of
 * the last entry one has handled misses nothing the stream still keeps (at-least-once). */
#define BQ_EVENT_ID_MAX 48

/* The id of the newest entry of `queue`'s stream (NULL: the client's queue) into id, "0-0"
 * when it has none: reading after it gives the events from now on. BQ_EINVAL when the
 * client's configuration turned task events off. */
BQ_API bq_status bq_events_last(bq_client *client, const char *queue,
                                char id[BQ_EVENT_ID_MAX], bq_err *err);

/* Reads up to `max` entries of `queue`'s stream (NULL: the client's queue) after `after`
 * ("0-0": the oldest kept), waiting up to `timeout` seconds for the first when there is
 * none (0: do not wait; the wait happens in the server, on a connection of the client's
 * own), and calls on_entry(ud, id, json, len) for each in order; *n (may be NULL) is how
 * many. One thread at a time per client. */
BQ_API bq_status bq_events_read(bq_client *client, const char *queue, const char *after,
                                size_t max, double timeout,
                                void (*on_entry)(void *ud, const char *id, const char *json,
                                                 size_t len),
                                void *ud, size_t *n, bq_err *err);

#ifdef __cplusplus
}
#endif
#endif /* BINDUQ_H */
