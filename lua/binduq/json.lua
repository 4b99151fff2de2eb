--- binduq.json: the JSON codec binduq uses, a private lua-cjson instance.
--
-- A private instance (cjson.new) keeps our settings from leaking into the user's cjson, and
-- is per Lua state, so each handler state has its own. Decoding is strict JSON: NaN,
-- Infinity and hex numbers are refused. lua-cjson cannot tell `[]` from `{}` once decoded
-- and encodes an empty table as `{}`; `array` below writes a list as a JSON array always.

local ok, cjson = pcall(require, "cjson")
if not ok then
    error("binduq needs lua-cjson for Lua 5.4 (Debian: apt-get install lua-cjson): "
          .. tostring(cjson), 0)
end

local codec = cjson.new()
codec.decode_invalid_numbers(false)
codec.encode_invalid_numbers(false)
-- Both directions nest at most MAX_DEPTH levels (an object or an array is one).
local MAX_DEPTH = 200
codec.decode_max_depth(MAX_DEPTH)
codec.encode_max_depth(MAX_DEPTH)
codec.encode_sparse_array(false)

local M = { null = codec.null, MAX_DEPTH = MAX_DEPTH }

--- Decodes s; returns value, or nil and a message.
function M.decode(s)
    local okd, v = pcall(codec.decode, s)
    if okd then return v end
    return nil, tostring(v)
end

--- Encodes v; returns a string, or nil and a message.
function M.encode(v)
    local oke, s = pcall(codec.encode, v)
    if oke then return s end
    return nil, tostring(s)
end

--- Encodes the list t (t[1..#t]) as a JSON array, even when empty. Raises on values cjson
-- cannot encode.
function M.array(t)
    local n = #t
    if n == 1 then return "[" .. codec.encode(t[1]) .. "]" end -- the common case
    if n == 0 then return "[]" end
    local parts = {}
    for i = 1, #t do parts[i] = codec.encode(t[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
end

M.encode_strict = codec.encode

-- Codecs that encode at most MAX_DEPTH - outer levels, by outer: for a value written
-- `outer` levels deep in a document, so that the whole document decodes again.
local nested = {}
local function nested_codec(outer)
    local c = nested[outer]
    if not c then
        c = cjson.new()
        c.encode_invalid_numbers(false)
        c.encode_max_depth(MAX_DEPTH - outer)
        c.encode_sparse_array(false)
        nested[outer] = c
    end
    return c
end

--- Encodes v as a value nested inside `outer` objects or arrays: it may nest MAX_DEPTH -
-- outer levels itself, so that the document nests at most MAX_DEPTH. Raises as encode_strict.
function M.encode_at(v, outer)
    return nested_codec(outer).encode(v)
end

--- array(t) for a list nested inside `outer` objects or arrays (its items are outer + 1
-- deep). Raises as encode_strict.
function M.array_at(t, outer)
    local c = nested_codec(outer + 1)
    local parts = {}
    for i = 1, #t do parts[i] = c.encode(t[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
end
M.raw_decode = codec.decode -- raises on invalid input

return M
