/*
 * l_produce.c -- core.prepare_runs: the Lua producer's fast path for lists of plain runs.
 *
 *   core.prepare_runs(store, ops, queue) -> batch | false | nil, message, code
 *
 * A Scheduler with no route or dedup_key policy hands its operations here first. When every
 * one is a run of the common shape
 *
 *   { type = "run", task_id = <string>, conversation_id = <string>?, timestamp = <string>?,
 *     messages = { <string> | {role = <string>, content = <string>}, ... } }
 *
 * (ids of 1 to 256 bytes without NUL, all strings valid UTF-8, plain tables without
 * metatables), each is recorded "submitted" in `store` and encoded. The JSON is what
 * task.lua's encode writes for the same operation: same fields, same order.
 *
 * The result is a binduq.Batch: the messages in one buffer, with their task ids and their
 * deduplication keys ("run:<id>"), which c:push and c:push_unique take in place of lists of
 * strings, so no message becomes a Lua string. #batch is its length; batch:get(i) returns
 * message, task_id and key i.
 *
 * Anything else -- another field, another type, a value task.lua would refuse -- returns
 * false before anything is stored, and the caller takes task.lua's general path, which gives
 * the exact error. So the rules and texts stay in one place; this file only has to be sure
 * that what it accepts, task.lua would accept and encode the same way. A storage failure
 * returns nil, message, code; the runs before it are recorded (as on the general path).
 */
#include "binding.h"

#include "../core/alloc.h"
#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/id.h"
#include "../core/rand.h"
#include "../engine/client.h"
#include "../engine/metrics.h"
#include "../engine/task.h"
#include "../storage/storage.h"

#include <stdio.h>
#include <string.h>


/* The keys an operation of the fast path may have, the value "run", and the keys of a
 * message table: upvalues 1 to K_COUNT of core.prepare_runs; their addresses are K_ADDRS. */
enum { K_TYPE = 1, K_TASK_ID, K_CONVERSATION_ID, K_MESSAGES, K_TIMESTAMP, K_RUN, K_ROLE,
       K_CONTENT, K_COUNT = K_CONTENT, K_ADDRS };
static const char *const key_names[K_COUNT] = {
    "type", "task_id", "conversation_id", "messages", "timestamp", "run", "role", "content",
};

/* Kept by the closure: the addresses of the key strings. Short strings are interned, so a
 * key is one of ours exactly when lua_tostring gives the same address (the upvalues keep the
 * strings alive). */
struct key_addrs {
    const char *key[K_COUNT + 1];
};

/* The address of the string at i, NULL for any other type: compared with ka->key[]. */
static const char *str_at(lua_State *L, int i)
{
    return lua_type(L, i) == LUA_TSTRING ? lua_tostring(L, i) : NULL;
}

/* A table without a metatable (whose reads no metamethod can change). */
static bool plain_table(lua_State *L, int i)
{
    if (lua_type(L, i) != LUA_TTABLE)
        return false;
    if (lua_getmetatable(L, i) == 0)
        return true;
    lua_pop(L, 1);
    return false;
}

/* Whether the value at i is a string task.lua's check_id accepts (and storage can keep). */
static bool good_id(lua_State *L, int i)
{
    if (lua_type(L, i) != LUA_TSTRING)
        return false;
    size_t n;
    const char *s = lua_tolstring(L, i, &n);
    return bq_id_check(s, n, NULL);
}

static bool good_text(lua_State *L, int i)
{
    if (lua_type(L, i) != LUA_TSTRING)
        return false;
    size_t n;
    const char *s = lua_tolstring(L, i, &n);
    return bq_utf8_valid(s, n, NULL);
}

