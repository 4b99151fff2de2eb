-- binduq.gateway's loop following its streams from the task events, without a network or a
-- worker: a gateway on the in-memory default whose HTTP server is swapped for a stand-in
-- that hands gw:step() task event entries and keeps what the streams send, and whose
-- storage reads are counted. What a stream sends, in order, and when the storage is read.
-- The integration spec (tests/integration/gateway_spec.lua) drives the real thing with the
-- A2A SDKs.

local bq = require("binduq")
local core = require("binduq.core")
local json = require("binduq.json")

describe("gateway streams", function()
    local gw, real, entries, sent, finished, tasks, reads

    before_each(function()
        gw = assert(bq.gateway{ host = "127.0.0.1", port = 0, push = false })
        real = gw.server
        entries, sent, finished, tasks, reads = {}, {}, {}, {}, 0
        gw.server = {
            next = function() return table.remove(entries, 1) end,
            send = function(_, req, data)
                local v = assert(json.decode(data:match("^data: (.*)\n\n$")))
                sent[#sent + 1] = { req = req, result = v.result }
                return true
            end,
            finish = function(_, req) finished[req] = true end,
            reply = function() error("no blocking send here") end,
        }
        gw.s.get_task = function(_, id)
            reads = reads + 1
            return tasks[id]
        end
        gw.next_follow = math.huge -- no poll of every stream in these steps
    end)

    after_each(function()
        gw.server = real
        gw:close()
    end)

    -- A stream of task `id` as open_stream leaves it once its first event is sent.
    local function stream(id, new, state)
        local st = { P = nil, req = #gw.streams + 1, rpc = 7, task = id, state = state or "submitted", narts = 0,
                     context = "ctx-" .. id, new = new }
        gw.streams[#gw.streams + 1] = st
        return st
    end

    local function entry(...)
        entries[#entries + 1] = { event = json.encode({ ... }) }
    end

    local function v03(st)
        -- The gateway's protocols are local to it; a stream's P comes from its METHODS table.
        st.P = require("binduq.gateway").METHODS["message/stream"][2]
        return st
    end

    it("sends a new task's start from its started event, reading nothing", function()
        v03(stream("t1", true))
        entry({ event = "scheduled", task_id = "t1", state = "submitted", at = 1796400000.1 })
        entry({ event = "started", task_id = "t1", state = "working", at = 1796400000.25, attempt = 1, worker = "w" })
        assert.is_true(gw:step(0))
        assert.are.equal(0, reads)
        assert.are.equal(1, #sent)
        assert.are.same({ kind = "status-update", taskId = "t1", contextId = "ctx-t1", final = false,
                          status = { state = "working", timestamp = core.iso8601(1796400000.25) } }, sent[1].result)
        assert.are.equal("working", gw.streams[1].state)
        -- Another start (a redelivery) says nothing new; the outcome is read from the storage,
        -- artifacts before the final status.
        entry({ event = "started", task_id = "t1", state = "working", at = 1796400000.3, attempt = 1, worker = "w" })
        assert.is_true(gw:step(0))
        assert.are.same({ 0, 1 }, { reads, #sent })
        tasks.t1 = { task_id = "t1", context_id = "ctx-t1", state = "completed", state_at = 1796400001,
                     history = { { role = "user", content = "hi" }, { role = "agent", content = "echo: hi" } },
                     artifacts = { { name = "echo", parts = { { kind = "text", text = "hi" } } } } }
        entry({ event = "completed", task_id = "t1", state = "completed", at = 1796400001, attempt = 1, worker = "w" })
        assert.is_true(gw:step(0))
        assert.are.equal(1, reads)
        assert.are.same({ "status-update", "artifact-update", "status-update" },
                        { sent[1].result.kind, sent[2].result.kind, sent[3].result.kind })
        assert.are.same({ "completed", true }, { sent[3].result.status.state, sent[3].result.final })
        assert.is_true(finished[1])
        assert.are.equal(0, #gw.streams)
    end)

    it("reads the storage for a start and an end in one step, sending what the storage says", function()
        v03(stream("t2", true))
        tasks.t2 = { task_id = "t2", state = "completed", history = { { role = "agent", content = "done" } }, artifacts = {} }
        entry({ event = "started", task_id = "t2", state = "working", at = 1796400000, attempt = 1, worker = "w" },
              { event = "completed", task_id = "t2", state = "completed", at = 1796400000.01, attempt = 1, worker = "w" })
        assert.is_true(gw:step(0))
        assert.are.equal(1, reads)
        assert.are.same({ { "completed", true } }, { { sent[1].result.status.state, sent[1].result.final } })
    end)

    it("reads the storage for a later attempt's start, and for streams of tasks it did not start", function()
        v03(stream("t3", true))
        v03(stream("t4", nil)) -- tasks/resubscribe, or a follow-up's stream
        tasks.t3 = { task_id = "t3", state = "working", history = {}, artifacts = {} }
        tasks.t4 = { task_id = "t4", state = "working", history = {}, artifacts = {} }
        entry({ event = "started", task_id = "t3", state = "working", at = 1796400000, attempt = 2, worker = "w" },
              { event = "started", task_id = "t4", state = "working", at = 1796400000, attempt = 1, worker = "w" })
        assert.is_true(gw:step(0))
        assert.are.equal(2, reads)
        assert.are.same({ "working", "working" }, { sent[1].result.status.state, sent[2].result.status.state })
    end)

    it("sends nothing for a start its stream already showed, and ignores other tasks' events", function()
        v03(stream("t5", true, "working")) -- the first event was the task, already working
        entry({ event = "started", task_id = "t5", state = "working", at = 1796400000, attempt = 1, worker = "w" },
              { event = "completed", task_id = "elsewhere", state = "completed", at = 1796400000, attempt = 1 })
        assert.is_true(gw:step(0))
        assert.are.same({ 0, 0, 1 }, { reads, #sent, #gw.streams })
    end)
end)
