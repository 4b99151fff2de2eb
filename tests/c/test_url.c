/*
 * test_url.c -- the URL parser: a table of good URLs with what they mean, a table of bad ones
 * with the part the error must name, redaction, and allocation failures.
 */
#include "check.h"

#include "../../src/core/alloc.h"
#include "../../src/net/url.h"

struct good {
    const char *url;
    enum bq_url_kind kind;
    int tls;
    const char *user, *password, *host;
    int port, db;
    const char *path, *service;
    size_t nhosts;
};

static const struct good goods[] = {
    {"redis://localhost:6379/0", BQ_URL_TCP, 0, NULL, NULL, "localhost", 6379, 0, NULL, NULL, 1},
    {"redis://127.0.0.1", BQ_URL_TCP, 0, NULL, NULL, "127.0.0.1", 6379, 0, NULL, NULL, 1},
    {"redis://", BQ_URL_TCP, 0, NULL, NULL, "localhost", 6379, 0, NULL, NULL, 1},
    {"redis://h:7000/15", BQ_URL_TCP, 0, NULL, NULL, "h", 7000, 15, NULL, NULL, 1},
    {"redis://:secret@h:1/2", BQ_URL_TCP, 0, NULL, "secret", "h", 1, 2, NULL, NULL, 1},
    {"redis://alice:s3cr3t@h/3", BQ_URL_TCP, 0, "alice", "s3cr3t", "h", 6379, 3, NULL, NULL, 1},
    {"redis://al%69ce:p%40ss%3Aw%2Fd@h", BQ_URL_TCP, 0, "alice", "p@ss:w/d", "h", 6379, 0, NULL,
     NULL, 1},
    {"redis://:p@ss@h:6380", BQ_URL_TCP, 0, NULL, "p@ss", "h", 6380, 0, NULL, NULL, 1},
    {"redis://[::1]:6390/1", BQ_URL_TCP, 0, NULL, NULL, "::1", 6390, 1, NULL, NULL, 1},
    {"redis://h/?db=4", BQ_URL_TCP, 0, NULL, NULL, "h", 6379, 4, NULL, NULL, 1},
    {"rediss://:pw@redis.example.com:6380/0", BQ_URL_TCP, 1, NULL, "pw", "redis.example.com",
     6380, 0, NULL, NULL, 1},
    {"unix:///tmp/redis.sock", BQ_URL_UNIX, 0, NULL, NULL, NULL, 0, 0, "/tmp/redis.sock", NULL,
     0},
    {"unix://:pw@/var/run/r.sock?db=3", BQ_URL_UNIX, 0, NULL, "pw", NULL, 0, 3,
     "/var/run/r.sock", NULL, 0},
    {"redis+sentinel://s1:26379,s2,s3:26381/mymaster/2", BQ_URL_SENTINEL, 0, NULL, NULL, "s1",
     26379, 2, NULL, "mymaster", 3},
    {"redis+sentinel://s1/mymaster", BQ_URL_SENTINEL, 0, NULL, NULL, "s1", 26379, 0, NULL,
     "mymaster", 1},
    {"redis+cluster://n1:7000,n2:7001", BQ_URL_CLUSTER, 0, NULL, NULL, "n1", 7000, 0, NULL, NULL,
     2},
};

TEST(parses_good_urls)
{
    for (size_t i = 0; i < sizeof goods / sizeof goods[0]; i++) {
        const struct good *g = &goods[i];
        struct bq_url u;
        bq_err err;
        bq_status st = bq_url_parse(g->url, "REDIS_URL", &u, &err);
        if (st != BQ_OK)
            printf("  %s: %s\n", g->url, err.msg);
        CHECK_INT(st, BQ_OK);
        if (st != BQ_OK) {
            bq_url_free(&u);
            continue;
        }
        CHECK_INT(u.kind, g->kind);
        CHECK_INT(u.tls, g->tls);
        CHECK_STR(u.user, g->user);
        CHECK_STR(u.password, g->password);
        CHECK_INT(u.db, g->db);
        CHECK_STR(u.path, g->path);
        CHECK_STR(u.service, g->service);
        CHECK_INT(u.nhosts, g->nhosts);
        if (g->host != NULL && u.nhosts > 0) {
            CHECK_STR(u.hosts[0].host, g->host);
            CHECK_INT(u.hosts[0].port, g->port);
        }
        bq_url_free(&u);
    }
}

