/*
 * l_storage.c -- binduq.Storage: task state (storage/storage.h) seen from Lua.
 *
 *   local st = core.storage{type=, url=, url_name=, schema=, max_connections=, connect_timeout=,
 *                           max_tasks=, ttl=, client=}
 *       (redis: the Redis of `client`, a binduq.Client, else of REDIS_URL, unless url is
 *       given; its queue names the keys' slot; ttl: seconds a finished task is kept, 0: for
 *       ever, default 7 days)
 *   st:create{id=, context_id=, queue=, state=, history=<json>, metadata=<json>, requested=}
 *       -> created, state
 *   st:get(id)               -> record | false (unknown)
 *   st:change{id=, from=, to=, append_history=, append_artifacts=, checkpoint=, error=,
 *             requested=, worker=, count_attempt=, if_requested=}
 *             -> changed, state | false, requested
 *   st:list{state=, context_id=, older_than=, limit=, offset=}  -> {record, ...}
 *   st:remove(id) -> existed      st:ping() -> true      st:kind() -> "memory" | "postgres" | "redis"
 *   st:close()
 *   core.slot_storage() -> the storage of the worker this handler state serves (or nil)
 *
 * A record has the columns of storage.h; JSON columns stay JSON text (lua/binduq/storage.lua
 * decodes them). Run-time failures return nil, message, code. A handle holds one reference
 * to the storage, so the engine and every handler state can share one pool.
 */
#include "binding.h"

#include "../core/alloc.h"
#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../engine/client.h"
#include "../engine/config.h"
#include "../engine/task.h"
#include "../storage/storage.h"
#include "l_slot.h"

#include <limits.h>
#include <string.h>

struct lstorage {
    bq_storage *s; /* one reference; NULL once closed */
};

static bq_storage *check_storage(lua_State *L)
{
    struct lstorage *u = luaL_checkudata(L, 1, BQ_STORAGE_MT);
    if (u->s == NULL)
        luaL_error(L, "attempt to use a closed storage");
    return u->s;
}

void bq_lua_push_storage(lua_State *L, bq_storage *s)
{
    struct lstorage *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->s = NULL;
    luaL_setmetatable(L, BQ_STORAGE_MT);
    u->s = bq_storage_ref(s);
}

bq_storage *bq_lua_check_storage(lua_State *L, int idx)
{
    struct lstorage *u = luaL_checkudata(L, idx, BQ_STORAGE_MT);
    if (u->s == NULL)
        luaL_error(L, "attempt to use a closed storage");
    return u->s;
}

/* core.storage(opts) -- may raise on bad options; a failure to connect returns nil, msg. */
static int l_storage_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    struct bq_storage_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.type = bq_lua_opt_string(L, 1, "type");
    cfg.url = bq_lua_opt_string(L, 1, "url");
    cfg.schema = bq_lua_opt_string(L, 1, "schema");
    cfg.layout = bq_lua_opt_string(L, 1, "layout");
    cfg.url_name = bq_lua_opt_string(L, 1, "url_name");
    cfg.max_connections = (int)bq_lua_opt_integer(L, 1, "max_connections", 0);
    cfg.connect_timeout = bq_lua_opt_number(L, 1, "connect_timeout", 0);
    lua_Integer max_tasks = bq_lua_opt_integer(L, 1, "max_tasks", 0);
    if (max_tasks < 0 || max_tasks > 10000000)
        return luaL_error(L, "option 'max_tasks' must be from 1 to 10000000 (got %I)",
                          (LUAI_UACINT)max_tasks);
    cfg.max_tasks = (int)max_tasks;
    lua_Number ttl = bq_lua_opt_number(L, 1, "ttl", -1);
    if (ttl != -1 && !(ttl >= 0 && ttl <= 1e9))
        return luaL_error(L, "option 'ttl' must be from 0 to 1e9 seconds");
    cfg.ttl = ttl == -1 ? 0 : ttl == 0 ? -1 : ttl; /* the option's 0 keeps finished tasks */
    /* redis: the scheduler's settings, from its client when given, else the environment */
    bool redis = cfg.type != NULL && strcmp(cfg.type, "redis") == 0;
    bq_client *client = NULL;
    if (lua_getfield(L, 1, "client") != LUA_TNIL)
        client = bq_lua_check_client(L, -1);
    lua_pop(L, 1);
    struct lstorage *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->s = NULL;
    luaL_setmetatable(L, BQ_STORAGE_MT);
    bq_err err;
    bq_status st = BQ_OK;
    struct bq_config env;
    memset(&env, 0, sizeof env);
    struct bq_broker_config bc;
    if (redis) {
        const struct bq_config *sched = client != NULL ? &client->cfg : &env;
        if (client == NULL)
            st = bq_config_resolve(NULL, &env, &err);
        struct bq_storage_choice sc;
        memset(&sc, 0, sizeof sc);
        sc.cfg = cfg;
        sc.url_name = cfg.url_name != NULL ? cfg.url_name : "storage.url";
        if (st == BQ_OK) {
            bq_storage_choice_redis(&sc, sched, &bc);
            cfg = sc.cfg;
        }
    }
    if (st == BQ_OK)
        st = bq_storage_open(&cfg, &u->s, &err);
    bq_config_free(&env);
    if (st != BQ_OK)
        return bq_lua_fail(L, &err);
    return 1;
}

