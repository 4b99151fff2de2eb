/*
 * metrics.c -- see metrics.h. The HTTP side is libmicrohttpd (no HTTP parsing of ours):
 * one daemon with an internal polling thread, answering GET /metrics, /healthz and /readyz.
 * libmicrohttpd is opened when a process first serves metrics (core/dl.h), not linked.
 *
 * Metric names follow Prometheus conventions (binduq_ prefix, _total for counters, _seconds
 * for durations). Per-worker series carry labels queue (the worker's first queue) and worker
 * (its id), so two workers of one process never collide.
 */
#include "metrics.h"

#include "../core/alloc.h"
#include "../core/buf.h"
#include "../net/mhdapi.h"
#include "../core/err.h"
#include "../core/log.h"

#include <arpa/inet.h>
#include <math.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define MAX_WORKERS 64
#define MAX_QUEUES 64

struct reg {
    bq_worker *w;
    bool (*ready)(void *ud);
    void *ud;
};

struct prod {
    char queue[208];
    long long scheduled, deduplicated;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct reg regs[MAX_WORKERS];
static int nregs;
static struct prod prods[MAX_QUEUES];
static int nprods;
static atomic_llong storage_errors;
static struct MHD_Daemon *daemon_;
static char served_host[64];
static int served_port;

void bq_metrics_add(bq_worker *w, bool (*ready)(void *ud), void *ud)
{
    pthread_mutex_lock(&mu);
    if (nregs < MAX_WORKERS)
        regs[nregs++] = (struct reg){w, ready, ud};
    pthread_mutex_unlock(&mu);
}

void bq_metrics_remove(bq_worker *w)
{
    pthread_mutex_lock(&mu);
    for (int i = 0; i < nregs; i++) {
        if (regs[i].w == w) {
            regs[i] = regs[--nregs];
            break;
        }
    }
    pthread_mutex_unlock(&mu);
}

void bq_metrics_scheduled(const char *queue, long long scheduled, long long deduplicated)
{
    pthread_mutex_lock(&mu);
    int i = 0;
    while (i < nprods && strcmp(prods[i].queue, queue) != 0)
        i++;
    if (i == nprods && nprods < MAX_QUEUES && strlen(queue) < sizeof prods[0].queue)
        snprintf(prods[nprods++].queue, sizeof prods[0].queue, "%s", queue);
    if (i < nprods) {
        prods[i].scheduled += scheduled;
        prods[i].deduplicated += deduplicated;
    }
    pthread_mutex_unlock(&mu);
}

void bq_metrics_storage_error(void)
{
    atomic_fetch_add(&storage_errors, 1);
}

/* ---- Rendering ------------------------------------------------------------------------------ */

/* A label value, escaped as the text format wants (backslash, quote, newline). */
static void label(bq_buf *b, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            bq_buf_printf(b, "\\%c", *v);
        else if (*v == '\n')
            bq_buf_puts(b, "\\n");
        else
            bq_buf_append(b, v, 1);
    }
}

