-- The Redis key layout (src/broker/keys.c) as Lua sees it through core.key_derive: one rule,
-- the one the workers' scripts use, so the admin commands read the keys the workers write.
local core = require("binduq.core")

describe("core.key_derive", function()
    it("puts a queue without a hash tag in braces, and keeps one that has a tag", function()
        assert.are.equal("{bindu:tasks}:dlq", core.key_derive("bindu:tasks", "dlq"))
        assert.are.equal("{bindu}:tasks:high:workers", core.key_derive("{bindu}:tasks:high", "workers"))
        assert.are.equal("{q}:wip:w-1", core.key_derive("q", "wip:w-1"))
    end)

    it("follows Redis Cluster's rule for tags: the first '{' to the next '}', if not empty", function()
        assert.are.equal("x{y}z:dlq", core.key_derive("x{y}z", "dlq"))
        assert.are.equal("q{{x}}:dlq", core.key_derive("q{{x}}", "dlq"))
        assert.are.equal("{a{b}:dlq", core.key_derive("a{b", "dlq"))
    end)

    it("refuses a name with a '}' outside a hash tag, whose keys could not share its slot", function()
        -- "a{}b{c}": the first tag is empty, so Cluster hashes the whole name; wrapped in
        -- braces, "{a{}b{c}}:dlq" would hash "a{" only.
        for _, q in ipairs({ "a{}b{c}", "}{", "{}", "a}b" }) do
            local ok, err = pcall(core.key_derive, q, "dlq")
            assert.is_false(ok, q)
            assert.truthy(tostring(err):find("'}' outside a hash tag", 1, true), err)
        end
    end)

    it("keeps every derived key in the queue's slot", function()
        for _, q in ipairs({ "bindu:tasks", "{bindu}:t", "x{y}z", "a{b", "q{{x}}", "{a}}", "é{ü}" }) do
            for _, suffix in ipairs({ "dlq", "workers", "delayed", "wip:w1" }) do
                local key = core.key_derive(q, suffix)
                assert.are.equal(core.key_slot(q), core.key_slot(key), q .. " -> " .. key)
            end
        end
    end)

    it("takes the suffix byte for byte (worker ids read back from Redis may hold anything)", function()
        assert.are.equal("{q}:wip:a\0b\n", core.key_derive("q", "wip:a\0b\n"))
        assert.are.equal("{q}:wip:" .. ("x"):rep(1000), core.key_derive("q", "wip:" .. ("x"):rep(1000)))
    end)

    it("refuses a queue name too long for a key and a NUL byte, naming what was wrong", function()
        local ok, err = pcall(core.key_derive, ("q"):rep(600), "dlq")
        assert.is_false(ok)
        assert.truthy(tostring(err):find("longer than 200 bytes", 1, true), err)
        ok, err = pcall(core.key_derive, "a\0b", "dlq")
        assert.is_false(ok)
        assert.truthy(tostring(err):find("NUL", 1, true), err)
    end)

    it("is the rule a scheduler applies to its queue_name", function()
        local bq = require("binduq")
        local ok, err = pcall(bq.scheduler, { type = "memory", queue_name = "a}b" })
        assert.is_false(ok)
        assert.truthy(tostring(err):find("queue_name 'a}b' has a '}' outside a hash tag", 1, true), err)
    end)
end)