static int l_storage_close(lua_State *L)
{
    struct lstorage *u = luaL_checkudata(L, 1, BQ_STORAGE_MT);
    bq_storage_unref(u->s);
    u->s = NULL;
    return 0;
}

static const char *opt_str(lua_State *L, const char *key)
{
    return bq_lua_opt_string(L, 2, key);
}

static void set_s(lua_State *L, const char *key, const char *v)
{
    if (v != NULL) {
        lua_pushstring(L, v);
        lua_setfield(L, -2, key);
    }
}

static void set_n(lua_State *L, const char *key, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, key);
}

/* Pushes a record as a table. Memory errors may raise: callers clear r before that matters
 * only in the list case, where the array is anchored by the caller... see l_storage_list. */
static void push_rec(lua_State *L, const struct bq_task_rec *r)
{
    lua_createtable(L, 0, 15);
    set_s(L, "id", r->id);
    set_s(L, "context_id", r->context_id);
    set_s(L, "state", r->state);
    set_s(L, "queue", r->queue);
    set_s(L, "history", r->history);
    set_s(L, "artifacts", r->artifacts);
    set_s(L, "metadata", r->metadata);
    set_s(L, "checkpoint", r->checkpoint);
    set_s(L, "error", r->error);
    set_s(L, "requested", r->requested);
    set_s(L, "worker", r->worker);
    lua_pushinteger(L, r->attempts);
    lua_setfield(L, -2, "attempts");
    set_n(L, "created_at", r->created_at);
    set_n(L, "updated_at", r->updated_at);
    set_n(L, "state_at", r->state_at);
}

