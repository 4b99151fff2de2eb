/*
 * sse.c -- see sse.h.
 */
#include "sse.h"

#include "../core/err.h"

#include <string.h>

#define SSE_DEFAULT_MAX (1u << 20)

void bq_sse_init(struct bq_sse *p, size_t max_event)
{
    memset(p, 0, sizeof *p);
    p->max_event = max_event > 0 ? max_event : SSE_DEFAULT_MAX;
    p->retry = -1;
}

void bq_sse_free(struct bq_sse *p)
{
    bq_buf_free(&p->line);
    bq_buf_free(&p->data);
    bq_buf_free(&p->type);
    bq_buf_free(&p->id);
}

static size_t held(const struct bq_sse *p)
{
    return p->line.len + p->data.len + p->type.len + p->id.len;
}

static bool is_field(const char *name, size_t n, const char *want)
{
    return n == strlen(want) && memcmp(name, want, n) == 0;
}

/* One line (without its end): a field, a comment, or the empty line that dispatches. */
static bq_status line(struct bq_sse *p, const char *s, size_t n, bq_sse_cb cb, void *ud,
                      bq_err *err)
{
    if (n == 0) {
        if (p->has_data) {
            struct bq_sse_event ev = {
                .type = p->type.len ? p->type.p : "message",
                .type_len = p->type.len ? p->type.len : 7,
                .data = p->data.p ? p->data.p : "",
                .data_len = p->data.len - 1, /* the last "\n" */
                .id = p->id.p ? p->id.p : "",
                .id_len = p->id.len,
                .retry = p->retry,
            };
            bool go = cb(ud, &ev);
            p->data.len = 0;
            p->has_data = false;
            p->type.len = 0;
            p->retry = -1;
            if (!go)
                return bq_err_set(err, BQ_EINTR, "event stream: stopped by the callback");
        } else {
            p->type.len = 0;
            p->data.len = 0;
        }
        return BQ_OK;
    }
    if (s[0] == ':')
        return BQ_OK;
    const char *colon = memchr(s, ':', n);
    size_t name_len = colon ? (size_t)(colon - s) : n;
    const char *v = colon ? colon + 1 : s + n;
    size_t vn = colon ? n - name_len - 1 : 0;
    if (vn > 0 && v[0] == ' ') {
        v++;
        vn--;
    }
    if (is_field(s, name_len, "data")) {
        bq_buf_append(&p->data, v, vn);
        bq_buf_putc(&p->data, '\n');
        p->has_data = true;
    } else if (is_field(s, name_len, "event")) {
        p->type.len = 0;
        bq_buf_append(&p->type, v, vn);
    } else if (is_field(s, name_len, "id")) {
        if (memchr(v, '\0', vn) == NULL) {
            p->id.len = 0;
            bq_buf_append(&p->id, v, vn);
        }
    } else if (is_field(s, name_len, "retry")) {
        long long r = 0;
        bool ok = vn > 0;
        for (size_t i = 0; i < vn && ok; i++) {
            ok = v[i] >= '0' && v[i] <= '9' && r <= (1LL << 53) / 10;
            r = r * 10 + (v[i] - '0');
        }
        if (ok)
            p->retry = r;
    }
    if (p->data.oom || p->type.oom || p->id.oom)
        return bq_err_set(err, BQ_ENOMEM, "event stream: out of memory");
    return BQ_OK;
}

bq_status bq_sse_feed(struct bq_sse *p, const char *s, size_t len, bq_sse_cb cb, void *ud,
                      bq_err *err)
{
    static const unsigned char bom[3] = {0xef, 0xbb, 0xbf};
    if (p->failed)
        return bq_err_set(err, BQ_EINVAL, "event stream: the reader failed before");
    size_t i = 0;
    /* The BOM may arrive split over pieces: hold its bytes until it is whole or is not one. */
    while (!p->started && i < len) {
        if ((unsigned char)s[i] == bom[p->bom_at]) {
            i++;
            if (++p->bom_at == 3)
                p->started = true;
            continue;
        }
        if (p->bom_at > 0)
            bq_buf_append(&p->line, bom, (size_t)p->bom_at); /* not a BOM: they were text */
        p->started = true;
    }
    while (i < len) {
        if (p->cr && s[i] == '\n') { /* the LF of a CRLF split across pieces */
            p->cr = false;
            i++;
            continue;
        }
        p->cr = false;
        const char *start = s + i;
        size_t n = len - i, k = 0;
        while (k < n && start[k] != '\n' && start[k] != '\r')
            k++;
        if (held(p) + k > p->max_event) {
            p->failed = true;
            return bq_err_set(err, BQ_ETOOBIG, "event stream: an event exceeds %zu bytes",
                              p->max_event);
        }
        if (k == n) { /* no line end in this piece: keep the start of the line */
            bq_buf_append(&p->line, start, k);
            break;
        }
        const char *ln = start;
        size_t ln_len = k;
        if (p->line.len > 0) {
            bq_buf_append(&p->line, start, k);
            ln = p->line.p;
            ln_len = p->line.len;
        }
        if (p->line.oom) {
            p->failed = true;
            return bq_err_set(err, BQ_ENOMEM, "event stream: out of memory");
        }
        bq_status rc = line(p, ln, ln_len, cb, ud, err);
        p->line.len = 0;
        if (start[k] == '\r')
            p->cr = true;
        i += k + 1;
        if (p->cr && i < len && s[i] == '\n') {
            p->cr = false;
            i++;
        }
        if (rc != BQ_OK) {
            p->failed = rc != BQ_EINTR;
            return rc;
        }
    }
    return BQ_OK;
}
