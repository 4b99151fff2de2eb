/*
 * curlapi.c -- see curlapi.h.
 */
#include "curlapi.h"

#include "../core/dl.h"

#include <stdio.h>

struct bq_curl_api bq_curl;

/* curl_global_init runs here, once, under bq_dl_load's lock: it is not thread-safe in every
 * libcurl build, and every handler thread may be the first to make a call. The newest things
 * used are the options CURLOPT_PROTOCOLS_STR and CURLOPT_REDIR_PROTOCOLS_STR (7.85); Debian 12
 * has 7.88. */
static bool fill(void *lib, char *why, size_t size)
{
#define CURL_SYM(f) BQ_DL_SYM(bq_curl, f)
    BQ_CURL_FUNCTIONS(CURL_SYM)
#undef CURL_SYM
    CURLcode rc = bq_curl.curl_global_init(CURL_GLOBAL_DEFAULT);
    if (rc != CURLE_OK) {
        snprintf(why, size, "curl_global_init: %s", bq_curl.curl_easy_strerror(rc));
        return false;
    }
    return true;
}

static struct bq_dl_lib libcurl = {.soname = "libcurl.so.4", .fill = fill};

bq_status bq_curl_load(bq_err *err)
{
    const char *why = bq_dl_load(&libcurl);
    if (why != NULL)
        return bq_err_set(err, BQ_EUNSUPPORTED, "HTTP calls need libcurl 4 (Debian: apt-get "
                          "install libcurl4): %s", why);
    return BQ_OK;
}
