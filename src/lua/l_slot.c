/*
 * l_slot.c -- the handler states a binduq.Engine runs (l_engine.c), one per slot thread, and
 * the slot API (core.slot_*) that the Lua side uses inside them.
 *
 * A Lua function cannot move between Lua states, and a Lua state must not be used by two
 * threads. So each slot thread builds its own state and runs the user's script in it, as a
 * coroutine, with the same `arg`, package.path and package.cpath as the main state. When the
 * script reaches worker:start() (or :run() / :drain()) of the worker this engine serves, the
 * Lua side registers its per-message function with core.slot_ready() and yields; the rest of
 * the script never runs in the handler state. From then on the slot calls that function once
 * per message. This is the "spawn" model of Python's multiprocessing: code above
 * worker:start() runs once per handler state too, which the README says plainly.
 *
 * The engine drives a handler state through bq_lua_slot_ops (engine/worker.h): init builds
 * it, prepare/handle/flush call the functions lifecycle.lua (and its parts,
 * lua/binduq/lifecycle/) registered by core.slot_ready and read their outcomes
 * (outcome_from), fini closes it. Inside a handler:
 *   core.slot_ready(key, process [, prepare [, flush]])  core.slot_info()  core.slot_loading()
 *   core.limit(timeout)  core.unlimit()  core.slot_sleep(s)  core.slot_yield()
 *   core.rate_limit(key | {i, ...}, {key, ...}, limit, period)
 *   core.slot_task(id)  core.slot_ahead({id, ...})  core.slot_control()
 *   core.slot_publish(op, id)  core.slot_storage()
 *   core.OUTCOME  the outcomes' names (engine/worker_slots.c); any other name raises
 */
#include "binding.h"
#include "l_slot.h"

#include <lualib.h>

#include "../core/alloc.h"
#include "../core/arena.h"
#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/log.h"
#include "../net/http.h"

#include <stdatomic.h>
#include <stdio.h>
#include <math.h>
#include <string.h>

/* What a task waits for while its coroutine is suspended (tasks_per_state > 1). */
enum task_wait {
    WAIT_NONE = 0, /* nothing: it yielded to let others run, or it runs */
    WAIT_SLEEP,    /* wake_at */
    WAIT_HTTP,     /* http reaching `until` */
};

/* One task of a handler state. With tasks_per_state = 1 the state has one, `one`, which
 * runs on the state's own stack; with more, each runs in a coroutine of its own (co). */
struct slot_task {
    lua_State *co;       /* its coroutine; NULL: the place is free (or the one-task mode) */
    int ref;             /* the registry's anchor of co */
    int place;           /* its number among the slot's tasks (bq_slot_set_task_at) */
    struct bq_msg msg;   /* the message (its bytes are the engine's) */
    bool has_msg;
    double deadline;     /* monotonic time the handler must end by; 0: none */
    double limit;        /* its timeout in seconds, for the message */
    enum task_wait wait;
    double wake_at;
    struct bq_http *http;
    enum bq_http_until until;
};

struct slot_state {
    lua_State *L;
    bq_arena *arena;          /* L's allocator */
    int process_ref;
    int index;
    struct bq_lua_slot_cfg *cfg;
    struct bq_slot_ctl *ctl;  /* the engine's view of this slot (interrupt flag) */
    struct slot_task one;     /* the task, with tasks_per_state = 1 */
    struct slot_task *tasks;  /* tasks_per_state > 1: one per place */
    int per;                  /* tasks_per_state */
    struct slot_task *cur;    /* the task running now (NULL between tasks) */
    /* A chunk (bq_slot_ops.prepare): its messages while prepare runs, then what prepare
     * returned for them (a registry reference to the list) and each message's address, so
     * handle finds its entry. */
    int prepare_ref, flush_ref;
    const struct bq_msg *chunk;
    int chunk_n;
    int prep_ref, prep_n, prep_at;
    const char *prep_ptr[BQ_CHUNK_MAX];
    size_t prep_len[BQ_CHUNK_MAX];
};

static bool task_must_stop(const struct slot_state *s, const struct slot_task *t, double now);

/* The handler state of the current thread: each slot thread runs exactly one. */
static _Thread_local struct slot_state *tl_slot;

void bq_lua_slot_batched_wait(double seconds)
{
    if (tl_slot != NULL && tl_slot->ctl != NULL)
        tl_slot->ctl->batched_wait += seconds;
}

/* ---- The configuration (main state) -------------------------------------------------------- */

static char *dup_lua(lua_State *L, int idx)
{
    size_t len;
    const char *p = lua_tolstring(L, idx, &len);
    return p ? bq_strndup(p, len) : NULL;
}

void bq_lua_slot_cfg_free(struct bq_lua_slot_cfg *c)
{
    if (c == NULL)
        return;
    bq_free(c->script);
    bq_free(c->module);
    bq_free(c->worker_key);
    bq_free(c->policy);
    bq_free(c->path);
    bq_free(c->cpath);
    for (int i = 0; i < c->nargs; i++)
        bq_free(c->arg_value[i]);
    bq_free(c->arg_value);
    bq_free(c->arg_index);
    bq_storage_unref(c->storage);
    bq_free(c);
}

static char *opt_dup(lua_State *L, int idx, const char *key, bool required)
{
    const char *s = bq_lua_opt_string(L, idx, key);
    if (s == NULL && required)
        luaL_error(L, "option '%s' is required", key);
    return s ? bq_strdup(s) : NULL;
}