static int l_storage_create(lua_State *L)
{
    bq_storage *s = check_storage(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    struct bq_task_new t = {
        opt_str(L, "id"),       opt_str(L, "context_id"), opt_str(L, "queue"),
        opt_str(L, "state"),    opt_str(L, "history"),    opt_str(L, "metadata"),
        opt_str(L, "worker"),   0,                        opt_str(L, "requested"),
    };
    lua_getfield(L, 2, "attempts");
    lua_Integer attempts = lua_isnil(L, -1) ? 0 : luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    if (attempts < 0 || attempts > 1000000)
        return luaL_argerror(L, 2, "field 'attempts' must be between 0 and 1000000");
    t.attempts = (int)attempts;
    if (t.id == NULL)
        return luaL_argerror(L, 2, "field 'id' is required");
    struct bq_task_result res;
    bq_err err;
    if (s->ops->create(s, &t, &res, &err) != BQ_OK)
        return bq_lua_fail(L, &err);
    lua_pushboolean(L, res.changed);
    lua_pushstring(L, res.state);
    return 2;
}

static int l_storage_get(lua_State *L)
{
    bq_storage *s = check_storage(L);
    const char *id = luaL_checkstring(L, 2);
    struct bq_task_rec r;
    bool found = false;
    bq_err err;
    if (s->ops->get(s, id, &r, &found, &err) != BQ_OK)
        return bq_lua_fail(L, &err);
    if (!found) {
        lua_pushboolean(L, 0);
        return 1;
    }
    /* Copy into Lua before anything may raise; then free. lua_createtable and friends can
     * only raise on out-of-memory, where leaking one record is the lesser evil. */
    push_rec(L, &r);
    bq_task_rec_clear(&r);
    return 1;
}

/* Pushes what a change found: changed, state (false when unknown), requested, and with
 * `attempts` the attempts after it. */
static int push_result(lua_State *L, const struct bq_task_result *res, bool attempts)
{
    lua_pushboolean(L, res->changed);
    if (res->found)
        lua_pushstring(L, res->state);
    else
        lua_pushboolean(L, 0);
    lua_pushstring(L, res->requested);
    if (!attempts)
        return 3;
    lua_pushinteger(L, res->attempts);
    return 4;
}

static int l_storage_change(lua_State *L)
{
    bq_storage *s = check_storage(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    struct bq_task_change c = {
        .id = opt_str(L, "id"),
        .from = opt_str(L, "from"),
        .to = opt_str(L, "to"),
        .append_history = opt_str(L, "append_history"),
        .append_artifacts = opt_str(L, "append_artifacts"),
        .checkpoint = opt_str(L, "checkpoint"),
        .error = opt_str(L, "error"),
        .requested = opt_str(L, "requested"),
        .worker = opt_str(L, "worker"),
        .count_attempt = bq_lua_opt_boolean(L, 2, "count_attempt", 0),
        .if_requested = opt_str(L, "if_requested"),
    };
    if (c.id == NULL)
        return luaL_argerror(L, 2, "field 'id' is required");
    struct bq_task_result res;
    bq_err err;
    if (s->ops->change(s, &c, &res, &err) != BQ_OK)
        return bq_lua_fail(L, &err);
    return push_result(L, &res, false);
}

/* store:start(id, worker) -> changed, state | false, requested, attempts
 * The worker's hot path, without a table: submitted -> working, one more attempt, the worker
 * named, a pending request cleared. */
/* The history of a task queued by a producer that keeps no state here, when its messages
 * are plain ({role = <string>, content = <string>} and nothing else, at most 16), in the
 * bytes the producers write (bq_task_put_message); false for anything else, which
 * lua/binduq/lifecycle/run.lua records itself. Reads everything from Lua before it writes. */
#define START_MSGS_MAX 16
static bool plain_history(lua_State *L, int task, bq_buf *b)
{
    if (lua_getfield(L, task, "metadata") != LUA_TNIL || lua_getfield(L, task, "messages") != LUA_TTABLE)
        return false;
    int list = lua_gettop(L);
    struct { const char *role, *content; size_t rn, cn; } m[START_MSGS_MAX];
    lua_Integer n = 0;
    for (; lua_rawgeti(L, list, n + 1) != LUA_TNIL; n++) {
        int t = lua_gettop(L);
        if (n == START_MSGS_MAX || lua_type(L, t) != LUA_TTABLE ||
            lua_getfield(L, t, "role") != LUA_TSTRING || lua_getfield(L, t, "content") != LUA_TSTRING)
            return false;
        int keys = 0;
        lua_pushnil(L);
        while (lua_next(L, t) != 0) {
            keys++;
            lua_pop(L, 1);
        }
        if (keys != 2)
            return false;
        m[n].role = lua_tolstring(L, t + 1, &m[n].rn); /* anchored by the message table */
        m[n].content = lua_tolstring(L, t + 2, &m[n].cn);
        lua_settop(L, t - 1);
    }
    if (n == 0)
        return false;
    bq_buf_append(b, "[", 1);
    for (lua_Integer i = 0; i < n; i++) {
        if (i > 0)
            bq_buf_append(b, ",", 1);
        bq_task_put_message(b, m[i].role, m[i].rn, m[i].content, m[i].cn);
    }
    bq_buf_append(b, "]", 1);
    return !b->oom;
}

/* A per-task write of the lifecycle (store:start, store:finish) that a chunk makes for all
 * its tasks at once: its time is the storage's, not the handler's (bq_slot_ctl.batched_wait).
 * batched_t0 starts the clock; the memory storage's writes are in-process, a microsecond,
 * and not timed (six clock readings a task fewer). */
static double batched_t0(const bq_storage *s)
{
    return strcmp(s->ops->name, "memory") != 0 ? bq_now_mono() : 0;
}

static void count_batched(double t0)
{
    if (t0 > 0)
        bq_lua_slot_batched_wait(bq_now_mono() - t0);
}

/* store:start(id, worker [, task]) -> changed, state | false, requested, attempts
 *   | nil, msg, code
 * A run's first delivery: submitted -> working, counting the attempt. With `task` (the
 * decoded run), a task nobody recorded -- queued by a producer in another process, which keeps
 * its state elsewhere -- whose messages are plain is recorded here as working in the same
 * call, as if it had been submitted (attempts 1); otherwise such a task answers state false
 * and the caller records it. */
static int l_storage_start(lua_State *L)
{
    bq_storage *s = check_storage(L);
    struct bq_task_change c = {
        .id = luaL_checkstring(L, 2),
        .from = "submitted",
        .to = "working",
        .requested = "",
        .worker = luaL_optstring(L, 3, NULL),
        .count_attempt = true,
    };
    struct bq_task_result res;
    bq_err err;
    double t0 = batched_t0(s);
    bq_status st = s->ops->change(s, &c, &res, &err);
    count_batched(t0);
    if (st != BQ_OK)
        return bq_lua_fail(L, &err);
    if (res.found || !lua_istable(L, 4))
        return push_result(L, &res, true);
    lua_settop(L, 4);
    const char *context = lua_getfield(L, 4, "conversation_id") == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    const char *queue = lua_getfield(L, 4, "queue") == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    bq_buf b = BQ_BUF_INIT;
    if (!plain_history(L, 4, &b)) {
        bq_buf_free(&b);
        return push_result(L, &res, true);
    }
    struct bq_task_new t = {.id = c.id, .context_id = context, .queue = queue, .state = "working",
                            .history = b.p, .worker = c.worker, .attempts = 1};
    t0 = batched_t0(s);
    st = s->ops->create(s, &t, &res, &err);
    count_batched(t0);
    bq_buf_free(&b);
    if (st != BQ_OK)
        return bq_lua_fail(L, &err);
    if (!res.changed) /* recorded meanwhile by another operation: decide on that record */
        return push_result(L, &res, true);
    res.found = true;
    snprintf(res.state, sizeof res.state, "working");
    res.requested[0] = '\0';
    res.attempts = 1;
    return push_result(L, &res, true);
}

/* Pushes the results of a batch: { {changed, state | false, requested, attempts}, ... }; a
 * task whose change failed on its own (bq_task_result.status) has {nil, msg, code}. */
static void push_results(lua_State *L, const struct bq_task_result *res, lua_Integer n)
{
    lua_createtable(L, (int)n, 0);
    for (lua_Integer i = 0; i < n; i++) {
        lua_createtable(L, 4, 0);
        if (res[i].status != BQ_OK) {
            lua_pushstring(L, res[i].why);
            lua_rawseti(L, -2, 2);
            lua_pushstring(L, bq_status_name(res[i].status));
            lua_rawseti(L, -2, 3);
            lua_rawseti(L, -2, i + 1);
            continue;
        }
        lua_pushboolean(L, res[i].changed);
        lua_rawseti(L, -2, 1);
        if (res[i].found)
            lua_pushstring(L, res[i].state);
        else
            lua_pushboolean(L, 0);
        lua_rawseti(L, -2, 2);
        lua_pushstring(L, res[i].requested);
        lua_rawseti(L, -2, 3);
        lua_pushinteger(L, res[i].attempts);
        lua_rawseti(L, -2, 4);
        lua_rawseti(L, -2, i + 1);
    }
}

/* Reads the 1 to 64 tables of the list at idx (luaL_argcheck'd) into c, as store:change
 * takes them; each stays on the stack, anchoring its strings. Returns their number. */
static lua_Integer read_changes(lua_State *L, int idx, struct bq_task_change *c)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_Integer n = luaL_len(L, idx);
    luaL_argcheck(L, n >= 1 && n <= BQ_CHANGE_MANY_MAX, idx, "1 to 64 changes");
    luaL_checkstack(L, (int)n + 8, "change_many");
    for (lua_Integer i = 0; i < n; i++) {
        lua_rawgeti(L, idx, i + 1);
        if (!lua_istable(L, -1))
            luaL_error(L, "change_many: change %d is not a table", (int)i + 1);
        int t = lua_gettop(L);
        c[i] = (struct bq_task_change){
            .id = bq_lua_opt_string(L, t, "id"),
            .from = bq_lua_opt_string(L, t, "from"),
            .to = bq_lua_opt_string(L, t, "to"),
            .append_history = bq_lua_opt_string(L, t, "append_history"),
            .append_artifacts = bq_lua_opt_string(L, t, "append_artifacts"),
            .checkpoint = bq_lua_opt_string(L, t, "checkpoint"),
            .error = bq_lua_opt_string(L, t, "error"),
            .requested = bq_lua_opt_string(L, t, "requested"),
            .worker = bq_lua_opt_string(L, t, "worker"),
            .count_attempt = bq_lua_opt_boolean(L, t, "count_attempt", 0),
        };
        if (c[i].id == NULL)
            luaL_error(L, "change_many: change %d has no 'id'", (int)i + 1);
    }
    return n;
}

/* The same for the tasks of store:start_many. */
static lua_Integer read_starts(lua_State *L, int idx, struct bq_task_new *t)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_Integer n = luaL_len(L, idx);
    luaL_argcheck(L, n >= 1 && n <= BQ_CHANGE_MANY_MAX, idx, "1 to 64 tasks");
    luaL_checkstack(L, (int)n + 8, "start_many");
    for (lua_Integer i = 0; i < n; i++) {
        lua_rawgeti(L, idx, i + 1);
        if (!lua_istable(L, -1))
            luaL_error(L, "start_many: task %d is not a table", (int)i + 1);
        int k = lua_gettop(L);
        t[i] = (struct bq_task_new){
            .id = bq_lua_opt_string(L, k, "id"),
            .context_id = bq_lua_opt_string(L, k, "context_id"),
            .queue = bq_lua_opt_string(L, k, "queue"),
            .history = bq_lua_opt_string(L, k, "history"),
            .metadata = bq_lua_opt_string(L, k, "metadata"),
            .worker = bq_lua_opt_string(L, k, "worker"),
        };
        if (t[i].id == NULL)
            luaL_error(L, "start_many: task %d has no 'id'", (int)i + 1);
    }
    return n;
}