static void family(bq_buf *b, const char *name, const char *type, const char *help)
{
    bq_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void worker_labels(bq_buf *b, bq_worker *w)
{
    bq_buf_puts(b, "queue=\"");
    label(b, bq_worker_queue(w));
    bq_buf_puts(b, "\",worker=\"");
    label(b, bq_worker_id(w));
    bq_buf_puts(b, "\"");
}

static void hist(bq_buf *b, const char *name, bq_worker *w, const struct bq_hist *h)
{
    for (int i = 0; i < BQ_HIST_N; i++) {
        bq_buf_printf(b, "%s_bucket{", name);
        worker_labels(b, w);
        if (isinf(bq_hist_bounds[i]))
            bq_buf_puts(b, ",le=\"+Inf\"}");
        else
            bq_buf_printf(b, ",le=\"%g\"}", bq_hist_bounds[i]);
        bq_buf_printf(b, " %lld\n", h->counts[i]);
    }
    bq_buf_printf(b, "%s_sum{", name);
    worker_labels(b, w);
    bq_buf_printf(b, "} %.6f\n%s_count{", h->sum, name);
    worker_labels(b, w);
    bq_buf_printf(b, "} %lld\n", h->counts[BQ_HIST_N - 1]);
}

bq_status bq_metrics_render(char **out, size_t *len)
{
    bq_buf b = BQ_BUF_INIT;
    pthread_mutex_lock(&mu);
    int n = nregs;
    struct reg r[MAX_WORKERS];
    memcpy(r, regs, sizeof r);
    struct bq_worker_stats st[MAX_WORKERS];
    for (int i = 0; i < n; i++)
        bq_worker_stats(r[i].w, &st[i]);

    /* Queue lengths: one series per queue (the first worker of a queue asks its broker). */
    family(&b, "binduq_queue_length", "gauge",
           "Task operations in a queue: ready, delayed (retries and delayed operations), "
           "inflight (leased), dead.");
    static const struct {
        enum bq_list which;
        const char *name;
    } lists[] = {{BQ_LIST_READY, "ready"}, {BQ_LIST_DELAYED, "delayed"},
                 {BQ_LIST_INFLIGHT, "inflight"}, {BQ_LIST_DEAD, "dead"}};
    for (int i = 0; i < n; i++) {
        bq_worker *w = r[i].w;
        for (int q = 0; q < bq_worker_nqueues(w); q++) {
            const char *queue = bq_worker_queue_of(w, q);
            bool seen = false;
            for (int j = 0; j < i && !seen; j++) {
                for (int k = 0; k < bq_worker_nqueues(r[j].w); k++)
                    seen = seen || strcmp(bq_worker_queue_of(r[j].w, k), queue) == 0;
            }
            for (int k = 0; k < q && !seen; k++)
                seen = strcmp(bq_worker_queue_of(w, k), queue) == 0;
            if (seen)
                continue;
            bq_broker *br = bq_worker_broker(w);
            for (size_t l = 0; l < sizeof lists / sizeof lists[0]; l++) {
                long long v = 0;
                if (br->admin->length(br, queue, lists[l].which, &v, NULL) != BQ_OK)
                    break; /* Redis is away: one timeout per queue, not one per list */
                bq_buf_puts(&b, "binduq_queue_length{queue=\"");
                label(&b, queue);
                bq_buf_printf(&b, "\",list=\"%s\"} %lld\n", lists[l].name, v);
            }
        }
    }

    const struct {
        const char *name, *help;
        size_t off;
    } counters[] = {
#define C(f, h) {"binduq_tasks_" #f "_total", h, offsetof(struct bq_worker_stats, f)}
        C(fetched, "Task operations fetched."),
        C(completed, "Tasks whose handler returned a result."),
        C(failed, "Handler failures (each attempt)."),
        C(retried, "Failures scheduled for another attempt."),
        C(dead_lettered, "Operations set aside in the dead-letter list."),
        C(dropped, "Failures the failure policy dropped."),
        C(malformed, "Messages that could not be decoded."),
        C(skipped, "Operations acknowledged with nothing to do (duplicates, finished tasks)."),
        C(rate_limited, "Operations deferred by the rate limiter."),
        C(canceled, "Tasks canceled before or while they ran."),
        C(paused, "Tasks paused."),
        C(waiting, "Handler runs that asked for input."),
        C(handed_back, "Operations handed back to the queue at shutdown."),
        C(reaped, "Operations recovered from workers whose lease ran out."),
#undef C
        {"binduq_redis_errors_total", "Failed Redis operations (retried).",
         offsetof(struct bq_worker_stats, redis_errors)},
        {"binduq_reconnects_total", "Fetch loops that reconnected after errors.",
         offsetof(struct bq_worker_stats, reconnects)},
        {"binduq_pickup_latency_rejected_total",
         "Pickup latencies not observed: the producer's timestamp more than 1 s in the future "
         "or more than 30 days old.",
         offsetof(struct bq_worker_stats, pickup_rejected)},
    };
    for (size_t c = 0; c < sizeof counters / sizeof counters[0]; c++) {
        family(&b, counters[c].name, "counter", counters[c].help);
        for (int i = 0; i < n; i++) {
            long long v = *(const long long *)((const char *)&st[i] + counters[c].off);
            bq_buf_printf(&b, "%s{", counters[c].name);
            worker_labels(&b, r[i].w);
            bq_buf_printf(&b, "} %lld\n", v);
        }
    }
    const struct {
        const char *name, *help;
        size_t off;
    } produced[] = {
        {"binduq_tasks_scheduled_total", "Task operations pushed by producers of this process.",
         offsetof(struct prod, scheduled)},
        {"binduq_tasks_deduplicated_total",
         "Task operations producers of this process did not push: duplicates.",
         offsetof(struct prod, deduplicated)},
    };
    for (size_t c = 0; c < sizeof produced / sizeof produced[0]; c++) {
        family(&b, produced[c].name, "counter", produced[c].help);
        for (int i = 0; i < nprods; i++) {
            bq_buf_printf(&b, "%s{queue=\"", produced[c].name);
            label(&b, prods[i].queue);
            bq_buf_printf(&b, "\"} %lld\n",
                          *(const long long *)((const char *)&prods[i] + produced[c].off));
        }
    }

    family(&b, "binduq_handler_duration_seconds", "histogram",
           "Time from a handler state taking an operation to its outcome.");
    struct bq_hist d[MAX_WORKERS], p[MAX_WORKERS];
    for (int i = 0; i < n; i++) {
        bq_worker_histograms(r[i].w, &d[i], &p[i]);
        hist(&b, "binduq_handler_duration_seconds", r[i].w, &d[i]);
    }
    family(&b, "binduq_pickup_latency_seconds", "histogram",
           "Time from the producer's timestamp to the handler's start.");
    for (int i = 0; i < n; i++)
        hist(&b, "binduq_pickup_latency_seconds", r[i].w, &p[i]);

    family(&b, "binduq_handlers_inflight", "gauge",
           "Operations fetched and not finished (running or waiting for a handler state).");
    for (int i = 0; i < n; i++) {
        bq_buf_puts(&b, "binduq_handlers_inflight{");
        worker_labels(&b, r[i].w);
        bq_buf_printf(&b, "} %d\n", st[i].inflight);
    }
    struct bq_pool_stats ps[MAX_WORKERS];
    bool has_pool[MAX_WORKERS];
    for (int i = 0; i < n; i++) {
        bq_broker *br = bq_worker_broker(r[i].w);
        has_pool[i] = br->admin->pool_stats(br, &ps[i]);
    }
    family(&b, "binduq_pool_connections", "gauge", "Pooled Redis connections, by state.");
    for (int i = 0; i < n; i++) {
        if (!has_pool[i])
            continue;
        bq_buf_puts(&b, "binduq_pool_connections{");
        worker_labels(&b, r[i].w);
        bq_buf_printf(&b, ",state=\"idle\"} %d\nbinduq_pool_connections{", ps[i].idle);
        worker_labels(&b, r[i].w);
        bq_buf_printf(&b, ",state=\"busy\"} %d\n", ps[i].total - ps[i].idle);
    }
    family(&b, "binduq_pool_waits_total", "counter",
           "Borrows that waited for a pooled connection to come back.");
    for (int i = 0; i < n; i++) {
        if (!has_pool[i])
            continue;
        bq_buf_puts(&b, "binduq_pool_waits_total{");
        worker_labels(&b, r[i].w);
        bq_buf_printf(&b, "} %lld\n", ps[i].waits);
    }
    family(&b, "binduq_storage_errors_total", "counter", "Failed task-state operations.");
    bq_buf_printf(&b, "binduq_storage_errors_total %lld\n", atomic_load(&storage_errors));
    pthread_mutex_unlock(&mu);
    if (b.oom) {
        bq_buf_free(&b);
        return BQ_ENOMEM;
    }
    *out = bq_buf_detach(&b, len);
    return BQ_OK;
}

/* Ready: every registered worker fetches, its broker answers a PING, and its other needs
 * (the storage) answer. No worker registered: not ready. */
static bool ready(char *why, size_t size)
{
    pthread_mutex_lock(&mu);
    bool ok = nregs > 0;
    if (!ok)
        snprintf(why, size, "no worker is running");
    for (int i = 0; ok && i < nregs; i++) {
        bq_broker *br = bq_worker_broker(regs[i].w);
        double rtt;
        bq_err err;
        if (!bq_worker_running(regs[i].w)) {
            ok = false;
            snprintf(why, size, "worker %s is draining", bq_worker_id(regs[i].w));
        } else if (br->ops->ping(br, &rtt, &err) != BQ_OK) {
            ok = false;
            snprintf(why, size, "redis: %s", err.msg);
        } else if (regs[i].ready != NULL && !regs[i].ready(regs[i].ud)) {
            ok = false;
            snprintf(why, size, "storage is not reachable");
        }
    }
    pthread_mutex_unlock(&mu);
    return ok;
}

/* ---- HTTP ----------------------------------------------------------------------------------- */

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             char *body, size_t len, bool owned)
{
    struct MHD_Response *r = bq_mhd.MHD_create_response_from_buffer(
        len, body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_MUST_COPY);
    if (r == NULL) {
        if (owned)
            free(body);
        return MHD_NO;
    }
    bq_mhd.MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ret = bq_mhd.MHD_queue_response(c, status, r);
    bq_mhd.MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **state)
{
    (void)cls, (void)version, (void)upload, (void)upload_size, (void)state;
    static const char text[] = "text/plain; charset=utf-8";
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, text, (char *)"GET only\n", 9, false);
    if (strcmp(url, "/healthz") == 0)
        return reply(c, MHD_HTTP_OK, text, (char *)"ok\n", 3, false);
    if (strcmp(url, "/readyz") == 0) {
        char why[300] = "ready";
        bool ok = ready(why, sizeof why);
        char body[320];
        int n = snprintf(body, sizeof body, "%s\n", ok ? "ready" : why);
        return reply(c, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, text, body,
                     (size_t)n < sizeof body ? (size_t)n : sizeof body - 1, false);
    }
    if (strcmp(url, "/metrics") == 0) {
        char *body = NULL;
        size_t len = 0;
        if (bq_metrics_render(&body, &len) != BQ_OK)
            return reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, text, (char *)"out of memory\n", 14,
                         false);
        /* libmicrohttpd frees with free(): copy out of our allocator. */
        enum MHD_Result ret = reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8",
                                    body, len, false);
        bq_free(body);
        return ret;
    }
    return reply(c, MHD_HTTP_NOT_FOUND, text, (char *)"not found: /metrics, /healthz, /readyz\n",
                 39, false);
}

