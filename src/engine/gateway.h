/*
 * gateway.h -- the HTTP side of binduq's A2A gateway: a libmicrohttpd server (net/mhdapi.h)
 * that hands each request, its body read and bounded, to whoever serves it (the Lua side:
 * lua/binduq/gateway.lua through src/lua/l_gateway.c), and sends back what that answers,
 * whole or as a stream (server-sent events).
 *
 * The server's threads never run Lua. A request waits, its connection suspended, in a queue
 * that bq_gateway_next takes from (one consumer thread: the gateway's Lua loop); the answer
 * (bq_gateway_reply, or bq_gateway_stream + bq_gateway_send + bq_gateway_end) resumes the
 * connection. So a slow answer holds a connection, not a thread, and thousands of open
 * streams cost memory only.
 *
 * Bounds: a body over max_body is answered 413 before it is read (its Content-Length; a
 * chunked one that passes it closes the connection); max_connections at once
 * (libmicrohttpd refuses more); a connection idle for `idle_timeout` seconds is closed; a
 * stream whose unsent bytes are over 1 MiB is ended by its next event (a reader that does
 * not read; an event of any size is taken when nothing waits). Requests, answers
 * and streams are numbered (id); an answer for an id whose connection is gone is dropped.
 */
#ifndef BINDUQ_GATEWAY_H
#define BINDUQ_GATEWAY_H

#include "../binduq.h"
#include "../broker/broker.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bq_gateway_options {
    const char *host;       /* an IP address; NULL: 127.0.0.1 */
    int port;               /* 0: any free port (bq_gateway_port tells) */
    size_t max_body;        /* 0: 1 MiB */
    int max_connections;    /* 0: 1024 */
    double idle_timeout;    /* seconds; 0: 60 */
    const char *cert_pem;   /* TLS: the certificate chain and key, PEM text (not paths) */
    const char *key_pem;
};

/* One request, as bq_gateway_next hands it over; the strings are owned by it
 * (bq_gateway_request_free). Header values are NULL when absent. */
struct bq_gateway_request {
    uint64_t id;
    char method[16];
    char *path;            /* without the query string (not passed on) */
    char *body;            /* NUL-terminated; body_len bytes */
    size_t body_len;
    char *authorization, *content_type, *accept, *last_event_id;
    char *host, *origin;   /* for a server that checks where a browser's request came from */
    char peer[64];         /* the client's address */
};

typedef struct bq_gateway bq_gateway;

bq_status bq_gateway_start(const struct bq_gateway_options *o, bq_gateway **out, bq_err *err);
int bq_gateway_port(const bq_gateway *g);

/* Waits up to `timeout` seconds for the next request: 1 (filled in), 0 (none came), -1 (the
 * gateway is stopping). One consumer thread. */
int bq_gateway_next(bq_gateway *g, double timeout, struct bq_gateway_request *out);
/* An eventfd that is readable while a request or an event waits for bq_gateway_next (or the
 * gateway stops), for a consumer that waits on other things too (a worker's loop). Made on
 * the first call; the gateway owns it. -1 if it cannot be made. */
int bq_gateway_fd(bq_gateway *g);
void bq_gateway_request_free(struct bq_gateway_request *r);

/* Answers request id whole: status, Content-Type, body (copied), and extra headers as
 * names[i]: values[i]. False when the connection is gone. */
bool bq_gateway_reply(bq_gateway *g, uint64_t id, unsigned status, const char *content_type,
                      const char *body, size_t len, const char *const *names,
                      const char *const *values, int nheaders);

/* Answers request id as a stream (status 200, Content-Type, no length, extra headers as in
 * bq_gateway_reply; Cache-Control: no-cache unless they hold one); bq_gateway_send appends
 * bytes (false once the reader is gone or too far behind), bq_gateway_end ends it. */
bool bq_gateway_stream(bq_gateway *g, uint64_t id, const char *content_type,
                       const char *const *names, const char *const *values, int nheaders);
bool bq_gateway_send(bq_gateway *g, uint64_t id, const char *data, size_t len);
void bq_gateway_end(bq_gateway *g, uint64_t id);

/* Task events for the consumer (docs/events.md): a thread follows the stream of `queue`
 * through `broker` (borrowed: it must outlive g, or bq_gateway_unfollow be called first)
 * from its newest entry on, and hands each entry to bq_gateway_next as a note (1 is
 * returned with method "EVENT", id 0 and body the entry's JSON array), so the consumer wakes
 * for what it follows without polling. One follower per gateway; again: replaced. */
bq_status bq_gateway_follow(bq_gateway *g, bq_broker *broker, const char *queue,
                            bq_err *err);
void bq_gateway_unfollow(bq_gateway *g);

/* Stops listening, ends every open stream, answers what waits with 503, and frees g. */
void bq_gateway_free(bq_gateway *g);

#endif
