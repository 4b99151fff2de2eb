/*
 * config.c -- see config.h.
 */
#include "config.h"

#include "../broker/keys.h"
#include "../core/alloc.h"
#include "../core/clock.h"
#include "../core/env.h"
#include "../core/err.h"
#include "../core/log.h"
#include "../net/url.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static bq_status resolve_rest(const struct bq_client_options *opts, struct bq_config *cfg,
                              const char *url, const struct bq_url *u, bq_err *err);

/* pydantic's reading of a bool, as Bindu's settings take RETRY_ON_TIMEOUT: -1 if neither. */
static int py_settings_bool(const char *v)
{
    static const char *const yes[] = {"1", "true", "t", "yes", "y", "on"};
    static const char *const no[] = {"0", "false", "f", "no", "n", "off"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(v, yes[i]) == 0)
            return 1;
        if (strcasecmp(v, no[i]) == 0)
            return 0;
    }
    return -1;
}

/* A whole number from lo to hi from `v` (the variable `name`), or an error naming it. */
static bq_status env_int(const char *name, const char *v, long lo, long hi, long *out,
                         bq_err *err)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || n < lo || n > hi)
        return bq_err_set(err, BQ_EINVAL, "%s: expected a whole number from %ld to %ld, got "
                          "'%.40s'", name, lo, hi, v);
    *out = n;
    return BQ_OK;
}

/* The Redis URL Bindu's scheduler builds from REDIS_HOST, REDIS_PORT, REDIS_PASSWORD and
 * REDIS_DB when REDIS_URL is unset (its factory: redis://[:password@]host:port/db, the
 * password not encoded). */
static bq_status bindu_url(char *out, size_t size, bq_err *err)
{
    const char *host = bq_env_any_case("REDIS_HOST"), *pw = bq_env_any_case("REDIS_PASSWORD");
    const char *port = bq_env_any_case("REDIS_PORT"), *db = bq_env_any_case("REDIS_DB");
    long p = 6379, d = 0;
    bq_status st = port ? env_int("REDIS_PORT", port, 1, 65535, &p, err) : BQ_OK;
    if (st == BQ_OK && db != NULL)
        st = env_int("REDIS_DB", db, 0, 0x7fffffff, &d, err);
    if (st != BQ_OK)
        return st;
    int n = snprintf(out, size, "redis://%s%s%s%s:%ld/%ld", pw ? ":" : "", pw ? pw : "",
                     pw ? "@" : "", host ? host : "localhost", p, d);
    if (n < 0 || (size_t)n >= size)
        return bq_err_set(err, BQ_EINVAL, "REDIS_HOST and REDIS_PASSWORD are too long");
    return BQ_OK;
}

bq_status bq_config_resolve(const struct bq_client_options *opts, struct bq_config *cfg,
                            bq_err *err)
{
    static const struct bq_client_options none;
    if (opts == NULL)
        opts = &none;
    memset(cfg, 0, sizeof *cfg);
    cfg->retry_on_timeout = -1;

    /* Where Redis is: the option, REDIS_URL, then Bindu's SCHEDULER_TYPE (memory, or redis at
     * the URL its settings would build); nothing: the in-memory scheduler. */
    const char *url = NULL;
    char built[1024];
    const char *stype = bq_env_any_case("SCHEDULER_TYPE");
    if (stype != NULL && strcasecmp(stype, "redis") != 0 && strcasecmp(stype, "memory") != 0)
        return bq_err_set(err, BQ_EINVAL, "SCHEDULER_TYPE: expected redis or memory, got "
                          "'%.40s'", stype);
    if (opts->url != NULL) {
        url = opts->url;
        strcpy(cfg->url_source, "scheduler.url");
    } else if (opts->memory || (stype != NULL && strcasecmp(stype, "memory") == 0)) {
        url = NULL;
    } else if ((url = bq_env_any_case("REDIS_URL")) != NULL) {
        strcpy(cfg->url_source, "REDIS_URL");
    } else if (stype != NULL) {
        bq_status st = bindu_url(built, sizeof built, err);
        if (st != BQ_OK)
            return st;
        url = built;
        strcpy(cfg->url_source, "REDIS_HOST");
    }
    if (opts->memory)
        url = NULL;
    /* The options a redis-py URL carries (url.h): beaten by explicit options, they beat the
     * environment's. */
    struct bq_url u;
    memset(&u, 0, sizeof u);
    u.socket_timeout = u.socket_connect_timeout = -1;
    u.retry_on_timeout = u.ssl_cert_reqs = -1;
    if (url != NULL && strncmp(url, "redis+cluster://", 16) != 0 &&
        strncmp(url, "rediss+cluster://", 17) != 0) {
        bq_status st = bq_url_parse(url, cfg->url_source, &u, err);
        if (st != BQ_OK) {
            bq_url_free(&u);
            return st;
        }
        if (u.ignored[0] != '\0')
            bq_log(BQ_LOG_DEBUG, "url_options_ignored", "url", cfg->url_source, "options",
                   u.ignored, "why", "binduq has no use for them (see the README, URLs)", NULL);
    }
    bq_status st = resolve_rest(opts, cfg, url, &u, err);
    bq_url_free(&u);
    return st;
}

