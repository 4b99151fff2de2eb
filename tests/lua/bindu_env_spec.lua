-- What a Bindu deployment already has: redis-py's URL forms (read by redis-py's own
-- parse_url, Debian's python3-redis, and by binduq, and compared), Bindu's environment names
-- and its .env file.

local core = require("binduq.core")
local json = require("binduq.json")

-- The interpreter Debian's python3-redis belongs to (a PATH python3 may be another one).
local PY = "/usr/bin/python3"

local function sh(cmd)
    local p = assert(io.popen(cmd .. " 2>&1"))
    local out = p:read("a")
    local ok, _, rc = p:close()
    return out, ok and 0 or rc
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

describe("redis-py's URL forms", function()
    local urls = {
        "redis://default@127.0.0.1:6380/2",
        "redis://:s3cret@localhost:6379/0",
        "redis://bob:pw@h:7000",
        "redis://h/1?socket_timeout=2.5&socket_connect_timeout=1&max_connections=20",
        "redis://h?db=4&retry_on_timeout=yes&health_check_interval=30&client_name=agent",
        "redis://h?retry_on_timeout=false&decode_responses=True&encoding=utf-8&protocol=2",
        "rediss://h:6380/0?ssl_cert_reqs=none&ssl_ca_certs=%2Fetc%2Fca.pem&ssl_check_hostname=false",
        "rediss://h?ssl_cert_reqs=required&ssl_certfile=c.pem&ssl_keyfile=k.pem",
        "unix:///run/redis.sock?db=3&password=pw",
    }

    it("reads each as redis-py does", function()
        local out, rc = sh(PY .. " -c " .. q([[
import json, sys
from redis.connection import parse_url
for u in sys.argv[1:]:
    k = parse_url(u)
    k.pop("connection_class", None)
    print(json.dumps(k, default=str))
]]) .. " " .. table.concat((function()
            local t = {}
            for i, u in ipairs(urls) do t[i] = q(u) end
            return t
        end)(), " "))
        assert.are.equal(0, rc, out)
        local i = 0
        for line in out:gmatch("[^\n]+") do
            i = i + 1
            local py = json.decode(line)
            local bq = assert(core.parse_url(urls[i]))
            local where = urls[i]
            if bq.kind == "unix" then
                assert.are.equal(py.path, bq.path, where)
            else
                assert.are.equal(py.host, bq.hosts[1].host, where)
                assert.are.equal(py.port or 6379, bq.hosts[1].port, where)
            end
            assert.are.equal(py.db or 0, bq.db, where)
            assert.are.equal(py.username, bq.user, where)
            assert.are.equal(py.password ~= nil, bq.has_password, where)
            for _, k in ipairs({ "socket_timeout", "socket_connect_timeout", "max_connections" }) do
                assert.are.equal(py[k], bq[k], where .. " " .. k)
            end
            if py.retry_on_timeout ~= nil then
                assert.are.equal(py.retry_on_timeout, bq.retry_on_timeout, where)
            end
            for _, k in ipairs({ "ssl_ca_certs", "ssl_certfile", "ssl_keyfile" }) do
                assert.are.equal(py[k], bq[k], where .. " " .. k)
            end
            if py.ssl_cert_reqs then
                local want = ({ none = 0, optional = 1, required = 2 })[py.ssl_cert_reqs]
                assert.are.equal(want, bq.ssl_cert_reqs, where)
            end
            -- what redis-py takes and binduq has no use for is named, never silently dropped
            for _, k in ipairs({ "health_check_interval", "client_name", "decode_responses", "encoding",
                                 "protocol", "ssl_check_hostname" }) do
                if py[k] ~= nil then
                    assert.truthy((bq.ignored or ""):find(k, 1, true), where .. " " .. k)
                end
            end
        end
        assert.are.equal(#urls, i)
    end)

    it("still refuses what neither knows, naming it", function()
        local none, msg = core.parse_url("redis://h?colour=red", "REDIS_URL")
        assert.is_nil(none)
        assert.truthy(msg:find("unknown URL option 'colour'", 1, true), msg)
    end)
end)

describe("Bindu's environment", function()
    -- A child binduq-lua with exactly this environment, printing what it resolved.
    local function resolved(env, dir)
        local parts = { "env -i PATH=/usr/bin:/bin" }
        for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. q(v) end
        local script = os.tmpname()
        local f = assert(io.open(script, "w"))
        f:write([[
local bq = require("binduq")
local ok, s = pcall(bq.scheduler, {})
if not ok then print("error: " .. tostring(s)) return end
local i = s.client:info()
print(("queue=%s max=%s url=%s retry=%s backend=%s"):format(i.queue_name, i.max_connections,
      tostring(i.url), tostring(s.retry_on_timeout), i.backend))
s:close()
]])
        f:close()
        local cwd = dir and ("cd " .. q(dir) .. " && ") or ""
        local root = sh("pwd"):gsub("%s+$", "")
        local out = sh(cwd .. table.concat(parts, " ") .. " " .. q(root .. "/build/binduq-lua") .. " " .. q(script))
        os.remove(script)
        return out
    end

    it("reads Bindu's names, the documentation's winning where both are set", function()
        local out = resolved{ SCHEDULER_TYPE = "redis", REDIS_HOST = "10.0.0.9", REDIS_PORT = "6390",
                              REDIS_PASSWORD = "pw", REDIS_DB = "3", QUEUE_NAME = "agent:q", MAX_CONNECTIONS = "7",
                              RETRY_ON_TIMEOUT = "True" }
        assert.truthy(out:find("queue=agent:q max=7 url=redis://:***@10.0.0.9:6390/3 retry=true backend=redis", 1, true), out)
        out = resolved{ REDIS_URL = "redis://h:1/0", queue_name = "lower:case", REDIS_QUEUE_NAME = "doc:q",
                        max_connections = "9" }
        assert.truthy(out:find("queue=doc:q max=9 url=redis://h:1/0", 1, true), out)
        -- Bindu's SCHEDULER_TYPE=memory wins over a REDIS_URL, as in Bindu
        out = resolved{ REDIS_URL = "redis://h:1/0", SCHEDULER_TYPE = "memory" }
        assert.truthy(out:find("backend=memory", 1, true), out)
        out = resolved{ SCHEDULER_TYPE = "kafka" }
        assert.truthy(out:find("SCHEDULER_TYPE: expected redis or memory, got 'kafka'", 1, true), out)
        out = resolved{ MAX_CONNECTIONS = "lots" }
        assert.truthy(out:find("MAX_CONNECTIONS: expected a whole number", 1, true), out)
    end)

    it("reads a .env file in the working directory; the environment wins", function()
        local dir = os.tmpname()
        os.remove(dir)
        assert(os.execute("mkdir -p " .. q(dir)))
        local f = assert(io.open(dir .. "/.env", "w"))
        f:write([[
# Bindu's settings
export SCHEDULER_TYPE=redis
REDIS_URL="redis://from-dotenv:6379/0"
QUEUE_NAME = 'dot:q'   # a comment
MAX_CONNECTIONS=5 # five
this line is not a setting
]])
        f:close()
        local out = resolved({}, dir)
        assert.truthy(out:find("queue=dot:q max=5 url=redis://from-dotenv:6379/0", 1, true), out)
        out = resolved({ QUEUE_NAME = "env:q" }, dir)
        assert.truthy(out:find("queue=env:q max=5", 1, true), out)
        out = resolved({ BINDUQ_ENV_FILE = "/nonexistent/.env" }, dir)
        assert.truthy(out:find("queue=bindu:tasks", 1, true), out)
        os.execute("rm -rf " .. q(dir))
    end)
end)

describe("the schema of an agent's DID", function()
    local storage = require("binduq.storage")
    it("is named as Bindu's schema_manager names it", function()
        -- examples worked with Bindu's sanitize_did_for_schema
        assert.are.equal("did_bindu_alice_agent_1234", storage.did_schema("did:bindu:alice:agent:1234"))
        assert.are.equal("did_bindu_alice_my_agent_550e8400_e29b_41d4_a716_446655440000",
                         storage.did_schema("did:bindu:Alice:My-Agent:550e8400-e29b-41d4-a716-446655440000"))
        assert.are.equal("schema_1abc_def", storage.did_schema("1abc.def"))
        local ok, err = pcall(storage.did_schema, "did:bindu:" .. ("x"):rep(60))
        assert.is_false(ok)
        assert.truthy(tostring(err):find("longer than 63 bytes", 1, true), err)
    end)
end)
