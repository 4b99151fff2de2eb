/*
 * mhdapi.c -- see mhdapi.h.
 */
#include "mhdapi.h"

#include "../core/dl.h"

struct bq_mhd_api bq_mhd;

static bool fill(void *lib, char *why, size_t size)
{
#define MHD_SYM(f) BQ_DL_SYM(bq_mhd, f)
    BQ_MHD_FUNCTIONS(MHD_SYM)
#undef MHD_SYM
    return true;
}

static struct bq_dl_lib libmhd = {.soname = "libmicrohttpd.so.12", .fill = fill};

bq_status bq_mhd_load(const char *what, bq_err *err)
{
    const char *why = bq_dl_load(&libmhd);
    if (why != NULL)
        return bq_err_set(err, BQ_EINVAL, "%s: needs libmicrohttpd (Debian: apt-get install "
                          "libmicrohttpd12): %s", what, why);
    return BQ_OK;
}
