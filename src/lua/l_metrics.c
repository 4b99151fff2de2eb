/*
 * l_metrics.c -- the process' metrics from Lua (engine/metrics.h): serving /metrics,
 * /healthz and /readyz, rendering the Prometheus text, and counting storage errors. The
 * workers add themselves when they start (l_engine.c).
 *
 *   core.metrics_serve(host, port) -> bound port | nil, msg, code
 *   core.metrics_render()          -> text
 *   core.count_storage_error()
 */
#include "binding.h"

#include "../core/alloc.h"
#include "../core/err.h"
#include "../engine/metrics.h"

/* core.metrics_serve(host, port) -> bound port | nil, msg, code: /metrics, /healthz and
 * /readyz of this process (engine/metrics.h). */
static int l_metrics_serve(lua_State *L)
{
    const char *host = luaL_optstring(L, 1, "127.0.0.1");
    lua_Integer port = luaL_optinteger(L, 2, 0);
    int bound = 0;
    bq_err err;
    if (bq_metrics_serve(host, (int)port, &bound, &err) != BQ_OK)
        return bq_lua_fail(L, &err);
    lua_pushinteger(L, bound);
    return 1;
}

/* core.metrics_render() -> the Prometheus text of this process. */
static int l_metrics_render(lua_State *L)
{
    char *text = NULL;
    size_t len = 0;
    if (bq_metrics_render(&text, &len) != BQ_OK)
        return luaL_error(L, "out of memory");
    lua_pushlstring(L, text, len);
    bq_free(text);
    return 1;
}

/* core.count_storage_error() */
static int l_storage_error(lua_State *L)
{
    (void)L;
    bq_metrics_storage_error();
    return 0;
}

void bq_lua_open_metrics(lua_State *L)
{
    lua_pushcfunction(L, l_metrics_serve);
    lua_setfield(L, -2, "metrics_serve");
    lua_pushcfunction(L, l_metrics_render);
    lua_setfield(L, -2, "metrics_render");
    lua_pushcfunction(L, l_storage_error);
    lua_setfield(L, -2, "count_storage_error");
}
