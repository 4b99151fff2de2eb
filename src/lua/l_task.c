/*
 * l_task.c -- core.decode_native(t): checks a task operation in binduq's native format, as
 * lua-cjson decoded it, and builds the task table a handler gets.
 *
 *   core.decode_native(t) -> task | nil, why, partial
 *
 * The rules and the error texts are those of lua/binduq/task.lua (which producers use to
 * encode and which decodes Bindu's format); this is its worker-side decoder of the native
 * format, in C because a worker runs it for every task (docs/design.md, "The native task
 * format is checked in C", has the measurements). Decoded input makes the checks cheap:
 * object keys are strings, so a non-empty array is exactly a table with [1]; JSON null is
 * lua-cjson's NULL light userdata. Messages are changed in place (nulls cleared, content
 * filled from parts): the table is the decoder's.
 *
 * `partial` is what a malformed message still tells about itself (type, task_id), for the log
 * and the dead-letter entry.
 */
#include "binding.h"

#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/escape.h"
#include "../core/id.h"
#include "../core/wire.h"

#include <stdio.h>
#include <string.h>

/* Every key the decoder reads or writes is an upvalue of core.decode_native, pushed once:
 * lua_rawget with it costs half of lua_getfield, which looks the C string up each time. The
 * optional fields come in the order of `optional_kind` below. */
enum {
    K_TYPE = 1, K_TASK_ID, K_CONVERSATION_ID, K_MESSAGES,
    K_ARTIFACTS, K_TIMESTAMP, K_METADATA, K_TRACE_ID, K_SPAN_ID, K_TRACEPARENT, K_TIMEOUT,
    K_MAX_ATTEMPTS,
    K_FORMAT, K_NATIVE, K_ROLE, K_CONTENT, K_PARTS, K_KIND, K_TEXT,
    K_COUNT = K_TEXT
};
/* Pushes v as task.show gives it: escaped by the one rule of core/escape.h, then cut to 40
 * bytes at a UTF-8 boundary. A hostile value never reaches a reason as it is. */
static void push_shown(lua_State *L, int idx)
{
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    bq_buf b = BQ_BUF_INIT;
    bq_escape(&b, s, n, BQ_ESC_DISPLAY);
    bool oom = b.oom;
    if (!oom)
        lua_pushlstring(L, b.p != NULL ? b.p : "", b.len);
    bq_buf_free(&b);
    if (oom)
        luaL_error(L, "out of memory");
    s = lua_tolstring(L, -1, &n);
    if (n > 40) {
        size_t cut = 38; /* back up to the start of a UTF-8 sequence */
        while (cut > 1 && ((unsigned char)s[cut - 1] & 0xC0) == 0x80)
            cut--;
        lua_pushlstring(L, s, cut - 1);
        lua_pushliteral(L, "...");
        lua_concat(L, 2);
        lua_remove(L, -2);
    }
}

static const char *const key_names[K_COUNT] = {
    "type", "task_id", "conversation_id", "messages",
    "artifacts", "timestamp", "metadata", "trace_id", "span_id", "traceparent", "timeout",
    "max_attempts",
    "format", "native", "role", "content", "parts", "kind", "text",
};

/* Pushes t[key] (t an absolute index, no metamethods: decoded tables have none). */
static int get(lua_State *L, int t, int key)
{
    lua_pushvalue(L, lua_upvalueindex(key));
    return lua_rawget(L, t);
}

/* t[key] = the value on top, which is popped. */
static void set(lua_State *L, int t, int key)
{
    lua_pushvalue(L, lua_upvalueindex(key));
    lua_insert(L, -2);
    lua_rawset(L, t);
}

static bool is_null(lua_State *L, int i)
{
    return lua_type(L, i) == LUA_TLIGHTUSERDATA && lua_touserdata(L, i) == NULL;
}

static bool absent(lua_State *L, int i)
{
    return lua_isnil(L, i) || is_null(L, i);
}

