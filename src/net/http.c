/*
 * http.c -- see http.h.
 *
 * A transfer's state, set by libcurl's callbacks during curl_multi_socket_action:
 *   head      the current response's header lines, parsed into `hdrs` (name, value offsets
 *             into `hbuf`); a new status line (a redirect followed, a 100 Continue) starts
 *             them over;
 *   head_done the head of the final response is complete: its blank line was seen and it
 *             is not a 1xx, nor a 3xx that will be followed;
 *   body      bytes received and not taken yet (stream) or all of them (not stream);
 *   received  the body's bytes so far, against max_bytes;
 *   ended     libcurl finished the transfer (result: CURLE_OK or why not).
 */
#include "http.h"

#include "curlapi.h"

#include "../core/alloc.h"
#include "../core/clock.h"
#include "../core/err.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define SPARE_MAX 256

/* A thread's loop: libcurl's socket interface on an epoll set, so that a wait costs what the
 * sockets that are ready cost, not what all of them do (poll(2) over a thousand idle
 * connections per wake-up was a quarter of a busy agent worker's time). */
struct bq_http_loop {
    CURLM *multi;
    int epfd;        /* libcurl's sockets (CURLMOPT_SOCKETFUNCTION) and wakefd */
    int wakefd;      /* an eventfd: bq_http_loop_wake */
    double timer_at; /* monotonic time libcurl wants to be called (CURLMOPT_TIMERFUNCTION); 0: never */
    /* Easy handles of finished calls, reset for the next (their buffers stay allocated: a
     * busy agent worker freed and allocated them for every call). */
    CURL *spare[SPARE_MAX];
    int nspare;
};

struct hdr {
    size_t name, name_len, value, value_len; /* offsets into hbuf */
};

struct bq_http {
    struct bq_http_loop *loop;
    CURL *easy;
    struct curl_slist *hlist;
    bool stream, follow;
    size_t max_bytes, received;
    long status;
    bool head_done, ended, too_big, bad_head;
    CURLcode result;
    bq_buf hbuf;
    struct hdr *hdrs;
    int nhdrs, cap_hdrs;
    bq_buf body;
    char shown[300];
    char errbuf[CURL_ERROR_SIZE];
    char failure[600];
    const char *code;
    bool draining; /* released (bq_http_release): a body byte more ends the transfer */
};

/* ---- the loop -------------------------------------------------------------------------- */

/* libcurl says which events it wants on socket s (CURLMOPT_SOCKETFUNCTION). */
static int on_socket(CURL *easy, curl_socket_t s, int what, void *ud, void *socketp)
{
    (void)easy;
    struct bq_http_loop *l = ud;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, s, NULL);
        bq_curl.curl_multi_assign(l->multi, s, NULL);
        return 0;
    }
    struct epoll_event ev = {0};
    ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0u) | (what & CURL_POLL_OUT ? EPOLLOUT : 0u);
    ev.data.fd = s;
    if (socketp == NULL) {
        if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, s, &ev) != 0 && errno == EEXIST)
            epoll_ctl(l->epfd, EPOLL_CTL_MOD, s, &ev);
        bq_curl.curl_multi_assign(l->multi, s, l); /* any non-NULL: known from now on */
    } else if (epoll_ctl(l->epfd, EPOLL_CTL_MOD, s, &ev) != 0 && errno == ENOENT) {
        epoll_ctl(l->epfd, EPOLL_CTL_ADD, s, &ev);
    }
    return 0;
}

/* libcurl's next timeout (CURLMOPT_TIMERFUNCTION): -1 none, 0 at once. */
static int on_timer(CURLM *multi, long timeout_ms, void *ud)
{
    (void)multi;
    struct bq_http_loop *l = ud;
    l->timer_at = timeout_ms < 0 ? 0 : bq_now_mono() + (double)timeout_ms / 1000.0;
    return 0;
}

