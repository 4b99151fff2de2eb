/*
 * pqapi.c -- see pqapi.h.
 */
#include "pqapi.h"

#include "../core/dl.h"

#include <pthread.h>

struct bq_pq_api bq_pq;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char failure[300]; /* "" once loaded */

static void load(void)
{
    void *lib = bq_dl_open("libpq.so.5", failure, sizeof failure);
    if (lib == NULL)
        return;
#define BQ_PQ_LOAD(f)                                                                          \
    if (!bq_dl_sym(lib, #f, &bq_pq.f, sizeof bq_pq.f, failure, sizeof failure))               \
        return;
    BQ_PQ_FUNCTIONS(BQ_PQ_LOAD)
#undef BQ_PQ_LOAD
}

bq_status bq_pq_load(bq_err *err)
{
    pthread_once(&once, load);
    if (failure[0] != '\0')
        return bq_err_set(err, BQ_EINVAL, "storage: PostgreSQL needs libpq (Debian: apt-get "
                          "install libpq5): %s", failure);
    return BQ_OK;
}
