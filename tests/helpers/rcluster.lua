--- helpers.rcluster: a three-master Redis Cluster on loopback, stopped by PID.
--
--   local c = rcluster.start()    -- c.url (redis+cluster://...), c.nodes[i] (redis helpers)
--   c:node_of(key)                -- the index of the node serving key's slot
--   c:migrate_slot(slot, to)      -- moves a slot with its keys (what a resharding does)
--   c:stop()

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local core = require("binduq.core")

local M = {}
local Cluster = {}
Cluster.__index = Cluster

local function cli(port, ...)
    local args = {}
    for i, a in ipairs({ ... }) do args[i] = proc.quote(a) end
    return (proc.sh(("redis-cli -h 127.0.0.1 -p %d %s"):format(port, table.concat(args, " "))))
end
M.cli = cli

function M.start()
    local c = setmetatable({ nodes = {} }, Cluster)
    local addrs = {}
    for i = 1, 3 do
        c.nodes[i] = redis.start{ args = { "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                           "--cluster-node-timeout", "2000" } }
        addrs[i] = "127.0.0.1:" .. c.nodes[i].port
    end
    local out, ok = proc.sh("redis-cli --cluster create " .. table.concat(addrs, " ")
                            .. " --cluster-replicas 0 --cluster-yes")
    assert(ok, out)
    assert(proc.wait_for(function()
        for _, n in ipairs(c.nodes) do
            if not cli(n.port, "CLUSTER", "INFO"):find("cluster_state:ok", 1, true) then return false end
        end
        return true
    end, 30), "the cluster did not become ok")
    for _, n in ipairs(c.nodes) do n.id = cli(n.port, "CLUSTER", "MYID") end
    c.url = "redis+cluster://" .. table.concat(addrs, ",")
    return c
end

-- The index of the node that owns `slot`, by each node's own CLUSTER NODES "myself" line.
function Cluster:owner(slot)
    for i, n in ipairs(self.nodes) do
        for line in cli(n.port, "CLUSTER", "NODES"):gmatch("[^\n]+") do
            if line:find("myself", 1, true) then
                for tok in line:gmatch("%S+") do
                    local lo, hi = tok:match("^(%d+)%-(%d+)$")
                    if not lo then lo = tok:match("^(%d+)$"); hi = lo end
                    if lo and slot >= tonumber(lo) and slot <= tonumber(hi) and #tok < 12 then return i end
                end
            end
        end
    end
end

--- The node (index) that serves `key`'s slot.
function Cluster:node_of(key)
    return self:owner(core.key_slot(key))
end

--- Moves `slot` and its keys to node `to` (index): IMPORTING/MIGRATING, MIGRATE key by key,
-- then SETSLOT NODE on every node. Returns the node it came from and the keys moved.
function Cluster:migrate_slot(slot, to)
    local from = self:owner(slot)
    assert(from and from ~= to, "slot " .. slot .. " is not on another node")
    local src, dst = self.nodes[from], self.nodes[to]
    local s = tostring(slot)
    assert(cli(dst.port, "CLUSTER", "SETSLOT", s, "IMPORTING", src.id) == "OK")
    assert(cli(src.port, "CLUSTER", "SETSLOT", s, "MIGRATING", dst.id) == "OK")
    local moved = 0
    for _ = 1, 10000 do
        local keys = cli(src.port, "CLUSTER", "GETKEYSINSLOT", s, "20")
        if keys == "" then break end
        local list = {}
        for k in keys:gmatch("[^\n]+") do list[#list + 1] = k end
        local out = cli(src.port, "MIGRATE", "127.0.0.1", tostring(dst.port), "", "0", "5000", "KEYS",
                        table.unpack(list))
        assert(out == "OK" or out == "NOKEY", "MIGRATE: " .. out)
        moved = moved + #list
    end
    for _, n in ipairs(self.nodes) do
        cli(n.port, "CLUSTER", "SETSLOT", s, "NODE", dst.id)
    end
    return from, moved
end

function Cluster:stop()
    for _, n in ipairs(self.nodes) do n:stop() end
end

return M
