/*
 * client.h -- internals of bq_client shared with the Lua binding.
 */
#ifndef BINDUQ_CLIENT_H
#define BINDUQ_CLIENT_H

#include "../binduq.h"
#include "../broker/broker.h"
#include "config.h"

struct bq_client {
    struct bq_config cfg;
    bq_broker *broker; /* owned */
};

/* Pushes already-encoded messages to `queue` (NULL: the client's queue) and logs one
 * "scheduled" line per message at debug level with the given task ids (may be NULL). */
bq_status bq_client_push(bq_client *c, const char *queue, const struct bq_slice *msgs,
                         const char *const *task_ids, size_t n, size_t *pushed, bq_err *err);

#endif
