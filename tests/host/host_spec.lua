-- binduq-lua, the host: options, arg, exit codes, error messages with tracebacks.

local proc = require("helpers.proc")

local host = "build/binduq-lua"

local function run(args)
    local rc, out = proc.run(host .. " " .. args, { unset = { "REDIS_URL" }, timeout = 30 })
    return rc, out
end

describe("binduq-lua", function()
    it("prints its version", function()
        local rc, out = run("-v")
        assert.are.equal(0, rc)
        local v = out:match("^binduq%-lua (%d+%.%d+%.%d+)")
        assert.truthy(v, out)
        local _, ver = run([[-e "io.write(require('binduq')._VERSION)"]])
        assert.are.equal(v, ver)
        local rc2, out2 = run("--version")
        assert.are.equal(0, rc2, out2)
        assert.are.equal(out, out2)
    end)

    it("prints help and exits 0", function()
        local rc, out = run("-h")
        assert.are.equal(0, rc)
        assert.truthy(out:find("usage: binduq-lua [options] [script [args]]", 1, true))
        assert.truthy(out:find("REDIS_URL", 1, true))
    end)

    it("lists every command of the dispatcher in its help", function()
        local cli = require("binduq.cli")
        local rc, out = run("--help")
        assert.are.equal(0, rc)
        local n = 0
        for cmd in pairs(cli.COMMANDS) do
            n = n + 1
            assert.truthy(out:find("\n  " .. cmd .. " ", 1, true), "--help omits " .. cmd .. ":\n" .. out)
            -- and each answers its own --help
            local rc2, out2 = run(cmd .. " --help")
            assert.are.equal(0, rc2, out2)
            assert.truthy(out2:find("usage: binduq-lua " .. cmd, 1, true), out2)
        end
        assert.are.equal(#cli.ORDER, n)
        assert.is_true(n >= 6)
    end)

    it("names the commands when the first word is neither a command nor a file", function()
        local rc, out = run("dql list")
        assert.are.equal(2, rc)
        assert.truthy(out:find("binduq-lua: unknown command 'dql' (did you mean 'dlq'?)\n", 1, true), out)
        assert.truthy(out:find("commands: dlq, stats, workers, queue, top, task", 1, true), out)
        assert.is_nil(out:find("cannot open", 1, true), out)
        rc, out = run("frobnicate")
        assert.are.equal(2, rc)
        assert.truthy(out:find("unknown command 'frobnicate'\n", 1, true), out)
        assert.is_nil(out:find("did you mean", 1, true), out)
        -- a bare word that is a file is still a script
        local dir = proc.tmpdir()
        proc.write(dir .. "/dql", "print('script dql ran')")
        rc, out = proc.run("sh -c " .. proc.quote("cd " .. dir .. " && " .. proc.sh("pwd") .. "/" .. host .. " dql"),
                           { timeout = 30 })
        proc.sh("rm -rf " .. proc.quote(dir))
        assert.are.equal(0, rc, out)
        assert.are.equal("script dql ran\n", out)
    end)

    it("names the nearest subcommand or option of a command, before connecting to anything", function()
        for _, c in ipairs({
            { "dlq lsit", "binduq-lua dlq: unknown subcommand 'lsit' (did you mean 'list'?)" },
            { "task shwo", "binduq-lua task: unknown subcommand 'shwo' (did you mean 'show'?)" },
            { "queue peak", "binduq-lua queue: unknown subcommand 'peak' (did you mean 'peek'?)" },
            { "stats --jsn", "binduq-lua stats: unknown option '--jsn' (did you mean '--json'?)" },
            { "top --jsn", "binduq-lua top: unknown option '--jsn' (did you mean '--json'?)" },
            { "dlq list --taskid x", "binduq-lua dlq: unknown option '--taskid' (did you mean '--task-id'?)" },
            { "stats --frobnicate 3", "binduq-lua stats: unknown option '--frobnicate'\n" },
        }) do
            local rc, out = run(c[1])
            assert.are.equal(2, rc, out)
            assert.truthy(out:find(c[2], 1, true), out)
            assert.falsy(out:find("no Redis to inspect", 1, true), out) -- refused before opening Redis
        end
    end)

    it("rejects an unknown option and a missing script", function()
        local rc, out = run("--frobnicate")
        assert.are.equal(1, rc)
        assert.truthy(out:find("unrecognized option '--frobnicate'", 1, true))
        rc, out = run("")
        assert.are.equal(1, rc)
        assert.truthy(out:find("no script given", 1, true))
        rc, out = run("-e")
        assert.are.equal(1, rc)
        assert.truthy(out:find("'-e' needs an argument", 1, true))
    end)

    it("runs -e statements before the script", function()
        local rc, out = run([[-e "x = 41" -e "print(x + 1)"]])
        assert.are.equal(0, rc)
        assert.are.equal("42\n", out)
    end)

    it("sets arg and the script's varargs like lua", function()
        local rc, out = run("tests/host/fixtures/args.lua one two")
        assert.are.equal(0, rc)
        assert.truthy(out:find("arg0=tests/host/fixtures/args.lua\n", 1, true))
        assert.truthy(out:find("arg1=one\narg2=two\nn=2\nfirst=one\n", 1, true))
    end)

    it("reads the script from stdin with -", function()
        local rc, out = proc.run("sh -c " .. proc.quote("echo 'print(\"from stdin\")' | " .. host .. " -"),
                                 { timeout = 30 })
        assert.are.equal(0, rc)
        assert.are.equal("from stdin\n", out)
    end)

    it("exits 1 with the error and a traceback", function()
        local rc, out = run("tests/host/fixtures/error.lua")
        assert.are.equal(1, rc)
        assert.truthy(out:find("binduq-lua: tests/host/fixtures/error.lua:2: boom from fixture", 1, true), out)
        assert.truthy(out:find("stack traceback:", 1, true), out)
        assert.truthy(out:find("in local 'middle'", 1, true) or out:find("in upvalue 'middle'", 1, true)
                      or out:find("middle", 1, true), out)
    end)

    it("shows the message of a binduq error table", function()
        local rc, out = run("tests/host/fixtures/fail_table.lua")
        assert.are.equal(1, rc)
        assert.truthy(out:find("binduq-lua: the input was unusable", 1, true), out)
    end)

    it("exits 1 when the script cannot be opened", function()
        local rc, out = run("tests/host/fixtures/nope.lua")
        assert.are.equal(1, rc)
        assert.truthy(out:find("cannot open tests/host/fixtures/nope.lua", 1, true), out)
    end)

    it("passes the script's exit code through", function()
        local rc = run("tests/host/fixtures/exit_code.lua 7")
        assert.are.equal(7, rc)
    end)

    it("finds binduq's modules from any directory", function()
        local abs = proc.sh("pwd") .. "/" .. host
        local rc, out = proc.run("sh -c " .. proc.quote("cd /tmp && " .. abs .. [[ -e "print(require('binduq').role)"]]),
                                 { timeout = 30 })
        assert.are.equal(0, rc)
        assert.are.equal("main\n", out)
    end)
end)

describe("binduq-lua's memory", function()
    it("maps OpenSSL, libpq and libmicrohttpd only once a script uses them", function()
        local script = [[
local function mapped()
    local f = assert(io.open("/proc/self/maps"))
    local m = f:read("a")
    f:close()
    local out = {}
    for _, lib in ipairs({ "libssl", "libcrypto", "libpq", "libmicrohttpd" }) do
        if m:find(lib .. "[%.%-]") then out[#out + 1] = lib end
    end
    return table.concat(out, ",")
end
local bq = require("binduq")
bq.log_configure{ level = "off" }
local s = bq.scheduler{ type = "memory" }
assert(s:run{ task_id = "a", messages = { "hi" } })
io.write("plain=", mapped(), "\n")
pcall(bq.scheduler, { url = "rediss://127.0.0.1:1/0" }) -- lazy: no connection is made
io.write("tls=", mapped(), "\n")
]]
        local path = os.tmpname()
        local f = assert(io.open(path, "w"))
        f:write(script)
        f:close()
        local rc, out = run(path)
        os.remove(path)
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("plain=\n", 1, true), out)
        assert.truthy(out:find("tls=libssl,libcrypto\n", 1, true), out)
    end)
end)

describe("the build", function()
    it("embeds the current Redis scripts", function()
        local files = proc.sh("ls lua/binduq/redis/*.lua | sort | tr '\\n' ' '")
        local out = proc.sh("lua5.4 src/broker/embed.lua " .. files)
        assert.are.equal(proc.read("src/broker/scripts.h"), out .. "\n")
    end)

    it("installs binduq.pc: examples/schedule.c builds with pkg-config under any PREFIX", function()
        if proc.sh("command -v pkg-config") == "" then
            pending("pkg-config is not installed")
            return
        end
        local prefix = proc.tmpdir() .. "/opt/binduq"
        local q = proc.quote
        local rc, out = proc.run("make -s install PREFIX=" .. q(prefix), { timeout = 300 })
        assert.are.equal(0, rc, out)
        local pc = proc.read(prefix .. "/lib/pkgconfig/binduq.pc")
        assert.truthy(pc, "no binduq.pc installed")
        local v = proc.read("src/binduq.h"):match('#define BQ_VERSION_STRING "([^"]+)"')
        assert.truthy(pc:find("\nVersion: " .. v .. "\n", 1, true), pc)
        assert.truthy(pc:find("\nprefix=" .. prefix .. "\n", 1, true), pc)
        local env = "PKG_CONFIG_PATH=" .. q(prefix .. "/lib/pkgconfig")
        local flags = proc.sh(env .. " pkg-config --cflags --libs binduq")
        assert.truthy(flags:find("-lbinduq", 1, true), flags)
        local static = proc.sh(env .. " pkg-config --static --libs binduq")
        for _, l in ipairs({ "-lbinduq", "-lhiredis", "-lpthread", "-lm", "-ldl" }) do
            assert.truthy(static:find(l, 1, true), static)
        end
        local exe = proc.tmpdir() .. "/schedule_c"
        rc, out = proc.run("sh -c " .. q(("cc -std=c11 -Wall -Wextra -Werror -o %s examples/schedule.c "
                                         .. "$(%s pkg-config --cflags --libs binduq)"):format(q(exe), env)),
                           { timeout = 120 })
        assert.are.equal(0, rc, out)
        rc, out = proc.run("env -u REDIS_URL LD_LIBRARY_PATH=" .. q(prefix .. "/lib") .. " " .. q(exe) .. " 2 pc",
                           { timeout = 30 })
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("scheduled 2 tasks (0 duplicates); queue length 2", 1, true), out)
        proc.sh("rm -rf " .. q(prefix) .. " " .. q(exe))
    end)

    it("installs every Lua module of lua/binduq with the rock", function()
        local rockspec = proc.read(proc.sh("ls binduq-*.rockspec"))
        for f in proc.sh("ls lua/binduq/*.lua lua/binduq/lifecycle/*.lua"):gmatch("[^\n]+") do
            local mod = f:match("lua/binduq/(.-)%.lua$"):gsub("/", ".")
            local name = mod == "init" and "binduq" or ("binduq." .. mod)
            assert.truthy(rockspec:find('["' .. name .. '"] = "' .. f .. '"', 1, true), name)
        end
        for f in proc.sh("ls src/*/*.c"):gmatch("[^\n]+") do
            if not f:find("src/host/", 1, true) then
                assert.truthy(rockspec:find('"' .. f .. '"', 1, true), f)
            end
        end
    end)
end)

