/*
 * fuzz_bulkcap.c -- the fetch connection's bulk cap (src/net/bulkcap.h), held to hiredis's
 * own reader: any bytes, filtered in chunks of any sizes, read as the same replies as
 * unfiltered, except that each bulk string over the cap is the marker of its length and
 * first bytes. And the filter's output does not depend on how its input was cut.
 *
 * Input: byte 0 picks the cap (0..255), byte 1 the chunk size (1..256, 0: whole); the rest
 * is the stream.
 */
#include "fuzz.h"

#include "../../src/core/buf.h"
#include "../../src/net/bulkcap.h"

#include <hiredis/hiredis.h>
#include <string.h>

static int to_buf(void *ud, const char *p, size_t n)
{
    bq_buf_append(ud, p, n);
    return 0;
}

static void filter(const uint8_t *in, size_t n, size_t max, size_t step, bq_buf *out)
{
    struct bq_bulkcap f;
    bq_bulkcap_init(&f, max);
    for (size_t i = 0; i < n;) {
        size_t k = step == 0 || n - i < step ? n - i : step;
        FUZZ_ASSERT(bq_bulkcap_feed(&f, (const char *)in + i, k, to_buf, out) == 0);
        i += k;
    }
}

/* Reads every complete reply of buf; returns how many (at most cap), *bad if the reader
 * failed. */
static size_t read_all(const char *p, size_t n, redisReply **out, size_t cap, bool *bad)
{
    redisReader *r = redisReaderCreate();
    size_t k = 0;
    *bad = false;
    if (n > 0 && redisReaderFeed(r, p, n) != REDIS_OK)
        *bad = true;
    while (!*bad && k < cap) {
        void *rep = NULL;
        if (redisReaderGetReply(r, &rep) != REDIS_OK) {
            *bad = true;
            break;
        }
        if (rep == NULL)
            break;
        out[k++] = rep;
    }
    redisReaderFree(r);
    return k;
}

static void same(const redisReply *a, const redisReply *b, size_t max)
{
    if (a->type == REDIS_REPLY_STRING && a->len > max) {
        unsigned long long size;
        unsigned char prefix[BQ_BULKCAP_KEEP];
        size_t plen;
        FUZZ_ASSERT(b->type == REDIS_REPLY_ERROR);
        FUZZ_ASSERT(bq_bulkcap_marker(b->str, b->len, &size, prefix, &plen));
        FUZZ_ASSERT(size == a->len);
        FUZZ_ASSERT(plen == (a->len < BQ_BULKCAP_KEEP ? a->len : BQ_BULKCAP_KEEP));
        FUZZ_ASSERT(memcmp(prefix, a->str, plen) == 0);
        return;
    }
    FUZZ_ASSERT(a->type == b->type);
    switch (a->type) {
    case REDIS_REPLY_INTEGER:
        FUZZ_ASSERT(a->integer == b->integer);
        break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        FUZZ_ASSERT(a->len == b->len && memcmp(a->str, b->str, a->len) == 0);
        break;
    case REDIS_REPLY_ARRAY:
        FUZZ_ASSERT(a->elements == b->elements);
        for (size_t i = 0; i < a->elements; i++)
            same(a->element[i], b->element[i], max);
        break;
    default:
        break;
    }
}

#define MAX_REPLIES 64

/* hiredis allocates an array's element pointers before its elements arrive: "*111111112"
 * costs it 900 MB whatever follows. binduq's reply limits (conn.c) refuse such a reply
 * before the reader sees it; here such inputs are left out. */
static bool huge_array(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '*')
            continue;
        unsigned long v = 0;
        for (size_t j = i + 1; j < n && p[j] >= '0' && p[j] <= '9' && v <= 100000; j++)
            v = v * 10 + (p[j] - '0');
        if (v > 100000)
            return true;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t max = data[0], step = data[1];
    const uint8_t *in = data + 2;
    size_t n = size - 2;
    if (huge_array(in, n))
        return 0;

    bq_buf whole = BQ_BUF_INIT, cut = BQ_BUF_INIT;
    filter(in, n, max, 0, &whole);
    filter(in, n, max, step, &cut);
    FUZZ_ASSERT(whole.len == cut.len && (whole.len == 0 || memcmp(whole.p, cut.p, whole.len) == 0));

    redisReply *a[MAX_REPLIES], *b[MAX_REPLIES + 1];
    bool abad, bbad;
    size_t na = read_all((const char *)in, n, a, MAX_REPLIES, &abad);
    size_t nb = read_all(whole.len ? whole.p : "", whole.len, b, MAX_REPLIES + 1, &bbad);
    /* A bulk over the cap that the input cut short: the plain reader waits for its bytes,
     * the filtered one has its marker already, which may complete one more reply. */
    FUZZ_ASSERT(nb == na || nb == na + 1);
    if (nb == na && na < MAX_REPLIES)
        FUZZ_ASSERT(abad == bbad);
    for (size_t i = 0; i < na; i++)
        same(a[i], b[i], max);
    for (size_t i = 0; i < na; i++)
        freeReplyObject(a[i]);
    for (size_t i = 0; i < nb; i++)
        freeReplyObject(b[i]);
    bq_buf_free(&whole);
    bq_buf_free(&cut);
    return 0;
}
