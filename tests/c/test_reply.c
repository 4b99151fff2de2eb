/*
 * test_reply.c -- pure readers of what a Redis server sends, no server needed: the RESP
 * scanner that bounds a reply (net/resp.h), held to hiredis's reader on the same bytes, and
 * the CLUSTER SLOTS reader (broker/cluster.h). Replies are made by feeding RESP bytes through
 * hiredis's reader, exactly as they arrive from a socket.
 */
#include "check.h"

#include "../../src/broker/cluster.h"
#include "../../src/core/alloc.h"
#include "../../src/net/resp.h"

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

/* ---- The RESP scanner ----------------------------------------------------------------------- */

/* What hiredis's reader makes of `len` bytes fed at once: the replies before it stopped, and
 * its error message ("" if none). */
static unsigned long long hiredis_verdict(const char *p, size_t len, char *msg, size_t size)
{
    redisReader *rd = redisReaderCreate();
    unsigned long long n = 0;
    msg[0] = '\0';
    if (redisReaderFeed(rd, p, len) == REDIS_OK) {
        void *r = NULL;
        int rc;
        while ((rc = redisReaderGetReply(rd, &r)) == REDIS_OK && r != NULL) {
            n++;
            freeReplyObject(r);
        }
        if (rc != REDIS_OK)
            snprintf(msg, size, "%s", rd->errstr);
    }
    redisReaderFree(rd);
    return n;
}

/* The scanner's verdict on p fed in pieces cut at `cuts` (ascending offsets, -1 ends). */
static bq_status scan_cut(const char *p, size_t len, const long *cuts, size_t max_bytes,
                          size_t max_elements, struct bq_resp_scanner *s)
{
    bq_resp_init(s, max_bytes, max_elements);
    size_t at = 0;
    bq_status st = BQ_OK;
    for (int i = 0; st == BQ_OK; i++) {
        size_t to = cuts[i] < 0 || (size_t)cuts[i] > len ? len : (size_t)cuts[i];
        st = bq_resp_scan(s, p + at, to - at, NULL);
        at = to;
        if (at == len)
            break;
    }
    return st;
}

/* Streams hiredis accepts: nil, empty and nested arrays, CR and LF inside a line, bulk data
 * with CRLF inside and unchecked closing bytes, the extreme integers, replies back to back. */
static const char *const good_streams[] = {
    "+OK\r\n",
    "-ERR wrong\r\n:0\r\n:-1\r\n:9223372036854775807\r\n:-9223372036854775808\r\n",
    "$0\r\n\r\n$-1\r\n*-1\r\n*0\r\n",
    "$6\r\na\r\nb\r\n\r\n$3\r\nabcXY",
    "+a\rb\nc\r\r\n-\r\n+\n\r\n",
    "*3\r\n$3\r\nfoo\r\n*2\r\n:1\r\n*0\r\n$-1\r\n+x\r\n",
    "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:7\r\n",     /* 8 arrays deep */
    "*2\r\n*-1\r\n*1\r\n$2\r\nhi\r\n*2\r\n:1\r\n:2\r\n",
    "*2\r\n:1\r\n",                                                  /* incomplete */
    "$10\r\nabc",                                                    /* incomplete */
    "+no end",                                                       /* incomplete */
};

/* Streams hiredis refuses, each after some whole replies. */
static const char *const bad_streams[] = {
    ":12a\r\n", ":-0\r\n", ":01\r\n", ":\r\n", ":-\r\n", ":+1\r\n", ": 1\r\n",
    ":1\r2\r\n", ":9223372036854775808\r\n", ":-9223372036854775809\r\n",
    ":99999999999999999999\r\n", "+ok\r\n$-2\r\n", "$x\r\n", "$1 \r\n", "*-2\r\n",
    "*2147483648\r\n", "*a\r\n", "+ok\r\n?\r\n", "\x01", "\xff", "\\", "\"", "\n", "\r",
    "\t", "\a", "\b", " ", "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:7\r\n",
    "*2\r\n:1\r\n&x",
};