/* A message table of exactly {role = <non-empty string>, content = <string>}. */
static bool good_message_table(lua_State *L, const struct key_addrs *ka, int m)
{
    if (!plain_table(L, m))
        return false;
    int seen = 0;
    lua_pushnil(L);
    while (lua_next(L, m) != 0) {
        const char *k = str_at(L, -2);
        bool ok = (k == ka->key[K_ROLE] && good_text(L, -1) && lua_rawlen(L, -1) > 0) ||
                  (k == ka->key[K_CONTENT] && good_text(L, -1));
        lua_pop(L, 1);
        if (!ok) {
            lua_pop(L, 1);
            return false;
        }
        seen++;
    }
    return seen == 2;
}

/* Whether the operation at index op takes the fast path. */
static bool fast_run(lua_State *L, const struct key_addrs *ka, int op)
{
    if (!plain_table(L, op))
        return false;
    int top = lua_gettop(L);
    bool ok = true;
    lua_pushnil(L);
    while (ok && lua_next(L, op) != 0) {
        int v = lua_gettop(L);
        const char *k = str_at(L, v - 1);
        if (k == NULL)
            ok = false;
        else if (k == ka->key[K_TYPE])
            ok = str_at(L, v) == ka->key[K_RUN];
        else if (k == ka->key[K_TASK_ID] || k == ka->key[K_CONVERSATION_ID])
            ok = good_id(L, v);
        else if (k == ka->key[K_TIMESTAMP])
            ok = good_text(L, v);
        else if (k == ka->key[K_MESSAGES]) {
            /* ipairs' list, at least one: strings or plain message tables. */
            lua_Integer i = 1;
            if (plain_table(L, v)) {
                for (; ok && lua_rawgeti(L, v, i) != LUA_TNIL; i++) {
                    ok = lua_type(L, -1) == LUA_TSTRING ? good_text(L, -1)
                                                         : good_message_table(L, ka, v + 1);
                    lua_pop(L, 1);
                }
            }
            ok = ok && i > 1;
        } else
            ok = false;
        lua_settop(L, v - 1);
    }
    if (ok) {
        lua_pushvalue(L, lua_upvalueindex(K_TYPE));
        ok = lua_rawget(L, op) != LUA_TNIL;
        lua_pushvalue(L, lua_upvalueindex(K_TASK_ID));
        ok = ok && lua_rawget(L, op) != LUA_TNIL;
        lua_pushvalue(L, lua_upvalueindex(K_MESSAGES));
        ok = ok && lua_rawget(L, op) != LUA_TNIL;
    }
    lua_settop(L, top);
    return ok;
}

/* Pushes op[key] (a plain table: no metamethods). */
static int field(lua_State *L, int op, int key)
{
    lua_pushvalue(L, lua_upvalueindex(key));
    return lua_rawget(L, op);
}

static void put_json_str(bq_buf *b, lua_State *L, int i)
{
    size_t n;
    const char *s = lua_tolstring(L, i, &n);
    bq_buf_json_str(b, s, n);
}

/* Appends the (checked) list of messages at `list` to b, as a JSON array, each as the C
 * producer writes it (bq_task_put_message): the history both record is the same bytes. */
static void encode_list(lua_State *L, int list, bq_buf *b)
{
    BQ_BUF_LIT(b, "[");
    for (lua_Integer i = 1; lua_rawgeti(L, list, i) != LUA_TNIL; i++) {
        int m = lua_gettop(L);
        if (i > 1)
            BQ_BUF_LIT(b, ",");
        size_t rn, cn;
        const char *role, *content;
        if (lua_type(L, m) == LUA_TSTRING) {
            role = "user";
            rn = 4;
            content = lua_tolstring(L, m, &cn);
        } else {
            field(L, m, K_ROLE);
            role = lua_tolstring(L, -1, &rn);
            field(L, m, K_CONTENT);
            content = lua_tolstring(L, -1, &cn);
        }
        bq_task_put_message(b, role, rn, content, cn); /* the strings are on the stack */
        lua_settop(L, list);
    }
    lua_pop(L, 1); /* the nil */
    BQ_BUF_LIT(b, "]");
}