/* Whether the value at index i is the string lit (embedded zeros count). */
static bool str_is(lua_State *L, int i, const char *lit)
{
    size_t n;
    const char *s = lua_tolstring(L, i, &n);
    return n == strlen(lit) && memcmp(s, lit, n) == 0;
}

bool bq_lua_decoded_array(lua_State *L, int i)
{
    if (lua_type(L, i) != LUA_TTABLE)
        return false;
    i = lua_absindex(L, i);
    bool first = lua_rawgeti(L, i, 1) != LUA_TNIL;
    lua_pop(L, 1);
    if (first)
        return true;
    lua_pushnil(L);
    if (lua_next(L, i) == 0)
        return true; /* empty: an array as well as an object */
    lua_pop(L, 2);
    return false;
}

static bool dec_object(lua_State *L, int i)
{
    if (lua_type(L, i) != LUA_TTABLE)
        return false;
    bool first = lua_rawgeti(L, i, 1) != LUA_TNIL;
    lua_pop(L, 1);
    return !first;
}

/* Checks the id at index v; on failure pushes why and returns false. */
static bool check_id(lua_State *L, int v, const char *name, bool required)
{
    if (absent(L, v)) {
        if (required)
            lua_pushfstring(L, "%s is required", name);
        return !required;
    }
    if (lua_type(L, v) != LUA_TSTRING) {
        lua_pushfstring(L, "%s must be a string (got %s)", name, luaL_typename(L, v));
        return false;
    }
    size_t n;
    const char *s = lua_tolstring(L, v, &n);
    char why[BQ_ID_WHY_SIZE];
    if (bq_id_check(s, n, why))
        return true;
    lua_pushfstring(L, "%s %s", name, why);
    return false;
}

/* Pushes the text of an A2A message's parts (index p): the text of its parts of kind "text",
 * joined by single spaces, as Bindu's MessageConverter joins them (" ".join). */
static void push_parts_text(lua_State *L, int p)
{
    int top = lua_gettop(L), pieces = 0;
    for (lua_Integer i = 1; lua_rawgeti(L, p, i) != LUA_TNIL; i++) {
        int part = lua_gettop(L);
        bool text = false;
        if (lua_type(L, part) == LUA_TTABLE) {
            int kind = get(L, part, K_KIND);
            bool is_text = kind == LUA_TSTRING && str_is(L, -1, "text");
            lua_pop(L, 1);
            text = is_text && get(L, part, K_TEXT) == LUA_TSTRING;
            if (!text && is_text)
                lua_pop(L, 1);
        }
        lua_remove(L, part); /* leaves the text, if any */
        if (text) {
            luaL_checkstack(L, 2, "too many message parts");
            if (pieces++ > 0) {
                lua_pushliteral(L, " ");
                lua_insert(L, -2);
            }
        }
    }
    lua_pop(L, 1); /* the nil that ended the list */
    int n = lua_gettop(L) - top;
    if (n == 0)
        lua_pushliteral(L, "");
    else
        lua_concat(L, n);
}

