/*
 * broker.c -- what both brokers share: batches, opening by URL, dead-letter entries.
 */
#include "broker.h"
#include "keys.h"

#include "../core/alloc.h"
#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/err.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

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
    struct bq_msg m = {bq_strndup(data, len), len, q, false, 0, 0};
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

bool bq_order_parse(const char *s, enum bq_order *out)
{
    if (s != NULL && strcasecmp(s, "lpush") == 0)
        *out = BQ_ORDER_LPUSH;
    else if (s != NULL && strcasecmp(s, "rpush") == 0)
        *out = BQ_ORDER_RPUSH;
    else
        return false;
    return true;
}

const char *bq_order_name(enum bq_order o)
{
    return o == BQ_ORDER_RPUSH ? "rpush" : "lpush";
}

enum bq_order bq_orders_of(const struct bq_orders *o, const char *queue)
{
    if (o == NULL)
        return BQ_ORDER_LPUSH;
    for (size_t i = 0; queue != NULL && i < o->n; i++)
        if (strcmp(o->queues[i], queue) == 0)
            return o->order[i];
    return o->dflt;
}

bq_status bq_orders_set(struct bq_orders *o, const char *queue, enum bq_order order)
{
    for (size_t i = 0; i < o->n; i++) {
        if (strcmp(o->queues[i], queue) == 0) {
            o->order[i] = order;
            return BQ_OK;
        }
    }
    char **qs = bq_realloc(o->queues, (o->n + 1) * sizeof *qs);
    if (qs == NULL)
        return BQ_ENOMEM;
    o->queues = qs;
    enum bq_order *os = bq_realloc(o->order, (o->n + 1) * sizeof *os);
    if (os == NULL)
        return BQ_ENOMEM;
    o->order = os;
    if ((o->queues[o->n] = bq_strdup(queue)) == NULL)
        return BQ_ENOMEM;
    o->order[o->n++] = order;
    return BQ_OK;
}

bq_status bq_orders_copy(struct bq_orders *dst, const struct bq_orders *src)
{
    memset(dst, 0, sizeof *dst);
    if (src == NULL)
        return BQ_OK;
    dst->dflt = src->dflt;
    for (size_t i = 0; i < src->n; i++) {
        if (bq_orders_set(dst, src->queues[i], src->order[i]) != BQ_OK) {
            bq_orders_free(dst);
            return BQ_ENOMEM;
        }
    }
    return BQ_OK;
}

void bq_orders_free(struct bq_orders *o)
{
    for (size_t i = 0; i < o->n; i++)
        bq_free(o->queues[i]);
    bq_free(o->queues);
    bq_free(o->order);
    memset(o, 0, sizeof *o);
}

static bq_status open_kind(const struct bq_broker_config *cfg, bq_broker **out, bq_err *err)
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

/* ---- Authentication errors ------------------------------------------------------------ */

void bq_broker_explain_auth(const bq_broker *b, bq_err *err)
{
    if (b == NULL || err == NULL || err->code != BQ_EAUTH)
        return;
    const char *what;
    if (strstr(err->msg, "NOAUTH") != NULL)
        what = "authentication required: this Redis has a password and the URL gives none "
               "(redis://[user]:PASSWORD@host:port/db)";
    else if (strstr(err->msg, "WRONGPASS") != NULL || strstr(err->msg, "ERR invalid password")
             || strstr(err->msg, "ERR AUTH") != NULL)
        what = "authentication failed: Redis refused the user or password of the URL";
    else if (strstr(err->msg, "NOPERM") != NULL)
        what = "permission denied: the ACL of the URL's user does not allow a command binduq needs";
    else
        return; /* not Redis' refusal (a TLS certificate, say): its message names the peer */
    size_t alen = strlen(b->address);
    const char *detail = err->msg;
    if (strncmp(detail, b->address, alen) == 0 && strncmp(detail + alen, ": ", 2) == 0) {
        if (strncmp(detail + alen + 2, "authentication ", 15) == 0 ||
            strncmp(detail + alen + 2, "permission denied", 17) == 0)
            return; /* already explained */
        detail += alen + 2;
    }
    char tmp[3 * sizeof err->msg]; /* the address, what, detail: cut to fit below */
    snprintf(tmp, sizeof tmp, "%s: %s (%s)", b->address, what, detail);
    size_t n = strlen(tmp);
    if (n >= sizeof err->msg)
        n = sizeof err->msg - 1;
    memcpy(err->msg, tmp, n);
    err->msg[n] = '\0';
}

