/*
 * tls.c -- see tls.h. OpenSSL 3, opened on the first TLS context (sslapi.h).
 */
#include "tls.h"

#include "../core/alloc.h"
#include "../core/clock.h"
#include "../core/err.h"

#include "sslapi.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

struct bq_tls_ctx {
    SSL_CTX *ctx;
};

struct bq_tls {
    SSL *ssl;
};

/* OpenSSL's reason for the last failure on this thread (a static per-thread buffer). */
static const char *ssl_reason(void)
{
    static _Thread_local char buf[256];
    unsigned long e = bq_ssl.ERR_peek_last_error();
    if (e == 0)
        return "unknown TLS error";
    bq_ssl.ERR_error_string_n(e, buf, sizeof buf);
    bq_ssl.ERR_clear_error();
    return buf;
}

bq_status bq_tls_ctx_new(const struct bq_tls_config *cfg, bq_tls_ctx **out, bq_err *err)
{
    *out = NULL;
    bq_status loaded = bq_ssl_load(err);
    if (loaded != BQ_OK)
        return loaded;
    bq_ssl.ERR_clear_error();
    bq_tls_ctx *t = bq_calloc(1, sizeof *t);
    if (t == NULL)
        return bq_err_set(err, BQ_ENOMEM, "TLS: out of memory");
    t->ctx = bq_ssl.SSL_CTX_new(bq_ssl.TLS_client_method());
    if (t->ctx == NULL) {
        bq_free(t);
        return bq_err_set(err, BQ_ENOMEM, "SSL_CTX_new: %s", ssl_reason());
    }
    /* SSL_CTX_set_min_proto_version and SSL_CTX_set_mode, which are macros. */
    bq_ssl.SSL_CTX_ctrl(t->ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, TLS1_2_VERSION, NULL);
    bq_ssl.SSL_CTX_ctrl(t->ctx, SSL_CTRL_MODE,
                        SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, NULL);
    bq_status st = BQ_OK;
    if (cfg->ca_file != NULL || cfg->ca_dir != NULL) {
        if (bq_ssl.SSL_CTX_load_verify_locations(t->ctx, cfg->ca_file, cfg->ca_dir) != 1)
            st = bq_err_set(err, BQ_EINVAL, "TLS CA %s '%.200s': %s",
                            cfg->ca_file ? "file" : "directory",
                            cfg->ca_file ? cfg->ca_file : cfg->ca_dir, ssl_reason());
    } else if (bq_ssl.SSL_CTX_set_default_verify_paths(t->ctx) != 1) {
        st = bq_err_set(err, BQ_EINVAL, "TLS: cannot load the system's CA store: %s",
                        ssl_reason());
    }
    if (st == BQ_OK && cfg->cert_file != NULL) {
        const char *key = cfg->key_file ? cfg->key_file : cfg->cert_file;
        if (bq_ssl.SSL_CTX_use_certificate_chain_file(t->ctx, cfg->cert_file) != 1)
            st = bq_err_set(err, BQ_EINVAL, "TLS client certificate '%.200s': %s",
                            cfg->cert_file, ssl_reason());
        else if (bq_ssl.SSL_CTX_use_PrivateKey_file(t->ctx, key, SSL_FILETYPE_PEM) != 1)
            st = bq_err_set(err, BQ_EINVAL, "TLS client key '%.200s': %s", key, ssl_reason());
        else if (bq_ssl.SSL_CTX_check_private_key(t->ctx) != 1)
            st = bq_err_set(err, BQ_EINVAL, "TLS client key '%.200s' does not match the "
                            "certificate '%.200s'", key, cfg->cert_file);
    } else if (st == BQ_OK && cfg->key_file != NULL) {
        st = bq_err_set(err, BQ_EINVAL, "TLS: a client key needs a client certificate");
    }
    bq_ssl.SSL_CTX_set_verify(t->ctx, cfg->insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    if (st != BQ_OK) {
        bq_tls_ctx_free(t);
        return st;
    }
    *out = t;
    return BQ_OK;
}

void bq_tls_ctx_free(bq_tls_ctx *t)
{
    if (t == NULL)
        return;
    bq_ssl.SSL_CTX_free(t->ctx);
    bq_free(t);
}

void bq_tls_free(bq_tls *t)
{
    if (t == NULL)
        return;
    bq_ssl.SSL_free(t->ssl);
    bq_free(t);
}

static bq_status wait_for(int fd, short events, double deadline)
{
    for (;;) {
        double left = deadline - bq_now_mono();
        if (left <= 0)
            return BQ_ETIMEDOUT;
        struct pollfd p = {fd, events, 0};
        int n = poll(&p, 1, (int)ceil(left * 1000.0));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return BQ_EIO;
        if (n > 0)
            return BQ_OK;
    }
}

bq_status bq_tls_connect(bq_tls_ctx *ctx, int fd, const char *host, const char *addr,
                         double deadline, bq_tls **out, bq_err *err)
{
    *out = NULL;
    bq_ssl.ERR_clear_error();
    bq_tls *t = bq_calloc(1, sizeof *t);
    if (t == NULL || (t->ssl = bq_ssl.SSL_new(ctx->ctx)) == NULL) {
        bq_free(t);
        return bq_err_set(err, BQ_ENOMEM, "TLS %s: out of memory", addr);
    }
    unsigned char ip[16];
    bool is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    bq_ssl.SSL_set_fd(t->ssl, fd);
    if (!is_ip)
        bq_ssl.SSL_ctrl(t->ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
                        (void *)host); /* SSL_set_tlsext_host_name, a macro */
    if (bq_ssl.SSL_CTX_get_verify_mode(ctx->ctx) != SSL_VERIFY_NONE) {
        X509_VERIFY_PARAM *param = bq_ssl.SSL_get0_param(t->ssl);
        int ok = is_ip ? bq_ssl.X509_VERIFY_PARAM_set1_ip_asc(param, host)
                       : bq_ssl.X509_VERIFY_PARAM_set1_host(param, host, 0);
        if (ok != 1) {
            bq_tls_free(t);
            return bq_err_set(err, BQ_EINVAL, "TLS %s: cannot verify the name '%.100s'", addr,
                              host);
        }
    }
    for (;;) {
        int r = bq_ssl.SSL_connect(t->ssl);
        if (r == 1)
            break;
        int e = bq_ssl.SSL_get_error(t->ssl, r);
        bq_status st;
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            st = wait_for(fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline);
            if (st == BQ_OK)
                continue;
            st = bq_err_set(err, st, "TLS handshake with %s: %s", addr,
                            st == BQ_ETIMEDOUT ? "timed out" : "poll failed");
        } else {
            long v = bq_ssl.SSL_get_verify_result(t->ssl);
            if (v != X509_V_OK)
                st = bq_err_set(err, BQ_EAUTH, "TLS handshake with %s: certificate verify "
                                "failed: %s", addr, bq_ssl.X509_verify_cert_error_string(v));
            else if (e == SSL_ERROR_SYSCALL && bq_ssl.ERR_peek_last_error() == 0)
                st = bq_err_set(err, BQ_EIO, "TLS handshake with %s: %s", addr,
                                errno ? strerror(errno) : "the server closed the connection "
                                "(is it a TLS port?)");
            else
                st = bq_err_set(err, BQ_EIO, "TLS handshake with %s: %s", addr, ssl_reason());
        }
        bq_tls_free(t);
        return st;
    }
    *out = t;
    return BQ_OK;
}

