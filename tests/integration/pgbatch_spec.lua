-- The PostgreSQL storage against a real server: its batches (store:change_many,
-- store:change_start_many, store:start_many): a change or start the server refuses for its
-- data (U+0000 or invalid UTF-8 in a message, which jsonb refuses) fails alone and the rest
-- of its batch is made, also on Bindu's tables (a task at a time); a batch whose connection is
-- lost is reported failed as a whole. A session whose statements failed to prepare part
-- way, which prepares them again once it can; a bindu schema name with a '$', refused; and
-- on Bindu's tables, a change made on its snapshot that leaves a concurrent one's columns.

local pg = require("helpers.pg")
local proc = require("helpers.proc")
local bq = require("binduq")
local core = require("binduq.core")
local json = require("binduq.json")

describe("#pg PostgreSQL storage", function()
    local db
    setup(function() db = pg.start() end)
    teardown(function() db:stop() end)

    local function open(schema, extra)
        local o = { type = "postgres", url = db.url, schema = schema }
        for k, v in pairs(extra or {}) do o[k] = v end
        return assert(core.storage(o))
    end

    -- n tasks "<p>-1".."<p>-n" recorded in state, and their finishing changes (working ->
    -- completed with the agent's answer), bad(i)'s answer in place of "ok" where it gives one.
    local function working(st, p, n, bad)
        local changes = {}
        for i = 1, n do
            assert(st:create{ id = p .. "-" .. i, state = "working" })
            changes[i] = { id = p .. "-" .. i, from = "working", to = "completed", requested = "", error = "",
                           append_history = json.encode({ { role = "agent", content = bad(i) or "ok" } }) }
        end
        return changes
    end

    local function states(st, p, n)
        local out = {}
        for i = 1, n do out[i] = st:get(p .. "-" .. i).state end
        return out
    end

    it("a change the server refuses fails alone; the rest of the batch is made", function()
        local st = open("pgb1")
        for _, case in ipairs({ { "nul", "a \0 b", "22P05" }, { "utf", "bad \255 bytes", "22021" } }) do
            local p, text, sqlstate = case[1], case[2], case[3]
            local changes = working(st, p, 5, function(i) return i == 3 and text or nil end)
            local res, err = st:change_many(changes)
            assert.is_table(res, err)
            for i = 1, 5 do
                if i == 3 then
                    assert.is_nil(res[i][1])
                    assert.truthy(res[i][2]:find(sqlstate, 1, true), res[i][2])
                    assert.are.equal("EPG", res[i][3])
                else
                    assert.is_true(res[i][1])
                    assert.are.equal("completed", res[i][2])
                end
            end
            assert.are.same({ "completed", "completed", "working", "completed", "completed" }, states(st, p, 5))
        end
        st:close()
    end)

    it("a refused change with the next chunk's starts: the others and the starts are made", function()
        local st = open("pgb2")
        local changes = working(st, "cs", 4, function(i) return i == 2 and "a \0 b" or nil end)
        local starts = {}
        for i = 1, 3 do
            assert(st:create{ id = "cs-s" .. i })
            starts[i] = { id = "cs-s" .. i, worker = "w-1" }
        end
        local rc, rt, msg = st:change_start_many(changes, starts)
        assert.is_table(rc, rt)
        assert.is_table(rt, msg)
        assert.is_true(rc[1][1] and rc[3][1] and rc[4][1])
        assert.is_nil(rc[2][1])
        assert.are.equal("EPG", rc[2][3])
        assert.are.same({ "completed", "working", "completed", "completed" }, states(st, "cs", 4))
        for i = 1, 3 do
            assert.is_true(rt[i][1])
            assert.are.equal("working", st:get("cs-s" .. i).state)
        end
        st:close()
    end)

    it("bindu layout: a start the server refuses fails alone; the others are started", function()
        -- Bindu's tables are changed a task at a time (the view's trigger): one by one, the
        -- tasks before and after the refused one are started, and say so.
        local st = open("pgb_bindu", { layout = "bindu" })
        local ids = {}
        for i = 1, 3 do ids[i] = ("%08d-1111-4111-8111-%012d"):format(i, math.random(1, 1e9)) end
        local starts = {}
        for i = 1, 3 do
            starts[i] = { id = ids[i], worker = "w-1",
                          history = json.encode({ { role = "user", content = i == 2 and "a \0 b" or "hi" } }) }
        end
        local res, err = st:start_many(starts)
        assert.is_table(res, err)
        for _, i in ipairs({ 1, 3 }) do
            assert.is_true(res[i][1])
            assert.are.equal("working", res[i][2])
            assert.are.equal(1, res[i][4])
            assert.are.equal("working", st:get(ids[i]).state)
        end
        assert.is_nil(res[2][1])
        assert.truthy(res[2][2]:find("22P05", 1, true), res[2][2])
        assert.are.equal("EPG", res[2][3])
        assert.is_false(st:get(ids[2]))
        st:close()
    end)

    it("a session whose statements failed to prepare part way prepares them again later", function()
        -- A column only bq_get reads is missing while the session is remade: the statements
        -- before bq_get were prepared, bq_get was not. Once the column is back, the same
        -- pooled connection prepares them all again (none "already exists").
        local st = open("pgb4", { max_connections = 1 })
        assert(st:create{ id = "p-1" })
        assert.is_table(st:get("p-1"))
        local function sql(q) local out, ok = db:psql(q); assert(ok, out) end
        sql("ALTER TABLE pgb4.tasks RENAME COLUMN checkpoint TO checkpoint_x")
        sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'binduq'")
        bq.log_configure{ level = "error" } -- the reconnect's warning
        local rec, msg = st:get("p-1")
        bq.log_configure{ level = "info" }
        assert.is_nil(rec)
        assert.truthy(msg:find("42703", 1, true), msg)
        sql("ALTER TABLE pgb4.tasks RENAME COLUMN checkpoint_x TO checkpoint")
        for _ = 1, 3 do
            rec, msg = st:get("p-1")
            assert.is_table(rec, msg)
            assert.are.equal("submitted", rec.state)
        end
        assert.is_true(st:change{ id = "p-1", to = "working" })
        st:close()
    end)

    it("the bindu layout refuses a schema name with a '$', naming it", function()
        -- Its functions' $f$ bodies name the schema: "$f$" in it ended a body early.
        for _, name in ipairs({ "Agent$f$X", "a$b" }) do
            local st, msg, code = core.storage{ type = "postgres", url = db.url, schema = name, layout = "bindu" }
            assert.is_nil(st)
            assert.are.equal("EINVAL", code)
            assert.truthy(msg:find("'" .. name .. "'", 1, true), msg)
        end
        local st = assert(core.storage{ type = "postgres", url = db.url, schema = "Agent$f$X" })
        st:close()
    end)

    it("bindu layout: a change that keeps the state does not undo a concurrent one's columns", function()
        -- A change on the view is decided on the statement's snapshot. Another session
        -- changes the task's binduq columns (the checkpoint, the attempts) and commits while
        -- the change waits for the row lock; the change keeps the state, so it is made, and
        -- must leave the other's columns as they are now, not as its snapshot saw them.
        local st = open("pgb_race", { layout = "bindu" })
        local id = ("%08d-2222-4222-8222-%012d"):format(9, math.random(1, 1e9))
        assert(st:create{ id = id, state = "working", attempts = 1, history = '[{"role":"user","content":"go"}]' })
        assert.is_true(st:change{ id = id, from = "working", checkpoint = '{"step": 1}' })
        local marker = "bq_race_" .. math.random(1, 1e9)
        -- the other session: locks Bindu's row, waits (up to 10 s) for the change to wait on
        -- it, then writes its checkpoint and one more attempt and commits
        local other = proc.spawn(("psql -X -q -h 127.0.0.1 -p %d -U postgres -d postgres -c %s"):format(db.port, proc.quote(
            ("BEGIN; SELECT 1 FROM pgb_race.tasks WHERE id = '%s' FOR UPDATE;"
             .. " DO $$ BEGIN /* %s */ FOR i IN 1..1000 LOOP EXIT WHEN EXISTS (SELECT 1 FROM pg_locks"
             .. " WHERE NOT granted); PERFORM pg_sleep(0.01); END LOOP; END $$;"
             .. " UPDATE pgb_race.binduq_state SET checkpoint = '{\"step\": 2}', attempts = attempts + 1"
             .. " WHERE id = '%s'; COMMIT;"):format(id, marker, id))))
        assert(proc.wait_for(function()
            -- asleep in its loop: it holds the lock
            return db:psql(("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%%/* %s */%%'"
                .. " AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()"):format(marker)):match("%d+") == "1"
        end, 10, 0.02), "the other session did not take the lock")
        -- what binduq.lifecycle.order's keep does for a message that comes while the task
        -- works, and an attempt counted, which adds to the count as it is
        local changed, now = st:change{ id = id, from = "working", if_requested = "", count_attempt = true,
                                        append_history = '[{"role":"user","content":"more"}]' }
        assert.are.equal(0, proc.wait(other, 10))
        assert.is_true(changed, now)
        local rec = st:get(id)
        assert.are.equal('{"step": 2}', rec.checkpoint)
        assert.are.equal(3, rec.attempts)
        assert.are.equal(2, #json.decode(rec.history))
        st:close()
    end)

    it("a batch whose server is gone fails as a whole", function()
        local st = open("pgb3", { connect_timeout = 1 })
        local changes = working(st, "gone", 3, function() return nil end)
        db:halt()
        bq.log_configure{ level = "error" } -- the reconnect's warning
        local res, msg, code = st:change_many(changes)
        bq.log_configure{ level = "info" }
        db:restart()
        assert.is_nil(res)
        assert.is_string(msg)
        assert.are_not.equal("EPG", code)
        assert.are.same({ "working", "working", "working" }, states(st, "gone", 3))
        st:close()
    end)
end)
