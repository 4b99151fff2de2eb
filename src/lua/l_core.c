/*
 * l_core.c -- luaopen_binduq_core: module functions (version, defaults, logging, ids, time,
 * URL helpers, signal trapping) and the registration of the classes.
 */
#include "binding.h"

#include "../core/alloc.h"
#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../core/env.h"
#include "../core/escape.h"
#include "../core/id.h"
#include "../core/wire.h"
#include "../core/log.h"
#include "../core/rand.h"
#include "../broker/broker.h"
#include "../broker/keys.h"
#include "../engine/config.h"
#include "../core/backoff.h"
#include "../net/url.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- Shared helpers ------------------------------------------------------------------------ */

int bq_lua_fail(lua_State *L, const bq_err *err)
{
    lua_pushnil(L);
    lua_pushstring(L, err->msg);
    lua_pushstring(L, bq_status_name(err->code));
    return 3;
}

/* Pushes t[key] and checks its type; returns 0 when nil. May raise. */
static int opt_field(lua_State *L, int idx, const char *key, int type)
{
    int t = lua_getfield(L, idx, key);
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (t != type && !(type == LUA_TNUMBER && t == LUA_TSTRING && lua_isnumber(L, -1)))
        luaL_error(L, "option '%s' must be a %s (got %s)", key, lua_typename(L, type),
                   luaL_typename(L, -1));
    return 1;
}

const char *bq_lua_opt_string(lua_State *L, int idx, const char *key)
{
    if (!opt_field(L, idx, key, LUA_TSTRING))
        return NULL;
    const char *s = lua_tostring(L, -1);
    lua_pop(L, 1); /* the table keeps the string alive */
    return s;
}

lua_Integer bq_lua_opt_integer(lua_State *L, int idx, const char *key, lua_Integer def)
{
    if (!opt_field(L, idx, key, LUA_TNUMBER))
        return def;
    int isint;
    lua_Integer v = lua_tointegerx(L, -1, &isint);
    if (!isint)
        luaL_error(L, "option '%s' must be a whole number", key);
    lua_pop(L, 1);
    return v;
}

