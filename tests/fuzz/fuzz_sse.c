/*
 * fuzz_sse.c -- the event-stream reader (src/net/sse.c): whatever a server sends, it never
 * reads past the input, stays within its bound, and gives the same events however the
 * network splits the bytes: fed whole, fed in two pieces at a cut the input picks (its first
 * two bytes), and fed byte by byte. Each event's type and id hold no CR or LF (they end
 * lines), its data no CR, and none is longer than the bound.
 */
#include "fuzz.h"

#include "../../src/core/buf.h"
#include "../../src/net/sse.h"

#include <string.h>

#define BOUND 4096

static bool collect(void *ud, const struct bq_sse_event *ev)
{
    bq_buf *b = ud;
    if (memchr(ev->type, '\n', ev->type_len) || memchr(ev->type, '\r', ev->type_len) ||
        memchr(ev->id, '\n', ev->id_len) || memchr(ev->id, '\r', ev->id_len) ||
        memchr(ev->id, '\0', ev->id_len) || memchr(ev->data, '\r', ev->data_len))
        FUZZ_FAIL("an event holds a line end");
    if (ev->data_len + ev->type_len + ev->id_len > BOUND + 8)
        FUZZ_FAIL("an event passes the bound");
    bq_buf_printf(b, "%zu:", ev->type_len);
    bq_buf_append(b, ev->type, ev->type_len);
    bq_buf_printf(b, "%zu:", ev->data_len);
    bq_buf_append(b, ev->data, ev->data_len);
    bq_buf_printf(b, "%zu:", ev->id_len);
    bq_buf_append(b, ev->id, ev->id_len);
    bq_buf_printf(b, "%lld;", ev->retry);
    return true;
}

/* The events of s as one string, fed in pieces: cut (a position), or 1-byte pieces
 * (cut == SIZE_MAX). The status of the last feed in *rc. */
static void run(const char *s, size_t n, size_t cut, bq_buf *out, bq_status *rc)
{
    struct bq_sse p;
    bq_sse_init(&p, BOUND);
    *rc = BQ_OK;
    if (cut == SIZE_MAX) {
        for (size_t i = 0; i < n && *rc == BQ_OK; i++)
            *rc = bq_sse_feed(&p, s + i, 1, collect, out, NULL);
    } else {
        *rc = bq_sse_feed(&p, s, cut, collect, out, NULL);
        if (*rc == BQ_OK)
            *rc = bq_sse_feed(&p, s + cut, n - cut, collect, out, NULL);
    }
    bq_sse_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t n = size - 2;
    const char *s = (const char *)data + 2;
    size_t cut = n ? ((size_t)data[0] << 8 | data[1]) % (n + 1) : 0;
    bq_buf whole = BQ_BUF_INIT, two = BQ_BUF_INIT, bytes = BQ_BUF_INIT;
    bq_status r1, r2, r3;
    run(s, n, n, &whole, &r1);
    run(s, n, cut, &two, &r2);
    run(s, n, SIZE_MAX, &bytes, &r3);
    /* A stream that fails the bound may fail at a different event depending on the pieces
     * (the bound counts what is held); compare only streams that read to the end. */
    if (r1 == BQ_OK && (r2 != BQ_OK || r3 != BQ_OK))
        FUZZ_FAIL("split pieces fail where the whole passed");
    if (r1 == BQ_OK && whole.len > 0 &&
        (two.len != whole.len || memcmp(two.p, whole.p, whole.len) != 0 ||
         bytes.len != whole.len || memcmp(bytes.p, whole.p, whole.len) != 0))
        FUZZ_FAIL("the events depend on how the bytes were split");
    if (r1 == BQ_OK && whole.len == 0 && (two.len != 0 || bytes.len != 0))
        FUZZ_FAIL("the events depend on how the bytes were split");
    bq_buf_free(&whole);
    bq_buf_free(&two);
    bq_buf_free(&bytes);
    return 0;
}
