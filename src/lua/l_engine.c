/*
 * l_engine.c -- binduq.Engine: the worker engine (engine/worker.h) driven from the main Lua
 * state. The handler states it runs, one per slot thread, are l_slot.c's.
 *
 *   local e = core.engine{scheduler={...}, concurrency=, block_timeout=, want_results=,
 *                         max_message_size=, script=, args=, path=, cpath=, worker_key=}
 *   e:start(drain)        -> true | nil, msg, code
 *   e:next_event(timeout [, fd]) -> {kind="result"|"signal"|"stopped", ...} | nil (timed out)
 *   e:stop()  e:drain()  e:abort()  e:join()  e:stats()  e:id()  e:close()
 */
#include "binding.h"
#include "l_slot.h"

#include "../core/alloc.h"
#include "../core/err.h"
#include "../engine/metrics.h"
#include "../engine/worker.h"

#include <string.h>

struct lengine {
    bq_worker *w;                /* NULL once closed */
    struct bq_lua_slot_cfg *cfg; /* owned */
};

static struct lengine *check_engine(lua_State *L)
{
    struct lengine *e = luaL_checkudata(L, 1, BQ_ENGINE_MT);
    if (e->w == NULL)
        luaL_error(L, "attempt to use a closed worker");
    return e;
}

