/*
 * l_gateway.c -- binduq.Gateway: the HTTP server of the A2A gateway (engine/gateway.c) for
 * lua/binduq/gateway.lua, which answers the requests:
 *   core.gateway{host=, port=, max_body=, max_connections=, idle_timeout=, cert=, key=}
 *       -> gw | raises on a bad option | nil, msg, code (cannot listen)
 *   gw:port()
 *   gw:fd() -> an fd readable while requests wait (for e:next_event's wait), or nil
 *   gw:next(timeout) -> request | nil (none came) | false (stopping)
 *       request = {id=, method=, path=, body=, authorization=, content_type=, accept=,
 *                  last_event_id=, host=, origin=, peer=}
 *   gw:reply(id, status, body, content_type [, {name = value, ...}]) -> true | false (gone)
 *   gw:stream(id, content_type, headers) -> bool;  gw:send(id, data) -> bool;  gw:finish(id)
 *   gw:close()  (also __close and __gc)
 * cert and key are paths to PEM files, read here (libmicrohttpd takes the text).
 */
#include "binding.h"

#include "../core/alloc.h"
#include "../engine/client.h"
#include "../engine/gateway.h"

#include <stdio.h>
#include <string.h>

#define GATEWAY_MT "binduq.Gateway"

struct gw_ud {
    bq_gateway *g; /* NULL once closed */
};

static bq_gateway *check_gw(lua_State *L)
{
    struct gw_ud *u = luaL_checkudata(L, 1, GATEWAY_MT);
    if (u->g == NULL)
        luaL_error(L, "the gateway is closed");
    return u->g;
}

/* Reads a whole PEM file (at most 1 MiB) as a string on the stack; raises naming it. */
static const char *read_pem(lua_State *L, const char *path, const char *what)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        luaL_error(L, "gateway: cannot read the %s file '%s'", what, path);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    char chunk[4096];
    size_t n, total = 0;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0 && total < (1u << 20)) {
        luaL_addlstring(&b, chunk, n);
        total += n;
    }
    fclose(f);
    luaL_pushresult(&b);
    return lua_tostring(L, -1);
}

static int l_gateway_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    struct bq_gateway_options o;
    memset(&o, 0, sizeof o);
    o.host = bq_lua_opt_string(L, 1, "host");
    lua_Integer port = bq_lua_opt_integer(L, 1, "port", 0);
    if (port < 0 || port > 65535)
        return luaL_error(L, "gateway: port must be from 0 to 65535");
    o.port = (int)port;
    lua_Integer mb = bq_lua_opt_integer(L, 1, "max_body", 1 << 20);
    if (mb < 1 || mb > (1 << 30))
        return luaL_error(L, "gateway: max_body must be from 1 byte to 1 GiB");
    o.max_body = (size_t)mb;
    lua_Integer mc = bq_lua_opt_integer(L, 1, "max_connections", 1024);
    if (mc < 1 || mc > 1000000)
        return luaL_error(L, "gateway: max_connections must be from 1 to 1000000");
    o.max_connections = (int)mc;
    o.idle_timeout = bq_lua_opt_number(L, 1, "idle_timeout", 60);
    const char *cert = bq_lua_opt_string(L, 1, "cert");
    const char *key = bq_lua_opt_string(L, 1, "key");
    if ((cert == NULL) != (key == NULL))
        return luaL_error(L, "gateway: TLS needs both cert and key");
    if (cert != NULL) {
        o.cert_pem = read_pem(L, cert, "certificate");
        o.key_pem = read_pem(L, key, "key");
    }
    struct gw_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->g = NULL;
    luaL_setmetatable(L, GATEWAY_MT);
    bq_err err;
    if (bq_gateway_start(&o, &u->g, &err) != BQ_OK)
        return bq_lua_fail(L, &err);
    return 1;
}

static int l_gw_close(lua_State *L)
{
    struct gw_ud *u = luaL_checkudata(L, 1, GATEWAY_MT);
    bq_gateway_free(u->g);
    u->g = NULL;
    return 0;
}

/* gw:follow(client [, queue]) -> true | nil, msg, code: task events of the queue (the
 * client's by default) come out of gw:next as { event = json_array }. The client must stay
 * open while the gateway follows (gw:unfollow, or close the gateway first). */
