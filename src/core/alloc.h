/*
 * alloc.h -- every allocation of binduq goes through here.
 *
 * The hook table lets tests fail the Nth allocation (fault injection) and lets an embedding
 * program route binduq's memory to its own allocator. bq_calloc and bq_reallocarray check
 * the multiplication for overflow. All functions are thread-safe; the hooks themselves are set
 * once, before any other thread runs.
 */
#ifndef BINDUQ_ALLOC_H
#define BINDUQ_ALLOC_H

#include <stddef.h>

struct bq_alloc_hooks {
    void *(*malloc)(size_t size);
    void *(*realloc)(void *ptr, size_t size);
    void (*free)(void *ptr);
};

/* Installs new hooks (NULL restores the C library's). Not thread-safe. */
void bq_alloc_set_hooks(const struct bq_alloc_hooks *hooks);

void *bq_malloc(size_t size);
void *bq_calloc(size_t n, size_t size);
void *bq_realloc(void *ptr, size_t size);
void *bq_reallocarray(void *ptr, size_t n, size_t size);
void bq_free(void *ptr);

/* Copies of strings; NULL in gives NULL out. The result is freed with bq_free. */
char *bq_strdup(const char *s);
char *bq_strndup(const char *s, size_t n);

/* Test support: after `n` more successful allocations every allocation fails, until
 * bq_alloc_fail_after(-1). Counts are process-wide. */
void bq_alloc_fail_after(long n);

#endif