/* Anchored before anything else is read: a raise below leaks nothing. */
void bq_lua_slot_cfg_read(lua_State *L, int idx, struct bq_lua_slot_cfg **anchor)
{
    struct bq_lua_slot_cfg *c = bq_calloc(1, sizeof *c);
    if (c == NULL)
        luaL_error(L, "out of memory");
    *anchor = c;
    c->module = opt_dup(L, idx, "module", false);
    c->script = opt_dup(L, idx, "script", c->module == NULL);
    c->path = opt_dup(L, idx, "path", false);
    c->cpath = opt_dup(L, idx, "cpath", false);
    c->worker_key = opt_dup(L, idx, "worker_key", true);
    c->policy = opt_dup(L, idx, "policy", false);
    c->want_results = bq_lua_opt_boolean(L, idx, "want_results", 0);
    lua_Integer per = bq_lua_opt_integer(L, idx, "tasks_per_state", 1);
    if (per < 1 || per > BQ_PER_SLOT_MAX)
        luaL_error(L, "option 'tasks_per_state' must be from 1 to %d", BQ_PER_SLOT_MAX);
    c->per_state = (int)per;
    c->max_message_size = bq_lua_opt_integer(L, idx, "max_message_size",
                                             BQ_DEFAULT_MAX_MESSAGE_SIZE);
    if (lua_getfield(L, idx, "storage") != LUA_TNIL)
        c->storage = bq_storage_ref(bq_lua_check_storage(L, -1));
    lua_pop(L, 1);
    if ((c->script == NULL && c->module == NULL) || c->worker_key == NULL)
        luaL_error(L, "out of memory");
    if (lua_getfield(L, idx, "args") == LUA_TTABLE) {
        int n = 0;
        lua_pushnil(L);
        while (lua_next(L, -2) != 0) {
            n++;
            lua_pop(L, 1);
        }
        c->arg_index = bq_calloc((size_t)n + 1, sizeof *c->arg_index);
        c->arg_value = bq_calloc((size_t)n + 1, sizeof *c->arg_value);
        if (c->arg_index == NULL || c->arg_value == NULL)
            luaL_error(L, "out of memory");
        lua_pushnil(L);
        while (lua_next(L, -2) != 0) {
            if (lua_isinteger(L, -2) && lua_type(L, -1) == LUA_TSTRING && c->nargs < n) {
                c->arg_index[c->nargs] = lua_tointeger(L, -2);
                c->arg_value[c->nargs] = dup_lua(L, -1);
                if (c->arg_value[c->nargs] == NULL)
                    luaL_error(L, "out of memory");
                c->nargs++;
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

/* ---- Handler states (slot threads) --------------------------------------------------------- */

static int msgh(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL)
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Protected part of building a handler state: libraries, paths, preload, marker, arg. */
static int setup_state(lua_State *L)
{
    struct slot_state *s = lua_touserdata(L, 1);
    struct bq_lua_slot_cfg *c = s->cfg;
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    if (c->path != NULL) {
        lua_pushstring(L, c->path);
        lua_setfield(L, -2, "path");
    }
    if (c->cpath != NULL) {
        lua_pushstring(L, c->cpath);
        lua_setfield(L, -2, "cpath");
    }
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_binduq_core);
    lua_setfield(L, -2, "binduq.core");
    lua_pop(L, 2);
    lua_pushlightuserdata(L, s);
    lua_setfield(L, LUA_REGISTRYINDEX, BQ_SLOT_KEY);
    lua_createtable(L, c->nargs, 2);
    for (int i = 0; i < c->nargs; i++) {
        lua_pushstring(L, c->arg_value[i]);
        lua_rawseti(L, -2, c->arg_index[i]);
    }
    lua_setglobal(L, "arg");
    return 0;
}

static bq_status state_error(struct slot_state *s, const char *what, const char *detail,
                             bq_err *err)
{
    char idx[16];
    snprintf(idx, sizeof idx, "%d", s->index + 1);
    bq_log(BQ_LOG_ERROR, "handler_state_failed", "slot", idx,
           s->cfg->module != NULL ? "module" : "script",
           s->cfg->module != NULL ? s->cfg->module : s->cfg->script,
           "error", detail, NULL);
    /* The full text (with traceback) is in the log; the error keeps its first line. */
    size_t first = strcspn(detail, "\n");
    return bq_err_set(err, BQ_EINVAL, "handler state %d: %s%.*s", s->index + 1, what,
                      (int)first, detail);
}

static bq_status slot_init(void *ud, int index, struct bq_slot_ctl *ctl, void **state,
                           bq_err *err)
{
    struct bq_lua_slot_cfg *c = ud;
    struct slot_state *s = bq_calloc(1, sizeof *s);
    bq_arena *arena = s ? bq_arena_new(0) : NULL;
    lua_State *L = arena ? lua_newstate(bq_arena_lua_alloc, arena) : NULL;
    if (L == NULL) {
        bq_arena_free(arena);
        bq_free(s);
        return bq_err_set(err, BQ_ENOMEM, "handler state %d: out of memory", index + 1);
    }
    s->L = L;
    s->arena = arena;
    s->cfg = c;
    s->ctl = ctl;
    s->index = index;
    s->process_ref = s->prepare_ref = s->flush_ref = s->prep_ref = LUA_NOREF;
    s->per = c->per_state > 1 ? c->per_state : 1;
    if (s->per > 1 && (s->tasks = bq_calloc((size_t)s->per, sizeof *s->tasks)) == NULL) {
        lua_close(L);
        bq_arena_free(arena);
        bq_free(s);
        return bq_err_set(err, BQ_ENOMEM, "handler state %d: out of memory", index + 1);
    }
    tl_slot = s;
    bq_status st = BQ_OK;
    lua_pushcfunction(L, setup_state);
    lua_pushlightuserdata(L, s);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        st = state_error(s, "", lua_tostring(L, -1), err);
    } else if (c->module != NULL) {
        /* Handlers from a module: the state loads it (binduq.worker._serve_module), never
         * the script. */
        lua_pushcfunction(L, msgh);
        int h = lua_gettop(L);
        lua_getglobal(L, "require");
        lua_pushliteral(L, "binduq.worker");
        if (lua_pcall(L, 1, 1, h) == LUA_OK) {
            lua_getfield(L, -1, "_serve_module");
            lua_pushstring(L, c->module);
            lua_pushstring(L, c->worker_key);
            if (lua_pcall(L, 2, 1, h) != LUA_OK)
                st = state_error(s, "", lua_tostring(L, -1), err);
            else if (!lua_toboolean(L, -1) || s->process_ref == LUA_NOREF)
                st = state_error(s, "", "the handlers module did not start the worker", err);
        } else {
            st = state_error(s, "", lua_tostring(L, -1), err);
        }
    } else {
        /* The script runs in a coroutine that stays suspended at worker:start() for the
         * state's whole life; the registry anchors it. */
        lua_State *co = lua_newthread(L);
        luaL_ref(L, LUA_REGISTRYINDEX);
        int lst = luaL_loadfilex(co, c->script, NULL);
        if (lst != LUA_OK) {
            st = state_error(s, "", lua_tostring(co, -1), err);
        } else {
            int nscript = 0;
            for (int i = 0; i < c->nargs; i++) {
                if (c->arg_index[i] > 0) {
                    lua_pushstring(co, c->arg_value[i]);
                    nscript++;
                }
            }
            int nres = 0;
            lst = lua_resume(co, L, nscript, &nres);
            if (lst == LUA_YIELD && s->process_ref != LUA_NOREF) {
                lua_pop(co, nres);
            } else if (lst == LUA_OK || lst == LUA_YIELD) {
                char why[256];
                snprintf(why, sizeof why, "the script %s without starting worker '%.60s' "
                         "(handler states stop at worker:start(), :run() or :drain())",
                         lst == LUA_OK ? "ended" : "yielded", c->worker_key);
                st = state_error(s, "", why, err);
            } else {
                const char *msg = lua_tostring(co, -1);
                luaL_traceback(L, co, msg ? msg : "(error object is not a string)", 0);
                st = state_error(s, "", lua_tostring(L, -1), err);
            }
        }
    }
    if (st != BQ_OK) {
        lua_close(L);
        bq_arena_free(arena);
        bq_free(s->tasks);
        bq_free(s);
        tl_slot = NULL;
        return st;
    }
    lua_settop(L, 0);
    *state = s;
    return BQ_OK;
}

static void copy_field(char *dst, size_t size, lua_State *L, int idx)
{
    size_t len;
    const char *p = lua_tolstring(L, idx, &len);
    if (p == NULL || len >= size) {
        dst[0] = '\0';
        return;
    }
    memcpy(dst, p, len + 1);
}

/* Reads t[key] as an owned string copy (NULL when absent). */
static char *field_dup(lua_State *L, int t, const char *key)
{
    lua_getfield(L, t, key);
    char *v = lua_isstring(L, -1) ? dup_lua(L, -1) : NULL;
    lua_pop(L, 1);
    return v;
}

/* Fills out from the outcome at L[b..b+3]: status, task_id, type, info (lifecycle.lua's
 * process and flush results). The status is one of core.OUTCOME's names; anything else is a
 * defect of the Lua side: the message is dead-lettered with that as its reason (kept, never
 * acknowledged as if it ran), and the error is logged. */
static void outcome_from(lua_State *L, int b, const struct bq_msg *msg, struct bq_outcome *out)
{
    const char *status = lua_tostring(L, b);
    copy_field(out->task_id, sizeof out->task_id, L, b + 1);
    copy_field(out->type, sizeof out->type, L, b + 2);
    if (!bq_outcome_kind_of(status, &out->kind)) {
        char why[160];
        snprintf(why, sizeof why, "unknown outcome '%.60s' from the Lua side (a binduq defect)",
                 status != NULL ? status : luaL_typename(L, b));
        bq_log(BQ_LOG_ERROR, "outcome_unknown", "task_id", out->task_id, "error", why, NULL);
        out->kind = BQ_OUTCOME_DEAD;
        out->reason = bq_strdup(why);
        out->attempt = 1;
        if (lua_istable(L, b + 3)) {
            lua_getfield(L, b + 3, "attempt");
            lua_Integer attempt = lua_tointeger(L, -1);
            out->attempt = attempt > 0 && attempt < 1000000 ? (int)attempt : 1;
            lua_pop(L, 1);
        }
        return;
    }
    if (lua_istable(L, b + 3)) {
        /* A completion (the common case) has no reason, error, header, delay or body. */
        if (out->kind != BQ_OUTCOME_COMPLETED) {
            out->reason = field_dup(L, b + 3, "reason");
            out->json = field_dup(L, b + 3, "error");
            out->header = field_dup(L, b + 3, "header");
            lua_getfield(L, b + 3, "delay");
            out->delay = lua_tonumber(L, -1);
            lua_getfield(L, b + 3, "body");
            lua_Integer body = lua_tointeger(L, -1);
            out->body = body > 0 && (size_t)body <= msg->len ? (size_t)body : 0;
            lua_getfield(L, b + 3, "body_end");
            lua_Integer body_end = lua_tointeger(L, -1);
            out->body_end = body_end > 0 && (size_t)body_end < msg->len ? (size_t)body_end : 0;
            lua_pop(L, 3);
        }
        lua_getfield(L, b + 3, "attempt");
        lua_Integer attempt = lua_tointeger(L, -1);
        out->attempt = attempt > 0 && attempt < 1000000 ? (int)attempt : 1;
        lua_getfield(L, b + 3, "state");
        copy_field(out->state, sizeof out->state, L, -1);
        lua_getfield(L, b + 3, "trace_id");
        copy_field(out->trace_id, sizeof out->trace_id, L, -1);
        lua_getfield(L, b + 3, "pickup");
        out->pickup = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : NAN;
        lua_pop(L, 4);
        if (out->kind == BQ_OUTCOME_COMPLETED) { /* a result travels as info.result */
            lua_getfield(L, b + 3, "result");
            out->json = dup_lua(L, -1);
            lua_pop(L, 1);
        }
    } else if (out->kind == BQ_OUTCOME_COMPLETED) {
        out->json = dup_lua(L, b + 3);
    } else if (out->kind == BQ_OUTCOME_DEAD) {
        out->reason = bq_strdup("the handler state returned no outcome");
    }
}

/* Forgets what the last prepare returned. */
static void drop_prepared(struct slot_state *s)
{
    if (s->prep_ref != LUA_NOREF)
        luaL_unref(s->L, LUA_REGISTRYINDEX, s->prep_ref);
    s->prep_ref = LUA_NOREF;
    s->prep_n = s->prep_at = 0;
}

/* prepare({ {raw=, q=, sealed=}, ... }) -> { entry | false, ... }   (lifecycle.lua)
 * Each entry is handed to process with its message; entry.settled says the message must be
 * handled even at a shutdown (its task is started in the storage). An error is logged and the
 * chunk handled as if there had been no prepare. */
static void slot_prepare(void *state, const struct bq_msg *msgs, int n, bool *settled)
{
    struct slot_state *s = state;
    drop_prepared(s);
    if (s->prepare_ref == LUA_NOREF)
        return;
    lua_State *L = s->L;
    lua_settop(L, 0);
    s->chunk = msgs;
    s->chunk_n = n;
    lua_pushcfunction(L, msgh);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->prepare_ref);
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_createtable(L, 0, 3);
        lua_pushlstring(L, msgs[i].data, msgs[i].len);
        lua_setfield(L, -2, "raw");
        lua_pushinteger(L, msgs[i].q + 1);
        lua_setfield(L, -2, "q");
        lua_pushboolean(L, msgs[i].sealed);
        lua_setfield(L, -2, "sealed");
        lua_rawseti(L, -2, i + 1);
    }
    if (lua_pcall(L, 1, 1, 1) != LUA_OK) {
        bq_log(BQ_LOG_ERROR, "prepare_failed", "worker", bq_worker_id(s->cfg->w), "error",
               lua_tostring(L, -1), NULL);
    } else if (lua_istable(L, -1)) {
        for (int i = 0; i < n; i++) {
            lua_rawgeti(L, -1, i + 1);
            if (lua_istable(L, -1)) {
                lua_getfield(L, -1, "settled");
                settled[i] = lua_toboolean(L, -1);
                lua_pop(L, 1);
            }
            lua_pop(L, 1);
            s->prep_ptr[i] = msgs[i].data;
            s->prep_len[i] = msgs[i].len;
        }
        s->prep_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        s->prep_n = n;
    }
    lua_settop(L, 0);
    s->chunk = NULL;
    s->chunk_n = 0;
}