lua_Number bq_lua_opt_number(lua_State *L, int idx, const char *key, lua_Number def)
{
    if (!opt_field(L, idx, key, LUA_TNUMBER))
        return def;
    lua_Number v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

int bq_lua_opt_boolean(lua_State *L, int idx, const char *key, int def)
{
    if (!opt_field(L, idx, key, LUA_TBOOLEAN))
        return def;
    int v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

void bq_lua_client_options(lua_State *L, int idx, struct bq_client_options *o)
{
    memset(o, 0, sizeof *o);
    idx = lua_absindex(L, idx);
    const char *type = bq_lua_opt_string(L, idx, "type");
    o->url = bq_lua_opt_string(L, idx, "url");
    o->queue_name = bq_lua_opt_string(L, idx, "queue_name");
    lua_Integer mc = bq_lua_opt_integer(L, idx, "max_connections", 0);
    if (mc < 0 || mc > 100000)
        luaL_error(L, "option 'max_connections' must be from 1 to 100000 (got %d)", (int)mc);
    o->max_connections = (int)mc;
    o->connect_timeout = bq_lua_opt_number(L, idx, "connect_timeout", 0);
    o->command_timeout = bq_lua_opt_number(L, idx, "command_timeout", 0);
    o->pool_timeout = bq_lua_opt_number(L, idx, "pool_timeout", 0);
    lua_Integer wr = bq_lua_opt_integer(L, idx, "wait_replicas", 0);
    if (wr < 0 || wr > 100)
        luaL_error(L, "option 'wait_replicas' must be from 0 to 100");
    o->wait_replicas = (int)wr;
    o->wait_timeout = bq_lua_opt_number(L, idx, "wait_timeout", 0);
    /* events: false (no task events), true (the default), or the entries each queue's
     * stream keeps. */
    int et = lua_getfield(L, idx, "events");
    if (et == LUA_TBOOLEAN) {
        o->events_max = lua_toboolean(L, -1) ? 0 : -1;
    } else if (et == LUA_TNUMBER) {
        int isint;
        lua_Integer em = lua_tointegerx(L, -1, &isint);
        if (!isint || em < 1 || em > 100000000)
            luaL_error(L, "option 'events' must be true, false or a whole number from 1 to "
                          "100000000 (the entries each queue's stream keeps)");
        o->events_max = (long)em;
    } else if (et != LUA_TNIL) {
        luaL_error(L, "option 'events' must be true, false or a number (got %s)",
                   luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    if (lua_getfield(L, idx, "tls") == LUA_TTABLE) {
        /* The strings stay alive in the options table, which the caller keeps. */
        int t = lua_gettop(L);
        o->tls_ca_file = bq_lua_opt_string(L, t, "ca_file");
        o->tls_ca_dir = bq_lua_opt_string(L, t, "ca_dir");
        o->tls_cert_file = bq_lua_opt_string(L, t, "cert_file");
        o->tls_key_file = bq_lua_opt_string(L, t, "key_file");
        o->tls_server_name = bq_lua_opt_string(L, t, "server_name");
        o->tls_insecure = !bq_lua_opt_boolean(L, t, "verify", 1);
    }
    lua_pop(L, 1);
    /* order: "lpush" / "rpush" for every queue, or a table { [queue] = order, ... } of
     * exceptions (the others keep BINDUQ_QUEUE_ORDER or the default). */
    int ot = lua_getfield(L, idx, "order");
    if (ot == LUA_TSTRING) {
        o->order = lua_tostring(L, -1);
    } else if (ot == LUA_TTABLE) {
        size_t n = 0;
        for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "option 'order': expected { [queue name] = \"lpush\" or "
                              "\"rpush\", ... }");
            n++;
        }
        /* The pointer array lives in a userdata anchored in the registry until the next
         * call in this Lua state; the strings live in the options table. */
        const char **pairs = lua_newuserdatauv(L, (2 * n + 1) * sizeof *pairs, 0);
        size_t i = 0;
        for (lua_pushnil(L); lua_next(L, -3); lua_pop(L, 1)) {
            pairs[i++] = lua_tostring(L, -2);
            pairs[i++] = lua_tostring(L, -1);
        }
        pairs[i] = NULL;
        lua_setfield(L, LUA_REGISTRYINDEX, "binduq.queue_orders");
        o->queue_orders = pairs;
    } else if (ot != LUA_TNIL) {
        luaL_error(L, "option 'order' must be \"lpush\", \"rpush\" or a table of queues");
    }
    lua_pop(L, 1);
    if (type != NULL && strcmp(type, "memory") == 0)
        o->memory = true;
    else if (type != NULL && strcmp(type, "redis") == 0 && o->url == NULL && !getenv("REDIS_URL"))
        o->url = "redis://127.0.0.1:6379/0";
    else if (type != NULL && strcmp(type, "redis") != 0 && strcmp(type, "memory") != 0)
        luaL_error(L, "option 'type' must be \"redis\" or \"memory\" (got \"%s\")", type);
}

/* ---- Logging ------------------------------------------------------------------------------- */

static bq_log_level check_level(lua_State *L, int idx)
{
    bq_log_level lv;
    const char *name = luaL_checkstring(L, idx);
    if (bq_log_level_parse(name, &lv) != BQ_OK)
        luaL_argerror(L, idx, "expected \"debug\", \"info\", \"warn\", \"error\" or \"off\"");
    return lv;
}

/* core.log(level, event [, fields]) -- fields: a table of string/number/boolean values. */
static int l_log(lua_State *L)
{
    bq_log_level lv = check_level(L, 1);
    const char *event = luaL_checkstring(L, 2);
    if (!bq_log_enabled(lv))
        return 0;
    const char *keys[32], *vals[32];
    size_t n = 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_settop(L, 3);
        lua_newtable(L); /* 4: anchors the number-marked keys we build */
        lua_pushnil(L);
        while (n < 32 && lua_next(L, 3) != 0) {
            if (lua_type(L, -2) != LUA_TSTRING) {
                lua_pop(L, 1);
                continue;
            }
            int t = lua_type(L, -1);
            if (t == LUA_TNUMBER) {
                /* A whole float (a count decoded from JSON) is written as an integer:
                 * attempts=2, never attempts=2.0. */
                lua_Integer iv;
                if (!lua_isinteger(L, -1) && lua_numbertointeger(lua_tonumber(L, -1), &iv)
                    && (lua_Number)iv == lua_tonumber(L, -1)) {
                    lua_pop(L, 1);
                    lua_pushinteger(L, iv);
                }
                lua_pushfstring(L, "#%s", lua_tostring(L, -2));
                keys[n] = lua_tostring(L, -1);
                lua_rawseti(L, 4, (lua_Integer)n + 1);
                vals[n] = luaL_tolstring(L, -1, NULL);
                lua_rawseti(L, 4, (lua_Integer)n + 33);
            } else {
                keys[n] = lua_tostring(L, -2);
                vals[n] = luaL_tolstring(L, -1, NULL);
                lua_rawseti(L, 4, (lua_Integer)n + 33);
            }
            n++;
            lua_pop(L, 1);
        }
    }
    /* A Lua table has no order (and Lua 5.4 seeds its hashes per state): the fields go out
     * sorted by name, so one event's lines always read the same way. */
    for (size_t i = 1; i < n; i++) {
        const char *k = keys[i], *v = vals[i];
        const char *kn = k + (k[0] == '#');
        size_t j = i;
        for (; j > 0 && strcmp(keys[j - 1] + (keys[j - 1][0] == '#'), kn) > 0; j--) {
            keys[j] = keys[j - 1];
            vals[j] = vals[j - 1];
        }
        keys[j] = k;
        vals[j] = v;
    }
    bq_log_kv(lv, event, n, keys, vals);
    return 0;
}

static int l_log_enabled(lua_State *L)
{
    lua_pushboolean(L, bq_log_enabled(check_level(L, 1)));
    return 1;
}

/* core.log_configure{level=, format=} */
static int l_log_configure(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *level = bq_lua_opt_string(L, 1, "level");
    const char *format = bq_lua_opt_string(L, 1, "format");
    if (level != NULL && bq_log_set_level(level) != BQ_OK)
        return luaL_error(L, "log level must be debug, info, warn, error or off");
    if (format != NULL && bq_log_set_format(format) != BQ_OK)
        return luaL_error(L, "log format must be text or json");
    return 0;
}

/* core.escape(s [, mode]) -> s escaped by core/escape.h's rule, the one the log lines use:
 * mode "display" (default: one line for a terminal), "quoted" (the inside of a logfmt quoted
 * value), "json" (the inside of a JSON string) or "json_text" (an encoded JSON text made
 * safe to print). Returns s itself when display mode changes nothing. May raise (memory). */
static int l_escape(lua_State *L)
{
    static const char *const modes[] = {"display", "quoted", "json", "json_text", NULL};
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    int mode = luaL_checkoption(L, 2, "display", modes);
    if (mode == BQ_ESC_DISPLAY && bq_escape_clean(s, len)) {
        lua_settop(L, 1);
        return 1;
    }
    /* Six output bytes per input byte at most (\ufffd, \u00NN), so a Lua-owned block of that
     * size is the buffer, and nothing of ours is left if Lua raises. */
    if (len > ((size_t)-1 - 1) / 6)
        return luaL_error(L, "string too long to escape");
    char *room = lua_newuserdatauv(L, len * 6 + 1, 0);
    bq_buf b = {room, 0, len * 6 + 1, false};
    bq_escape(&b, s, len, (bq_escape_mode)mode);
    if (b.p != room || b.oom)
        return luaL_error(L, "core.escape: output larger than its bound");
    lua_pushlstring(L, room, b.len);
    return 1;
}

/* ---- Ids, time, URLs ------------------------------------------------------------------------ */

/* core.utf8_check(s) -> true | false, position of the first bad byte (1-based): what
 * utf8.len(s) decides (no surrogates, nothing past U+10FFFF), with an ASCII fast path. */
static int l_utf8_check(lua_State *L)
{
    size_t len, bad = 0;
    const char *s = luaL_checklstring(L, 1, &len);
    if (bq_utf8_valid(s, len, &bad)) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_pushinteger(L, (lua_Integer)bad + 1);
    return 2;
}

/* core.id_problem(s) -> nil | reason: nil when s is an id by the rule of src/core/id.h,
 * else why not ("contains a control character (U+0000 at byte 6)"), to follow its name. */
static int l_id_problem(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char why[BQ_ID_WHY_SIZE];
    if (bq_id_check(s, len, why))
        lua_pushnil(L);
    else
        lua_pushstring(L, why);
    return 1;
}

static int l_uuid4(lua_State *L)
{
    char u[37];
    bq_uuid4(u);
    lua_pushstring(L, u);
    return 1;
}

static int l_now(lua_State *L)
{
    lua_pushnumber(L, bq_now_wall());
    return 1;
}

/* core.secs(t) -> "<whole>.<ms>": seconds with three decimals, as the worker writes them in
 * task events (bq_buf_put_secs), without printf ("%.3f" of an epoch time takes glibc's
 * multi-precision path: 3,700 instructions, a tenth of a Lua schedule() call). */
static int l_secs(lua_State *L)
{
    bq_buf b = BQ_BUF_INIT;
    bq_buf_put_secs(&b, luaL_checknumber(L, 1));
    if (b.oom) {
        bq_buf_free(&b);
        return luaL_error(L, "secs: out of memory");
    }
    lua_pushlstring(L, b.p, b.len);
    bq_buf_free(&b);
    return 1;
}

static int l_monotonic(lua_State *L)
{
    lua_pushnumber(L, bq_now_mono());
    return 1;
}

static int l_iso8601(lua_State *L)
{
    char buf[40];
    bq_iso8601(luaL_optnumber(L, 1, bq_now_wall()), buf, sizeof buf);
    lua_pushstring(L, buf);
    return 1;
}

/* core.parse_iso8601("2026-11-28T07:30:24.278Z") -> epoch seconds | nil. UTC ("Z") or an
 * offset (+hh:mm); fractions of a second are kept. */
/* n decimal digits at *p, advancing it; -1 if they are not all digits. */
static int digits(const char **p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++, (*p)++) {
        if (**p < '0' || **p > '9')
            return -1;
        v = v * 10 + (**p - '0');
    }
    return v;
}

