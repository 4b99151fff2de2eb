--- binduq.lifecycle.chunk: a chunk of messages taken together (prepare).
--
-- When the queue is deep and the tasks quick, the engine hands a handler state several
-- messages at once: prepare(list) decodes each once, and returns one entry per message that
-- process is then given with it (src/lua/l_slot.c has the contract). With a rate limit,
-- the runs and resumes that would ask for admission get it in one round trip for the chunk
-- (binduq.lifecycle.admission); one not admitted is deferred by process like a retry. With a
-- storage across the network, the first runs that take the fast path start in one round
-- trip (store:start_many), and the chunk's finished states are written together afterwards
-- (binduq.lifecycle.finish's flush): with the next chunk's starts when the engine prepares
-- that chunk first (store:change_start_many, one commit for both). The memory storage is
-- quicker one by one: without a rate limit, a handler state with it has no prepare.

local core = require("binduq.core")
local json = require("binduq.json")

local M = {}

--- The chunk step of a handler state (S: see binduq.lifecycle). Returns prepare(list) ->
-- { entry, ... }, or nil when a chunk has nothing to decide together.
function M.build(S)
    local store, info, handlers, rl, batch_store = S.store, S.info, S.handlers, S.rl, S.batch_store
    local decode, admit_chunk, flush_with = S.decode, S.admit_chunk, S.flush_with
    if not (rl or batch_store) then return nil end

    -- Each entry: task, why, partial, header (decode's), and, when decided here, admission
    -- ({ at = } or { wait = }), defer (its finished state written by flush), start (what
    -- store:start_many answered for it) and settled (it was started: a stop runs it rather
    -- than hand it back, for its stored state says working and a first delivery of it would
    -- be taken for a duplicate run).
    local function prepare(list)
        local preps, ids, defer = {}, {}, batch_store
        for i, m in ipairs(list) do
            local task, why, partial, header = decode(m.raw, m.q, m.sealed)
            preps[i] = { task = task, why = why, partial = partial, header = header }
            -- Two operations on one task in a chunk take effect one after the other: its
            -- finished states are not deferred then.
            local id = task and task.task_id or (partial and partial.task_id)
            if id then
                if ids[id] then defer = false end
                ids[id] = true
            end
        end
        if rl then admit_chunk(preps) end
        if defer then
            -- The runs that take the fast path (first deliveries, admitted) start together:
            -- one round trip, each an exact compare-and-set (or a record created working for
            -- a task nobody recorded). Their ids are named for the control channel first.
            local starts, at, named = {}, {}, {}
            for i, e in ipairs(preps) do
                e.defer = true
                local task, header = e.task, e.header
                if task and task.type == "run" and handlers.run and header.attempt == 1
                        and not (header.redelivered or header.deferred or header.requeued)
                        and (not rl or (e.admission and e.admission.at)) then
                    starts[#starts + 1] = { id = task.task_id, worker = info.worker_id, context_id = task.conversation_id,
                                            queue = task.queue, history = json.array(task.messages or {}),
                                            metadata = task.metadata and json.encode(task.metadata) or nil }
                    at[#starts], named[#starts] = i, task.task_id
                end
            end
            if #starts > 0 then
                core.slot_ahead(named)
                -- The last chunk's finished states, when they wait for this prepare (the
                -- engine flushes after it), go with these starts: one round trip, one
                -- commit. Else the starts alone, if more than one. On an error nothing is
                -- decided: each starts for itself in process. A start that failed on its own
                -- ({nil, msg, code}; the others were made) fails its task.
                local res = flush_with(starts)
                if res == nil and #starts > 1 then res = store:start_many(starts) end
                for j, r in ipairs(res or {}) do
                    preps[at[j]].start, preps[at[j]].settled = r, r[1] or nil
                end
            end
        end
        return preps
    end

    return prepare
end

return M