static ssize_t io_result(bq_tls *t, int n, short *want, const char **why)
{
    if (n > 0)
        return n;
    int e = bq_ssl.SSL_get_error(t->ssl, n);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        *want = POLLIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        *want = POLLOUT;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (bq_ssl.ERR_peek_last_error() == 0) {
            if (errno == 0)
                return 0; /* the peer closed the socket without a close_notify */
            *why = strerror(errno);
            return -2;
        }
        *why = ssl_reason();
        return -2;
    default:
        *why = ssl_reason();
        return -2;
    }
}

ssize_t bq_tls_read(bq_tls *t, void *buf, size_t len, short *want, const char **why)
{
    bq_ssl.ERR_clear_error();
    errno = 0;
    int n = bq_ssl.SSL_read(t->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    return io_result(t, n, want, why);
}

ssize_t bq_tls_write(bq_tls *t, const void *buf, size_t len, short *want, const char **why)
{
    bq_ssl.ERR_clear_error();
    errno = 0;
    int n = bq_ssl.SSL_write(t->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    return io_result(t, n, want, why);
}

bool bq_tls_pending(bq_tls *t)
{
    return bq_ssl.SSL_pending(t->ssl) > 0;
}

bool bq_tls_idle_ok(bq_tls *t)
{
    if (bq_ssl.SSL_pending(t->ssl) > 0)
        return false;
    char b;
    bq_ssl.ERR_clear_error();
    int n = bq_ssl.SSL_peek(t->ssl, &b, 1);
    if (n > 0)
        return false;
    int e = bq_ssl.SSL_get_error(t->ssl, n);
    bq_ssl.ERR_clear_error();
    return e == SSL_ERROR_WANT_READ;
}