/* Appends the messages of the (checked) operation at op to b, as a JSON array. */
static void encode_messages(lua_State *L, int op, bq_buf *b)
{
    field(L, op, K_MESSAGES);
    encode_list(L, lua_gettop(L), b);
    lua_pop(L, 1);
}

/* ---- core.messages_json: the same bytes for task.lua's general path ------------------------ */

#define JSONBUF_MT "binduq.JsonBuffer"

static int jsonbuf_gc(lua_State *L)
{
    bq_buf_free(luaL_checkudata(L, 1, JSONBUF_MT));
    return 0;
}

/* core.messages_json(list) -> text | false
 * The JSON array of a list of messages, each a string (a user message) or a plain table of
 * exactly {role = <non-empty string>, content = <string>}, written as the fast path and the
 * C producer write it; false for any other list, which task.lua encodes with lua-cjson
 * (whose key order follows the table's hash order, and which writes '/' as "\/"). */
static int l_messages_json(lua_State *L)
{
    const struct key_addrs *ka = lua_touserdata(L, lua_upvalueindex(K_ADDRS));
    lua_settop(L, 1);
    luaL_checkstack(L, 8, NULL);
    bool ok = plain_table(L, 1);
    lua_Integer n = 0;
    while (ok && lua_rawgeti(L, 1, n + 1) != LUA_TNIL) {
        ok = lua_type(L, 2) == LUA_TSTRING ? good_text(L, 2) : good_message_table(L, ka, 2);
        lua_pop(L, 1);
        n++;
    }
    lua_settop(L, 1);
    if (!ok || n == 0 || lua_rawlen(L, 1) != (size_t)n) {
        lua_pushboolean(L, 0);
        return 1;
    }
    /* The buffer lives in a userdata, so a memory error while pushing frees it. */
    bq_buf *b = lua_newuserdatauv(L, sizeof *b, 0); /* 2 */
    memset(b, 0, sizeof *b);
    luaL_setmetatable(L, JSONBUF_MT);
    encode_list(L, 1, b);
    if (b->oom)
        return luaL_error(L, "schedule: out of memory");
    lua_pushlstring(L, b->p, b->len);
    bq_buf_free(b);
    return 1;
}

/* ---- binduq.Batch: the encoded messages of one call ---------------------------------------- */

static int batch_gc(lua_State *L)
{
    struct bq_lua_batch *b = luaL_checkudata(L, 1, BQ_BATCH_MT);
    bq_free(b->msgs); /* the block of all four arrays */
    bq_buf_free(&b->data);
    memset(b, 0, sizeof *b);
    return 0;
}

static int batch_len(lua_State *L)
{
    struct bq_lua_batch *b = luaL_checkudata(L, 1, BQ_BATCH_MT);
    lua_pushinteger(L, (lua_Integer)b->n);
    return 1;
}

/* b:get(i) -> message, task_id, dedup key (for tests and tools) */
static int batch_get(lua_State *L)
{
    struct bq_lua_batch *b = luaL_checkudata(L, 1, BQ_BATCH_MT);
    lua_Integer i = luaL_checkinteger(L, 2);
    if (i < 1 || (size_t)i > b->n)
        return 0;
    lua_pushlstring(L, b->msgs[i - 1].p, b->msgs[i - 1].len);
    lua_pushstring(L, b->ids[i - 1]);
    lua_pushstring(L, b->keys[i - 1]);
    return 3;
}

const struct bq_lua_batch *bq_lua_test_batch(lua_State *L, int idx)
{
    return luaL_testudata(L, idx, BQ_BATCH_MT);
}

