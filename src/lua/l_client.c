/*
 * l_client.c -- binduq.Client: the producer side of a scheduler, over bq_client.
 *
 *   local c = core.client{url=..., queue_name=..., max_connections=...}
 *   c:push(msg_or_list [, ids [, queue]]) -> count | nil, msg, code
 *   c:length([which])                      -> n | nil, msg, code
 *       which: "ready" (default), "dead", "delayed", "inflight"
 *   c:range(which, start, stop)            -> { raw, ... } | nil, msg, code
 *   c:dlq_requeue(entry)                   -> true | false (gone) | nil, msg, code
 *   c:dlq_remove(entry)                    -> true | false (gone) | nil, msg, code
 *   c:dlq_purge()                          -> count | nil, msg, code
 *   c:ping()                               -> seconds | nil, msg, code
 *   c:feed_add(queue, json_array)          -> true | nil, msg, code   (task events)
 *   c:feed_post(queue, "{...},{...}")      -> true   (written behind, feed_post.h)
 *   c:feed_read(queue, after, count, timeout) -> { {id, json}, ... } | nil, msg, code
 *   c:feed_last(queue)                     -> id | nil, msg, code
 *   c:feed_max()                           -> entries kept per queue, or nil: no events
 *   c:info()                               -> { backend=, address=, queue_name=, ... }
 *   c:close()
 *
 * The userdata is created closed and then opened, so a failure in between leaves nothing to
 * leak; close is idempotent and is also __gc and __close.
 */
#include "binding.h"

#include "../broker/admin.h"
#include "../broker/keys.h"
#include "../core/alloc.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/id.h"
#include "../engine/client.h"
#include "../engine/feed_post.h"
#include "../engine/metrics.h"
#include "../engine/worker.h"

#include <string.h>

struct lclient {
    bq_client *c; /* NULL once closed */
};

static bq_client *check_open(lua_State *L)
{
    struct lclient *u = luaL_checkudata(L, 1, BQ_CLIENT_MT);
    if (u->c == NULL)
        luaL_error(L, "attempt to use a closed scheduler client");
    return u->c;
}

struct bq_client *bq_lua_check_client(lua_State *L, int idx)
{
    struct lclient *u = luaL_checkudata(L, idx, BQ_CLIENT_MT);
    if (u->c == NULL)
        luaL_error(L, "attempt to use a closed scheduler client");
    return u->c;
}

/* Returns nil, message, code for a failed call of client c; a credential Redis refused is
 * named with the address (bq_broker_explain_auth). */
static int client_fail(lua_State *L, const bq_client *c, bq_err *err)
{
    bq_broker_explain_auth(c->broker, err);
    return bq_lua_fail(L, err);
}

static enum bq_list check_which(lua_State *L, int idx)
{
    static const char *const names[] = {"ready", "dead", "delayed", "inflight", NULL};
    static const enum bq_list lists[] = {BQ_LIST_READY, BQ_LIST_DEAD, BQ_LIST_DELAYED,
                                         BQ_LIST_INFLIGHT};
    return lists[luaL_checkoption(L, idx, "ready", names)];
}

/* core.client(opts) -- raises on bad options (they are the caller's mistake). */
static int l_client_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    struct bq_client_options o;
    bq_lua_client_options(L, 1, &o);
    struct lclient *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->c = NULL;
    luaL_setmetatable(L, BQ_CLIENT_MT);
    bq_err err;
    if (bq_client_new_broker(&o, &u->c, &err) != BQ_OK)
        return luaL_error(L, "%s", err.msg);
    return 1;
}

static int l_client_close(lua_State *L)
{
    struct lclient *u = luaL_checkudata(L, 1, BQ_CLIENT_MT);
    bq_client_free(u->c);
    u->c = NULL;
    return 0;
}

static int l_client_tostring(lua_State *L)
{
    struct lclient *u = luaL_checkudata(L, 1, BQ_CLIENT_MT);
    if (u->c == NULL)
        lua_pushstring(L, "binduq.Client (closed)");
    else
        lua_pushfstring(L, "binduq.Client: %s (%s %s)", u->c->cfg.queue_name,
                        u->c->broker->kind, u->c->broker->address);
    return 1;
}

