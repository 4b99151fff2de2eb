/*
 * broker.c -- what both brokers share: batches, opening by URL, dead-letter entries.
 */
#include "broker.h"

#include "../core/alloc.h"
#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/err.h"

#include <stdio.h>
#include <string.h>

bq_status bq_batch_take(struct bq_batch *b, struct bq_msg m)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        struct bq_msg *p = bq_reallocarray(b->msgs, cap, sizeof *p);
        if (p == NULL)
            return BQ_ENOMEM;
        b->msgs = p;
        b->cap = cap;
    }
    b->msgs[b->n++] = m;
    return BQ_OK;
}

bq_status bq_batch_add(struct bq_batch *b, const char *data, size_t len)
{
    return bq_batch_add_q(b, data, len, 0);
}

bq_status bq_batch_add_q(struct bq_batch *b, const char *data, size_t len, int q)
{
    struct bq_msg m = {bq_strndup(data, len), len, q, false, 0};
    if (m.data == NULL)
        return BQ_ENOMEM;
    bq_status st = bq_batch_take(b, m);
    if (st != BQ_OK)
        bq_free(m.data);
    return st;
}

void bq_batch_clear(struct bq_batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        bq_free(b->msgs[i].data);
    b->n = 0;
}

void bq_batch_free(struct bq_batch *b)
{
    bq_batch_clear(b);
    bq_free(b->msgs);
    b->msgs = NULL;
    b->cap = 0;
}

bq_status bq_broker_open(const struct bq_broker_config *cfg, bq_broker **out, bq_err *err)
{
    if (cfg->url == NULL)
        return bq_broker_open_memory(out, err);
    if (strncmp(cfg->url, "redis+cluster://", 16) == 0)
        return bq_broker_open_cluster(cfg, out, err);
    if (strncmp(cfg->url, "rediss+cluster://", 17) == 0)
        return bq_err_set(err, BQ_EUNSUPPORTED, "%s: Redis Cluster over TLS is not supported "
                          "by this version of binduq yet",
                          cfg->url_source ? cfg->url_source : "URL");
    return bq_broker_open_redis(cfg, out, err);
}

static void put_field(bq_buf *b, const char *key, const char *val)
{
    if (val == NULL)
        return;
    bq_buf_printf(b, ",\"%s\":", key);
    size_t len = strlen(val);
    if (bq_utf8_valid(val, len, NULL))
        bq_buf_json_str(b, val, len);
    else
        bq_buf_puts(b, "\"(invalid UTF-8)\"");
}

bq_status bq_dlq_entry(const struct bq_dlq_info *info, const char *raw, size_t len,
                       struct bq_msg *out)
{
    bq_buf b = BQ_BUF_INIT;
    if (info->header != NULL) {
        bq_buf_puts(&b, info->header);
        bq_buf_putc(&b, '\n');
        bq_buf_append(&b, raw, len);
        out->data = bq_buf_detach(&b, &out->len);
        return out->data == NULL ? BQ_ENOMEM : BQ_OK;
    }
    char ts[40];
    bq_iso8601(bq_now_wall(), ts, sizeof ts);
    bq_buf_puts(&b, "{\"reason\":");
    size_t rlen = strlen(info->reason);
    if (bq_utf8_valid(info->reason, rlen, NULL))
        bq_buf_json_str(&b, info->reason, rlen);
    else
        bq_buf_puts(&b, "\"(invalid UTF-8)\"");
    if (info->error_json != NULL)
        bq_buf_printf(&b, ",\"error\":%s", info->error_json);
    put_field(&b, "task_id", info->task_id);
    put_field(&b, "type", info->type);
    put_field(&b, "queue", info->queue);
    put_field(&b, "worker", info->worker);
    bq_buf_printf(&b, ",\"attempts\":%d,\"failed_at\":\"%s\"", info->attempts, ts);
    if (info->size > 0) {
        bq_buf_printf(&b, ",\"size\":%zu,\"truncated\":true", info->size);
        if (len > BQ_DLQ_KEEP)
            len = BQ_DLQ_KEEP;
    }
    bq_buf_puts(&b, "}\n");
    bq_buf_append(&b, raw, len);
    out->data = bq_buf_detach(&b, &out->len);
    return out->data == NULL ? BQ_ENOMEM : BQ_OK;
}