/* redis-py's URL forms (Bindu's client library): a user name alone, and its query options,
 * mapped (the configuration takes them up) or accepted and listed as ignored. */
TEST(redis_py_forms)
{
    struct bq_url u;
    bq_err err;
    CHECK_INT(bq_url_parse("redis://default@h:6380/2", NULL, &u, &err), BQ_OK);
    CHECK_STR(u.user, "default");
    CHECK(u.password == NULL); /* no AUTH is sent */
    CHECK_INT(u.db, 2);
    bq_url_free(&u);
    CHECK_INT(bq_url_parse("rediss://h/0?socket_timeout=2.5&socket_connect_timeout=1&"
                           "max_connections=20&retry_on_timeout=no&ssl_cert_reqs=none&"
                           "ssl_ca_certs=%2Fetc%2Fca.pem&ssl_certfile=c.pem&ssl_keyfile=k.pem&"
                           "ssl_ca_path=/etc/certs&health_check_interval=30&protocol=3&"
                           "client_name=agent&decode_responses=True&encoding=utf-8&"
                           "ssl_check_hostname=false&socket_keepalive=1&db=3", NULL, &u, &err),
              BQ_OK);
    CHECK(u.socket_timeout == 2.5 && u.socket_connect_timeout == 1);
    CHECK_INT(u.max_connections, 20);
    CHECK_INT(u.retry_on_timeout, 0);
    CHECK_INT(u.ssl_cert_reqs, 0);
    CHECK_STR(u.ssl_ca_certs, "/etc/ca.pem");
    CHECK_STR(u.ssl_certfile, "c.pem");
    CHECK_STR(u.ssl_keyfile, "k.pem");
    CHECK_STR(u.ssl_ca_path, "/etc/certs");
    CHECK_INT(u.db, 3);
    CHECK_STR(u.ignored, "health_check_interval,protocol,client_name,decode_responses,encoding,"
                         "ssl_check_hostname,socket_keepalive");
    bq_url_free(&u);
    /* as redis-py: the query's user and password when the user-info gives none */
    CHECK_INT(bq_url_parse("unix:///run/redis.sock?db=1&password=s%40cret&username=bob", NULL,
                           &u, &err), BQ_OK);
    CHECK_STR(u.user, "bob");
    CHECK_STR(u.password, "s@cret");
    bq_url_free(&u);
    CHECK_INT(bq_url_parse("redis://h?retry_on_timeout=yes", NULL, &u, &err), BQ_OK);
    CHECK_INT(u.retry_on_timeout, 1);
    CHECK_INT(u.ssl_cert_reqs, -1);
    CHECK(u.socket_timeout < 0);
    bq_url_free(&u);
}

TEST(sentinel_hosts_and_password)
{
    struct bq_url u;
    CHECK_INT(bq_url_parse("redis+sentinel://:pw@a:1,b:2/m?sentinel_password=sp%21", NULL, &u,
                           NULL), BQ_OK);
    CHECK_INT(u.nhosts, 2);
    CHECK_STR(u.hosts[1].host, "b");
    CHECK_INT(u.hosts[1].port, 2);
    CHECK_STR(u.sentinel_password, "sp!");
    CHECK_STR(u.password, "pw");
    bq_url_free(&u);
}

struct bad {
    const char *url;
    const char *expect; /* the message must contain this */
};