/* The batch's arrays for n messages; raises when memory is short (the GC frees it). */
static struct bq_lua_batch *new_batch(lua_State *L, size_t n)
{
    struct bq_lua_batch *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    luaL_setmetatable(L, BQ_BATCH_MT);
    size_t k = n ? n : 1;
    /* One block for the four arrays (the slices first: the strictest alignment), and the
     * text buffer sized for typical messages, so it rarely grows. */
    size_t each = sizeof *b->msgs + sizeof *b->keys + sizeof *b->ids + 2 * sizeof *b->offs;
    char *block = k <= SIZE_MAX / each ? bq_malloc(k * each) : NULL;
    if (block == NULL)
        luaL_error(L, "schedule: out of memory");
    b->msgs = (struct bq_slice *)(void *)block;
    b->keys = (const char **)(void *)(block + k * sizeof *b->msgs);
    b->ids = b->keys + k;
    b->offs = (size_t *)(void *)(b->ids + k);
    size_t start = (k < 2048 ? k : 2048) * 512; /* at most 1 MiB up front; then it doubles */
    b->data.p = bq_malloc(start);
    b->data.cap = b->data.p ? start : 0;
    return b;
}

/* Whether ops[first..n] of the list at `list` are all runs of the fast path (no metatable on
 * the list either). */
static bool all_fast(lua_State *L, const struct key_addrs *ka, int list, size_t first, size_t n)
{
    if (lua_getmetatable(L, list)) {
        lua_pop(L, 1);
        return false;
    }
    for (size_t i = first; i <= n; i++) {
        lua_rawgeti(L, list, (lua_Integer)i);
        bool ok = fast_run(L, ka, lua_gettop(L));
        lua_pop(L, 1);
        if (!ok)
            return false;
    }
    return true;
}

/* Records ops[first..first + m) of the list at `list` (checked by all_fast) "submitted" in
 * store and encodes them into a new binduq.Batch, left on the stack. A storage failure
 * returns its status (err set), the runs before it recorded; memory short raises. */