struct bq_http_loop *bq_http_loop_new(bq_err *err)
{
    if (bq_curl_load(err) != BQ_OK)
        return NULL;
    struct bq_http_loop *l = bq_calloc(1, sizeof *l);
    if (l == NULL) {
        bq_err_set(err, BQ_ENOMEM, "http: out of memory");
        return NULL;
    }
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l->wakefd};
    if (l->epfd < 0 || l->wakefd < 0 || epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wakefd, &ev) != 0) {
        bq_err_set(err, BQ_EIO, "http: epoll: %s", strerror(errno));
        bq_http_loop_free(l);
        return NULL;
    }
    if ((l->multi = bq_curl.curl_multi_init()) == NULL ||
        bq_curl.curl_multi_setopt(l->multi, CURLMOPT_SOCKETFUNCTION, on_socket) != CURLM_OK ||
        bq_curl.curl_multi_setopt(l->multi, CURLMOPT_SOCKETDATA, (void *)l) != CURLM_OK ||
        bq_curl.curl_multi_setopt(l->multi, CURLMOPT_TIMERFUNCTION, on_timer) != CURLM_OK ||
        bq_curl.curl_multi_setopt(l->multi, CURLMOPT_TIMERDATA, (void *)l) != CURLM_OK) {
        bq_err_set(err, BQ_ENOMEM, "curl_multi_init: out of memory");
        bq_http_loop_free(l);
        return NULL;
    }
    return l;
}

void bq_http_loop_free(struct bq_http_loop *loop)
{
    if (loop == NULL)
        return;
    for (int i = 0; i < loop->nspare; i++)
        bq_curl.curl_easy_cleanup(loop->spare[i]);
    if (loop->multi != NULL)
        bq_curl.curl_multi_cleanup(loop->multi);
    if (loop->epfd >= 0)
        close(loop->epfd);
    if (loop->wakefd >= 0)
        close(loop->wakefd);
    bq_free(loop);
}

void bq_http_loop_wake(void *loop)
{
    uint64_t one = 1;
    ssize_t n = write(((struct bq_http_loop *)loop)->wakefd, &one, sizeof one);
    (void)n; /* EAGAIN: the counter is full, a wake-up is pending anyway */
}

/* ---- messages ------------------------------------------------------------------------- */

void bq_http_redact_url(const char *url, char *out, size_t size)
{
    CURLU *u = bq_curl.curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;
    if (u != NULL && bq_curl.curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        bq_curl.curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        bq_curl.curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
        bq_curl.curl_url_get(u, CURLUPART_PORT, &port, 0);
        bq_curl.curl_url_get(u, CURLUPART_PATH, &path, 0);
        snprintf(out, size, "%s://%s%s%s%s", scheme, host, port ? ":" : "", port ? port : "",
                 path ? path : "/");
    } else {
        snprintf(out, size, "(bad URL)");
    }
    bq_curl.curl_free(scheme);
    bq_curl.curl_free(host);
    bq_curl.curl_free(port);
    bq_curl.curl_free(path);
    bq_curl.curl_url_cleanup(u);
}

const char *bq_http_code_of(int c)
{
    switch ((CURLcode)c) {
    case CURLE_OK: return "OK";
    case CURLE_OPERATION_TIMEDOUT: return "ETIMEDOUT";
    case CURLE_COULDNT_CONNECT: return "ECONNREFUSED";
    case CURLE_COULDNT_RESOLVE_HOST: return "ENOTFOUND";
    case CURLE_COULDNT_RESOLVE_PROXY: return "EPROXY";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_USE_SSL_FAILED: return "ETLS";
    case CURLE_FILESIZE_EXCEEDED: return "ETOOBIG";
    case CURLE_TOO_MANY_REDIRECTS: return "EREDIRECT";
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_WEIRD_SERVER_REPLY: return "ECONNRESET";
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_BAD_FUNCTION_ARGUMENT: return "EINVAL";
    case CURLE_OUT_OF_MEMORY: return "ENOMEM";
    default: return "EIO";
    }
}

