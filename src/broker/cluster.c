/*
 * cluster.c -- the Redis Cluster broker: one Redis broker per master node, and every
 * operation routed to the node that serves its queue's slot.
 *
 * Every key of a queue Q hashes to Q's slot (keys.h), and queues fetched together share a
 * hash tag, so each broker operation touches exactly one slot: routing by the slot of the
 * operation's queue is all a cluster needs. The slot map comes from CLUSTER SLOTS, asked of
 * the seed nodes of the URL (then of the known masters), every range of the reply checked
 * before use (cluster.h); it is refreshed when a node answers MOVED (the slot has a new
 * owner) or a connection to a node fails. While a slot migrates,
 * a node answers ASK or TRYAGAIN for the keys that already moved: the operation is retried
 * after a short pause until the migration ends and the slot's new owner answers. Each retry
 * is of a whole operation, one atomic script or a pipeline on keys of one slot. A push that
 * timed out is never sent again: the node may have applied it, and the caller hears of it
 * as from a single server ("may or may not be queued").
 *
 * Node brokers are created as the map names masters and kept for the broker's life (a node
 * that leaves keeps an idle pool). The map and the node list are guarded by one mutex; node
 * brokers are themselves thread-safe, and only the worker's dispatcher fetches.
 */
#include "broker.h"
#include "cluster.h"
#include "keys.h"

#include "../core/alloc.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/log.h"
#include "../net/conn.h"
#include "../net/url.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define NSLOTS BQ_CLUSTER_NSLOTS
#define MAX_NODES BQ_CLUSTER_MAX_NODES
#define REDIRECT_WINDOW 5.0 /* seconds an operation keeps following redirections */

struct node {
    char host[128];
    int port;
    bq_broker *b; /* owned */
};

struct cluster_broker {
    struct bq_broker base;
    struct bq_broker_config cfg; /* strings below owned */
    char *url_copy, *source_copy;
    struct bq_url url;           /* the seeds, the credentials */
    char userinfo[256];          /* "user:pass@" as written in the URL, or "" */
    pthread_mutex_t mu;
    short slot_node[NSLOTS];     /* index into nodes, -1 unknown */
    struct node nodes[MAX_NODES];
    int nnodes;
    bq_broker *fetching;         /* the node broker the dispatcher fetches from */
};

static struct cluster_broker *cb(bq_broker *b)
{
    return (struct cluster_broker *)b;
}

