/*
 * cluster.h -- reading a Redis Cluster slot map (CLUSTER SLOTS), apart from the broker that
 * uses it (cluster.c), so the reading can be tested and fuzzed without a cluster.
 *
 * A CLUSTER SLOTS reply is an array of ranges, each [from, to, [host, port, ...], replicas...].
 * It comes from the network, so every range is checked before it is used: both bounds
 * integers with 0 <= from <= to < 16384, the master an array whose host is a string binduq can
 * put in a URL (at most 127 bytes of letters, digits and ".-_:"; empty means the node asked)
 * and whose port is an integer in 1..65535. A range that fails any check is dropped whole
 * and counted; nothing outside the map is ever written.
 */
#ifndef BINDUQ_CLUSTER_H
#define BINDUQ_CLUSTER_H

#include <hiredis/hiredis.h>
#include <stddef.h>

#define BQ_CLUSTER_NSLOTS 16384
#define BQ_CLUSTER_MAX_NODES 64
#define BQ_CLUSTER_HOST_MAX 128 /* bytes of a host, with its NUL */

struct bq_slot_node {
    char host[BQ_CLUSTER_HOST_MAX];
    int port;
};

struct bq_slot_map {
    short slot[BQ_CLUSTER_NSLOTS];  /* index into node[], -1: no master named */
    struct bq_slot_node node[BQ_CLUSTER_MAX_NODES]; /* distinct masters, in reply order */
    int nnodes;
    size_t ranges;                  /* ranges kept */
    size_t dropped;                 /* ranges dropped */
    size_t first_dropped;           /* index in the reply of the first range dropped */
    const char *why;                /* static text: why that range was dropped; NULL if none */
};

/* Reads the CLUSTER SLOTS reply `r` into `map` (which it resets first). `asked` is the host of
 * the node that answered, used for a master given with an empty host. A reply that is not an
 * array is read as no ranges, with why set. Returns map->dropped. Pure: no I/O, no logging,
 * no allocation; `r` is borrowed. */
size_t bq_cluster_slots_parse(const redisReply *r, const char *asked, struct bq_slot_map *map);

#endif
