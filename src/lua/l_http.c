/*
 * l_http.c -- HTTP calls from Lua (binduq.HttpCall) and the server-sent-events reader
 * (binduq.SseReader), for lua/binduq/http.lua, which handlers reach as ctx:http and scripts
 * as bq.http:
 *   core.http_start(opts) -> call | raises on a bad option
 *   call:head() -> status, headers | nil, msg, code
 *   call:read() -> piece | false (the end) | nil, msg, code      (opts.stream)
 *   call:body() -> the whole (rest of the) body | nil, msg, code
 *   call:close()                                                  (also __close, __gc)
 *   call:release()  done reading: the rest dropped, the connection kept if it ends at once
 *   call:ended() -> whether the transfer ended (then head and body return at once)
 *   core.http_step() -> true | nil, msg: the progress the thread's transfers can make now,
 *     without waiting (a loop that sends many calls and must not block: the gateway's
 *     push notifications start calls, step them between its own waits, and read the
 *     ended ones)
 *   core.sse_reader([max_event]) -> reader;  reader:feed(piece) -> { event, ... } | nil, msg, code
 *
 * Each thread has its own transfer loop (net/http.c), kept for the thread's life so that
 * connections stay open between calls. In a handler state the waits register the loop's
 * wake-up as the slot's waker (engine/worker.h) and end, closing the transfer, when the task
 * is canceled or paused, the worker shuts down or the handler's timeout passes; the call then
 * raises the same error ctx:sleep raises.
 */
#include "binding.h"
#include "l_slot.h"

#include "../core/alloc.h"
#include "../core/clock.h"
#include "../core/err.h"
#include "../net/http.h"
#include "../net/sse.h"

#include <pthread.h>
#include <string.h>

#define HTTP_CALL_MT "binduq.HttpCall"
#define SSE_READER_MT "binduq.SseReader"
#define MAX_HEADERS 100

/* ---- the thread's loop ----------------------------------------------------------------- */

static pthread_key_t loop_key;
static pthread_once_t loop_once = PTHREAD_ONCE_INIT;

static void loop_free(void *loop)
{
    bq_http_loop_free(loop);
}

static void loop_key_make(void)
{
    pthread_key_create(&loop_key, loop_free);
}

struct bq_http_loop *bq_lua_http_thread_loop(void)
{
    pthread_once(&loop_once, loop_key_make);
    return pthread_getspecific(loop_key);
}

static struct bq_http_loop *thread_loop(bq_err *err)
{
    pthread_once(&loop_once, loop_key_make);
    struct bq_http_loop *l = pthread_getspecific(loop_key);
    if (l == NULL && (l = bq_http_loop_new(err)) != NULL)
        pthread_setspecific(loop_key, l);
    return l;
}

/* ---- a call ---------------------------------------------------------------------------- */

struct call {
    struct bq_http *h; /* NULL once closed */
};

static struct call *check_call(lua_State *L)
{
    struct call *c = luaL_checkudata(L, 1, HTTP_CALL_MT);
    if (c->h == NULL)
        luaL_error(L, "the HTTP call is closed");
    return c;
}