/* flush() -> { {status, task_id, type, info}, ... }   (lifecycle.lua)
 * The outcomes of the messages whose process returned "pending", in the order they did. A
 * failure leaves them pending: the engine hands them back, to run again. */
static void slot_flush(void *state, const struct bq_msg *msgs, struct bq_outcome *outs, int n)
{
    struct slot_state *s = state;
    lua_State *L = s->L;
    lua_settop(L, 0);
    if (s->flush_ref == LUA_NOREF) {
        for (int i = 0; i < n; i++)
            outs[i].kind = BQ_OUTCOME_PENDING;
        return;
    }
    lua_pushcfunction(L, msgh);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->flush_ref);
    if (lua_pcall(L, 0, 1, 1) != LUA_OK || !lua_istable(L, -1)) {
        bq_log(BQ_LOG_ERROR, "flush_failed", "worker", bq_worker_id(s->cfg->w), "error",
               lua_isstring(L, -1) ? lua_tostring(L, -1) : "flush returned no outcomes", NULL);
        for (int i = 0; i < n; i++)
            outs[i].kind = BQ_OUTCOME_PENDING;
        lua_settop(L, 0);
        return;
    }
    int list = lua_gettop(L);
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, list, i + 1);
        if (!lua_istable(L, -1)) {
            outs[i].kind = BQ_OUTCOME_PENDING;
            lua_pop(L, 1);
            continue;
        }
        int e = lua_gettop(L);
        for (int k = 1; k <= 4; k++)
            lua_rawgeti(L, e, k);
        outcome_from(L, e + 1, &msgs[i], &outs[i]);
        lua_settop(L, list);
    }
    lua_settop(L, 0);
}