/* store:change_many({ change, ... }) -> { {changed, state | false, requested, attempts}, ... }
 *   | nil, msg, code
 * The changes of store:change (1 to 64, distinct ids), in one round trip where the storage can
 * batch them (PostgreSQL: one statement), else one by one. A change that failed on its own
 * (the server refused its data; the others were made) has {nil, msg, code} in its place
 * (bq_storage_change_many). */
static int l_storage_change_many(lua_State *L)
{
    bq_storage *s = check_storage(L);
    lua_settop(L, 2);
    struct bq_task_change c[BQ_CHANGE_MANY_MAX];
    struct bq_task_result res[BQ_CHANGE_MANY_MAX];
    lua_Integer n = read_changes(L, 2, c);
    bq_err err;
    if (bq_storage_change_many(s, c, (size_t)n, res, &err) != BQ_OK)
        return bq_lua_fail(L, &err);
    push_results(L, res, n);
    return 1;
}

/* store:start_many({ {id=, worker=, context_id=, queue=, history=, metadata=}, ... })
 *   -> { {changed, state | false, requested, attempts}, ... } | nil, msg, code
 * store:start for 1 to 64 tasks (distinct ids) in one round trip where the storage can; a
 * task nobody recorded is created working from the other fields (bq_storage_start_many).
 * One by one, a task that failed on its own has {nil, msg, code} in its place. */
