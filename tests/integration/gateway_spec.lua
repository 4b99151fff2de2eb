-- The A2A gateway (bq.gateway: src/engine/gateway.c, lua/binduq/gateway.lua) with a worker,
-- examples/agent_gateway.lua, driven by a client nobody here wrote: the A2A project's
-- JavaScript SDK, in both protocol versions (@a2a-js/sdk 1.3.0: A2A 1.0; 0.3.14: A2A 0.3,
-- the method names Bindu uses), installed from the npm registry into build/a2a-sdk/ the
-- first time. Then the HTTP and JSON-RPC edges with curl: the card at both paths, JSON-RPC's
-- own errors, the body limit, bearer tokens, the rate limit. Push notifications: configs set,
-- read, listed and deleted through both SDKs, and a webhook receiver (tests/gateway/
-- receiver.mjs, Node's HTTP server) that records what the gateway POSTs, failing the first
-- tries on one path to see the retries.

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local pg = require("helpers.pg")
local json = require("binduq.json")

local SDK = { v1 = "1.3.0", v03 = "0.3.14" }

-- Installs @a2a-js/sdk@version into build/a2a-sdk/<name> (once) with the client script.
local function sdk(name)
    local dir = "build/a2a-sdk/" .. name
    local have = proc.read(dir .. "/node_modules/@a2a-js/sdk/package.json")
    if not (have and have:find('"version": "' .. SDK[name] .. '"', 1, true)) then
        local out, ok = proc.sh(("mkdir -p %s && cd %s && (test -f package.json || npm init -y > /dev/null) && "
            .. "npm install --no-audit --no-fund --loglevel=error @a2a-js/sdk@%s"):format(dir, dir, SDK[name]))
        assert(ok, "npm install @a2a-js/sdk@" .. SDK[name] .. ": " .. out)
    end
    proc.sh(("cp tests/gateway/client_%s.mjs tests/gateway/push_%s.mjs %s/"):format(name, name, dir))
    return dir
end

local start = require("helpers.gateway").start -- (env, cmd) -> process, base URL, port

-- Runs an SDK client script; returns its steps by name.
local function drive(name, base, token, script)
    local dir = sdk(name)
    script = (script or "client") .. "_" .. name .. ".mjs"
    local out, ok = proc.sh(("cd %s && timeout 60 node %s %s %s"):format(dir, script, base, token or ""))
    assert(ok, "node " .. script .. ": " .. out)
    local steps = {}
    for line in out:gmatch("[^\n]+") do
        local v = json.decode(line)
        if type(v) == "table" and v.step then steps[v.step] = v end
    end
    return steps, out
end

-- A webhook receiver (tests/gateway/receiver.mjs): its process, its URL, and a function that
-- returns what it got so far (each POST: path, n, failed, token, authorization, type, body,
-- json = the decoded body).
local function receiver()
    local file = proc.tmpdir() .. "/push.jsonl"
    local p = proc.spawn("node tests/gateway/receiver.mjs " .. file)
    local port = proc.wait_for(function() return (proc.read(p.log) or ""):match("port=(%d+)") end, 10)
    assert(port, "the receiver did not start: " .. tostring(proc.read(p.log)))
    return p, "http://127.0.0.1:" .. port, function()
        local got = {}
        for line in (proc.read(file) or ""):gmatch("[^\n]+") do
            local v = assert(json.decode(line))
            v.json = json.decode(v.body)
            got[#got + 1] = v
        end
        return got
    end
end

-- The POSTs to `path`, and the states of those answered 2xx, in order.
local function at(got, path)
    local posts, states = {}, {}
    for _, v in ipairs(got) do
        if v.path == path then
            posts[#posts + 1] = v
            if not v.failed then
                local b = v.json or {}
                states[#states + 1] = ((b.statusUpdate or b).status or {}).state
            end
        end
    end
    return posts, states
end

-- A config's states: each once, in the task's order, ending with the final one (the first
-- is the state when the config was set: submitted if no worker had taken the task yet).
local function assert_states(states, v1)
    local order = v1 and { "TASK_STATE_SUBMITTED", "TASK_STATE_WORKING", "TASK_STATE_COMPLETED" }
        or { "submitted", "working", "completed" }
    local rank = {}
    for i, st in ipairs(order) do rank[st] = i end
    local shown = table.concat(states, ",")
    for i, st in ipairs(states) do
        assert(rank[st], "unexpected state " .. tostring(st) .. " in " .. shown)
        assert(i == 1 or rank[st] > rank[states[i - 1]], "out of order or twice: " .. shown)
    end
    assert.are.equal(order[3], states[#states], shown)
    assert.is_true(#states >= 2, shown) -- the task ran 1.5 s: set while it waited or ran, then its end
end

-- A config deleted while its task ran (1.5 s): at most the two states before the end, each once.
local function assert_unended(states, final)
    local shown = table.concat(states, ",")
    assert(#states < 2 or #states == 2 and states[1] ~= states[2], "more than the states before the end: " .. shown)
    for _, st in ipairs(states) do assert(st ~= final, "the end reached a deleted config: " .. shown) end
end

-- Waits (15 s at most) until every path of `paths` was answered 2xx for a final state.
local function await_final(fetch, paths)
    local final = { completed = true, TASK_STATE_COMPLETED = true }
    proc.wait_for(function()
        local got = fetch()
        for _, path in ipairs(paths) do
            local _, states = at(got, path)
            if not final[states[#states] or ""] then return nil end
        end
        return true
    end, 15)
    return fetch()
end

local function curl(args)
    local out = proc.sh("curl -s -o - -w '\\n%{http_code}' " .. args)
    local body, code = out:match("^(.*)\n(%d+)$")
    return body or out, tonumber(code)
end

describe("#gateway A2A gateway", function()
    local gw, base
    setup(function() gw, base = start() end)
    teardown(function() assert.are.equal(0, proc.stop(gw, 10)) end)

    it("serves A2A 1.0 to the JavaScript SDK 1.3.0", function()
        local s, out = drive("v1", base)
        assert.are.equal("1.0", s.card.protocolVersion, out)
        assert.are.same({ state = "TASK_STATE_COMPLETED", answer = "echo: hello", role = "ROLE_AGENT", artifact = "hello" },
                        { state = s.send.state, answer = s.send.answer, role = s.send.role, artifact = s.send.artifact })
        assert.are.same({ state = "TASK_STATE_COMPLETED", history = 1 }, { state = s.get.state, history = s.get.history })
        assert.are.equal("JsonRpcTaskNotCancelableError", s.cancel_done.error)
        assert.are.equal("JsonRpcTaskNotFoundError", s.get_unknown.error)
        assert.are.equal("TASK_STATE_CANCELED", s.cancel.state)
        -- The new task as its run records it, its start (from the worker's task event), its
        -- artifact, the end.
        assert.are.same({ "task:TASK_STATE_SUBMITTED", "statusUpdate:TASK_STATE_WORKING", "artifactUpdate",
                          "statusUpdate:TASK_STATE_COMPLETED" }, s.stream.events)
        assert.are.equal("TASK_STATE_INPUT_REQUIRED", s.ask.state)
        assert.are.same({ state = "TASK_STATE_COMPLETED", same = true, answer = "echo: Lisbon (after 2 earlier messages)" },
                        { state = s.follow_up.state, same = s.follow_up.same, answer = s.follow_up.answer })
        assert.are.equal("statusUpdate:TASK_STATE_COMPLETED", s.resubscribe.events[#s.resubscribe.events])
    end)

    it("serves A2A 0.3 (Bindu's method names) to the JavaScript SDK 0.3.14", function()
        local s, out = drive("v03", base)
        assert.truthy(s.send, out)
        assert.are.same({ state = "completed", kind = "task", answer = "echo: hello", role = "agent", artifact = "hello" },
                        { state = s.send.state, kind = s.send.kind, answer = s.send.answer, role = s.send.role,
                          artifact = s.send.artifact })
        assert.are.same({ state = "completed", history = 1 }, { state = s.get.state, history = s.get.history })
        assert.are.equal(-32002, s.cancel_done.code)
        assert.are.equal(-32001, s.get_unknown.code)
        assert.are.equal("canceled", s.cancel.state)
        assert.are.same({ "task:submitted", "status-update:working", "artifact-update",
                          "status-update:completed:final" }, s.stream.events)
        assert.are.equal("input-required", s.ask.state)
        assert.are.same({ state = "completed", same = true, answer = "echo: Lisbon (after 2 earlier messages)" },
                        { state = s.follow_up.state, same = s.follow_up.same, answer = s.follow_up.answer })
        assert.are.equal("status-update:completed:final", s.resubscribe.events[#s.resubscribe.events])
    end)

    it("sends push notifications set through the JavaScript SDK 1.3.0, with token, credentials and retries", function()
        local rp, recv, fetch = receiver()
        local s, out = drive("v1", base, recv, "push")
        assert.are.same({ id = "cfg-1", token = "tok-v1", scheme = "Bearer", same = true },
                        { id = s.create.id, token = s.create.token, scheme = s.create.scheme, same = s.create.same }, out)
        assert.are.same({ id = "cfg-1", token = "tok-v1" }, { id = s.get.id, token = s.get.token })
        assert.are.same({ "cfg-1", "cfg-retry" }, s.list.ids)
        assert.are.equal("JsonRpcTaskNotFoundError", s.get_deleted.error)
        assert.is_true(s.bad_url.threw)
        assert.are.equal("JsonRpcTaskNotFoundError", s.no_task.error)
        assert.are.equal("TASK_STATE_COMPLETED", s.task.state)
        local got = await_final(fetch, { "/v1/a", "/fail/2/v1", "/v1/inline" })
        proc.stop(rp)
        -- each config: the state when it was set, then the end; in order, once each
        local posts, states = at(got, "/v1/a")
        assert_states(states, true)
        for _, p in ipairs(posts) do
            assert.are.same({ "tok-v1", "Bearer cred-v1", "application/a2a+json", s.task.id },
                            { p.token, p.authorization, p.type, p.json.statusUpdate.taskId })
        end
        assert.are.equal("echo: slow 1.5", posts[#posts].json.statusUpdate.status.message.parts[1].text)
        -- the receiver that failed twice got the same notification a third time, then the next
        posts, states = at(got, "/fail/2/v1")
        assert_states(states, true)
        assert.are.same({ true, true, false }, { posts[1].failed, posts[2].failed, posts[3].failed })
        assert.are.equal(#states + 2, #posts)
        assert.are.equal(posts[1].body, posts[3].body)
        assert.are.equal("tok-retry", posts[3].token)
        assert.are.equal(json.null, posts[3].authorization)
        -- deleted while the task ran: never its end (the state when set, and the next if the
        -- worker took the task between the set and the delete)
        local _, gone = at(got, "/v1/gone")
        assert_unended(gone, "TASK_STATE_COMPLETED")
        posts, states = at(got, "/v1/inline")
        assert.are.equal("TASK_STATE_COMPLETED", states[#states])
        assert.are.same({ "tok-inline", s.inline.id }, { posts[1].token, posts[1].json.statusUpdate.taskId })
        local log = proc.read(gw.log) or ""
        assert.matches("push_retry", log)
        for _, secret in ipairs({ "tok-v1", "cred-v1", "tok-retry", "tok-inline" }) do
            assert.is_nil(log:find(secret, 1, true), secret) -- no secret in the log
        end
    end)

    it("sends push notifications set through the JavaScript SDK 0.3.14 (the Task, as 0.3 sends it)", function()
        local rp, recv, fetch = receiver()
        local s, out = drive("v03", base, recv, "push")
        assert.truthy(s.task, out)
        assert.are.same({ s.task.id, s.task.id }, { s.set.taskId, s.set.id }) -- 0.3: the config's id is the task's
        assert.are.same({ s.task.id, "tok-v03" }, { s.get.id, s.get.token })
        assert.are.same({ json.null, json.null }, { s.delete.error, s.delete.result }) -- result: null
        assert.are.same({ s.task.id }, s.list.ids)
        assert.are.equal(-32602, s.bad_url.code)
        assert.are.equal("completed", s.task.state)
        local got = await_final(fetch, { "/v03/a", "/v03/inline" })
        proc.stop(rp)
        local posts, states = at(got, "/v03/a")
        assert_states(states, false)
        assert.are.same({ "task", s.task.id, "tok-v03", "application/json" },
                        { posts[#posts].json.kind, posts[#posts].json.id, posts[#posts].token, posts[#posts].type },
                        json.encode(got))
        assert.are.equal("slow 1.5", posts[#posts].json.artifacts[1].parts[1].text)
        local _, other = at(got, "/v03/other") -- deleted while the task ran: never its end
        assert_unended(other, "completed")
        posts, states = at(got, "/v03/inline")
        assert.are.same({ "completed", "tok-inline03" }, { states[#states], posts[1] and posts[1].token },
                        json.encode(got))
    end)

    it("serves one card for both versions, at both paths", function()
        for _, path in ipairs({ "/.well-known/agent-card.json", "/.well-known/agent.json" }) do
            local body, code = curl(base .. path)
            assert.are.equal(200, code)
            local card = assert(json.decode(body))
            assert.are.equal("echo agent", card.name)
            assert.are.equal(base .. "/", card.url)
            assert.are.equal("0.3.0", card.protocolVersion)
            assert.are.equal("1.0", card.supportedInterfaces[1].protocolVersion)
            assert.are.equal("JSONRPC", card.supportedInterfaces[1].protocolBinding)
            assert.is_true(card.capabilities.streaming)
            assert.is_true(card.capabilities.pushNotifications)
            assert.are.equal("echo", card.skills[1].id)
        end
    end)

    it("answers JSON-RPC's own errors, echoing the id", function()
        local function rpc(body)
            local out, code = curl("-d " .. proc.quote(body) .. " " .. base .. "/")
            assert.are.equal(200, code)
            return assert(json.decode(out))
        end
        assert.are.equal(-32700, rpc("{not json").error.code)
        assert.are.equal(-32600, rpc('{"id":1,"method":"tasks/get"}').error.code) -- no jsonrpc
        assert.are.equal(-32600, rpc('[{"jsonrpc":"2.0","id":1,"method":"tasks/get"}]').error.code)
        local r = rpc('{"jsonrpc":"2.0","id":"x7","method":"tasks/list"}')
        assert.are.same({ -32601, "x7" }, { r.error.code, r.id })
        r = rpc('{"jsonrpc":"2.0","id":3,"method":"message/send","params":{"message":{"role":"user","parts":[]}}}')
        assert.are.same({ -32602, 3 }, { r.error.code, r.id })
        assert.matches("parts", r.error.message)
        r = rpc('{"jsonrpc":"2.0","id":4,"method":"GetTask","params":{"id":"nope"}}')
        assert.are.equal(-32001, r.error.code)
        assert.are.equal("TASK_NOT_FOUND", r.error.data[1].reason) -- A2A 1.0's ErrorInfo
        -- Bindu's clients name the task taskId
        r = rpc('{"jsonrpc":"2.0","id":5,"method":"tasks/get","params":{"taskId":"nope"}}')
        assert.are.equal(-32001, r.error.code)
        r = rpc('{"jsonrpc":"2.0","id":6,"method":"tasks/pushNotificationConfig/set","params":{}}')
        assert.are.equal(-32602, r.error.code)
        r = rpc('{"jsonrpc":"2.0","id":7,"method":"tasks/pushNotificationConfig/set","params":{"taskId":"nope",'
            .. '"pushNotificationConfig":{"url":"http://127.0.0.1:1/x"}}}')
        assert.are.equal(-32001, r.error.code)
        local _, code = curl("-d x " .. base .. "/nowhere")
        assert.are.equal(404, code)
        local big = proc.tmpdir() .. "/big.json"
        proc.write(big, ("x"):rep(2 * 1024 * 1024)) -- over the 1 MiB default
        _, code = curl("-H 'Content-Type: application/json' --data-binary @" .. big .. " " .. base .. "/")
        assert.are.equal(413, code)
    end)
end)

describe("#gateway A2A gateway, sends that come together", function()
    local gw, base
    setup(function() gw, base = start() end)
    teardown(function() proc.stop(gw, 10) end)

    it("schedules non-blocking sends taken together, each its own task, each answered", function()
        local dir = proc.tmpdir()
        local body = '{"jsonrpc":"2.0","id":%d,"method":"message/send","params":{"message":{"kind":"message",'
            .. '"messageId":"m%d","role":"user","parts":[{"kind":"text","text":"n%d"}]}}}'
        local cmds = {}
        for i = 1, 60 do
            cmds[#cmds + 1] = ("curl -s -d %s %s/ > %s/%d.json &"):format(proc.quote(body:format(i, i, i)), base, dir, i)
        end
        proc.sh(table.concat(cmds, " ") .. " wait")
        local ids = {}
        for i = 1, 60 do
            local r = assert(json.decode(proc.read(dir .. "/" .. i .. ".json") or ""), "answer " .. i)
            assert.are.equal(i, math.tointeger(r.id))
            assert.are.equal("task", r.result.kind)
            assert.are.equal("n" .. i, r.result.history[1].parts[1].text)
            ids[r.result.id] = true
        end
        local n = 0
        for id in pairs(ids) do
            n = n + 1
            local got = json.decode((curl("-d " .. proc.quote(('{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"id":"%s"}}')
                :format(id)) .. " " .. base .. "/")))
            assert.truthy(got.result, id)
        end
        assert.are.equal(60, n)
    end)
end)

describe("#gateway A2A gateway with tokens", function()
    local gw, base
    setup(function() gw, base = start({ BINDUQ_GATEWAY_TOKENS = "t0ken-one,t0ken-two" }) end)
    teardown(function() proc.stop(gw, 10) end)

    it("wants a bearer token for every call, and the card stays public", function()
        local _, code = curl(base .. "/.well-known/agent-card.json")
        assert.are.equal(200, code)
        local body = '{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"id":"x"}}'
        _, code = curl("-d " .. proc.quote(body) .. " " .. base .. "/")
        assert.are.equal(401, code)
        _, code = curl("-H 'Authorization: Bearer wrong' -d " .. proc.quote(body) .. " " .. base .. "/")
        assert.are.equal(401, code)
        local out
        out, code = curl("-H 'Authorization: Bearer t0ken-two' -d " .. proc.quote(body) .. " " .. base .. "/")
        assert.are.equal(200, code)
        assert.are.equal(-32001, json.decode(out).error.code)
        local s = drive("v1", base, "t0ken-one")
        assert.are.equal("TASK_STATE_COMPLETED", s.send.state)
        assert.is_nil((proc.read(gw.log) or ""):find("t0ken", 1, true)) -- no secret in the log
    end)
end)

describe("#redis #pg #gateway gateways and workers in processes of their own", function()
    local server, db, a, b, worker, base_a, base_b
    setup(function()
        server = redis.start()
        db = pg.start()
        local env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = "it:gw", DATABASE_URL = db.url }
        a, base_a = start(env, "build/binduq-lua serve")
        b, base_b = start(env, "build/binduq-lua serve")
        local we = { SERVE = "worker" }
        for k, v in pairs(env) do we[k] = v end
        worker = proc.spawn("build/binduq-lua examples/agent_gateway.lua", { env = we })
    end)
    teardown(function()
        proc.stop(worker)
        proc.stop(a)
        proc.stop(b)
        server:stop()
        db:stop()
    end)

    it("a task sent to one gateway is run by the worker and seen, streamed and canceled from the other", function()
        local s = drive("v1", base_a)
        assert.are.equal("TASK_STATE_COMPLETED", s.send.state)
        assert.are.equal("echo: hello", s.send.answer)
        local body = curl("-d " .. proc.quote(('{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"id":"%s"}}')
            :format(s.send.id)) .. " " .. base_b .. "/")
        local r = assert(json.decode(body))
        assert.are.equal("completed", r.result.status.state)
        assert.are.equal("echo: hello", r.result.status.message.parts[1].text)
        -- Bindu's own clients talk 0.3 to the same processes.
        local s03 = drive("v03", base_b)
        assert.are.equal("completed", s03.send.state)
        assert.are.same({ "task:submitted", "status-update:working", "artifact-update",
                          "status-update:completed:final" }, s03.stream.events)
        assert.are.equal("canceled", s03.cancel.state)
    end)

    it("push configs set on one gateway are seen by both; each notification is sent once", function()
        local rp, recv, fetch = receiver()
        local s, out = drive("v1", base_a, recv, "push")
        assert.are.same({ "cfg-1", "cfg-retry" }, s.list.ids, out)
        -- the configs are in Redis: the other gateway lists them
        local body = curl("-d " .. proc.quote(('{"jsonrpc":"2.0","id":1,"method":"ListTaskPushNotificationConfigs",'
            .. '"params":{"taskId":"%s"}}'):format(s.task.id)) .. " " .. base_b .. "/")
        local r = assert(json.decode(body))
        assert.are.equal(2, #r.result.configs, body)
        local s03 = drive("v03", base_b, recv, "push")
        assert.are.equal("completed", s03.task.state)
        await_final(fetch, { "/v1/a", "/fail/2/v1", "/v1/inline", "/v03/a", "/v03/inline" })
        -- a moment for a duplicate to show up, if a second gateway were to send one
        proc.sh("sleep 1")
        local got = fetch()
        proc.stop(rp)
        assert_states(select(2, at(got, "/v1/a")), true)
        assert_states(select(2, at(got, "/fail/2/v1")), true)
        assert_states(select(2, at(got, "/v03/a")), false)
        for _, path in ipairs({ "/v1/inline", "/v03/inline" }) do
            local seen = {}
            for _, st in ipairs(select(2, at(got, path))) do
                assert.is_nil(seen[st], path .. " got " .. st .. " twice")
                seen[st] = true
            end
        end
    end)

    it("serve refuses to run without Redis, saying why", function()
        local out, ok = proc.sh("env -u REDIS_URL build/binduq-lua serve --addr 127.0.0.1:0")
        assert.is_false(ok)
        assert.matches("serve needs Redis", out)
    end)
end)