static const struct bad bads[] = {
    {"", "empty URL"},
    {"localhost:6379", "not a URL"},
    {"http://localhost:6379", "unknown scheme 'http'"},
    {"redis://h:99999/0", "bad port '99999'"},
    {"redis://h:0", "bad port '0'"},
    {"redis://h:abc", "bad port 'abc'"},
    {"redis://h:6379/x", "bad database number 'x'"},
    {"redis://h:6379/1/2", "bad database number '1/2'"},
    {"redis://h?db=-1", "bad database number '-1'"},
    {"redis://h?colour=red", "unknown URL option 'colour'"},
    {"redis://h?socket_timeout=soon", "socket_timeout must be a number of seconds (got 'soon')"},
    {"redis://h?socket_connect_timeout=-1", "socket_connect_timeout must be a number of seconds"},
    {"redis://h?max_connections=0", "max_connections must be a whole number from 1 to 100000"},
    {"redis://h?health_check_interval=often", "health_check_interval must be a whole number"},
    {"rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs must be none, optional or required"},
    {"redis://h?db", "URL option 'db' has no value"},
    {"redis://bad host:1", "bad host name 'bad host'"},
    {"redis://[::1:6379", "unterminated IPv6 address"},
    {"redis://[zz]:1", "bad IPv6 address"},
    {"redis://a,b:1", "several hosts"},
    {"redis://:pa%zzss@h", "bad percent-escape in the password"},
    {"redis://u%4:p@h", "bad percent-escape in the user name"},
    {"unix://relative.sock", "absolute socket path"},
    {"redis+sentinel:///mymaster", "no hosts given"},
    {"redis+sentinel://s1:26379", "missing the master name"},
    {"redis+sentinel://s1,,s2/m", "empty host"},
    {"redis+cluster://n1:7000/0", "no database path"},
};

TEST(rejects_bad_urls_naming_the_part)
{
    for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
        struct bq_url u;
        bq_err err;
        bq_status st = bq_url_parse(bads[i].url, "REDIS_URL", &u, &err);
        CHECK_INT(st, BQ_EINVAL);
        if (st == BQ_EINVAL) {
            CHECK_CONTAINS(err.msg, bads[i].expect);
            CHECK_CONTAINS(err.msg, "REDIS_URL");
        }
        bq_url_free(&u);
    }
}

TEST(errors_never_show_the_password)
{
    const char *urls[] = {"redis://:hunter2%zz@h", "redis://u:hunter2@h:99999",
                          "redis://u:hunter2@h/x", "redis://u:hunter2@bad host"};
    for (size_t i = 0; i < 4; i++) {
        struct bq_url u;
        bq_err err;
        CHECK_INT(bq_url_parse(urls[i], "REDIS_URL", &u, &err), BQ_EINVAL);
        CHECK_NOT_CONTAINS(err.msg, "hunter2");
        bq_url_free(&u);
    }
}

TEST(redacts_passwords)
{
    char out[256];
    bq_url_redact("redis://alice:s3cret@h:1/0", out, sizeof out);
    CHECK_STR(out, "redis://alice:***@h:1/0");
    bq_url_redact("redis://:s3cret@h", out, sizeof out);
    CHECK_STR(out, "redis://:***@h");
    bq_url_redact("redis://h:1/0", out, sizeof out);
    CHECK_STR(out, "redis://h:1/0");
    bq_url_redact("redis://:a@b@h/0", out, sizeof out);
    CHECK_STR(out, "redis://:***@h/0");
    bq_url_redact("unix://:pw@/tmp/r.sock", out, sizeof out);
    CHECK_STR(out, "unix://:***@/tmp/r.sock");
    bq_url_redact("redis+sentinel://:pw@s1/m?sentinel_password=zz&x=1", out, sizeof out);
    CHECK_STR(out, "redis+sentinel://:***@s1/m?sentinel_password=***&x=1");
    bq_url_redact("redis+sentinel://s1/m?sentinel_password=zz", out, sizeof out);
    CHECK_STR(out, "redis+sentinel://s1/m?sentinel_password=***");
    char tiny[8];
    bq_url_redact("redis://:secretpassword@h", tiny, sizeof tiny);
    CHECK_NOT_CONTAINS(tiny, "secret");
}

/* ---- Issue 16: secrets in URLs ------------------------------------------------------------ */

/* The pieces of the passwords used below: none may appear in any error or redacted URL. */
static const char *const secrets[] = {"Zx9", "Qp+Lw8", "se%zzcret", "zzcret", "hunter2"};

static void check_no_secret(const char *text)
{
    for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++)
        CHECK_NOT_CONTAINS(text, secrets[i]);
}

