/*
 * config.c -- see config.h.
 */
#include "config.h"

#include "../core/alloc.h"
#include "../core/err.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return (v != NULL && *v != '\0') ? v : NULL;
}

bq_status bq_config_resolve(const struct bq_client_options *opts, struct bq_config *cfg,
                            bq_err *err)
{
    static const struct bq_client_options none;
    if (opts == NULL)
        opts = &none;
    memset(cfg, 0, sizeof *cfg);

    const char *url = NULL;
    if (opts->url != NULL) {
        url = opts->url;
        strcpy(cfg->url_source, "scheduler.url");
    } else if (!opts->memory && (url = env("REDIS_URL")) != NULL) {
        strcpy(cfg->url_source, "REDIS_URL");
    }
    if (opts->memory)
        url = NULL;
    const char *queue = opts->queue_name ? opts->queue_name : env("REDIS_QUEUE_NAME");
    if (queue == NULL)
        queue = BQ_DEFAULT_QUEUE;
    if (*queue == '\0')
        return bq_err_set(err, BQ_EINVAL, "queue_name must not be empty");
    if (strlen(queue) > 200)
        return bq_err_set(err, BQ_EINVAL, "queue_name is longer than 200 bytes");

    cfg->max_connections = opts->max_connections;
    if (cfg->max_connections == 0) {
        const char *v = env("REDIS_MAX_CONNECTIONS");
        if (v != NULL) {
            char *end;
            errno = 0;
            long n = strtol(v, &end, 10);
            if (errno != 0 || *end != '\0' || n < 1 || n > 100000)
                return bq_err_set(err, BQ_EINVAL, "REDIS_MAX_CONNECTIONS: expected a whole "
                                  "number from 1 to 100000, got '%.40s'", v);
            cfg->max_connections = (int)n;
        } else {
            cfg->max_connections = BQ_DEFAULT_MAX_CONNECTIONS;
        }
    }
    if (cfg->max_connections < 1)
        return bq_err_set(err, BQ_EINVAL, "max_connections must be at least 1 (got %d)",
                          cfg->max_connections);
    if (opts->connect_timeout < 0 || opts->command_timeout < 0 || opts->pool_timeout < 0)
        return bq_err_set(err, BQ_EINVAL, "timeouts must not be negative");
    cfg->connect_timeout = opts->connect_timeout > 0 ? opts->connect_timeout
                                                     : BQ_DEFAULT_CONNECT_TIMEOUT;
    cfg->command_timeout = opts->command_timeout > 0 ? opts->command_timeout
                                                     : BQ_DEFAULT_COMMAND_TIMEOUT;
    cfg->pool_timeout = opts->pool_timeout > 0 ? opts->pool_timeout : BQ_DEFAULT_POOL_TIMEOUT;

    cfg->url = bq_strdup(url);
    cfg->queue_name = bq_strdup(queue);
    if ((url != NULL && cfg->url == NULL) || cfg->queue_name == NULL)
        return bq_err_set(err, BQ_ENOMEM, "out of memory");
    return BQ_OK;
}

void bq_config_free(struct bq_config *cfg)
{
    bq_free(cfg->url);
    bq_free(cfg->queue_name);
    cfg->url = cfg->queue_name = NULL;
}

void bq_config_broker(const struct bq_config *cfg, struct bq_broker_config *out)
{
    out->url = cfg->url;
    out->url_source = cfg->url_source;
    out->max_connections = cfg->max_connections;
    out->connect_timeout = cfg->connect_timeout;
    out->command_timeout = cfg->command_timeout;
    out->pool_timeout = cfg->pool_timeout;
}
