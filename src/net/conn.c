/*
 * conn.c -- see conn.h.
 */
#include "conn.h"
#include "bulkcap.h"
#include "resp.h"

#include "../core/alloc.h"
#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/err.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct bq_conn {
    int fd;
    bq_tls *tls;     /* NULL: plain socket */
    bool broken;
    const atomic_uint *epoch_src; /* see bq_conn_opts.epoch */
    unsigned epoch;
    redisReader *reader;
    struct bq_resp_scanner scan; /* every byte, before the reader gets it */
    bq_buf out;      /* formatted commands not yet written */
    size_t out_sent; /* bytes of `out` already written */
    double last_used;
    double command_timeout;
    char addr[160];  /* for messages: host:port or socket path, never credentials */
    struct bq_bulkcap *cap; /* NULL: bulk strings of any length are read whole */
};

void bq_conn_cap_bulk(bq_conn *c, size_t max)
{
    if (max == 0) {
        bq_free(c->cap);
        c->cap = NULL;
        return;
    }
    if (c->cap == NULL)
        c->cap = bq_malloc(sizeof *c->cap);
    if (c->cap != NULL)
        bq_bulkcap_init(c->cap, max);
}

/* The scanner sees every byte the reader would; after a reply that breaks a limit or the
 * protocol, the reader gets only the replies that ended before it and the connection is
 * broken (1: stop feeding). -1: the reader is out of memory. */
static int feed_scanned(void *ud, const char *p, size_t n)
{
    bq_conn *c = ud;
    size_t feed = n;
    int rc = 0;
    if (bq_resp_scan(&c->scan, p, n, &feed) == BQ_OK) {
        feed = n;
    } else {
        c->broken = true;
        rc = 1;
    }
    if (feed > 0 && redisReaderFeed(c->reader, p, feed) != REDIS_OK)
        return -1;
    return rc;
}

int bq_conn_fd(const bq_conn *c)
{
    return c->fd;
}

bool bq_conn_broken(const bq_conn *c)
{
    return c->broken || (c->epoch_src != NULL && atomic_load(c->epoch_src) != c->epoch);
}

void bq_conn_mark_broken(bq_conn *c)
{
    c->broken = true;
}

double bq_conn_last_used(const bq_conn *c)
{
    return c->last_used;
}

void bq_conn_close(bq_conn *c)
{
    if (c == NULL)
        return;
    bq_tls_free(c->tls);
    if (c->fd >= 0)
        close(c->fd);
    if (c->reader != NULL)
        redisReaderFree(c->reader);
    bq_buf_free(&c->out);
    bq_free(c->cap);
    bq_free(c);
}

/* Milliseconds until `deadline` for poll(): -1 for none, 0 when passed. */
static int ms_until(double deadline)
{
    if (deadline < 0)
        return -1;
    double left = deadline - bq_now_mono();
    if (left <= 0)
        return 0;
    double ms = ceil(left * 1000.0);
    return ms > 1e9 ? 1000000000 : (int)ms;
}

/* Waits for `events` on c->fd. Returns BQ_OK when ready, BQ_ETIMEDOUT, BQ_EINTR when wakefd
 * fired, BQ_EIO on poll failure. */
static bq_status wait_fd(int fd, short events, double deadline, int wakefd)
{
    for (;;) {
        struct pollfd p[2] = {{fd, events, 0}, {wakefd, POLLIN, 0}};
        int n = poll(p, wakefd >= 0 ? 2 : 1, ms_until(deadline));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return BQ_EIO;
        if (n == 0) {
            if (deadline >= 0 && bq_now_mono() >= deadline)
                return BQ_ETIMEDOUT;
            continue;
        }
        if (wakefd >= 0 && (p[1].revents & POLLIN))
            return BQ_EINTR;
        return BQ_OK;
    }
}

