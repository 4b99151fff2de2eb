-- The deployment files under examples/deploy: parsed as YAML (lyaml), and checked against
-- what binduq serves and how it shuts down, so they cannot drift from the code.

local lyaml = require("lyaml")

local function read(path)
    local f = assert(io.open(path, "r"))
    local s = f:read("a")
    f:close()
    return s
end

describe("deployment files", function()
    local docs = lyaml.load(read("examples/deploy/worker.yaml"), { all = true })
    local by = {}
    for _, d in ipairs(docs) do by[d.kind] = d end

    it("probe the paths and port the worker serves", function()
        local pod = by.Deployment.spec.template.spec
        local c = pod.containers[1]
        local env = {}
        for _, e in ipairs(c.env) do env[e.name] = e.value end
        local port = tonumber(env.BINDUQ_METRICS_ADDR:match(":(%d+)$"))
        assert.are.equal(9100, port)
        assert.are.equal(port, c.ports[1].containerPort)
        assert.are.equal("metrics", c.ports[1].name)
        assert.are.equal("/healthz", c.livenessProbe.httpGet.path)
        assert.are.equal("/readyz", c.readinessProbe.httpGet.path)
        assert.are.equal("metrics", c.livenessProbe.httpGet.port)
        assert.are.equal("metrics", c.readinessProbe.httpGet.port)
        assert.are.equal(tostring(port), by.Deployment.spec.template.metadata.annotations["prometheus.io/port"])
        assert.are.equal("/metrics", by.Deployment.spec.template.metadata.annotations["prometheus.io/path"])
        -- The paths are the ones the code answers (src/engine/metrics.c).
        local src = read("src/engine/metrics.c")
        for _, p in ipairs({ "/healthz", "/readyz", "/metrics" }) do
            assert.truthy(src:find('"' .. p .. '"', 1, true), p)
        end
    end)

    it("gives the drain its whole deadline before SIGKILL", function()
        local pod = by.Deployment.spec.template.spec
        local env = {}
        for _, e in ipairs(pod.containers[1].env) do env[e.name] = e.value end
        local shutdown = tonumber(env.BINDUQ_SHUTDOWN_TIMEOUT)
        assert.truthy(shutdown)
        -- shutdown_timeout for handlers, then 2 s before stuck ones are abandoned.
        assert.is_true(pod.terminationGracePeriodSeconds >= shutdown + 2)
        assert.truthy(read("lua/binduq/worker.lua"):find("BINDUQ_SHUTDOWN_TIMEOUT", 1, true))
    end)

    it("scales on the queue length metric binduq exports", function()
        local hpa = by.HorizontalPodAutoscaler
        assert.are.equal(by.Deployment.metadata.name, hpa.spec.scaleTargetRef.name)
        local m = hpa.spec.metrics[1].external.metric
        assert.are.equal("binduq_queue_length", m.name)
        assert.are.equal("ready", m.selector.matchLabels.list)
        assert.truthy(read("src/engine/metrics.c"):find('"binduq_queue_length"', 1, true))
    end)

    it("keeps Redis durable and never evicting", function()
        local conf = {}
        for line in read("examples/deploy/redis.conf"):gmatch("[^\n]+") do
            local k, v = line:match("^(%S+)%s+(.-)%s*$")
            if k and k:sub(1, 1) ~= "#" then conf[k] = v end
        end
        assert.are.equal("yes", conf.appendonly)
        assert.are.equal("everysec", conf.appendfsync)
        assert.are.equal("noeviction", conf["maxmemory-policy"])
    end)
end)
