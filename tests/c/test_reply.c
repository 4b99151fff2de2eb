/*
 * test_reply.c -- pure readers of what a Redis server sends, no server needed: the CLUSTER
 * SLOTS reader (broker/cluster.h). Replies are made by feeding RESP bytes through hiredis's
 * reader, exactly as they arrive from a socket.
 */
#include "check.h"

#include "../../src/broker/cluster.h"
#include "../../src/core/alloc.h"

#include <hiredis/hiredis.h>

/* The reply that `resp` (one whole reply) reads as; the caller frees it. */
static redisReply *reply_of(const char *resp)
{
    redisReader *rd = redisReaderCreate();
    void *r = NULL;
    if (redisReaderFeed(rd, resp, strlen(resp)) != REDIS_OK ||
        redisReaderGetReply(rd, &r) != REDIS_OK || r == NULL) {
        printf("  bad test reply: %s\n", resp);
        exit(2);
    }
    redisReaderFree(rd);
    return r;
}

/* A slot map between two guard zones: nothing may write outside the map. */
struct guarded_map {
    unsigned char before[4096];
    struct bq_slot_map map;
    unsigned char after[4096];
};

static struct guarded_map *guarded_new(void)
{
    struct guarded_map *g = malloc(sizeof *g);
    memset(g, 0xA5, sizeof *g);
    return g;
}

static int guards_intact(const struct guarded_map *g)
{
    for (size_t i = 0; i < sizeof g->before; i++) {
        if (g->before[i] != 0xA5 || g->after[i] != 0xA5)
            return 0;
    }
    return 1;
}

/* "[from, to, [host, port]]" as RESP, with the bounds and the port already encoded. */
#define RANGE(from, to, host, port) "*3\r\n" from to "*2\r\n" host port

TEST(cluster_slots_good_reply)
{
    redisReply *r = reply_of("*3\r\n"
                             "*4\r\n:0\r\n:5460\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$3\r\nid1\r\n"
                             "*3\r\n:1\r\n:1\r\n:7003\r\n" /* a replica */
                             RANGE(":5461\r\n", ":16383\r\n", "$5\r\nnode2\r\n", ":7001\r\n")
                             RANGE(":9000\r\n", ":9000\r\n", "$9\r\n127.0.0.1\r\n", ":7000\r\n"));
    struct guarded_map *g = guarded_new();
    CHECK_INT(bq_cluster_slots_parse(r, "seed", &g->map), 0);
    CHECK_INT(g->map.ranges, 3);
    CHECK_INT(g->map.nnodes, 2); /* the same master twice is one node */
    CHECK_STR(g->map.node[0].host, "127.0.0.1");
    CHECK_INT(g->map.node[0].port, 7000);
    CHECK_STR(g->map.node[1].host, "node2");
    CHECK_INT(g->map.node[1].port, 7001);
    CHECK_INT(g->map.slot[0], 0);
    CHECK_INT(g->map.slot[5460], 0);
    CHECK_INT(g->map.slot[5461], 1);
    CHECK_INT(g->map.slot[9000], 0); /* a later range wins */
    CHECK_INT(g->map.slot[16383], 1);
    CHECK(g->map.why == NULL);
    CHECK(guards_intact(g));
    free(g);
    freeReplyObject(r);
}