static int l_storage_start_many(lua_State *L)
{
    bq_storage *s = check_storage(L);
    lua_settop(L, 2);
    struct bq_task_new t[BQ_CHANGE_MANY_MAX];
    struct bq_task_result res[BQ_CHANGE_MANY_MAX];
    lua_Integer n = read_starts(L, 2, t);
    bq_err err;
    if (bq_storage_start_many(s, t, (size_t)n, res, &err) != BQ_OK)
        return bq_lua_fail(L, &err);
    push_results(L, res, n);
    return 1;
}

/* store:change_start_many(changes, tasks)
 *   -> change_results, start_results | change_results, false, msg, code | nil, msg, code
 * store:change_many(changes) then store:start_many(tasks): in one round trip and one
 * transaction where the storage can and the ids are distinct across both (PostgreSQL: one
 * statement, one commit), else as the two calls (bq_storage_change_start_many). false: the
 * changes were made and the starts not; nil: neither. */
static int l_storage_change_start_many(lua_State *L)
{
    bq_storage *s = check_storage(L);
    lua_settop(L, 3);
    struct bq_task_change c[BQ_CHANGE_MANY_MAX];
    struct bq_task_new t[BQ_CHANGE_MANY_MAX];
    struct bq_task_result rc[BQ_CHANGE_MANY_MAX], rt[BQ_CHANGE_MANY_MAX];
    lua_Integer nc = read_changes(L, 2, c);
    lua_Integer nt = read_starts(L, 3, t);
    bq_err err;
    bool started;
    if (bq_storage_change_start_many(s, c, (size_t)nc, t, (size_t)nt, rc, rt, &started, &err) !=
        BQ_OK)
        return bq_lua_fail(L, &err);
    push_results(L, rc, nc);
    if (started) {
        push_results(L, rt, nt);
        return 2;
    }
    lua_pushboolean(L, 0);
    lua_pushstring(L, err.msg);
    lua_pushstring(L, bq_status_name(err.code));
    return 4;
}