/* Pushes what prepare returned for msg, or nil. */
static void push_prepared(struct slot_state *s, const struct bq_msg *msg)
{
    lua_State *L = s->L;
    for (int i = s->prep_at; i < s->prep_n; i++) {
        if (s->prep_ptr[i] == msg->data && s->prep_len[i] == msg->len) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, s->prep_ref);
            lua_rawgeti(L, -1, i + 1);
            lua_remove(L, -2);
            s->prep_at = i + 1;
            if (s->prep_at == s->prep_n)
                drop_prepared(s);
            return;
        }
    }
    lua_pushnil(L);
}

static void slot_handle(void *state, const struct bq_msg *msg, struct bq_outcome *out)
{
    struct slot_state *s = state;
    lua_State *L = s->L;
    lua_settop(L, 0);
    s->one.msg = *msg;
    s->one.has_msg = true;
    s->cur = &s->one;
    lua_pushcfunction(L, msgh);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->process_ref);
    lua_pushlstring(L, msg->data, msg->len);
    lua_pushinteger(L, msg->q + 1);
    lua_pushboolean(L, msg->sealed);
    push_prepared(s, msg);
    /* process(raw, queue_index, sealed, prepared) -> status, task_id, type, info
     * (lifecycle.lua). sealed: binduq wrote the message's "#bq" header (broker.h).
     * prepared: what prepare returned for this message (or nil).
     * info: for "completed" the result's JSON (or nil); otherwise a table
     * {reason=, error=, header=, delay=, body=, attempt=}. */
    if (lua_pcall(L, 4, 4, 1) != LUA_OK) {
        /* A failure of binduq's own Lua (or out of memory): set the message aside. */
        out->kind = BQ_OUTCOME_DEAD;
        bq_buf b = BQ_BUF_INIT;
        const char *m = lua_tostring(L, -1);
        out->reason = bq_strdup(m ? m : "internal error in the handler state");
        bq_buf_puts(&b, "{\"code\":\"EINTERNAL\",\"message\":");
        if (out->reason != NULL && bq_utf8_valid(out->reason, strlen(out->reason), NULL))
            bq_buf_json_str(&b, out->reason, strlen(out->reason));
        else
            bq_buf_puts(&b, "\"internal error\"");
        bq_buf_puts(&b, ",\"retryable\":false}");
        out->json = bq_buf_detach(&b, NULL);
        lua_settop(L, 0);
        lua_gc(L, LUA_GCCOLLECT);
        s->cur = NULL;
        s->one.has_msg = false;
        return;
    }
    outcome_from(L, 2, msg, out);
    lua_settop(L, 0);
    s->cur = NULL;
    s->one.has_msg = false;
}

/* ---- Many tasks in one state (tasks_per_state > 1) ------------------------------------------
 * Each task runs lifecycle.lua's process in a coroutine of its own. A coroutine yields where
 * its handler waits — ctx:sleep (core.slot_sleep), ctx:http (l_http.c) — after noting what it
 * waits for in its slot_task; slot_wait resumes it when that came, or when it must stop (a
 * cancel, a pause, its timeout, a shutdown: the wait then raises, as in the one-task mode).
 * The loop sleeps in the thread's HTTP loop (epoll) while transfers are open (woken by the
 * network, by bq_slot_wake through the slot's waker, or by the earliest wake-up time), else on
 * the slot's condition variable (bq_slot_park). Module-level state of the Lua side that a
 * handler's wait could let another task change is restored after the handler (run.lua). */

/* Runs task t (nargs arguments on its stack) until it yields or ends; true when it ended,
 * with out filled and its place freed. */
static bool resume_task(struct slot_state *s, struct slot_task *t, int nargs,
                        struct bq_outcome *out)
{
    lua_State *co = t->co;
    int nres = 0;
    t->wait = WAIT_NONE;
    t->http = NULL;
    s->cur = t;
    tl_slot = s;
    int st = lua_resume(co, s->L, nargs, &nres);
    s->cur = NULL;
    if (st == LUA_YIELD) {
        lua_pop(co, nres);
        return false;
    }
    if (st == LUA_OK && nres >= 4) {
        outcome_from(co, lua_gettop(co) - nres + 1, &t->msg, out);
    } else {
        /* A failure of binduq's own Lua (or out of memory): set the message aside. */
        const char *m = st == LUA_OK ? "process returned no outcome" : lua_tostring(co, -1);
        luaL_traceback(s->L, co, m ? m : "internal error in the handler state", 0);
        out->kind = BQ_OUTCOME_DEAD;
        out->reason = bq_strdup(lua_tostring(s->L, -1));
        lua_pop(s->L, 1);
        out->json = bq_strdup("{\"code\":\"EINTERNAL\",\"message\":\"internal error in the "
                              "handler state\",\"retryable\":false}");
    }
    luaL_unref(s->L, LUA_REGISTRYINDEX, t->ref);
    t->co = NULL;
    t->has_msg = false;
    t->deadline = 0;
    return true;
}

