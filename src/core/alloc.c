/*
 * alloc.c -- the allocation hooks. See alloc.h.
 */
#include "alloc.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static struct bq_alloc_hooks hooks = {malloc, realloc, free};

/* -1: never fail. Otherwise the number of allocations still allowed to succeed. */
static atomic_long fail_countdown = -1;

void bq_alloc_set_hooks(const struct bq_alloc_hooks *h)
{
    if (h == NULL) {
        hooks.malloc = malloc;
        hooks.realloc = realloc;
        hooks.free = free;
    } else {
        hooks = *h;
    }
}

void bq_alloc_fail_after(long n)
{
    atomic_store(&fail_countdown, n);
}

/* True when fault injection says this allocation must fail. */
static int injected_failure(void)
{
    long left = atomic_load_explicit(&fail_countdown, memory_order_relaxed);
    if (left < 0)
        return 0;
    while (left > 0) {
        if (atomic_compare_exchange_weak(&fail_countdown, &left, left - 1))
            return 0;
    }
    return 1;
}

void *bq_malloc(size_t size)
{
    if (injected_failure())
        return NULL;
    return hooks.malloc(size == 0 ? 1 : size);
}

void *bq_calloc(size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size)
        return NULL;
    void *p = bq_malloc(n * size);
    if (p != NULL)
        memset(p, 0, n * size);
    return p;
}

void *bq_realloc(void *ptr, size_t size)
{
    if (injected_failure())
        return NULL;
    return hooks.realloc(ptr, size == 0 ? 1 : size);
}

void *bq_reallocarray(void *ptr, size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size)
        return NULL;
    return bq_realloc(ptr, n * size);
}

void bq_free(void *ptr)
{
    if (ptr != NULL)
        hooks.free(ptr);
}

char *bq_strndup(const char *s, size_t n)
{
    if (s == NULL)
        return NULL;
    char *p = bq_malloc(n + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *bq_strdup(const char *s)
{
    return s == NULL ? NULL : bq_strndup(s, strlen(s));
}
