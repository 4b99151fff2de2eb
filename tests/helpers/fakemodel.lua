--- helpers.fakemodel: the fake model server (tests/helpers/fakemodel.py) for the HTTP
-- client's specs, on a free loopback port, stopped by PID. Its endpoints and query
-- parameters are listed at the top of fakemodel.py.
--
--   local srv = fakemodel.start()              -- srv.url ("http://127.0.0.1:PORT"), srv.port
--   fakemodel.start{ tls = true }              -- https, a self-signed certificate it makes
--                                              -- (srv.cert, srv.key): no client trusts it
--   fakemodel.start{ tls = { cert =, key = } } -- https with these (e.g. from helpers.tls)
--   srv:get("/status?code=503")                -- body, HTTP status (through curl)
--   srv:stats()                                -- /_stats decoded; srv:stats(5): last 5 events
--   srv:reset()                                -- POST /_reset
--   srv:stop()                                 -- TERM, then KILL, by PID
-- opts.max_seconds (default 600) bounds the server's life; opts.pace (seconds) is the chat
-- endpoint's ?pace when a request names none; opts.verbose logs to its log file.
--
-- Its own requests go through curl (-k over TLS), which is not the client under test.

local proc = require("helpers.proc")
local json = require("binduq.json")

local M = {}
local Server = {}
Server.__index = Server

-- fakemodel.py sits next to this file.
local SCRIPT = debug.getinfo(1, "S").source:match("^@(.*)%.lua$") .. ".py"

local function self_signed(dir)
    local cert, key = dir .. "/fakemodel.crt", dir .. "/fakemodel.key"
    local out, ok = proc.sh(("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost "
        .. "-addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout %s -out %s")
        :format(proc.quote(key), proc.quote(cert)))
    assert(ok, "openssl: " .. out)
    return { cert = cert, key = key }
end

--- Starts a server; raises if it does not report its port within 10 seconds.
function M.start(opts)
    opts = opts or {}
    local dir = proc.tmpdir()
    local tls = opts.tls == true and self_signed(dir) or opts.tls or nil
    local port_file = dir .. "/port"
    local args = { "python3", proc.quote(SCRIPT), "--port-file", proc.quote(port_file),
                   "--max-seconds", tostring(opts.max_seconds or 600) }
    if tls then
        for _, a in ipairs({ "--cert", proc.quote(tls.cert), "--key", proc.quote(tls.key) }) do
            args[#args + 1] = a
        end
    end
    if opts.pace then
        args[#args + 1] = "--pace"
        args[#args + 1] = tostring(opts.pace)
    end
    if opts.verbose then args[#args + 1] = "--verbose" end
    local p = proc.spawn(table.concat(args, " "), { dir = dir, log = dir .. "/fakemodel.log" })
    local port = proc.wait_for(function()
        if not proc.alive(p) then return "exited" end
        local s = proc.read(port_file)
        return s and tonumber(s:match("%d+"))
    end, 10)
    if type(port) ~= "number" then
        proc.stop(p, 1)
        error("fakemodel.py did not start: " .. (proc.read(p.log) or ""))
    end
    local scheme = tls and "https" or "http"
    return setmetatable({
        proc = p, pid = p.pid, dir = dir, port = port,
        url = ("%s://127.0.0.1:%d"):format(scheme, port),
        cert = tls and tls.cert, key = tls and tls.key,
    }, Server)
end

--- Requests `path` with curl (extra: more curl arguments, a string); returns the body and
-- the HTTP status (a number; 0 if there was no answer).
function Server:get(path, extra)
    local out = proc.sh(("curl -s -k --max-time 10 -w '\\n%%{http_code}' %s %s")
        :format(extra or "", proc.quote(self.url .. path)))
    local body, code = out:match("^(.*)\n(%d+)$")
    return body or out, tonumber(code) or 0
end

--- The server's records (/_stats) decoded; `last`: only that many of the latest events.
function Server:stats(last)
    local body, code = self:get("/_stats" .. (last and ("?events=" .. last) or ""))
    assert(code == 200, "GET /_stats: " .. code .. " " .. body)
    return json.decode(body)
end

--- Clears the server's records.
function Server:reset()
    local body, code = self:get("/_reset", "-X POST")
    assert(code == 200, "POST /_reset: " .. code .. " " .. body)
    return true
end

--- Stops the server (TERM, then KILL); returns its exit status.
function Server:stop()
    if self.proc then return proc.stop(self.proc, 5) end
end

return M
