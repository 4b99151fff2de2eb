-- Passwords in REDIS_URL and DATABASE_URL never reach what binduq prints (issue 16, defect 4):
-- generated passwords hold '/', '?', '#' or '@' unencoded, and everything up to the last '@'
-- is the user-info. No server is needed: nothing listens on port 1.

local bq = require("binduq")
local core = require("binduq.core")
local storage = require("binduq.storage")
local proc = require("helpers.proc")

local SECRETS = { "Zx9", "Qp+Lw8", "se%zzcret", "zzcret" }

local function assert_no_secret(text, what)
    text = tostring(text)
    for _, s in ipairs(SECRETS) do
        assert.falsy(text:find(s, 1, true), (what or "") .. ": '" .. s .. "' in: " .. text)
    end
end

describe("secrets in URLs", function()
    setup(function() bq.log_configure{ level = "off" } end)
    teardown(function() bq.log_configure{ level = "info" } end)

    it("reads a password with '/', '?', '#' and '@' as a password", function()
        local u = assert(core.parse_url("redis://default:Zx9/Qp+Lw8@host:7000/3"))
        assert.are.equal("default", u.user)
        assert.is_true(u.has_password)
        assert.are.equal("host", u.hosts[1].host)
        assert.are.equal(7000, u.hosts[1].port)
        assert.are.equal(3, u.db)
        u = assert(core.parse_url("redis://:Zx9?Qp#Lw8@Zz@h"))
        assert.are.equal("h", u.hosts[1].host)
    end)

    it("names what is wrong in a URL without quoting a secret", function()
        local cases = {
            { "redis://default:Zx9/Qp+Lw8@host:abc", "bad port 'abc'" },
            { "redis://Zx9/Qp+Lw8@host:x", "bad port 'x'" },
            { "redis://:se%zzcret@h", "bad percent-escape in the password" },
            { "redis+sentinel://s1/m?sentinel_password=se%zzcret", "sentinel_password" },
            { "redis://h?password=se%zzcret", "bad percent-escape in the password" },
        }
        for _, c in ipairs(cases) do
            local none, msg, code = core.parse_url(c[1], "REDIS_URL")
            assert.is_nil(none)
            assert.are.equal("EINVAL", code)
            assert.truthy(msg:find(c[2], 1, true), msg)
            assert_no_secret(msg, c[1])
        end
    end)

    it("redacts URLs of every scheme", function()
        assert.are.equal("redis://default:***@host", core.redact_url("redis://default:Zx9/Qp+Lw8@host"))
        assert.are.equal("postgresql://app:***@db/bindu",
                         core.redact_url("postgresql://app:Zx9/Qp+Lw8@db/bindu"))
        assert.are.equal("postgresql://db/bindu?password=***",
                         core.redact_url("postgresql://db/bindu?password=se%zzcret"))
        assert.are.equal("redis://***@host", core.redact_url("redis://Zx9/Qp+Lw8@host"))
    end)

    it("reports a scheduler's URL redacted and its errors without the password", function()
        local s = bq.scheduler{ url = "redis://default:Zx9/Qp+Lw8@127.0.0.1:1/2" }
        assert.are.equal("redis://default:***@127.0.0.1:1/2", s.url)
        assert_no_secret(tostring(s))
        local ok, err, code = s:run{ task_id = "x", messages = { "m" } }
        assert.is_nil(ok)
        assert.are.equal("ECONNREFUSED", code)
        assert_no_secret(err)
        local h = s:health_check()
        assert.is_false(h.ok)
        assert_no_secret(h.error)
        s:close()
        -- A URL that does not parse: the scheduler refuses it, naming the part.
        local okc, e = pcall(bq.scheduler, { url = "redis://default:Zx9/Qp+Lw8@host:abc" })
        assert.is_false(okc)
        assert.truthy(tostring(e):find("bad port 'abc'", 1, true), tostring(e))
        assert_no_secret(e)
    end)

    it("opens no storage and shows no password for a bad DATABASE_URL", function()
        for _, url in ipairs{
            "postgresql://app:Zx9/Qp+Lw8@127.0.0.1:1/bindu",
            "postgresql+asyncpg://app:Zx9?Qp+Lw8@127.0.0.1:1/bindu",
            "postgresql://127.0.0.1:1/bindu?password=se%zzcret",
        } do
            local st, err, code = storage.open(storage.section{ type = "postgres", url = url,
                                                                 connect_timeout = 2 })
            if st then st:close() end
            assert.is_nil(st)
            assert.truthy(code == "ECONNREFUSED" or code == "EINVAL", tostring(code))
            assert_no_secret(err, url)
        end
    end)

    it("keeps passwords out of the command line tool's errors", function()
        local env = { DATABASE_URL = "postgresql://app:Zx9/Qp+Lw8@127.0.0.1:1/bindu",
                      REDIS_URL = "redis://default:Zx9/Qp+Lw8@127.0.0.1:1/0" }
        local rc, out = proc.run("build/binduq-lua task list", { env = env, timeout = 30 })
        assert.are.equal(1, rc)
        assert.truthy(out:find("refused", 1, true), out)
        assert_no_secret(out, "task list")
        rc, out = proc.run("build/binduq-lua dlq list", { env = env, timeout = 30 })
        assert.are.equal(1, rc)
        assert_no_secret(out, "dlq list")
        rc, out = proc.run("build/binduq-lua stats --url 'redis://u:Zx9/Qp+Lw8@127.0.0.1:abc/0'",
                           { timeout = 30 })
        assert.are_not.equal(0, rc)
        assert.truthy(out:find("bad port 'abc'", 1, true), out)
        assert_no_secret(out, "stats")
    end)
end)