/* The node broker for host:port, created on first use. Caller holds mu. */
static int node_index(struct cluster_broker *c, const char *host, int port, bq_err *err)
{
    for (int i = 0; i < c->nnodes; i++) {
        if (c->nodes[i].port == port && strcmp(c->nodes[i].host, host) == 0)
            return i;
    }
    if (c->nnodes == MAX_NODES) {
        bq_err_set(err, BQ_EINVAL, "cluster: more than %d nodes", MAX_NODES);
        return -1;
    }
    char url[512];
    snprintf(url, sizeof url, "%s://%s%s%s%s:%d/0", c->url.tls ? "rediss" : "redis", c->userinfo,
             strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", port);
    struct bq_broker_config nc = c->cfg;
    nc.url = url;
    bq_broker *b = NULL;
    nc.orders = NULL;
    if (bq_broker_open_redis(&nc, &b, err) != BQ_OK)
        return -1;
    if (bq_orders_copy(&b->orders, &c->base.orders) != BQ_OK) { /* the queues' orders */
        bq_broker_free(b);
        bq_err_set(err, BQ_ENOMEM, "out of memory");
        return -1;
    }
    struct node *n = &c->nodes[c->nnodes];
    snprintf(n->host, sizeof n->host, "%s", host);
    n->port = port;
    n->b = b;
    return c->nnodes++;
}

/* ---- Reading CLUSTER SLOTS (cluster.h) ----------------------------------------------------- */

/* A host binduq can put in a node URL: letters, digits and ".-_:" (names, IPv4, IPv6), so
 * nothing in it can be read as user-info, a path or a query. */
static bool host_ok(const char *s, size_t len)
{
    if (len >= BQ_CLUSTER_HOST_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-' || ch == '_' || ch == ':'))
            return false;
    }
    return true;
}

/* Checks one range; on success sets *from, *to and the master's host and port. Returns NULL
 * or why the range is malformed. */
static const char *range_of(const redisReply *e, const char *asked, long long *from,
                            long long *to, const char **host, size_t *hlen, int *port)
{
    if (e == NULL || e->type != REDIS_REPLY_ARRAY || e->elements < 3 || e->element == NULL)
        return "a range is not an array of at least 3 elements";
    const redisReply *f = e->element[0], *t = e->element[1], *m = e->element[2];
    if (f == NULL || t == NULL || f->type != REDIS_REPLY_INTEGER ||
        t->type != REDIS_REPLY_INTEGER)
        return "a slot bound is not an integer";
    if (f->integer < 0 || f->integer > t->integer || t->integer >= NSLOTS)
        return "slot bounds outside 0 <= from <= to < 16384";
    if (m == NULL || m->type != REDIS_REPLY_ARRAY || m->elements < 2 || m->element == NULL ||
        m->element[0] == NULL || m->element[1] == NULL)
        return "the master is not an array [host, port, ...]";
    const redisReply *h = m->element[0], *p = m->element[1];
    if (h->type != REDIS_REPLY_STRING || h->str == NULL)
        return "the master's host is not a string";
    if (p->type != REDIS_REPLY_INTEGER || p->integer < 1 || p->integer > 65535)
        return "the master's port is not an integer in 1..65535";
    *from = f->integer;
    *to = t->integer;
    /* An empty host is the node that answered (Redis' "unknown endpoint"). */
    *host = h->len > 0 ? h->str : asked;
    *hlen = h->len > 0 ? h->len : strlen(asked);
    *port = (int)p->integer;
    return NULL;
}

/* Sets n slots from p to v, by doubling copies (a reply may hold thousands of ranges). */
static void fill(short *p, size_t n, short v)
{
    if (n == 0)
        return;
    p[0] = v;
    for (size_t done = 1; done < n; done *= 2)
        memcpy(p + done, p, (n - done < done ? n - done : done) * sizeof *p);
}

size_t bq_cluster_slots_parse(const redisReply *r, const char *asked, struct bq_slot_map *map)
{
    memset(map->slot, 0xff, sizeof map->slot); /* every slot -1 */
    map->nnodes = 0;
    map->ranges = map->dropped = map->first_dropped = 0;
    map->why = NULL;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        map->why = "the reply is not an array";
        return 0;
    }
    for (size_t i = 0; i < r->elements; i++) {
        long long from = 0, to = -1;
        const char *host = NULL;
        size_t hlen = 0;
        int port = 0, idx = -1;
        const char *why = range_of(r->element != NULL ? r->element[i] : NULL, asked, &from, &to,
                                   &host, &hlen, &port);
        if (why == NULL && !host_ok(host, hlen))
            why = "the master's host is not a host name or address";
        for (int n = 0; why == NULL && n < map->nnodes && idx < 0; n++) {
            if (map->node[n].port == port && strlen(map->node[n].host) == hlen &&
                memcmp(map->node[n].host, host, hlen) == 0)
                idx = n;
        }
        if (why == NULL && idx < 0) {
            if (map->nnodes == MAX_NODES) {
                why = "more than 64 masters";
            } else {
                idx = map->nnodes++;
                memcpy(map->node[idx].host, host, hlen);
                map->node[idx].host[hlen] = '\0';
                map->node[idx].port = port;
            }
        }
        if (why != NULL) {
            if (map->dropped++ == 0) {
                map->first_dropped = i;
                map->why = why;
            }
            continue;
        }
        fill(map->slot + from, (size_t)(to - from + 1), (short)idx);
        map->ranges++;
    }
    return map->dropped;
}

/* ---- The slot map ---------------------------------------------------------------------------- */

/* Reads the slot map from one node. A reply with malformed ranges keeps the good ones and
 * logs one line; a reply with no good range leaves the map as it was and fails (the caller
 * asks the next node). Caller holds mu. */