static bq_status encode_runs(lua_State *L, bq_storage *store, int list, const char *queue,
                             size_t first, size_t m, bq_err *err)
{
    luaL_checkstack(L, 24, NULL);
    struct bq_lua_batch *b = new_batch(L, m);
    int bidx = lua_gettop(L);
    bq_buf *d = &b->data;
    /* A storage that records many tasks in one round trip (Redis) gets them together at the
     * end: each task's id, conversation and history are copied after its message, at these
     * offsets (3 a task). Otherwise each is recorded as it is encoded. */
    size_t *aoff = NULL;
    if (store->ops->create_many != NULL && m > 1)
        aoff = lua_newuserdatauv(L, 3 * m * sizeof *aoff, 0);
    int top = lua_gettop(L);
    for (size_t i = 0; i < m; i++) {
        lua_rawgeti(L, list, (lua_Integer)(first + i)); /* top + 1: the operation */
        int op = top + 1;
        field(L, op, K_TASK_ID);
        field(L, op, K_CONVERSATION_ID);
        field(L, op, K_TIMESTAMP); /* top + 4 */
        size_t id_len;
        const char *id = lua_tolstring(L, top + 2, &id_len);
        char uuid[37];
        const char *conv = lua_tostring(L, top + 3);
        if (conv == NULL) {
            bq_uuid4(uuid);
            conv = uuid;
        }
        /* "run:<id>\0" (the dedup key; the id follows the prefix), then the message. */
        b->offs[2 * i] = d->len;
        BQ_BUF_LIT(d, "run:");
        bq_buf_append(d, id, id_len + 1);
        b->offs[2 * i + 1] = d->len;
        BQ_BUF_LIT(d, "{\"type\":\"run\",\"task_id\":");
        bq_buf_json_str(d, id, id_len);
        BQ_BUF_LIT(d, ",\"conversation_id\":");
        if (conv == uuid) {
            BQ_BUF_LIT(d, "\"");
            bq_buf_append(d, uuid, 36);
            BQ_BUF_LIT(d, "\"");
        } else {
            put_json_str(d, L, top + 3);
        }
        BQ_BUF_LIT(d, ",\"messages\":");
        size_t history = d->len;
        encode_messages(L, op, d);
        if (d->oom)
            return luaL_error(L, "schedule: out of memory");
        /* The buffer is NUL-terminated after every append: the array is the history. */
        size_t hlen = d->len - history;
        if (aoff == NULL) {
            struct bq_task_new t = {id, conv, queue, NULL, d->p + history, NULL, NULL, 0, NULL};
            struct bq_task_result res;
            if (store->ops->create(store, &t, &res, err) != BQ_OK) {
                lua_settop(L, bidx);
                return err->code;
            }
        }
        BQ_BUF_LIT(d, ",\"artifacts\":[],\"timestamp\":");
        if (lua_isnil(L, top + 4)) {
            char ts[40];
            bq_iso8601(bq_now_wall(), ts, sizeof ts);
            BQ_BUF_LIT(d, "\"");
            bq_buf_puts(d, ts);
            BQ_BUF_LIT(d, "\"");
        } else {
            put_json_str(d, L, top + 4);
        }
        BQ_BUF_LIT(d, "}");
        b->msgs[i].len = d->len - b->offs[2 * i + 1];
        if (aoff != NULL) {
            char *h = bq_malloc(hlen + 1); /* d may move as it grows: copy out first */
            if (h == NULL)
                return luaL_error(L, "schedule: out of memory");
            memcpy(h, d->p + history, hlen);
            h[hlen] = '\0';
            aoff[3 * i] = d->len;
            bq_buf_append(d, id, id_len + 1);
            aoff[3 * i + 1] = d->len;
            bq_buf_append(d, conv, strlen(conv) + 1);
            aoff[3 * i + 2] = d->len;
            bq_buf_append(d, h, hlen + 1);
            bq_free(h);
        }
        lua_settop(L, top);
    }
    if (d->oom)
        return luaL_error(L, "schedule: out of memory");
    /* The buffer no longer moves: offsets become pointers. */
    for (size_t i = 0; i < m; i++) {
        b->keys[i] = d->p + b->offs[2 * i];
        b->ids[i] = b->keys[i] + 4;
        b->msgs[i].p = d->p + b->offs[2 * i + 1];
    }
    b->n = m;
    if (aoff != NULL) {
        struct bq_task_new t[BQ_CHANGE_MANY_MAX];
        struct bq_task_result res[BQ_CHANGE_MANY_MAX];
        for (size_t i = 0; i < m; i += BQ_CHANGE_MANY_MAX) {
            size_t k = m - i < BQ_CHANGE_MANY_MAX ? m - i : BQ_CHANGE_MANY_MAX;
            for (size_t j = 0; j < k; j++) {
                const size_t *o = &aoff[3 * (i + j)];
                t[j] = (struct bq_task_new){d->p + o[0], d->p + o[1], queue, NULL, d->p + o[2],
                                            NULL, NULL, 0, NULL};
            }
            if (store->ops->create_many(store, t, k, res, err) != BQ_OK) {
                lua_settop(L, bidx);
                return err->code;
            }
        }
    }
    lua_settop(L, bidx);
    return BQ_OK;
}