static bool is_token_char(unsigned char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* Reads opts.headers ({name = value}) as "Name: value" lines into lines[], the strings
 * anchored in a table left on the stack. Returns how many. May raise (nothing to free). */
static int read_headers(lua_State *L, int idx, const char **lines)
{
    int n = 0;
    lua_newtable(L);
    int anchor = lua_gettop(L);
    if (lua_getfield(L, idx, "headers") == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (!lua_istable(L, -1))
        luaL_error(L, "http: option 'headers' must be a table of name = value");
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        size_t nl, vl;
        if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
            luaL_error(L, "http: headers must map names (strings) to values (strings)");
        const char *name = lua_tolstring(L, -2, &nl);
        const char *value = lua_tolstring(L, -1, &vl);
        for (size_t i = 0; i < nl; i++)
            if (!is_token_char((unsigned char)name[i]))
                luaL_error(L, "http: header name '%s' is not a token", name);
        if (nl == 0 || memchr(value, '\r', vl) || memchr(value, '\n', vl) ||
            memchr(value, '\0', vl))
            luaL_error(L, "http: header '%s' has an empty name or a CR, LF or NUL in its value",
                       name);
        if (n == MAX_HEADERS)
            luaL_error(L, "http: at most %d headers", MAX_HEADERS);
        /* "Name;" is how libcurl sends a header with an empty value. */
        lua_pushfstring(L, vl > 0 ? "%s: %s" : "%s;", name, value);
        lines[n] = lua_tostring(L, -1);
        lua_rawseti(L, anchor, ++n);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return n;
}

static double opt_duration(lua_State *L, int idx, const char *key, double def)
{
    if (lua_getfield(L, idx, key) == LUA_TNIL) {
        lua_pop(L, 1);
        return def;
    }
    char what[64];
    snprintf(what, sizeof what, "http: option '%s'", key);
    double t = bq_lua_check_duration(L, -1, what);
    lua_pop(L, 1);
    return t;
}

/* core.http_start(opts) */
static int l_http_start(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    struct bq_http_request r = {0};
    r.url = bq_lua_opt_string(L, 1, "url");
    if (r.url == NULL)
        return luaL_error(L, "http: option 'url' is required");
    r.method = bq_lua_opt_string(L, 1, "method");
    if (lua_getfield(L, 1, "body") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "http: option 'body' must be a string here");
        r.body = lua_tolstring(L, -1, &r.body_len); /* anchored by opts */
    }
    lua_pop(L, 1);
    r.timeout = opt_duration(L, 1, "timeout", 0);
    r.connect_timeout = opt_duration(L, 1, "connect_timeout", 0);
    r.idle_timeout = opt_duration(L, 1, "idle_timeout", 0);
    r.insecure = !bq_lua_opt_boolean(L, 1, "verify", 1);
    r.ca_file = bq_lua_opt_string(L, 1, "ca_file");
    r.max_redirects = (long)bq_lua_opt_integer(L, 1, "redirects", 0);
    if (r.max_redirects < 0 || r.max_redirects > 50)
        return luaL_error(L, "http: option 'redirects' must be 0 to 50");
    lua_Integer max = bq_lua_opt_integer(L, 1, "max_bytes", 0);
    if (max < 0)
        return luaL_error(L, "http: option 'max_bytes' must be positive");
    r.max_bytes = (size_t)max;
    r.stream = bq_lua_opt_boolean(L, 1, "stream", 0);

    const char *lines[MAX_HEADERS];
    r.headers = lines;
    r.nheaders = read_headers(L, 1, lines);

    struct call *c = lua_newuserdatauv(L, sizeof *c, 0);
    c->h = NULL;
    luaL_setmetatable(L, HTTP_CALL_MT);
    bq_err err;
    const char *code = "EINVAL";
    struct bq_http_loop *loop = thread_loop(&err);
    bq_status rc = loop == NULL ? err.code : bq_http_start(loop, &r, &c->h, &code, &err);
    if (rc != BQ_OK) {
        if (rc == BQ_EINVAL) { /* a bad option: the caller's mistake, raised */
            lua_pushstring(L, err.msg);
            return lua_error(L);
        }
        lua_pushnil(L);
        lua_pushstring(L, err.msg);
        lua_pushstring(L, loop == NULL ? bq_status_name(rc) : code);
        return 3;
    }
    return 1;
}

static int call_close(lua_State *L)
{
    struct call *c = luaL_checkudata(L, 1, HTTP_CALL_MT);
    bq_http_free(c->h);
    c->h = NULL;
    return 0;
}

/* call:release(): the caller stopped reading; the call's connection is kept if the rest of
 * the response comes at once (bq_http_release): within 50 ms, or, in a task's coroutine
 * (whose state runs others meanwhile), only what already came. */
static int call_release(lua_State *L)
{
    struct call *c = luaL_checkudata(L, 1, HTTP_CALL_MT);
    bq_http_release(c->h, bq_lua_slot_in_coroutine(L) ? 0 : 0.05);
    c->h = NULL;
    return 0;
}

static bool must_stop(void *ud)
{
    (void)ud;
    return bq_lua_slot_must_stop();
}

/* After a wait, in the caller's frame (or its continuation after a yield): a stop of the
 * running handler closes the call and raises; a failed transfer pushes nil, msg, code
 * (returns 3); otherwise returns 0. */
static int after_wait(lua_State *L, struct call *c)
{
    if (c->h == NULL)
        return luaL_error(L, "the HTTP call is closed");
    if (bq_lua_slot_must_stop()) {
        bq_http_free(c->h); /* closes the connection: the server sees the call end */
        c->h = NULL;
        bq_lua_slot_raise(L);
    }
    const char *code;
    const char *why = bq_http_failed(c->h, &code);
    if (why != NULL) {
        lua_pushnil(L);
        lua_pushstring(L, why);
        lua_pushstring(L, code);
        return 3;
    }
    return 0;
}

/* Waits for `until`, then returns done(L): in a task's coroutine by yielding to the handler
 * state's loop (l_slot.c), elsewhere by waiting here, woken by the slot's waker. */
static int wait_then(lua_State *L, enum bq_http_until until, lua_KFunction done)
{
    struct call *c = check_call(L);
    if (bq_http_holds(c->h, until))
        return done(L, LUA_OK, 0);
    if (bq_lua_slot_await_http(L, c->h, (int)until))
        return lua_yieldk(L, 0, 0, done);
    double deadline = 0;
    struct bq_slot_ctl *ctl = bq_lua_slot_running(&deadline);
    bq_err err;
    struct bq_http_loop *loop = bq_lua_http_thread_loop();
    if (ctl != NULL)
        bq_slot_set_waker(ctl, bq_http_loop_wake, loop);
    bq_status rc = bq_http_wait(c->h, until, deadline, ctl ? must_stop : NULL, NULL, &err);
    if (ctl != NULL)
        bq_slot_set_waker(ctl, NULL, NULL);
    if (rc == BQ_EINTR || rc == BQ_ETIMEDOUT) {
        bq_http_free(c->h);
        c->h = NULL;
        bq_lua_slot_raise(L);
        rc = BQ_EINTR; /* only a race gets here: the stop was withdrawn */
    }
    if (rc != BQ_OK) {
        bq_http_free(c->h);
        c->h = NULL;
        return bq_lua_fail(L, &err);
    }
    return done(L, LUA_OK, 0);
}

/* call:ended() -> boolean, no waiting, no progress made (core.http_step makes it) */
static int l_call_ended(lua_State *L)
{
    struct call *c = check_call(L);
    lua_pushboolean(L, bq_http_holds(c->h, BQ_HTTP_END));
    return 1;
}

/* core.http_step() -> true | nil, msg, code */
static int l_http_step(lua_State *L)
{
    struct bq_http_loop *loop = bq_lua_http_thread_loop();
    bq_err err;
    if (loop != NULL && bq_http_loop_step(loop, &err) != BQ_OK)
        return bq_lua_fail(L, &err);
    lua_pushboolean(L, 1);
    return 1;
}

/* call:head() -> status, headers */
static int head_done(lua_State *L, int status, lua_KContext k)
{
    (void)status;
    (void)k;
    struct call *c = luaL_checkudata(L, 1, HTTP_CALL_MT);
    int n = after_wait(L, c);
    if (n > 0)
        return n;
    lua_pushinteger(L, bq_http_status(c->h));
    int nh = bq_http_header_count(c->h);
    lua_createtable(L, 0, nh);
    for (int i = 0; i < nh; i++) {
        const char *name, *value;
        size_t nl, vl;
        bq_http_header(c->h, i, &name, &nl, &value, &vl);
        lua_pushlstring(L, name, nl);
        if (lua_rawget(L, -2) == LUA_TSTRING) { /* a repeated name: joined, RFC 9110 5.3 */
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, value, vl);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, value, vl);
        }
        lua_pushlstring(L, name, nl);
        lua_insert(L, -2);
        lua_rawset(L, -3);
    }
    return 2;
}

