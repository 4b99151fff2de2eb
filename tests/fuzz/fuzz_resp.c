/*
 * fuzz_resp.c -- the RESP scanner (net/resp.h) held to hiredis's reader, differentially: the
 * same bytes go to both, in pieces whose sizes the input chooses, as reads from a socket come.
 * After each piece the scanner must have seen as many whole replies as the reader returned; a
 * protocol error must be found by both, with the reader's message; and a reply the scanner
 * passes must be within its limits as the reader builds it. On a reply over a limit, the
 * reader gets only the replies before it (as conn.c does), which must be the scanner's count.
 *
 * Input: byte 0 chooses the largest piece (1..64 bytes), byte 1 the limits, the rest is the
 * stream. The limits are never off: a header such as "*2147483647" makes the reader calloc
 * 16 GB, which is what the scanner is for.
 */
#include "fuzz.h"

#include "../../src/net/resp.h"

#include <hiredis/hiredis.h>
#include <string.h>

/* redisReply objects in a reply, and the nesting depth of its arrays. */
static size_t objects(const redisReply *r)
{
    size_t n = 1;
    if (r->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->elements; i++)
            n += objects(r->element[i]);
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t piece = 1 + data[0] % 64;
    size_t max_bytes, max_elements;
    switch (data[1] % 4) {
    case 0:
        max_bytes = (size_t)1 << 20, max_elements = 100000;
        break;
    case 1:
        max_bytes = 64, max_elements = 8;
        break;
    case 2:
        max_bytes = 8 + data[1], max_elements = 1 + data[1] % 13;
        break;
    default:
        max_bytes = 4096, max_elements = 1 + data[1] / 4;
        break;
    }
    const char *p = (const char *)data + 2;
    size_t len = size - 2;

    struct bq_resp_scanner s;
    bq_resp_init(&s, max_bytes, max_elements);
    redisReader *rd = redisReaderCreate();
    if (rd == NULL)
        return 0;
    unsigned long long got = 0;
    unsigned seed = data[0];
    for (size_t at = 0; at < len;) {
        /* Pieces of 1..piece bytes, varied by a small LCG. */
        seed = seed * 1103515245u + 12345u;
        size_t n = 1 + (seed >> 16) % piece;
        if (n > len - at)
            n = len - at;
        size_t whole = 0;
        bq_status st = bq_resp_scan(&s, p + at, n, &whole);
        FUZZ_ASSERT(st == BQ_OK || st == BQ_EPROTO || st == BQ_ETOOBIG);
        FUZZ_ASSERT(whole <= n);
        size_t feed = st == BQ_ETOOBIG ? whole : n;
        if (feed > 0 && redisReaderFeed(rd, p + at, feed) != REDIS_OK)
            FUZZ_FAIL("redisReaderFeed: %s", rd->errstr);
        void *reply = NULL;
        int rc;
        while ((rc = redisReaderGetReply(rd, &reply)) == REDIS_OK && reply != NULL) {
            got++;
            size_t objs = objects(reply);
            if (objs > max_elements)
                FUZZ_FAIL("a reply of %zu objects passed a limit of %zu", objs, max_elements);
            freeReplyObject(reply);
        }
        if (got != s.replies)
            FUZZ_FAIL("after %zu bytes: the reader returned %llu replies, the scanner saw %llu",
                      at + n, got, s.replies);
        if (st == BQ_EPROTO) {
            if (rc == REDIS_OK)
                FUZZ_FAIL("the scanner says \"%s\", the reader nothing", s.msg);
            if (strcmp(rd->errstr, s.msg) != 0)
                FUZZ_FAIL("the scanner says \"%s\", the reader \"%s\"", s.msg, rd->errstr);
            break;
        }
        if (rc != REDIS_OK)
            FUZZ_FAIL("the reader says \"%s\", the scanner nothing", rd->errstr);
        if (st == BQ_ETOOBIG) {
            FUZZ_ASSERT(strncmp(s.msg, "exceeds ", 8) == 0);
            break;
        }
        at += n;
    }
    redisReaderFree(rd);
    return 0;
}
