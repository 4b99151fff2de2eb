/*
 * l_json.cpp -- core.decode_fast(raw): a worker's decoder for the common task operation, on
 * simdjson. The only C++ in binduq, and only in the Lua binding (libbinduq stays C).
 *
 *   core.decode_fast(raw) -> task | false
 *
 * A worker decodes every message it takes: simdjson parses and checks the JSON and its
 * UTF-8 at a few instructions a byte, and the task table is built once, sized, with no
 * intermediate table (docs/design.md, "A worker decodes the usual task operation with
 * simdjson", compares it with lua-cjson and core.decode_native). It answers for operations in binduq's
 * native format of the usual shape, and for those it returns exactly the table
 * decode_native(cjson.decode(raw)) returns (a differential test holds it to that). For
 * anything else -- invalid, Bindu's format, a field of an unexpected type, a message without
 * `content`, a repeated field, nesting deeper than 64, more than 16 KiB -- it returns false
 * before it changes anything, and the caller takes lua/binduq/task.lua's path, whose rules
 * and error texts stay the only ones.
 *
 * Each Lua state gets its own closure, so its own parser (simdjson's parsers are not shared
 * between threads). Nothing here owns memory across a Lua call that may raise: the parser
 * and its buffer belong to a userdata with a __gc.
 */
#include <simdjson.h>

#include <cmath>
#include <cstring>
#include <new>

extern "C" {
#include <lauxlib.h>
#include <lua.h>

#include "../core/clock.h"
#include "../core/id.h"

void bq_lua_open_json(lua_State *L);
bool bq_lua_decoded_array(lua_State *L, int i); /* l_task.c */
}

namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

constexpr size_t FAST_MAX = 16 * 1024; /* larger messages take the general path */
constexpr size_t FAST_DEPTH = 64;

struct decoder {
    simdjson::dom::parser *parser;
    char *buf; /* the message, copied with simdjson's padding after it */
    size_t cap;
    const char *raw; /* the message being decoded, and its length */
    size_t len;
};

/* Upvalues: the decoder, then every key and constant string the task table gets. */
enum {
    U_DECODER = 1,
    U_TYPE, U_TASK_ID, U_CONVERSATION_ID, U_MESSAGES, U_ARTIFACTS, U_TIMESTAMP, U_METADATA,
    U_TRACE_ID, U_SPAN_ID, U_TRACEPARENT, U_TIMEOUT, U_MAX_ATTEMPTS,
    U_FORMAT, U_NATIVE, U_ROLE, U_CONTENT, U_PARTS,
    U_RUN, U_PAUSE, U_RESUME, U_CANCEL,
    U_COUNT = U_CANCEL
};
const char *const upvalue_strings[U_COUNT - 1] = {
    "type", "task_id", "conversation_id", "messages", "artifacts", "timestamp", "metadata",
    "trace_id", "span_id", "traceparent", "timeout", "max_attempts",
    "format", "native", "role", "content", "parts",
    "run", "pause", "resume", "cancel",
};
enum { U_OPERATION = -1 }; /* Bindu's format: not ours */

bool is(std::string_view s, const char *lit, size_t n)
{
    return s.size() == n && std::memcmp(s.data(), lit, n) == 0;
}
#define IS(s, lit) is((s), lit, sizeof(lit) - 1)

/* The upvalue of a top-level key, 0 for one decode_native ignores, or U_OPERATION. */
int top_key(std::string_view k)
{
    switch (k.size()) {
    case 4: return IS(k, "type") ? U_TYPE : 0;
    case 7:
        return IS(k, "task_id") ? U_TASK_ID : IS(k, "timeout") ? U_TIMEOUT
             : IS(k, "span_id") ? U_SPAN_ID : 0;
    case 8:
        return IS(k, "messages") ? U_MESSAGES : IS(k, "metadata") ? U_METADATA
             : IS(k, "trace_id") ? U_TRACE_ID : 0;
    case 9:
        return IS(k, "artifacts") ? U_ARTIFACTS : IS(k, "timestamp") ? U_TIMESTAMP
             : IS(k, "operation") ? U_OPERATION : 0;
    case 11: return IS(k, "traceparent") ? U_TRACEPARENT : 0;
    case 12: return IS(k, "max_attempts") ? U_MAX_ATTEMPTS : 0;
    case 15: return IS(k, "conversation_id") ? U_CONVERSATION_ID : 0;
    default: return 0;
    }
}

