/*
 * main.c -- binduq-lua, the host: a Lua 5.4 interpreter with binduq.core preloaded and the
 * binduq Lua modules on its path, which runs a script with `arg` set as `lua` does.
 *
 *   binduq-lua [options] [script [args]]
 *   binduq-lua COMMAND ...     (admin commands: dlq, stats, workers, queue, top, task,
 *                               schedules, serve;
 *                               lua/binduq/cli.lua)
 *     -e stat  execute string 'stat'        -l mod  require 'mod' into global 'mod'
 *     -v       show version information     -h      show this help
 *     --       stop handling options        -       execute stdin and stop handling options
 *
 * On an error the host prints "binduq-lua: <message>" and a traceback to stderr and exits 1.
 * This is the only file of binduq that decides to exit.
 */
#include "../binduq.h"
#include "../core/alloc.h"
#include "../core/arena.h"
#include "../lua/binding.h"

#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <lualib.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *progname = "binduq-lua";

static void usage(FILE *f)
{
    fprintf(f,
            "usage: %s [options] [script [args]]\n"
            "       %s COMMAND [options]     (see %s COMMAND --help)\n"
            "Runs a Lua 5.4 script with binduq available (require \"binduq\").\n"
            "Commands (Redis at $REDIS_URL, task state at $DATABASE_URL):\n"
            "  dlq <list|show|requeue|purge>   the dead-letter list\n"
            "  stats                           per queue: ready, delayed, in flight, dead, workers\n"
            "  workers                         live workers: lease left, tasks in flight\n"
            "  queue <peek|purge>              the waiting operations\n"
            "  top                             a live view of queues and workers\n"
            "  task <show|list|cancel|pause|resume|retry>   stored task state, and operations on a task\n"
            "  schedules <list|pause|resume|remove>   recurring schedules (docs/recurring.md)\n"
            "  serve [AGENT.lua]               the A2A gateway alone (docs/gateway.md)\n"
            "  dashboard                       the web dashboard (docs/dashboard.md)\n"
            "Options:\n"
            "  -e stat  execute string 'stat'\n"
            "  -l mod   require library 'mod' into global 'mod'\n"
            "  -v       show version information (also --version)\n"
            "  -h       show this help\n"
            "  --       stop handling options\n"
            "  -        execute stdin and stop handling options\n"
            "Environment: REDIS_URL, REDIS_QUEUE_NAME, REDIS_MAX_CONNECTIONS, DATABASE_URL,\n"
            "BINDUQ_QUEUE_ORDER, BINDUQ_LOG_LEVEL, BINDUQ_LOG_FORMAT; Bindu's names too\n"
            "(SCHEDULER_TYPE, QUEUE_NAME, ...), and a .env file in the working directory\n"
            "(BINDUQ_ENV_FILE names another). See the README, Configuration.\n",
            progname, progname, progname);
}

static void version(void)
{
    printf("binduq-lua %s (%s, hiredis %d.%d.%d)\n", BQ_VERSION_STRING, LUA_RELEASE,
           HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
}

/* Message handler: turns the error into "message\ntraceback". Error tables made by bq.fail
 * carry their text in `message`; other values use __tostring. */
static int msghandler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (lua_istable(L, 1) && lua_getfield(L, 1, "message") == LUA_TSTRING) {
            msg = lua_tostring(L, -1);
        } else if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) {
            msg = lua_tostring(L, -1);
        } else {
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
        }
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static int report(lua_State *L, int status)
{
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        fprintf(stderr, "%s: %s\n", progname, msg ? msg : "(no message)");
        fflush(stderr);
        lua_pop(L, 1);
    }
    return status;
}

static int docall(lua_State *L, int narg, int nres)
{
    int base = lua_gettop(L) - narg;
    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);
    int status = lua_pcall(L, narg, nres, base);
    lua_remove(L, base);
    return status;
}

/* Prepends the directories where binduq's Lua modules live to package.path: ../lua next to
 * the executable (a build tree: build/binduq-lua) and ../share/lua/5.4 (an installed prefix).
 * Directories that do not exist cost nothing but a failed open. */
static void set_paths(lua_State *L)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash == NULL)
        return;
    *slash = '\0';
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/../lua/?.lua;%s/../lua/?/init.lua;%s/../share/lua/5.4/?.lua;"
                       "%s/../share/lua/5.4/?/init.lua;%s",
                    exe, exe, exe, exe, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
}

static void create_arg_table(lua_State *L, char **argv, int argc, int script)
{
    int narg = argc - script - 1;
    lua_createtable(L, narg > 0 ? narg : 0, script + 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - script);
    }
    lua_setglobal(L, "arg");
}

static int dostring(lua_State *L, const char *s)
{
    int status = luaL_loadbuffer(L, s, strlen(s), "=(command line)");
    if (status == LUA_OK)
        status = docall(L, 0, 0);
    return report(L, status);
}

static int dolibrary(lua_State *L, const char *name)
{
    lua_getglobal(L, "require");
    lua_pushstring(L, name);
    int status = docall(L, 1, 1);
    if (status == LUA_OK)
        lua_setglobal(L, name);
    return report(L, status);
}

static int doscript(lua_State *L, char **argv, int argc, int script)
{
    const char *fname = argv[script];
    if (strcmp(fname, "-") == 0 && strcmp(argv[script - 1], "--") != 0)
        fname = NULL; /* stdin */
    int status = luaL_loadfile(L, fname);
    if (status == LUA_OK) {
        int n = argc - script - 1;
        luaL_checkstack(L, n + 3, "too many arguments to script");
        for (int i = 1; i <= n; i++)
            lua_pushstring(L, argv[script + i]);
        status = docall(L, n, LUA_MULTRET);
    }
    return report(L, status);
}

