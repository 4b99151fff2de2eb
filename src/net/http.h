/*
 * http.h -- HTTP calls for handlers, on libcurl's multi interface (curlapi.h).
 *
 * A thread that makes calls owns one bq_http_loop: a curl multi handle, so connections to a
 * host are kept alive between calls of that thread (a model API is called again and again).
 * A transfer (struct bq_http) is started on a loop and then waited for in steps: its head
 * (status and headers), the next piece of its body, or its end. Every wait takes a deadline
 * and a stop test; the loop sleeps in epoll_wait (libcurl's socket interface), which another
 * thread wakes with bq_http_loop_wake (a cancel, a pause, a shutdown), so a wait ends within a
 * wake-up of the stop, and no thread polls on a timer. Freeing a transfer that has not ended closes
 * its connection: the server sees the client go away.
 *
 * Errors carry a stable code (bq_http_code_of) besides the message:
 *   ETIMEDOUT   the call's own timeout, connect timeout or idle timeout passed
 *   ECONNREFUSED nothing listens (or the connection could not be made)
 *   ENOTFOUND   the host name does not resolve
 *   ETLS        the TLS handshake or the certificate check failed
 *   ETOOBIG     the body passed max_bytes (or the headers 64 KiB)
 *   ECONNRESET  the connection broke during the transfer
 *   EREDIRECT   more redirects than allowed
 *   EPROXY      the proxy refused or failed
 *   EINVAL      a bad URL, method or header
 *   EIO         anything else libcurl reports
 * Messages name the method and the URL without its user, password and query string (which
 * hold keys, e.g. ?key=): "GET https://api.example.com/v1/models: <libcurl's text>".
 */
#ifndef BINDUQ_HTTP_H
#define BINDUQ_HTTP_H

#include "../binduq.h"
#include "../core/buf.h"

#include <stdbool.h>
#include <stddef.h>

/* The largest response head; past it a transfer fails with ETOOBIG. */
#define BQ_HTTP_MAX_HEAD (64u * 1024)

/* One call's options. Strings are borrowed for bq_http_start (libcurl copies them). */
struct bq_http_request {
    const char *method;          /* NULL: GET (POST when there is a body) */
    const char *url;             /* http:// or https:// only */
    const char *const *headers;  /* "Name: value" lines, no CR or LF */
    int nheaders;
    const char *body;            /* NULL: none */
    size_t body_len;
    double timeout;              /* the whole call, seconds; 0: none */
    double connect_timeout;      /* 0: libcurl's (300 s) */
    double idle_timeout;         /* no byte received for this long; 0: none */
    bool insecure;               /* skip the certificate and host name checks */
    const char *ca_file;         /* PEM bundle to trust instead of the system's */
    long max_redirects;          /* 0: a 3xx is returned as it is */
    size_t max_bytes;            /* the body's bound (decoded); 0: none */
    bool stream;                 /* pieces are taken as they come (bq_http_take) */
};

struct bq_http_loop;
struct bq_http;

/* What bq_http_wait waits for. */
enum bq_http_until {
    BQ_HTTP_HEAD = 0, /* the final response's status and headers (or the end) */
    BQ_HTTP_DATA,     /* some body bytes not taken yet (or the end) */
    BQ_HTTP_END,      /* the end of the transfer */
};

/* A loop for the calling thread's transfers; NULL with err (libcurl missing: BQ_EUNSUPPORTED). */
struct bq_http_loop *bq_http_loop_new(bq_err *err);
/* Frees the loop; its transfers must be freed first. */
void bq_http_loop_free(struct bq_http_loop *loop);
/* Wakes a wait on the loop: any thread, any time (curl_multi_wakeup). */
void bq_http_loop_wake(void *loop);

/* Starts a call. *out owned by the caller (bq_http_free). On failure (bad options) err's
 * message names the option, and *code the stable code. */
bq_status bq_http_start(struct bq_http_loop *loop, const struct bq_http_request *req,
                        struct bq_http **out, const char **code, bq_err *err);

/* Runs the loop until `until` holds for h, the monotonic `deadline` passes (0: none;
 * BQ_ETIMEDOUT, h still open), or stop(ud) returns true (BQ_EINTR, h still open; stop is
 * tested after each wake-up). BQ_OK does not mean success: see bq_http_failed. */
bq_status bq_http_wait(struct bq_http *h, enum bq_http_until until, double deadline,
                       bool (*stop)(void *ud), void *ud, bq_err *err);

/* Whether `until` holds for h now (no waiting, no progress made). */
bool bq_http_holds(const struct bq_http *h, enum bq_http_until until);

/* For a thread that waits for many transfers at once in its own loop (handler coroutines):
 * makes what progress can be made now on every transfer of the loop, without waiting;
 * then waits up to `seconds` for network activity or bq_http_loop_wake. BQ_EIO when
 * libcurl fails. */
bq_status bq_http_loop_step(struct bq_http_loop *loop, bq_err *err);
bq_status bq_http_loop_poll(struct bq_http_loop *loop, double seconds, bq_err *err);

/* After a wait: if the transfer ended in failure, with what (code and message, valid until h
 * is freed); NULL otherwise. */
const char *bq_http_failed(const struct bq_http *h, const char **code);

/* The response's status (0 before the head) and its headers: n pairs in arrival order, names
 * in lower case, values without surrounding blanks (a name may repeat). */
long bq_http_status(const struct bq_http *h);
int bq_http_header_count(const struct bq_http *h);
void bq_http_header(const struct bq_http *h, int i, const char **name, size_t *name_len,
                    const char **value, size_t *value_len);

/* The body bytes received and not taken yet; the caller copies them, then drops them with
 * bq_http_consume. */
const char *bq_http_body(struct bq_http *h, size_t *len);
void bq_http_consume(struct bq_http *h);

/* "GET https://host/path": the call as messages show it. */
const char *bq_http_shown(const struct bq_http *h);

/* Ends the call (closing its connection if it had not ended) and frees h. NULL: nothing. */
void bq_http_free(struct bq_http *h);
/* The caller is done with h, perhaps before it ended (a stream it stopped reading at its
 * last event: an SSE stream's "[DONE]", which the end of the response follows at once):
 * what already came is handed to libcurl, and for up to `wait` seconds more what comes, so
 * that a transfer that ends then keeps its connection for the next call instead of having
 * it closed; a body byte more (the server goes on) ends it at once. Then h is freed as
 * bq_http_free frees it, closing a transfer that did not end. A cancel, a pause, a timeout:
 * bq_http_free, which closes at once. NULL: nothing. */
void bq_http_release(struct bq_http *h, double wait);

/* The URL as messages show it: scheme://host[:port]/path, no user, password, query or
 * fragment; "(bad URL)" when it does not parse. Writes at most size bytes (NUL included).
 * Needs libcurl loaded (bq_http_loop_new). */
void bq_http_redact_url(const char *url, char *out, size_t size);

/* The stable code for a libcurl result (see the list above). */
const char *bq_http_code_of(int curlcode);

#endif
