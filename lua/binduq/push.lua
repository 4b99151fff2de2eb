--- binduq.push: the gateway's push notifications (A2A tasks/pushNotificationConfig/* and
-- *TaskPushNotificationConfig*): where the configs are kept, and the sender that POSTs a
-- task's state changes to their URLs, retried with backoff.
--
-- Store: with Redis, a hash per task in the queue's slot, {Q}:push:<task_id> (config id ->
-- the config as JSON), so every gateway of the queue sees every config, and a set
-- {Q}:push:tasks of the tasks that have one, which a gateway asks (SMISMEMBER, one round
-- trip a step) about the tasks its events name. Without Redis (the in-memory scheduler) the
-- configs are kept in the gateway's memory. Both expire `ttl` seconds after the last set.
--
-- Sender: one FIFO per (task, config), so a config's notifications arrive in order; the
-- head of each is in flight (at most `max_inflight` calls at once) or waits for its retry.
-- Calls are libcurl transfers on the gateway's own thread, started and stepped without
-- waiting (core.http_step, call:ended()), so the gateway's loop never blocks on a webhook.

local core = require("binduq.core")
local json = require("binduq.json")

local M = {}

M.DEFAULTS = {
    attempts = 5,        -- tries of one notification (the first and 4 retries)
    timeout = 10,        -- seconds for one try
    base = 0.5, cap = 30, -- backoff: core.backoff(attempt, base, cap, "equal")
    ttl = 7 * 86400,     -- seconds a task's configs are kept after the last set
    max_configs = 16,    -- configs a task may have
    max_pending = 10000, -- notifications waiting in one gateway; past it new ones are dropped
    max_inflight = 64,   -- calls at once
}

--- The URL a notification may go to: http or https, a host, no blank or control byte.
-- Returns the URL or nil, why.
function M.check_url(url)
    if type(url) ~= "string" or url == "" then return nil, "url must be a string" end
    if #url > 2048 then return nil, "url is longer than 2048 bytes" end
    if url:find("[%c%s]") then return nil, "url holds a blank or a control character" end
    local scheme, rest = url:match("^([%a][%w+.-]*)://(.*)$")
    scheme = scheme and scheme:lower()
    if scheme ~= "http" and scheme ~= "https" then return nil, "url must be http:// or https://" end
    local authority = rest:match("^([^/?#]*)")
    local host = authority:gsub("^.*@", ""):gsub(":%d*$", "")
    if host == "" or host == "[]" then return nil, "url has no host" end
    return url
end

--- A URL as logs show it: scheme://host[:port]/path, no user, password, query or fragment.
function M.shown(url)
    local scheme, rest = tostring(url):match("^(%a[%w+.-]*)://(.*)$")
    if not scheme then return "(bad URL)" end
    rest = rest:gsub("[?#].*$", "")
    local authority, path = rest:match("^([^/]*)(.*)$")
    return scheme .. "://" .. authority:gsub("^.*@", "") .. path
end

local function str(v, what, max, optional)
    if v == nil or (optional and v == "") then
        if optional then return nil end
        error({ rpc = -32602, message = what .. " is required" }, 0)
    end
    if type(v) ~= "string" or #v > max or v:find("[%c]") then
        error({ rpc = -32602, message = what .. " must be a string of at most " .. max .. " bytes, no control characters" }, 0)
    end
    return v
end

