/*
 * metrics.h -- the operational HTTP endpoint of a process: Prometheus metrics on /metrics,
 * /healthz (the process is alive) and /readyz (Redis and the storage answer, not draining),
 * served by libmicrohttpd on its own thread.
 *
 * Workers register while they run; a scrape renders every registered worker's counters and
 * histograms and asks each broker for its queue lengths (a few round trips per scrape, none
 * on the task path). Producers count scheduled and deduplicated operations here too.
 * One endpoint per process; all functions are thread-safe.
 */
#ifndef BINDUQ_METRICS_H
#define BINDUQ_METRICS_H

#include "../binduq.h"
#include "worker.h"

#include <stdbool.h>

/* Starts serving on host:port (host NULL: 127.0.0.1; port 0: any free port). A second
 * call with the same address is a no-op; another address is BQ_EINVAL. *bound gets the
 * port. */
bq_status bq_metrics_serve(const char *host, int port, int *bound, bq_err *err);
/* Stops the endpoint (tests). */
void bq_metrics_shutdown(void);

/* Registers a running worker. `ready` (may be NULL) answers whether what the worker needs
 * besides its broker (the storage) is reachable; it is called from the HTTP thread. */
void bq_metrics_add(bq_worker *w, bool (*ready)(void *ud), void *ud);
void bq_metrics_remove(bq_worker *w);

/* Producer counts, by queue. */
void bq_metrics_scheduled(const char *queue, long long scheduled, long long deduplicated);
/* A storage operation failed (any worker of the process). */
void bq_metrics_storage_error(void);

/* Renders the Prometheus text into *out (owned by the caller, bq_free). */
bq_status bq_metrics_render(char **out, size_t *len);

#endif
