/*
 * curlapi.h -- libcurl, loaded on first use (see core/dl.h): http.c calls
 * bq_curl.curl_easy_setopt(...) and so on after bq_curl_load succeeded. The types and
 * constants come from curl's headers. A worker whose handlers make no HTTP call never maps
 * libcurl, nor what it pulls in (nghttp2, libssh2, LDAP, librtmp, GSSAPI: about 4 MiB
 * resident).
 *
 * curl.h's type-checking wrappers are function-like macros named after the functions
 * (curl_easy_setopt(h, opt, v) expands to a statement expression), which would also expand
 * bq_curl.curl_easy_setopt(...): CURL_DISABLE_TYPECHECK turns them off. The option values
 * are checked by hand where they are set (long, curl_off_t, pointers: see http.c).
 */
#ifndef BINDUQ_CURLAPI_H
#define BINDUQ_CURLAPI_H

#include "../binduq.h"
#include "../core/err.h"

#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>

#define BQ_CURL_FUNCTIONS(X)                                                                   \
    X(curl_global_init) X(curl_easy_init) X(curl_easy_setopt) X(curl_easy_getinfo)            \
    X(curl_easy_cleanup) X(curl_easy_strerror) X(curl_easy_reset) X(curl_multi_init)          \
    X(curl_multi_add_handle) X(curl_multi_remove_handle) X(curl_multi_socket_action)          \
    X(curl_multi_assign) X(curl_multi_info_read) X(curl_multi_cleanup)                        \
    X(curl_multi_setopt) X(curl_slist_append) X(curl_slist_free_all) X(curl_url)              \
    X(curl_url_set) X(curl_url_get) X(curl_url_cleanup) X(curl_free) X(curl_version_info)

struct bq_curl_api {
#define BQ_CURL_FIELD(f) __typeof__(f) *f;
    BQ_CURL_FUNCTIONS(BQ_CURL_FIELD)
#undef BQ_CURL_FIELD
};

extern struct bq_curl_api bq_curl;

/* Loads libcurl once per process (and runs curl_global_init); every later call returns the
 * first one's verdict. */
bq_status bq_curl_load(bq_err *err);

#endif
