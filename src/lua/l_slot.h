/*
 * l_slot.h -- what binduq.Engine (l_engine.c) and the handler states it runs (l_slot.c)
 * share: the configuration every handler state is built from, and the slot operations the
 * engine hands to bq_worker_new.
 */
#ifndef BINDUQ_L_SLOT_H
#define BINDUQ_L_SLOT_H

#include "../engine/worker.h"
#include "../storage/storage.h"

#include <lua.h>

/* What every handler state of one engine is built from. Owned by the engine userdata and
 * read-only once the threads run. */
struct bq_lua_slot_cfg {
    char *script;     /* the script each handler state runs up to worker:start(), or */
    char *module;     /* the handlers module each loads instead (handlers = "app.handlers") */
    char *path, *cpath;
    lua_Integer *arg_index; /* arg[arg_index[i]] = arg_value[i] */
    char **arg_value;
    int nargs;
    char *worker_key; /* pairs a handler state's worker with the main state's */
    char *policy;     /* JSON of the main state's policy numbers (max_attempts, ...) */
    bool want_results;
    int per_state;    /* tasks each handler state runs at once (tasks_per_state) */
    lua_Integer max_message_size;
    bq_worker *w;
    bq_storage *storage; /* one reference: the task state every handler state shares */
};

/* Counts `seconds` of a per-task storage write into the running task's
 * bq_slot_ctl.batched_wait (nothing outside a handler state's thread). */
void bq_lua_slot_batched_wait(double seconds);

/* The slot operations over handler states; their `ud` is the engine's bq_lua_slot_cfg. */
extern const struct bq_slot_ops bq_lua_slot_ops;

/* Builds the configuration from the engine's options table at idx and stores it in *anchor
 * at once (the engine userdata's field), so that what is built so far is freed with the
 * engine if reading raises. May raise. */
void bq_lua_slot_cfg_read(lua_State *L, int idx, struct bq_lua_slot_cfg **anchor);

/* Frees c, its strings and its storage reference. NULL is fine. */
void bq_lua_slot_cfg_free(struct bq_lua_slot_cfg *c);

/* For a blocking binduq call made while a handler runs (l_http.c): the slot's control (to
 * register a waker and test for a stop) and the handler's monotonic deadline (0: none).
 * NULL outside a handler state or between tasks. */
struct bq_slot_ctl *bq_lua_slot_running(double *deadline);

/* Whether the running handler must stop now: a cancel, a pause, a shutdown or its timeout. */
bool bq_lua_slot_must_stop(void);

struct bq_http;
/* tasks_per_state > 1, in a task's coroutine where it can yield: notes that the task waits
 * for h to reach `until` (net/http.h) and returns true; the caller then yields (lua_yieldk)
 * and the state's loop resumes it when h got there or the task must stop. False elsewhere:
 * the caller waits itself. */
bool bq_lua_slot_await_http(lua_State *L, struct bq_http *h, int until);

/* Raises the running handler's pending cancel, pause, shutdown or timeout error, as ctx:sleep
 * does; returns (0) when there is none. */
int bq_lua_slot_raise(lua_State *L);

/* Whether L is a task's coroutine in a handler state that runs several at once: a wait
 * there must yield, not block the state. */
bool bq_lua_slot_in_coroutine(lua_State *L);

#endif
