/*
 * feed_post.h -- a producer's task events (docs/events.md), written behind its back.
 *
 * A producer's events ("scheduled", "canceled", "paused") are written after the operations
 * they report. Writing them in the caller's call would cost it a round trip per schedule;
 * instead they wait in one buffer per queue and a thread of the poster writes each queue's
 * buffer as one stream entry once the oldest has waited FEED_POST_LINGER (1 ms), so a burst
 * of schedules costs one XADD, and a single schedule costs its caller no round trip. The
 * poster is made at the first event. bq_feed_post_flush writes what is pending now (a
 * client's close does it), so a process that closes its client loses none; one that dies
 * loses the last millisecond's, which is what a producer's event promises (best effort,
 * after the operation).
 */
#ifndef BINDUQ_FEED_POST_H
#define BINDUQ_FEED_POST_H

#include "../broker/broker.h"

#include <stddef.h>

typedef struct bq_feed_post bq_feed_post;

/* A poster writing through broker (borrowed: it must outlive the poster). NULL on OOM. */
bq_feed_post *bq_feed_post_new(bq_broker *broker);

/* Adds events (one JSON object, or several separated by commas) for the stream of `queue`.
 * Any thread. */
void bq_feed_post_add(bq_feed_post *p, const char *queue, const char *json, size_t len);

/* Writes what is pending, now, in the caller's thread. */
void bq_feed_post_flush(bq_feed_post *p);

/* How many queues have events pending now (what the poster keeps an entry for). */
size_t bq_feed_post_queues(bq_feed_post *p);

/* Flushes, stops the thread and frees. NULL is fine. */
void bq_feed_post_free(bq_feed_post *p);

#endif
