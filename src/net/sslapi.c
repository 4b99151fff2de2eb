/*
 * sslapi.c -- see sslapi.h.
 */
#include "sslapi.h"

#include "../core/dl.h"

#include <pthread.h>

struct bq_ssl_api bq_ssl;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char failure[300]; /* "" once loaded */

static void load(void)
{
    /* libssl's dependency libcrypto comes with it, and dlsym on libssl's handle finds
     * libcrypto's functions (ERR_*, X509_*) too. */
    void *lib = bq_dl_open("libssl.so.3", failure, sizeof failure);
    if (lib == NULL)
        return;
#define BQ_SSL_LOAD(f)                                                                         \
    if (!bq_dl_sym(lib, #f, &bq_ssl.f, sizeof bq_ssl.f, failure, sizeof failure))             \
        return;
    BQ_SSL_FUNCTIONS(BQ_SSL_LOAD)
#undef BQ_SSL_LOAD
}

bq_status bq_ssl_load(bq_err *err)
{
    pthread_once(&once, load);
    if (failure[0] != '\0')
        return bq_err_set(err, BQ_EINVAL, "TLS needs OpenSSL 3 (Debian: apt-get install "
                          "libssl3): %s", failure);
    return BQ_OK;
}