static bool slot_start(void *state, int p, const struct bq_msg *msg, struct bq_outcome *out)
{
    struct slot_state *s = state;
    struct slot_task *t = &s->tasks[p];
    lua_State *L = s->L;
    lua_settop(L, 0);
    t->co = lua_newthread(L);
    t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    t->place = p;
    t->msg = *msg;
    t->has_msg = true;
    t->deadline = 0;
    lua_State *co = t->co;
    lua_rawgeti(co, LUA_REGISTRYINDEX, s->process_ref);
    lua_pushlstring(co, msg->data, msg->len);
    lua_pushinteger(co, msg->q + 1);
    lua_pushboolean(co, msg->sealed);
    lua_pushnil(co);
    return resume_task(s, t, 4, out);
}

/* Resumes the tasks whose wait is over; returns how many ended (their places in ended[],
 * outcomes in outs[place]) and sets *next to the earliest time one waits for. */
static int resume_ready(struct slot_state *s, int *ended, struct bq_outcome *outs, double *next)
{
    int n = 0;
    double now = bq_now_mono();
    for (int p = 0; p < s->per; p++) {
        struct slot_task *t = &s->tasks[p];
        if (t->co == NULL)
            continue;
        bool ready = t->wait == WAIT_NONE || task_must_stop(s, t, now) ||
                     (t->wait == WAIT_SLEEP && now >= t->wake_at) ||
                     (t->wait == WAIT_HTTP && bq_http_holds(t->http, t->until));
        if (ready) {
            memset(&outs[p], 0, sizeof outs[p]);
            outs[p].attempt = 1;
            outs[p].pickup = NAN;
            if (resume_task(s, t, 0, &outs[p]))
                ended[n++] = p;
            now = bq_now_mono();
        }
        if (t->co == NULL)
            continue;
        if (t->wait == WAIT_SLEEP && t->wake_at < *next)
            *next = t->wake_at;
        if (t->deadline > 0 && t->deadline < *next)
            *next = t->deadline;
        if (t->wait == WAIT_NONE)
            *next = now; /* it yielded to let others run: again at once */
    }
    return n;
}

static bool any_http(const struct slot_state *s)
{
    for (int p = 0; p < s->per; p++)
        if (s->tasks[p].co != NULL && s->tasks[p].wait == WAIT_HTTP)
            return true;
    return false;
}

static int slot_wait(void *state, double timeout, unsigned seen, int *ended,
                     struct bq_outcome *outs)
{
    struct slot_state *s = state;
    struct bq_http_loop *loop = bq_lua_http_thread_loop();
    bq_err err;
    if (loop != NULL && bq_http_loop_step(loop, &err) != BQ_OK)
        bq_log(BQ_LOG_ERROR, "http_loop_failed", "worker", bq_worker_id(s->cfg->w), "error",
               err.msg, NULL);
    double now = bq_now_mono(), next = now + timeout;
    int n = resume_ready(s, ended, outs, &next);
    if (n > 0)
        return n;
    double left = next - bq_now_mono();
    if (left > 0 && loop != NULL && any_http(s)) {
        bq_slot_set_waker(s->ctl, bq_http_loop_wake, loop);
        if (bq_slot_wakeups(s->ctl) == seen)
            bq_http_loop_poll(loop, left, &err);
        bq_slot_set_waker(s->ctl, NULL, NULL);
        bq_http_loop_step(loop, &err);
    } else if (left > 0) {
        bq_slot_park(s->ctl, seen, left);
    }
    next = bq_now_mono() + timeout;
    return resume_ready(s, ended, outs, &next);
}

static void slot_fini(void *state)
{
    struct slot_state *s = state;
    lua_close(s->L); /* closes the HTTP calls of tasks still held (a shutdown that gave up) */
    bq_arena_free(s->arena);
    bq_free(s->tasks);
    bq_free(s);
    tl_slot = NULL;
}

/* ---- Limits: timeouts and interrupts inside a handler ---------------------------------------
 * While a handler runs, a count hook checks every HOOK_COUNT instructions whether the slot
 * was interrupted (shutdown deadline) or the handler ran past its timeout, and raises an
 * error table {code=, message=, retryable=true} if so. It keeps raising at every check, so a
 * handler that catches the error with pcall is stopped again shortly after. Blocking binduq
 * calls (core.slot_sleep) wake on an interrupt too. A handler blocked in some other C call
 * sees the error when that call returns. */

#define HOOK_COUNT 10000

/* The control request for the running task. */
static int cur_control(const struct slot_state *s)
{
    if (s->per > 1)
        return s->cur != NULL ? atomic_load(&s->ctl->tasks[s->cur->place].control)
                              : BQ_CONTROL_NONE;
    return atomic_load(&s->ctl->control);
}

/* Whether task t must stop now: a cancel, a pause, a shutdown or its timeout. */
static bool task_must_stop(const struct slot_state *s, const struct slot_task *t, double now)
{
    int c = s->per > 1 ? atomic_load(&s->ctl->tasks[t->place].control)
                       : atomic_load(&s->ctl->control);
    return c != BQ_CONTROL_NONE || atomic_load(&s->ctl->interrupt) ||
           (t->deadline > 0 && now > t->deadline);
}

/* Pushes the error for an interrupted or timed-out handler, or returns 0 if neither. */
static int push_limit_error(lua_State *L, struct slot_state *s)
{
    const char *code, *msg;
    char buf[96];
    if (s->cur == NULL)
        return 0;
    if (cur_control(s) == BQ_CONTROL_CANCEL) {
        code = "ECANCELED";
        msg = "the task was canceled";
    } else if (atomic_load(&s->ctl->interrupt)) {
        code = "EINTERRUPTED";
        msg = "the handler was interrupted: the worker is shutting down";
    } else if (s->cur->deadline > 0 && bq_now_mono() > s->cur->deadline) {
        code = "ETIMEDOUT";
        snprintf(buf, sizeof buf, "the handler ran past its timeout of %g s", s->cur->limit);
        msg = buf;
    } else {
        return 0;
    }
    lua_createtable(L, 0, 3);
    lua_pushstring(L, code);
    lua_setfield(L, -2, "code");
    lua_pushstring(L, msg);
    lua_setfield(L, -2, "message");
    lua_pushboolean(L, strcmp(code, "ECANCELED") != 0);
    lua_setfield(L, -2, "retryable");
    return 1;
}