/* Whether the message has a "-0" that is a number: simdjson reads it as the integer 0, where
 * lua-cjson gives -0.0. Strings count too (a false alarm only costs the general path). */
bool has_negative_zero(const decoder *d)
{
    const char *p = d->raw, *end = d->raw + d->len;
    while ((p = static_cast<const char *>(memmem(p, end - p, "-0", 2))) != nullptr) {
        p += 2;
        if (p == end || !(std::strchr("0123456789.eE", *p) != nullptr && *p != '\0'))
            return true;
    }
    return false;
}

bool push_value(lua_State *L, element v, const decoder *d);

/* Pushes the array v as a table, each element pushed by push_element; false to decline. */
bool push_array(lua_State *L, element v, const decoder *d,
                bool (*push_element)(lua_State *, element, const decoder *))
{
    simdjson::dom::array a;
    if (v.get(a) != simdjson::SUCCESS)
        return false;
    lua_createtable(L, static_cast<int>(a.size()), 0);
    lua_Integer i = 0;
    for (auto e : a) {
        if (!push_element(L, e, d))
            return false;
        lua_rawseti(L, -2, ++i);
    }
    return true;
}

/* Pushes v as lua-cjson decodes it (every number a float, null its NULL light userdata); false
 * (with the stack as it was, plus what the caller pops) when it cannot be exactly that. */
bool push_value(lua_State *L, element v, const decoder *d)
{
    if (!lua_checkstack(L, 3))
        return false;
    switch (v.type()) {
    case element_type::OBJECT: {
        simdjson::dom::object o;
        if (v.get(o) != simdjson::SUCCESS)
            return false;
        lua_createtable(L, 0, static_cast<int>(o.size()));
        for (auto kv : o) {
            lua_pushlstring(L, kv.key.data(), kv.key.size());
            if (!push_value(L, kv.value, d))
                return false;
            lua_rawset(L, -3);
        }
        return true;
    }
    case element_type::ARRAY:
        return push_array(L, v, d, push_value);
    case element_type::STRING: {
        auto s = v.get_string().value_unsafe();
        lua_pushlstring(L, s.data(), s.size());
        return true;
    }
    case element_type::INT64: {
        int64_t i = v.get_int64().value_unsafe();
        if (i == 0 && has_negative_zero(d))
            return false;
        lua_pushnumber(L, static_cast<lua_Number>(i));
        return true;
    }
    case element_type::UINT64:
        lua_pushnumber(L, static_cast<lua_Number>(v.get_uint64().value_unsafe()));
        return true;
    case element_type::DOUBLE:
        lua_pushnumber(L, v.get_double().value_unsafe());
        return true;
    case element_type::BOOL:
        lua_pushboolean(L, v.get_bool().value_unsafe());
        return true;
    case element_type::NULL_VALUE:
        lua_pushlightuserdata(L, nullptr);
        return true;
    }
    return false;
}

/* Pushes a message as decode_native leaves it: its fields as decoded, nulls cleared. Only one
 * with a non-empty string role and a string content, and parts an array if any. */