/* core.parse_iso8601(s) -> epoch seconds | nil, for "YYYY-MM-DDTHH:MM:SS[.fff][Z|+hh:mm]".
 * On every message with a timestamp (the pickup latency), so no sscanf or timegm. */
static int l_parse_iso8601(lua_State *L)
{
    const char *p = luaL_checkstring(L, 1);
    int y = digits(&p, 4), mo = -1, d = -1, h = -1, mi = -1, sec = -1;
    if (y >= 0 && *p++ == '-' && (mo = digits(&p, 2)) >= 1 && mo <= 12 && *p++ == '-' &&
        (d = digits(&p, 2)) >= 1 && d <= 31 && (*p == 'T' || *p == 't' || *p == ' ') && p++ &&
        (h = digits(&p, 2)) >= 0 && h <= 23 && *p++ == ':' && (mi = digits(&p, 2)) >= 0 &&
        mi <= 59 && *p++ == ':' && (sec = digits(&p, 2)) >= 0 && sec <= 60) {
        double t = (double)bq_days_from_civil(y, mo, d) * 86400.0 + h * 3600.0 + mi * 60.0 +
                   sec;
        if (*p == '.') {
            double scale = 0.1;
            for (p++; *p >= '0' && *p <= '9'; p++, scale /= 10)
                t += (*p - '0') * scale;
        }
        if (*p == '+' || *p == '-') {
            int sign = *p == '+' ? 1 : -1;
            p++;
            int oh = digits(&p, 2), om = -1;
            if (oh >= 0 && *p++ == ':' && (om = digits(&p, 2)) >= 0 && *p == '\0') {
                lua_pushnumber(L, t - sign * (oh * 3600.0 + om * 60.0));
                return 1;
            }
        } else if ((*p == 'Z' || *p == 'z') && p[1] == '\0') {
            lua_pushnumber(L, t);
            return 1;
        } else if (*p == '\0') {
            lua_pushnumber(L, t);
            return 1;
        }
    }
    lua_pushnil(L);
    return 1;
}