bq_status bq_metrics_serve(const char *host, int port, int *bound, bq_err *err)
{
    if (host == NULL || *host == '\0')
        host = "127.0.0.1";
    if (port < 0 || port > 65535)
        return bq_err_set(err, BQ_EINVAL, "metrics: bad port %d", port);
    if (bq_mhd_load("metrics: the endpoint", err) != BQ_OK)
        return BQ_EINVAL;
    pthread_mutex_lock(&mu);
    if (daemon_ != NULL) {
        bool same = strcmp(host, served_host) == 0 && (port == 0 || port == served_port);
        if (bound != NULL)
            *bound = served_port;
        pthread_mutex_unlock(&mu);
        return same ? BQ_OK : bq_err_set(err, BQ_EINVAL, "metrics: this process already serves "
                                         "on %s:%d", served_host, served_port);
    }
    struct sockaddr_in sa4;
    struct sockaddr_in6 sa6;
    memset(&sa4, 0, sizeof sa4);
    memset(&sa6, 0, sizeof sa6);
    const struct sockaddr *sa;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
    if (inet_pton(AF_INET, host, &sa4.sin_addr) == 1) {
        sa4.sin_family = AF_INET;
        sa4.sin_port = htons((uint16_t)port);
        sa = (const struct sockaddr *)&sa4;
    } else if (inet_pton(AF_INET6, host, &sa6.sin6_addr) == 1) {
        sa6.sin6_family = AF_INET6;
        sa6.sin6_port = htons((uint16_t)port);
        sa = (const struct sockaddr *)&sa6;
        flags |= MHD_USE_IPv6;
    } else {
        pthread_mutex_unlock(&mu);
        return bq_err_set(err, BQ_EINVAL, "metrics: '%.60s' is not an IP address", host);
    }
    daemon_ = bq_mhd.MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, handle, NULL,
                               MHD_OPTION_SOCK_ADDR, sa, MHD_OPTION_CONNECTION_TIMEOUT,
                               (unsigned)10, MHD_OPTION_END);
    if (daemon_ == NULL) {
        pthread_mutex_unlock(&mu);
        return bq_err_set(err, BQ_EIO, "metrics: cannot listen on %s:%d (in use?)", host, port);
    }
    const union MHD_DaemonInfo *info =
        bq_mhd.MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
    served_port = info != NULL ? info->port : port;
    snprintf(served_host, sizeof served_host, "%s", host);
    if (bound != NULL)
        *bound = served_port;
    pthread_mutex_unlock(&mu);
    char p[16];
    snprintf(p, sizeof p, "%d", served_port);
    bq_log(BQ_LOG_INFO, "metrics_listening", "address", host, "#port", p, NULL);
    return BQ_OK;
}

void bq_metrics_shutdown(void)
{
    pthread_mutex_lock(&mu);
    struct MHD_Daemon *d = daemon_;
    daemon_ = NULL;
    pthread_mutex_unlock(&mu);
    if (d != NULL)
        bq_mhd.MHD_stop_daemon(d);
}
