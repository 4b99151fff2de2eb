/*
 * binding.h -- shared pieces of the Lua binding (binduq.core).
 *
 * The binding uses only the Lua C API, never liblua's internals, so the same module works in
 * binduq-lua and in a plain lua5.4 interpreter. Classes: binduq.Client (l_client.c) and
 * binduq.Engine (l_engine.c), binduq.Storage (l_storage.c); module functions in l_core.c,
 * the handler states' slot API in l_slot.c, the metrics in l_metrics.c.
 */
#ifndef BINDUQ_BINDING_H
#define BINDUQ_BINDING_H

#include "../binduq.h"
#include "../broker/broker.h"
#include "../core/buf.h"

#include <lauxlib.h>
#include <lua.h>

#define BQ_CLIENT_MT "binduq.Client"
#define BQ_ENGINE_MT "binduq.Engine"
#define BQ_STORAGE_MT "binduq.Storage"
#define BQ_BATCH_MT "binduq.Batch"

/* Registry key of the light userdata that marks a handler state (see l_slot.c). */
#define BQ_SLOT_KEY "binduq.slot"

int luaopen_binduq_core(lua_State *L);

/* Registers the class metatables and adds the constructors to the table on top. */
void bq_lua_open_client(lua_State *L);
void bq_lua_open_engine(lua_State *L);
void bq_lua_open_slot(lua_State *L);    /* core.slot_*, core.OUTCOME, ... (l_slot.c) */
void bq_lua_open_metrics(lua_State *L); /* core.metrics_* (l_metrics.c) */
void bq_lua_open_storage(lua_State *L);
void bq_lua_open_task(lua_State *L);
void bq_lua_open_cron(lua_State *L); /* core.cron (l_cron.c) */
void bq_lua_open_produce(lua_State *L);
void bq_lua_open_json(lua_State *L); /* l_json.cpp, C++ */
void bq_lua_open_http(lua_State *L); /* core.http_start, core.sse_reader (l_http.c) */
void bq_lua_open_gateway(lua_State *L); /* core.gateway (l_gateway.c) */
struct bq_http_loop;
/* The calling thread's HTTP loop, or NULL when it has made no call yet (l_http.c). */
struct bq_http_loop *bq_lua_http_thread_loop(void);

/* Whether the value at i is a table lua-cjson decoded from an array: [1] set, or empty (an
 * empty object decodes to the same table). l_task.c; l_json.cpp uses it too. */
bool bq_lua_decoded_array(lua_State *L, int i);

struct bq_storage;
/* Pushes a new binduq.Storage handle holding a reference to s (l_storage.c). */
void bq_lua_push_storage(lua_State *L, struct bq_storage *s);
/* The storage of the handle at idx; raises if it is not one or is closed. */
struct bq_storage *bq_lua_check_storage(lua_State *L, int idx);

/* Encoded messages from core.prepare_runs (l_produce.c): c:push and c:push_unique take one
 * in place of their lists. keys[i] is "run:<id>", ids[i] the id within it. */
struct bq_lua_batch {
    size_t n;
    struct bq_slice *msgs;
    const char **keys;
    const char **ids;
    size_t *offs; /* while building: the offsets of key and message i in data */
    bq_buf data;
};
/* The batch at idx, or NULL when that is something else. */
const struct bq_lua_batch *bq_lua_test_batch(lua_State *L, int idx);

/* Pushes nil, message, code and returns 3: the run-time failure convention. */
int bq_lua_fail(lua_State *L, const bq_err *err);

/* The number at `arg` as a duration in seconds (src/core/clock.h's rule: finite, >= 0, at
 * most 365 days), or raises "<what> <problem> (got <value>)". */
double bq_lua_check_duration(lua_State *L, int arg, const char *what);

/* Reads optional fields of the options table at `idx`; raise on a wrong type. */
const char *bq_lua_opt_string(lua_State *L, int idx, const char *key);
lua_Integer bq_lua_opt_integer(lua_State *L, int idx, const char *key, lua_Integer def);
lua_Number bq_lua_opt_number(lua_State *L, int idx, const char *key, lua_Number def);
int bq_lua_opt_boolean(lua_State *L, int idx, const char *key, int def);

/* Fills client options from the scheduler table at `idx` (strings stay owned by the table,
 * which the caller keeps on the stack). May raise. */
void bq_lua_client_options(lua_State *L, int idx, struct bq_client_options *o);

/* The read end of the signal pipe when signals are trapped, else -1 (l_core.c). */
int bq_lua_signal_fd(void);

/* The bq_client of the binduq.Client at idx (raises if it is not one, or is closed). */
struct bq_client *bq_lua_check_client(lua_State *L, int idx);

#endif
