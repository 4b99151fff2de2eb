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

#include <stdbool.h>
#include <stddef.h>

/* True if key has a non-empty hash tag. */
bool bq_key_has_tag(const char *key);

/* Writes Q's derived key for `suffix` into out. Returns false if it does not fit. */
bool bq_key_derive(const char *queue, const char *suffix, char *out, size_t size);

/* The part of key that Redis Cluster hashes (the tag, or the whole key). */
void bq_key_hashed_part(const char *key, const char **start, size_t *len);

/* The Redis Cluster slot of key (CRC16/XMODEM mod 16384). */
unsigned bq_key_slot(const char *key);

#endif
