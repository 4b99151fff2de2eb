/*
 * tls.h -- TLS for Redis connections (rediss://), with OpenSSL.
 *
 * hiredis 0.14 has no TLS, and binduq owns its sockets anyway (conn.h): a connection that
 * uses TLS runs the handshake on its connected socket and then reads and writes through the
 * SSL object instead of recv/send, keeping the same deadlines and wake-ups.
 *
 * A context (bq_tls_ctx) holds the trust anchors and the client certificate; it is made once
 * per broker and shared by its connections (OpenSSL's SSL_CTX is safe to share once set up).
 * Server certificates are verified by default, against the CA file/dir given or the system's
 * store, and the host name (or server_name) must match the certificate.
 */
#ifndef BINDUQ_TLS_H
#define BINDUQ_TLS_H

#include "../binduq.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct bq_tls_ctx bq_tls_ctx;
typedef struct bq_tls bq_tls;

struct bq_tls_config {
    const char *ca_file;     /* PEM bundle of trusted CAs; NULL: ca_dir or the system store */
    const char *ca_dir;      /* a hashed CA directory (c_rehash) */
    const char *cert_file;   /* client certificate, PEM (mutual TLS) */
    const char *key_file;    /* its private key, PEM; NULL: in cert_file */
    bool insecure;           /* no certificate or name verification (tests only) */
};

/* Builds a context; errors name the file and OpenSSL's reason. */
bq_status bq_tls_ctx_new(const struct bq_tls_config *cfg, bq_tls_ctx **out, bq_err *err);
void bq_tls_ctx_free(bq_tls_ctx *ctx);

/* Runs the client handshake on connected socket fd (non-blocking) by the deadline (absolute
 * monotonic seconds). `host` is the name sent as SNI and verified (an IP address is verified
 * as one). `addr` names the server in messages. */
bq_status bq_tls_connect(bq_tls_ctx *ctx, int fd, const char *host, const char *addr,
                         double deadline, bq_tls **out, bq_err *err);
void bq_tls_free(bq_tls *t);

/* Non-blocking I/O: > 0 bytes moved; 0 the peer closed the session; -1 with *want set to
 * POLLIN or POLLOUT when the socket must become ready first; -2 an error (errno or the TLS
 * error queue; *why describes it). */
ssize_t bq_tls_read(bq_tls *t, void *buf, size_t len, short *want, const char **why);
ssize_t bq_tls_write(bq_tls *t, const void *buf, size_t len, short *want, const char **why);

/* True when the session has no decrypted bytes waiting and the peer has not closed it;
 * consumes TLS records that carry no data (session tickets). For pools. */
bool bq_tls_idle_ok(bq_tls *t);
/* Whether decrypted bytes wait in t, which polling the socket would not show. */
bool bq_tls_pending(bq_tls *t);

#endif