/* ---- libcurl's callbacks --------------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    struct bq_http *h = ud;
    size_t len = size * n;
    if (h->draining && len > 0)
        return 0; /* released, and the server goes on: CURLE_WRITE_ERROR, the transfer ends */
    if (h->max_bytes > 0 && (len > h->max_bytes || h->received > h->max_bytes - len)) {
        h->too_big = true;
        return 0; /* CURLE_WRITE_ERROR: the transfer ends */
    }
    h->received += len;
    h->head_done = true;
    bq_buf_append(&h->body, p, len);
    return h->body.oom ? 0 : len;
}

static bool trim(const char **s, size_t *n)
{
    while (*n > 0 && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t' || (*s)[*n - 1] == '\r' ||
                      (*s)[*n - 1] == '\n'))
        (*n)--;
    return *n > 0;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    struct bq_http *h = ud;
    size_t len = size * n;
    const char *s = p;
    size_t k = len;
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) { /* a status line: a new head */
        h->hbuf.len = 0;
        h->nhdrs = 0;
        h->head_done = false;
        const char *sp = memchr(p, ' ', len);
        h->status = 0;
        for (const char *d = sp ? sp + 1 : p + len; d < p + len && isdigit((unsigned char)*d); d++)
            h->status = h->status * 10 + (*d - '0');
        return len;
    }
    if (!trim(&s, &k)) { /* the blank line ending a head */
        bool interim = h->status >= 100 && h->status < 200;
        bool followed = h->follow && h->status >= 300 && h->status < 400;
        if (!interim && !followed)
            h->head_done = true;
        return len;
    }
    if (h->hbuf.len + len > BQ_HTTP_MAX_HEAD) {
        h->bad_head = true;
        return 0;
    }
    const char *colon = memchr(s, ':', k);
    if (colon == NULL)
        return len; /* not a header (an obsolete folded line): ignored */
    if (h->nhdrs == h->cap_hdrs) {
        int cap = h->cap_hdrs ? h->cap_hdrs * 2 : 16;
        struct hdr *g = bq_realloc(h->hdrs, (size_t)cap * sizeof *g);
        if (g == NULL)
            return 0;
        h->hdrs = g;
        h->cap_hdrs = cap;
    }
    const char *name = s, *value = colon + 1;
    size_t name_len = (size_t)(colon - s), value_len = k - name_len - 1;
    trim(&name, &name_len);
    trim(&value, &value_len);
    struct hdr *e = &h->hdrs[h->nhdrs];
    e->name = h->hbuf.len;
    e->name_len = name_len;
    for (size_t i = 0; i < name_len; i++)
        bq_buf_putc(&h->hbuf, (char)tolower((unsigned char)name[i]));
    e->value = h->hbuf.len;
    e->value_len = value_len;
    bq_buf_append(&h->hbuf, value, value_len);
    if (h->hbuf.oom)
        return 0;
    h->nhdrs++;
    return len;
}

/* ---- a transfer ------------------------------------------------------------------------ */

static bool token(const char *m)
{
    size_t n = strlen(m);
    if (n == 0 || n > 32)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isupper((unsigned char)m[i]) && m[i] != '-' && m[i] != '_')
            return false;
    return true;
}

static long ms(double seconds)
{
    double v = ceil(seconds * 1000);
    return v > 0x7fffffff ? 0x7fffffff : (long)v;
}

#define SET(opt, val)                                                                          \
    do {                                                                                       \
        if (bq_curl.curl_easy_setopt(h->easy, opt, val) != CURLE_OK)                          \
            goto setopt_failed;                                                                \
    } while (0)