/* core.engine(opts) */
static int l_engine_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    struct lengine *e = lua_newuserdatauv(L, sizeof *e, 1); /* 2 */
    e->w = NULL;
    e->cfg = NULL;
    luaL_setmetatable(L, BQ_ENGINE_MT);
    bq_lua_slot_cfg_read(L, 1, &e->cfg);

    struct bq_client_options co;
    if (lua_getfield(L, 1, "scheduler") == LUA_TTABLE) {
        bq_lua_client_options(L, -1, &co);
    } else {
        memset(&co, 0, sizeof co);
    }
    lua_setiuservalue(L, 2, 1); /* keep the scheduler table (and its strings) alive */
    struct bq_worker_options wo;
    memset(&wo, 0, sizeof wo);
    wo.concurrency = (int)bq_lua_opt_integer(L, 1, "concurrency", 1);
    wo.per_slot = e->cfg->per_state;
    wo.prefetch = (int)bq_lua_opt_integer(L, 1, "prefetch", 0);
    wo.batch = (int)bq_lua_opt_integer(L, 1, "batch", 128);
    wo.block_timeout = bq_lua_opt_number(L, 1, "block_timeout", 5.0);
    wo.want_results = e->cfg->want_results;
    wo.lease = bq_lua_opt_number(L, 1, "lease", 30.0);
    wo.shutdown_timeout = bq_lua_opt_number(L, 1, "shutdown_timeout", 30.0);
    lua_Integer mms = bq_lua_opt_integer(L, 1, "max_message_size", BQ_DEFAULT_MAX_MESSAGE_SIZE);
    wo.max_message_size = mms > 0 ? (size_t)mms : 0;
    const char *delivery = bq_lua_opt_string(L, 1, "delivery");
    if (delivery == NULL || strcmp(delivery, "at-least-once") == 0)
        wo.delivery = BQ_AT_LEAST_ONCE;
    else if (strcmp(delivery, "at-most-once") == 0)
        wo.delivery = BQ_AT_MOST_ONCE;
    else
        return luaL_error(L, "option 'delivery' must be \"at-least-once\" or \"at-most-once\"");

    /* queues = {name, ...} in priority order; weights = {n, ...} for weighted mode */
    const char *queues[16];
    int weights[16], nq = 0, nw = 0;
    if (lua_getfield(L, 1, "queues") == LUA_TTABLE) {
        nq = (int)luaL_len(L, -1);
        if (nq < 1 || nq > 16)
            return luaL_error(L, "option 'queues' needs 1 to 16 queue names");
        for (int i = 0; i < nq; i++) {
            if (lua_rawgeti(L, -1, i + 1) != LUA_TSTRING)
                return luaL_error(L, "option 'queues': entry %d is not a string", i + 1);
            queues[i] = lua_tostring(L, -1); /* the options table keeps it alive */
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "weights") == LUA_TTABLE) {
        nw = (int)luaL_len(L, -1);
        if (nw != (nq > 0 ? nq : 1))
            return luaL_error(L, "option 'weights' needs one weight per queue");
        for (int i = 0; i < nw; i++) {
            lua_rawgeti(L, -1, i + 1);
            weights[i] = (int)lua_tointeger(L, -1);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    wo.queues = nq > 0 ? queues : NULL;
    wo.nqueues = nq;
    wo.weights = nw > 0 ? weights : NULL;
    struct bq_config cfg;
    bq_err err;
    bq_status st = bq_config_resolve(&co, &cfg, &err);
    if (st == BQ_OK) {
        wo.cfg = &cfg;
        st = bq_worker_new(&wo, &bq_lua_slot_ops, e->cfg, &e->w, &err);
    }
    bq_config_free(&cfg);
    if (st != BQ_OK)
        return luaL_error(L, "%s", err.msg);
    e->cfg->w = e->w;
    return 1;
}

static int l_engine_close(lua_State *L)
{
    struct lengine *e = luaL_checkudata(L, 1, BQ_ENGINE_MT);
    if (e->w != NULL)
        bq_metrics_remove(e->w);
    bq_worker_free(e->w);
    e->w = NULL;
    bq_lua_slot_cfg_free(e->cfg);
    e->cfg = NULL;
    return 0;
}

/* /readyz: the worker's storage answers. HTTP thread. */
static bool storage_ready(void *ud)
{
    struct bq_lua_slot_cfg *c = ud;
    bq_err err;
    return c->storage == NULL || c->storage->ops->ping(c->storage, &err) == BQ_OK;
}

static int l_engine_start(lua_State *L)
{
    struct lengine *e = check_engine(L);
    bool drain = lua_toboolean(L, 2);
    bq_err err;
    if (bq_worker_start(e->w, drain, &err) != BQ_OK)
        return bq_lua_fail(L, &err);
    bq_metrics_add(e->w, storage_ready, e->cfg);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_engine_stop(lua_State *L)
{
    bq_worker_stop(check_engine(L)->w);
    return 0;
}

static int l_engine_drain(lua_State *L)
{
    bq_worker_drain(check_engine(L)->w);
    return 0;
}

static int l_engine_abort(lua_State *L)
{
    bq_worker_abort(check_engine(L)->w);
    return 0;
}

static int l_engine_join(lua_State *L)
{
    bq_worker_join(check_engine(L)->w);
    return 0;
}

static void set_str(lua_State *L, const char *key, const char *val)
{
    if (val != NULL && *val != '\0') {
        lua_pushstring(L, val);
        lua_setfield(L, -2, key);
    }
}

/* e:next_event(timeout [, fd]) -- timeout in seconds, negative or nil waits forever; the
 * wait also ends (nil) as soon as fd is readable (a dashboard's server: gw:fd()). */
static int l_engine_next_event(lua_State *L)
{
    struct lengine *e = check_engine(L);
    double timeout = luaL_optnumber(L, 2, -1);
    int xfd = (int)luaL_optinteger(L, 3, -1);
    struct bq_event ev;
    bq_worker_next_event_or(e->w, timeout, bq_lua_signal_fd(), xfd, &ev);
    /* Only a memory error can raise below; it would leak this one event's strings. */
    switch (ev.kind) {
    case BQ_EVENT_NONE:
        lua_pushnil(L);
        break;
    case BQ_EVENT_SIGNAL:
        lua_createtable(L, 0, 1);
        set_str(L, "kind", "signal");
        break;
    case BQ_EVENT_STOPPED:
        lua_createtable(L, 0, 1);
        set_str(L, "kind", "stopped");
        break;
    case BQ_EVENT_RESULT:
        lua_createtable(L, 0, 8);
        set_str(L, "kind", "result");
        set_str(L, "state", bq_outcome_name(ev.outcome.kind));
        lua_pushinteger(L, ev.outcome.attempt);
        lua_setfield(L, -2, "attempt");
        set_str(L, "task_id", ev.outcome.task_id);
        set_str(L, "type", ev.outcome.type);
        set_str(L, "reason", ev.outcome.reason);
        set_str(L, "json", ev.outcome.json);
        set_str(L, "task_state", ev.outcome.state);
        lua_pushnumber(L, ev.duration);
        lua_setfield(L, -2, "duration");
        if (ev.outcome.kind == BQ_OUTCOME_RETRY) {
            lua_pushnumber(L, ev.outcome.delay);
            lua_setfield(L, -2, "delay");
        }
        break;
    }
    bq_event_clear(&ev);
    return 1;
}

static int l_engine_stats(lua_State *L)
{
    struct lengine *e = check_engine(L);
    struct bq_worker_stats s;
    bq_worker_stats(e->w, &s);
    const struct {
        const char *name;
        long long v;
    } f[] = {
        {"fetched", s.fetched},         {"completed", s.completed},
        {"failed", s.failed},           {"retried", s.retried},
        {"dead_lettered", s.dead_lettered}, {"dropped", s.dropped},
        {"malformed", s.malformed},     {"skipped", s.skipped},
        {"handed_back", s.handed_back}, {"lease_lost", s.lease_lost},
        {"reaped", s.reaped},           {"rate_limited", s.rate_limited},
        {"canceled", s.canceled},       {"paused", s.paused},
        {"waiting", s.waiting},         {"inflight", s.inflight},
    };
    lua_createtable(L, 0, (int)(sizeof f / sizeof f[0]));
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        lua_pushinteger(L, (lua_Integer)f[i].v);
        lua_setfield(L, -2, f[i].name);
    }
    return 1;
}

static int l_engine_id(lua_State *L)
{
    lua_pushstring(L, bq_worker_id(check_engine(L)->w));
    return 1;
}

static int l_engine_tostring(lua_State *L)
{
    struct lengine *e = luaL_checkudata(L, 1, BQ_ENGINE_MT);
    if (e->w == NULL)
        lua_pushstring(L, "binduq.Engine (closed)");
    else
        lua_pushfstring(L, "binduq.Engine: %s (%s)", bq_worker_queue(e->w), bq_worker_id(e->w));
    return 1;
}

static const luaL_Reg engine_methods[] = {
    {"start", l_engine_start}, {"stop", l_engine_stop},   {"join", l_engine_join},
    {"drain", l_engine_drain}, {"abort", l_engine_abort},
    {"next_event", l_engine_next_event}, {"stats", l_engine_stats}, {"id", l_engine_id},
    {"close", l_engine_close}, {NULL, NULL},
};

static const luaL_Reg engine_meta[] = {
    {"__gc", l_engine_close},
    {"__close", l_engine_close},
    {"__tostring", l_engine_tostring},
    {NULL, NULL},
};

void bq_lua_open_engine(lua_State *L)
{
    if (luaL_newmetatable(L, BQ_ENGINE_MT)) {
        luaL_setfuncs(L, engine_meta, 0);
        luaL_newlib(L, engine_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_engine_new);
    lua_setfield(L, -2, "engine");
}