/* Checks messages[i] (index m) in place; on failure pushes why and returns false. */
static bool dec_message(lua_State *L, int m, lua_Integer i)
{
    if (!dec_object(L, m)) {
        lua_pushfstring(L, "messages[%I] must be an object (got %s)", (LUAI_UACINT)i,
                        lua_type(L, m) == LUA_TTABLE ? "an array" : luaL_typename(L, m));
        return false;
    }
    int top = lua_gettop(L);
    int role = get(L, m, K_ROLE);
    if (role != LUA_TSTRING || lua_rawlen(L, -1) == 0) {
        lua_settop(L, top);
        lua_pushfstring(L, "messages[%I].role must be a non-empty string", (LUAI_UACINT)i);
        return false;
    }
    int content = top + 2, parts = top + 3;
    get(L, m, K_CONTENT);
    get(L, m, K_PARTS);
    if (is_null(L, content)) {
        lua_pushnil(L);
        lua_replace(L, content);
    }
    if (is_null(L, parts)) {
        lua_pushnil(L);
        lua_replace(L, parts);
    }
    const char *why = NULL;
    if (!lua_isnil(L, content) && lua_type(L, content) != LUA_TSTRING)
        why = lua_pushfstring(L, "messages[%I].content must be a string (got %s)",
                              (LUAI_UACINT)i, luaL_typename(L, content));
    else if (!lua_isnil(L, parts) && !bq_lua_decoded_array(L, parts))
        why = lua_pushfstring(L, "messages[%I].parts must be an array", (LUAI_UACINT)i);
    else if (lua_isnil(L, content) && lua_isnil(L, parts))
        why = lua_pushfstring(L, "messages[%I] needs content or parts", (LUAI_UACINT)i);
    if (why != NULL) {
        lua_replace(L, top + 1);
        lua_settop(L, top + 1);
        return false;
    }
    /* Nulls become absent fields (clearing existing fields during a traversal is allowed). */
    lua_pushnil(L);
    while (lua_next(L, m) != 0) {
        if (is_null(L, -1)) {
            lua_pushvalue(L, -2);
            lua_pushnil(L);
            lua_rawset(L, m);
        }
        lua_pop(L, 1);
    }
    if (lua_isnil(L, content)) {
        push_parts_text(L, parts);
        set(L, m, K_CONTENT);
    }
    lua_settop(L, top);
    return true;
}

/* What each optional field must hold, in key order from K_ARTIFACTS: a Lua type, or one of
 * these two (decoded JSON arrays and objects are both tables). */
enum { KIND_ARRAY = -1, KIND_OBJECT = -2 };
static const int optional_kind[] = {
    KIND_ARRAY, LUA_TSTRING, KIND_OBJECT, LUA_TSTRING, LUA_TSTRING, LUA_TSTRING, LUA_TNUMBER,
    LUA_TNUMBER,
};

/* Checks the optional field at index v (not absent); on failure pushes why, returns false. */
static bool check_optional(lua_State *L, int v, const char *name, int kind)
{
    if (kind == KIND_ARRAY) {
        if (bq_lua_decoded_array(L, v))
            return true;
        lua_pushfstring(L, "%s must be an array", name);
    } else if (kind == KIND_OBJECT) {
        if (dec_object(L, v))
            return true;
        lua_pushfstring(L, "%s must be an object", name);
    } else if (lua_type(L, v) == kind) {
        return true;
    } else {
        lua_pushfstring(L, "%s must be a %s (got %s)", name, lua_typename(L, kind),
                        luaL_typename(L, v));
    }
    return false;
}

/* Returns nil, the message on top of the stack, and the table at index what. */
static int fail(lua_State *L, int what)
{
    lua_pushnil(L);
    lua_insert(L, -2);
    lua_pushvalue(L, what);
    return 3;
}

/* Pushes {task_id = t.task_id} when that is a usable id, else {}. */
static void push_partial(lua_State *L, int t)
{
    lua_createtable(L, 0, 1);
    size_t n;
    if (get(L, t, K_TASK_ID) == LUA_TSTRING) {
        const char *s = lua_tolstring(L, -1, &n);
        if (bq_id_check(s, n, NULL)) {
            set(L, lua_gettop(L) - 1, K_TASK_ID);
            return;
        }
    }
    lua_pop(L, 1);
}

