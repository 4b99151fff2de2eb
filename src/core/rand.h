/*
 * rand.h -- randomness: kernel random bytes for identifiers, a fast per-thread generator for
 * jitter.
 */
#ifndef BINDUQ_RAND_H
#define BINDUQ_RAND_H

#include <stddef.h>
#include <stdint.h>

/* Fills buf with random bytes from the kernel (getrandom); falls back to the fast generator
 * only if the kernel call fails. */
void bq_random_bytes(void *buf, size_t n);

/* A random version-4 UUID, "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx", into out[37]. */
void bq_uuid4(char out[37]);

/* A uniform double in [0, 1) from a per-thread xorshift generator seeded from the kernel. */
double bq_random_unit(void);

#endif