bq_status bq_broker_open(const struct bq_broker_config *cfg, bq_broker **out, bq_err *err)
{
    bq_status st = open_kind(cfg, out, err);
    if (st == BQ_OK)
        (*out)->feed_max = cfg->feed_max > 0 ? cfg->feed_max : BQ_FEED_MAX_DEFAULT;
    if (st == BQ_OK && bq_orders_copy(&(*out)->orders, cfg->orders) != BQ_OK) {
        bq_broker_free(*out);
        *out = NULL;
        st = bq_err_set(err, BQ_ENOMEM, "out of memory");
    }
    return st;
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

bq_status bq_list_key(const char *queue, enum bq_list which, char *out, bq_err *err)
{
    switch (which) {
    case BQ_LIST_DEAD: return bq_key_derive_err(queue, "dlq", out, err);
    case BQ_LIST_DELAYED: return bq_key_derive_err(queue, "delayed", out, err);
    case BQ_LIST_READY:
    case BQ_LIST_INFLIGHT: break;
    }
    const char *why = bq_queue_name_problem(queue);
    if (why != NULL)
        return bq_err_set(err, BQ_EINVAL, "queue name '%.200s' %s", queue, why);
    strcpy(out, queue);
    return BQ_OK;
}

/* ---- Task events ---------------------------------------------------------------------------- */

void bq_feed_out_clear(struct bq_feed_out *o)
{
    for (size_t i = 0; i < o->n; i++)
        bq_free(o->e[i].json);
    o->n = 0;
}

void bq_feed_out_free(struct bq_feed_out *o)
{
    bq_feed_out_clear(o);
    bq_free(o->e);
    o->e = NULL;
    o->cap = 0;
}

bq_status bq_feed_out_add(struct bq_feed_out *o, const char *id, const char *json, size_t len)
{
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 16;
        struct bq_feed_entry *e = bq_reallocarray(o->e, cap, sizeof *e);
        if (e == NULL)
            return BQ_ENOMEM;
        o->e = e;
        o->cap = cap;
    }
    struct bq_feed_entry *e = &o->e[o->n];
    if (snprintf(e->id, sizeof e->id, "%s", id) >= (int)sizeof e->id ||
        (e->json = bq_malloc(len + 1)) == NULL)
        return BQ_ENOMEM;
    memcpy(e->json, json, len);
    e->json[len] = '\0';
    e->len = len;
    o->n++;
    return BQ_OK;
}

/* The two decimal parts of an id; false if it is not "<digits>-<digits>" (each at most 20). */
static bool feed_id_parts(const char *id, unsigned long long *ms, unsigned long long *seq)
{
    const char *p = id;
    for (int part = 0; part < 2; part++) {
        unsigned long long v = 0;
        int digits = 0;
        for (; *p >= '0' && *p <= '9'; p++) {
            unsigned long long d = (unsigned long long)(*p - '0');
            if (++digits > 20 || v > (~0ULL - d) / 10)
                return false;
            v = v * 10 + d;
        }
        if (digits == 0)
            return false;
        *(part == 0 ? ms : seq) = v;
        if (part == 0 && *p++ != '-')
            return false;
    }
    return *p == '\0';
}

bool bq_feed_id_valid(const char *id)
{
    unsigned long long a, b;
    return id != NULL && feed_id_parts(id, &a, &b);
}

int bq_feed_id_cmp(const char *a, const char *b)
{
    unsigned long long am = 0, as = 0, bm = 0, bs = 0;
    feed_id_parts(a, &am, &as);
    feed_id_parts(b, &bm, &bs);
    if (am != bm)
        return am > bm ? 1 : -1;
    return as == bs ? 0 : as > bs ? 1 : -1;
}