double bq_lua_check_duration(lua_State *L, int arg, const char *what)
{
    double t = luaL_checknumber(L, arg);
    const char *why = bq_duration_problem(t);
    if (why != NULL)
        luaL_error(L, "%s %s (got %s)", what, why, lua_tostring(L, arg));
    return t;
}

/* core.duration_problem(seconds) -> nil | reason, by src/core/clock.h's rule. */
static int l_duration_problem(lua_State *L)
{
    const char *why = lua_type(L, 1) == LUA_TNUMBER ? bq_duration_problem(lua_tonumber(L, 1))
                                                     : "is not a number";
    if (why == NULL)
        lua_pushnil(L);
    else
        lua_pushstring(L, why);
    return 1;
}

static int l_sleep(lua_State *L)
{
    bq_sleep(bq_lua_check_duration(L, 1, "sleep: seconds"));
    return 0;
}

/* core.parse_url(url) -> table (without the password) | nil, message, code */
static int l_parse_url(lua_State *L)
{
    const char *s = luaL_checkstring(L, 1);
    struct bq_url u;
    bq_err err;
    if (bq_url_parse(s, luaL_optstring(L, 2, "URL"), &u, &err) != BQ_OK) {
        bq_url_free(&u);
        return bq_lua_fail(L, &err);
    }
    static const char *const kinds[] = {"tcp", "unix", "sentinel", "cluster"};
    lua_createtable(L, 0, 8);
    lua_pushstring(L, kinds[u.kind]);
    lua_setfield(L, -2, "kind");
    lua_pushboolean(L, u.tls);
    lua_setfield(L, -2, "tls");
    if (u.user) {
        lua_pushstring(L, u.user);
        lua_setfield(L, -2, "user");
    }
    lua_pushboolean(L, u.password != NULL);
    lua_setfield(L, -2, "has_password");
    lua_pushinteger(L, u.db);
    lua_setfield(L, -2, "db");
    if (u.path) {
        lua_pushstring(L, u.path);
        lua_setfield(L, -2, "path");
    }
    if (u.service) {
        lua_pushstring(L, u.service);
        lua_setfield(L, -2, "service");
    }
    lua_createtable(L, (int)u.nhosts, 0);
    for (size_t i = 0; i < u.nhosts; i++) {
        lua_createtable(L, 0, 2);
        lua_pushstring(L, u.hosts[i].host);
        lua_setfield(L, -2, "host");
        lua_pushinteger(L, u.hosts[i].port);
        lua_setfield(L, -2, "port");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "hosts");
    /* redis-py's options (url.h), those the URL gives */
    const struct {
        const char *name;
        double v;
    } nums[] = {{"socket_timeout", u.socket_timeout},
                {"socket_connect_timeout", u.socket_connect_timeout},
                {"max_connections", u.max_connections > 0 ? u.max_connections : -1},
                {"ssl_cert_reqs", u.ssl_cert_reqs}};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        if (nums[i].v >= 0) {
            lua_pushnumber(L, nums[i].v);
            lua_setfield(L, -2, nums[i].name);
        }
    }
    if (u.retry_on_timeout >= 0) {
        lua_pushboolean(L, u.retry_on_timeout);
        lua_setfield(L, -2, "retry_on_timeout");
    }
    const struct {
        const char *name, *v;
    } strs[] = {{"ssl_ca_certs", u.ssl_ca_certs}, {"ssl_ca_path", u.ssl_ca_path},
                {"ssl_certfile", u.ssl_certfile}, {"ssl_keyfile", u.ssl_keyfile},
                {"ignored", u.ignored[0] ? u.ignored : NULL}};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        if (strs[i].v != NULL) {
            lua_pushstring(L, strs[i].v);
            lua_setfield(L, -2, strs[i].name);
        }
    }
    bq_url_free(&u);
    return 1;
}