--- A config from a request, in binduq's neutral shape {id, url, token, scheme, credentials,
-- v}; `v` is the protocol version whose shape its notifications take. `c` is 0.3's
-- PushNotificationConfig or 1.0's TaskPushNotificationConfig (flat). Raises InvalidParams.
function M.config_in(c, v, default_id, where)
    if type(c) ~= "table" then error({ rpc = -32602, message = where .. " must be an object" }, 0) end
    local url, why = M.check_url(c.url)
    if not url then error({ rpc = -32602, message = where .. ".url: " .. why }, 0) end
    local out = { url = url, v = v,
                  id = str(c.id, where .. ".id", 256, true) or default_id,
                  token = str(c.token, where .. ".token", 4096, true) }
    local a = c.authentication
    if a ~= nil and a ~= json.null then
        if type(a) ~= "table" then error({ rpc = -32602, message = where .. ".authentication must be an object" }, 0) end
        local scheme = a.scheme
        if scheme == nil and type(a.schemes) == "table" then scheme = a.schemes[1] end -- 0.3: schemes[]
        scheme = str(scheme, where .. ".authentication.scheme", 64, true)
        if scheme and not scheme:match("^[%w!#$%%&'*+.^_`|~-]+$") then
            error({ rpc = -32602, message = where .. ".authentication.scheme must be a token (Bearer, Basic, ...)" }, 0)
        end
        out.scheme = scheme
        out.credentials = str(a.credentials, where .. ".authentication.credentials", 4096, true)
    end
    return out
end

--- A config in a version's shape (TaskPushNotificationConfig).
function M.config_out(cfg, task_id, v1)
    if v1 then
        local auth = cfg.scheme and { scheme = cfg.scheme, credentials = cfg.credentials } or nil
        return { taskId = task_id, id = cfg.id, url = cfg.url, token = cfg.token, authentication = auth }
    end
    local auth = cfg.scheme and { schemes = { cfg.scheme }, credentials = cfg.credentials } or nil
    return { taskId = task_id, pushNotificationConfig = { id = cfg.id, url = cfg.url, token = cfg.token,
                                                          authentication = auth } }
end

--- The headers of a notification: the config's token in X-A2A-Notification-Token, its
-- authentication as Authorization (scheme and credentials), as the A2A SDKs send them.
function M.headers(cfg, content_type)
    local h = { ["Content-Type"] = content_type }
    if cfg.token then h["X-A2A-Notification-Token"] = cfg.token end
    if cfg.scheme and cfg.credentials then h.Authorization = cfg.scheme .. " " .. cfg.credentials end
    return h
end

-- ---- the store ------------------------------------------------------------------------------

local Store = {}
Store.__index = Store

--- A store on the scheduler `s`: Redis when it has Redis, else memory.
function M.store(s, opts)
    local self = setmetatable({ s = s, ttl = opts.ttl or M.DEFAULTS.ttl,
                                max_configs = opts.max_configs or M.DEFAULTS.max_configs }, Store)
    if s.backend == "memory" then
        self.mem = {} -- task id -> { configs = {id -> cfg}, until_t = }
    else
        self.q = s.queue_name
        self.set_key = core.key_derive(self.q, "push:tasks")
    end
    return self
end

function Store:key(task_id) return core.key_derive(self.q, "push:" .. task_id) end

function Store:cmd(...)
    local r, err = self.s.client:command(self.q, ...)
    if r == nil then error("push store: " .. tostring(err), 0) end
    return r
end

