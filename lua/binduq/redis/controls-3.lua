-- controls-3: find the cancel and pause operations among the newest entries of a queue, so
-- that they reach running handlers without waiting their turn behind the runs queued before
-- them (Bindu's API pushes cancel and pause into the queue; it has no other channel). The
-- operations stay where they are and are handled in order later; this only reports them.
-- KEYS[1] Q               the queue
-- KEYS[2] {Q}:ctlscan     a marker: some worker scanned Q within the last ARGV[1] ms
-- KEYS[3] {Q}:ctlseen     set: the SHA1 of each control operation reported before
-- ARGV[1] the interval in ms (at most one scan of Q per interval, across all workers)
-- ARGV[2] how many of the newest entries to read, at most
-- ARGV[3] the queue's front: "R" (producers LPUSH) or "L" (they RPUSH)
-- A cancel is always reported: canceling earlier never changes what the operations mean.
-- A pause is reported only when the whole queue was read and nothing older in it names the
-- task (a resume queued before it must be handled first). Entries over 64 KiB are not
-- looked into (control operations are small). Each is reported once: {Q}:ctlseen keeps the
-- ones still in the window.
-- Returns {op, task_id, op, task_id, ...} of the operations not reported before.
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', tonumber(ARGV[1])) then return {} end
local window = tonumber(ARGV[2])
local n = redis.call('LLEN', KEYS[1])
if n == 0 then
    redis.call('DEL', KEYS[3])
    return {}
end
local items -- newest first
if ARGV[3] == 'L' then
    local raw = redis.call('LRANGE', KEYS[1], -window, -1)
    items = {}
    for i = #raw, 1, -1 do items[#items + 1] = raw[i] end
else
    items = redis.call('LRANGE', KEYS[1], 0, window - 1)
end
local whole = n <= window
local function control(m)
    if #m > 65536 or not (string.find(m, 'cancel', 1, true) or string.find(m, 'pause', 1, true)) then
        return nil
    end
    local body = m
    if string.sub(m, 1, 4) == '#bq ' then
        local nl = string.find(m, '\n', 5, true)
        if not nl then return nil end
        body = string.sub(m, nl + 1)
    end
    local ok, t = pcall(cjson.decode, body)
    if not ok or type(t) ~= 'table' then return nil end
    local op, id = t.type, t.task_id
    if op == nil then
        op = t.operation
        if type(t.params) == 'table' then id = t.params.task_id end
    end
    if (op ~= 'cancel' and op ~= 'pause') or type(id) ~= 'string' or id == '' or #id > 200 then
        return nil
    end
    return op, id
end
local out, seen = {}, {}
for i = 1, #items do
    local op, id = control(items[i])
    if op == 'pause' then
        local alone = whole
        for j = i + 1, #items do
            if not alone then break end
            if string.find(items[j], id, 1, true) then alone = false end
        end
        if not alone then op = nil end
    end
    if op then
        local f = redis.sha1hex(items[i])
        seen[#seen + 1] = f
        if redis.call('SISMEMBER', KEYS[3], f) == 0 then
            out[#out + 1] = op
            out[#out + 1] = id
        end
    end
end
redis.call('DEL', KEYS[3])
if #seen > 0 then
    redis.call('SADD', KEYS[3], unpack(seen))
    redis.call('EXPIRE', KEYS[3], 3600)
end
return out
