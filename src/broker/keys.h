/*
 * keys.h -- the Redis key layout of a queue.
 *
 * Every key that belongs to queue Q hashes to Q's Redis Cluster slot, so one server-side
 * script may touch them all. Cluster hashes only the part between the first '{' and the next
 * '}' when that part is non-empty (the hash tag). So:
 *   - Q without a hash tag ("bindu:tasks"): derived keys are "{Q}:suffix" ("{bindu:tasks}:dlq"),
 *     and CRC16("bindu:tasks") is the slot of both;
 *   - Q with a hash tag ("{bindu}:tasks:high"): derived keys are "Q:suffix".
 */
#ifndef BINDUQ_KEYS_H
#define BINDUQ_KEYS_H

#include "../binduq.h"

#include <stdbool.h>
#include <stddef.h>

/* The longest key binduq derives, with its NUL: a queue name leaves room for the suffixes. */
#define BQ_KEY_MAX 512

/* True if key has a non-empty hash tag. */
bool bq_key_has_tag(const char *key);

/* The longest queue name: room is left for the braces and the longest suffix. */
#define BQ_QUEUE_NAME_MAX 200

/* NULL if `queue` can name a queue, else why not: empty, longer than BQ_QUEUE_NAME_MAX, or a
 * '}' outside a hash tag ("a}b", "a{}b{c}"): wrapped in braces its keys would hash only up to
 * that '}', so they could not share the queue's Cluster slot. */
const char *bq_queue_name_problem(const char *queue);

/* Writes Q's derived key for `suffix` into out. Returns false if Q has a problem (above) or
 * the key does not fit. */
bool bq_key_derive(const char *queue, const char *suffix, char *out, size_t size);

/* The part of every derived key before its suffix ("{Q}:" or "Q:") into out; its length, or
 * 0 if Q has a problem or it does not fit. bq_key_derive is this and the suffix. */
size_t bq_key_prefix(const char *queue, char *out, size_t size);

/* bq_key_derive with out of BQ_KEY_MAX bytes, setting err (BQ_EINVAL) to say what was wrong. */
bq_status bq_key_derive_err(const char *queue, const char *suffix, char *out, bq_err *err);

/* The part of key that Redis Cluster hashes (the tag, or the whole key). */
void bq_key_hashed_part(const char *key, const char **start, size_t *len);

/* The Redis Cluster slot of key (CRC16/XMODEM mod 16384). */
unsigned bq_key_slot(const char *key);

#endif