/* core.embedded_header(raw) -> offset | nil: where binduq's header embedded in a message in
 * Bindu's format starts (its ,"binduq": key), 0-based, as broker.h finds it. */
static int l_embedded_header(lua_State *L)
{
    size_t len;
    const char *p = luaL_checklstring(L, 1, &len);
    size_t k = bq_embedded_header(p, len);
    if (k == 0)
        lua_pushnil(L);
    else
        lua_pushinteger(L, (lua_Integer)k);
    return 1;
}

static int l_redact_url(lua_State *L)
{
    char out[1024];
    bq_url_redact(luaL_checkstring(L, 1), out, sizeof out);
    lua_pushstring(L, out);
    return 1;
}

static int l_defaults(lua_State *L)
{
    lua_createtable(L, 0, 10);
    lua_pushstring(L, BQ_DEFAULT_QUEUE);
    lua_setfield(L, -2, "queue_name");
    lua_pushinteger(L, BQ_DEFAULT_MAX_CONNECTIONS);
    lua_setfield(L, -2, "max_connections");
    lua_pushnumber(L, BQ_DEFAULT_CONNECT_TIMEOUT);
    lua_setfield(L, -2, "connect_timeout");
    lua_pushnumber(L, BQ_DEFAULT_COMMAND_TIMEOUT);
    lua_setfield(L, -2, "command_timeout");
    lua_pushnumber(L, BQ_DEFAULT_POOL_TIMEOUT);
    lua_setfield(L, -2, "pool_timeout");
    lua_pushnumber(L, BQ_DEFAULT_BLOCK_TIMEOUT);
    lua_setfield(L, -2, "block_timeout");
    lua_pushinteger(L, BQ_DEFAULT_CONCURRENCY);
    lua_setfield(L, -2, "concurrency");
    lua_pushinteger(L, BQ_DEFAULT_MAX_MESSAGE_SIZE);
    lua_setfield(L, -2, "max_message_size");
    lua_pushstring(L, "at-least-once");
    lua_setfield(L, -2, "delivery");
    lua_pushnumber(L, BQ_DEFAULT_LEASE);
    lua_setfield(L, -2, "lease");
    lua_pushnumber(L, BQ_DEFAULT_SHUTDOWN_TIMEOUT);
    lua_setfield(L, -2, "shutdown_timeout");
    lua_pushinteger(L, BQ_DEFAULT_MAX_ATTEMPTS);
    lua_setfield(L, -2, "max_attempts");
    lua_pushnumber(L, BQ_DEFAULT_RETRY_BASE);
    lua_setfield(L, -2, "retry_base");
    lua_pushnumber(L, BQ_DEFAULT_RETRY_CAP);
    lua_setfield(L, -2, "retry_cap");
    lua_pushnumber(L, 0);
    lua_setfield(L, -2, "timeout");
    return 1;
}