/* Pushes the error of a pause asked for the running task, or returns 0. Pauses happen only
 * at yield points (binduq calls), never in the count hook: the handler decides what its
 * checkpoint holds. */
static int push_pause_error(lua_State *L, struct slot_state *s)
{
    if (s->cur == NULL || cur_control(s) != BQ_CONTROL_PAUSE)
        return 0;
    lua_createtable(L, 0, 3);
    lua_pushstring(L, "EPAUSED");
    lua_setfield(L, -2, "code");
    lua_pushstring(L, "the task was paused");
    lua_setfield(L, -2, "message");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "retryable");
    return 1;
}

static void limit_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    struct slot_state *s = tl_slot;
    if (s != NULL && push_limit_error(L, s))
        lua_error(L);
}

/* core.limit(timeout) -- arms the hook for the handler about to run; timeout <= 0: none. */
static int l_limit(lua_State *L)
{
    struct slot_state *s = tl_slot;
    double t = luaL_optnumber(L, 1, 0);
    if (s == NULL || s->cur == NULL)
        return 0;
    if (bq_duration_problem(t) != NULL) /* the callers check; never an unending limit */
        t = t > 0 ? BQ_MAX_DURATION : 0;
    s->cur->limit = t;
    s->cur->deadline = t > 0 ? bq_now_mono() + t : 0;
    lua_sethook(L, limit_hook, LUA_MASKCOUNT, HOOK_COUNT);
    return 0;
}

/* core.unlimit() -- disarms it. */
static int l_unlimit(lua_State *L)
{
    struct slot_state *s = tl_slot;
    if (s != NULL && s->cur != NULL) {
        s->cur->deadline = 0;
        lua_sethook(L, NULL, 0, 0);
    }
    return 0;
}

/* core.rate_limit(key, limit, period) -> true, at | false, wait | nil, msg, code
 * Asks the limiter to admit the message this handler state is handling under "at most
 * `limit` per `period` seconds" for bucket `key` of its queue: admitted at `at` (epoch
 * seconds, Redis' clock), or not for `wait` seconds (the caller defers the message).
 * core.rate_limit({i, ...}, {key, ...}, limit, period) -> { verdict, value, verdict, value,
 *   ... } | nil, msg, code
 * The same for messages i of the chunk being prepared, with their keys, in one round trip:
 * per request, verdict 1 (admitted at value) or 0 (not, for value seconds). Flat lists: no
 * table a request. */
static int l_rate_limit(lua_State *L)
{
    struct slot_state *s = tl_slot;
    bool batch = lua_istable(L, 1);
    int n = batch ? (int)lua_rawlen(L, 1) : 1;
    int a = batch ? 3 : 2; /* where limit is */
    if (batch)
        luaL_checktype(L, 2, LUA_TTABLE);
    lua_Integer limit = luaL_checkinteger(L, a);
    double period = luaL_checknumber(L, a + 1);
    if (s == NULL || (batch ? s->chunk == NULL : s->cur == NULL || !s->cur->has_msg))
        return luaL_error(L, batch ? "rate_limit of a batch is for a chunk being prepared"
                                   : "rate_limit is for handler states, while a task is handled");
    if (limit < 1 || period <= 0)
        return luaL_error(L, "a rate limit needs limit >= 1 and period > 0");
    if (n < 1 || n > BQ_CHUNK_MAX)
        return luaL_error(L, "rate_limit: 1 to %d admissions at once", BQ_CHUNK_MAX);
    if (batch && (int)lua_rawlen(L, 2) != n)
        return luaL_error(L, "rate_limit: one key per admission");
    struct bq_admission reqs[BQ_CHUNK_MAX];
    for (int j = 0; j < n; j++) {
        if (batch) {
            lua_rawgeti(L, 1, j + 1);
            lua_Integer i = lua_tointeger(L, -1);
            lua_pop(L, 1);
            if (i < 1 || i > s->chunk_n)
                return luaL_error(L, "rate_limit: admission %d names no message of the chunk", j + 1);
            reqs[j].msg = &s->chunk[i - 1];
            if (lua_rawgeti(L, 2, j + 1) != LUA_TSTRING)
                return luaL_error(L, "rate_limit: key %d is not a string", j + 1);
            reqs[j].key = lua_tostring(L, -1);
            lua_pop(L, 1); /* the key stays anchored by the list */
        } else {
            reqs[j].msg = &s->cur->msg;
            reqs[j].key = luaL_checkstring(L, 1);
        }
    }
    bq_err err;
    if (bq_worker_rate_limit(s->cfg->w, (long)limit, period, reqs, (size_t)n, &err) != BQ_OK)
        return bq_lua_fail(L, &err);
    if (!batch) {
        lua_pushboolean(L, reqs[0].verdict == 1);
        lua_pushnumber(L, reqs[0].value);
        return 2;
    }
    lua_createtable(L, 2 * n, 0);
    for (int j = 0; j < n; j++) {
        lua_pushinteger(L, reqs[j].verdict);
        lua_rawseti(L, -2, 2 * j + 1);
        lua_pushnumber(L, reqs[j].value);
        lua_rawseti(L, -2, 2 * j + 2);
    }
    return 1;
}

/* core.slot_sleep(seconds) -- sleeps, but not past the handler's deadline and not through an
 * interrupt; raises the limit error if either cuts it short. Outside a handler state it is a
 * plain sleep. */
/* After a coroutine's sleep: the stop that woke it, if any, raised. */
static int sleep_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    struct slot_state *s = tl_slot;
    if (s != NULL && (push_limit_error(L, s) || push_pause_error(L, s)))
        return lua_error(L);
    return 0;
}