static int l_prepare_runs(lua_State *L)
{
    bq_storage *store = bq_lua_check_storage(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    const char *queue = luaL_checkstring(L, 3);
    lua_settop(L, 3);
    luaL_checkstack(L, 24, NULL);
    const struct key_addrs *ka = lua_touserdata(L, lua_upvalueindex(K_ADDRS));
    size_t n = lua_rawlen(L, 2);
    if (!all_fast(L, ka, 2, 1, n)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    bq_err err;
    if (encode_runs(L, store, 2, queue, 1, n, &err) != BQ_OK)
        return bq_lua_fail(L, &err);
    return 1;
}

/* The operations core.push_runs sends at once: a list of fewer than 2 x RUNS_PIECE goes
 * whole; a longer one in pieces of RUNS_PIECE to 2 x RUNS_PIECE - 1, as even as they come. A
 * piece is encoded while the server works on the one before, so the time a producer spends
 * encoding and recording (about as long as Redis spends on a deduplicated push) overlaps
 * Redis'. Each piece costs a round trip (two with deduplication: MULTI is answered first);
 * at 256, a few per cent of the piece's time. */
#define RUNS_PIECE 256

/* encode_runs in a protected call, so that core.push_runs reads the answer of the piece in
 * flight before a failure to encode the next (memory short) is raised: a C closure with
 * core.push_runs' upvalues, called with (store, list, queue, first, m, err) (store and err
 * light userdata), returning the batch (or nil) and the status. */
static int encode_protected(lua_State *L)
{
    bq_storage *store = lua_touserdata(L, 1);
    bq_err *err = lua_touserdata(L, 6);
    bq_status st = encode_runs(L, store, 2, lua_tostring(L, 3), (size_t)lua_tointeger(L, 4),
                               (size_t)lua_tointeger(L, 5), err);
    if (st != BQ_OK)
        lua_pushnil(L);
    lua_pushinteger(L, st);
    return 2;
}

/* core.push_runs(store, client, ops, queue, ttl|nil, pushed [, from])
 *   -> sent, duplicates | false | nil, message, code, decided, sent, duplicates
 * ops[from..] (from 1 by default), when all are runs of the fast path (else false, with
 * nothing done), are recorded, encoded and pushed to `queue` through `client`, in order, in
 * pieces (RUNS_PIECE); with a ttl, deduplicated by their keys "run:<id>" for ttl seconds.
 * pushed[i] is set for each operation decided: true if it was pushed, false for a duplicate.
 * Each piece's pushed runs have their "scheduled" task events posted (when events are on).
 * On a failure, ops[from..decided] are decided (and counted in sent and duplicates); the
 * rest were not pushed (or their push's answer was lost), though the piece that failed
 * may be recorded. */
static int l_push_runs(lua_State *L)
{
    bq_storage *store = bq_lua_check_storage(L, 1);
    bq_client *c = bq_lua_check_client(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    const char *queue = luaL_checkstring(L, 4);
    bool unique = !lua_isnil(L, 5);
    double ttl = unique ? bq_lua_check_duration(L, 5, "push_runs: the ttl") : 0;
    luaL_checktype(L, 6, LUA_TTABLE);
    lua_Integer from = luaL_optinteger(L, 7, 1);
    lua_settop(L, 7);
    luaL_checkstack(L, 24, NULL);
    const struct key_addrs *ka = lua_touserdata(L, lua_upvalueindex(K_ADDRS));
    size_t n = lua_rawlen(L, 3);
    if (from < 1)
        return luaL_argerror(L, 7, "from must be at least 1");
    if (!all_fast(L, ka, 3, (size_t)from, n)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    size_t left = (size_t)from <= n ? n - (size_t)from + 1 : 0;
    size_t pieces = left / RUNS_PIECE > 0 ? left / RUNS_PIECE : 1;
    size_t piece = left / pieces + (left % pieces != 0);
    bool *flags = lua_newuserdatauv(L, (piece ? piece : 1) * sizeof *flags, 0); /* 8 */
    struct bq_push_wait w = {.pushed = flags};
    long long sent = 0, dups = 0;
    size_t at = (size_t)from, wfirst = 0, decided = at - 1;
    bool inflight = false;
    bq_err err;
    bq_status st = BQ_OK;
    lua_pushnil(L); /* 9: encode_protected, made when first needed */
    int bidx = 0; /* the batch in flight, kept until its answer */
    while (st == BQ_OK && (at <= n || inflight)) {
        size_t m = n - at + 1 < piece ? n - at + 1 : piece;
        /* The next piece, encoded while the server works on the one in flight (then in a
         * protected call); the first, with nothing in flight, directly. */
        bq_status est = BQ_OK;
        int raised = LUA_OK;
        if (at <= n && !inflight) {
            est = encode_runs(L, store, 3, queue, at, m, &err);
        } else if (at <= n) {
            if (lua_isnil(L, 9)) {
                for (int i = 1; i <= K_ADDRS; i++)
                    lua_pushvalue(L, lua_upvalueindex(i));
                lua_pushcclosure(L, encode_protected, K_ADDRS);
                lua_replace(L, 9);
            }
            lua_pushvalue(L, 9);
            lua_pushlightuserdata(L, store);
            lua_pushvalue(L, 3);
            lua_pushvalue(L, 4);
            lua_pushinteger(L, (lua_Integer)at);
            lua_pushinteger(L, (lua_Integer)m);
            lua_pushlightuserdata(L, &err);
            if ((raised = lua_pcall(L, 6, 2, 0)) == LUA_OK) {
                est = (bq_status)lua_tointeger(L, -1);
                lua_pop(L, 1); /* the batch (nil on failure) stays */
            }
        }
        if (inflight) {
            const struct bq_lua_batch *wb = lua_touserdata(L, bidx);
            bq_err rerr;
            st = bq_client_push_recv(c, queue, wb->ids, &w, &rerr);
            if (st != BQ_OK) {
                err = rerr;
                break;
            }
            long long s1 = 0;
            for (size_t i = 0; i < w.n; i++) {
                s1 += flags[i];
                lua_pushboolean(L, flags[i]);
                lua_rawseti(L, 6, (lua_Integer)(wfirst + i));
            }
            sent += s1;
            dups += (long long)w.n - s1;
            bq_metrics_scheduled(queue, s1, (long long)w.n - s1);
            bq_client_emit_runs(c, queue, wb->ids, flags, w.n);
            decided = wfirst + w.n - 1;
            inflight = false;
            lua_remove(L, bidx);
        }
        if (raised != LUA_OK)
            return lua_error(L); /* the error object is on top */
        if ((st = est) != BQ_OK) { /* as task.lua's path says it */
            char msg[sizeof err.msg];
            memcpy(msg, err.msg, sizeof msg);
            bq_err_set(&err, st, "storage: %.*s", (int)sizeof msg - 10, msg);
            break;
        }
        if (at > n)
            break;
        bidx = lua_gettop(L);
        const struct bq_lua_batch *b = lua_touserdata(L, bidx);
        st = bq_client_push_send(c, queue, b->msgs, unique ? b->keys : NULL, m, ttl, &w, &err);
        inflight = st == BQ_OK;
        wfirst = at;
        at += m;
    }
    if (st != BQ_OK) {
        bq_lua_fail(L, &err);
        lua_pushinteger(L, (lua_Integer)decided);
        lua_pushinteger(L, sent);
        lua_pushinteger(L, dups);
        return 6;
    }
    lua_pushinteger(L, sent);
    lua_pushinteger(L, dups);
    return 2;
}

void bq_lua_open_produce(lua_State *L)
{
    struct key_addrs *ka = lua_newuserdatauv(L, sizeof *ka, 0);
    memset(ka, 0, sizeof *ka);
    for (int i = 0; i < K_COUNT; i++) {
        ka->key[i + 1] = lua_pushstring(L, key_names[i]);
        lua_insert(L, -2); /* the addresses stay on top, the last upvalue */
    }
    /* core.messages_json shares the key strings and their addresses. */
    for (int i = 1; i <= K_ADDRS; i++)
        lua_pushvalue(L, -K_ADDRS);
    lua_pushcclosure(L, l_messages_json, K_ADDRS);
    lua_setfield(L, -(K_ADDRS + 2), "messages_json");
    for (int i = 1; i <= K_ADDRS; i++)
        lua_pushvalue(L, -K_ADDRS);
    lua_pushcclosure(L, l_push_runs, K_ADDRS);
    lua_setfield(L, -(K_ADDRS + 2), "push_runs");
    lua_pushcclosure(L, l_prepare_runs, K_ADDRS);
    lua_setfield(L, -2, "prepare_runs");
    luaL_newmetatable(L, BQ_BATCH_MT);
    lua_pushcfunction(L, batch_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, batch_len);
    lua_setfield(L, -2, "__len");
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, batch_get);
    lua_setfield(L, -2, "get");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newmetatable(L, JSONBUF_MT);
    lua_pushcfunction(L, jsonbuf_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
}