/* "handler" inside a handler state (one per worker slot), "main" everywhere else. */
static int l_role(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, BQ_SLOT_KEY);
    lua_pushstring(L, lua_isnil(L, -1) ? "main" : "handler");
    return 1;
}

/* core.backoff(attempt, base, cap, jitter) -> seconds; jitter: "full" | "equal" | "none".
 * `attempt` counts from 0 (the first retry). A uniform random number comes from C. */
static int l_backoff(lua_State *L)
{
    static const char *const modes[] = {"none", "full", "equal", NULL};
    lua_Integer attempt = luaL_checkinteger(L, 1);
    double base = luaL_checknumber(L, 2), cap = luaL_checknumber(L, 3);
    int mode = luaL_checkoption(L, 4, "full", modes);
    double unit = lua_isnumber(L, 5) ? lua_tonumber(L, 5) : bq_random_unit();
    lua_pushnumber(L, bq_backoff_delay(attempt > 1000 ? 1000 : (int)attempt, base, cap,
                                       (enum bq_jitter)mode, unit));
    return 1;
}

/* core.key_slot(key) -> the Redis Cluster slot of key (hash tags honoured). */
static int l_key_slot(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)bq_key_slot(luaL_checkstring(L, 1)));
    return 1;
}

/* core.key_derive(queue, suffix) -> Q's derived key for suffix ("dlq", "workers", "wip:<id>"
 * ...), by the one rule of src/broker/keys.c; raises naming what is wrong with the queue's
 * name. The suffix is taken byte for byte: the admin commands derive keys from worker ids
 * read back from Redis, which anyone who can write there may have filled with anything. */
static int l_key_derive(lua_State *L)
{
    size_t qlen, slen;
    const char *q = luaL_checklstring(L, 1, &qlen);
    const char *suffix = luaL_checklstring(L, 2, &slen);
    if (memchr(q, '\0', qlen) != NULL)
        return luaL_argerror(L, 1, "contains a NUL byte");
    char prefix[BQ_KEY_MAX];
    size_t n = bq_key_prefix(q, prefix, sizeof prefix);
    if (n == 0) {
        bq_err err;
        bq_key_derive_err(q, "", prefix, &err);
        return luaL_error(L, "%s", err.msg);
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, prefix, n);
    luaL_addlstring(&b, suffix, slen);
    luaL_pushresult(&b);
    return 1;
}

/* ---- Signals ---------------------------------------------------------------------------------
 * run() traps SIGINT and SIGTERM while it waits: the handler only writes the signal number to
 * a pipe, which the waiting thread polls. Lua is never touched from a signal handler. */

