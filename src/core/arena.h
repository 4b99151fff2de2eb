/*
 * arena.h -- a small-object allocator for one Lua state.
 *
 * A handler state allocates and frees about a hundred small blocks per task (strings, tables,
 * their parts); through malloc that is some 15,000 instructions a task. Lua tells its
 * allocator the size of every block it frees or resizes, so an arena needs no block headers: it
 * keeps a free list per 16-byte size class up to BQ_ARENA_MAX bytes, carves new blocks from
 * 32 KiB chunks, and hands larger blocks to bq_realloc/bq_free. Memory freed to a class stays
 * in the arena (it is reused by the state's next task) until the arena is freed, after the
 * state is closed; so the arena takes at most `bound` bytes of chunks (a handler state needs
 * under 1 MiB), and past that small blocks come from bq_malloc as well, and go back to it.
 *
 * Not thread-safe: one arena per Lua state, and a Lua state runs on one thread at a time.
 * Built with AddressSanitizer the arena passes every block to bq_realloc, so ASan still sees
 * each Lua object.
 */
#ifndef BINDUQ_ARENA_H
#define BINDUQ_ARENA_H

#include <stddef.h>

#define BQ_ARENA_MAX 512               /* bytes: larger blocks come from bq_realloc */
#define BQ_ARENA_BOUND (4u * 1024 * 1024) /* bytes of chunks an arena keeps at most */

typedef struct bq_arena bq_arena;

/* An arena of at most `bound` bytes of chunks (0: BQ_ARENA_BOUND); NULL when out of memory. */
bq_arena *bq_arena_new(size_t bound);

/* Frees the arena's chunks (every block it handed out) and the arena. NULL is a no-op. */
void bq_arena_free(bq_arena *a);

/* A lua_Alloc: pass the arena as ud to lua_newstate. */
void *bq_arena_lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/* Bytes the arena holds in chunks (handed out or free), for tests and memory figures. */
size_t bq_arena_held(const bq_arena *a);

#endif