static void set_sockopts(int fd, bool tcp)
{
    int one = 1;
    if (!tcp)
        return;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    int idle = 15, intvl = 5, cnt = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

/* Non-blocking connect to one address, finished within the deadline. Returns the fd or -1
 * with errno set. */
static int connect_addr(const struct sockaddr *sa, socklen_t salen, int family, double deadline)
{
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, sa, salen) == 0)
        return fd;
    if (errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    bq_status st = wait_fd(fd, POLLOUT, deadline, -1);
    if (st != BQ_OK) {
        close(fd);
        errno = st == BQ_ETIMEDOUT ? ETIMEDOUT : EIO;
        return -1;
    }
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0 || soerr != 0) {
        close(fd);
        errno = soerr != 0 ? soerr : EIO;
        return -1;
    }
    return fd;
}

static bq_status connect_tcp(bq_conn *c, const char *host, int port, double deadline,
                             bq_err *err)
{
    char portstr[8];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        bq_status st = (rc == EAI_NONAME || rc == EAI_NODATA) ? BQ_ENOTFOUND : BQ_EIO;
        if (rc == EAI_MEMORY)
            st = BQ_ENOMEM;
        return bq_err_set(err, st, "connect %s: %s", c->addr, gai_strerror(rc));
    }
    int last = ECONNREFUSED;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        int fd = connect_addr(ai->ai_addr, ai->ai_addrlen, ai->ai_family, deadline);
        if (fd >= 0) {
            c->fd = fd;
            set_sockopts(fd, true);
            freeaddrinfo(res);
            return BQ_OK;
        }
        last = errno;
    }
    freeaddrinfo(res);
    return bq_err_set(err, bq_status_from_errno(last), "connect %s: %s", c->addr,
                      last == ETIMEDOUT ? "timed out" : strerror(last));
}

static bq_status connect_unix(bq_conn *c, const char *path, double deadline, bq_err *err)
{
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sun.sun_path)
        return bq_err_set(err, BQ_EINVAL, "connect %s: socket path too long", c->addr);
    memcpy(sun.sun_path, path, strlen(path));
    int fd = connect_addr((struct sockaddr *)&sun, sizeof sun, AF_UNIX, deadline);
    if (fd < 0) {
        int e = errno;
        return bq_err_set(err, bq_status_from_errno(e), "connect %s: %s", c->addr,
                          strerror(e));
    }
    c->fd = fd;
    return BQ_OK;
}

/* AUTH and SELECT (db 0: none), pipelined in one round trip. */
static bq_status handshake(bq_conn *c, const char *user, const char *password, int dbn,
                           double deadline, bq_err *err)
{
    int n = 0;
    bq_status st = BQ_OK;
    if (password != NULL) {
        const char *argv[3] = {"AUTH", user ? user : password, password};
        st = bq_conn_append(c, user ? 3 : 2, argv, NULL, err);
        n++;
    }
    char db[16];
    if (st == BQ_OK && dbn != 0) {
        snprintf(db, sizeof db, "%d", dbn);
        const char *argv[2] = {"SELECT", db};
        st = bq_conn_append(c, 2, argv, NULL, err);
        n++;
    }
    if (st == BQ_OK && n > 0)
        st = bq_conn_flush(c, deadline, -1, err);
    const char *names[2] = {password != NULL ? "AUTH" : "SELECT", "SELECT"};
    bq_status first = BQ_OK;
    bq_err first_err;
    bq_err_clear(&first_err);
    for (int i = 0; st == BQ_OK && i < n; i++) {
        redisReply *r = NULL;
        st = bq_conn_read(c, &r, deadline, -1, err);
        if (st != BQ_OK)
            break;
        if (first == BQ_OK)
            first = bq_reply_check(r, names[i], &first_err);
        freeReplyObject(r);
    }
    if (st == BQ_OK && first != BQ_OK) {
        if (err != NULL)
            *err = first_err;
        st = first;
    }
    if (st != BQ_OK)
        bq_err_prefix(err, c->addr);
    return st;
}

/* ---- Reply limits ------------------------------------------------------------------------ */