static int l_gw_follow(lua_State *L)
{
    bq_gateway *g = check_gw(L);
    struct bq_client *c = bq_lua_check_client(L, 2);
    const char *queue = luaL_optstring(L, 3, c->cfg.queue_name);
    bq_err err;
    if (bq_gateway_follow(g, c->broker, queue, &err) != BQ_OK)
        return bq_lua_fail(L, &err);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_gw_unfollow(lua_State *L)
{
    bq_gateway_unfollow(check_gw(L));
    return 0;
}

static int l_gw_port(lua_State *L)
{
    lua_pushinteger(L, bq_gateway_port(check_gw(L)));
    return 1;
}

static int l_gw_fd(lua_State *L)
{
    int fd = bq_gateway_fd(check_gw(L));
    if (fd < 0)
        return 0;
    lua_pushinteger(L, fd);
    return 1;
}

static void set_str(lua_State *L, const char *key, const char *v)
{
    if (v != NULL) {
        lua_pushstring(L, v);
        lua_setfield(L, -2, key);
    }
}

static int l_gw_next(lua_State *L)
{
    bq_gateway *g = check_gw(L);
    double timeout = luaL_optnumber(L, 2, 1.0);
    struct bq_gateway_request r;
    int got = bq_gateway_next(g, timeout, &r);
    if (got <= 0) {
        if (got < 0)
            lua_pushboolean(L, 0);
        else
            lua_pushnil(L);
        return 1;
    }
    if (r.id == 0 && strcmp(r.method, "EVENT") == 0) { /* a task event (gw:follow) */
        lua_createtable(L, 0, 1);
        lua_pushlstring(L, r.body, r.body_len);
        lua_setfield(L, -2, "event");
        bq_gateway_request_free(&r);
        return 1;
    }
    lua_createtable(L, 0, 11);
    lua_pushinteger(L, (lua_Integer)r.id);
    lua_setfield(L, -2, "id");
    set_str(L, "method", r.method);
    set_str(L, "path", r.path);
    lua_pushlstring(L, r.body, r.body_len);
    lua_setfield(L, -2, "body");
    set_str(L, "authorization", r.authorization);
    set_str(L, "content_type", r.content_type);
    set_str(L, "accept", r.accept);
    set_str(L, "last_event_id", r.last_event_id);
    set_str(L, "host", r.host);
    set_str(L, "origin", r.origin);
    set_str(L, "peer", r.peer);
    bq_gateway_request_free(&r);
    return 1;
}

static uint64_t check_id(lua_State *L, int idx)
{
    lua_Integer id = luaL_checkinteger(L, idx);
    if (id < 1)
        luaL_argerror(L, idx, "not a request id");
    return (uint64_t)id;
}

/* The extra headers in the table at idx (if any), at most 16, into names/values (borrowed
 * from the table); their number. May raise. */
static int headers_of(lua_State *L, int idx, const char **names, const char **values)
{
    int nh = 0;
    if (lua_istable(L, idx)) {
        lua_pushnil(L);
        while (lua_next(L, idx) != 0 && nh < 16) {
            names[nh] = luaL_checkstring(L, -2);
            values[nh] = luaL_checkstring(L, -1);
            if (strpbrk(names[nh], "\r\n:") || strpbrk(values[nh], "\r\n"))
                return luaL_error(L, "gateway: a header holds CR, LF or a colon in its name");
            nh++;
            lua_pop(L, 1); /* anchored by the table */
        }
    }
    return nh;
}

static int l_gw_reply(lua_State *L)
{
    bq_gateway *g = check_gw(L);
    uint64_t id = check_id(L, 2);
    lua_Integer status = luaL_checkinteger(L, 3);
    size_t len;
    const char *body = luaL_checklstring(L, 4, &len);
    const char *ctype = luaL_optstring(L, 5, "application/json");
    if (status < 100 || status > 599)
        return luaL_argerror(L, 3, "an HTTP status");
    const char *names[16], *values[16];
    int nh = headers_of(L, 6, names, values);
    lua_pushboolean(L, bq_gateway_reply(g, id, (unsigned)status, ctype, body, len, names,
                                        values, nh));
    return 1;
}

static int l_gw_stream(lua_State *L)
{
    bq_gateway *g = check_gw(L);
    uint64_t id = check_id(L, 2);
    const char *ctype = luaL_optstring(L, 3, "text/event-stream");
    const char *names[16], *values[16];
    int nh = headers_of(L, 4, names, values);
    lua_pushboolean(L, bq_gateway_stream(g, id, ctype, names, values, nh));
    return 1;
}

static int l_gw_send(lua_State *L)
{
    bq_gateway *g = check_gw(L);
    uint64_t id = check_id(L, 2);
    size_t len;
    const char *data = luaL_checklstring(L, 3, &len);
    lua_pushboolean(L, bq_gateway_send(g, id, data, len));
    return 1;
}

static int l_gw_finish(lua_State *L)
{
    bq_gateway_end(check_gw(L), check_id(L, 2));
    return 0;
}

void bq_lua_open_gateway(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"port", l_gw_port},     {"next", l_gw_next}, {"reply", l_gw_reply}, {"fd", l_gw_fd},
        {"stream", l_gw_stream}, {"send", l_gw_send}, {"finish", l_gw_finish},
        {"follow", l_gw_follow}, {"unfollow", l_gw_unfollow},
        {"close", l_gw_close},   {NULL, NULL}};
    static const luaL_Reg meta[] = {{"__gc", l_gw_close}, {"__close", l_gw_close}, {NULL, NULL}};
    if (luaL_newmetatable(L, GATEWAY_MT)) {
        luaL_setfuncs(L, meta, 0);
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_gateway_new);
    lua_setfield(L, -2, "gateway");
}
