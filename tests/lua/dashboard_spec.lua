-- The dashboard's pure parts: the per-minute counts the workers keep in {Q}:rates
-- (report-N.lua) read back, and the rates computed from them (docs/dashboard.md, "Rates").

local dashboard = require("binduq.dashboard")

describe("dashboard rates", function()
    it("reads the rates hash by minute, ignoring fields that are not counts", function()
        local m = dashboard.minutes_of({ "d:100", "7", "f:100", "2", "d:99", "5", "trim", "100", "junk", "1", "d:x", "3" })
        assert.are.same({ [100] = { done = 7, failed = 2 }, [99] = { done = 5, failed = 0 } }, m)
        assert.are.same({}, dashboard.minutes_of(nil))
    end)

    it("gives the last 60 s as this minute plus the part of the last one still within them", function()
        local now = 100 * 60 + 15 -- a quarter into minute 100: three quarters of minute 99 count
        local per, hist = dashboard.rates_doc({
            a = { [100] = { done = 10, failed = 1 }, [99] = { done = 40, failed = 4 }, [30] = { done = 9, failed = 9 } },
            b = { [41] = { done = 2, failed = 0 } },
        }, now)
        assert.are.same({ done = 40, failed = 4 }, per.a) -- 10 + 40 * 0.75, 1 + 4 * 0.75
        assert.are.same({ done = 0, failed = 0 }, per.b)
        assert.are.equal(60, #hist.points)
        assert.are.equal(60, hist.step)
        assert.are.equal(41 * 60, hist.points[1].t) -- minutes 41 .. 100
        assert.are.equal(100 * 60, hist.points[60].t)
        assert.are.same({ t = 41 * 60, done = 2, failed = 0 }, hist.points[1])
        assert.are.same({ t = 99 * 60, done = 40, failed = 4 }, hist.points[59])
        assert.are.equal(41 * 60, hist.from) -- minute 30 is older than the hour: not drawn
        local total = 0
        for _, p in ipairs(hist.points) do total = total + p.done end
        assert.are.equal(52, total)
    end)

    it("says nothing happened when no minute is in the hour", function()
        local per, hist = dashboard.rates_doc({}, 6000)
        assert.are.same({}, per)
        assert.is_nil(hist.from)
    end)
end)