bool push_message(lua_State *L, element v, const decoder *d)
{
    simdjson::dom::object o;
    if (v.get(o) != simdjson::SUCCESS)
        return false;
    lua_createtable(L, 0, static_cast<int>(o.size()));
    int m = lua_gettop(L);
    for (auto kv : o) {
        if (IS(kv.key, "role"))
            lua_pushvalue(L, lua_upvalueindex(U_ROLE)); /* not interned again */
        else if (IS(kv.key, "content"))
            lua_pushvalue(L, lua_upvalueindex(U_CONTENT));
        else
            lua_pushlstring(L, kv.key.data(), kv.key.size());
        if (kv.value.type() == element_type::NULL_VALUE)
            lua_pushnil(L); /* clears an earlier field of the same name, as decode_native does */
        else if (!push_value(L, kv.value, d))
            return false;
        lua_rawset(L, m);
    }
    lua_pushvalue(L, lua_upvalueindex(U_ROLE));
    bool ok = lua_rawget(L, m) == LUA_TSTRING && lua_rawlen(L, -1) > 0;
    lua_pushvalue(L, lua_upvalueindex(U_CONTENT));
    ok = ok && lua_rawget(L, m) == LUA_TSTRING;
    lua_pushvalue(L, lua_upvalueindex(U_PARTS));
    int parts = lua_rawget(L, m);
    ok = ok && (parts == LUA_TNIL || bq_lua_decoded_array(L, -1));
    lua_settop(L, m);
    return ok;
}

bool valid_id(std::string_view s)
{
    return bq_id_check(s.data(), s.size(), nullptr);
}

/* Reads the value of top-level key k into the task at index `task`; false to decline. */
bool take_field(lua_State *L, int task, int k, element v, const decoder *d, bool *run)
{
    element_type t = v.type();
    if (t == element_type::NULL_VALUE && k != U_TYPE && k != U_TASK_ID)
        return true; /* an optional field that is null is absent */
    switch (k) {
    case U_TYPE: {
        if (t != element_type::STRING)
            return false;
        auto s = v.get_string().value_unsafe();
        int u = IS(s, "run") ? U_RUN : IS(s, "pause") ? U_PAUSE : IS(s, "resume") ? U_RESUME
              : IS(s, "cancel") ? U_CANCEL : 0;
        if (u == 0)
            return false;
        *run = u == U_RUN;
        lua_pushvalue(L, lua_upvalueindex(u));
        break;
    }
    case U_TASK_ID:
    case U_CONVERSATION_ID:
        if (t != element_type::STRING || !valid_id(v.get_string().value_unsafe()))
            return false;
        if (!push_value(L, v, d))
            return false;
        break;
    case U_TIMESTAMP:
    case U_TRACE_ID:
    case U_SPAN_ID:
    case U_TRACEPARENT:
        if (t != element_type::STRING)
            return false;
        if (!push_value(L, v, d))
            return false;
        break;
    case U_MESSAGES:
        if (!push_array(L, v, d, push_message))
            return false;
        break;
    case U_ARTIFACTS: /* an array; an empty object decodes to the same empty table */
        if (t != element_type::ARRAY && !(t == element_type::OBJECT && v.get_object().value_unsafe().size() == 0))
            return false;
        if (!push_value(L, v, d))
            return false;
        break;
    case U_METADATA: /* an object; an empty array decodes to the same empty table */
        if (t != element_type::OBJECT && !(t == element_type::ARRAY && v.get_array().value_unsafe().size() == 0))
            return false;
        if (!push_value(L, v, d))
            return false;
        break;
    case U_TIMEOUT: {
        if (t != element_type::INT64 && t != element_type::UINT64 && t != element_type::DOUBLE)
            return false;
        if (!push_value(L, v, d) || !(lua_tonumber(L, -1) > 0 && lua_tonumber(L, -1) <= BQ_MAX_DURATION))
            return false;
        break;
    }
    case U_MAX_ATTEMPTS: {
        if (t != element_type::INT64 && t != element_type::UINT64 && t != element_type::DOUBLE)
            return false;
        if (!push_value(L, v, d))
            return false;
        /* decode_native's rule on lua-cjson's float: a whole number, at least 1 */
        lua_Number x = lua_tonumber(L, -1);
        if (!(x >= 1 && x < 0x1p63 && std::floor(x) == x))
            return false;
        lua_pop(L, 1);
        lua_pushinteger(L, static_cast<lua_Integer>(x));
        break;
    }
    default:
        return false;
    }
    lua_pushvalue(L, lua_upvalueindex(k));
    lua_insert(L, -2);
    lua_rawset(L, task);
    return true;
}