/* A bare word (no '/', no '.') may name an admin command of binduq.cli ("dlq", ...).
 * Returns 1 and pushes the exit status if it does and the command ran. A bare word that
 * is no command and no file is a mistyped command: binduq.cli says so (naming the
 * commands) and exits 2, rather than "cannot open" a script nobody meant. */
static int try_command(lua_State *L, char **argv, int argc, int first)
{
    const char *w = argv[first];
    if (w[0] == '\0' || strcmp(w, "-") == 0 || strchr(w, '/') != NULL || strchr(w, '.') != NULL)
        return 0;
    bool is_file = access(w, F_OK) == 0;
    int top = lua_gettop(L);
    lua_getglobal(L, "require");
    lua_pushstring(L, "binduq.cli");
    if (docall(L, 1, 1) != LUA_OK) { /* no binduq.cli: treat the word as a script name */
        lua_settop(L, top);
        return 0;
    }
    lua_getfield(L, top + 1, "COMMANDS");                       /* cli COMMANDS */
    int known = lua_istable(L, -1) && lua_getfield(L, -1, w) != LUA_TNIL;
    if (!known && is_file) {
        lua_settop(L, top);
        return 0;
    }
    lua_settop(L, top + 1);                                     /* cli */
    lua_getfield(L, top + 1, "main");                           /* cli main */
    lua_createtable(L, argc - first, 0);
    for (int i = first; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - first + 1);
    }
    int status = docall(L, 1, 1);
    if (status != LUA_OK) {
        report(L, status);
        lua_pushinteger(L, 1);
        return 1;
    }
    lua_pushinteger(L, lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 1);
    return 1;
}

/* Everything that runs Lua, in protected mode (pmain as in lua.c). */
static int pmain(lua_State *L)
{
    int argc = (int)lua_tointeger(L, 1);
    char **argv = lua_touserdata(L, 2);
    luaL_checkversion(L);
    luaL_openlibs(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_binduq_core);
    lua_setfield(L, -2, "binduq.core");
    lua_pop(L, 1);
    set_paths(L);

    /* First pass: find the script and check the options. */
    int script = 0, has_e = 0, has_v = 0;
    for (int i = 1; i < argc && script == 0; i++) {
        const char *a = argv[i];
        if (a[0] != '-') {
            script = i;
        } else if (strcmp(a, "--") == 0) {
            if (i + 1 < argc)
                script = i + 1;
            break;
        } else if (strcmp(a, "-") == 0) {
            script = i;
        } else if (strcmp(a, "-e") == 0 || strcmp(a, "-l") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "%s: '%s' needs an argument\n", progname, a);
                usage(stderr);
                lua_pushinteger(L, 1);
                return 1;
            }
            has_e |= a[1] == 'e';
            i++;
        } else if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
            has_v = 1;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            lua_pushinteger(L, 0);
            return 1;
        } else {
            fprintf(stderr, "%s: unrecognized option '%s'\n", progname, a);
            usage(stderr);
            lua_pushinteger(L, 1);
            return 1;
        }
    }
    if (has_v)
        version();
    if (script == 0 && !has_e) {
        if (has_v) {
            lua_pushinteger(L, 0);
            return 1;
        }
        fprintf(stderr, "%s: no script given\n", progname);
        usage(stderr);
        lua_pushinteger(L, 1);
        return 1;
    }
    if (script > 0 && !has_e && try_command(L, argv, argc, script))
        return 1;
    create_arg_table(L, argv, argc, script > 0 ? script : argc);
    /* Second pass: run -e and -l in order. */
    int last = script > 0 ? script : argc;
    for (int i = 1; i < last; i++) {
        if (strcmp(argv[i], "-e") == 0 && dostring(L, argv[++i]) != LUA_OK) {
            lua_pushinteger(L, 1);
            return 1;
        }
        if (strcmp(argv[i], "-l") == 0 && dolibrary(L, argv[++i]) != LUA_OK) {
            lua_pushinteger(L, 1);
            return 1;
        }
    }
    if (script > 0 && doscript(L, argv, argc, script) != LUA_OK) {
        lua_pushinteger(L, 1);
        return 1;
    }
    lua_pushinteger(L, 0);
    return 1;
}

int main(int argc, char **argv)
{
    if (argv[0] != NULL && argv[0][0] != '\0') {
        const char *slash = strrchr(argv[0], '/');
        progname = slash ? slash + 1 : argv[0];
    }
    /* Writes to a closed socket must fail with EPIPE, not kill the process. */
    signal(SIGPIPE, SIG_IGN);
    /* The script's own state: producers build their lists of operations here, so it may
     * keep more of its memory for reuse than a handler state (4 MiB). */
    bq_arena *arena = bq_arena_new(64u * 1024 * 1024);
    lua_State *L = arena ? lua_newstate(bq_arena_lua_alloc, arena) : NULL;
    if (L == NULL) {
        bq_arena_free(arena);
        fprintf(stderr, "%s: cannot create the Lua state: not enough memory\n", progname);
        return 1;
    }
    lua_pushcfunction(L, pmain);
    lua_pushinteger(L, argc);
    lua_pushlightuserdata(L, argv);
    int status = lua_pcall(L, 2, 1, 0);
    int code = 1;
    if (status == LUA_OK)
        code = (int)lua_tointeger(L, -1);
    else
        report(L, status);
    lua_close(L);
    bq_arena_free(arena);
    return code;
}