/* A positive integer from the environment into *out; 0 when unset; false when it is set to
 * anything else. Read at each connect (rare: connections are pooled), so a change applies to
 * the next connection. */
static bool env_size(const char *name, size_t *out)
{
    *out = 0;
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        return true;
    size_t n = 0;
    for (const char *p = v; *p != '\0'; p++) {
        if (*p < '0' || *p > '9' || n > (SIZE_MAX - 9) / 10)
            return false;
        n = n * 10 + (size_t)(*p - '0');
    }
    *out = n;
    return n > 0;
}

/* The limits of a new connection: the options', else the environment's, else the defaults.
 * BQ_EINVAL when a variable needed is set to something other than a positive integer. */
static bq_status reply_limits(const struct bq_conn_opts *opts, size_t *bytes, size_t *elements,
                              bq_err *err)
{
    size_t env = 0;
    *bytes = opts->max_reply_bytes;
    if (*bytes == 0 && !env_size("BINDUQ_MAX_REPLY_BYTES", &env))
        return bq_err_set(err, BQ_EINVAL, "BINDUQ_MAX_REPLY_BYTES: expected a positive integer");
    if (*bytes == 0)
        *bytes = env > 0 ? env : BQ_MAX_REPLY_BYTES_DEFAULT;
    *elements = opts->max_reply_elements;
    if (*elements == 0 && !env_size("BINDUQ_MAX_REPLY_ELEMENTS", &env))
        return bq_err_set(err, BQ_EINVAL,
                          "BINDUQ_MAX_REPLY_ELEMENTS: expected a positive integer");
    if (*elements == 0)
        *elements = env > 0 ? env : BQ_MAX_REPLY_ELEMENTS_DEFAULT;
    return BQ_OK;
}

static bq_status conn_new(const struct bq_conn_opts *opts, bq_conn **out, bq_err *err)
{
    *out = NULL;
    size_t max_bytes = 0, max_elements = 0;
    bq_status st = reply_limits(opts, &max_bytes, &max_elements, err);
    if (st != BQ_OK)
        return st;
    bq_conn *c = bq_calloc(1, sizeof *c);
    if (c == NULL)
        return bq_err_set(err, BQ_ENOMEM, "connect: out of memory");
    c->fd = -1;
    c->command_timeout = opts->command_timeout > 0 ? opts->command_timeout : 5.0;
    bq_resp_init(&c->scan, max_bytes, max_elements);
    c->reader = redisReaderCreate();
    if (c->reader == NULL) {
        bq_free(c);
        return bq_err_set(err, BQ_ENOMEM, "connect: out of memory");
    }
    *out = c;
    return BQ_OK;
}

