/*
 * url.h -- parsing of Redis connection URLs.
 *
 *   redis://[[user]:password@]host[:port][/db][?db=N]          plain TCP, default port 6379
 *   rediss://...                                               the same over TLS
 *   unix://[[user]:password@]/path/to/redis.sock[?db=N]        a unix socket
 *   redis+sentinel://[[user]:password@]h1[:p1],h2[:p2]/master[/db][?sentinel_password=...]
 *                                                              Sentinel, default port 26379
 *   redis+cluster://[[user]:password@]h1[:p1],h2[:p2]          Cluster seed nodes
 *
 * Host may be an IPv6 literal in brackets ([::1]:6379). The user name and password are
 * percent-decoded. A malformed URL is BQ_EINVAL with a message naming the part that is wrong;
 * the message never repeats the password (or anything from the user-info part).
 */
#ifndef BINDUQ_URL_H
#define BINDUQ_URL_H

#include "../binduq.h"

#include <stdbool.h>
#include <stddef.h>

enum bq_url_kind {
    BQ_URL_TCP = 0,
    BQ_URL_UNIX,
    BQ_URL_SENTINEL,
    BQ_URL_CLUSTER,
};

struct bq_hostport {
    char *host; /* owned; no brackets for IPv6 */
    int port;
};

struct bq_url {
    enum bq_url_kind kind;
    bool tls;
    char *user;     /* owned, NULL when absent */
    char *password; /* owned, NULL when absent */
    struct bq_hostport *hosts; /* owned; TCP has one, Sentinel and Cluster one or more */
    size_t nhosts;
    char *path;     /* owned; unix socket path */
    char *service;  /* owned; Sentinel master name */
    char *sentinel_password; /* owned, NULL when absent */
    int db;
};

/* Parses `url` into *out (which the caller later releases with bq_url_free, also after an
 * error). `what` names the source in error messages, e.g. "REDIS_URL". */
bq_status bq_url_parse(const char *url, const char *what, struct bq_url *out, bq_err *err);
void bq_url_free(struct bq_url *u);

/* Copies url into out with the password replaced by "***" (the whole user-info part when it
 * cannot be split), for logs. Always NUL-terminates; truncates to size. */
void bq_url_redact(const char *url, char *out, size_t size);

/* "host:port", "[::1]:port" or the socket path of the first host, for logs and health. */
void bq_url_address(const struct bq_url *u, char *out, size_t size);

#endif
