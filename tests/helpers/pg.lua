--- helpers.pg: a throwaway PostgreSQL on a free loopback port, stopped by PID.
--
--   local pg = require("helpers.pg")
--   local server = pg.start()            -- server.url, server.port, server.dir
--   server:psql("SELECT 1")              -- psql -At; returns the output and whether it worked
--   server:restart()                     -- same port, same data directory
--   server:stop()                        -- fast shutdown, then the directory is removed
--
-- initdb takes a second or two, so a spec starts one server in setup() (or at the top of its
-- describe block) and reuses it for every test, giving each test its own schema or task ids;
-- it stops the server in teardown(). pg.available() says whether PostgreSQL is installed, for
-- a spec that wants to skip without it.
--
-- The cluster trusts every connection (initdb --auth=trust, superuser "postgres"), except
-- that the role binduq_pw, if a test creates it, must give its password over TCP
-- (scram-sha-256): that is how a test sees a wrong password refused. PostgreSQL refuses to
-- run as root, so as root its programs run as user postgres through setpriv, which execs in
-- place: the PID helpers.proc records is the postmaster's own, and stop() signals exactly it.

local proc = require("helpers.proc")

local M = {}
local Server = {}
Server.__index = Server

local function is_root()
    return proc.sh("id -u") == "0"
end

--- The directory of initdb and postgres: on PATH, else the newest /usr/lib/postgresql/*/bin.
local function bindir()
    local path, ok = proc.sh("command -v initdb")
    if ok and path ~= "" then return (path:gsub("/[^/]*$", "")) end
    local dirs = proc.sh("ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1")
    local found = proc.sh("test -x " .. proc.quote(dirs .. "/initdb") .. " && echo yes")
    if dirs ~= "" and found == "yes" then return dirs end
    return nil
end

--- True if PostgreSQL's server programs are installed.
function M.available()
    return bindir() ~= nil
end

local function ready(port)
    local _, ok = proc.sh(("pg_isready -q -h 127.0.0.1 -p %d -t 1"):format(port))
    return ok
end

function Server:launch()
    local args = {
        self.as_pg .. proc.quote(self.bin .. "/postgres"), "-D", proc.quote(self.data),
        "-p", tostring(self.port), "-k", proc.quote(self.dir),
        "-c", "listen_addresses=127.0.0.1",
    }
    if not self.durable then -- a test's server: nothing it writes need outlive a crash
        for _, a in ipairs({ "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off" }) do
            args[#args + 1] = a
        end
    end
    for _, a in ipairs(self.extra or {}) do args[#args + 1] = a end
    self.proc = proc.spawn(table.concat(args, " "),
        { dir = self.dir, log = self.dir .. "/postgres.log" })
    self.pid = self.proc.pid
    return proc.wait_for(function()
        if not proc.alive(self.proc) then return "exited" end
        return ready(self.port) and "up"
    end, 15) == "up"
end

--- Stops the postmaster by its PID: SIGINT is the fast shutdown (it disconnects clients and
-- writes a checkpoint); SIGQUIT, the immediate one, after 10 s. Keeps the data directory.
function Server:halt()
    if self.proc and proc.alive(self.proc) then
        proc.kill(self.proc, "INT")
        if proc.wait(self.proc, 10) == nil then
            proc.kill(self.proc, "QUIT")
            proc.wait(self.proc, 5)
        end
    end
end

--- Starts a server. opts.args adds arguments to postgres (e.g. {"-c", "max_connections=20"}).
-- A test's server runs with fsync, full_page_writes and synchronous_commit off (quicker, and
-- a test's rows need not outlive a crash of the machine); opts.durable keeps PostgreSQL's
-- defaults, each commit flushed to disk, as production runs it (the bench).
function M.start(opts)
    opts = opts or {}
    local bin = bindir()
    if not bin then
        error("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql)")
    end
    local root = is_root()
    local s = setmetatable({
        bin = bin,
        dir = proc.tmpdir(),
        as_pg = root and "setpriv --reuid=postgres --regid=postgres --init-groups " or "",
        extra = opts.args,
        durable = opts.durable,
    }, Server)
    s.data = s.dir .. "/data"
    if root then proc.sh("chown postgres: " .. proc.quote(s.dir)) end
    local out, ok = proc.sh(("%s%s -D %s -U postgres --auth=trust -N"):format(
        s.as_pg, proc.quote(bin .. "/initdb"), proc.quote(s.data)))
    if not ok then
        proc.sh("rm -rf " .. proc.quote(s.dir))
        error("initdb failed: " .. out)
    end
    proc.sh(("%ssed -i '1i host all binduq_pw 127.0.0.1/32 scram-sha-256' %s"):format(
        s.as_pg, proc.quote(s.data .. "/pg_hba.conf")))
    for _ = 1, 20 do
        s.port = math.random(20000, 59999)
        s.url = ("postgresql://postgres@127.0.0.1:%d/postgres"):format(s.port)
        if s:launch() then return s end
        s:halt() -- most likely the port was taken: try another
    end
    local log = proc.read(s.dir .. "/postgres.log") or ""
    proc.sh("rm -rf " .. proc.quote(s.dir))
    error("could not start postgres on a free port: " .. log)
end

--- Runs SQL through psql -At (unaligned, tuples only, one value per line); returns the output
-- and whether psql exited 0. A failed statement's message is in the output.
function Server:psql(sql)
    return proc.sh(("PGCONNECT_TIMEOUT=5 psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p %d "
        .. "-U postgres -d postgres -c %s"):format(self.port, proc.quote(sql)))
end

--- Stops the server and removes its data directory.
function Server:stop()
    self:halt()
    if self.dir then
        proc.sh("rm -rf " .. proc.quote(self.dir))
        self.dir = nil
    end
end

--- Stops and starts again on the same port with the same data directory (the rows survive).
function Server:restart()
    self:halt()
    for _ = 1, 50 do
        if self:launch() then return true end
        proc.sleep(0.1)
    end
    error("could not restart postgres on port " .. self.port)
end

return M
