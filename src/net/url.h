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
 * A user name alone (redis://default@host, as redis-py takes it) sends no AUTH. Query
 * options are those of redis-py's URLs: db, username, password, sentinel_password (Sentinel);
 * socket_timeout, socket_connect_timeout, max_connections, retry_on_timeout, ssl_cert_reqs,
 * ssl_ca_certs, ssl_ca_path, ssl_certfile, ssl_keyfile, which the configuration maps to its
 * own (engine/config.c); and health_check_interval, protocol, client_name, decode_responses,
 * encoding, encoding_errors, socket_keepalive, ssl_check_hostname, ssl_password,
 * single_connection_client, which have no meaning here and are listed in `ignored`. Values
 * are percent-decoded and checked as redis-py checks them; any other option is an error.
 * Host may be an IPv6 literal in brackets ([::1]:6379). The user name and password are
 * percent-decoded. A malformed URL is BQ_EINVAL with a message naming the part that is wrong;
 * the message never repeats the password (or anything from the user-info part).
 *
 * The user-info rule, for every scheme (Redis and PostgreSQL alike): everything between the
 * first "://" and the LAST '@' of the whole string is user-info, and therefore secret.
 * Generated passwords often hold '/', '?', '#' or '@' unencoded; cutting the user-info at
 * the first '/' or '?' (as URL grammars do) would read part of such a password as a host,
 * port, path or query and repeat it in an error. The price: an '@' elsewhere (a query value,
 * a socket path) must be written %40. The value of a URL option named "password" or ending
 * in "password" (sentinel_password, sslpassword) is secret too, and never quoted: errors
 * name the option, not its value.
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
    /* Options mapped by the configuration; < 0 (NULL) when the URL does not give them. */
    double socket_timeout, socket_connect_timeout; /* seconds */
    int max_connections;
    int retry_on_timeout;  /* 0 or 1 */
    int ssl_cert_reqs;     /* 0 none, 1 optional, 2 required */
    char *ssl_ca_certs, *ssl_ca_path, *ssl_certfile, *ssl_keyfile; /* owned */
    char ignored[256];     /* options accepted with no meaning here: "a,b" */
};

/* Parses `url` into *out (which the caller later releases with bq_url_free, also after an
 * error). `what` names the source in error messages, e.g. "REDIS_URL". */
bq_status bq_url_parse(const char *url, const char *what, struct bq_url *out, bq_err *err);
void bq_url_free(struct bq_url *u);

/* Copies url into out for logs and messages, any scheme: the password (the user-info after
 * its first ':') becomes "***"; user-info without a ':' is hidden whole ("***@host"), since
 * redis://secret@host is a password in some clients; a string without "://" but with an '@'
 * loses everything before its last '@'; and the value of every password option (see above)
 * becomes "***". Always NUL-terminates; truncates to size (never in a way that shows more). */
void bq_url_redact(const char *url, char *out, size_t size);

/* The user-info of url by the rule above: sets *start (its offset, just after "://") and
 * *len and returns true if url has "://" and an '@' after it; false otherwise. */
bool bq_url_userinfo(const char *url, size_t *start, size_t *len);

/* True if the URL option named name[0..n) (as written; percent-escapes are decoded first,
 * case ignored) holds a secret: "password" or any name ending in "password". */
bool bq_url_secret_option(const char *name, size_t n);

/* A PostgreSQL URL split for libpq, so that libpq never sees a secret in the text it parses
 * (its parse errors quote that text) and the target named in messages holds none. */
#define BQ_PG_URL_MAX_SECRETS 4
struct bq_pg_url {
    char *url;     /* owned: "postgresql://[user@]host.../db?opts", user percent-encoded again,
                    * without the password and without any password option */
    size_t nsecrets;
    char *keys[BQ_PG_URL_MAX_SECRETS];   /* owned: libpq keywords, "password" first if the
                                          * user-info has one, then each password option */
    char *values[BQ_PG_URL_MAX_SECRETS]; /* owned: their percent-decoded values, same order
                                          * (libpq gives a later keyword precedence, so a
                                          * ?password= option wins over the user-info, as in
                                          * libpq's own parser) */
};

/* Splits a postgresql://, postgres:// or postgresql+driver:// URL ("+driver" dropped, the
 * SQLAlchemy spelling) into *out (release with bq_pg_url_free, also after an error). Errors
 * (BQ_EINVAL, BQ_ENOMEM) are prefixed by `what` and never quote the user-info or a password
 * option's value. Everything else (host, port, database, other options) is left to libpq. */
bq_status bq_pg_url_split(const char *url, const char *what, struct bq_pg_url *out,
                          bq_err *err);
void bq_pg_url_free(struct bq_pg_url *u);

/* "host:port", "[::1]:port" or the socket path of the first host, for logs and health. */
void bq_url_address(const struct bq_url *u, char *out, size_t size);

#endif
