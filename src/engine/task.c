/*
 * task.c -- see task.h.
 */
#include "task.h"

#include "../core/alloc.h"
#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/id.h"
#include "../core/wire.h"
#include "../core/rand.h"

#include <stdio.h>
#include <string.h>

static bq_status check_text(const char *field, const char *s, bool required, size_t max,
                            bq_err *err)
{
    if (s == NULL)
        return required ? bq_err_set(err, BQ_EINVAL, "%s is required", field) : BQ_OK;
    size_t len = strlen(s);
    if (required && len == 0)
        return bq_err_set(err, BQ_EINVAL, "%s must not be empty", field);
    if (max > 0 && len > max)
        return bq_err_set(err, BQ_EINVAL, "%s is longer than %zu bytes", field, max);
    size_t bad;
    if (!bq_utf8_valid(s, len, &bad))
        return bq_err_set(err, BQ_EINVAL, "%s is not valid UTF-8 (byte %zu)", field, bad);
    return BQ_OK;
}

/* An id: absent only when not required; else by the rule of id.h. */
static bq_status check_id(const char *field, const char *s, bool required, bq_err *err)
{
    char why[BQ_ID_WHY_SIZE];
    if (s == NULL)
        return required ? bq_err_set(err, BQ_EINVAL, "%s is required", field) : BQ_OK;
    if (!bq_id_check(s, strlen(s), why))
        return bq_err_set(err, BQ_EINVAL, "%s %s", field, why);
    return BQ_OK;
}

bq_status bq_task_validate(const struct bq_task *t, bq_err *err)
{
    if (t == NULL)
        return bq_err_set(err, BQ_EINVAL, "task is NULL");
    if (t->type == NULL || !bq_wire_type_valid(t->type, strlen(t->type)))
        return bq_err_set(err, BQ_EINVAL, BQ_WIRE_TYPE_RULE);
    bq_status st = check_id("task_id", t->task_id, true, err);
    if (st == BQ_OK)
        st = check_id("conversation_id", t->conversation_id, false, err);
    if (st != BQ_OK)
        return st;
    bool run = strcmp(t->type, "run") == 0, resume = strcmp(t->type, "resume") == 0;
    if (run && t->n_messages == 0)
        return bq_err_set(err, BQ_EINVAL, "a run needs at least one message");
    if (!run && !resume && t->n_messages > 0)
        return bq_err_set(err, BQ_EINVAL, "messages are only allowed for run and resume");
    if (t->n_messages > 0 && t->messages == NULL)
        return bq_err_set(err, BQ_EINVAL, "messages is NULL but n_messages is %zu",
                          t->n_messages);
    for (size_t i = 0; i < t->n_messages; i++) {
        char field[48];
        snprintf(field, sizeof field, "messages[%zu].role", i);
        if ((st = check_text(field, t->messages[i].role, true, BQ_WIRE_ROLE_MAX, err)) != BQ_OK)
            return st;
        snprintf(field, sizeof field, "messages[%zu].content", i);
        if (t->messages[i].content == NULL)
            return bq_err_set(err, BQ_EINVAL, "%s is required", field);
        if ((st = check_text(field, t->messages[i].content, false, 0, err)) != BQ_OK)
            return st;
    }
    return BQ_OK;
}

bq_status bq_task_encode(const struct bq_task *t, struct bq_msg *out, bq_err *err)
{
    struct bq_task_parts parts;
    return bq_task_encode_parts(t, out, &parts, err);
}

bq_status bq_task_encode_parts(const struct bq_task *t, struct bq_msg *out,
                               struct bq_task_parts *parts, bq_err *err)
{
    out->data = NULL;
    out->len = 0;
    memset(parts, 0, sizeof *parts);
    bq_status st = bq_task_validate(t, err);
    if (st != BQ_OK)
        return st;
    bq_buf b = BQ_BUF_INIT;
    bq_buf_puts(&b, "{\"type\":");
    bq_buf_json_str(&b, t->type, strlen(t->type));
    bq_buf_puts(&b, ",\"task_id\":");
    bq_buf_json_str(&b, t->task_id, strlen(t->task_id));
    parts->conversation_id = t->conversation_id;
    if (parts->conversation_id == NULL && strcmp(t->type, "run") == 0) {
        bq_uuid4(parts->uuid);
        parts->conversation_id = parts->uuid;
    }
    if (parts->conversation_id != NULL) {
        bq_buf_puts(&b, ",\"conversation_id\":");
        bq_buf_json_str(&b, parts->conversation_id, strlen(parts->conversation_id));
    }
    if (t->n_messages > 0) {
        bq_buf_puts(&b, ",\"messages\":");
        parts->history_off = b.len;
        bq_buf_putc(&b, '[');
        for (size_t i = 0; i < t->n_messages; i++) {
            if (i > 0)
                bq_buf_putc(&b, ',');
            const struct bq_message *m = &t->messages[i];
            bq_task_put_message(&b, m->role, strlen(m->role), m->content, strlen(m->content));
        }
        bq_buf_putc(&b, ']');
        parts->history_len = b.len - parts->history_off;
    }
    if (strcmp(t->type, "run") == 0)
        bq_buf_puts(&b, ",\"artifacts\":[]");
    char ts[40];
    bq_iso8601(bq_now_wall(), ts, sizeof ts);
    bq_buf_puts(&b, ",\"timestamp\":\""); /* not printf: once a message, 900 instructions */
    bq_buf_puts(&b, ts);
    bq_buf_puts(&b, "\"}");
    out->data = bq_buf_detach(&b, &out->len);
    if (out->data == NULL) {
        memset(parts, 0, sizeof *parts);
        return bq_err_set(err, BQ_ENOMEM, "schedule: out of memory");
    }
    return BQ_OK;
}