static void check_agrees_with_hiredis(const char *p, size_t len)
{
    char want[128];
    unsigned long long n = hiredis_verdict(p, len, want, sizeof want);
    struct bq_resp_scanner s;
    const long whole[] = {-1};
    bq_status st = scan_cut(p, len, whole, 0, 0, &s);
    if (s.replies != n || (st == BQ_OK) != (want[0] == '\0') ||
        (st != BQ_OK && strcmp(s.msg, want) != 0)) {
        printf("  stream \"%.*s\": scanner %llu replies, %s; hiredis %llu, %s\n", (int)len, p,
               s.replies, st == BQ_OK ? "ok" : s.msg, n, want[0] ? want : "ok");
        check_failed_now = 1;
    }
    CHECK(st == BQ_OK || st == BQ_EPROTO);
    /* Cut anywhere once, and byte by byte: the same verdict. */
    for (size_t k = 0; k <= len; k++) {
        struct bq_resp_scanner t;
        const long cut[] = {(long)k, -1};
        bq_status st2 = scan_cut(p, len, cut, 0, 0, &t);
        if (st2 != st || t.replies != s.replies || strcmp(t.msg, s.msg) != 0) {
            printf("  stream \"%.*s\" cut at %zu: %llu replies, %s\n", (int)len, p, k,
                   t.replies, t.msg);
            check_failed_now = 1;
        }
    }
    struct bq_resp_scanner t;
    bq_resp_init(&t, 0, 0);
    bq_status st3 = BQ_OK;
    for (size_t k = 0; k < len; k++)
        st3 = bq_resp_scan(&t, p + k, 1, NULL);
    CHECK_INT(st3, st);
    CHECK_INT(t.replies, s.replies);
}

TEST(resp_scanner_agrees_with_hiredis)
{
    for (size_t i = 0; i < sizeof good_streams / sizeof *good_streams; i++) {
        check_agrees_with_hiredis(good_streams[i], strlen(good_streams[i]));
        char none[128];
        CHECK_STR((hiredis_verdict(good_streams[i], strlen(good_streams[i]), none, sizeof none),
                   none), "");
    }
    for (size_t i = 0; i < sizeof bad_streams / sizeof *bad_streams; i++)
        check_agrees_with_hiredis(bad_streams[i], strlen(bad_streams[i]));
    /* A NUL is a type byte like any other. */
    check_agrees_with_hiredis("+a\0b\r\n\0", 7);
    /* The scanner's messages are hiredis's. */
    struct bq_resp_scanner s;
    const long whole[] = {-1};
    CHECK_INT(scan_cut(":1x\r\n", 5, whole, 0, 0, &s), BQ_EPROTO);
    CHECK_STR(s.msg, "Bad integer value");
    CHECK_INT(scan_cut("+ok\r\n\x7f", 6, whole, 0, 0, &s), BQ_EPROTO);
    CHECK_STR(s.msg, "Protocol error, got \"\\x7f\" as reply type byte");
}

TEST(resp_scanner_counts_replies_and_their_ends)
{
    const char p[] = "+OK\r\n*2\r\n:1\r\n$2\r\nab\r\n$-1\r\n:5";
    struct bq_resp_scanner s;
    bq_resp_init(&s, 0, 0);
    size_t whole = 99;
    CHECK_INT(bq_resp_scan(&s, p, sizeof p - 1, &whole), BQ_OK);
    CHECK_INT(s.replies, 3);
    CHECK_INT(whole, strlen("+OK\r\n*2\r\n:1\r\n$2\r\nab\r\n$-1\r\n"));
    CHECK_INT(bq_resp_scan(&s, "\r", 1, &whole), BQ_OK);
    CHECK_INT(whole, 0);
    CHECK_INT(bq_resp_scan(&s, "\n", 1, &whole), BQ_OK);
    CHECK_INT(whole, 1);
    CHECK_INT(s.replies, 4);
}