TEST(user_info_runs_to_the_last_at)
{
    /* A generated password with an unencoded '/', '?', '#' or '@' is read as a password. */
    static const struct {
        const char *url, *user, *password, *host, *path;
        int port, db;
    } cases[] = {
        {"redis://default:Zx9/Qp+Lw8@host", "default", "Zx9/Qp+Lw8", "host", NULL, 6379, 0},
        {"redis://default:Zx9/Qp+Lw8@host:7000/3", "default", "Zx9/Qp+Lw8", "host", NULL, 7000,
         3},
        {"redis://:Zx9?Qp+Lw8@h/1", NULL, "Zx9?Qp+Lw8", "h", NULL, 6379, 1},
        {"rediss://u:Zx9#Qp@Lw8@h:6380?db=2", "u", "Zx9#Qp@Lw8", "h", NULL, 6380, 2},
        {"unix://:Zx9/Qp+Lw8@/tmp/r.sock?db=4", NULL, "Zx9/Qp+Lw8", NULL, "/tmp/r.sock", 0, 4},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct bq_url u;
        bq_err err;
        bq_status st = bq_url_parse(cases[i].url, "REDIS_URL", &u, &err);
        CHECK_INT(st, BQ_OK);
        if (st != BQ_OK) {
            check_no_secret(err.msg);
            bq_url_free(&u);
            continue;
        }
        CHECK_STR(u.user, cases[i].user);
        CHECK_STR(u.password, cases[i].password);
        CHECK_STR(u.path, cases[i].path);
        CHECK_INT(u.db, cases[i].db);
        if (cases[i].host != NULL) {
            CHECK_INT(u.nhosts, 1);
            CHECK_STR(u.hosts[0].host, cases[i].host);
            CHECK_INT(u.hosts[0].port, cases[i].port);
        }
        bq_url_free(&u);
    }
}