describe("the rock", function()
    it("has the version of binduq.h", function()
        local h = proc.read("src/binduq.h")
        local v = h:match('#define BQ_VERSION_STRING "([^"]+)"')
        local rockspec = proc.sh("ls binduq-*.rockspec")
        assert.are.equal("binduq-" .. v .. "-1.rockspec", rockspec)
        assert.truthy(proc.read(rockspec):find('version = "' .. v .. '-1"', 1, true))
        assert.are.equal(v, require("binduq")._VERSION)
    end)

    it("builds with luarocks and loads under plain lua5.4 from any directory", function()
        if not proc.sh("command -v luarocks") or proc.sh("command -v luarocks") == "" then
            pending("luarocks is not installed")
            return
        end
        local tree = proc.tmpdir()
        local rockspec = proc.sh("ls binduq-*.rockspec")
        -- Build from a copy: the builtin backend leaves object files next to the sources.
        local srcdir = proc.tmpdir()
        proc.sh(("cp -r src lua %s %s/"):format(rockspec, srcdir))
        local rc, out = proc.run("sh -c " .. proc.quote(("cd %s && luarocks --lua-version 5.4 --tree %s make %s")
                                                        :format(srcdir, tree, rockspec)), { timeout = 300 })
        assert.are.equal(0, rc, out)
        local env = ("LUA_PATH_5_4='%s/share/lua/5.4/?.lua;%s/share/lua/5.4/?/init.lua;;' "
                     .. "LUA_CPATH_5_4='%s/lib/lua/5.4/?.so;;'"):format(tree, tree, tree)
        rc, out = proc.run("sh -c " .. proc.quote(("cd /tmp && env %s lua5.4 -e 'local bq = require \"binduq\"; print(bq._VERSION)'")
                           :format(env)), { timeout = 30 })
        assert.are.equal(0, rc, out)
        local _, v = run("-v")
        assert.are.equal(v:match("(%d+%.%d+%.%d+)"), out:match("^(%d+%.%d+%.%d+)\n$"))
        -- The same worker code runs under plain lua5.4: drain a memory queue.
        rc, out = proc.run(("env %s lua5.4 examples/hello.lua"):format(env), { timeout = 60, unset = { "REDIS_URL" } })
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("done: 5 completed, 0 failed", 1, true), out)
        proc.sh("rm -rf " .. proc.quote(tree) .. " " .. proc.quote(srcdir))
    end)

    it("warns once when handler states re-running the script schedule tasks", function()
        local rc, out = run("tests/host/fixtures/spawn_schedules.lua")
        assert.are.equal(0, rc, out)
        -- One run from the main state, one from each of the two handler states.
        assert.truthy(out:find("results 3\n", 1, true), out)
        local _, warnings = out:gsub("scheduled_while_loading", "")
        assert.are.equal(1, warnings, out)
        assert.truthy(out:find("task_id=spawn-handler-", 1, true), out)
        assert.truthy(out:find('put the handlers in a module (handlers = \\"app.handlers\\")', 1, true), out)
    end)