TEST(resp_scanner_limits_hold_exactly)
{
    struct bq_resp_scanner s;
    const long whole[] = {-1};
    /* Elements: the reply itself and each element announced, at every depth. */
    const char four[] = "*3\r\n:1\r\n:2\r\n:3\r\n";
    CHECK_INT(scan_cut(four, strlen(four), whole, 0, 4, &s), BQ_OK);
    CHECK_INT(s.replies, 1);
    CHECK_INT(scan_cut(four, strlen(four), whole, 0, 3, &s), BQ_ETOOBIG);
    CHECK_STR(s.msg, "exceeds 3 elements");
    CHECK_INT(s.replies, 0);
    const char five[] = "*2\r\n*2\r\n:1\r\n:2\r\n:3\r\n";
    CHECK_INT(scan_cut(five, strlen(five), whole, 0, 5, &s), BQ_OK);
    CHECK_INT(scan_cut(five, strlen(five), whole, 0, 4, &s), BQ_ETOOBIG);
    /* Refused at the header, before any element came: hiredis would calloc them all. */
    bq_resp_init(&s, 0, 1000000);
    CHECK_INT(bq_resp_scan(&s, "*2000000\r\n", 10, NULL), BQ_ETOOBIG);
    CHECK_STR(s.msg, "exceeds 1000000 elements");
    /* Each reply has its own count: two replies of 4 elements under a limit of 4. */
    char two[64];
    snprintf(two, sizeof two, "%s%s", four, four);
    CHECK_INT(scan_cut(two, strlen(two), whole, 0, 4, &s), BQ_OK);
    CHECK_INT(s.replies, 2);

    /* Bytes: as sent, headers and CRLFs included. "$5\r\nhello\r\n" is 11. */
    const char hello[] = "$5\r\nhello\r\n$5\r\nhello\r\n";
    CHECK_INT(scan_cut(hello, strlen(hello), whole, 11, 0, &s), BQ_OK);
    CHECK_INT(s.replies, 2);
    CHECK_INT(scan_cut(hello, strlen(hello), whole, 10, 0, &s), BQ_ETOOBIG);
    CHECK_STR(s.msg, "exceeds 10 bytes");
    /* A bulk header announcing too much is refused at once, before its data. */
    bq_resp_init(&s, 1000, 0);
    size_t w = 99;
    CHECK_INT(bq_resp_scan(&s, "+OK\r\n$995\r\n", 11, &w), BQ_ETOOBIG);
    CHECK_INT(w, 5); /* the +OK can still be read */
    CHECK_INT(s.replies, 1);
    CHECK_INT(bq_resp_scan(&s, "+OK\r\n", 5, &w), BQ_ETOOBIG); /* sticky */
    CHECK_INT(w, 0);
    bq_resp_init(&s, 1000, 0);
    CHECK_INT(bq_resp_scan(&s, "$992\r\n", 6, NULL), BQ_OK); /* 6 + 992 + 2 = 1000 */
    bq_resp_init(&s, 999, 0);
    CHECK_INT(bq_resp_scan(&s, "$992\r\n", 6, NULL), BQ_ETOOBIG);
    /* A line that never ends stops at the limit. */
    char line[200];
    memset(line, 'a', sizeof line);
    line[0] = '+';
    CHECK_INT(scan_cut(line, 100, whole, 100, 0, &s), BQ_OK);
    CHECK_INT(scan_cut(line, 101, whole, 100, 0, &s), BQ_ETOOBIG);
    /* Nested bytes add up across the whole reply: 4 + 5 + 5 = 14. */
    const char nested[] = "*2\r\n+OK\r\n+OK\r\n";
    CHECK_INT(scan_cut(nested, strlen(nested), whole, 14, 0, &s), BQ_OK);
    CHECK_INT(scan_cut(nested, strlen(nested), whole, 13, 0, &s), BQ_ETOOBIG);
}

TEST(resp_scanner_limits_hold_wherever_the_reads_are_cut)
{
    /* Every cut of a stream near the limits gives the verdict of the whole. */
    const char p[] = "*3\r\n$5\r\nhello\r\n*1\r\n:12\r\n+x\r\n$3\r\nabc\r\n";
    size_t len = strlen(p); /* reply 1: 28 bytes, 5 elements; reply 2: 9 bytes, 1 element */
    const size_t limits[][2] = {{28, 5}, {27, 5}, {28, 4}, {0, 0}, {9, 0}, {0, 1}, {200, 6}};
    for (size_t l = 0; l < sizeof limits / sizeof *limits; l++) {
        struct bq_resp_scanner s, t;
        const long whole[] = {-1};
        bq_status st = scan_cut(p, len, whole, limits[l][0], limits[l][1], &s);
        for (size_t a = 0; a <= len; a++) {
            for (size_t b = a; b <= len; b++) {
                const long cuts[] = {(long)a, (long)b, -1};
                bq_status st2 = scan_cut(p, len, cuts, limits[l][0], limits[l][1], &t);
                if (st2 != st || t.replies != s.replies) {
                    printf("  limits %zu/%zu cut at %zu,%zu: %d != %d\n", limits[l][0],
                           limits[l][1], a, b, st2, st);
                    check_failed_now = 1;
                }
            }
        }
    }
    struct bq_resp_scanner s;
    const long whole[] = {-1};
    CHECK_INT(scan_cut(p, len, whole, 28, 5, &s), BQ_OK);
    CHECK_INT(s.replies, 2);
    CHECK_INT(scan_cut(p, len, whole, 27, 0, &s), BQ_ETOOBIG);
    CHECK_INT(s.replies, 0);
    CHECK_INT(scan_cut(p, len, whole, 0, 4, &s), BQ_ETOOBIG);
}

int main(void)
{
    RUN(resp_scanner_agrees_with_hiredis);
    RUN(resp_scanner_counts_replies_and_their_ends);
    RUN(resp_scanner_limits_hold_exactly);
    RUN(resp_scanner_limits_hold_wherever_the_reads_are_cut);
    RUN(cluster_slots_good_reply);
    RUN(cluster_slots_drop_malformed_ranges);
    RUN(cluster_slots_empty_host_is_the_node_asked);
    RUN(cluster_slots_long_host_and_too_many_masters);
    return check_report("test_reply");
}
