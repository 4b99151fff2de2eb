-- What the decoder tests and the decoder fuzz target share: the general path's task for a
-- native message, and an equality exact enough to hold the simdjson path to it.
local core = require("binduq.core")
local json = require("binduq.json")

local M = {}

--- What the general path gives: lua-cjson's table, checked by core.decode_native; nil for
-- anything that is not a native message.
function M.reference(raw)
    local ok, t = pcall(json.raw_decode, raw)
    if not ok or type(t) ~= "table" or raw:byte(1) ~= 123 or t.operation ~= nil or t.type == nil then
        return nil
    end
    return (core.decode_native(t))
end

--- Deep equality that also tells 1 from 1.0, 0.0 from -0.0, and checks both ways. Returns
-- true, or false and where they differ.
function M.exact(a, b, path)
    path = path or "task"
    if type(a) ~= type(b) then return false, path .. ": " .. type(a) .. " vs " .. type(b) end
    if type(a) == "number" then
        if math.type(a) ~= math.type(b) or ("%a"):format(a) ~= ("%a"):format(b) then
            return false, ("%s: %s %a vs %s %a"):format(path, math.type(a), a, math.type(b), b)
        end
        return true
    end
    if type(a) ~= "table" then
        if a ~= b then return false, path .. ": " .. tostring(a) .. " vs " .. tostring(b) end
        return true
    end
    if getmetatable(a) ~= getmetatable(b) then return false, path .. ": metatables differ" end
    for k, v in pairs(a) do
        local ok, why = M.exact(v, b[k], path .. "." .. tostring(k))
        if not ok then return false, why end
    end
    for k in pairs(b) do
        if a[k] == nil then return false, path .. "." .. tostring(k) .. ": missing" end
    end
    return true
end

return M
