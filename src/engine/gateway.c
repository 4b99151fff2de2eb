/*
 * gateway.c -- see gateway.h.
 *
 * A connection's life (struct gw_conn, libmicrohttpd's per-connection pointer):
 *   BODY      the request's body arrives (bounded: a Content-Length over max_body is
 *             answered 413 before any of it is read; a chunked body that passes it closes
 *             the connection);
 *   QUEUED    complete: queued for bq_gateway_next, the connection suspended;
 *   ANSWERED  an answer came (bq_gateway_reply): the connection is resumed and libmicrohttpd
 *             calls the access handler again, which sends it;
 *   STREAM    a stream was opened (bq_gateway_stream): likewise, with a response whose
 *             reader takes what bq_gateway_send appended, suspending the connection while
 *             there is none, until bq_gateway_end;
 *   SENT      handed to libmicrohttpd; the completed callback frees the record.
 * Everything a record holds is guarded by the gateway's mutex; `live` finds a record by its
 * request's id (linear: what is live is what waits for an answer or streams).
 */
#include "gateway.h"

#include "../core/alloc.h"
#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/log.h"
#include "../net/mhdapi.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define STREAM_MAX (1u << 20) /* unsent bytes of a stream past which the next event ends it */

enum phase { PH_BODY = 0, PH_QUEUED, PH_ANSWERED, PH_STREAM, PH_SENT };

struct gw_conn {
    bq_gateway *g;
    struct MHD_Connection *c;
    enum phase phase;
    uint64_t id;
    bool refused, suspended, taken, ended, streaming;
    bq_buf body;
    struct bq_gateway_request req; /* filled when queued; its strings move to the taker */
    struct gw_conn *next;          /* in the queue */
    /* the answer */
    unsigned status;
    char *ctype;
    bq_buf answer;
    char **hnames, **hvalues;
    int nh;
    /* a stream: what was sent and not yet read out */
    bq_buf out;
    size_t out_at;
};

struct bq_gateway {
    struct MHD_Daemon *d;
    int port;
    size_t max_body;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct gw_conn *qhead, *qtail;
    struct gw_conn **live;
    size_t nlive, caplive;
    uint64_t next_id;
    bool stopping;
    /* task events (bq_gateway_follow): notes waiting for the consumer, and the follower */
    struct gw_note *nhead, *ntail;
    size_t nnotes;
    bq_broker *fbroker;
    struct bq_feed_reader *frd; /* the follower's reader once it has one (guarded by mu) */
    char fqueue[256];
    pthread_t fthread;
    bool following;
    atomic_bool fstop;
    int nfd; /* -1, or an eventfd readable while requests or events wait (bq_gateway_fd) */
};

struct gw_note {
    char *json;
    size_t len;
    struct gw_note *next;
};

#define NOTES_MAX 10000 /* notes the consumer has not taken: older ones are dropped */

/* Something waits for the consumer: its eventfd, if it asked for one, says so. Under mu. */
static void notify(bq_gateway *g)
{
    if (g->nfd >= 0) {
        uint64_t one = 1;
        ssize_t k = write(g->nfd, &one, sizeof one);
        (void)k;
    }
}

/* ---- records ----------------------------------------------------------------------------- */

static void req_clear(struct bq_gateway_request *r)
{
    bq_free(r->path);
    bq_free(r->body);
    bq_free(r->authorization);
    bq_free(r->content_type);
    bq_free(r->accept);
    bq_free(r->last_event_id);
    bq_free(r->host);
    bq_free(r->origin);
    memset(r, 0, sizeof *r);
}

void bq_gateway_request_free(struct bq_gateway_request *r)
{
    if (r != NULL)
        req_clear(r);
}

static void conn_free(struct gw_conn *k)
{
    req_clear(&k->req);
    bq_buf_free(&k->body);
    bq_buf_free(&k->answer);
    bq_buf_free(&k->out);
    bq_free(k->ctype);
    for (int i = 0; i < k->nh; i++) {
        bq_free(k->hnames[i]);
        bq_free(k->hvalues[i]);
    }
    bq_free(k->hnames);
    bq_free(k->hvalues);
    bq_free(k);
}