static bq_status slots_from(struct cluster_broker *c, const char *host, int port, bq_err *err)
{
    struct bq_url u = c->url;
    struct bq_hostport hp = {(char *)host, port};
    u.kind = BQ_URL_TCP;
    u.hosts = &hp;
    u.nhosts = 1;
    u.db = 0;
    struct bq_conn_opts o = {.connect_timeout = c->cfg.connect_timeout,
                             .command_timeout = c->cfg.command_timeout};
    /* TLS for the map query would need a context of its own: ask a node broker instead. */
    if (c->url.tls)
        return bq_err_set(err, BQ_EUNSUPPORTED, "cluster over TLS is not supported yet");
    struct bq_slot_map *map = bq_malloc(sizeof *map);
    if (map == NULL)
        return bq_err_set(err, BQ_ENOMEM, "CLUSTER SLOTS: out of memory");
    bq_conn *conn = NULL;
    bq_status st = bq_conn_open(&u, &o, &conn, err);
    redisReply *r = NULL;
    if (st == BQ_OK)
        st = bq_conn_callv(conn, &r, err, "CLUSTER", "SLOTS", NULL);
    char addr[160] = "";
    if (conn != NULL)
        snprintf(addr, sizeof addr, "%s", bq_conn_address(conn));
    if (st == BQ_OK && bq_cluster_slots_parse(r, host, map) > 0) {
        char dropped[24], first[24];
        snprintf(dropped, sizeof dropped, "%zu", map->dropped);
        snprintf(first, sizeof first, "%zu", map->first_dropped);
        bq_log(BQ_LOG_WARN, "cluster_slots_dropped", "node", addr, "#dropped", dropped,
               "#first", first, "reason", map->why, NULL);
    }
    if (st == BQ_OK && map->ranges == 0)
        st = bq_err_set(err, BQ_EPROTO, "CLUSTER SLOTS from %s: no usable range (%s)", addr,
                        map->why != NULL ? map->why : "the reply is empty");
    /* Node brokers for the masters named, then the map in terms of them. */
    short to_node[MAX_NODES];
    for (int n = 0; st == BQ_OK && n < map->nnodes; n++) {
        int idx = node_index(c, map->node[n].host, map->node[n].port, err);
        if (idx < 0)
            st = err ? err->code : BQ_EIO;
        to_node[n] = (short)idx;
    }
    if (st == BQ_OK) {
        for (int i = 0; i < NSLOTS; i++)
            c->slot_node[i] = map->slot[i] >= 0 ? to_node[map->slot[i]] : (short)-1;
    }
    if (r != NULL)
        freeReplyObject(r);
    bq_conn_close(conn);
    bq_free(map);
    return st;
}

/* Refreshes the map from the seeds, then from the known nodes. Caller holds mu. */
static bq_status refresh(struct cluster_broker *c, bq_err *err)
{
    bq_status st = BQ_EIO;
    for (size_t i = 0; i < c->url.nhosts; i++) {
        if ((st = slots_from(c, c->url.hosts[i].host, c->url.hosts[i].port, err)) == BQ_OK)
            return BQ_OK;
    }
    for (int i = 0; i < c->nnodes; i++) {
        if ((st = slots_from(c, c->nodes[i].host, c->nodes[i].port, err)) == BQ_OK)
            return BQ_OK;
    }
    return st;
}

/* The node broker serving `queue`, refreshing the map when the slot is unknown. */
static bq_broker *route(struct cluster_broker *c, const char *queue, bq_err *err)
{
    unsigned slot = bq_key_slot(queue);
    pthread_mutex_lock(&c->mu);
    if (c->slot_node[slot] < 0 && refresh(c, err) != BQ_OK) {
        pthread_mutex_unlock(&c->mu);
        return NULL;
    }
    bq_broker *b = c->slot_node[slot] >= 0 ? c->nodes[c->slot_node[slot]].b : NULL;
    pthread_mutex_unlock(&c->mu);
    if (b == NULL)
        bq_err_set(err, BQ_EIO, "cluster: no node serves slot %u (of queue '%.100s')", slot,
                   queue);
    return b;
}

enum redirect { R_NONE = 0, R_MOVED, R_WAIT };

/* What an error says about the slot's owner. A write that timed out may have been applied
 * (the server may still be running it): it is never sent again, the caller hears of it as
 * from a single server. */