/* A TCP connection to host:port, over TLS when `tls`; no handshake yet. */
static bq_status open_tcp(const char *host, int port, bool tls, const struct bq_conn_opts *opts,
                          double deadline, bq_conn **out, bq_err *err)
{
    *out = NULL;
    bq_conn *c = NULL;
    bq_status st = conn_new(opts, &c, err);
    if (st != BQ_OK)
        return st;
    snprintf(c->addr, sizeof c->addr, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    st = connect_tcp(c, host, port, deadline, err);
    if (st == BQ_OK && tls) {
        if (opts->tls == NULL)
            st = bq_err_set(err, BQ_EINVAL, "connect %s: a rediss:// URL needs TLS settings",
                            c->addr);
        else
            st = bq_tls_connect(opts->tls, c->fd, opts->server_name[0] ? opts->server_name : host,
                                c->addr, deadline, &c->tls, err);
    }
    if (st != BQ_OK) {
        bq_conn_close(c);
        return st;
    }
    *out = c;
    return BQ_OK;
}

/* Asks the sentinels of u, in turn, where the master of u->service is, and connects to it
 * (AUTH, SELECT, then ROLE must say "master"). Each sentinel, and then the master, has a
 * connect timeout of its own: one that accepts the connection and never answers (stopped,
 * overloaded) costs that much, and must not use up the time of the next one. */
static bq_status open_sentinel(const struct bq_url *u, const struct bq_conn_opts *opts,
                               double timeout, bq_conn **out, bq_err *err)
{
    bq_status st = BQ_EIO;
    char why[256] = "no sentinel answered"; /* as long as bq_err.msg */
    for (size_t i = 0; i < u->nhosts; i++) {
        bq_conn *s = NULL;
        bq_err e;
        double deadline = bq_now_mono() + timeout;
        st = open_tcp(u->hosts[i].host, u->hosts[i].port, u->tls, opts, deadline, &s, &e);
        if (st == BQ_OK)
            st = handshake(s, NULL, u->sentinel_password, 0, deadline, &e);
        redisReply *r = NULL;
        const char *ask[] = {"SENTINEL", "get-master-addr-by-name", u->service};
        if (st == BQ_OK)
            st = bq_conn_append(s, 3, ask, NULL, &e);
        if (st == BQ_OK)
            st = bq_conn_flush(s, deadline, -1, &e);
        if (st == BQ_OK)
            st = bq_conn_read(s, &r, deadline, -1, &e);
        if (st == BQ_OK)
            st = bq_reply_check(r, "SENTINEL", &e);
        char host[128] = "";
        int port = 0;
        if (st == BQ_OK && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[0]->type == REDIS_REPLY_STRING &&
            r->element[1]->type == REDIS_REPLY_STRING) {
            snprintf(host, sizeof host, "%s", r->element[0]->str);
            port = atoi(r->element[1]->str);
        } else if (st == BQ_OK) {
            st = bq_err_set(&e, BQ_ENOTFOUND, "sentinel %s knows no master named '%.60s'",
                            s->addr, u->service);
        }
        if (r != NULL)
            freeReplyObject(r);
        bq_conn_close(s);
        bq_conn *m = NULL;
        deadline = bq_now_mono() + timeout;
        if (st == BQ_OK)
            st = open_tcp(host, port, u->tls, opts, deadline, &m, &e);
        if (st == BQ_OK)
            st = handshake(m, u->user, u->password, u->db, deadline, &e);
        if (st == BQ_OK && (st = bq_conn_callv(m, &r, &e, "ROLE", NULL)) == BQ_OK) {
            bool master = r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
                          r->element[0]->type == REDIS_REPLY_STRING &&
                          strcmp(r->element[0]->str, "master") == 0;
            freeReplyObject(r);
            if (!master)
                st = bq_err_set(&e, BQ_EIO, "%s, named master of '%.60s' by the sentinels, is "
                                "not a master (a failover in progress?)", m->addr, u->service);
        }
        if (st == BQ_OK) {
            *out = m;
            return BQ_OK;
        }
        bq_conn_close(m);
        snprintf(why, sizeof why, "%s", e.msg);
        if (st == BQ_EAUTH)
            break; /* wrong credentials: asking another sentinel will not help */
    }
    return bq_err_set(err, st, "redis+sentinel: no master for '%.60s': %s", u->service, why);
}

bq_status bq_conn_open(const struct bq_url *u, const struct bq_conn_opts *opts, bq_conn **out,
                       bq_err *err)
{
    *out = NULL;
    if (u->kind == BQ_URL_CLUSTER)
        return bq_err_set(err, BQ_EUNSUPPORTED, "redis+cluster:// URLs are not supported by "
                          "this version of binduq yet");
    double timeout = opts->connect_timeout > 0 ? opts->connect_timeout : 5.0;
    double deadline = bq_now_mono() + timeout;
    /* The epoch before asking the sentinels: a switch announced meanwhile makes this
     * connection stale at once rather than never. */
    unsigned epoch_now = opts->epoch != NULL ? atomic_load(opts->epoch) : 0;
    bq_conn *c = NULL;
    bq_status st;
    if (u->kind == BQ_URL_SENTINEL) {
        st = open_sentinel(u, opts, timeout, &c, err);
    } else if (u->kind == BQ_URL_UNIX) {
        if ((st = conn_new(opts, &c, err)) != BQ_OK)
            return st;
        bq_url_address(u, c->addr, sizeof c->addr);
        st = connect_unix(c, u->path, deadline, err);
        if (st == BQ_OK)
            st = handshake(c, u->user, u->password, u->db, deadline, err);
    } else {
        st = open_tcp(u->hosts[0].host, u->hosts[0].port, u->tls, opts, deadline, &c, err);
        if (st == BQ_OK)
            st = handshake(c, u->user, u->password, u->db, deadline, err);
    }
    if (st != BQ_OK) {
        bq_conn_close(c);
        return st;
    }
    c->last_used = bq_now_mono();
    c->epoch_src = opts->epoch;
    c->epoch = opts->epoch != NULL ? epoch_now : 0;
    *out = c;
    return BQ_OK;
}

bq_status bq_conn_open_node(const struct bq_url *u, size_t node, const char *password,
                            const struct bq_conn_opts *opts, bq_conn **out, bq_err *err)
{
    *out = NULL;
    if (node >= u->nhosts)
        return bq_err_set(err, BQ_EINVAL, "no node %zu in the URL", node);
    double deadline = bq_now_mono() + (opts->connect_timeout > 0 ? opts->connect_timeout : 5.0);
    bq_conn *c = NULL;
    bq_status st = open_tcp(u->hosts[node].host, u->hosts[node].port, u->tls, opts, deadline,
                            &c, err);
    if (st == BQ_OK)
        st = handshake(c, NULL, password, 0, deadline, err);
    if (st != BQ_OK) {
        bq_conn_close(c);
        return st;
    }
    *out = c;
    return BQ_OK;
}

bool bq_conn_tls(const bq_conn *c)
{
    return c->tls != NULL;
}

const char *bq_conn_address(const bq_conn *c)
{
    return c->addr;
}

bool bq_conn_usable(bq_conn *c)
{
    if (bq_conn_broken(c) || c->out.len > c->out_sent)
        return false;
    /* A reply read in the last BQ_CONN_FRESH seconds vouches for the connection: a producer
     * pushing one task at a time pays no extra syscall per push (about 4 us here, a tenth of
     * the round trip). What the peek is for, a connection the server closed while it sat in
     * the pool (a restart, an idle timeout), cannot happen that fast; a CLIENT KILL inside
     * the window fails the next command with a clear error instead. */
    if (bq_now_mono() - c->last_used < BQ_CONN_FRESH)
        return true;
    if (c->tls != NULL) {
        if (bq_tls_idle_ok(c->tls))
            return true;
        c->broken = true;
        return false;
    }
    char b;
    ssize_t n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return true;
    /* EOF, an error, or unsolicited bytes (a desynchronised stream): not usable. */
    c->broken = true;
    return false;
}

/* Appends "<type><n>\r\n", a RESP array or bulk string header. */
static void append_header(bq_buf *b, char type, size_t n)
{
    char tmp[24], *p = tmp + sizeof tmp;
    *--p = '\n';
    *--p = '\r';
    do {
        *--p = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    *--p = type;
    bq_buf_append(b, p, (size_t)(tmp + sizeof tmp - p));
}

bq_status bq_conn_append(bq_conn *c, int argc, const char **argv, const size_t *lens,
                         bq_err *err)
{
    /* The RESP array of bulk strings, written straight into the output buffer: what
     * redisFormatCommandArgv makes, without its allocation and second copy (an ack per task
     * made it a tenth of the dispatcher's work). */
    append_header(&c->out, '*', (size_t)argc);
    for (int i = 0; i < argc; i++) {
        size_t len = lens != NULL ? lens[i] : strlen(argv[i]);
        append_header(&c->out, '$', len);
        bq_buf_append(&c->out, argv[i], len);
        bq_buf_append(&c->out, "\r\n", 2);
    }
    if (c->out.oom) {
        c->broken = true;
        return bq_err_set(err, BQ_ENOMEM, "%s: out of memory", argv[0]);
    }
    return BQ_OK;
}

/* One non-blocking transfer on the connection's transport, plain or TLS: > 0 bytes moved;
 * 0 the peer closed; -1 wait for *want first; -2 an error (*e an errno, or 0 with *why a TLS
 * reason). */
static ssize_t transfer(bq_conn *c, bool out, void *buf, size_t len, short *want, int *e,
                        const char **why)
{
    *e = 0;
    if (c->tls != NULL)
        return out ? bq_tls_write(c->tls, buf, len, want, why)
                   : bq_tls_read(c->tls, buf, len, want, why);
    for (;;) {
        ssize_t n = out ? send(c->fd, buf, len, MSG_NOSIGNAL) : recv(c->fd, buf, len, 0);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            *want = out ? POLLOUT : POLLIN;
            return -1;
        }
        *e = errno;
        return -2;
    }
}

/* After transfer() said -1: waits for the socket. BQ_OK to go on; otherwise the error is
 * set (and the connection broken, unless the wake-up descriptor fired). */
static bq_status wait_io(bq_conn *c, short want, double deadline, int wakefd, const char *what,
                         bq_err *err)
{
    bq_status st = wait_fd(c->fd, want, deadline, wakefd);
    if (st == BQ_OK)
        return BQ_OK;
    if (st == BQ_EINTR)
        return bq_err_set(err, BQ_EINTR, "%s: %s interrupted", c->addr, what);
    c->broken = true;
    return bq_err_set(err, st, "%s: %s %s", c->addr, what,
                      st == BQ_ETIMEDOUT ? "timed out" : "failed");
}

/* A transfer that failed (n is 0 or -2): the connection is broken. */
static bq_status io_failed(bq_conn *c, ssize_t n, int e, const char *why, const char *what,
                           bq_err *err)
{
    c->broken = true;
    if (n == 0)
        return bq_err_set(err, BQ_EIO, "%s: connection closed by the server", c->addr);
    if (e != 0)
        return bq_err_set(err, bq_status_from_errno(e), "%s: %s: %s", c->addr, what,
                          strerror(e));
    return bq_err_set(err, BQ_EIO, "%s: TLS %s: %s", c->addr, what, why);
}

bq_status bq_conn_flush(bq_conn *c, double deadline, int wakefd, bq_err *err)
{
    if (c->broken)
        return bq_err_set(err, BQ_EIO, "%s: connection is broken", c->addr);
    while (c->out_sent < c->out.len) {
        short want = POLLOUT;
        int e;
        const char *why = NULL;
        ssize_t n = transfer(c, true, c->out.p + c->out_sent, c->out.len - c->out_sent, &want,
                             &e, &why);
        if (n > 0) {
            c->out_sent += (size_t)n;
            continue;
        }
        if (n != -1)
            return io_failed(c, n, e, why, "write", err);
        bq_status st = wait_io(c, want, deadline, wakefd, "write", err);
        if (st != BQ_OK)
            return st;
    }
    c->out.len = 0;
    c->out_sent = 0;
    return BQ_OK;
}

bq_status bq_conn_read(bq_conn *c, redisReply **out, double deadline, int wakefd, bq_err *err)
{
    *out = NULL;
    /* Broken by a reply over the limits: the replies that came whole before it are still
     * handed out, then its error, every time. */
    if (c->broken && c->scan.error == BQ_OK)
        return bq_err_set(err, BQ_EIO, "%s: connection is broken", c->addr);
    char buf[65536];
    for (;;) {
        void *reply = NULL;
        if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) {
            c->broken = true;
            return bq_err_set(err, BQ_EPROTO, "%s: bad reply: %s", c->addr,
                              c->reader->errstr);
        }
        if (reply == NULL && c->scan.error == BQ_ETOOBIG)
            return bq_err_set(err, BQ_ETOOBIG, "reply from %s %s", c->addr, c->scan.msg);
        if (reply == NULL && c->scan.error != BQ_OK)
            return bq_err_set(err, BQ_EPROTO, "%s: bad reply: %s", c->addr, c->scan.msg);
        if (reply != NULL) {
            *out = reply;
            c->last_used = bq_now_mono();
            const redisReply *r = reply;
            /* This server stopped being the master (a failover): the connection can still
             * talk, but every new one must find the new master. */
            if (r->type == REDIS_REPLY_ERROR &&
                (strncmp(r->str, "READONLY", 8) == 0 || strncmp(r->str, "UNBLOCKED", 9) == 0 ||
                 strncmp(r->str, "MASTERDOWN", 10) == 0))
                c->broken = true;
            return BQ_OK;
        }
        short want = POLLIN;
        int e;
        const char *why = NULL;
        ssize_t n = transfer(c, false, buf, sizeof buf, &want, &e, &why);
        if (n > 0) {
            /* Bytes go socket -> bulk cap (if any) -> scanner -> reader (feed_scanned). */
            int fed = c->cap != NULL ? bq_bulkcap_feed(c->cap, buf, (size_t)n, feed_scanned, c)
                                     : feed_scanned(c, buf, (size_t)n);
            if (fed < 0) {
                c->broken = true;
                return bq_err_set(err, BQ_ENOMEM, "%s: out of memory reading a reply",
                                  c->addr);
            }
            continue;
        }
        if (n != -1)
            return io_failed(c, n, e, why, "read", err);
        bq_status st = wait_io(c, want, deadline, wakefd, "read", err);
        if (st != BQ_OK)
            return st;
    }
}