static int sig_pipe[2] = {-1, -1};
static struct sigaction old_int, old_term;
static int trapped;

static void on_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    ssize_t n = write(sig_pipe[1], &b, 1);
    (void)n;
    errno = saved;
}

int bq_lua_signal_fd(void)
{
    return trapped ? sig_pipe[0] : -1;
}

static int l_trap_signals(lua_State *L)
{
    if (sig_pipe[0] < 0) {
        if (pipe2(sig_pipe, O_NONBLOCK | O_CLOEXEC) != 0)
            return luaL_error(L, "pipe2: %s", strerror(errno));
    }
    if (!trapped) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_RESTART;
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
        trapped = 1;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_untrap_signals(lua_State *L)
{
    (void)L;
    if (trapped) {
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
        trapped = 0;
    }
    return 0;
}

/* core.equal_ct(a, b) -> whether the strings are equal, in a time that depends on their
 * lengths only, not on where they differ (bearer tokens). */
static int l_equal_ct(lua_State *L)
{
    size_t na, nb;
    const unsigned char *a = (const unsigned char *)luaL_checklstring(L, 1, &na);
    const unsigned char *b = (const unsigned char *)luaL_checklstring(L, 2, &nb);
    volatile unsigned char diff = na != nb;
    size_t n = na > nb ? na : nb;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)((i < na ? a[i] : 0) ^ (i < nb ? b[i] : 0));
    lua_pushboolean(L, diff == 0);
    return 1;
}

/* core.take_signal() -> "SIGINT" | "SIGTERM" | nil: the next trapped signal, if any. */
static int l_take_signal(lua_State *L)
{
    unsigned char b;
    if (sig_pipe[0] >= 0 && read(sig_pipe[0], &b, 1) == 1) {
        lua_pushstring(L, b == SIGINT ? "SIGINT" : b == SIGTERM ? "SIGTERM" : "signal");
        return 1;
    }
    lua_pushnil(L);
    return 1;
}

/* ---- Environment -------------------------------------------------------------------------- */

/* core.env(name) -> value | nil: set and not empty; Bindu's names (upper case) in any case,
 * as its settings read them (bq_env_any_case). */
static int l_env(lua_State *L)
{
    const char *v = bq_env_any_case(luaL_checkstring(L, 1));
    if (v == NULL)
        lua_pushnil(L);
    else
        lua_pushstring(L, v);
    return 1;
}

/* .env, once per process, when the module first loads (before any thread of binduq's). */
static pthread_once_t dotenv_once = PTHREAD_ONCE_INIT;
static int dotenv_loaded, dotenv_skipped;
static bq_status dotenv_status;
static bq_err dotenv_err;

static void load_dotenv(void)
{
    dotenv_status = bq_dotenv_load(NULL, &dotenv_loaded, &dotenv_skipped, &dotenv_err);
    char n[16];
    snprintf(n, sizeof n, "%d", dotenv_skipped);
    if (dotenv_status != BQ_OK)
        bq_log(BQ_LOG_WARN, "dotenv_unread", "error", dotenv_err.msg, NULL);
    else if (dotenv_skipped > 0)
        bq_log(BQ_LOG_WARN, "dotenv_lines_skipped", "#count", n, "why",
               "not NAME=value lines (see the README, Configuration)", NULL);
}

/* core.dotenv() -> loaded, skipped | nil, why: what loading .env did. */
static int l_dotenv(lua_State *L)
{
    pthread_once(&dotenv_once, load_dotenv);
    if (dotenv_status != BQ_OK) {
        lua_pushnil(L);
        lua_pushstring(L, dotenv_err.msg);
        return 2;
    }
    lua_pushinteger(L, dotenv_loaded);
    lua_pushinteger(L, dotenv_skipped);
    return 2;
}

/* ---- Module ---------------------------------------------------------------------------------- */

/* core.parse_time(s) -> epoch seconds | nil, why: run_at's ISO 8601 with a zone (wire.h). */
static int l_parse_time(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    double t;
    const char *why = bq_wire_parse_time(s, len, &t);
    if (why != NULL) {
        luaL_pushfail(L);
        lua_pushstring(L, why);
        return 2;
    }
    lua_pushnumber(L, t);
    return 1;
}