static enum redirect redirect_of(bq_status st, const bq_err *err, bool write)
{
    if (st == BQ_OK || (write && st == BQ_ETIMEDOUT))
        return R_NONE;
    if (strstr(err->msg, "MOVED ") != NULL)
        return R_MOVED;
    if (strstr(err->msg, "ASK ") != NULL || strstr(err->msg, "TRYAGAIN") != NULL ||
        strstr(err->msg, "CLUSTERDOWN") != NULL)
        return R_WAIT;
    if (st == BQ_EIO || st == BQ_ECONNREFUSED || st == BQ_ETIMEDOUT)
        return R_MOVED; /* the node may have gone: ask for the map again */
    return R_NONE;
}

/* Runs CALL (an expression using `b`, setting `st`) on the node of `queue`, following
 * redirections for up to REDIRECT_WINDOW seconds; ROUTED_WRITE for an operation that a
 * second sending would apply twice (redirect_of). */
#define ROUTED(c, queue, err, CALL) ROUTED_AS(c, queue, err, false, CALL)
#define ROUTED_WRITE(c, queue, err, CALL) ROUTED_AS(c, queue, err, true, CALL)
#define ROUTED_AS(c, queue, err, write, CALL)                                                 \
    do {                                                                                      \
        double until_ = bq_now_mono() + REDIRECT_WINDOW;                                      \
        for (int try_ = 0;; try_++) {                                                         \
            bq_broker *b = route((c), (queue), (err));                                        \
            if (b == NULL) {                                                                  \
                st = (err) != NULL ? (err)->code : BQ_EIO;                                    \
                break;                                                                        \
            }                                                                                 \
            bq_err e_ = {.code = BQ_OK};                                                      \
            bq_err *saved_ = (err);                                                           \
            bq_err *errp_ = saved_ != NULL ? saved_ : &e_;                                    \
            (void)errp_;                                                                      \
            CALL;                                                                             \
            enum redirect r_ = redirect_of(st, errp_, (write));                               \
            if (r_ == R_NONE || bq_now_mono() > until_)                                       \
                break;                                                                        \
            if (r_ == R_MOVED) {                                                              \
                pthread_mutex_lock(&(c)->mu);                                                 \
                bq_err re_;                                                                   \
                refresh((c), &re_);                                                           \
                pthread_mutex_unlock(&(c)->mu);                                               \
            }                                                                                 \
            bq_sleep(r_ == R_WAIT || try_ > 0 ? 0.02 : 0);                                    \
        }                                                                                     \
    } while (0)

/* ---- Operations ----------------------------------------------------------------------------- */

static bq_status c_push(bq_broker *base, const char *queue, const struct bq_slice *msgs,
                        size_t n, size_t *pushed, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED_WRITE(c, queue, err, st = b->ops->push(b, queue, msgs, n, pushed, errp_));
    return st;
}

static bq_status c_push_unique(bq_broker *base, const char *queue, const struct bq_slice *msgs,
                               const char *const *keys, size_t n, double ttl, bool *pushed,
                               bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED_WRITE(c, queue, err,
                 st = b->ops->push_unique(b, queue, msgs, keys, n, ttl, pushed, errp_));
    return st;
}

static bq_status c_push_delayed(bq_broker *base, const char *queue, const struct bq_delayed *ops,
                                size_t n, double ttl, bool *pushed, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED_WRITE(c, queue, err,
                 st = b->ops->push_delayed(b, queue, ops, n, ttl, pushed, errp_));
    return st;
}

static bq_status c_cron(bq_broker *base, const char *queue, const char *name,
                        enum bq_cron_action action, struct bq_slice decl,
                        const struct bq_tick *ticks, size_t n, struct bq_cron_res *res,
                        bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, queue, err, st = b->ops->cron(b, queue, name, action, decl, ticks, n, res, errp_));
    return st;
}

static bq_status c_fetch(bq_broker *base, const struct bq_lessee *who,
                         const struct bq_fetch_req *req, struct bq_fetch_res *res,
                         struct bq_batch *out, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    /* A redirected fetch is tried again here (a migrating slot answers ASK or TRYAGAIN for
     * a while), but only while it took nothing: a fetch that took messages and then failed
     * is reported, so the worker checks its in-flight lists (worker_dispatch.c). Acks sent
     * twice are harmless (the second LREM finds nothing). */
    double until = bq_now_mono() + REDIRECT_WINDOW;
    size_t before = out->n;
    bq_err e = {.code = BQ_OK};
    bq_err *ep = err != NULL ? err : &e;
    for (;;) {
        bq_broker *b = route(c, who->queues[0], ep);
        if (b == NULL)
            return ep->code;
        pthread_mutex_lock(&c->mu);
        c->fetching = b;
        pthread_mutex_unlock(&c->mu);
        bq_status st = b->ops->fetch(b, who, req, res, out, ep);
        enum redirect r = redirect_of(st, ep, false);
        if (r == R_NONE || out->n != before || bq_now_mono() > until)
            return st;
        if (r == R_MOVED) {
            pthread_mutex_lock(&c->mu);
            bq_err re;
            refresh(c, &re);
            pthread_mutex_unlock(&c->mu);
        }
        bq_sleep(0.02);
    }
}

