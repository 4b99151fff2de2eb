/*
 * config.h -- resolving a scheduler configuration: explicit options beat environment
 * variables, which beat defaults. The defaults live here, once; the Lua side reads them
 * through binduq.core.defaults() and the README repeats them.
 */
#ifndef BINDUQ_CONFIG_H
#define BINDUQ_CONFIG_H

#include "../binduq.h"
#include "../broker/broker.h"
#include "../storage/storage.h"

#include <stddef.h>

#define BQ_DEFAULT_QUEUE "bindu:tasks"
#define BQ_DEFAULT_MAX_CONNECTIONS 10
#define BQ_DEFAULT_CONNECT_TIMEOUT 5.0
#define BQ_DEFAULT_COMMAND_TIMEOUT 5.0
#define BQ_DEFAULT_POOL_TIMEOUT 5.0
#define BQ_DEFAULT_BLOCK_TIMEOUT 5.0
#define BQ_DEFAULT_CONCURRENCY 1
/* Large enough for A2A messages with files (a 1.1 MB PDF is 1.5 MB of base64); Bindu has
 * no limit, Redis' own is 512 MB. */
#define BQ_DEFAULT_MAX_MESSAGE_SIZE (32 * 1024 * 1024)
/* A fetch of several messages stops once they pass this many bytes (the first is taken
 * whatever its size): a worker holds at most about concurrency x max_message_size for its
 * running tasks plus two fetches' worth waiting (see "Memory" in the README). */
#define BQ_FETCH_BYTES ((size_t)16 * 1024 * 1024)
#define BQ_DEFAULT_LEASE 30.0            /* seconds; renewed every lease/3 */
#define BQ_DEFAULT_SHUTDOWN_TIMEOUT 30.0 /* seconds running handlers get after SIGTERM */
#define BQ_DEFAULT_MAX_ATTEMPTS 5
#define BQ_DEFAULT_RETRY_BASE 1.0        /* seconds: full-jitter backoff from 1 s ... */
#define BQ_DEFAULT_RETRY_CAP 300.0       /* ... up to 5 min */

struct bq_config {
    char *url;            /* owned; NULL means the in-memory scheduler */
    char url_source[32];  /* "REDIS_URL" or "scheduler.url", for messages */
    char *queue_name;     /* owned */
    int max_connections;
    double connect_timeout;
    double command_timeout;
    double pool_timeout;
    char *tls_ca_file, *tls_ca_dir, *tls_cert_file, *tls_key_file, *tls_server_name; /* owned */
    bool tls_insecure;
    int wait_replicas;
    double wait_timeout;
    struct bq_orders orders; /* owned */
    int retry_on_timeout;    /* -1: not given (URL option or RETRY_ON_TIMEOUT), else 0 or 1 */
    long events_max;         /* entries each queue's task-event stream keeps (> 0), or -1:
                              * no task events */
};

/* Fills cfg from opts (may be NULL), the environment and the defaults. Environment values
 * that do not parse are BQ_EINVAL naming the variable. Release with bq_config_free, also
 * after an error. */
bq_status bq_config_resolve(const struct bq_client_options *opts, struct bq_config *cfg,
                            bq_err *err);
void bq_config_free(struct bq_config *cfg);

/* The one rule for where task state lives, for the C options (bq_config_storage) and Lua's
 * storage sections (lua/binduq/storage.lua, through core.storage_resolve): the type given,
 * else STORAGE_TYPE (memory, postgres or redis, any case), else postgres when a URL is given or in
 * DATABASE_URL or POSTGRES_URL, else memory; postgres needs a URL; a layout given, else
 * BINDUQ_STORAGE_LAYOUT; the bindu layout's schema is named after POSTGRES_DID or DID unless
 * a schema is given. NULL fields of the request take the environment; its *_option names say
 * how the caller calls its options, for the error messages. */
struct bq_storage_request {
    const char *type, *url, *schema, *layout;
    const char *url_option;    /* "storage.url" (Lua), "storage_url" (C) */
    const char *schema_option; /* "storage.schema", "storage_schema" */
};

/* out->cfg's strings point into out (or are static). Release with bq_storage_choice_free, also
 * after an error. */
struct bq_storage_choice {
    struct bq_storage_config cfg;
    char *url, *schema, *layout; /* owned */
    const char *url_name; /* where the URL came from: url_option, "DATABASE_URL", "POSTGRES_URL" */
};
bq_status bq_storage_resolve(const struct bq_storage_request *in, struct bq_storage_choice *out,
                             bq_err *err);

/* The schema Bindu keeps an agent's tables in, from its DID: lower case, every byte but ASCII
 * letters, digits and '_' made '_', "schema_" before a leading digit; *out owned. Longer than
 * 63 bytes (Bindu shortens those with a hash) is refused, naming schema_option. */
bq_status bq_did_schema(const char *did, const char *schema_option, char **out, bq_err *err);

/* The storage a C producer records its tasks in: bq_storage_resolve of opts (may be NULL). */
bq_status bq_config_storage(const struct bq_client_options *opts, struct bq_storage_choice *out,
                            bq_err *err);
void bq_storage_choice_free(struct bq_storage_choice *c);
/* For a "redis" choice: bc becomes the scheduler's broker settings (sched's, borrowed), its
 * url replaced by the storage's own when c has one, and c->cfg's redis and queue point at bc
 * and sched's queue, whose Cluster slot the storage's keys share. */
void bq_storage_choice_redis(struct bq_storage_choice *c, const struct bq_config *sched,
                             struct bq_broker_config *bc);

/* The broker settings of a resolved configuration (pointers borrowed from cfg). */
void bq_config_broker(const struct bq_config *cfg, struct bq_broker_config *out);

#endif