--- The configs of a task: a list sorted by id.
function Store:list(task_id)
    local out = {}
    if self.mem then
        local e = self.mem[task_id]
        if e and e.until_t < core.now() then
            self.mem[task_id] = nil
            e = nil
        end
        for _, c in pairs(e and e.configs or {}) do out[#out + 1] = c end
    else
        local r = self:cmd("HGETALL", self:key(task_id))
        for i = 2, #r, 2 do
            local c = json.decode(r[i])
            if type(c) == "table" and type(c.url) == "string" then out[#out + 1] = c end
        end
    end
    table.sort(out, function(a, b) return a.id < b.id end)
    return out
end

function Store:set(task_id, cfg)
    if self.mem then
        local e = self.mem[task_id] or { configs = {} }
        local n = 0
        for id in pairs(e.configs) do if id ~= cfg.id then n = n + 1 end end
        if n >= self.max_configs then return nil, "a task has at most " .. self.max_configs .. " push configs" end
        e.configs[cfg.id] = cfg
        e.until_t = core.now() + self.ttl
        self.mem[task_id] = e
        return true
    end
    local key = self:key(task_id)
    if self:cmd("HEXISTS", key, cfg.id) == 0 and self:cmd("HLEN", key) >= self.max_configs then
        return nil, "a task has at most " .. self.max_configs .. " push configs"
    end
    self:cmd("HSET", key, cfg.id, assert(json.encode(cfg)))
    self:cmd("EXPIRE", key, tostring(math.floor(self.ttl)))
    self:cmd("SADD", self.set_key, task_id)
    self.any = true
    return true
end

function Store:delete(task_id, id)
    if self.mem then
        local e = self.mem[task_id]
        if not e or not e.configs[id] then return false end
        e.configs[id] = nil
        if next(e.configs) == nil then self.mem[task_id] = nil end
        return true
    end
    local key = self:key(task_id)
    local n = self:cmd("HDEL", key, id)
    if self:cmd("EXISTS", key) == 0 then self:cmd("SREM", self.set_key, task_id) end
    return n > 0
end

--- Of the task ids in `ids` (a set), those that have configs (a set).
function Store:having(ids)
    local out = {}
    if self.mem then
        for id in pairs(ids) do if self.mem[id] then out[id] = true end end
        return out
    end
    -- Whether any task has configs, asked at most every 0.1 s: a queue whose clients set none
    -- pays no round trip for its events. A config set meanwhile on another gateway is seen
    -- by that gateway itself (it watches the tasks of the configs it sets).
    local now = core.monotonic()
    if (self.any_until or 0) <= now then
        self.any = self:cmd("EXISTS", self.set_key) == 1
        self.any_until = now + 0.1
    end
    if not self.any then return out end
    local batch = {}
    local function ask()
        if #batch == 0 then return end
        local r = self:cmd("SMISMEMBER", self.set_key, table.unpack(batch))
        for i, id in ipairs(batch) do if r[i] == 1 then out[id] = true end end
        batch = {}
    end
    for id in pairs(ids) do
        batch[#batch + 1] = id
        if #batch == 60 then ask() end
    end
    ask()
    return out
end

--- Claims the notification `what` of (task, config) for this gateway: true once, across
-- every gateway of the queue (SET NX, kept `ttl` seconds, at most a day); in memory, kept with the task's
-- configs.
function Store:claim(task_id, cfg_id, what)
    if self.mem then
        local e = self.mem[task_id]
        if not e then return false end -- its configs are gone
        e.claimed = e.claimed or {}
        local k = cfg_id .. "\0" .. what
        if e.claimed[k] then return false end
        e.claimed[k] = true
        return true
    end
    local key = core.key_derive(self.q, "push:sent:" .. task_id .. ":" .. cfg_id .. ":" .. what)
    return self:cmd("SET", key, "1", "NX", "EX", tostring(math.floor(math.min(self.ttl, 86400)))) == "OK"
end

--- A task done with: its configs forgotten by the set of tasks that have one (the hash
-- stays until it expires, for get and list).
function Store:settled(task_id)
    if self.mem then return end
    self:cmd("SREM", self.set_key, task_id)
end

-- ---- the sender -----------------------------------------------------------------------------

local Sender = {}
Sender.__index = Sender

function M.sender(opts)
    local d = M.DEFAULTS
    return setmetatable({
        attempts = opts.attempts or d.attempts, timeout = opts.timeout or d.timeout,
        base = opts.base or d.base, cap = opts.cap or d.cap,
        max_pending = opts.max_pending or d.max_pending, max_inflight = opts.max_inflight or d.max_inflight,
        queues = {}, keys = {}, pending = 0, inflight = 0,
        stats = { sent = 0, failed = 0, retried = 0, dropped = 0 },
    }, Sender)
end

--- Queues a notification: body (a string) POSTed to cfg.url.
function Sender:add(task_id, cfg, body, content_type, state)
    if self.pending >= self.max_pending then
        self.stats.dropped = self.stats.dropped + 1
        core.log("warn", "push_dropped", { task_id = task_id, config = cfg.id, state = state, pending = self.pending })
        return false
    end
    local k = task_id .. "\0" .. cfg.id
    local q = self.queues[k]
    if not q then
        q = {}
        self.queues[k] = q
        self.keys[#self.keys + 1] = k
    end
    q[#q + 1] = { task = task_id, cfg = cfg, body = body, ctype = content_type, state = state, attempt = 0, at = 0 }
    self.pending = self.pending + 1
    return true
end

function Sender:busy() return self.pending > 0 end

local function start(self, n)
    local ok, call, err = pcall(core.http_start, {
        url = n.cfg.url, method = "POST", body = n.body, headers = M.headers(n.cfg, n.ctype),
        timeout = self.timeout, connect_timeout = math.min(5, self.timeout), max_bytes = 65536,
    })
    if ok and call then
        n.call = call
        self.inflight = self.inflight + 1
        return true
    end
    return false, ok and err or tostring(call)
end

-- The outcome of an ended call: true, or false and why.
local function outcome(n)
    local status, err, code = n.call:head()
    if not status then return false, tostring(code) .. ": " .. tostring(err) end -- no answer
    if status >= 200 and status < 300 then return true end
    return false, "HTTP " .. status
end

--- Sends what is due and reads what ended. Returns the seconds until it wants to run again
-- (small while calls are in flight), or nil when nothing waits.
function Sender:step()
    if self.pending == 0 then return nil end
    if self.inflight > 0 then core.http_step() end
    local now = core.monotonic()
    local wake
    local keep = {}
    for _, k in ipairs(self.keys) do
        local q = self.queues[k]
        local n = q[1]
        local finished, why
        if n.call then
            if n.call:ended() then
                finished, why = outcome(n)
                n.call:close()
                n.call = nil
                self.inflight = self.inflight - 1
            end
        elseif n.at <= now and self.inflight < self.max_inflight then
            local ok, err = start(self, n)
            if not ok then finished, why = false, err end
        end
        if finished == true then
            self.stats.sent = self.stats.sent + 1
            core.log("debug", "push_sent", { task_id = n.task, config = n.cfg.id, state = n.state,
                                             url = M.shown(n.cfg.url), attempt = n.attempt + 1 })
            table.remove(q, 1)
            self.pending = self.pending - 1
        elseif finished == false then
            n.attempt = n.attempt + 1
            if n.attempt >= self.attempts then
                self.stats.failed = self.stats.failed + 1
                core.log("warn", "push_failed", { task_id = n.task, config = n.cfg.id, state = n.state,
                                                  url = M.shown(n.cfg.url), attempts = n.attempt, error = why })
                table.remove(q, 1)
                self.pending = self.pending - 1
            else
                self.stats.retried = self.stats.retried + 1
                local delay = core.backoff(n.attempt - 1, self.base, self.cap, "equal")
                n.at = now + delay
                core.log("info", "push_retry", { task_id = n.task, config = n.cfg.id, state = n.state,
                                                 url = M.shown(n.cfg.url), attempt = n.attempt, delay = delay, error = why })
            end
        end
        local head = q[1]
        if head then
            keep[#keep + 1] = k
            local w = head.call and 0.01 or math.max(0.001, head.at - now)
            if head.at <= now and not head.call then w = 0.01 end -- waits for a free call
            wake = math.min(wake or w, w)
        else
            self.queues[k] = nil
        end
    end
    self.keys = keep
    return wake
end

--- Ends every call in flight (the gateway closes); what was not sent is lost (logged).
function Sender:close()
    for _, k in ipairs(self.keys) do
        for _, n in ipairs(self.queues[k]) do
            if n.call then n.call:close() end
        end
    end
    if self.pending > 0 then core.log("warn", "push_unsent", { pending = self.pending }) end
    self.queues, self.keys, self.pending, self.inflight = {}, {}, 0, 0
end

return M
