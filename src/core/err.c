/*
 * err.c -- status names and the bq_err formatting helpers.
 */
#include "err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *bq_status_name(bq_status code)
{
    switch (code) {
    case BQ_OK: return "OK";
    case BQ_ENOMEM: return "ENOMEM";
    case BQ_EINVAL: return "EINVAL";
    case BQ_EIO: return "EIO";
    case BQ_ETIMEDOUT: return "ETIMEDOUT";
    case BQ_EPROTO: return "EPROTO";
    case BQ_EREDIS: return "EREDIS";
    case BQ_EPG: return "EPG";
    case BQ_ECLOSED: return "ECLOSED";
    case BQ_ECONNREFUSED: return "ECONNREFUSED";
    case BQ_ENOTFOUND: return "ENOTFOUND";
    case BQ_EAUTH: return "EAUTH";
    case BQ_EUNSUPPORTED: return "EUNSUPPORTED";
    case BQ_EINTR: return "EINTR";
    case BQ_ETOOBIG: return "ETOOBIG";
    }
    return "EUNKNOWN";
}

const char *bq_version(void)
{
    return BQ_VERSION_STRING;
}

bq_status bq_err_set(bq_err *err, bq_status code, const char *fmt, ...)
{
    if (err != NULL) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

bq_status bq_err_prefix(bq_err *err, const char *prefix)
{
    if (err == NULL)
        return BQ_OK;
    char tmp[2 * sizeof err->msg];
    snprintf(tmp, sizeof tmp, "%.200s: %s", prefix, err->msg);
    size_t n = strlen(tmp);
    if (n >= sizeof err->msg)
        n = sizeof err->msg - 1;
    memcpy(err->msg, tmp, n);
    err->msg[n] = '\0';
    return err->code;
}

void bq_err_clear(bq_err *err)
{
    if (err != NULL) {
        err->code = BQ_OK;
        err->msg[0] = '\0';
    }
}

bq_status bq_status_from_errno(int errnum)
{
    switch (errnum) {
    case ENOMEM: return BQ_ENOMEM;
    case ETIMEDOUT: return BQ_ETIMEDOUT;
    case ECONNREFUSED: return BQ_ECONNREFUSED;
    case ENOENT: return BQ_ECONNREFUSED; /* a unix socket path with nobody behind it */
    case EINVAL: return BQ_EINVAL;
    default: return BQ_EIO;
    }
}