/* core.when_problem(delay, run_at) -> why | nil: both numbers or nil (absent), checked as
 * wire.h's bq_wire_when_problem checks them against the wall clock. */
static int l_when_problem(lua_State *L)
{
    bool has_delay = !lua_isnoneornil(L, 1), has_run_at = !lua_isnoneornil(L, 2);
    double delay = has_delay ? luaL_checknumber(L, 1) : 0;
    double run_at = has_run_at ? luaL_checknumber(L, 2) : 0;
    const char *why = bq_wire_when_problem(has_delay, delay, has_run_at, run_at, bq_now_wall());
    if (why == NULL)
        return 0;
    lua_pushstring(L, why);
    return 1;
}

static const luaL_Reg core_funcs[] = {
    {"log", l_log},
    {"log_enabled", l_log_enabled},
    {"log_configure", l_log_configure},
    {"escape", l_escape},
    {"uuid4", l_uuid4},
    {"utf8_check", l_utf8_check},
    {"id_problem", l_id_problem},
    {"duration_problem", l_duration_problem},
    {"now", l_now},
    {"monotonic", l_monotonic},
    {"secs", l_secs},
    {"iso8601", l_iso8601},
    {"parse_iso8601", l_parse_iso8601},
    {"parse_time", l_parse_time},
    {"when_problem", l_when_problem},
    {"sleep", l_sleep},
    {"parse_url", l_parse_url},
    {"redact_url", l_redact_url},
    {"embedded_header", l_embedded_header},
    {"defaults", l_defaults},
    {"backoff", l_backoff},
    {"key_slot", l_key_slot},
    {"key_derive", l_key_derive},
    {"role", l_role},
    {"env", l_env},
    {"dotenv", l_dotenv},
    {"trap_signals", l_trap_signals},
    {"untrap_signals", l_untrap_signals},
    {"take_signal", l_take_signal},
    {"equal_ct", l_equal_ct},
    {NULL, NULL},
};

__attribute__((visibility("default"))) int luaopen_binduq_core(lua_State *L)
{
    pthread_once(&dotenv_once, load_dotenv);
    luaL_newlib(L, core_funcs);
    lua_pushstring(L, BQ_VERSION_STRING);
    lua_setfield(L, -2, "version");
    lua_pushnumber(L, BQ_MAX_DURATION);
    lua_setfield(L, -2, "MAX_DURATION");
    lua_pushinteger(L, BQ_MAX_ID_LEN);
    lua_setfield(L, -2, "MAX_ID_LEN");
    /* core.wire: src/core/wire.h's rules and limits, for lua/binduq/task.lua. */
    lua_createtable(L, 0, 8);
    lua_createtable(L, 0, BQ_WIRE_NTYPES);
    for (int i = 0; i < BQ_WIRE_NTYPES; i++) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, bq_wire_types[i]);
    }
    lua_setfield(L, -2, "TYPES");
    lua_pushinteger(L, BQ_MAX_ID_LEN);
    lua_setfield(L, -2, "MAX_ID_LEN");
    lua_pushinteger(L, BQ_WIRE_ROLE_MAX);
    lua_setfield(L, -2, "ROLE_MAX");
    lua_pushinteger(L, BQ_WIRE_HEADER_MAX);
    lua_setfield(L, -2, "HEADER_MAX");
    lua_pushliteral(L, BQ_WIRE_TYPE_RULE);
    lua_setfield(L, -2, "TYPE_RULE");
    lua_pushliteral(L, BQ_WIRE_TIMEOUT_RULE);
    lua_setfield(L, -2, "TIMEOUT_RULE");
    lua_pushliteral(L, BQ_WIRE_MAX_ATTEMPTS_RULE);
    lua_setfield(L, -2, "MAX_ATTEMPTS_RULE");
    lua_pushliteral(L, BQ_WIRE_RUN_AT_RULE);
    lua_setfield(L, -2, "RUN_AT_RULE");
    lua_setfield(L, -2, "wire");
    bq_lua_open_client(L);
    bq_lua_open_engine(L);
    bq_lua_open_slot(L);
    bq_lua_open_metrics(L);
    bq_lua_open_storage(L);
    bq_lua_open_task(L);
    bq_lua_open_cron(L);
    bq_lua_open_json(L);
    bq_lua_open_produce(L);
    bq_lua_open_http(L);
    bq_lua_open_gateway(L);
    return 1;
}