bq_status bq_conn_await(bq_conn *c, double until, int wakefd)
{
    if (c->reader->pos < c->reader->len || (c->tls != NULL && bq_tls_pending(c->tls)))
        return BQ_OK;
    return wait_fd(c->fd, POLLIN, until, wakefd);
}

bq_status bq_reply_check(const redisReply *r, const char *cmd, bq_err *err)
{
    if (r == NULL || r->type != REDIS_REPLY_ERROR)
        return BQ_OK;
    bq_status st = BQ_EREDIS;
    if (strncmp(r->str, "NOAUTH", 6) == 0 || strncmp(r->str, "WRONGPASS", 9) == 0 ||
        strncmp(r->str, "ERR invalid password", 20) == 0 ||
        strncmp(r->str, "ERR AUTH", 8) == 0 || strncmp(r->str, "NOPERM", 6) == 0)
        st = BQ_EAUTH;
    return bq_err_set(err, st, "%s: %.*s", cmd, (int)(r->len > 200 ? 200 : r->len), r->str);
}

bq_status bq_conn_call(bq_conn *c, redisReply **out, bq_err *err, int argc, const char **argv,
                       const size_t *lens)
{
    if (out != NULL)
        *out = NULL;
    double deadline = bq_now_mono() + c->command_timeout;
    bq_status st = bq_conn_append(c, argc, argv, lens, err);
    if (st == BQ_OK)
        st = bq_conn_flush(c, deadline, -1, err);
    redisReply *r = NULL;
    if (st == BQ_OK)
        st = bq_conn_read(c, &r, deadline, -1, err);
    if (st == BQ_OK)
        st = bq_reply_check(r, argv[0], err);
    if (st == BQ_OK && out != NULL) {
        *out = r;
        return BQ_OK;
    }
    if (r != NULL)
        freeReplyObject(r);
    return st;
}

bq_status bq_conn_callv(bq_conn *c, redisReply **out, bq_err *err, ...)
{
    const char *argv[16];
    int argc = 0;
    va_list ap;
    va_start(ap, err);
    for (const char *a; argc < 16 && (a = va_arg(ap, const char *)) != NULL;)
        argv[argc++] = a;
    va_end(ap);
    return bq_conn_call(c, out, err, argc, argv, NULL);
}