static bool live_add(bq_gateway *g, struct gw_conn *k)
{
    if (g->nlive == g->caplive) {
        size_t cap = g->caplive ? g->caplive * 2 : 64;
        struct gw_conn **n = bq_realloc(g->live, cap * sizeof *n);
        if (n == NULL)
            return false;
        g->live = n;
        g->caplive = cap;
    }
    g->live[g->nlive++] = k;
    return true;
}

static void live_remove(bq_gateway *g, struct gw_conn *k)
{
    for (size_t i = 0; i < g->nlive; i++) {
        if (g->live[i] == k) {
            g->live[i] = g->live[--g->nlive];
            return;
        }
    }
}

static struct gw_conn *live_find(bq_gateway *g, uint64_t id)
{
    for (size_t i = 0; i < g->nlive; i++)
        if (g->live[i]->id == id)
            return g->live[i];
    return NULL;
}

/* Resumes k's connection if it is suspended (g->mu held). */
static void wake(struct gw_conn *k)
{
    if (k->suspended) {
        k->suspended = false;
        bq_mhd.MHD_resume_connection(k->c);
    }
}

static char *header_dup(struct MHD_Connection *c, const char *name)
{
    const char *v = bq_mhd.MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
    return v != NULL ? bq_strdup(v) : NULL;
}

/* ---- libmicrohttpd's side (its thread) --------------------------------------------------- */

