--- helpers.proc: processes for the tests, started in the background and stopped by PID.
--
-- spawn() runs a command through a small sh wrapper that records the command's PID and, when
-- it exits, its exit status; so a test can signal exactly the process it started and read
-- how it ended. Nothing here ever signals a process the tests did not start.

local core = require("binduq.core")

local M = {}

local counter = 0

function M.quote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Runs a shell command; returns its stdout (trailing newline removed) and whether it
-- exited 0.
function M.sh(cmd)
    local f = assert(io.popen(cmd .. " 2>&1", "r"))
    local out = f:read("a")
    local ok = f:close()
    return (out:gsub("\n$", "")), ok == true
end

function M.tmpdir()
    local d = M.sh("mktemp -d /tmp/binduq-test.XXXXXX")
    return d
end

function M.read(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local s = f:read("a")
    f:close()
    return s
end

function M.write(path, data)
    local f = assert(io.open(path, "wb"))
    f:write(data)
    f:close()
end

M.sleep = core.sleep
M.now = core.monotonic

--- Waits until fn() returns a true value or `timeout` seconds pass; returns that value.
function M.wait_for(fn, timeout, step)
    local deadline = M.now() + (timeout or 10)
    repeat
        local v = fn()
        if v then return v end
        M.sleep(step or 0.05)
    until M.now() > deadline
    return fn()
end

--- Starts `cmd` (a shell command line) in the background.
-- opts.env: variables to set; opts.unset: names to remove; opts.log: output file;
-- opts.dir: where to keep the pid and status files.
-- Returns {pid=, log=, rcfile=}.
function M.spawn(cmd, opts)
    opts = opts or {}
    counter = counter + 1
    local dir = opts.dir or M.tmpdir()
    local id = ("p%d_%d"):format(counter, math.random(1, 1e9))
    local pidf, rcf = dir .. "/" .. id .. ".pid", dir .. "/" .. id .. ".rc"
    local log = opts.log or (dir .. "/" .. id .. ".log")
    local pre = {}
    for _, k in ipairs(opts.unset or {}) do pre[#pre + 1] = "unset " .. k .. ";" end
    for k, v in pairs(opts.env or {}) do pre[#pre + 1] = "export " .. k .. "=" .. M.quote(v) .. ";" end
    -- The pid file is renamed into place so a reader never sees it half written.
    local script = ("(%s exec %s) > %s 2>&1 < /dev/null & p=$!; echo $p > %s; mv %s %s; wait $p; echo $? > %s")
        :format(table.concat(pre, " "), cmd, M.quote(log), M.quote(pidf .. ".tmp"), M.quote(pidf .. ".tmp"),
                M.quote(pidf), M.quote(rcf))
    os.execute("sh -c " .. M.quote(script) .. " > /dev/null 2>&1 &")
    local pid = M.wait_for(function()
        local s = M.read(pidf)
        return s and tonumber(s:match("%d+"))
    end, 10)
    assert(pid, "could not start: " .. cmd)
    local p = { pid = pid, log = log, rcfile = rcf, cmd = cmd }
    if M.current_test then
        local mine = M.spawned[M.current_test] or {}
        M.spawned[M.current_test] = mine
        mine[#mine + 1] = p
    end
    return p
end

--- The processes each running test started (tests/helpers/cleanup.lua, busted's helper, sets
-- current_test): a test that fails before it stops them has them stopped for it.
M.spawned = setmetatable({}, { __mode = "k" })

--- Stops the processes `test` started that still run; returns how many.
function M.stop_left(test)
    local n = 0
    for _, p in ipairs(M.spawned[test] or {}) do
        if M.alive(p) then
            M.stop(p, 2)
            n = n + 1
            io.stderr:write(("# stopped pid %d, left running by a failed test: %s\n"):format(p.pid, p.cmd:sub(1, 120)))
        end
    end
    M.spawned[test] = nil
    return n
end

function M.alive(p)
    return M.read(p.rcfile) == nil
end

--- Sends a signal ("TERM", "KILL", ...) to a process we started.
function M.kill(p, sig)
    if M.alive(p) then
        os.execute(("kill -%s %d 2>/dev/null"):format(sig or "TERM", p.pid))
    end
end

--- Waits up to `timeout` seconds for the process to exit; returns its exit status or nil.
function M.wait(p, timeout)
    local rc = M.wait_for(function()
        local s = M.read(p.rcfile)
        return s and tonumber(s:match("%d+"))
    end, timeout or 10)
    return rc
end

--- Stops a process: TERM, then KILL after `grace` seconds. Returns the exit status.
function M.stop(p, grace)
    M.kill(p, "TERM")
    local rc = M.wait(p, grace or 5)
    if rc == nil then
        M.kill(p, "KILL")
        rc = M.wait(p, 5)
    end
    return rc
end

--- Runs a command to completion with a time limit; returns exit status and output.
function M.run(cmd, opts)
    opts = opts or {}
    local p = M.spawn(cmd, opts)
    local rc = M.wait(p, opts.timeout or 60)
    if rc == nil then
        M.stop(p, 1)
        error("timed out: " .. cmd)
    end
    return rc, M.read(p.log) or ""
end

return M