static int l_call_head(lua_State *L)
{
    return wait_then(L, BQ_HTTP_HEAD, head_done);
}

/* call:read() -> piece | false */
static int read_done(lua_State *L, int status, lua_KContext k)
{
    (void)status;
    (void)k;
    struct call *c = luaL_checkudata(L, 1, HTTP_CALL_MT);
    int n = after_wait(L, c);
    if (n > 0)
        return n;
    size_t len;
    const char *p = bq_http_body(c->h, &len);
    if (len == 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_pushlstring(L, p, len);
    bq_http_consume(c->h);
    return 1;
}

static int l_call_read(lua_State *L)
{
    return wait_then(L, BQ_HTTP_DATA, read_done);
}

/* call:body() -> the rest of the body */
static int body_done(lua_State *L, int status, lua_KContext k)
{
    (void)status;
    (void)k;
    struct call *c = luaL_checkudata(L, 1, HTTP_CALL_MT);
    int n = after_wait(L, c);
    if (n > 0)
        return n;
    size_t len;
    const char *p = bq_http_body(c->h, &len);
    lua_pushlstring(L, p, len);
    bq_http_consume(c->h);
    return 1;
}

static int l_call_body(lua_State *L)
{
    return wait_then(L, BQ_HTTP_END, body_done);
}

static int l_call_tostring(lua_State *L)
{
    struct call *c = luaL_checkudata(L, 1, HTTP_CALL_MT);
    lua_pushfstring(L, "binduq.HttpCall (%s)", c->h ? bq_http_shown(c->h) : "closed");
    return 1;
}

/* ---- the event-stream reader ----------------------------------------------------------- */

static int sse_gc(lua_State *L)
{
    struct bq_sse *p = luaL_checkudata(L, 1, SSE_READER_MT);
    bq_sse_free(p);
    return 0;
}

/* core.sse_reader([max_event]) */
static int l_sse_reader(lua_State *L)
{
    lua_Integer max = luaL_optinteger(L, 1, 0);
    if (max < 0)
        return luaL_error(L, "sse_reader: max_event must be positive");
    struct bq_sse *p = lua_newuserdatauv(L, sizeof *p, 0);
    bq_sse_init(p, (size_t)max);
    luaL_setmetatable(L, SSE_READER_MT);
    return 1;
}

static bool push_event(void *ud, const struct bq_sse_event *ev)
{
    lua_State *L = ud;
    lua_createtable(L, 0, 4);
    lua_pushlstring(L, ev->type, ev->type_len);
    lua_setfield(L, -2, "event");
    lua_pushlstring(L, ev->data, ev->data_len);
    lua_setfield(L, -2, "data");
    if (ev->id_len > 0) {
        lua_pushlstring(L, ev->id, ev->id_len);
        lua_setfield(L, -2, "id");
    }
    if (ev->retry >= 0) {
        lua_pushinteger(L, (lua_Integer)ev->retry);
        lua_setfield(L, -2, "retry");
    }
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    return true;
}

/* reader:feed(piece) -> { {event=, data=, id=, retry=}, ... } | nil, msg, code */
static int l_sse_feed(lua_State *L)
{
    struct bq_sse *p = luaL_checkudata(L, 1, SSE_READER_MT);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    lua_settop(L, 2);
    lua_newtable(L);
    bq_err err;
    if (bq_sse_feed(p, s, len, push_event, L, &err) != BQ_OK)
        return bq_lua_fail(L, &err);
    return 1;
}

void bq_lua_open_http(lua_State *L)
{
    static const luaL_Reg call_methods[] = {
        {"head", l_call_head}, {"read", l_call_read}, {"body", l_call_body},
        {"ended", l_call_ended}, {"close", call_close}, {"release", call_release}, {NULL, NULL}};
    static const luaL_Reg call_meta[] = {
        {"__gc", call_close}, {"__close", call_close}, {"__tostring", l_call_tostring},
        {NULL, NULL}};
    if (luaL_newmetatable(L, HTTP_CALL_MT)) {
        luaL_setfuncs(L, call_meta, 0);
        luaL_newlib(L, call_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    static const luaL_Reg sse_methods[] = {{"feed", l_sse_feed}, {NULL, NULL}};
    if (luaL_newmetatable(L, SSE_READER_MT)) {
        lua_pushcfunction(L, sse_gc);
        lua_setfield(L, -2, "__gc");
        luaL_newlib(L, sse_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_http_start);
    lua_setfield(L, -2, "http_start");
    lua_pushcfunction(L, l_http_step);
    lua_setfield(L, -2, "http_step");
    lua_pushcfunction(L, l_sse_reader);
    lua_setfield(L, -2, "sse_reader");
}
