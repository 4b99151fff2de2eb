-- binduq.push, the gateway's push notifications, without a network: which URLs a config may
-- name, a config in and out of both protocol versions, the headers, the in-memory store and
-- its claims, and the sender's retries and give-up against a port where nothing listens.
-- The integration spec (tests/integration/gateway_spec.lua) drives it with the A2A SDKs.

local push = require("binduq.push")
local core = require("binduq.core")
local bq = require("binduq")

describe("push", function()
    it("takes http and https URLs with a host, nothing else", function()
        for _, u in ipairs({ "http://127.0.0.1:8080/hook", "https://example.com/a?b=c", "HTTP://x/" }) do
            assert.are.equal(u, (push.check_url(u)))
        end
        for _, u in ipairs({ "file:///etc/passwd", "ftp://x/y", "gopher://x", "http://", "http:///path",
                             "http://a b/", "http://x/\r\nX: y", "javascript:alert(1)", "", 42,
                             "http://" .. ("a"):rep(3000) }) do
            assert.is_nil((push.check_url(u)), tostring(u))
        end
    end)

    it("shows a URL without its user, password, query or fragment", function()
        assert.are.equal("https://host:8443/path", push.shown("https://user:secret@host:8443/path?key=k#f"))
        assert.are.equal("(bad URL)", push.shown("nope"))
    end)

    it("reads a config of either version and writes it back in each version's shape", function()
        local c = push.config_in({ url = "http://h/x", token = "t", authentication = { schemes = { "Bearer" }, credentials = "c" } },
                                 "0.3", "task-1", "params.pushNotificationConfig")
        assert.are.same({ url = "http://h/x", v = "0.3", id = "task-1", token = "t", scheme = "Bearer", credentials = "c" }, c)
        assert.are.same({ taskId = "task-1", pushNotificationConfig = { id = "task-1", url = "http://h/x", token = "t",
                          authentication = { schemes = { "Bearer" }, credentials = "c" } } }, push.config_out(c, "task-1", false))
        local c1 = push.config_in({ id = "a", url = "https://h/", authentication = { scheme = "Basic", credentials = "x" } },
                                  "1.0", "fresh", "params")
        assert.are.same({ taskId = "t", id = "a", url = "https://h/", authentication = { scheme = "Basic", credentials = "x" } },
                        push.config_out(c1, "t", true))
        assert.are.same({ ["Content-Type"] = "application/json", ["X-A2A-Notification-Token"] = "t", Authorization = "Bearer c" },
                        push.headers(c, "application/json"))
        assert.are.same({ ["Content-Type"] = "application/a2a+json", Authorization = "Basic x" }, push.headers(c1, "application/a2a+json"))
    end)

    it("refuses a bad config with InvalidParams naming the field", function()
        local function err(c)
            local ok, e = pcall(push.config_in, c, "1.0", "id", "params")
            assert.is_false(ok)
            assert.are.equal(-32602, e.rpc)
            return e.message
        end
        assert.matches("params.url", err({ url = "ftp://x/" }))
        assert.matches("params.url", err({}))
        assert.matches("params must be an object", err("x"))
        assert.matches("token", err({ url = "http://h/", token = "a\r\nb" }))
        assert.matches("scheme", err({ url = "http://h/", authentication = { scheme = "Bea rer", credentials = "c" } }))
        assert.matches("credentials", err({ url = "http://h/", authentication = { scheme = "Bearer", credentials = 5 } }))
    end)

    it("keeps configs in memory without Redis, claims each notification once, at most 16 a task", function()
        local s = bq.scheduler()
        local st = push.store(s, {})
        assert.is_true(st:set("t1", { id = "b", url = "http://h/b" }))
        assert.is_true(st:set("t1", { id = "a", url = "http://h/a" }))
        assert.is_true(st:set("t1", { id = "a", url = "http://h/a2" })) -- the same id: replaced
        local l = st:list("t1")
        assert.are.same({ "a", "b" }, { l[1].id, l[2].id })
        assert.are.equal("http://h/a2", l[1].url)
        assert.are.same({ t1 = true }, st:having({ t1 = true, t2 = true }))
        assert.is_true(st:claim("t1", "a", "working:1"))
        assert.is_false(st:claim("t1", "a", "working:1"))
        assert.is_true(st:claim("t1", "b", "working:1"))
        assert.is_true(st:delete("t1", "b"))
        assert.is_false(st:delete("t1", "b"))
        for i = 2, 16 do assert.is_true(st:set("t1", { id = "c" .. i, url = "http://h/" })) end
        local ok, why = st:set("t1", { id = "one-more", url = "http://h/" })
        assert.is_nil(ok)
        assert.matches("at most 16", why)
        s:close()
    end)

    it("retries a notification with backoff, then gives it up, without blocking", function()
        -- a port nothing listens on: every try fails at once (ECONNREFUSED)
        local snd = push.sender{ attempts = 3, base = 0.05, cap = 0.1, timeout = 2 }
        local cfg = { id = "c", url = "http://127.0.0.1:1/hook", token = "secret" }
        assert.is_true(snd:add("t", cfg, "{}", "application/json", "working"))
        local t0 = core.monotonic()
        local steps = 0
        local slowest = 0
        while snd:busy() and core.monotonic() - t0 < 5 do
            local s0 = core.monotonic()
            local wake = snd:step()
            slowest = math.max(slowest, core.monotonic() - s0)
            steps = steps + 1
            if wake then core.sleep(math.min(wake, 0.05)) end
        end
        assert.is_true(slowest < 0.2, "a step waited " .. slowest .. " s") -- a step never waits
        assert.is_false(snd:busy())
        assert.are.same({ sent = 0, failed = 1, retried = 2, dropped = 0 }, snd.stats)
        assert.is_true(steps >= 3)
    end)

    it("drops notifications past max_pending", function()
        local snd = push.sender{ max_pending = 2 }
        local cfg = { id = "c", url = "http://127.0.0.1:1/" }
        assert.is_true(snd:add("t", cfg, "{}", "application/json", "a"))
        assert.is_true(snd:add("t", cfg, "{}", "application/json", "b"))
        assert.is_false(snd:add("t", cfg, "{}", "application/json", "c"))
        assert.are.equal(1, snd.stats.dropped)
        snd:close()
        assert.is_false(snd:busy())
    end)
end)

describe("gateway push options", function()
    it("are checked before anything opens, and push = false says so on the card", function()
        for _, bad in ipairs({ { push_attempts = 0 }, { push_attempts = 1.5 }, { push_timeout = -1 }, { push_ttl = 0 } }) do
            local ok, err = pcall(bq.gateway, (function() bad.port = 0; return bad end)())
            assert.is_false(ok)
            assert.matches("push_", tostring(err))
        end
        local gw = assert(bq.gateway{ port = 0, push = false })
        assert.is_false(gw.card.capabilities.pushNotifications)
        local out = gw:rpc{ body = '{"jsonrpc":"2.0","id":1,"method":"CreateTaskPushNotificationConfig",'
            .. '"params":{"taskId":"t","url":"http://h/"}}' }
        assert.are.equal(-32003, require("binduq.json").decode(out).error.code)
        gw:close()
        gw = assert(bq.gateway{ port = 0 })
        assert.is_true(gw.card.capabilities.pushNotifications)
        gw:close()
    end)
end)
