/*
 * task.h -- the C producer's encoder for binduq's native wire format:
 *
 *   {"type":"run","task_id":"...","conversation_id":"...",
 *    "messages":[{"role":"user","content":"..."}],"artifacts":[],"timestamp":"..."}
 *
 * The Lua producer builds the same shape in lua/binduq/task.lua; the rules below are the same
 * rules that the worker's decoder enforces, so whatever a producer accepts a worker accepts.
 */
#ifndef BINDUQ_TASK_H
#define BINDUQ_TASK_H

#include "../binduq.h"
#include "../broker/broker.h"
#include "../core/id.h" /* BQ_MAX_ID_LEN and the rule for ids */


/* Validates t; BQ_EINVAL names the offending field. */
bq_status bq_task_validate(const struct bq_task *t, bq_err *err);

/* Validates and encodes t into out->data (owned by the caller). */
bq_status bq_task_encode(const struct bq_task *t, struct bq_msg *out, bq_err *err);

#endif