end)

describe("the bench's model server (build/bench/modelsrv)", function()
    it("streams a chat completion after its delay, as bq.http reads it, and refuses a GET", function()
        local rc, out = proc.run("make -s build/bench/modelsrv", { timeout = 120 })
        assert.are.equal(0, rc, out)
        local p = proc.spawn("build/bench/modelsrv 60")
        finally(function() proc.stop(p, 5) end)
        local port = proc.wait_for(function() return (proc.read(p.log) or ""):match("PORT (%d+)") end, 10)
        assert(port, proc.read(p.log))
        local script = ([[
local bq, core, json = require("binduq"), require("binduq.core"), require("binduq.json")
local t0, words, events = core.monotonic(), {}, 0
local r = assert(bq.http{ url = "http://127.0.0.1:%s/v1/chat/completions?delay=0.3&tokens=3",
    body = { stream = true, messages = { { role = "user", content = "hi" } } },
    on_event = function(ev)
        events = events + 1
        if ev.data == "[DONE]" then return false end
        local d = json.decode(ev.data).choices[1].delta
        words[#words + 1] = (d.content or "?"):gsub(" ", "_")
    end })
io.write(("%%d %%s %%d %%s %%.2f "):format(r.status, r.headers["content-type"], events, table.concat(words, ","),
                                     core.monotonic() - t0))
io.write(select(2, bq.http{ url = "http://127.0.0.1:%s/x" }) or "")]]):format(port, port)
        rc, out = run("-e " .. proc.quote(script))
        assert.are.equal(0, rc, out)
        local status, ctype, events, words, secs, err = out:match("^(%d+) (%S+) (%d+) (%S+) ([%d.]+) (.*)$")
        assert.are.same({ "200", "text/event-stream", "6", ",w1,_w2,_w3,?" }, { status, ctype, events, words }, out)
        assert.is_true(tonumber(secs) >= 0.3 and tonumber(secs) < 2, out)
        assert.matches("HTTP 404", err)
    end)
end)
