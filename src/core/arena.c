/*
 * arena.c -- see arena.h.
 *
 * Chunks are never given back while the state lives, so the arena stops growing at its
 * bound: past it, small blocks come from bq_malloc (rounded up to their class, so a resize
 * within the class still stays put), and a small block freed from then on is looked up in
 * the sorted list of chunk addresses to tell where it came from. A state that never reaches
 * the bound never pays for the lookup.
 */
#include "arena.h"

#include "alloc.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define CLASS_SHIFT 4 /* 16-byte classes: the alignment malloc gives too */
#define NCLASSES (BQ_ARENA_MAX >> CLASS_SHIFT)
#define CHUNK_SIZE (32 * 1024)

#if defined(__SANITIZE_ADDRESS__)
#define ARENA_BYPASS 1 /* every block through the C library, where ASan sees it */
#else
#define ARENA_BYPASS 0
#endif

struct free_block {
    struct free_block *next;
};

/* A chunk's header is padded to the class alignment; blocks follow it. */
struct chunk {
    struct chunk *next;
    char pad[(1 << CLASS_SHIFT) - sizeof(struct chunk *)];
};

struct bq_arena {
    struct free_block *free[NCLASSES + 1]; /* index 1..NCLASSES */
    char *cur, *end;                       /* the unused rest of the newest chunk */
    struct chunk *chunks;
    size_t held, bound;
    bool overflow;                         /* the bound was reached: some small blocks are
                                            * bq_malloc's */
    uintptr_t *bases;                      /* the chunks' addresses, sorted */
    size_t nbases;
};

bq_arena *bq_arena_new(size_t bound)
{
    bq_arena *a = bq_calloc(1, sizeof(bq_arena));
    if (a != NULL)
        a->bound = bound > 0 ? bound : BQ_ARENA_BOUND;
    return a;
}

void bq_arena_free(bq_arena *a)
{
    if (a == NULL)
        return;
    for (struct chunk *c = a->chunks, *next; c != NULL; c = next) {
        next = c->next;
        bq_free(c);
    }
    bq_free(a->bases);
    bq_free(a);
}

size_t bq_arena_held(const bq_arena *a)
{
    return a->held;
}

static inline size_t class_of(size_t size)
{
    return (size + (1u << CLASS_SHIFT) - 1) >> CLASS_SHIFT;
}

/* Records a new chunk's address in the sorted list; false when out of memory. */
static bool add_base(bq_arena *a, uintptr_t base)
{
    uintptr_t *b = bq_realloc(a->bases, (a->nbases + 1) * sizeof *b);
    if (b == NULL)
        return false;
    a->bases = b;
    size_t i = a->nbases;
    while (i > 0 && b[i - 1] > base) {
        b[i] = b[i - 1];
        i--;
    }
    b[i] = base;
    a->nbases++;
    return true;
}

/* Whether p lies in one of the arena's chunks (binary search of the sorted addresses). */
static bool owns(const bq_arena *a, const void *p)
{
    uintptr_t x = (uintptr_t)p;
    size_t lo = 0, hi = a->nbases;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (a->bases[mid] <= x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && x < a->bases[lo - 1] + CHUNK_SIZE;
}

static void *take(bq_arena *a, size_t cls)
{
    struct free_block *b = a->free[cls];
    if (b != NULL) {
        a->free[cls] = b->next;
        return b;
    }
    size_t size = cls << CLASS_SHIFT;
    if ((size_t)(a->end - a->cur) < size) {
        if (a->held + CHUNK_SIZE > a->bound) {
            a->overflow = true;
            return bq_malloc(size);
        }
        /* The rest of the old chunk (less than one block of this class) goes unused. */
        struct chunk *c = bq_malloc(CHUNK_SIZE);
        if (c == NULL || !add_base(a, (uintptr_t)c)) {
            bq_free(c);
            return NULL;
        }
        c->next = a->chunks;
        a->chunks = c;
        a->held += CHUNK_SIZE;
        a->cur = (char *)(c + 1);
        a->end = (char *)c + CHUNK_SIZE;
    }
    void *out = a->cur;
    a->cur += size;
    return out;
}

static inline void give(bq_arena *a, void *ptr, size_t cls)
{
    if (a->overflow && !owns(a, ptr)) {
        bq_free(ptr);
        return;
    }
    struct free_block *b = ptr;
    b->next = a->free[cls];
    a->free[cls] = b;
}

void *bq_arena_lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    bq_arena *a = ud;
    if (ARENA_BYPASS) {
        if (nsize == 0) {
            bq_free(ptr);
            return NULL;
        }
        return bq_realloc(ptr, nsize);
    }
    /* With ptr NULL, osize is the kind of object Lua creates, not a size. */
    bool small_old = ptr != NULL && osize <= BQ_ARENA_MAX;
    if (nsize == 0) {
        if (small_old)
            give(a, ptr, class_of(osize));
        else
            bq_free(ptr);
        return NULL;
    }
    if (ptr != NULL && !small_old && nsize > BQ_ARENA_MAX)
        return bq_realloc(ptr, nsize);
    if (small_old && class_of(osize) == class_of(nsize))
        return ptr;
    void *out = nsize <= BQ_ARENA_MAX ? take(a, class_of(nsize)) : bq_malloc(nsize);
    if (out == NULL || ptr == NULL)
        return out; /* a failed resize leaves the old block as it was, as Lua expects */
    memcpy(out, ptr, osize < nsize ? osize : nsize);
    if (small_old)
        give(a, ptr, class_of(osize));
    else
        bq_free(ptr);
    return out;
}
