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
};

/* Opens a client. Connections are made lazily, so a client opens even while Redis is down;
 * the first command reports the failure. `opts` may be NULL. */
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

/* Validates and schedules one task (LPUSH of its JSON). Nothing is sent when validation
 * fails (BQ_EINVAL, the message names the field). */
BQ_API bq_status bq_schedule(bq_client *client, const struct bq_task *task, bq_err *err);

/* Schedules n tasks in one pipelined round trip, in order. All are validated first; on a
 * validation error nothing is sent and *n_sent is 0. */
BQ_API bq_status bq_schedule_many(bq_client *client, const struct bq_task *tasks, size_t n,
                                  size_t *n_sent, bq_err *err);

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

#ifdef __cplusplus
}
#endif
#endif /* BINDUQ_H */