TEST(errors_name_the_part_but_never_quote_a_secret)
{
    static const struct bad cases[] = {
        {"redis://default:Zx9/Qp+Lw8@host:abc", "bad port 'abc'"},
        {"redis://default:Zx9/Qp+Lw8@host/x", "bad database number 'x'"},
        {"redis://u:Zx9#Qp@Lw8@bad host", "bad host name 'bad host'"},
        {"redis://Zx9/Qp+Lw8@host:abc", "bad port 'abc'"},
        {"redis://:se%zzcret@h", "bad percent-escape in the password"},
        {"redis://se%zzcret:x@h", "bad percent-escape in the user name"},
        {"redis+sentinel://s1/m?sentinel_password=se%zzcret", "bad percent-escape in "
                                                              "sentinel_password"},
        {"redis://h?password=se%zzcret", "bad percent-escape in the password"},
        {"redis://h?db=1&password=hunter2&db=x", "bad database number 'x'"},
        {"redis:/:Zx9/Qp+Lw8@h://x", "unknown scheme (expected"},
        {"redis://:hunter2@[::1", "unterminated IPv6 address"},
        {"redis+cluster://:Zx9/Qp+Lw8@n1:7000/0", "no database path"},
        {"unix://:Zx9?Qp+Lw8@relative.sock", "absolute socket path"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct bq_url u;
        bq_err err;
        CHECK_INT(bq_url_parse(cases[i].url, "REDIS_URL", &u, &err), BQ_EINVAL);
        CHECK_CONTAINS(err.msg, cases[i].expect);
        check_no_secret(err.msg);
        bq_url_free(&u);
    }
}

TEST(redaction_hides_the_user_info_and_password_options)
{
    static const struct {
        const char *url, *want;
    } cases[] = {
        {"redis://default:Zx9/Qp+Lw8@host", "redis://default:***@host"},
        {"rediss://default:Zx9?Qp+Lw8@host:6380/2", "rediss://default:***@host:6380/2"},
        {"postgresql://app:Zx9/Qp+Lw8@db/bindu", "postgresql://app:***@db/bindu"},
        {"postgres://app:Zx9#Qp@Lw8@db:5433/bindu?sslmode=require",
         "postgres://app:***@db:5433/bindu?sslmode=require"},
        {"postgresql://db/bindu?password=se%zzcret", "postgresql://db/bindu?password=***"},
        {"postgresql://db/b?sslmode=require&pass%77ord=hunter2&sslpassword=Zx9&application_name=a",
         "postgresql://db/b?sslmode=require&pass%77ord=***&sslpassword=***&application_name=a"},
        {"redis+sentinel://s1/m?sentinel_password=se%zzcret&db=1",
         "redis+sentinel://s1/m?sentinel_password=***&db=1"},
        {"redis://Zx9/Qp+Lw8@host", "redis://***@host"},
        {"unix://:Zx9?Qp+Lw8@/tmp/r.sock", "unix://:***@/tmp/r.sock"},
        {"redis://:hunter2?password=Zx9@h/0", "redis://:***@h/0"},
        {"app:Zx9/Qp+Lw8@db/bindu", "***@db/bindu"},
        {"postgresql://db/bindu", "postgresql://db/bindu"},
        {"x?a=://h/d?sslpassword=Zx9", "x?a=://h/d?sslpassword=***"},
    };
    char out[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bq_url_redact(cases[i].url, out, sizeof out);
        CHECK_STR(out, cases[i].want);
        check_no_secret(out);
        /* Truncated at every length, it shows no more. */
        for (size_t n = 1; n < strlen(cases[i].url) + 2; n++) {
            char small[256];
            bq_url_redact(cases[i].url, small, n);
            check_no_secret(small);
            CHECK(strlen(small) < n);
        }
    }
}

TEST(postgresql_urls_reach_libpq_without_secrets)
{
    static const struct {
        const char *url, *libpq;
        size_t n;
        const char *k0, *v0, *k1, *v1;
    } cases[] = {
        {"postgresql://app:Zx9/Qp+Lw8@db/bindu", "postgresql://app@db/bindu", 1, "password",
         "Zx9/Qp+Lw8", NULL, NULL},
        {"postgresql+asyncpg://a%40b:p%21w@h:5/d?sslmode=require&password=x%21&application_name=z",
         "postgresql://a%40b@h:5/d?sslmode=require&application_name=z", 2, "password", "p!w",
         "password", "x!"},
        {"postgres://h/d?sslpassword=Zx9", "postgres://h/d", 1, "sslpassword", "Zx9", NULL, NULL},
        {"postgresql://me@h/d", "postgresql://me@h/d", 0, NULL, NULL, NULL, NULL},
        {"postgresql://:hunter2@h/d", "postgresql://h/d", 1, "password", "hunter2", NULL, NULL},
        {"postgresql://h", "postgresql://h", 0, NULL, NULL, NULL, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct bq_pg_url u;
        bq_err err;
        bq_status st = bq_pg_url_split(cases[i].url, "DATABASE_URL", &u, &err);
        CHECK_INT(st, BQ_OK);
        if (st == BQ_OK) {
            CHECK_STR(u.url, cases[i].libpq);
            CHECK_INT(u.nsecrets, cases[i].n);
            if (u.nsecrets > 0) {
                CHECK_STR(u.keys[0], cases[i].k0);
                CHECK_STR(u.values[0], cases[i].v0);
            }
            if (u.nsecrets > 1) {
                CHECK_STR(u.keys[1], cases[i].k1);
                CHECK_STR(u.values[1], cases[i].v1);
            }
            check_no_secret(u.url);
        }
        bq_pg_url_free(&u);
    }
    static const struct bad pg_bads[] = {
        {"postgresql://db/bindu?password=se%zzcret", "bad percent-escape in the value of the "
                                                     "'password' option"},
        {"postgresql://app:se%zzcret@db/bindu", "bad percent-escape in the password"},
        {"postgresql://se%zzcret:x@db/bindu", "bad percent-escape in the user name"},
        {"mysql://u:hunter2@h/db", "unsupported scheme 'mysql'"},
        {"postgresql+://u:hunter2@h/db", "unsupported scheme 'postgresql+'"},
        {"u:hunter2@h/db", "expected postgresql://"},
        {"po$tgres:hunter2@h://db", "unsupported scheme (supported"},
        {"postgresql://h/d?password=1&password=2&password=3&password=4&password=5",
         "more than 4 passwords"},
    };
    for (size_t i = 0; i < sizeof pg_bads / sizeof pg_bads[0]; i++) {
        struct bq_pg_url u;
        bq_err err;
        CHECK_INT(bq_pg_url_split(pg_bads[i].url, "DATABASE_URL", &u, &err), BQ_EINVAL);
        CHECK_CONTAINS(err.msg, pg_bads[i].expect);
        CHECK_CONTAINS(err.msg, "DATABASE_URL");
        check_no_secret(err.msg);
        bq_pg_url_free(&u);
    }
}

TEST(secret_options)
{
    CHECK(bq_url_secret_option("password", 8));
    CHECK(bq_url_secret_option("sentinel_password", 17));
    CHECK(bq_url_secret_option("sslpassword", 11));
    CHECK(bq_url_secret_option("PassWord", 8));
    CHECK(bq_url_secret_option("pass%77ord", 10));
    CHECK(bq_url_secret_option("%70%61%73%73%77%6f%72%64", 24));
    CHECK(!bq_url_secret_option("db", 2));
    CHECK(!bq_url_secret_option("passwords", 9));
    CHECK(!bq_url_secret_option("password", 7));
    CHECK(!bq_url_secret_option("pass%7", 6));
}

TEST(pg_split_allocation_failures_are_clean)
{
    int saw_ok = 0;
    for (long n = 0; n < 40 && !saw_ok; n++) {
        struct bq_pg_url u;
        bq_err err;
        bq_alloc_fail_after(n);
        bq_status st = bq_pg_url_split("postgresql://u:p@h/d?password=x&sslpassword=y", NULL,
                                       &u, &err);
        bq_alloc_fail_after(-1);
        CHECK(st == BQ_OK || st == BQ_ENOMEM);
        saw_ok = st == BQ_OK;
        bq_pg_url_free(&u);
    }
    CHECK(saw_ok);
}

TEST(address)
{
    struct bq_url u;
    char out[64];
    CHECK_INT(bq_url_parse("redis://[::1]:7000", NULL, &u, NULL), BQ_OK);
    bq_url_address(&u, out, sizeof out);
    CHECK_STR(out, "[::1]:7000");
    bq_url_free(&u);
    CHECK_INT(bq_url_parse("unix:///tmp/x.sock", NULL, &u, NULL), BQ_OK);
    bq_url_address(&u, out, sizeof out);
    CHECK_STR(out, "/tmp/x.sock");
    bq_url_free(&u);
}

TEST(allocation_failures_are_clean)
{
    /* Fail the 1st, 2nd, ... allocation of a parse: each must end in ENOMEM with nothing
     * leaked (AddressSanitizer's leak check verifies the latter at exit). */
    int saw_ok = 0;
    for (long n = 0; n < 40 && !saw_ok; n++) {
        struct bq_url u;
        bq_err err;
        bq_alloc_fail_after(n);
        bq_status st = bq_url_parse("redis+sentinel://u:p@a:1,b:2/m/1?sentinel_password=x",
                                    NULL, &u, &err);
        bq_alloc_fail_after(-1);
        CHECK(st == BQ_OK || st == BQ_ENOMEM);
        saw_ok = st == BQ_OK;
        bq_url_free(&u);
    }
    CHECK(saw_ok);
}

int main(void)
{
    RUN(parses_good_urls);
    RUN(redis_py_forms);
    RUN(sentinel_hosts_and_password);
    RUN(rejects_bad_urls_naming_the_part);
    RUN(errors_never_show_the_password);
    RUN(redacts_passwords);
    RUN(user_info_runs_to_the_last_at);
    RUN(errors_name_the_part_but_never_quote_a_secret);
    RUN(redaction_hides_the_user_info_and_password_options);
    RUN(postgresql_urls_reach_libpq_without_secrets);
    RUN(secret_options);
    RUN(pg_split_allocation_failures_are_clean);
    RUN(address);
    RUN(allocation_failures_are_clean);
    return check_report("test_url");
}
