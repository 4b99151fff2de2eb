/*
 * conn.h -- one Redis connection.
 *
 * binduq owns the socket and uses hiredis only for what it is best at: the RESP command
 * formatter and the reply reader. Owning the socket gives every wait a deadline and an
 * optional wake-up descriptor (so a blocking fetch can be interrupted for shutdown), lets us
 * pipeline exactly as we want, and runs TLS (tls.h), which hiredis 0.14 lacks, on the same socket.
 *
 * A bq_conn is used by one thread at a time. Replies are hiredis redisReply trees owned by the
 * caller (freeReplyObject). After an I/O error, a protocol error or a timeout the stream
 * position is unknown, so the connection is marked broken and must be closed; an error reply
 * from Redis leaves it usable.
 */
#ifndef BINDUQ_CONN_H
#define BINDUQ_CONN_H

#include "../binduq.h"
#include "tls.h"
#include "url.h"

#include <hiredis/hiredis.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct bq_conn bq_conn;

struct bq_conn_opts {
    double connect_timeout; /* seconds for TCP connect plus the AUTH/SELECT handshake */
    double command_timeout; /* seconds for bq_conn_call */
    bq_tls_ctx *tls;        /* borrowed; required for rediss:// URLs */
    char server_name[256];  /* TLS: the name sent (SNI) and verified; "": the host's */
    const atomic_uint *epoch; /* borrowed, may be NULL: bumped when the master changes
                               * (Sentinel); a connection opened in an older epoch counts
                               * as broken */
    /* Bounds on one reply (resp.h), so a hostile server or anyone on a plaintext path cannot
     * make the reader allocate without end. 0: BINDUQ_MAX_REPLY_BYTES and
     * BINDUQ_MAX_REPLY_ELEMENTS from the environment, else the defaults below. A reply over
     * either fails the read with BQ_ETOOBIG ("reply from host:port exceeds N elements"),
     * before hiredis allocates for it, and breaks the connection. */
    size_t max_reply_bytes;    /* bytes as sent, headers included */
    size_t max_reply_elements; /* the reply and all elements of its arrays, recursively */
};

/* 512 MiB: Redis' own largest bulk string (proto-max-bulk-len), and room for any fetch (one
 * of several messages stops at BQ_FETCH_BYTES, 16 MiB, plus one of max_message_size). */
#define BQ_MAX_REPLY_BYTES_DEFAULT ((size_t)512 * 1024 * 1024)
/* Each element costs the reader a redisReply of about 50 bytes plus a pointer: about 64 MB.
 * binduq's own replies have at most a few thousand. */
#define BQ_MAX_REPLY_ELEMENTS_DEFAULT ((size_t)1000000)

/* Connects to the first host of `url` (or its socket path), over TLS for rediss://, then
 * AUTH and SELECT as the URL says. For redis+sentinel:// it asks the sentinels in turn for
 * the master of the URL's service (SENTINEL get-master-addr-by-name, authenticating with
 * sentinel_password), connects to it and checks that ROLE says master; so every new
 * connection follows a failover. Cluster URLs are BQ_EUNSUPPORTED here: the cluster broker
 * (broker/cluster.c) connects to each node with a plain redis:// URL. */
bq_status bq_conn_open(const struct bq_url *url, const struct bq_conn_opts *opts,
                       bq_conn **out, bq_err *err);
void bq_conn_close(bq_conn *c);

int bq_conn_fd(const bq_conn *c);
bool bq_conn_tls(const bq_conn *c);

/* A connection to one node (a sentinel) of u: TCP (TLS when u is rediss), AUTH with
 * `password` when not NULL, no SELECT. */
bq_status bq_conn_open_node(const struct bq_url *u, size_t node, const char *password,
                            const struct bq_conn_opts *opts, bq_conn **out, bq_err *err);
/* "host:port" of the server it talks to (the master found, for Sentinel URLs). */
const char *bq_conn_address(const bq_conn *c);

/* False when the connection is broken or the server has closed it (checked without blocking,
 * by peeking at the socket, unless a reply came in the last BQ_CONN_FRESH seconds). Pools
 * call this before lending a connection out. */
#define BQ_CONN_FRESH 0.010
bool bq_conn_usable(bq_conn *c);
bool bq_conn_broken(const bq_conn *c);
void bq_conn_mark_broken(bq_conn *c);

/* Seconds of monotonic time at the last completed reply. */
double bq_conn_last_used(const bq_conn *c);

/* Queues one command (binary-safe arguments) in the output buffer. */
bq_status bq_conn_append(bq_conn *c, int argc, const char **argv, const size_t *lens,
                         bq_err *err);

/* Writes the output buffer. `deadline` is absolute monotonic time (negative: none). If
 * `wakefd` >= 0 and becomes readable, returns BQ_EINTR (the connection stays usable). */
bq_status bq_conn_flush(bq_conn *c, double deadline, int wakefd, bq_err *err);

/* From now on, bulk strings longer than max bytes reach no reply whole: each becomes the
 * error element "BQOVERSIZE <length> <hex of its first bytes>" (see bulkcap.h) while its
 * bytes are skipped as they arrive (0: no cap, the default). Call it between replies. For
 * connections that fetch messages. The reply limits count what remains. */
void bq_conn_cap_bulk(bq_conn *c, size_t max);

/* Reads the next reply into *out, with the same deadline and wake-up rules. A reply over the
 * connection's limits is BQ_ETOOBIG, one that breaks the protocol BQ_EPROTO; both break the
 * connection (replies that arrived whole before it are still returned first). */
bq_status bq_conn_read(bq_conn *c, redisReply **out, double deadline, int wakefd, bq_err *err);

/* Waits until the next reply may be read (bytes are buffered, or the socket is readable), at
 * most until `until` (monotonic seconds): BQ_OK; BQ_ETIMEDOUT when nothing came by then, with
 * the connection still usable (unlike a read's deadline); BQ_EINTR when `wakefd` (>= 0)
 * became readable; BQ_EIO if the wait itself failed. For a wait the caller cuts short on
 * its own clock (a blocking command the server would time out too late). */
bq_status bq_conn_await(bq_conn *c, double until, int wakefd);

/* One round trip with the command timeout. An error reply becomes BQ_EREDIS (BQ_EAUTH for
 * NOAUTH/WRONGPASS) with the message "<COMMAND>: <redis error>", and *out is NULL. `out` may
 * be NULL when the reply is not needed. */
bq_status bq_conn_call(bq_conn *c, redisReply **out, bq_err *err, int argc, const char **argv,
                       const size_t *lens);

/* The same for NUL-terminated arguments, terminated by a NULL. */
bq_status bq_conn_callv(bq_conn *c, redisReply **out, bq_err *err, ...);

/* Checks a reply read by bq_conn_read: for an error reply, sets err as bq_conn_call would
 * and returns its status; otherwise BQ_OK. `cmd` names the command in the message. */
bq_status bq_reply_check(const redisReply *r, const char *cmd, bq_err *err);

#endif