bq_status bq_http_start(struct bq_http_loop *loop, const struct bq_http_request *req,
                        struct bq_http **out, const char **code, bq_err *err)
{
    *out = NULL;
    *code = "EINVAL";
    const char *method = req->method ? req->method : req->body ? "POST" : "GET";
    if (!token(method))
        return bq_err_set(err, BQ_EINVAL, "http: method must be an upper-case token, as GET "
                          "or POST");
    if (req->url == NULL || (strncmp(req->url, "http://", 7) != 0 &&
                             strncmp(req->url, "https://", 8) != 0))
        return bq_err_set(err, BQ_EINVAL, "http: url must start with http:// or https://");
    for (int i = 0; i < req->nheaders; i++) {
        const char *l = req->headers[i];
        const char *colon = strchr(l, ':');
        if (strpbrk(l, "\r\n") != NULL || colon == NULL || colon == l)
            return bq_err_set(err, BQ_EINVAL, "http: header %d is not one \"Name: value\" "
                              "line", i + 1);
    }
    struct bq_http *h = bq_calloc(1, sizeof *h);
    if (h == NULL)
        return bq_err_set(err, BQ_ENOMEM, "http: out of memory");
    h->loop = loop;
    h->stream = req->stream;
    h->follow = req->max_redirects > 0;
    h->max_bytes = req->max_bytes;
    char url[256];
    bq_http_redact_url(req->url, url, sizeof url);
    snprintf(h->shown, sizeof h->shown, "%s %s", method, url);
    if (strcmp(url, "(bad URL)") == 0) {
        bq_free(h);
        return bq_err_set(err, BQ_EINVAL, "http: url does not parse");
    }
    h->easy = loop->nspare > 0 ? loop->spare[--loop->nspare] : bq_curl.curl_easy_init();
    if (h->easy == NULL) {
        bq_free(h);
        *code = "ENOMEM";
        return bq_err_set(err, BQ_ENOMEM, "curl_easy_init: out of memory");
    }
    for (int i = 0; i < req->nheaders; i++) {
        struct curl_slist *l = bq_curl.curl_slist_append(h->hlist, req->headers[i]);
        if (l == NULL)
            goto oom;
        h->hlist = l;
    }
    SET(CURLOPT_PRIVATE, (void *)h);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_URL, req->url);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_ERRORBUFFER, h->errbuf);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, (void *)h);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, (void *)h);
    SET(CURLOPT_USERAGENT, "binduq/" BQ_VERSION_STRING);
    SET(CURLOPT_ACCEPT_ENCODING, ""); /* what libcurl decodes; max_bytes bounds the decoded */
    SET(CURLOPT_HTTPHEADER, h->hlist);
    if (strcmp(method, "HEAD") == 0)
        SET(CURLOPT_NOBODY, 1L);
    else if (strcmp(method, "GET") != 0)
        SET(CURLOPT_CUSTOMREQUEST, method);
    if (req->body != NULL) {
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        SET(CURLOPT_COPYPOSTFIELDS, req->body);
        if (strcmp(method, "POST") != 0)
            SET(CURLOPT_CUSTOMREQUEST, method);
    }
    if (req->timeout > 0)
        SET(CURLOPT_TIMEOUT_MS, ms(req->timeout));
    if (req->connect_timeout > 0)
        SET(CURLOPT_CONNECTTIMEOUT_MS, ms(req->connect_timeout));
    if (req->idle_timeout > 0) {
        SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
        SET(CURLOPT_LOW_SPEED_TIME, (long)ceil(req->idle_timeout));
    }
    if (req->insecure) {
        SET(CURLOPT_SSL_VERIFYPEER, 0L);
        SET(CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (req->ca_file != NULL)
        SET(CURLOPT_CAINFO, req->ca_file);
    if (req->max_redirects > 0) {
        SET(CURLOPT_FOLLOWLOCATION, 1L);
        SET(CURLOPT_MAXREDIRS, req->max_redirects);
    }
    if (req->max_bytes > 0)
        SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)req->max_bytes);
    if (bq_curl.curl_multi_add_handle(loop->multi, h->easy) != CURLM_OK)
        goto oom;
    *out = h;
    *code = "OK";
    return BQ_OK;
