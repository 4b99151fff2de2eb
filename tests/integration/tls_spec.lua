-- Production connectivity against real servers on loopback: TLS (a CA and certificates made
-- by the test with openssl), mutual TLS, and ACL users.

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local cluster = require("helpers.cluster")
local tls = require("helpers.tls")
local bq = require("binduq")

local function qname(tag)
    return ("it:%s:%d"):format(tag, math.random(1, 1e9))
end

describe("#redis #tls TLS", function()
    local server, mutual, certs
    setup(function()
        bq.log_configure{ level = "off" }
        certs = tls.make(proc.tmpdir())
        server = redis.start{ tls = { cert = certs.server_cert, key = certs.server_key, ca = certs.ca } }
        mutual = redis.start{ tls = { cert = certs.server_cert, key = certs.server_key, ca = certs.ca,
                                      auth_clients = "yes" } }
    end)
    teardown(function()
        server:stop()
        mutual:stop()
        bq.log_configure{ level = "info" }
    end)

    it("verifies the server against the CA and runs tasks over TLS", function()
        local q = qname("tls")
        local s = bq.scheduler{ url = server.tls_url, queue_name = q, tls = { ca_file = certs.ca } }
        for i = 1, 50 do assert(s:run{ task_id = q .. "-" .. i, messages = { "x" } }) end
        local h = s:health_check()
        assert.is_true(h.ok, tostring(h.error))
        assert.are.equal(50, h.queue_length)
        -- A worker process configured by the environment alone.
        local w = cluster.worker({ url = server.tls_url }, q, { BINDUQ_TLS_CA_FILE = certs.ca })
        assert(proc.wait_for(function() return select(2, cluster.count({ w }, "completed")) == 50 end, 20))
        assert.are.equal(0, proc.stop(w, 10))
        assert.are.equal(0, s:queue_length())
        -- The plain port of the same server sees the same queue: TLS changes the transport only.
        assert.are.equal("0", server:cli("LLEN", q))
        s:close()
    end)

    it("refuses a server its CA did not sign, and a name the certificate does not carry", function()
        local s = bq.scheduler{ url = server.tls_url, queue_name = qname("tlsbad"), tls = { ca_file = certs.other_ca } }
        local ok, err, code = s:run{ task_id = "x", messages = { "x" } }
        assert.is_nil(ok)
        assert.are.equal("EAUTH", code)
        assert.truthy(err:find("certificate verify failed", 1, true), err)
        s:close()
        s = bq.scheduler{ url = server.tls_url, queue_name = qname("tlsname"),
                          tls = { ca_file = certs.ca, server_name = "redis.example.com" } }
        ok, err, code = s:run{ task_id = "x", messages = { "x" } }
        assert.is_nil(ok)
        assert.are.equal("EAUTH", code)
        assert.truthy(err:find("hostname mismatch", 1, true) or err:find("verify failed", 1, true), err)
        s:close()
        -- The explicit opt-out for tests: no verification.
        s = bq.scheduler{ url = server.tls_url, queue_name = qname("tlsoff"), tls = { ca_file = certs.other_ca, verify = false } }
        assert.is_true((s:run{ task_id = "x", messages = { "x" } }))
        s:close()
        -- A missing CA file is a clear error at once.
        local okn, e2 = pcall(bq.scheduler, { url = server.tls_url, tls = { ca_file = "/nonexistent/ca.pem" } })
        assert.is_false(okn)
        assert.truthy(tostring(e2):find("/nonexistent/ca.pem", 1, true), tostring(e2))
    end)

    it("authenticates with a client certificate (mutual TLS)", function()
        local q = qname("mtls")
        local s = bq.scheduler{ url = mutual.tls_url, queue_name = q, tls = { ca_file = certs.ca } }
        local ok, err = s:run{ task_id = "x", messages = { "x" } }
        assert.is_nil(ok)
        assert.truthy(err, "a server that requires a client certificate accepted none")
        s:close()
        s = bq.scheduler{ url = mutual.tls_url, queue_name = q,
                          tls = { ca_file = certs.ca, cert_file = certs.client_cert, key_file = certs.client_key } }
        assert.is_true((s:run{ task_id = "y", messages = { "x" } }))
        assert.are.equal(1, s:queue_length())
        s:close()
    end)
end)

describe("#redis ACL users", function()
    local server
    setup(function()
        bq.log_configure{ level = "off" }
        server = redis.start()
    end)
    teardown(function()
        server:stop()
        bq.log_configure{ level = "info" }
    end)

    it("works for a user limited to the queue's keys, and names the command a user may not run", function()
        local q = qname("acl")
        -- Only the queue's keys and its control channel.
        assert.are.equal("OK", server:cli("ACL", "SETUSER", "worker", "on", ">w-pass", "~" .. q, "~{" .. q .. "}:*",
                                          "&{" .. q .. "}:control", "+@all"))
        local url = ("redis://worker:w-pass@127.0.0.1:%d/0"):format(server.port)
        local s = bq.scheduler{ url = url, queue_name = q }
        for i = 1, 20 do assert(s:run{ task_id = q .. "-" .. i, messages = { "x" } }) end
        local w = cluster.worker({ url = url }, q, {})
        assert(proc.wait_for(function() return select(2, cluster.count({ w }, "completed")) == 20 end, 20))
        assert.are.equal(0, proc.stop(w, 10))
        -- A key outside the queue's is refused with the command named.
        local other = bq.scheduler{ url = url, queue_name = "elsewhere" }
        local ok, err, code = other:run{ task_id = "z", messages = { "x" } }
        assert.is_nil(ok)
        assert.are.equal("EAUTH", code)
        assert.truthy(err:find("NOPERM", 1, true), err)
        other:close()
        s:close()

        -- A user who may not run scripts: the error names the command.
        assert.are.equal("OK", server:cli("ACL", "SETUSER", "noeval", "on", ">n-pass", "~*", "&*", "+@all",
                                          "-eval", "-evalsha", "-script"))
        local s2 = bq.scheduler{ url = ("redis://noeval:n-pass@127.0.0.1:%d/0"):format(server.port), queue_name = q }
        ok, err, code = s2:run{ task_id = "n", messages = { "x" } }
        assert.is_nil(ok)
        assert.are.equal("EAUTH", code)
        assert.truthy(err:lower():find("evalsha", 1, true), err)
        assert.truthy(err:find("NOPERM", 1, true), err)
        s2:close()
        -- And a wrong password is EAUTH without the password in the message.
        local s3 = bq.scheduler{ url = ("redis://worker:wrong-pw@127.0.0.1:%d/0"):format(server.port), queue_name = q }
        ok, err, code = s3:run{ task_id = "p", messages = { "x" } }
        assert.is_nil(ok)
        assert.are.equal("EAUTH", code)
        assert.falsy(err:find("wrong-pw", 1, true), err)
        s3:close()
    end)
end)
