/*
 * config.c -- see config.h.
 */
#include "config.h"

#include "../core/alloc.h"
#include "../core/clock.h"
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
    const struct {
        const char *name;
        double v;
    } durations[] = {
        {"connect_timeout", opts->connect_timeout}, {"command_timeout", opts->command_timeout},
        {"pool_timeout", opts->pool_timeout},       {"wait_timeout", opts->wait_timeout},
    };
    for (size_t i = 0; i < sizeof durations / sizeof durations[0]; i++) {
        const char *why = bq_duration_problem(durations[i].v);
        if (why != NULL)
            return bq_err_set(err, BQ_EINVAL, "%s %s", durations[i].name, why);
    }
    cfg->connect_timeout = opts->connect_timeout > 0 ? opts->connect_timeout
                                                     : BQ_DEFAULT_CONNECT_TIMEOUT;
    cfg->command_timeout = opts->command_timeout > 0 ? opts->command_timeout
                                                     : BQ_DEFAULT_COMMAND_TIMEOUT;
    cfg->pool_timeout = opts->pool_timeout > 0 ? opts->pool_timeout : BQ_DEFAULT_POOL_TIMEOUT;

    cfg->url = bq_strdup(url);
    cfg->queue_name = bq_strdup(queue);
    if ((url != NULL && cfg->url == NULL) || cfg->queue_name == NULL)
        return bq_err_set(err, BQ_ENOMEM, "out of memory");

    const struct {
        const char *opt, *var;
        char **dst;
    } tls[] = {
        {opts->tls_ca_file, "BINDUQ_TLS_CA_FILE", &cfg->tls_ca_file},
        {opts->tls_ca_dir, "BINDUQ_TLS_CA_DIR", &cfg->tls_ca_dir},
        {opts->tls_cert_file, "BINDUQ_TLS_CERT_FILE", &cfg->tls_cert_file},
        {opts->tls_key_file, "BINDUQ_TLS_KEY_FILE", &cfg->tls_key_file},
        {opts->tls_server_name, "BINDUQ_TLS_SERVER_NAME", &cfg->tls_server_name},
    };
    for (size_t i = 0; i < sizeof tls / sizeof tls[0]; i++) {
        const char *v = tls[i].opt ? tls[i].opt : env(tls[i].var);
        if (v != NULL && (*tls[i].dst = bq_strdup(v)) == NULL)
            return bq_err_set(err, BQ_ENOMEM, "out of memory");
    }
    if (cfg->tls_server_name != NULL && strlen(cfg->tls_server_name) > 255)
        return bq_err_set(err, BQ_EINVAL, "tls server_name is longer than 255 bytes");
    if (opts->wait_replicas < 0 || opts->wait_timeout < 0)
        return bq_err_set(err, BQ_EINVAL, "wait_replicas and wait_timeout must not be negative");
    const char *order = opts->order ? opts->order : env("BINDUQ_QUEUE_ORDER");
    if (order != NULL && !bq_order_parse(order, &cfg->orders.dflt))
        return bq_err_set(err, BQ_EINVAL, "%s: expected \"lpush\" or \"rpush\", got '%.20s'",
                          opts->order ? "order" : "BINDUQ_QUEUE_ORDER", order);
    for (const char *const *p = opts->queue_orders; p != NULL && p[0] != NULL; p += 2) {
        enum bq_order o;
        if (p[1] == NULL || !bq_order_parse(p[1], &o))
            return bq_err_set(err, BQ_EINVAL, "order of queue '%.200s': expected \"lpush\" or "
                              "\"rpush\", got '%.20s'", p[0], p[1] ? p[1] : "nothing");
        if (bq_orders_set(&cfg->orders, p[0], o) != BQ_OK)
            return bq_err_set(err, BQ_ENOMEM, "out of memory");
    }
    cfg->wait_replicas = opts->wait_replicas;
    cfg->wait_timeout = opts->wait_timeout > 0 ? opts->wait_timeout : 1.0;
    cfg->tls_insecure = opts->tls_insecure;
    const char *ins = env("BINDUQ_TLS_INSECURE");
    if (!cfg->tls_insecure && ins != NULL) {
        if (strcmp(ins, "1") == 0 || strcmp(ins, "true") == 0 || strcmp(ins, "yes") == 0)
            cfg->tls_insecure = true;
        else if (strcmp(ins, "0") != 0 && strcmp(ins, "false") != 0 && strcmp(ins, "no") != 0)
            return bq_err_set(err, BQ_EINVAL, "BINDUQ_TLS_INSECURE: expected 1 or 0, got "
                              "'%.20s'", ins);
    }
    return BQ_OK;
}

void bq_config_free(struct bq_config *cfg)
{
    bq_free(cfg->url);
    bq_free(cfg->queue_name);
    bq_free(cfg->tls_ca_file);
    bq_free(cfg->tls_ca_dir);
    bq_free(cfg->tls_cert_file);
    bq_free(cfg->tls_key_file);
    bq_free(cfg->tls_server_name);
    bq_orders_free(&cfg->orders);
    cfg->url = cfg->queue_name = NULL;
    cfg->tls_ca_file = cfg->tls_ca_dir = cfg->tls_cert_file = cfg->tls_key_file = NULL;
    cfg->tls_server_name = NULL;
}

void bq_config_broker(const struct bq_config *cfg, struct bq_broker_config *out)
{
    out->url = cfg->url;
    out->url_source = cfg->url_source;
    out->max_connections = cfg->max_connections;
    out->connect_timeout = cfg->connect_timeout;
    out->command_timeout = cfg->command_timeout;
    out->pool_timeout = cfg->pool_timeout;
    out->tls = (struct bq_tls_config){cfg->tls_ca_file, cfg->tls_ca_dir, cfg->tls_cert_file,
                                      cfg->tls_key_file, cfg->tls_insecure};
    out->tls_server_name = cfg->tls_server_name;
    out->wait_replicas = cfg->wait_replicas;
    out->wait_timeout = cfg->wait_timeout;
    out->orders = &cfg->orders;
}