static int l_slot_sleep(lua_State *L)
{
    double t = bq_lua_check_duration(L, 1, "sleep: seconds");
    struct slot_state *s = tl_slot;
    if (s == NULL || s->cur == NULL) {
        bq_sleep(t);
        return 0;
    }
    if (s->cur->co != NULL && L == s->cur->co && lua_isyieldable(L)) {
        /* The task's own coroutine: the state's loop runs the others meanwhile. */
        s->cur->wait = WAIT_SLEEP;
        s->cur->wake_at = bq_now_mono() + t;
        return lua_yieldk(L, 0, 0, sleep_k);
    }
    if (s->cur->co != NULL) {
        /* A coroutine of the handler's own, or inside a C function that cannot yield: the
         * whole state waits here, still stopped by what stops the task. */
        double until = bq_now_mono() + t;
        for (;;) {
            unsigned seen = bq_slot_wakeups(s->ctl);
            double now = bq_now_mono();
            if (now >= until || task_must_stop(s, s->cur, now))
                break;
            double left = until - now;
            if (s->cur->deadline > 0 && s->cur->deadline - now < left)
                left = s->cur->deadline - now + 0.001;
            bq_slot_park(s->ctl, seen, left);
        }
        return sleep_k(L, LUA_OK, 0);
    }
    double cut = s->cur->deadline > 0 ? s->cur->deadline - bq_now_mono() : t;
    bool full = bq_slot_sleep(s->ctl, t < cut ? t : (cut > 0 ? cut : 0));
    if ((!full || t >= cut) && (push_limit_error(L, s) || push_pause_error(L, s)))
        return lua_error(L);
    return 0;
}

/* core.slot_yield() -- a yield point: raises the pending cancel, pause, interrupt or
 * timeout error of the running handler, if any. Outside a handler state it does nothing. */
static int l_slot_yield(lua_State *L)
{
    struct slot_state *s = tl_slot;
    if (s != NULL && (push_limit_error(L, s) || push_pause_error(L, s)))
        return lua_error(L);
    return 0;
}

struct bq_slot_ctl *bq_lua_slot_running(double *deadline)
{
    struct slot_state *s = tl_slot;
    if (s == NULL || s->cur == NULL || !s->cur->has_msg)
        return NULL;
    *deadline = s->cur->deadline;
    return s->ctl;
}

bool bq_lua_slot_must_stop(void)
{
    struct slot_state *s = tl_slot;
    return s != NULL && s->cur != NULL && task_must_stop(s, s->cur, bq_now_mono());
}

bool bq_lua_slot_await_http(lua_State *L, struct bq_http *h, int until)
{
    struct slot_state *s = tl_slot;
    if (s == NULL || s->cur == NULL || s->cur->co == NULL || L != s->cur->co ||
        !lua_isyieldable(L))
        return false;
    s->cur->wait = WAIT_HTTP;
    s->cur->http = h;
    s->cur->until = (enum bq_http_until)until;
    return true;
}

bool bq_lua_slot_in_coroutine(lua_State *L)
{
    struct slot_state *s = tl_slot;
    return s != NULL && s->cur != NULL && s->cur->co != NULL && L == s->cur->co;
}

int bq_lua_slot_raise(lua_State *L)
{
    struct slot_state *s = tl_slot;
    if (s != NULL && (push_limit_error(L, s) || push_pause_error(L, s)))
        return lua_error(L);
    return 0;
}

/* core.slot_task(id|nil) -- names the task this handler state runs, for the control
 * channel. */
static int l_slot_task(lua_State *L)
{
    struct slot_state *s = tl_slot;
    const char *id = luaL_optstring(L, 1, NULL);
    if (s != NULL && s->per > 1)
        bq_slot_set_task_at(s->ctl, s->cur != NULL ? s->cur->place : -1, id);
    else if (s != NULL)
        bq_slot_set_task(s->ctl, id);
    /* A cancel or pause that came after its message was fetched and before this naming. */
    if (s != NULL && id != NULL && s->cur != NULL && s->cur->has_msg) {
        int op = bq_worker_claim_control(s->cfg->w, id, s->cur->msg.seq);
        if (op != BQ_CONTROL_NONE) {
            bq_slot_request(s->ctl, op, id);
            bq_log(BQ_LOG_INFO, "control", "task_id", id, "op",
                   op == BQ_CONTROL_CANCEL ? "cancel" : "pause", "worker",
                   bq_worker_id(s->cfg->w), "kept", "came before its task was named", NULL);
        }
    }
    return 0;
}

/* core.slot_ahead({id, ...}) -- names the tasks this handler state runs next (its chunk's),
 * before their state says working: a cancel or pause for one of them meanwhile is kept for
 * it (bq_slot_set_ahead). */
static int l_slot_ahead(lua_State *L)
{
    struct slot_state *s = tl_slot;
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *ids[BQ_CHUNK_MAX];
    int n = (int)lua_rawlen(L, 1);
    if (n > BQ_CHUNK_MAX)
        return luaL_error(L, "slot_ahead: at most %d tasks", BQ_CHUNK_MAX);
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 1, i + 1);
        ids[i] = luaL_checkstring(L, -1); /* anchored by the table */
        lua_pop(L, 1);
    }
    if (s != NULL && s->per == 1)
        bq_slot_set_ahead(s->ctl, ids, n);
    return 0;
}

/* core.slot_control() -> "cancel" | "pause" | nil: what the control channel asked for the
 * running task. */
static int l_slot_control(lua_State *L)
{
    struct slot_state *s = tl_slot;
    int c = s != NULL ? cur_control(s) : BQ_CONTROL_NONE;
    if (c == BQ_CONTROL_CANCEL)
        lua_pushstring(L, "cancel");
    else if (c == BQ_CONTROL_PAUSE)
        lua_pushstring(L, "pause");
    else
        lua_pushnil(L);
    return 1;
}

/* core.slot_publish(op, id) -> true | nil, msg, code: "cancel" / "pause" on the control
 * channel of the worker's queue (a handler state handling a queued cancel or pause). */
static int l_slot_publish(lua_State *L)
{
    struct slot_state *s = tl_slot;
    static const char *const ops[] = {"cancel", "pause", NULL};
    int op = luaL_checkoption(L, 1, NULL, ops);
    const char *id = luaL_checkstring(L, 2);
    if (s == NULL)
        return luaL_error(L, "slot_publish is for handler states");
    bq_err err;
    if (bq_worker_publish(s->cfg->w, op == 0 ? BQ_CONTROL_CANCEL : BQ_CONTROL_PAUSE, id,
                          &err) != BQ_OK)
        return bq_lua_fail(L, &err);
    lua_pushboolean(L, 1);
    return 1;
}

/* core.slot_event(queue, json) -> true: a task event (a JSON object) for the stream of the
 * task's queue (bq_worker_feed). */
static int l_slot_event(lua_State *L)
{
    struct slot_state *s = tl_slot;
    const char *queue = luaL_optstring(L, 1, NULL);
    size_t len;
    const char *json = luaL_checklstring(L, 2, &len);
    if (s == NULL)
        return luaL_error(L, "slot_event is for handler states");
    bq_worker_feed(s->cfg->w, queue, json, len);
    lua_pushboolean(L, 1);
    return 1;
}