/* c:push(msg | {msg, ...} | batch [, ids [, queue]]) */
static int l_client_push(lua_State *L)
{
    bq_client *c = check_open(L);
    const char *queue = luaL_optstring(L, 4, NULL);
    const struct bq_lua_batch *b = bq_lua_test_batch(L, 2);
    size_t pushed = 0;
    bq_err err;
    if (b != NULL) { /* core.prepare_runs' messages, with their ids */
        if (b->n > 0 && bq_client_push(c, queue, b->msgs, b->ids, b->n, &pushed, &err) != BQ_OK)
            return client_fail(L, c, &err);
        bq_metrics_scheduled(queue ? queue : c->cfg.queue_name, (long long)pushed, 0);
        lua_pushinteger(L, (lua_Integer)pushed);
        return 1;
    }
    size_t n;
    if (lua_type(L, 2) == LUA_TSTRING) {
        n = 1;
    } else {
        luaL_checktype(L, 2, LUA_TTABLE);
        n = (size_t)luaL_len(L, 2);
    }
    if (!lua_isnoneornil(L, 3) && !lua_istable(L, 3) && lua_type(L, 3) != LUA_TSTRING)
        luaL_typeerror(L, 3, "table or string");
    lua_settop(L, 4);
    struct bq_slice *s = lua_newuserdatauv(L, (n ? n : 1) * sizeof *s, 0);     /* 5 */
    const char **ids = lua_newuserdatauv(L, (n ? n : 1) * sizeof *ids, 0);     /* 6 */
    if (n == 1 && lua_type(L, 2) == LUA_TSTRING) {
        s[0].p = lua_tolstring(L, 2, &s[0].len);
    } else {
        for (size_t i = 0; i < n; i++) {
            if (lua_rawgeti(L, 2, (lua_Integer)i + 1) != LUA_TSTRING)
                return luaL_error(L, "push: message %d is a %s, not a string", (int)i + 1,
                                  luaL_typename(L, -1));
            s[i].p = lua_tolstring(L, -1, &s[i].len); /* the list keeps it alive */
            lua_pop(L, 1);
        }
    }
    for (size_t i = 0; i < n; i++) {
        ids[i] = NULL;
        if (lua_istable(L, 3)) {
            lua_rawgeti(L, 3, (lua_Integer)i + 1);
            ids[i] = lua_tostring(L, -1);
            lua_pop(L, 1);
        } else if (lua_type(L, 3) == LUA_TSTRING && i == 0) {
            ids[0] = lua_tostring(L, 3);
        }
    }
    if (bq_client_push(c, queue, s, ids, n, &pushed, &err) != BQ_OK)
        return client_fail(L, c, &err);
    bq_metrics_scheduled(queue ? queue : c->cfg.queue_name, (long long)pushed, 0);
    lua_pushinteger(L, (lua_Integer)pushed);
    return 1;
}

/* c:push_unique({msg, ...} | batch, {key, ...} | batch, ttl [, queue])
 *   -> {true|false, ...} | nil, msg, code
 * A batch (core.prepare_runs) brings its own keys. */