static void c_interrupt(bq_broker *base)
{
    struct cluster_broker *c = cb(base);
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < c->nnodes; i++)
        c->nodes[i].b->ops->interrupt(c->nodes[i].b);
    pthread_mutex_unlock(&c->mu);
}

static bq_status c_ack(bq_broker *base, const struct bq_lessee *who, const struct bq_msg *msgs,
                       size_t n, size_t *acked, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, who->queues[0], err, st = b->ops->ack(b, who, msgs, n, acked, errp_));
    return st;
}

static bq_status c_retry(bq_broker *base, const struct bq_lessee *who,
                         const struct bq_msg *leased, struct bq_slice next, double delay,
                         bool *held, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, who->queues[0], err, st = b->ops->retry(b, who, leased, next, delay, held, errp_));
    return st;
}

static bq_status c_bury(bq_broker *base, const struct bq_lessee *who, const struct bq_msg *leased,
                        struct bq_slice entry, bool *held, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, who->queues[0], err, st = b->ops->bury(b, who, leased, entry, held, errp_));
    return st;
}

static bq_status c_held(bq_broker *base, const struct bq_lessee *who, struct bq_batch *out,
                        bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, who->queues[0], err, (bq_batch_clear(out), st = b->ops->held(b, who, out, errp_)));
    return st;
}

static bq_status c_handback(bq_broker *base, const struct bq_lessee *who,
                            const struct bq_msg *msgs, size_t n, size_t *count, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, who->queues[0], err, st = b->ops->handback(b, who, msgs, n, count, errp_));
    return st;
}

static bq_status c_rate_limit(bq_broker *base, const struct bq_lessee *who, long limit,
                              double period, struct bq_admission *reqs, size_t n, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, who->queues[0], err,
           st = b->ops->rate_limit(b, who, limit, period, reqs, n, errp_));
    return st;
}

static bq_status c_promote(bq_broker *base, const char *queue, size_t *moved, double *next_due,
                           bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, queue, err, st = b->ops->promote(b, queue, moved, next_due, errp_));
    return st;
}

static bq_status c_controls(bq_broker *base, const char *queue, double interval, size_t window,
                            struct bq_batch *out, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, queue, err, st = b->ops->controls(b, queue, interval, window, out, errp_));
    return st;
}

static bq_status c_heartbeat(bq_broker *base, const struct bq_lessee *who, double lease,
                             struct bq_batch *dead, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, who->queues[0], err, st = b->ops->heartbeat(b, who, lease, dead, errp_));
    return st;
}

static bq_status c_report(bq_broker *base, const struct bq_lessee *who, struct bq_slice info,
                          double ttl, const long long *done, const long long *failed, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, who->queues[0], err, st = b->ops->report(b, who, info, ttl, done, failed, errp_));
    return st;
}

static bq_status c_reap(bq_broker *base, const char *queue, const char *dead_id,
                        long long *recovered, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, queue, err, st = b->ops->reap(b, queue, dead_id, recovered, errp_));
    return st;
}

static bq_status c_unregister(bq_broker *base, const struct bq_lessee *who, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, who->queues[0], err, st = b->ops->unregister(b, who, errp_));
    return st;
}

static bq_status c_length(bq_broker *base, const char *queue, enum bq_list which,
                          long long *out, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, queue, err, st = b->admin->length(b, queue, which, out, errp_));
    return st;
}

static bq_status c_range(bq_broker *base, const char *queue, enum bq_list which, long start,
                         long stop, struct bq_batch *out, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, queue, err,
           (bq_batch_clear(out), st = b->admin->range(b, queue, which, start, stop, out, errp_)));
    return st;
}

