/*
 * sslapi.h -- OpenSSL (libssl and the libcrypto it pulls in), loaded on first use (see
 * core/dl.h): tls.c calls bq_ssl.SSL_read(...) and so on after bq_ssl_load succeeded. The
 * types and constants still come from OpenSSL's headers. A process that never opens a
 * rediss:// connection never maps OpenSSL, whose libraries alone are 1.7 MiB resident.
 *
 * SSL_CTX_set_min_proto_version, SSL_CTX_set_mode and SSL_set_tlsext_host_name are macros
 * over SSL_CTX_ctrl and SSL_ctrl, which are listed instead.
 */
#ifndef BINDUQ_SSLAPI_H
#define BINDUQ_SSLAPI_H

#include "../binduq.h"
#include "../core/err.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define BQ_SSL_FUNCTIONS(X)                                                                    \
    X(TLS_client_method) X(SSL_CTX_new) X(SSL_CTX_free) X(SSL_CTX_ctrl)                        \
    X(SSL_CTX_load_verify_locations) X(SSL_CTX_set_default_verify_paths)                      \
    X(SSL_CTX_use_certificate_chain_file) X(SSL_CTX_use_PrivateKey_file)                      \
    X(SSL_CTX_check_private_key) X(SSL_CTX_set_verify) X(SSL_CTX_get_verify_mode)             \
    X(SSL_new) X(SSL_free) X(SSL_set_fd) X(SSL_ctrl) X(SSL_get0_param) X(SSL_connect)         \
    X(SSL_get_error) X(SSL_get_verify_result) X(SSL_read) X(SSL_write) X(SSL_peek)            \
    X(SSL_pending) X(X509_VERIFY_PARAM_set1_host) X(X509_VERIFY_PARAM_set1_ip_asc)            \
    X(X509_verify_cert_error_string) X(ERR_clear_error) X(ERR_error_string_n)                 \
    X(ERR_peek_last_error)

struct bq_ssl_api {
#define BQ_SSL_FIELD(f) __typeof__(f) *f;
    BQ_SSL_FUNCTIONS(BQ_SSL_FIELD)
#undef BQ_SSL_FIELD
};

extern struct bq_ssl_api bq_ssl;

/* Loads OpenSSL once per process; every later call returns the first one's verdict. */
bq_status bq_ssl_load(bq_err *err);

#endif
