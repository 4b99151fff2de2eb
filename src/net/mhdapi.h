/*
 * mhdapi.h -- libmicrohttpd, loaded on first use (see core/dl.h): the metrics endpoint
 * (engine/metrics.c) and the gateway (engine/gateway.c) call bq_mhd.MHD_start_daemon(...) and
 * so on after bq_mhd_load succeeded. The types and constants come from microhttpd.h. A
 * process that serves nothing over HTTP never maps libmicrohttpd or GnuTLS, which it pulls in.
 */
#ifndef BINDUQ_MHDAPI_H
#define BINDUQ_MHDAPI_H

#include "../binduq.h"
#include "../core/err.h"

#include <microhttpd.h>

#define BQ_MHD_FUNCTIONS(X)                                                                    \
    X(MHD_create_response_from_buffer) X(MHD_create_response_from_callback)                   \
    X(MHD_add_response_header) X(MHD_queue_response) X(MHD_destroy_response)                  \
    X(MHD_start_daemon) X(MHD_get_daemon_info) X(MHD_stop_daemon)                             \
    X(MHD_lookup_connection_value) X(MHD_suspend_connection) X(MHD_resume_connection)         \
    X(MHD_get_connection_info)

struct bq_mhd_api {
#define BQ_MHD_FIELD(f) __typeof__(f) *f;
    BQ_MHD_FUNCTIONS(BQ_MHD_FIELD)
#undef BQ_MHD_FIELD
};

extern struct bq_mhd_api bq_mhd;

/* Loads libmicrohttpd once per process; every later call returns the first one's verdict.
 * `what` names the user in the error ("metrics", "gateway"). */
bq_status bq_mhd_load(const char *what, bq_err *err);

#endif
