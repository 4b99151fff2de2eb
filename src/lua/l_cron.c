/*
 * l_cron.c -- binduq.Cron: a parsed cron expression in a time zone (src/core/cron.h).
 *
 *   local c = core.cron("0 0 9 * * MON-FRI", "Europe/Berlin")  -- raises on a bad expression
 *   c:next(after) -> the first tick after `after` (epoch seconds, an integer), or nil
 *
 * The zone's transition table is read once, when the object is made, and freed by __gc.
 */
#include "binding.h"

#include "../core/cron.h"

#include <math.h>
#include <string.h>

#define BQ_CRON_MT "binduq.Cron"

struct l_cron {
    struct bq_cron cron;
    struct bq_tz tz;
    bool loaded; /* tz holds a table to free */
};

static int l_cron_gc(lua_State *L)
{
    struct l_cron *c = luaL_checkudata(L, 1, BQ_CRON_MT);
    if (c->loaded)
        bq_tz_free(&c->tz);
    c->loaded = false;
    return 0;
}

/* core.cron(expr, tz) -> binduq.Cron; raises on a bad expression or an unknown zone. */
static int l_cron_new(lua_State *L)
{
    const char *expr = luaL_checkstring(L, 1);
    const char *zone = luaL_optstring(L, 2, NULL);
    struct l_cron *c = lua_newuserdatauv(L, sizeof *c, 0); /* closed until the zone loads */
    memset(c, 0, sizeof *c);
    luaL_setmetatable(L, BQ_CRON_MT);
    bq_err err;
    if (bq_cron_parse(expr, &c->cron, &err) != BQ_OK)
        return luaL_error(L, "%s", err.msg);
    if (bq_tz_load(zone, NULL, &c->tz, &err) != BQ_OK)
        return luaL_error(L, "%s", err.msg);
    c->loaded = true;
    return 1;
}

/* Argument i, epoch seconds, as a whole second (the floor: -0.5 is -1); raises on NaN. A
 * number beyond int64 is clamped to it, which cron.h takes as a time with no tick; casting it
 * would be undefined. */
static int64_t check_time(lua_State *L, int i)
{
    int isint;
    lua_Integer v = lua_tointegerx(L, i, &isint);
    if (isint)
        return (int64_t)v;
    lua_Number t = luaL_checknumber(L, i);
    if (isnan(t))
        luaL_argerror(L, i, "the time is not a number");
    t = floor(t);
    if (t >= 0x1p62)
        return INT64_MAX;
    if (t <= -0x1p62)
        return INT64_MIN;
    return (int64_t)t;
}

/* c:next(after) -> integer | nil */
static int l_cron_next(lua_State *L)
{
    struct l_cron *c = luaL_checkudata(L, 1, BQ_CRON_MT);
    int64_t after = check_time(L, 2);
    int64_t next;
    if (!bq_cron_next(&c->cron, &c->tz, after, &next))
        return 0;
    lua_pushinteger(L, (lua_Integer)next);
    return 1;
}

/* c:offset(t) -> the zone's UTC offset in seconds at t */
static int l_cron_offset(lua_State *L)
{
    struct l_cron *c = luaL_checkudata(L, 1, BQ_CRON_MT);
    lua_pushinteger(L, bq_tz_offset(&c->tz, check_time(L, 2)));
    return 1;
}

static int l_cron_tostring(lua_State *L)
{
    struct l_cron *c = luaL_checkudata(L, 1, BQ_CRON_MT);
    lua_pushfstring(L, "binduq.Cron (%s)", c->tz.name[0] ? c->tz.name : "UTC");
    return 1;
}

static const luaL_Reg cron_methods[] = {
    {"next", l_cron_next},
    {"offset", l_cron_offset},
    {NULL, NULL},
};

static const luaL_Reg cron_meta[] = {
    {"__gc", l_cron_gc},
    {"__close", l_cron_gc},
    {"__tostring", l_cron_tostring},
    {NULL, NULL},
};

void bq_lua_open_cron(lua_State *L)
{
    if (luaL_newmetatable(L, BQ_CRON_MT)) {
        luaL_setfuncs(L, cron_meta, 0);
        luaL_newlib(L, cron_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_cron_new);
    lua_setfield(L, -2, "cron");
}