static bq_status c_dlq_requeue(bq_broker *base, const char *queue, struct bq_slice entry,
                               bool *done, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, queue, err, st = b->admin->dlq_requeue(b, queue, entry, done, errp_));
    return st;
}

static bq_status c_dlq_remove(bq_broker *base, const char *queue, struct bq_slice entry,
                              bool *done, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, queue, err, st = b->admin->dlq_remove(b, queue, entry, done, errp_));
    return st;
}

static bq_status c_dlq_purge(bq_broker *base, const char *queue, long long *count, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, queue, err, st = b->admin->dlq_purge(b, queue, count, errp_));
    return st;
}

static bq_status c_publish(bq_broker *base, const char *queue, struct bq_slice msg,
                           long long *receivers, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, queue, err, st = b->ops->publish(b, queue, msg, receivers, errp_));
    return st;
}

/* Cluster PUBLISH reaches subscribers on every node: listening on the queue's node is
 * enough. A failure returns, and the engine listens again (on the node of the new map). */
static bq_status c_listen(bq_broker *base, const char *queue,
                          void (*cb_)(void *ud, const char *msg, size_t len),
                          void (*ready)(void *ud), void *ud, int stopfd, bq_err *err)
{
    bq_broker *b = route(cb(base), queue, err);
    if (b == NULL)
        return err != NULL ? err->code : BQ_EIO;
    return b->ops->listen(b, queue, cb_, ready, ud, stopfd, err);
}

/* Task events: the queue's stream lives on the queue's node. A reader's connection follows
 * the node a read is routed to (the Redis broker reopens it when that changes). */
static bq_status c_feed_add(bq_broker *base, const char *queue, const struct bq_slice *entries,
                            size_t n, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, queue, err, st = b->ops->feed_add(b, queue, entries, n, errp_));
    return st;
}

static bq_status c_feed_read(bq_broker *base, struct bq_feed_reader **rd, const char *queue,
                             const char *after, size_t count, double timeout,
                             struct bq_feed_out *out, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, queue, err,
           st = b->ops->feed_read(b, rd, queue, after, count, timeout, out, errp_));
    return st;
}

static bq_status c_feed_last(bq_broker *base, const char *queue, char *id, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, queue, err, st = b->ops->feed_last(b, queue, id, errp_));
    return st;
}

/* A reader belongs to no node in particular: any node broker's functions free or wake it. */
static bq_broker *any_node(struct cluster_broker *c)
{
    pthread_mutex_lock(&c->mu);
    bq_broker *b = c->nnodes > 0 ? c->nodes[0].b : NULL;
    pthread_mutex_unlock(&c->mu);
    return b;
}

static void c_feed_wake(bq_broker *base, struct bq_feed_reader *rd)
{
    bq_broker *b = any_node(cb(base));
    if (b != NULL && rd != NULL)
        b->ops->feed_wake(b, rd);
}

static void c_feed_close(bq_broker *base, struct bq_feed_reader *rd)
{
    bq_broker *b = any_node(cb(base));
    if (b != NULL && rd != NULL)
        b->ops->feed_close(b, rd);
}

static bq_status c_node(bq_broker *base, char *role, size_t rsize, char *addr, size_t asize,
                        bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_broker *b = route(c, "bindu:tasks", err);
    if (b == NULL)
        return err != NULL ? err->code : BQ_EIO;
    return b->admin->node(b, role, rsize, addr, asize, err);
}

static bq_status c_command(bq_broker *base, const char *queue, int argc, const char **argv,
                           const size_t *lens, void **out, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_status st;
    ROUTED(c, queue, err, st = b->admin->command(b, queue, argc, argv, lens, out, errp_));
    return st;
}

static bq_status c_ping(bq_broker *base, double *rtt, bq_err *err)
{
    struct cluster_broker *c = cb(base);
    bq_broker *b = route(c, "bindu:tasks", err);
    if (b == NULL)
        return err != NULL ? err->code : BQ_EIO;
    return b->ops->ping(b, rtt, err);
}