setopt_failed:
    bq_http_free(h);
    *code = "EUNSUPPORTED";
    return bq_err_set(err, BQ_EUNSUPPORTED, "http: this libcurl lacks an option binduq uses "
                      "(7.85 or later is needed)");
oom:
    bq_http_free(h);
    *code = "ENOMEM";
    return bq_err_set(err, BQ_ENOMEM, "http: out of memory");
}

static bool holds(const struct bq_http *h, enum bq_http_until until);

/* Takes the finished transfers' results off the loop. */
static void reap(struct bq_http_loop *loop)
{
    CURLMsg *m;
    int left;
    while ((m = bq_curl.curl_multi_info_read(loop->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        struct bq_http *h = NULL;
        bq_curl.curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&h);
        if (h == NULL)
            continue;
        h->ended = true;
        h->head_done = true;
        h->result = m->data.result;
        if (h->result == CURLE_OK)
            continue;
        const char *text = h->errbuf[0] ? h->errbuf : bq_curl.curl_easy_strerror(h->result);
        h->code = bq_http_code_of(h->result);
        if (h->too_big || h->result == CURLE_FILESIZE_EXCEEDED) {
            h->code = "ETOOBIG";
            snprintf(h->failure, sizeof h->failure, "%s: the response is larger than "
                     "max_bytes (%zu)", h->shown, h->max_bytes);
        } else if (h->bad_head) {
            h->code = "ETOOBIG";
            snprintf(h->failure, sizeof h->failure, "%s: the response's head is larger than "
                     "%u bytes", h->shown, BQ_HTTP_MAX_HEAD);
        } else if (h->body.oom || h->hbuf.oom) {
            h->code = "ENOMEM";
            snprintf(h->failure, sizeof h->failure, "%s: out of memory", h->shown);
        } else {
            snprintf(h->failure, sizeof h->failure, "%s: %s", h->shown, text);
        }
    }
}

/* Waits up to `seconds` (0: not at all) for a ready socket, libcurl's timer or a wake-up,
 * hands libcurl what came, and takes the finished transfers' results. */
static bq_status run_loop(struct bq_http_loop *l, double seconds, bq_err *err)
{
    if (l->timer_at > 0) {
        double until_timer = l->timer_at - bq_now_mono();
        if (until_timer < seconds)
            seconds = until_timer > 0 ? until_timer : 0;
    }
    int wait_ms = seconds <= 0 ? 0 : seconds >= 1.0 ? 1000 : (int)ceil(seconds * 1000);
    struct epoll_event evs[256];
    int n = epoll_wait(l->epfd, evs, 256, wait_ms);
    if (n < 0 && errno != EINTR)
        return bq_err_set(err, BQ_EIO, "http: epoll_wait: %s", strerror(errno));
    int running = 0;
    for (int i = 0; i < n; i++) {
        if (evs[i].data.fd == l->wakefd) {
            uint64_t v;
            ssize_t r = read(l->wakefd, &v, sizeof v);
            (void)r;
            continue;
        }
        int flags = (evs[i].events & EPOLLIN ? CURL_CSELECT_IN : 0) |
                    (evs[i].events & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
                    (evs[i].events & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0);
        CURLMcode mc = bq_curl.curl_multi_socket_action(l->multi, evs[i].data.fd, flags, &running);
        if (mc != CURLM_OK)
            return bq_err_set(err, BQ_EIO, "curl_multi_socket_action: %d", (int)mc);
    }
    if (l->timer_at > 0 && bq_now_mono() >= l->timer_at) {
        l->timer_at = 0;
        CURLMcode mc = bq_curl.curl_multi_socket_action(l->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        if (mc != CURLM_OK)
            return bq_err_set(err, BQ_EIO, "curl_multi_socket_action: %d", (int)mc);
    }
    reap(l);
    return BQ_OK;
}

bq_status bq_http_loop_step(struct bq_http_loop *loop, bq_err *err)
{
    return run_loop(loop, 0, err);
}

bq_status bq_http_loop_poll(struct bq_http_loop *loop, double seconds, bq_err *err)
{
    return run_loop(loop, seconds, err);
}

bool bq_http_holds(const struct bq_http *h, enum bq_http_until until)
{
    return holds(h, until);
}

static bool holds(const struct bq_http *h, enum bq_http_until until)
{
    switch (until) {
    case BQ_HTTP_HEAD: return h->head_done || h->ended;
    case BQ_HTTP_DATA: return h->body.len > 0 || h->ended;
    default: return h->ended;
    }
}

bq_status bq_http_wait(struct bq_http *h, enum bq_http_until until, double deadline,
                       bool (*stop)(void *ud), void *ud, bq_err *err)
{
    double wait = 0;
    for (;;) {
        if (run_loop(h->loop, wait, err) != BQ_OK)
            return err != NULL ? err->code : BQ_EIO;
        if (holds(h, until))
            return BQ_OK;
        if (stop != NULL && stop(ud))
            return bq_err_set(err, BQ_EINTR, "%s: stopped", h->shown);
        double left = deadline > 0 ? deadline - bq_now_mono() : 1.0;
        if (left <= 0)
            return bq_err_set(err, BQ_ETIMEDOUT, "%s: the wait's deadline passed", h->shown);
        wait = left;
    }
}

const char *bq_http_failed(const struct bq_http *h, const char **code)
{
    if (!h->ended || h->result == CURLE_OK)
        return NULL;
    *code = h->code;
    return h->failure;
}

long bq_http_status(const struct bq_http *h)
{
    return h->status;
}

int bq_http_header_count(const struct bq_http *h)
{
    return h->nhdrs;
}

void bq_http_header(const struct bq_http *h, int i, const char **name, size_t *name_len,
                    const char **value, size_t *value_len)
{
    const struct hdr *e = &h->hdrs[i];
    *name = h->hbuf.p + e->name;
    *name_len = e->name_len;
    *value = h->hbuf.p + e->value;
    *value_len = e->value_len;
}

const char *bq_http_body(struct bq_http *h, size_t *len)
{
    *len = h->body.len;
    return h->body.p ? h->body.p : "";
}

void bq_http_consume(struct bq_http *h)
{
    /* The buffer is reused: no allocation per piece of a stream. */
    h->body.len = 0;
}

const char *bq_http_shown(const struct bq_http *h)
{
    return h->shown;
}

void bq_http_release(struct bq_http *h, double wait)
{
    if (h == NULL)
        return;
    if (!h->ended && h->easy != NULL) {
        h->draining = true; /* a byte more: the server goes on, so the transfer is closed */
        h->body.len = 0;
        double deadline = bq_now_mono() + wait;
        for (int pass = 0; !h->ended && (pass < 2 || bq_now_mono() < deadline); pass++) {
            double left = deadline - bq_now_mono();
            if (run_loop(h->loop, left > 0 ? left : 0, NULL) != BQ_OK)
                break;
        }
    }
    bq_http_free(h); /* ended: its connection stays in the loop's cache for the next call */
}

void bq_http_free(struct bq_http *h)
{
    if (h == NULL)
        return;
    if (h->easy != NULL) {
        bq_curl.curl_multi_remove_handle(h->loop->multi, h->easy);
        if (h->loop->nspare < SPARE_MAX) {
            bq_curl.curl_easy_reset(h->easy);
            h->loop->spare[h->loop->nspare++] = h->easy;
        } else {
            bq_curl.curl_easy_cleanup(h->easy);
        }
    }
    bq_curl.curl_slist_free_all(h->hlist);
    bq_buf_free(&h->hbuf);
    bq_buf_free(&h->body);
    bq_free(h->hdrs);
    bq_free(h);
}
