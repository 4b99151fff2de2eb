/*
 * err.h -- error reporting helpers. bq_err itself is public (binduq.h).
 *
 * Every fallible function fills a caller-owned bq_err (or ignores a NULL one) and returns the
 * same code. Messages are formatted into the fixed buffer: no allocation on error paths.
 */
#ifndef BINDUQ_ERR_H
#define BINDUQ_ERR_H

#include "../binduq.h"

/* Sets err (if not NULL) and returns code. printf-style message, truncated to fit. */
bq_status bq_err_set(bq_err *err, bq_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes err->msg with "prefix: " (keeps the code). Returns err->code, or BQ_OK for NULL. */
bq_status bq_err_prefix(bq_err *err, const char *prefix);

/* Clears err to BQ_OK and an empty message. */
void bq_err_clear(bq_err *err);

/* The errno-style status for a system errno value (ECONNREFUSED -> BQ_ECONNREFUSED, ...). */
bq_status bq_status_from_errno(int errnum);

#endif