static bq_status resolve_rest(const struct bq_client_options *opts, struct bq_config *cfg,
                              const char *url, const struct bq_url *u, bq_err *err)
{
    const char *queue = opts->queue_name             ? opts->queue_name
                        : bq_env("REDIS_QUEUE_NAME") ? bq_env("REDIS_QUEUE_NAME")
                                                     : bq_env_any_case("QUEUE_NAME");
    if (queue == NULL)
        queue = BQ_DEFAULT_QUEUE;
    const char *qwhy = bq_queue_name_problem(queue);
    if (qwhy != NULL)
        return bq_err_set(err, BQ_EINVAL, "queue_name '%.200s' %s", queue, qwhy);

    cfg->max_connections = opts->max_connections;
    if (cfg->max_connections == 0 && u->max_connections > 0)
        cfg->max_connections = u->max_connections;
    if (cfg->max_connections == 0) {
        bool doc = bq_env("REDIS_MAX_CONNECTIONS") != NULL;
        const char *v = doc ? bq_env("REDIS_MAX_CONNECTIONS")
                            : bq_env_any_case("MAX_CONNECTIONS");
        long n = BQ_DEFAULT_MAX_CONNECTIONS;
        if (v != NULL) {
            bq_status st = env_int(doc ? "REDIS_MAX_CONNECTIONS" : "MAX_CONNECTIONS", v, 1,
                                   100000, &n, err);
            if (st != BQ_OK)
                return st;
        }
        cfg->max_connections = (int)n;
    }
    if (cfg->max_connections < 1)
        return bq_err_set(err, BQ_EINVAL, "max_connections must be at least 1 (got %d)",
                          cfg->max_connections);
    const char *rot = bq_env_any_case("RETRY_ON_TIMEOUT");
    if (u->retry_on_timeout >= 0)
        cfg->retry_on_timeout = u->retry_on_timeout;
    else if (rot != NULL && (cfg->retry_on_timeout = py_settings_bool(rot)) < 0)
        return bq_err_set(err, BQ_EINVAL, "RETRY_ON_TIMEOUT: expected true or false, got "
                          "'%.20s'", rot);
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
    cfg->connect_timeout = opts->connect_timeout > 0    ? opts->connect_timeout
                           : u->socket_connect_timeout > 0 ? u->socket_connect_timeout
                                                           : BQ_DEFAULT_CONNECT_TIMEOUT;
    cfg->command_timeout = opts->command_timeout > 0 ? opts->command_timeout
                           : u->socket_timeout > 0     ? u->socket_timeout
                                                       : BQ_DEFAULT_COMMAND_TIMEOUT;
    cfg->pool_timeout = opts->pool_timeout > 0 ? opts->pool_timeout : BQ_DEFAULT_POOL_TIMEOUT;

    cfg->url = bq_strdup(url);
    cfg->queue_name = bq_strdup(queue);
    if ((url != NULL && cfg->url == NULL) || cfg->queue_name == NULL)
        return bq_err_set(err, BQ_ENOMEM, "out of memory");

    const struct {
        const char *opt, *var;
        char **dst;
        const char *from_url;
    } tls[] = {
        {opts->tls_ca_file, "BINDUQ_TLS_CA_FILE", &cfg->tls_ca_file, u->ssl_ca_certs},
        {opts->tls_ca_dir, "BINDUQ_TLS_CA_DIR", &cfg->tls_ca_dir, u->ssl_ca_path},
        {opts->tls_cert_file, "BINDUQ_TLS_CERT_FILE", &cfg->tls_cert_file, u->ssl_certfile},
        {opts->tls_key_file, "BINDUQ_TLS_KEY_FILE", &cfg->tls_key_file, u->ssl_keyfile},
        {opts->tls_server_name, "BINDUQ_TLS_SERVER_NAME", &cfg->tls_server_name, NULL},
    };
    for (size_t i = 0; i < sizeof tls / sizeof tls[0]; i++) {
        const char *v = tls[i].opt        ? tls[i].opt
                        : tls[i].from_url ? tls[i].from_url
                                          : bq_env(tls[i].var);
        if (v != NULL && (*tls[i].dst = bq_strdup(v)) == NULL)
            return bq_err_set(err, BQ_ENOMEM, "out of memory");
    }
    if (cfg->tls_server_name != NULL && strlen(cfg->tls_server_name) > 255)
        return bq_err_set(err, BQ_EINVAL, "tls server_name is longer than 255 bytes");
    if (opts->wait_replicas < 0 || opts->wait_timeout < 0)
        return bq_err_set(err, BQ_EINVAL, "wait_replicas and wait_timeout must not be negative");
    const char *order = opts->order ? opts->order : bq_env("BINDUQ_QUEUE_ORDER");
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
    cfg->events_max = opts->events_max < 0 ? -1 : opts->events_max;
    const char *em = bq_env("BINDUQ_EVENTS_MAX");
    if (cfg->events_max == 0 && em != NULL) {
        char *end;
        errno = 0;
        long v = strtol(em, &end, 10);
        if (end == em || *end != '\0' || errno != 0 || v < 0 || v > 100000000)
            return bq_err_set(err, BQ_EINVAL, "BINDUQ_EVENTS_MAX: expected a whole number from 0 "
                              "(no task events) to 100000000, got '%.20s'", em);
        cfg->events_max = v == 0 ? -1 : v;
    }
    if (cfg->events_max == 0)
        cfg->events_max = BQ_FEED_MAX_DEFAULT;
    cfg->tls_insecure = opts->tls_insecure || u->ssl_cert_reqs == 0;
    const char *ins = bq_env("BINDUQ_TLS_INSECURE");
    if (!cfg->tls_insecure && u->ssl_cert_reqs < 0 && ins != NULL) {
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

/* ---- Storage ---------------------------------------------------------------------------- */

/* The schema Bindu keeps an agent's tables in, from its DID (storage.lua's M.did_schema):
 * lower case, every byte but ASCII letters, digits and '_' made '_', "schema_" before a
 * leading digit. Bindu shortens a name over 63 bytes with a hash, which we cannot know. */
bq_status bq_did_schema(const char *did, const char *schema_option, char **out, bq_err *err)
{
    size_t n = strlen(did);
    bool digit = n > 0 && did[0] >= '0' && did[0] <= '9';
    size_t len = n + (digit ? 7 : 0);
    if (len > 63)
        return bq_err_set(err, BQ_EINVAL, "the schema name of DID '%.80s' is longer than 63 "
                          "bytes, which Bindu shortens with a hash: give %s as it appears in "
                          "the database", did, schema_option);
    char name[64];
    size_t k = 0;
    if (digit) {
        memcpy(name, "schema_", 7);
        k = 7;
    }
    for (size_t i = 0; i < n; i++) {
        char c = did[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        bool keep = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
        name[k++] = keep ? c : '_';
    }
    name[k] = '\0';
    *out = bq_strdup(name);
    return *out == NULL ? bq_err_set(err, BQ_ENOMEM, "out of memory") : BQ_OK;
}

static const char *env_database_url(void)
{
    const char *v = bq_env_any_case("DATABASE_URL");
    return v != NULL ? v : bq_env_any_case("POSTGRES_URL");
}

bq_status bq_storage_resolve(const struct bq_storage_request *in, struct bq_storage_choice *out,
                             bq_err *err)
{
    memset(out, 0, sizeof *out);
    const char *url_option = in->url_option != NULL ? in->url_option : "storage_url";
    const char *type = in->type, *url = in->url;
    const char *url_name = url != NULL ? url_option : NULL;
    const char *env_type = bq_env_any_case("STORAGE_TYPE");
    if (type == NULL && url == NULL && env_type != NULL) {
        if (strcasecmp(env_type, "memory") == 0)
            type = "memory";
        else if (strcasecmp(env_type, "postgres") == 0)
            type = "postgres";
        else if (strcasecmp(env_type, "redis") == 0)
            type = "redis";
        else
            return bq_err_set(err, BQ_EINVAL, "STORAGE_TYPE: expected memory, postgres or redis, "
                              "got '%.40s'", env_type);
    }
    if (url == NULL && (type == NULL || strcmp(type, "postgres") == 0 ||
                        strcmp(type, "postgresql") == 0)) {
        url_name = bq_env_any_case("DATABASE_URL") != NULL ? "DATABASE_URL" : "POSTGRES_URL";
        url = env_database_url();
    }
    if (type == NULL)
        type = url != NULL ? "postgres" : "memory";
    if (strcmp(type, "postgresql") == 0)
        type = "postgres";
    if (strcmp(type, "postgres") == 0) {
        if (url == NULL || *url == '\0')
            return bq_err_set(err, BQ_EINVAL, "storage type \"postgres\" needs a url (%s or "
                              "DATABASE_URL)", url_option);
    } else if (strcmp(type, "memory") == 0) {
        url = NULL;
        url_name = NULL;
    } else if (strcmp(type, "redis") != 0) {
        return bq_err_set(err, BQ_EINVAL, "storage type '%.40s' is not supported (expected "
                          "\"memory\", \"postgres\" or \"redis\")", type);
    }
    /* redis: the url given, else the scheduler's (bq_storage_choice_redis) */
    out->cfg.type = strcmp(type, "memory") == 0  ? "memory"
                    : strcmp(type, "redis") == 0 ? "redis"
                                                 : "postgres";
    out->url_name = url_name;
    const char *layout = in->layout != NULL ? in->layout : bq_env_any_case("BINDUQ_STORAGE_LAYOUT");
    bq_status st = BQ_OK;
    if (url != NULL && (out->url = bq_strdup(url)) == NULL)
        st = bq_err_set(err, BQ_ENOMEM, "out of memory");
    if (st == BQ_OK && url != NULL && layout != NULL && (out->layout = bq_strdup(layout)) == NULL)
        st = bq_err_set(err, BQ_ENOMEM, "out of memory");
    if (st == BQ_OK && in->schema != NULL && (out->schema = bq_strdup(in->schema)) == NULL)
        st = bq_err_set(err, BQ_ENOMEM, "out of memory");
    if (st == BQ_OK && url != NULL && layout != NULL && strcmp(layout, "bindu") == 0 &&
        out->schema == NULL) {
        const char *did = bq_env_any_case("POSTGRES_DID");
        if (did == NULL)
            did = bq_env_any_case("DID");
        if (did != NULL)
            st = bq_did_schema(did, in->schema_option != NULL ? in->schema_option : "storage_schema",
                            &out->schema, err);
    }
    out->cfg.url = out->url;
    out->cfg.schema = out->schema;
    out->cfg.layout = out->layout;
    return st;
}

bq_status bq_config_storage(const struct bq_client_options *opts, struct bq_storage_choice *out,
                            bq_err *err)
{
    struct bq_storage_request in = {.url_option = "storage_url",
                                    .schema_option = "storage_schema"};
    if (opts != NULL) {
        in.type = opts->storage_type;
        in.url = opts->storage_url;
        in.schema = opts->storage_schema;
    }
    return bq_storage_resolve(&in, out, err);
}

void bq_storage_choice_redis(struct bq_storage_choice *c, const struct bq_config *sched,
                             struct bq_broker_config *bc)
{
    bq_config_broker(sched, bc);
    if (c->cfg.url != NULL) {
        bc->url = c->cfg.url;
        bc->url_source = c->url_name;
    }
    c->cfg.redis = bc;
    c->cfg.queue = sched->queue_name;
}

void bq_storage_choice_free(struct bq_storage_choice *c)
{
    bq_free(c->url);
    bq_free(c->schema);
    bq_free(c->layout);
    memset(c, 0, sizeof *c);
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
    out->feed_max = cfg->events_max;
}
