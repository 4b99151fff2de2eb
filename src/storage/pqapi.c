/*
 * pqapi.c -- see pqapi.h.
 */
#include "pqapi.h"

#include "../core/dl.h"

struct bq_pq_api bq_pq;

static bool fill(void *lib, char *why, size_t size)
{
#define PQ_SYM(f) BQ_DL_SYM(bq_pq, f)
    BQ_PQ_FUNCTIONS(PQ_SYM)
#undef PQ_SYM
    return true;
}

static struct bq_dl_lib libpq = {.soname = "libpq.so.5", .fill = fill};

bq_status bq_pq_load(bq_err *err)
{
    const char *why = bq_dl_load(&libpq);
    if (why != NULL)
        return bq_err_set(err, BQ_EINVAL, "storage: PostgreSQL needs libpq (Debian: apt-get "
                          "install libpq5): %s", why);
    return BQ_OK;
}
