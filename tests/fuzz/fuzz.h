/*
 * fuzz.h -- what binduq's libFuzzer targets share (tests/fuzz/fuzz_<name>.c, built by
 * `make fuzz` with clang, AddressSanitizer and UBSan; run by tests/fuzz/run).
 *
 * A target that checks a Lua-side rule loads a Lua file from tests/fuzz/ that returns one
 * function; fuzz_lua_call() hands it each input as a string and aborts, printing the error,
 * when it raises. So a property is written once, in Lua, next to the specs that use the same
 * helpers, and a failed property is a crash libFuzzer keeps and minimises.
 *
 * FUZZ_ROOT is the repository's root (the Makefile passes it), so a target runs from anywhere.
 */
#ifndef BINDUQ_FUZZ_H
#define BINDUQ_FUZZ_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef FUZZ_ROOT
#define FUZZ_ROOT "."
#endif

int luaopen_binduq_core(lua_State *L);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Stops the run with a message: libFuzzer records the input as a crash. */
#define FUZZ_FAIL(...)                                                                         \
    do {                                                                                       \
        fprintf(stderr, "fuzz property failed at %s:%d: ", __FILE__, __LINE__);                \
        fprintf(stderr, __VA_ARGS__);                                                          \
        fputc('\n', stderr);                                                                   \
        abort();                                                                               \
    } while (0)

#define FUZZ_ASSERT(cond)                                                                      \
    do {                                                                                       \
        if (!(cond))                                                                           \
            FUZZ_FAIL("%s", #cond);                                                            \
    } while (0)

/* A Lua state with the standard libraries, binduq's C core preloaded and the repository's
 * lua/ on package.path, which has run tests/fuzz/<file> and keeps the function it returned.
 * Made once per process; aborts if the file fails to load. */
static inline lua_State *fuzz_lua(const char *file)
{
    static lua_State *L;
    if (L != NULL)
        return L;
    L = luaL_newstate();
    luaL_openlibs(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_binduq_core);
    lua_setfield(L, -2, "binduq.core");
    lua_pop(L, 1);
    if (luaL_dostring(L, "package.path = '" FUZZ_ROOT "/lua/?.lua;" FUZZ_ROOT
                         "/lua/?/init.lua;" FUZZ_ROOT "/tests/?.lua;' .. package.path") != LUA_OK)
        FUZZ_FAIL("package.path: %s", lua_tostring(L, -1));
    if (luaL_dofile(L, file) != LUA_OK)
        FUZZ_FAIL("%s: %s", file, lua_tostring(L, -1));
    if (!lua_isfunction(L, -1))
        FUZZ_FAIL("%s must return a function", file);
    lua_setfield(L, LUA_REGISTRYINDEX, "fuzz.property");
    return L;
}

/* Calls the property function of fuzz_lua() with the input as a string; aborts on an error
 * (the property failed). Collects garbage now and then, so a long run stays small. */
static inline void fuzz_lua_call(lua_State *L, const uint8_t *data, size_t size)
{
    static unsigned calls;
    lua_getfield(L, LUA_REGISTRYINDEX, "fuzz.property");
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        FUZZ_FAIL("%s", msg ? msg : "(an error that is not a string)");
    }
    if (++calls % 256 == 0)
        lua_gc(L, LUA_GCCOLLECT);
}

#endif
