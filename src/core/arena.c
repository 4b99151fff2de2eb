/*
 * arena.c -- see arena.h.
 */
#include "arena.h"

#include "alloc.h"

#include <stdbool.h>
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
    size_t held;
};

bq_arena *bq_arena_new(void)
{
    return bq_calloc(1, sizeof(bq_arena));
}

void bq_arena_free(bq_arena *p)
{
    if (p == NULL)
        return;
    for (struct chunk *c = p->chunks, *next; c != NULL; c = next) {
        next = c->next;
        bq_free(c);
    }
    bq_free(p);
}

size_t bq_arena_held(const bq_arena *p)
{
    return p->held;
}

static inline size_t class_of(size_t size)
{
    return (size + (1u << CLASS_SHIFT) - 1) >> CLASS_SHIFT;
}

static void *take(bq_arena *p, size_t cls)
{
    struct free_block *b = p->free[cls];
    if (b != NULL) {
        p->free[cls] = b->next;
        return b;
    }
    size_t size = cls << CLASS_SHIFT;
    if ((size_t)(p->end - p->cur) < size) {
        /* The rest of the old chunk (less than one block of this class) goes unused. */
        struct chunk *c = bq_malloc(CHUNK_SIZE);
        if (c == NULL)
            return NULL;
        c->next = p->chunks;
        p->chunks = c;
        p->held += CHUNK_SIZE;
        p->cur = (char *)(c + 1);
        p->end = (char *)c + CHUNK_SIZE;
    }
    void *out = p->cur;
    p->cur += size;
    return out;
}

static inline void give(bq_arena *p, void *ptr, size_t cls)
{
    struct free_block *b = ptr;
    b->next = p->free[cls];
    p->free[cls] = b;
}

void *bq_arena_lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    bq_arena *p = ud;
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
            give(p, ptr, class_of(osize));
        else
            bq_free(ptr);
        return NULL;
    }
    if (ptr != NULL && !small_old && nsize > BQ_ARENA_MAX)
        return bq_realloc(ptr, nsize);
    if (small_old && class_of(osize) == class_of(nsize))
        return ptr;
    void *out = nsize <= BQ_ARENA_MAX ? take(p, class_of(nsize)) : bq_malloc(nsize);
    if (out == NULL || ptr == NULL)
        return out; /* a failed resize leaves the old block as it was, as Lua expects */
    memcpy(out, ptr, osize < nsize ? osize : nsize);
    if (small_old)
        give(p, ptr, class_of(osize));
    else
        bq_free(ptr);
    return out;
}