/* store:finish(id, state, append_history, append_artifacts) -> changed, state | false, requested
 * working -> state, with the handler's messages and artifacts (JSON arrays or nil); the
 * pending request and the last error cleared. */
static int l_storage_finish(lua_State *L)
{
    bq_storage *s = check_storage(L);
    struct bq_task_change c = {
        .id = luaL_checkstring(L, 2),
        .from = "working",
        .to = luaL_checkstring(L, 3),
        .append_history = luaL_optstring(L, 4, NULL),
        .append_artifacts = luaL_optstring(L, 5, NULL),
        .requested = "",
        .error = "",
    };
    struct bq_task_result res;
    bq_err err;
    double t0 = batched_t0(s);
    bq_status st = s->ops->change(s, &c, &res, &err);
    count_batched(t0);
    if (st != BQ_OK)
        return bq_lua_fail(L, &err);
    return push_result(L, &res, false);
}

static int l_storage_list(lua_State *L)
{
    bq_storage *s = check_storage(L);
    struct bq_task_filter f = {NULL, NULL, 0, 0, 0};
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        f.state = opt_str(L, "state");
        f.context_id = opt_str(L, "context_id");
        f.older_than = bq_lua_opt_number(L, 2, "older_than", 0);
        f.limit = (int)bq_lua_opt_integer(L, 2, "limit", 100);
        lua_Integer off = bq_lua_opt_integer(L, 2, "offset", 0);
        f.offset = off > 0 && off < INT_MAX ? (int)off : 0;
    }
    struct bq_task_rec *v = NULL;
    size_t n = 0;
    bq_err err;
    if (s->ops->list(s, &f, &v, &n, &err) != BQ_OK)
        return bq_lua_fail(L, &err);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        push_rec(L, &v[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    bq_task_recs_free(v, n);
    return 1;
}

static int l_storage_remove(lua_State *L)
{
    bq_storage *s = check_storage(L);
    bool found = false;
    bq_err err;
    if (s->ops->remove(s, luaL_checkstring(L, 2), &found, &err) != BQ_OK)
        return bq_lua_fail(L, &err);
    lua_pushboolean(L, found);
    return 1;
}

static int l_storage_ping(lua_State *L)
{
    bq_storage *s = check_storage(L);
    bq_err err;
    if (s->ops->ping(s, &err) != BQ_OK)
        return bq_lua_fail(L, &err);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_storage_kind(lua_State *L)
{
    lua_pushstring(L, check_storage(L)->ops->name);
    return 1;
}

static int l_storage_tostring(lua_State *L)
{
    struct lstorage *u = luaL_checkudata(L, 1, BQ_STORAGE_MT);
    if (u->s == NULL)
        lua_pushstring(L, "binduq.Storage (closed)");
    else
        lua_pushfstring(L, "binduq.Storage: %s", u->s->ops->name);
    return 1;
}

/* core.storage_reset() -- forgets every task of the memory storage (tests). */
static int l_storage_reset(lua_State *L)
{
    (void)L;
    bq_storage_mem_reset();
    return 0;
}

static const luaL_Reg storage_methods[] = {
    {"create", l_storage_create}, {"get", l_storage_get},       {"change", l_storage_change},
    {"start", l_storage_start},   {"finish", l_storage_finish},
    {"change_many", l_storage_change_many}, {"start_many", l_storage_start_many},
    {"change_start_many", l_storage_change_start_many},
    {"list", l_storage_list},     {"remove", l_storage_remove}, {"ping", l_storage_ping},
    {"kind", l_storage_kind},     {"close", l_storage_close},   {NULL, NULL},
};

static const luaL_Reg storage_meta[] = {
    {"__gc", l_storage_close},
    {"__close", l_storage_close},
    {"__tostring", l_storage_tostring},
    {NULL, NULL},
};

/* core.storage_resolve{type=, url=, schema=, layout=} -> {type=, url=, url_name=, schema=,
 * layout=}: where task state lives, by the rule the C producer follows too
 * (bq_storage_resolve); raises naming what was wrong. */
static int l_storage_resolve(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    struct bq_storage_request in = {.url_option = "storage.url",
                                    .schema_option = "storage.schema"};
    const char **fields[] = {&in.type, &in.url, &in.schema, &in.layout};
    static const char *const names[] = {"type", "url", "schema", "layout"};
    for (int i = 0; i < 4; i++) {
        lua_getfield(L, 1, names[i]);
        *fields[i] = lua_isstring(L, -1) ? lua_tostring(L, -1) : NULL; /* anchored in the table */
        lua_pop(L, 1);
    }
    struct bq_storage_choice out;
    bq_err err;
    bq_status st = bq_storage_resolve(&in, &out, &err);
    if (st != BQ_OK) {
        bq_storage_choice_free(&out);
        lua_pushstring(L, err.msg);
        return lua_error(L);
    }
    lua_createtable(L, 0, 5);
    lua_pushstring(L, out.cfg.type);
    lua_setfield(L, -2, "type");
    const char *vals[] = {out.url, out.url_name, out.schema, out.layout};
    static const char *const keys[] = {"url", "url_name", "schema", "layout"};
    for (int i = 0; i < 4; i++) {
        if (vals[i] != NULL) {
            lua_pushstring(L, vals[i]);
            lua_setfield(L, -2, keys[i]);
        }
    }
    bq_storage_choice_free(&out);
    return 1;
}

/* core.did_schema(did) -> the schema of an agent's tables (bq_did_schema); raises if too long. */
static int l_did_schema(lua_State *L)
{
    char *name = NULL;
    bq_err err;
    if (bq_did_schema(luaL_checkstring(L, 1), "storage.schema", &name, &err) != BQ_OK) {
        lua_pushstring(L, err.msg);
        return lua_error(L);
    }
    lua_pushstring(L, name);
    bq_free(name);
    return 1;
}

void bq_lua_open_storage(lua_State *L)
{
    if (luaL_newmetatable(L, BQ_STORAGE_MT)) {
        luaL_setfuncs(L, storage_meta, 0);
        luaL_newlib(L, storage_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_storage_new);
    lua_setfield(L, -2, "storage");
    lua_pushcfunction(L, l_storage_reset);
    lua_setfield(L, -2, "storage_reset");
    lua_pushcfunction(L, l_storage_resolve);
    lua_setfield(L, -2, "storage_resolve");
    lua_pushcfunction(L, l_did_schema);
    lua_setfield(L, -2, "did_schema");
}
