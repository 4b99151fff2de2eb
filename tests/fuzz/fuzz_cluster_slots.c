/*
 * fuzz_cluster_slots.c -- the CLUSTER SLOTS reader (broker/cluster.h): the input is what a
 * node might send, fed to hiredis's reader as a socket's bytes would be; each whole reply is
 * read into a slot map placed between two guard zones. The bytes pass the RESP scanner
 * first, as in conn.c, so the reader never builds a reply over 1 MiB or 100,000 elements.
 * AddressSanitizer catches a write outside the map; the properties check that every slot
 * names a node that was kept, that every node kept has a valid port and host, and that
 * ranges kept plus ranges dropped add up. */
#include "fuzz.h"

#include "../../src/broker/cluster.h"
#include "../../src/net/resp.h"

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <string.h>

static struct {
    unsigned char before[64];
    struct bq_slot_map map;
    unsigned char after[64];
} g;

/* The least and greatest slot values, outside coverage (it would trace 32768 comparisons). */
__attribute__((no_sanitize("coverage"), noinline)) static void slot_bounds(int *lo, int *hi)
{
    for (int s = 0; s < BQ_CLUSTER_NSLOTS; s++) {
        int v = g.map.slot[s];
        *lo = v < *lo ? v : *lo;
        *hi = v > *hi ? v : *hi;
    }
}

/* `slots`: also check every slot (a pass over 16384 of them). */
static void check_map(const redisReply *r, bool slots)
{
    memset(g.before, 0x5A, sizeof g.before);
    memset(g.after, 0x5A, sizeof g.after);
    size_t dropped = bq_cluster_slots_parse(r, "seed", &g.map);
    for (size_t i = 0; i < sizeof g.before; i++)
        FUZZ_ASSERT(g.before[i] == 0x5A && g.after[i] == 0x5A);
    FUZZ_ASSERT(dropped == g.map.dropped);
    if (r->type == REDIS_REPLY_ARRAY)
        FUZZ_ASSERT(g.map.ranges + g.map.dropped == r->elements);
    else
        FUZZ_ASSERT(g.map.ranges == 0 && g.map.why != NULL);
    FUZZ_ASSERT((g.map.dropped == 0) == (g.map.why == NULL) || r->type != REDIS_REPLY_ARRAY);
    FUZZ_ASSERT(g.map.nnodes >= 0 && g.map.nnodes <= BQ_CLUSTER_MAX_NODES);
    for (int n = 0; n < g.map.nnodes; n++) {
        size_t len = strnlen(g.map.node[n].host, BQ_CLUSTER_HOST_MAX);
        FUZZ_ASSERT(len > 0 && len < BQ_CLUSTER_HOST_MAX);
        FUZZ_ASSERT(strcspn(g.map.node[n].host, "@/?#%[] \r\n") == len);
        FUZZ_ASSERT(g.map.node[n].port >= 1 && g.map.node[n].port <= 65535);
    }
    if (!slots || r->type != REDIS_REPLY_ARRAY || r->elements == 0)
        return;
    int lo = -1, hi = -1;
    slot_bounds(&lo, &hi);
    FUZZ_ASSERT(lo >= -1 && hi < g.map.nnodes);
    FUZZ_ASSERT(g.map.ranges > 0 || hi == -1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    redisReader *rd = redisReaderCreate();
    if (rd == NULL)
        return 0;
    struct bq_resp_scanner scan;
    bq_resp_init(&scan, (size_t)1 << 20, 100000);
    unsigned replies = 0;
    /* Fed in pieces of up to 64 bytes, as reads from a socket would come. */
    for (size_t off = 0; off < size;) {
        size_t n = size - off < 64 ? size - off : 64;
        size_t feed = n;
        bq_status st = bq_resp_scan(&scan, (const char *)data + off, n, &feed);
        if (st == BQ_OK)
            feed = n;
        if (feed > 0 && redisReaderFeed(rd, (const char *)data + off, feed) != REDIS_OK)
            break;
        off += n;
        void *reply = NULL;
        int rc;
        while ((rc = redisReaderGetReply(rd, &reply)) == REDIS_OK && reply != NULL) {
            /* A pass over the 16384 slots costs more than the rest: the first 2 replies of
             * an input get it, the next 14 the other checks. */
            if (replies < 16)
                check_map(reply, replies < 2);
            replies++;
            freeReplyObject(reply);
        }
        if (rc != REDIS_OK || st != BQ_OK)
            break;
    }
    redisReaderFree(rd);
    return 0;
}