static int l_client_push_unique(lua_State *L)
{
    bq_client *c = check_open(L);
    const struct bq_lua_batch *b = bq_lua_test_batch(L, 2);
    if (b == NULL) {
        luaL_checktype(L, 2, LUA_TTABLE);
        luaL_checktype(L, 3, LUA_TTABLE);
    }
    double ttl = bq_lua_check_duration(L, 4, "push_unique: the ttl");
    const char *queue = luaL_optstring(L, 5, c->cfg.queue_name);
    size_t n = b ? b->n : (size_t)luaL_len(L, 2);
    if (b == NULL && (size_t)luaL_len(L, 3) != n)
        return luaL_error(L, "push_unique: one key per message");
    lua_settop(L, 5);
    const struct bq_slice *s;
    const char *const *keys;
    bool *pushed = lua_newuserdatauv(L, (n ? n : 1) * sizeof *pushed, 0);
    if (b != NULL) {
        s = b->msgs;
        keys = b->keys;
    } else {
        struct bq_slice *ls = lua_newuserdatauv(L, (n ? n : 1) * sizeof *ls, 0);
        const char **lk = lua_newuserdatauv(L, (n ? n : 1) * sizeof *lk, 0);
        for (size_t i = 0; i < n; i++) {
            if (lua_rawgeti(L, 2, (lua_Integer)i + 1) != LUA_TSTRING ||
                lua_rawgeti(L, 3, (lua_Integer)i + 1) != LUA_TSTRING)
                return luaL_error(L, "push_unique: message and key %d must be strings", (int)i + 1);
            lk[i] = lua_tostring(L, -1);
            ls[i].p = lua_tolstring(L, -2, &ls[i].len);
            lua_pop(L, 2); /* the tables keep them alive */
        }
        s = ls;
        keys = lk;
    }
    bq_err err;
    if (c->broker->ops->push_unique(c->broker, queue, s, keys, n, ttl, pushed, &err) != BQ_OK)
        return client_fail(L, c, &err);
    long long sent = 0;
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        sent += pushed[i];
        lua_pushboolean(L, pushed[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    bq_metrics_scheduled(queue, sent, (long long)n - sent);
    return 1;
}

/* c:push_delayed({msg, ...}, {key|false, ...}, {delay, ...}, {run_at, ...}, ttl [, queue])
 *   -> {true|false, ...} | nil, msg, code
 * Operation i is due run_at[i] (seconds since the epoch) when that is > 0, else delay[i]
 * seconds from now by the server's clock (bq_broker_ops.push_delayed). */
static int l_client_push_delayed(lua_State *L)
{
    bq_client *c = check_open(L);
    for (int a = 2; a <= 5; a++)
        luaL_checktype(L, a, LUA_TTABLE);
    double ttl = bq_lua_check_duration(L, 6, "push_delayed: the ttl");
    const char *queue = luaL_optstring(L, 7, c->cfg.queue_name);
    size_t n = (size_t)luaL_len(L, 2);
    lua_settop(L, 7);
    bool *pushed = lua_newuserdatauv(L, (n ? n : 1) * sizeof *pushed, 0);          /* 8 */
    struct bq_delayed *ops = lua_newuserdatauv(L, (n ? n : 1) * sizeof *ops, 0);   /* 9 */
    for (size_t i = 0; i < n; i++) {
        lua_Integer k = (lua_Integer)i + 1;
        if (lua_rawgeti(L, 2, k) != LUA_TSTRING)
            return luaL_error(L, "push_delayed: message %d must be a string", (int)k);
        ops[i].msg.p = lua_tolstring(L, -1, &ops[i].msg.len); /* the table keeps it alive */
        int kt = lua_rawgeti(L, 3, k);
        if (kt != LUA_TSTRING && kt != LUA_TBOOLEAN && kt != LUA_TNIL)
            return luaL_error(L, "push_delayed: key %d must be a string or false", (int)k);
        ops[i].key = kt == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        lua_rawgeti(L, 4, k);
        ops[i].delay = lua_tonumber(L, -1);
        lua_rawgeti(L, 5, k);
        ops[i].run_at = lua_tonumber(L, -1);
        lua_pop(L, 4);
    }
    bq_err err;
    if (c->broker->ops->push_delayed(c->broker, queue, ops, n, ttl, pushed, &err) != BQ_OK)
        return client_fail(L, c, &err);
    long long sent = 0;
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        sent += pushed[i];
        lua_pushboolean(L, pushed[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    bq_metrics_scheduled(queue, sent, (long long)n - sent);
    return 1;
}

/* c:cron(name, action, decl, ticks[, queue]) -> fired, last, state | nil, msg, code: a
 * recurring schedule's claim or change (broker.h, "Recurring schedules"). action "fire",
 * "pause", "resume" or "remove"; decl "" or the declaration's JSON; ticks a list of
 * {tick, due, message}; state "active", "paused", "removed" or "unknown". */
static int l_client_cron(lua_State *L)
{
    bq_client *c = check_open(L);
    const char *name = luaL_checkstring(L, 2);
    static const char *const actions[] = {"fire", "pause", "resume", "remove", NULL};
    enum bq_cron_action action = (enum bq_cron_action)luaL_checkoption(L, 3, NULL, actions);
    size_t dlen;
    const char *decl = luaL_optlstring(L, 4, "", &dlen);
    const char *queue = luaL_optstring(L, 6, c->cfg.queue_name);
    size_t n = lua_isnoneornil(L, 5) ? 0 : (size_t)(luaL_checktype(L, 5, LUA_TTABLE), luaL_len(L, 5));
    lua_settop(L, 6);
    struct bq_tick *ticks = lua_newuserdatauv(L, (n ? n : 1) * sizeof *ticks, 0); /* 7 */
    for (size_t i = 0; i < n; i++) {
        if (lua_rawgeti(L, 5, (lua_Integer)i + 1) != LUA_TTABLE)
            return luaL_error(L, "cron: tick %d must be a table {tick, due, message}", (int)i + 1);
        lua_rawgeti(L, -1, 1);
        lua_rawgeti(L, -2, 2);
        lua_rawgeti(L, -3, 3);
        int whole;
        ticks[i].tick = (long long)lua_tointegerx(L, -3, &whole);
        if (!whole || !lua_isnumber(L, -2) || lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "cron: tick %d must be {integer tick, due, message}", (int)i + 1);
        ticks[i].due = lua_tonumber(L, -2);
        ticks[i].msg.p = lua_tolstring(L, -1, &ticks[i].msg.len); /* the table keeps it */
        lua_pop(L, 4);
    }
    bq_err err;
    if (c->broker->ops->cron == NULL) {
        bq_err_set(&err, BQ_EUNSUPPORTED, "recurring schedules shared by processes need Redis "
                   "(the in-memory scheduler fires them in its own process)");
        return bq_lua_fail(L, &err);
    }
    struct bq_cron_res res;
    if (c->broker->ops->cron(c->broker, queue, name, action, (struct bq_slice){decl, dlen},
                             ticks, n, &res, &err) != BQ_OK)
        return client_fail(L, c, &err);
    if (res.fired > 0)
        bq_metrics_scheduled(queue, res.fired, 0);
    static const char *const states[] = {"active", "paused", "removed", "unknown"};
    lua_pushinteger(L, (lua_Integer)res.fired);
    lua_pushinteger(L, (lua_Integer)res.last);
    lua_pushstring(L, states[res.state]);
    return 3;
}

static int l_client_length(lua_State *L)
{
    bq_client *c = check_open(L);
    enum bq_list which = check_which(L, 2);
    const char *queue = luaL_optstring(L, 3, c->cfg.queue_name);
    long long n;
    bq_err err;
    if (c->broker->admin->length(c->broker, queue, which, &n, &err) != BQ_OK)
        return client_fail(L, c, &err);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

/* c:publish(op, task_id) -> receivers: "cancel" or "pause" on the control channel of the
 * configured queue name, which every worker of it listens to. */
static int l_client_publish(lua_State *L)
{
    bq_client *c = check_open(L);
    static const char *const ops[] = {"cancel", "pause", NULL};
    int op = luaL_checkoption(L, 2, NULL, ops);
    size_t len;
    const char *id = luaL_checklstring(L, 3, &len);
    char msg[BQ_MAX_ID_LEN + 16], why[BQ_ID_WHY_SIZE];
    if (!bq_id_check(id, len, why))
        return luaL_argerror(L, 3, lua_pushfstring(L, "task_id %s", why));
    int n = bq_control_format(msg, sizeof msg, op == 0 ? BQ_CONTROL_CANCEL : BQ_CONTROL_PAUSE,
                              id);
    long long receivers = 0;
    bq_err err;
    if (c->broker->ops->publish(c->broker, c->cfg.queue_name, (struct bq_slice){msg, (size_t)n},
                                &receivers, &err) != BQ_OK)
        return client_fail(L, c, &err);
    lua_pushinteger(L, (lua_Integer)receivers);
    return 1;
}

/* ---- Task events (broker.h, docs/events.md) ---------------------------------------------- */

static const char *check_queue(lua_State *L, int idx, const bq_client *c)
{
    const char *q = luaL_optstring(L, idx, c->cfg.queue_name);
    const char *problem = bq_queue_name_problem(q);
    if (problem != NULL)
        luaL_argerror(L, idx, lua_pushfstring(L, "queue name %s", problem));
    return q;
}

/* c:feed_add(queue, json_array) -> true | nil, msg, code */
static int l_client_feed_add(lua_State *L)
{
    bq_client *c = check_open(L);
    const char *q = check_queue(L, 2, c);
    size_t len;
    const char *json = luaL_checklstring(L, 3, &len);
    bq_err err;
    struct bq_slice e = {json, len};
    if (c->broker->ops->feed_add(c->broker, q, &e, 1, &err) != BQ_OK)
        return client_fail(L, c, &err);
    lua_pushboolean(L, 1);
    return 1;
}

/* c:feed_post(queue, events) -> true: events (JSON objects separated by commas) for the
 * queue's stream, written by the client's poster within a millisecond or at close (a
 * producer's events: feed_post.h); nothing when task events are off. */
static int l_client_feed_post(lua_State *L)
{
    bq_client *c = check_open(L);
    const char *q = check_queue(L, 2, c);
    size_t len;
    const char *events = luaL_checklstring(L, 3, &len);
    if (c->feed_post != NULL && len > 0)
        bq_feed_post_add(c->feed_post, q, events, len);
    lua_pushboolean(L, 1);
    return 1;
}

/* c:feed_read(queue, after, count, timeout) -> { {id, json}, ... } | nil, msg, code. Waits up
 * to timeout seconds for the first entry (0: not at all); {} when none came. */
static int l_client_feed_read(lua_State *L)
{
    bq_client *c = check_open(L);
    const char *q = check_queue(L, 2, c);
    const char *after = luaL_checkstring(L, 3);
    lua_Integer count = luaL_optinteger(L, 4, 100);
    double timeout = luaL_optnumber(L, 5, 0);
    luaL_argcheck(L, count >= 1 && count <= 10000, 4, "count must be from 1 to 10000");
    const char *problem = bq_duration_problem(timeout);
    if (problem != NULL)
        return luaL_argerror(L, 5, lua_pushfstring(L, "timeout %s", problem));
    struct bq_feed_out out = {NULL, 0, 0};
    bq_err err;
    bq_status st = c->broker->ops->feed_read(c->broker, &c->feed_rd, q, after, (size_t)count,
                                             timeout, &out, &err);
    if (st != BQ_OK) {
        bq_feed_out_free(&out);
        return client_fail(L, c, &err);
    }
    lua_createtable(L, (int)out.n, 0);
    for (size_t i = 0; i < out.n; i++) {
        lua_createtable(L, 2, 0);
        lua_pushstring(L, out.e[i].id);
        lua_rawseti(L, -2, 1);
        lua_pushlstring(L, out.e[i].json, out.e[i].len);
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    bq_feed_out_free(&out);
    return 1;
}

/* c:feed_last(queue) -> id | nil, msg, code */
static int l_client_feed_last(lua_State *L)
{
    bq_client *c = check_open(L);
    const char *q = check_queue(L, 2, c);
    char id[BQ_FEED_ID_MAX];
    bq_err err;
    if (c->broker->ops->feed_last(c->broker, q, id, &err) != BQ_OK)
        return client_fail(L, c, &err);
    lua_pushstring(L, id);
    return 1;
}

/* c:feed_max() -> entries each queue's stream keeps, or nil when task events are off */
static int l_client_feed_max(lua_State *L)
{
    bq_client *c = check_open(L);
    if (c->cfg.events_max > 0)
        lua_pushinteger(L, (lua_Integer)c->cfg.events_max);
    else
        lua_pushnil(L);
    return 1;
}

/* c:node() -> role, address | nil, msg, code */
static int l_client_node(lua_State *L)
{
    bq_client *c = check_open(L);
    char role[32], addr[160];
    bq_err err;
    if (c->broker->admin->node(c->broker, role, sizeof role, addr, sizeof addr, &err) != BQ_OK)
        return client_fail(L, c, &err);
    lua_pushstring(L, role);
    lua_pushstring(L, addr);
    return 2;
}

/* Pushes a reply as a Lua value: string, integer, array (table), nil; error replies are
 * not seen here (the call turned them into errors). */
static void push_reply(lua_State *L, const redisReply *r)
{
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, r->str, r->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushinteger(L, (lua_Integer)r->integer);
        break;
    case REDIS_REPLY_ARRAY:
        luaL_checkstack(L, 4, "reply too deep");
        lua_createtable(L, (int)r->elements, 0);
        for (size_t i = 0; i < r->elements; i++) {
            push_reply(L, r->element[i]);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    default:
        lua_pushboolean(L, 0); /* nil reply: false keeps array slots */
        break;
    }
}

static int reply_gc(lua_State *L)
{
    void **p = lua_touserdata(L, 1);
    if (*p != NULL)
        freeReplyObject(*p);
    *p = NULL;
    return 0;
}

/* c:command(queue, arg, ...) -> reply | nil, msg, code. For the admin commands: one plain
 * command on the node of `queue` (Redis only). */
static int l_client_command(lua_State *L)
{
    bq_client *c = check_open(L);
    const char *queue = luaL_checkstring(L, 2);
    int argc = lua_gettop(L) - 2;
    if (argc < 1 || argc > 64)
        return luaL_error(L, "command: 1 to 64 arguments");
    const char *argv[64];
    size_t lens[64];
    for (int i = 0; i < argc; i++)
        argv[i] = luaL_checklstring(L, i + 3, &lens[i]);
    void **holder = lua_newuserdatauv(L, sizeof *holder, 0); /* frees the reply on a raise */
    *holder = NULL;
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, reply_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    bq_err err;
    if (c->broker->admin->command(c->broker, queue, argc, argv, lens, holder, &err) != BQ_OK)
        return client_fail(L, c, &err);
    push_reply(L, *holder);
    freeReplyObject(*holder);
    *holder = NULL;
    return 1;
}

static int batch_gc(lua_State *L)
{
    bq_batch_free(lua_touserdata(L, 1));
    return 0;
}

/* Pushes a userdata holding an empty batch that __gc frees, so a memory error raised while
 * copying the batch into Lua cannot leak it. */
static struct bq_batch *push_batch_guard(lua_State *L)
{
    struct bq_batch *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    if (luaL_newmetatable(L, "binduq.BatchGuard")) {
        lua_pushcfunction(L, batch_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return b;
}

/* Pushes the messages of b as a list of strings, and frees them (b stays guarded). */
static void push_strings(lua_State *L, struct bq_batch *b)
{
    lua_createtable(L, (int)b->n, 0);
    for (size_t i = 0; i < b->n; i++) {
        lua_pushlstring(L, b->msgs[i].data, b->msgs[i].len);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    bq_batch_free(b);
}

static int l_client_range(lua_State *L)
{
    bq_client *c = check_open(L);
    enum bq_list which = check_which(L, 2);
    long start = (long)luaL_optinteger(L, 3, 0), stop = (long)luaL_optinteger(L, 4, -1);
    const char *queue = luaL_optstring(L, 5, c->cfg.queue_name);
    struct bq_batch *b = push_batch_guard(L);
    bq_err err;
    if (c->broker->admin->range(c->broker, queue, which, start, stop, b, &err) != BQ_OK)
        return client_fail(L, c, &err);
    push_strings(L, b);
    return 1;
}

/* core.memory_warning() -> the warning text, the first time a producer of this process
 * schedules to the in-memory scheduler while no worker has started here; else nil. */
static int l_memory_warning(lua_State *L)
{
    if (bq_memory_warning_due())
        lua_pushliteral(L, BQ_MEMORY_WARNING);
    else
        lua_pushnil(L);
    return 1;
}

/* ---- Admin (src/broker/admin.h) ------------------------------------------------------------ */

/* c:stats([queue [, detail]]) -> {ready=, delayed=, inflight=, dead=, workers=<live>, seen=,
 * records = {{id=, lease_left=, inflight=, first=}, ...} (detail)} | nil, msg, code */
static int l_client_stats(lua_State *L)
{
    bq_client *c = check_open(L);
    const char *queue = luaL_optstring(L, 2, c->cfg.queue_name);
    bool detail = lua_toboolean(L, 3);
    struct bq_queue_stats st;
    bq_err err;
    if (bq_admin_stats(c->broker, queue, detail, &st, &err) != BQ_OK)
        return client_fail(L, c, &err);
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, (lua_Integer)st.ready);
    lua_setfield(L, -2, "ready");
    lua_pushinteger(L, (lua_Integer)st.delayed);
    lua_setfield(L, -2, "delayed");
    lua_pushinteger(L, (lua_Integer)st.inflight);
    lua_setfield(L, -2, "inflight");
    lua_pushinteger(L, (lua_Integer)st.dead);
    lua_setfield(L, -2, "dead");
    lua_pushinteger(L, (lua_Integer)st.live);
    lua_setfield(L, -2, "workers");
    lua_pushboolean(L, st.seen);
    lua_setfield(L, -2, "seen");
    lua_pushstring(L, queue);
    lua_setfield(L, -2, "queue");
    if (detail) {
        lua_createtable(L, (int)st.nworkers, 0);
        for (size_t i = 0; i < st.nworkers; i++) {
            const struct bq_worker_rec *w = &st.workers[i];
            lua_createtable(L, 0, 4);
            lua_pushlstring(L, w->id, w->id_len);
            lua_setfield(L, -2, "id");
            lua_pushnumber(L, w->lease_left);
            lua_setfield(L, -2, "lease_left");
            lua_pushinteger(L, (lua_Integer)w->inflight);
            lua_setfield(L, -2, "inflight");
            if (w->first != NULL) {
                lua_pushlstring(L, w->first, w->first_len);
                lua_setfield(L, -2, "first");
            }
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        lua_setfield(L, -2, "records");
    }
    bq_queue_stats_free(&st);
    return 1;
}

/* c:peek([queue [, limit]]) -> {message, ...} oldest first | nil, msg, code */
static int l_client_peek(lua_State *L)
{
    bq_client *c = check_open(L);
    const char *queue = luaL_optstring(L, 2, c->cfg.queue_name);
    lua_Integer limit = luaL_optinteger(L, 3, 10);
    luaL_argcheck(L, limit >= 1 && limit <= 100000, 3, "limit must be from 1 to 100000");
    struct bq_batch *b = push_batch_guard(L);
    bq_err err;
    if (bq_admin_peek(c->broker, queue, (long)limit, b, &err) != BQ_OK)
        return client_fail(L, c, &err);
    push_strings(L, b);
    return 1;
}

static void purge_progress(void *ud, long long done, long long left)
{
    lua_State *L = ud;
    if (!lua_isfunction(L, 4))
        return;
    lua_pushvalue(L, 4);
    lua_pushinteger(L, (lua_Integer)done);
    lua_pushinteger(L, (lua_Integer)left);
    lua_call(L, 2, 0);
}

/* c:purge_ready([queue [, chunk [, progress(done, left)]]]) -> removed | nil, msg, code */
static int l_client_purge_ready(lua_State *L)
{
    bq_client *c = check_open(L);
    const char *queue = luaL_optstring(L, 2, c->cfg.queue_name);
    lua_Integer chunk = luaL_optinteger(L, 3, 1000);
    lua_settop(L, 4);
    long long removed = 0;
    bq_err err;
    if (bq_admin_purge_ready(c->broker, queue, (long)chunk, &removed, purge_progress, L, &err) !=
        BQ_OK)
        return client_fail(L, c, &err);
    lua_pushinteger(L, (lua_Integer)removed);
    return 1;
}

/* c:queues([queue [, max_keys]]) -> {name, ...} sorted, partial | nil, msg, code: the queues
 * with keys on the node of `queue`. */
static int l_client_queues(lua_State *L)
{
    bq_client *c = check_open(L);
    const char *queue = luaL_optstring(L, 2, c->cfg.queue_name);
    lua_Integer max = luaL_optinteger(L, 3, 10000);
    struct bq_batch *b = push_batch_guard(L);
    bool partial = false;
    bq_err err;
    if (bq_admin_queues(c->broker, queue, (long)max, b, &partial, &err) != BQ_OK)
        return client_fail(L, c, &err);
    push_strings(L, b);
    lua_pushboolean(L, partial);
    return 2;
}

/* c:dlq_requeue(entry) / c:dlq_remove(entry) [, queue] */
static int dlq_entry_op(lua_State *L, bool requeue)
{
    bq_client *c = check_open(L);
    size_t len;
    const char *entry = luaL_checklstring(L, 2, &len);
    const char *queue = luaL_optstring(L, 3, c->cfg.queue_name);
    bool done = false;
    bq_err err;
    bq_status st = requeue ? c->broker->admin->dlq_requeue(c->broker, queue,
                                                          (struct bq_slice){entry, len}, &done,
                                                          &err)
                           : c->broker->admin->dlq_remove(c->broker, queue,
                                                         (struct bq_slice){entry, len}, &done,
                                                         &err);
    if (st != BQ_OK)
        return client_fail(L, c, &err);
    lua_pushboolean(L, done);
    return 1;
}

static int l_client_dlq_requeue(lua_State *L)
{
    return dlq_entry_op(L, true);
}

static int l_client_dlq_remove(lua_State *L)
{
    return dlq_entry_op(L, false);
}

static int l_client_dlq_purge(lua_State *L)
{
    bq_client *c = check_open(L);
    const char *queue = luaL_optstring(L, 2, c->cfg.queue_name);
    long long n = 0;
    bq_err err;
    if (c->broker->admin->dlq_purge(c->broker, queue, &n, &err) != BQ_OK)
        return client_fail(L, c, &err);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

static int l_client_ping(lua_State *L)
{
    bq_client *c = check_open(L);
    double rtt;
    bq_err err;
    if (c->broker->ops->ping(c->broker, &rtt, &err) != BQ_OK)
        return client_fail(L, c, &err);
    lua_pushnumber(L, rtt);
    return 1;
}

/* c:order([queue]) -> "lpush" | "rpush": which end producers push to (bq_orders). */
static int l_client_order(lua_State *L)
{
    bq_client *c = check_open(L);
    const char *queue = luaL_optstring(L, 2, c->cfg.queue_name);
    lua_pushstring(L, bq_order_name(bq_orders_of(&c->broker->orders, queue)));
    return 1;
}

static int l_client_info(lua_State *L)
{
    bq_client *c = check_open(L);
    lua_createtable(L, 0, 8);
    lua_pushstring(L, c->broker->kind);
    lua_setfield(L, -2, "backend");
    lua_pushstring(L, c->broker->address);
    lua_setfield(L, -2, "address");
    lua_pushstring(L, c->cfg.queue_name);
    lua_setfield(L, -2, "queue_name");
    lua_pushinteger(L, c->cfg.max_connections);
    lua_setfield(L, -2, "max_connections");
    lua_pushnumber(L, c->cfg.connect_timeout);
    lua_setfield(L, -2, "connect_timeout");
    lua_pushnumber(L, c->cfg.command_timeout);
    lua_setfield(L, -2, "command_timeout");
    lua_pushnumber(L, c->cfg.pool_timeout);
    lua_setfield(L, -2, "pool_timeout");
    if (c->cfg.retry_on_timeout >= 0) {
        lua_pushboolean(L, c->cfg.retry_on_timeout);
        lua_setfield(L, -2, "retry_on_timeout");
    }
    if (c->cfg.url != NULL) {
        char red[512];
        bq_url_redact(c->cfg.url, red, sizeof red);
        lua_pushstring(L, red);
        lua_setfield(L, -2, "url");
        lua_pushstring(L, c->cfg.url_source);
        lua_setfield(L, -2, "url_source");
    }
    return 1;
}

static const luaL_Reg client_methods[] = {
    {"push", l_client_push},   {"length", l_client_length}, {"range", l_client_range},
    {"push_unique", l_client_push_unique}, {"push_delayed", l_client_push_delayed},
    {"cron", l_client_cron},
    {"ping", l_client_ping},   {"info", l_client_info}, {"order", l_client_order},     {"close", l_client_close},
    {"dlq_requeue", l_client_dlq_requeue}, {"dlq_remove", l_client_dlq_remove},
    {"dlq_purge", l_client_dlq_purge}, {"publish", l_client_publish},
    {"node", l_client_node},   {"command", l_client_command},
    {"stats", l_client_stats}, {"peek", l_client_peek}, {"purge_ready", l_client_purge_ready},
    {"queues", l_client_queues},
    {"feed_add", l_client_feed_add}, {"feed_post", l_client_feed_post}, {"feed_read", l_client_feed_read},
    {"feed_last", l_client_feed_last}, {"feed_max", l_client_feed_max},
    {NULL, NULL},
};

static const luaL_Reg client_meta[] = {
    {"__gc", l_client_close},
    {"__close", l_client_close},
    {"__tostring", l_client_tostring},
    {NULL, NULL},
};

void bq_lua_open_client(lua_State *L)
{
    if (luaL_newmetatable(L, BQ_CLIENT_MT)) {
        luaL_setfuncs(L, client_meta, 0);
        luaL_newlib(L, client_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_client_new);
    lua_setfield(L, -2, "client");
    lua_pushcfunction(L, l_memory_warning);
    lua_setfield(L, -2, "memory_warning");
}