TEST(cluster_slots_drop_malformed_ranges)
{
    /* Issue 16 #1: a range from -100000 wrote before the map; a string start was read as 0.
     * Each malformed range is dropped whole, the good one kept. */
    redisReply *r = reply_of(
        "*15\r\n"
        RANGE(":-100000\r\n", ":0\r\n", "$1\r\na\r\n", ":7000\r\n")
        RANGE("$3\r\nabc\r\n", ":10\r\n", "$1\r\nb\r\n", ":7000\r\n")
        RANGE(":0\r\n", "$2\r\n10\r\n", "$1\r\nc\r\n", ":7000\r\n")
        RANGE(":100\r\n", ":50\r\n", "$1\r\nd\r\n", ":7000\r\n")
        RANGE(":16000\r\n", ":16384\r\n", "$1\r\ne\r\n", ":7000\r\n")
        RANGE(":-1\r\n", ":-1\r\n", "$1\r\nf\r\n", ":7000\r\n")
        RANGE(":0\r\n", ":10\r\n", "$1\r\ng\r\n", ":0\r\n")
        RANGE(":0\r\n", ":10\r\n", "$1\r\nh\r\n", ":65536\r\n")
        RANGE(":0\r\n", ":10\r\n", "$1\r\ni\r\n", "$4\r\n7000\r\n")
        RANGE(":0\r\n", ":10\r\n", ":12\r\n", ":7000\r\n")
        RANGE(":0\r\n", ":10\r\n", "$3\r\nu@h\r\n", ":7000\r\n")
        "*3\r\n:0\r\n:10\r\n$9\r\n127.0.0.1\r\n"
        "*2\r\n:0\r\n:10\r\n"
        ":5\r\n"
        RANGE(":20\r\n", ":30\r\n", "$4\r\ngood\r\n", ":7002\r\n"));
    struct guarded_map *g = guarded_new();
    CHECK_INT(bq_cluster_slots_parse(r, "seed", &g->map), 14);
    CHECK_INT(g->map.dropped, 14);
    CHECK_INT(g->map.ranges, 1);
    CHECK_INT(g->map.first_dropped, 0);
    CHECK_CONTAINS(g->map.why, "0 <= from <= to < 16384");
    CHECK_INT(g->map.nnodes, 1);
    CHECK_STR(g->map.node[0].host, "good");
    CHECK_INT(g->map.node[0].port, 7002);
    int outside = 0;
    for (int s = 0; s < BQ_CLUSTER_NSLOTS; s++)
        outside += (s >= 20 && s <= 30) ? g->map.slot[s] != 0 : g->map.slot[s] != -1;
    CHECK_INT(outside, 0);
    CHECK(guards_intact(g));
    freeReplyObject(r);

    /* The string start alone: dropped, not read as slot 0. */
    r = reply_of("*1\r\n" RANGE("$1\r\nx\r\n", ":5\r\n", "$1\r\nn\r\n", ":7000\r\n"));
    CHECK_INT(bq_cluster_slots_parse(r, "seed", &g->map), 1);
    CHECK_CONTAINS(g->map.why, "not an integer");
    CHECK_INT(g->map.ranges, 0);
    CHECK_INT(g->map.slot[0], -1);
    CHECK_INT(g->map.nnodes, 0);
    CHECK(guards_intact(g));
    freeReplyObject(r);
    free(g);
}

TEST(cluster_slots_empty_host_is_the_node_asked)
{
    redisReply *r = reply_of("*1\r\n" RANGE(":0\r\n", ":16383\r\n", "$0\r\n\r\n", ":7000\r\n"));
    struct guarded_map *g = guarded_new();
    CHECK_INT(bq_cluster_slots_parse(r, "10.0.0.7", &g->map), 0);
    CHECK_INT(g->map.nnodes, 1);
    CHECK_STR(g->map.node[0].host, "10.0.0.7");
    CHECK_INT(g->map.slot[16383], 0);
    freeReplyObject(r);
    free(g);
}

TEST(cluster_slots_long_host_and_too_many_masters)
{
    /* A host longer than 127 bytes is dropped, not cut (a cut name is another host). */
    char buf[70000];
    char host[200];
    memset(host, 'h', sizeof host - 1);
    host[sizeof host - 1] = '\0';
    snprintf(buf, sizeof buf, "*1\r\n" RANGE(":0\r\n", ":1\r\n", "$%zu\r\n%s\r\n", ":7000\r\n"),
             strlen(host), host);
    redisReply *r = reply_of(buf);
    struct guarded_map *g = guarded_new();
    CHECK_INT(bq_cluster_slots_parse(r, "seed", &g->map), 1);
    CHECK_INT(g->map.nnodes, 0);
    freeReplyObject(r);

    /* 65 masters: the 65th range is dropped, the 64 before it kept. */
    size_t n = (size_t)snprintf(buf, sizeof buf, "*%d\r\n", BQ_CLUSTER_MAX_NODES + 1);
    for (int i = 0; i <= BQ_CLUSTER_MAX_NODES; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n,
                              RANGE(":%d\r\n", ":%d\r\n", "$1\r\nm\r\n", ":%d\r\n"), i, i,
                              7000 + i);
    r = reply_of(buf);
    CHECK_INT(bq_cluster_slots_parse(r, "seed", &g->map), 1);
    CHECK_INT(g->map.nnodes, BQ_CLUSTER_MAX_NODES);
    CHECK_INT(g->map.ranges, BQ_CLUSTER_MAX_NODES);
    CHECK_INT(g->map.first_dropped, BQ_CLUSTER_MAX_NODES);
    CHECK_INT(g->map.slot[BQ_CLUSTER_MAX_NODES - 1], BQ_CLUSTER_MAX_NODES - 1);
    CHECK_INT(g->map.slot[BQ_CLUSTER_MAX_NODES], -1);
    CHECK(guards_intact(g));
    freeReplyObject(r);

    /* Not an array at all: no range, and why says so. */
    r = reply_of("$2\r\nno\r\n");
    CHECK_INT(bq_cluster_slots_parse(r, "seed", &g->map), 0);
    CHECK_INT(g->map.ranges, 0);
    CHECK_CONTAINS(g->map.why, "not an array");
    freeReplyObject(r);
    free(g);
}

int main(void)
{
    RUN(cluster_slots_good_reply);
    RUN(cluster_slots_drop_malformed_ranges);
    RUN(cluster_slots_empty_host_is_the_node_asked);
    RUN(cluster_slots_long_host_and_too_many_masters);
    return check_report("test_reply");
}