static enum MHD_Result plain(struct MHD_Connection *c, unsigned status, const char *text)
{
    struct MHD_Response *r = bq_mhd.MHD_create_response_from_buffer(
        strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    if (r == NULL)
        return MHD_NO;
    bq_mhd.MHD_add_response_header(r, "Content-Type", "text/plain; charset=utf-8");
    enum MHD_Result ret = bq_mhd.MHD_queue_response(c, status, r);
    bq_mhd.MHD_destroy_response(r);
    return ret;
}

/* A body over max_body, known from its Content-Length before any of it is read: 413 at once,
 * queued from the first call, so libmicrohttpd sends no "100 Continue", reads none of the
 * body and closes the connection after the answer (what the client sent after the headers
 * cannot be told from a next request). */
static enum MHD_Result too_large(struct MHD_Connection *c)
{
    static const char text[] = "request body too large\n";
    struct MHD_Response *r = bq_mhd.MHD_create_response_from_buffer(
        sizeof text - 1, (void *)text, MHD_RESPMEM_PERSISTENT);
    if (r == NULL)
        return MHD_NO;
    bq_mhd.MHD_add_response_header(r, "Content-Type", "text/plain; charset=utf-8");
    bq_mhd.MHD_add_response_header(r, "Connection", "close");
    enum MHD_Result ret = bq_mhd.MHD_queue_response(c, MHD_HTTP_CONTENT_TOO_LARGE, r);
    bq_mhd.MHD_destroy_response(r);
    return ret;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct gw_conn *k = cls;
    bq_gateway *g = k->g;
    pthread_mutex_lock(&g->mu);
    if (k->out.len > k->out_at) {
        size_t n = k->out.len - k->out_at;
        if (n > max)
            n = max;
        memcpy(buf, k->out.p + k->out_at, n);
        k->out_at += n;
        if (k->out_at == k->out.len)
            k->out.len = k->out_at = 0;
        pthread_mutex_unlock(&g->mu);
        return (ssize_t)n;
    }
    if (k->ended || g->stopping) {
        pthread_mutex_unlock(&g->mu);
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    k->suspended = true; /* until bq_gateway_send or _end */
    bq_mhd.MHD_suspend_connection(k->c);
    pthread_mutex_unlock(&g->mu);
    return 0;
}

/* Hands k's answer to libmicrohttpd. Called without the gateway's mutex (libmicrohttpd locks a
 * response while it reads a stream, and stream_read takes the gateway's then: never the
 * other way round); once k is ANSWERED or STREAM nobody else changes what is read here. */
static enum MHD_Result send_answer(struct gw_conn *k, struct MHD_Connection *c, bool stream)
{
    struct MHD_Response *r;
    if (stream) {
        r = bq_mhd.MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, k,
                                                     NULL);
    } else {
        r = bq_mhd.MHD_create_response_from_buffer(k->answer.len,
                                                   k->answer.p ? k->answer.p : (char *)"",
                                                   MHD_RESPMEM_MUST_COPY);
    }
    if (r == NULL)
        return MHD_NO;
    bq_mhd.MHD_add_response_header(r, "Content-Type",
                                   k->ctype ? k->ctype : "application/octet-stream");
    if (stream) {
        bool cache_control = false; /* the answerer's own, if it gave one */
        for (int i = 0; i < k->nh; i++)
            cache_control = cache_control || strcasecmp(k->hnames[i], "Cache-Control") == 0;
        if (!cache_control)
            bq_mhd.MHD_add_response_header(r, "Cache-Control", "no-cache");
        bq_mhd.MHD_add_response_header(r, "X-Accel-Buffering", "no");
    }
    for (int i = 0; i < k->nh; i++)
        bq_mhd.MHD_add_response_header(r, k->hnames[i], k->hvalues[i]);
    enum MHD_Result ret = bq_mhd.MHD_queue_response(c, k->status, r);
    bq_mhd.MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **state)
{
    (void)version;
    bq_gateway *g = cls;
    struct gw_conn *k = *state;
    if (k == NULL) {
        k = bq_calloc(1, sizeof *k);
        if (k == NULL)
            return MHD_NO;
        k->g = g;
        k->c = c;
        const char *cl = bq_mhd.MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                            "Content-Length");
        *state = k;
        if (cl != NULL && strtoull(cl, NULL, 10) > g->max_body) {
            k->refused = true;
            return too_large(c);
        }
        return MHD_YES;
    }
    if (k->refused) { /* answered 413 already: nothing more is read */
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        /* A body without a length (chunked) that passes the limit: libmicrohttpd takes no
         * answer while a body arrives, so the connection is closed rather than read on. */
        if (k->body.len + *upload_size > g->max_body)
            return MHD_NO;
        bq_buf_append(&k->body, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    pthread_mutex_lock(&g->mu);
    enum MHD_Result ret = MHD_YES;
    switch (k->phase) {
    case PH_BODY:
        if (k->body.oom) {
            pthread_mutex_unlock(&g->mu);
            return plain(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        }
        if (g->stopping) {
            pthread_mutex_unlock(&g->mu);
            return plain(c, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down\n");
        }
        k->id = ++g->next_id;
        k->req.id = k->id;
        snprintf(k->req.method, sizeof k->req.method, "%s", method);
        k->req.path = bq_strdup(url);
        k->req.body_len = k->body.len;
        k->req.body = bq_buf_detach(&k->body, NULL);
        if (k->req.body == NULL)
            k->req.body = bq_strdup("");
        k->req.authorization = header_dup(c, "Authorization");
        k->req.content_type = header_dup(c, "Content-Type");
        k->req.accept = header_dup(c, "Accept");
        k->req.last_event_id = header_dup(c, "Last-Event-ID");
        k->req.host = header_dup(c, "Host");
        k->req.origin = header_dup(c, "Origin");
        const union MHD_ConnectionInfo *ci =
            bq_mhd.MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (ci != NULL && ci->client_addr != NULL) {
            const struct sockaddr *sa = ci->client_addr;
            if (sa->sa_family == AF_INET)
                inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr,
                          k->req.peer, sizeof k->req.peer);
            else if (sa->sa_family == AF_INET6)
                inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr,
                          k->req.peer, sizeof k->req.peer);
        }
        if (k->req.path == NULL || k->req.body == NULL || !live_add(g, k)) {
            pthread_mutex_unlock(&g->mu);
            return plain(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        }
        k->phase = PH_QUEUED;
        if (g->qtail != NULL)
            g->qtail->next = k;
        else
            g->qhead = k;
        g->qtail = k;
        k->suspended = true;
        bq_mhd.MHD_suspend_connection(c);
        pthread_cond_signal(&g->cv);
        notify(g);
        break;
    case PH_QUEUED: /* woken without an answer (a stop): say so */
        pthread_mutex_unlock(&g->mu);
        return plain(c, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down\n");
    case PH_ANSWERED:
    case PH_STREAM: {
        bool stream = k->phase == PH_STREAM;
        k->phase = PH_SENT;
        pthread_mutex_unlock(&g->mu);
        return send_answer(k, c, stream);
    }
    case PH_SENT:
        break;
    }
    pthread_mutex_unlock(&g->mu);
    return ret;
}

static void completed_cb(void *cls, struct MHD_Connection *c, void **state,
                         enum MHD_RequestTerminationCode toe)
{
    (void)c, (void)toe;
    bq_gateway *g = cls;
    struct gw_conn *k = *state;
    if (k == NULL)
        return;
    *state = NULL;
    pthread_mutex_lock(&g->mu);
    live_remove(g, k);
    if (k->phase == PH_QUEUED && !k->taken) { /* still queued: unlink it */
        struct gw_conn **pp = &g->qhead, *prev = NULL;
        while (*pp != NULL && *pp != k) {
            prev = *pp;
            pp = &(*pp)->next;
        }
        if (*pp == k) {
            *pp = k->next;
            if (g->qtail == k)
                g->qtail = prev;
        }
    }
    pthread_mutex_unlock(&g->mu);
    conn_free(k);
}

/* ---- the consumer's side ----------------------------------------------------------------- */

int bq_gateway_fd(bq_gateway *g)
{
    pthread_mutex_lock(&g->mu);
    if (g->nfd < 0) {
        g->nfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (g->nfd >= 0 && (g->qhead != NULL || g->nhead != NULL || g->stopping))
            notify(g);
    }
    int fd = g->nfd;
    pthread_mutex_unlock(&g->mu);
    return fd;
}

int bq_gateway_next(bq_gateway *g, double timeout, struct bq_gateway_request *out)
{
    memset(out, 0, sizeof *out);
    double until = bq_now_mono() + (timeout > 0 ? timeout : 0);
    pthread_mutex_lock(&g->mu);
    while (g->qhead == NULL && g->nhead == NULL && !g->stopping) {
        double left = until - bq_now_mono();
        if (left <= 0)
            break;
        bq_cond_wait_for(&g->cv, &g->mu, left);
    }
    if (!g->stopping && g->nhead != NULL) { /* a task event */
        struct gw_note *n = g->nhead;
        g->nhead = n->next;
        if (g->nhead == NULL)
            g->ntail = NULL;
        g->nnotes--;
        pthread_mutex_unlock(&g->mu);
        snprintf(out->method, sizeof out->method, "EVENT");
        out->body = n->json;
        out->body_len = n->len;
        bq_free(n);
        return 1;
    }
    if (g->stopping || g->qhead == NULL) {
        bool stop = g->stopping;
        if (!stop && g->nfd >= 0) { /* nothing waits: the eventfd is not readable until more
                                     * comes (notify, under mu like this) */
            uint64_t v;
            ssize_t k = read(g->nfd, &v, sizeof v);
            (void)k;
        }
        pthread_mutex_unlock(&g->mu);
        return stop ? -1 : 0;
    }
    struct gw_conn *k = g->qhead;
    g->qhead = k->next;
    if (g->qhead == NULL)
        g->qtail = NULL;
    k->next = NULL;
    k->taken = true;
    *out = k->req; /* the strings move to the caller */
    memset(&k->req, 0, sizeof k->req);
    pthread_mutex_unlock(&g->mu);
    return 1;
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? bq_strdup(s) : NULL;
}

/* Copies the extra headers of an answer into k (under the mutex); on out of memory, those
 * copied so far. */
static void set_headers(struct gw_conn *k, const char *const *names, const char *const *values,
                        int nheaders)
{
    if (nheaders <= 0)
        return;
    k->hnames = bq_calloc((size_t)nheaders, sizeof *k->hnames);
    k->hvalues = bq_calloc((size_t)nheaders, sizeof *k->hvalues);
    for (int i = 0; k->hnames && k->hvalues && i < nheaders; i++) {
        k->hnames[i] = dup_or_null(names[i]);
        k->hvalues[i] = dup_or_null(values[i]);
        if (k->hnames[i] == NULL || k->hvalues[i] == NULL) {
            bq_free(k->hnames[i]);
            bq_free(k->hvalues[i]);
            break;
        }
        k->nh = i + 1;
    }
}

bool bq_gateway_reply(bq_gateway *g, uint64_t id, unsigned status, const char *content_type,
                      const char *body, size_t len, const char *const *names,
                      const char *const *values, int nheaders)
{
    pthread_mutex_lock(&g->mu);
    struct gw_conn *k = live_find(g, id);
    if (k == NULL || k->phase != PH_QUEUED) {
        pthread_mutex_unlock(&g->mu);
        return false;
    }
    k->status = status;
    k->ctype = dup_or_null(content_type);
    bq_buf_append(&k->answer, body, len);
    set_headers(k, names, values, nheaders);
    if (k->answer.oom) { /* the client gets a 500 rather than a cut answer */
        bq_buf_free(&k->answer);
        bq_buf_puts(&k->answer, "out of memory\n");
        k->status = MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
    k->phase = PH_ANSWERED;
    wake(k);
    pthread_mutex_unlock(&g->mu);
    return true;
}

bool bq_gateway_stream(bq_gateway *g, uint64_t id, const char *content_type,
                       const char *const *names, const char *const *values, int nheaders)
{
    pthread_mutex_lock(&g->mu);
    struct gw_conn *k = live_find(g, id);
    bool ok = k != NULL && k->phase == PH_QUEUED;
    if (ok) {
        k->status = MHD_HTTP_OK;
        k->ctype = dup_or_null(content_type);
        set_headers(k, names, values, nheaders);
        k->phase = PH_STREAM;
        k->streaming = true;
        wake(k);
    }
    pthread_mutex_unlock(&g->mu);
    return ok;
}

bool bq_gateway_send(bq_gateway *g, uint64_t id, const char *data, size_t len)
{
    pthread_mutex_lock(&g->mu);
    struct gw_conn *k = live_find(g, id);
    bool ok = k != NULL && k->streaming && !k->ended;
    /* Only what waits counts: an event is taken whatever its size when the reader keeps up
     * (the request's size bounds it, and JSON's escapes can double that), so the backlog is
     * at most STREAM_MAX and one event. */
    if (ok && k->out.len - k->out_at > STREAM_MAX) {
        k->ended = true; /* a reader that does not read: the stream ends */
        ok = false;
    } else if (ok) {
        bq_buf_append(&k->out, data, len);
        ok = !k->out.oom;
    }
    if (k != NULL)
        wake(k);
    pthread_mutex_unlock(&g->mu);
    return ok;
}

void bq_gateway_end(bq_gateway *g, uint64_t id)
{
    pthread_mutex_lock(&g->mu);
    struct gw_conn *k = live_find(g, id);
    if (k != NULL) {
        k->ended = true;
        wake(k);
    }
    pthread_mutex_unlock(&g->mu);
}

/* ---- task events ------------------------------------------------------------------------- */

static void note_add(bq_gateway *g, const char *json, size_t len)
{
    struct gw_note *n = bq_calloc(1, sizeof *n);
    if (n == NULL || (n->json = bq_malloc(len + 1)) == NULL) {
        bq_free(n);
        return;
    }
    memcpy(n->json, json, len);
    n->json[len] = '\0';
    n->len = len;
    pthread_mutex_lock(&g->mu);
    if (g->nnotes >= NOTES_MAX) { /* a consumer that does not keep up: the oldest goes */
        struct gw_note *old = g->nhead;
        g->nhead = old->next;
        if (g->nhead == NULL)
            g->ntail = NULL;
        g->nnotes--;
        bq_free(old->json);
        bq_free(old);
    }
    if (g->ntail != NULL)
        g->ntail->next = n;
    else
        g->nhead = n;
    g->ntail = n;
    g->nnotes++;
    pthread_cond_broadcast(&g->cv);
    notify(g);
    pthread_mutex_unlock(&g->mu);
}

/* The follower: reads the stream from its newest entry on, each entry a note; after a
 * failure (Redis away) waits and reads on from where it was. */
static void *follow_main(void *arg)
{
    bq_gateway *g = arg;
    bq_broker *b = g->fbroker;
    char after[BQ_FEED_ID_MAX] = "";
    struct bq_feed_out out = {NULL, 0, 0};
    struct bq_feed_reader *rd = NULL;
    bool first = true;
    int failures = 0;
    while (!atomic_load(&g->fstop)) {
        bq_err err;
        bq_status st = BQ_OK;
        if (after[0] == '\0')
            st = b->ops->feed_last(b, g->fqueue, after, &err);
        /* The first read does not wait: it makes the reader, which unfollow then can wake. */
        if (st == BQ_OK)
            st = b->ops->feed_read(b, &rd, g->fqueue, after, 256, first ? 0 : 5.0, &out, &err);
        first = false;
        pthread_mutex_lock(&g->mu);
        g->frd = rd;
        pthread_mutex_unlock(&g->mu);
        if (st != BQ_OK) {
            if (st != BQ_EINTR && failures++ == 0)
                bq_log(BQ_LOG_WARN, "events_follow_failed", "queue", g->fqueue, "error", err.msg,
                       "outcome", "streams and blocking sends fall back to reading the storage "
                       "until the stream can be read again", NULL);
            if (!atomic_load(&g->fstop))
                bq_sleep(failures < 5 ? 0.1 * failures : 1.0);
            continue;
        }
        failures = 0;
        for (size_t i = 0; i < out.n; i++) {
            note_add(g, out.e[i].json, out.e[i].len);
            snprintf(after, sizeof after, "%s", out.e[i].id);
        }
        bq_feed_out_clear(&out);
    }
    bq_feed_out_free(&out);
    return NULL;
}

bq_status bq_gateway_follow(bq_gateway *g, bq_broker *broker, const char *queue,
                            bq_err *err)
{
    bq_gateway_unfollow(g);
    if (snprintf(g->fqueue, sizeof g->fqueue, "%s", queue) >= (int)sizeof g->fqueue)
        return bq_err_set(err, BQ_EINVAL, "gateway: queue name too long");
    g->fbroker = broker;
    atomic_store(&g->fstop, false);
    if (pthread_create(&g->fthread, NULL, follow_main, g) != 0)
        return bq_err_set(err, BQ_EIO, "gateway: cannot start the events thread");
    g->following = true;
    return BQ_OK;
}

void bq_gateway_unfollow(bq_gateway *g)
{
    if (!g->following)
        return;
    atomic_store(&g->fstop, true);
    /* The reader is made by the thread's first read: wake it until the thread ends. */
    for (;;) {
        pthread_mutex_lock(&g->mu);
        struct bq_feed_reader *rd = g->frd;
        pthread_mutex_unlock(&g->mu);
        g->fbroker->ops->feed_wake(g->fbroker, rd);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        if (pthread_timedjoin_np(g->fthread, NULL, &ts) == 0)
            break;
    }
    g->fbroker->ops->feed_close(g->fbroker, g->frd);
    g->frd = NULL;
    g->following = false;
}

/* ---- start and stop ---------------------------------------------------------------------- */

bq_status bq_gateway_start(const struct bq_gateway_options *o, bq_gateway **out, bq_err *err)
{
    *out = NULL;
    const char *host = o->host != NULL && *o->host ? o->host : "127.0.0.1";
    if (o->port < 0 || o->port > 65535)
        return bq_err_set(err, BQ_EINVAL, "gateway: bad port %d", o->port);
    if ((o->cert_pem == NULL) != (o->key_pem == NULL))
        return bq_err_set(err, BQ_EINVAL, "gateway: TLS needs both a certificate and a key");
    if (bq_mhd_load("gateway", err) != BQ_OK)
        return BQ_EINVAL;
    struct sockaddr_in sa4;
    struct sockaddr_in6 sa6;
    memset(&sa4, 0, sizeof sa4);
    memset(&sa6, 0, sizeof sa6);
    const struct sockaddr *sa;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME;
    if (inet_pton(AF_INET, host, &sa4.sin_addr) == 1) {
        sa4.sin_family = AF_INET;
        sa4.sin_port = htons((uint16_t)o->port);
        sa = (const struct sockaddr *)&sa4;
    } else if (inet_pton(AF_INET6, host, &sa6.sin6_addr) == 1) {
        sa6.sin6_family = AF_INET6;
        sa6.sin6_port = htons((uint16_t)o->port);
        sa = (const struct sockaddr *)&sa6;
        flags |= MHD_USE_IPv6;
    } else {
        return bq_err_set(err, BQ_EINVAL, "gateway: '%.60s' is not an IP address", host);
    }
    if (o->cert_pem != NULL)
        flags |= MHD_USE_TLS;
    bq_gateway *g = bq_calloc(1, sizeof *g);
    if (g == NULL)
        return bq_err_set(err, BQ_ENOMEM, "gateway: out of memory");
    g->max_body = o->max_body > 0 ? o->max_body : 1u << 20;
    g->nfd = -1;
    pthread_mutex_init(&g->mu, NULL);
    bq_cond_init(&g->cv);
    unsigned limit = o->max_connections > 0 ? (unsigned)o->max_connections : 1024;
    unsigned idle = o->idle_timeout > 0 ? (unsigned)o->idle_timeout : 60;
    if (o->cert_pem != NULL)
        g->d = bq_mhd.MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, access_cb, g,
                                       MHD_OPTION_SOCK_ADDR, sa, MHD_OPTION_CONNECTION_LIMIT,
                                       limit, MHD_OPTION_CONNECTION_TIMEOUT, idle,
                                       MHD_OPTION_NOTIFY_COMPLETED, completed_cb, g,
                                       MHD_OPTION_HTTPS_MEM_CERT, o->cert_pem,
                                       MHD_OPTION_HTTPS_MEM_KEY, o->key_pem, MHD_OPTION_END);
    else
        g->d = bq_mhd.MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, access_cb, g,
                                       MHD_OPTION_SOCK_ADDR, sa, MHD_OPTION_CONNECTION_LIMIT,
                                       limit, MHD_OPTION_CONNECTION_TIMEOUT, idle,
                                       MHD_OPTION_NOTIFY_COMPLETED, completed_cb, g,
                                       MHD_OPTION_END);
    if (g->d == NULL) {
        pthread_mutex_destroy(&g->mu);
        pthread_cond_destroy(&g->cv);
        bq_free(g);
        return bq_err_set(err, BQ_EIO, "gateway: cannot listen on %s:%d (in use, or a bad "
                          "certificate)", host, o->port);
    }
    const union MHD_DaemonInfo *info = bq_mhd.MHD_get_daemon_info(g->d, MHD_DAEMON_INFO_BIND_PORT);
    g->port = info != NULL ? info->port : o->port;
    char p[16];
    snprintf(p, sizeof p, "%d", g->port);
    bq_log(BQ_LOG_INFO, "gateway_listening", "address", host, "#port", p, "tls",
           o->cert_pem != NULL ? "true" : "false", NULL);
    *out = g;
    return BQ_OK;
}

int bq_gateway_port(const bq_gateway *g)
{
    return g->port;
}

void bq_gateway_free(bq_gateway *g)
{
    if (g == NULL)
        return;
    bq_gateway_unfollow(g);
    pthread_mutex_lock(&g->mu);
    g->stopping = true;
    for (size_t i = 0; i < g->nlive; i++) { /* suspended connections must be resumed first */
        g->live[i]->ended = true;
        wake(g->live[i]);
    }
    pthread_cond_broadcast(&g->cv);
    notify(g);
    pthread_mutex_unlock(&g->mu);
    bq_mhd.MHD_stop_daemon(g->d); /* closes every connection: completed_cb frees them */
    bq_free(g->live);
    while (g->nhead != NULL) {
        struct gw_note *n = g->nhead;
        g->nhead = n->next;
        bq_free(n->json);
        bq_free(n);
    }
    if (g->nfd >= 0)
        close(g->nfd);
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
    bq_free(g);
}