static bool c_pool_stats(bq_broker *base, struct bq_pool_stats *out)
{
    struct cluster_broker *c = cb(base);
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < c->nnodes; i++) {
        struct bq_pool_stats s;
        if (c->nodes[i].b->admin->pool_stats(c->nodes[i].b, &s)) {
            out->borrows += s.borrows;
            out->waits += s.waits;
            out->timeouts += s.timeouts;
            out->opened += s.opened;
            out->discarded += s.discarded;
            out->total += s.total;
            out->idle += s.idle;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return true;
}

static void c_free(bq_broker *base)
{
    struct cluster_broker *c = cb(base);
    for (int i = 0; i < c->nnodes; i++)
        bq_broker_free(c->nodes[i].b);
    bq_url_free(&c->url);
    bq_free(c->url_copy);
    bq_free(c->source_copy);
    pthread_mutex_destroy(&c->mu);
    bq_free(c);
}

static const struct bq_broker_ops cluster_ops = {
    .push = c_push,
    .push_unique = c_push_unique,
    .push_delayed = c_push_delayed,
    .cron = c_cron,
    .fetch = c_fetch,
    .interrupt = c_interrupt,
    .ack = c_ack,
    .retry = c_retry,
    .bury = c_bury,
    .held = c_held,
    .handback = c_handback,
    .rate_limit = c_rate_limit,
    .controls = c_controls,
    .promote = c_promote,
    .heartbeat = c_heartbeat,
    .report = c_report,
    .reap = c_reap,
    .unregister = c_unregister,
    .publish = c_publish,
    .listen = c_listen,
    .feed_add = c_feed_add,
    .feed_read = c_feed_read,
    .feed_last = c_feed_last,
    .feed_wake = c_feed_wake,
    .feed_close = c_feed_close,
    .ping = c_ping,
    .free = c_free,
};

static const struct bq_broker_admin_ops cluster_admin_ops = {
    .length = c_length,
    .range = c_range,
    .dlq_requeue = c_dlq_requeue,
    .dlq_remove = c_dlq_remove,
    .dlq_purge = c_dlq_purge,
    .node = c_node,
    .command = c_command,
    .pool_stats = c_pool_stats,
};

bq_status bq_broker_open_cluster(const struct bq_broker_config *cfg, bq_broker **out,
                                 bq_err *err)
{
    *out = NULL;
    struct cluster_broker *c = bq_calloc(1, sizeof *c);
    if (c == NULL)
        return bq_err_set(err, BQ_ENOMEM, "out of memory");
    pthread_mutex_init(&c->mu, NULL);
    c->base.ops = &cluster_ops;
    c->base.admin = &cluster_admin_ops;
    c->base.kind = "redis";
    for (int i = 0; i < NSLOTS; i++)
        c->slot_node[i] = -1;
    bq_status st = bq_url_parse(cfg->url, cfg->url_source, &c->url, err);
    if (st == BQ_OK && c->url.db != 0)
        st = bq_err_set(err, BQ_EINVAL, "%s: Redis Cluster has only database 0",
                        cfg->url_source ? cfg->url_source : "URL");
    c->url_copy = bq_strdup(cfg->url);
    c->source_copy = bq_strdup(cfg->url_source ? cfg->url_source : "URL");
    if (st == BQ_OK && (c->url_copy == NULL || c->source_copy == NULL))
        st = bq_err_set(err, BQ_ENOMEM, "out of memory");
    if (st != BQ_OK) {
        c_free(&c->base);
        return st;
    }
    /* The user-info part as written (still percent-encoded), for the node URLs; found by
     * the parser's own rule (up to the last '@'), so a password with a '/' is kept. */
    size_t uistart, uilen;
    if (bq_url_userinfo(c->url_copy, &uistart, &uilen) && uilen + 2 < sizeof c->userinfo)
        snprintf(c->userinfo, sizeof c->userinfo, "%.*s@", (int)uilen, c->url_copy + uistart);
    c->cfg = *cfg;
    c->cfg.url = c->url_copy;
    c->cfg.url_source = c->source_copy;
    c->cfg.tls.ca_file = c->cfg.tls.ca_dir = c->cfg.tls.cert_file = c->cfg.tls.key_file = NULL;
    c->cfg.tls_server_name = NULL;
    snprintf(c->base.address, sizeof c->base.address, "cluster:");
    bq_url_address(&c->url, c->base.address + 8, sizeof c->base.address - 8);
    /* Connections are lazy, as for one server: the map is read on the first operation. */
    *out = &c->base;
    return BQ_OK;
}
