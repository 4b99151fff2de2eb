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
#include "../core/buf.h"
#include "../core/id.h" /* BQ_MAX_ID_LEN and the rule for ids */

#include <stddef.h>

/* Validates t; BQ_EINVAL names the offending field. */
bq_status bq_task_validate(const struct bq_task *t, bq_err *err);

/* Validates and encodes t into out->data (owned by the caller). */
bq_status bq_task_encode(const struct bq_task *t, struct bq_msg *out, bq_err *err);

/* What bq_task_encode_parts tells besides the message: where its "messages" array is (the
 * history a run is recorded with; 0 and 0 when the message has none) and the conversation
 * id it carries, given or made (a run without one gets a fresh UUID). */
struct bq_task_parts {
    size_t history_off, history_len; /* within out->data */
    char uuid[37];                   /* the UUID made for a run without a conversation id */
    const char *conversation_id;     /* t->conversation_id, uuid above, or NULL */
};

/* bq_task_encode, also filling *parts (which must not be moved while conversation_id is in
 * use: it may point into it). */
bq_status bq_task_encode_parts(const struct bq_task *t, struct bq_msg *out,
                               struct bq_task_parts *parts, bq_err *err);

/* Appends one message of a task's history, {"role":<role>,"content":<content>}, escaped as
 * bq_buf_json_str escapes. Every producer writes its messages through this (the C client
 * here, the Lua producer's fast path in src/lua/l_produce.c), so a run recorded from C and
 * one recorded from Lua carry the same bytes. */
static inline void bq_task_put_message(bq_buf *b, const char *role, size_t role_len,
                                       const char *content, size_t content_len)
{
    bq_buf_append(b, "{\"role\":", 8);
    bq_buf_json_str(b, role, role_len);
    bq_buf_append(b, ",\"content\":", 11);
    bq_buf_json_str(b, content, content_len);
    bq_buf_append(b, "}", 1);
}

#endif