static int l_decode_native(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    get(L, 1, K_TYPE); /* 2 */
    if (lua_type(L, 2) != LUA_TSTRING) {
        lua_pushnil(L);
        lua_pushfstring(L, "type must be a string (got %s)", luaL_typename(L, 2));
        push_partial(L, 1);
        return 3;
    }
    bool run = str_is(L, 2, "run");
    if (!run && !str_is(L, 2, "pause") && !str_is(L, 2, "resume") && !str_is(L, 2, "cancel")) {
        push_shown(L, 2);
        lua_pushliteral(L, "unknown type '");
        lua_insert(L, -2);
        lua_pushliteral(L, "' (expected run, pause, resume or cancel)");
        lua_concat(L, 3); /* not %s: the type may hold a zero byte */
        lua_pushnil(L);
        lua_insert(L, -2);
        push_partial(L, 1);
        return 3;
    }
    lua_createtable(L, 0, 16); /* 3: the task; every field it may get, here or in the worker */
    const int task = 3;
    lua_pushvalue(L, 2);
    set(L, task, K_TYPE);
    lua_pushvalue(L, lua_upvalueindex(K_NATIVE));
    set(L, task, K_FORMAT);

    get(L, 1, K_TASK_ID); /* 4 */
    if (!check_id(L, 4, "task_id", true))
        return fail(L, task);
    set(L, task, K_TASK_ID);
    get(L, 1, K_CONVERSATION_ID); /* 4 */
    if (!check_id(L, 4, "conversation_id", false))
        return fail(L, task);
    if (is_null(L, 4))
        lua_pop(L, 1);
    else
        set(L, task, K_CONVERSATION_ID);

    get(L, 1, K_MESSAGES); /* 4 */
    if (absent(L, 4)) {
        if (run) {
            lua_pushliteral(L, "a run needs at least one message");
            return fail(L, task);
        }
        lua_pop(L, 1);
        lua_newtable(L);
    } else {
        if (!bq_lua_decoded_array(L, 4)) {
            lua_pushfstring(L, "messages must be an array (got %s)",
                            lua_type(L, 4) == LUA_TTABLE ? "an object" : luaL_typename(L, 4));
            return fail(L, task);
        }
        lua_Integer n = (lua_Integer)lua_rawlen(L, 4);
        if (run && n == 0) {
            lua_pushliteral(L, "a run needs at least one message");
            return fail(L, task);
        }
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, 4, i);
            if (!dec_message(L, 5, i))
                return fail(L, task);
            lua_pop(L, 1);
        }
    }
    set(L, task, K_MESSAGES);

    for (int k = K_ARTIFACTS; k <= K_MAX_ATTEMPTS; k++) {
        get(L, 1, k); /* 4 */
        if (absent(L, 4)) {
            lua_pop(L, 1);
            continue;
        }
        if (!check_optional(L, 4, key_names[k - 1], optional_kind[k - K_ARTIFACTS]))
            return fail(L, task);
        set(L, task, k);
    }
    if (get(L, task, K_TIMEOUT) == LUA_TNUMBER && !bq_wire_timeout_valid(lua_tonumber(L, -1))) {
        lua_pushliteral(L, BQ_WIRE_TIMEOUT_RULE);
        return fail(L, task);
    }
    lua_pop(L, 1);
    if (get(L, task, K_MAX_ATTEMPTS) == LUA_TNUMBER) {
        /* lua-cjson decodes every number as a float: 3.0 is the whole number 3. */
        int whole;
        lua_Integer n = lua_tointegerx(L, -1, &whole);
        if (!whole || n < 1) {
            lua_pushliteral(L, BQ_WIRE_MAX_ATTEMPTS_RULE);
            return fail(L, task);
        }
        lua_pushinteger(L, n);
        set(L, task, K_MAX_ATTEMPTS);
    }
    lua_pop(L, 1);
    if (get(L, task, K_ARTIFACTS) == LUA_TNIL) {
        lua_newtable(L);
        set(L, task, K_ARTIFACTS);
    }
    lua_settop(L, task);
    return 1;
}

void bq_lua_open_task(lua_State *L)
{
    for (int i = 0; i < K_COUNT; i++)
        lua_pushstring(L, key_names[i]);
    lua_pushcclosure(L, l_decode_native, K_COUNT);
    lua_setfield(L, -2, "decode_native");
}