/* core.slot_started(queue, task_id, attempt): the "started" event of a task (worker_feed.c),
 * when the worker writes events. */
static int l_slot_started(lua_State *L)
{
    struct slot_state *s = tl_slot;
    const char *queue = luaL_optstring(L, 1, NULL);
    size_t idlen;
    const char *id = luaL_checklstring(L, 2, &idlen);
    lua_Integer attempt = luaL_optinteger(L, 3, 1);
    if (s == NULL)
        return luaL_error(L, "slot_started is for handler states");
    bq_worker_feed_started(s->cfg->w, queue, id, idlen, (long long)attempt);
    return 0;
}

/* core.slot_storage() -> the binduq.Storage the worker was started with, or nil. */
static int l_slot_storage(lua_State *L)
{
    struct slot_state *s = tl_slot;
    if (s == NULL || s->cfg->storage == NULL)
        lua_pushnil(L);
    else
        bq_lua_push_storage(L, s->cfg->storage);
    return 1;
}

/* ---- Registering and describing a handler state ------------------------------------------- */

/* core.slot_ready(worker_key, process [, prepare [, flush]]) -> true if this handler state
 * serves that worker (prepare: see slot_prepare; flush: slot_flush). */
static int l_slot_ready(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, BQ_SLOT_KEY);
    struct slot_state *s = lua_touserdata(L, -1);
    if (s == NULL)
        return luaL_error(L, "slot_ready called outside a handler state");
    const char *key = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (strcmp(key, s->cfg->worker_key) != 0 || s->process_ref != LUA_NOREF) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_pushvalue(L, 2);
    s->process_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (lua_isfunction(L, 3)) {
        lua_pushvalue(L, 3);
        s->prepare_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    if (lua_isfunction(L, 4)) {
        lua_pushvalue(L, 4);
        s->flush_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* core.slot_loading() -> loading, first: loading is true in a handler state that is still
 * running the script up to worker:start() (the spawn model: code above it runs once per
 * state); first is true for the first such call in the process, so a warning is said once. */
static int l_slot_loading(lua_State *L)
{
    static atomic_bool said;
    lua_getfield(L, LUA_REGISTRYINDEX, BQ_SLOT_KEY);
    struct slot_state *s = lua_touserdata(L, -1);
    bool loading = s != NULL && s->process_ref == LUA_NOREF;
    lua_pushboolean(L, loading);
    lua_pushboolean(L, loading && !atomic_exchange(&said, true));
    return 2;
}

/* core.slot_info() -> {slot=, worker_key=, worker_id=, queue=, want_results=,
 * max_message_size=, policy=} | nil outside a handler state */
static int l_slot_info(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, BQ_SLOT_KEY);
    struct slot_state *s = lua_touserdata(L, -1);
    if (s == NULL) {
        lua_pushnil(L);
        return 1;
    }
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, s->index + 1);
    lua_setfield(L, -2, "slot");
    lua_pushstring(L, s->cfg->worker_key);
    lua_setfield(L, -2, "worker_key");
    lua_pushstring(L, bq_worker_id(s->cfg->w));
    lua_setfield(L, -2, "worker_id");
    lua_pushstring(L, bq_worker_queue(s->cfg->w));
    lua_setfield(L, -2, "queue");
    int nq = bq_worker_nqueues(s->cfg->w);
    lua_createtable(L, nq, 0);
    for (int i = 0; i < nq; i++) {
        lua_pushstring(L, bq_worker_queue_of(s->cfg->w, i));
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "queues");
    lua_pushboolean(L, s->cfg->want_results);
    lua_setfield(L, -2, "want_results");
    lua_pushinteger(L, s->cfg->max_message_size);
    lua_setfield(L, -2, "max_message_size");
    if (s->cfg->policy != NULL) {
        lua_pushstring(L, s->cfg->policy);
        lua_setfield(L, -2, "policy");
    }
    return 1;
}

/* ---- Registration -------------------------------------------------------------------------- */

const struct bq_slot_ops bq_lua_slot_ops = {slot_init, slot_handle, slot_fini, slot_prepare,
                                           slot_flush, slot_start, slot_wait};

static int l_outcome_unknown(lua_State *L)
{
    return luaL_error(L, "no outcome is named '%s'", luaL_tolstring(L, 2, NULL));
}

void bq_lua_open_slot(lua_State *L)
{
    /* core.OUTCOME: name -> name for every outcome the engine knows, and an error for any
     * other, so a misspelt outcome in lifecycle.lua fails where it is written. */
    lua_createtable(L, 0, BQ_OUTCOME_COUNT);
    for (int k = 0; k < BQ_OUTCOME_COUNT; k++) {
        lua_pushstring(L, bq_outcome_name((enum bq_outcome_kind)k));
        lua_pushvalue(L, -1);
        lua_rawset(L, -3);
    }
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, l_outcome_unknown);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_setfield(L, -2, "OUTCOME");
    lua_pushcfunction(L, l_slot_ready);
    lua_setfield(L, -2, "slot_ready");
    lua_pushcfunction(L, l_slot_info);
    lua_setfield(L, -2, "slot_info");
    lua_pushcfunction(L, l_slot_loading);
    lua_setfield(L, -2, "slot_loading");
    lua_pushcfunction(L, l_limit);
    lua_setfield(L, -2, "limit");
    lua_pushcfunction(L, l_unlimit);
    lua_setfield(L, -2, "unlimit");
    lua_pushcfunction(L, l_slot_sleep);
    lua_setfield(L, -2, "slot_sleep");
    lua_pushcfunction(L, l_rate_limit);
    lua_setfield(L, -2, "rate_limit");
    lua_pushcfunction(L, l_slot_yield);
    lua_setfield(L, -2, "slot_yield");
    lua_pushcfunction(L, l_slot_task);
    lua_setfield(L, -2, "slot_task");
    lua_pushcfunction(L, l_slot_control);
    lua_setfield(L, -2, "slot_control");
    lua_pushcfunction(L, l_slot_ahead);
    lua_setfield(L, -2, "slot_ahead");
    lua_pushcfunction(L, l_slot_publish);
    lua_setfield(L, -2, "slot_publish");
    lua_pushcfunction(L, l_slot_storage);
    lua_setfield(L, -2, "slot_storage");
    lua_pushcfunction(L, l_slot_event);
    lua_setfield(L, -2, "slot_event");
    lua_pushcfunction(L, l_slot_started);
    lua_setfield(L, -2, "slot_started");
}
