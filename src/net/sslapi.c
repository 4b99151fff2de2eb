/*
 * sslapi.c -- see sslapi.h.
 */
#include "sslapi.h"

#include "../core/dl.h"

struct bq_ssl_api bq_ssl;

/* libssl's dependency libcrypto comes with it, and dlsym on libssl's handle finds libcrypto's
 * functions (ERR_*, X509_*) too. */
static bool fill(void *lib, char *why, size_t size)
{
#define SSL_SYM(f) BQ_DL_SYM(bq_ssl, f)
    BQ_SSL_FUNCTIONS(SSL_SYM)
#undef SSL_SYM
    return true;
}

static struct bq_dl_lib libssl = {.soname = "libssl.so.3", .fill = fill};

bq_status bq_ssl_load(bq_err *err)
{
    const char *why = bq_dl_load(&libssl);
    if (why != NULL)
        return bq_err_set(err, BQ_EINVAL, "TLS needs OpenSSL 3 (Debian: apt-get install "
                          "libssl3): %s", why);
    return BQ_OK;
}