/* Parses raw into the decoder's parser; false when it is not ours to decode. */
bool parse(decoder *d, const char *raw, size_t n, element *doc)
{
    if (n == 0 || n > FAST_MAX || raw[0] != '{')
        return false;
    if (d->parser == nullptr) {
        d->parser = new (std::nothrow) simdjson::dom::parser(FAST_MAX);
        if (d->parser == nullptr || d->parser->allocate(1024, FAST_DEPTH) != simdjson::SUCCESS)
            return false;
    }
    if (n + simdjson::SIMDJSON_PADDING > d->cap) {
        size_t cap = FAST_MAX + simdjson::SIMDJSON_PADDING;
        char *b = static_cast<char *>(std::realloc(d->buf, cap));
        if (b == nullptr)
            return false;
        d->buf = b;
        d->cap = cap;
    }
    std::memcpy(d->buf, raw, n);
    std::memset(d->buf + n, 0, simdjson::SIMDJSON_PADDING); /* read, never used: defined */
    d->raw = raw;
    d->len = n;
    return d->parser->parse(d->buf, n, false).get(*doc) == simdjson::SUCCESS;
}

int decline(lua_State *L)
{
    lua_settop(L, 1);
    lua_pushboolean(L, 0);
    return 1;
}

int l_decode_fast(lua_State *L)
{
    size_t n;
    const char *raw = luaL_checklstring(L, 1, &n);
    lua_settop(L, 1);
    auto *d = static_cast<decoder *>(lua_touserdata(L, lua_upvalueindex(U_DECODER)));
    element doc;
    simdjson::dom::object top;
    if (!parse(d, raw, n, &doc) || doc.get(top) != simdjson::SUCCESS)
        return decline(L);
    lua_createtable(L, 0, 16); /* 2: the task; every field it may get, here or in the worker */
    const int task = 2;
    unsigned seen = 0;
    bool run = false;
    for (auto kv : top) {
        int k = top_key(kv.key);
        if (k == 0)
            continue;
        if (k == U_OPERATION || (seen & (1u << k)) != 0)
            return decline(L); /* Bindu's format, or a repeated field */
        seen |= 1u << k;
        if (!take_field(L, task, k, kv.value, d, &run))
            return decline(L);
    }
    if ((seen & (1u << U_TYPE)) == 0 || (seen & (1u << U_TASK_ID)) == 0)
        return decline(L);
    lua_pushvalue(L, lua_upvalueindex(U_MESSAGES));
    if (lua_rawget(L, task) == LUA_TNIL) {
        if (run)
            return decline(L); /* a run needs at least one message */
        lua_pushvalue(L, lua_upvalueindex(U_MESSAGES));
        lua_newtable(L);
        lua_rawset(L, task);
    } else if (run && lua_rawlen(L, -1) == 0) {
        return decline(L);
    }
    lua_pop(L, 1);
    lua_pushvalue(L, lua_upvalueindex(U_ARTIFACTS));
    if (lua_rawget(L, task) == LUA_TNIL) {
        lua_pushvalue(L, lua_upvalueindex(U_ARTIFACTS));
        lua_newtable(L);
        lua_rawset(L, task);
    }
    lua_pop(L, 1);
    lua_pushvalue(L, lua_upvalueindex(U_FORMAT));
    lua_pushvalue(L, lua_upvalueindex(U_NATIVE));
    lua_rawset(L, task);
    return 1;
}

int decoder_gc(lua_State *L)
{
    auto *d = static_cast<decoder *>(lua_touserdata(L, 1));
    delete d->parser;
    std::free(d->buf);
    d->parser = nullptr;
    d->buf = nullptr;
    return 0;
}

} // namespace

void bq_lua_open_json(lua_State *L)
{
    auto *d = static_cast<decoder *>(lua_newuserdatauv(L, sizeof(decoder), 0));
    *d = decoder{};
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, decoder_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    for (const char *s : upvalue_strings)
        lua_pushstring(L, s);
    lua_pushcclosure(L, l_decode_fast, U_COUNT);
    lua_setfield(L, -2, "decode_fast");
}
