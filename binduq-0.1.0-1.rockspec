-- binduq: a distributed task scheduler for AI-agent workloads (C runtime, Lua policy).
-- Build and install from a checkout with:
--   luarocks --lua-version 5.4 make
-- Needs the C headers of hiredis (libhiredis-dev), libpq (libpq-dev), libmicrohttpd
-- (libmicrohttpd-dev) and OpenSSL (libssl-dev); libpq, libmicrohttpd and OpenSSL are opened
-- at run time when the PostgreSQL storage, the metrics endpoint or TLS is first used, not
-- linked;
-- and lua-cjson for Lua 5.4 (lua-cjson); simdjson (libsimdjson-dev) and a C++ compiler (g++)
-- for the task decoder, src/lua/l_json.cpp;
-- both are Debian packages, so the rock declares no rock dependencies that would need the
-- network. The version here must match BQ_VERSION_STRING in src/binduq.h (a test checks).
rockspec_format = "3.0"
package = "binduq"
version = "0.1.0-1"
source = {
    url = "git+file:///dev/null", -- built from a checkout with `luarocks make`
}
description = {
    summary = "A distributed task scheduler for AI-agent workloads over Redis",
    detailed = [[
Producers schedule run, pause, resume and cancel operations on a Redis list; workers wait
with a blocking pop and run handlers written in Lua 5.4, each in its own Lua state and
thread. Without Redis the same scripts run on an in-memory scheduler.
]],
    license = "MIT",
}
dependencies = {
    "lua >= 5.4, < 5.5",
}
external_dependencies = {
    HIREDIS = { header = "hiredis/hiredis.h" },
    OPENSSL = { header = "openssl/ssl.h" },
    PQ = { header = "postgresql/libpq-fe.h" },
    MHD = { header = "microhttpd.h" },
    SIMDJSON = { header = "simdjson.h" },
}
build = {
    type = "builtin",
    modules = {
        ["binduq.core"] = {
            sources = {
                "src/core/alloc.c", "src/core/arena.c", "src/core/backoff.c", "src/core/buf.c",
                "src/core/clock.c", "src/core/cron.c", "src/core/dl.c", "src/core/env.c", "src/core/err.c", "src/core/escape.c",
                "src/core/id.c", "src/core/log.c", "src/core/rand.c", "src/core/ratelimit.c",
                "src/core/wire.c",
                "src/net/bulkcap.c", "src/net/conn.c", "src/net/curlapi.c", "src/net/http.c",
                "src/net/mhdapi.c",
                "src/net/pool.c", "src/net/resp.c", "src/net/sse.c",
                "src/net/sslapi.c", "src/net/tls.c", "src/net/url.c",
                "src/broker/admin.c", "src/broker/broker.c", "src/broker/cluster.c",
                "src/broker/keys.c", "src/broker/mem.c",
                "src/broker/redis.c", "src/broker/redis_admin.c", "src/broker/redis_control.c",
                "src/broker/redis_cron.c",
                "src/broker/redis_feed.c", "src/broker/redis_fetch.c", "src/broker/redis_lease.c",
                "src/storage/mem.c", "src/storage/pg.c",
                "src/storage/pqapi.c", "src/storage/rstore.c", "src/storage/storage.c",
                "src/engine/client.c", "src/engine/config.c", "src/engine/feed_post.c", "src/engine/gateway.c",
                "src/engine/metrics.c",
                "src/engine/task.c",
                "src/engine/worker.c", "src/engine/worker_control.c",
                "src/engine/worker_dispatch.c", "src/engine/worker_feed.c", "src/engine/worker_heartbeat.c",
                "src/engine/worker_slots.c",
                "src/lua/l_client.c", "src/lua/l_core.c", "src/lua/l_cron.c", "src/lua/l_engine.c", "src/lua/l_gateway.c",
                "src/lua/l_http.c",
                "src/lua/l_metrics.c", "src/lua/l_slot.c",
                "src/lua/l_storage.c", "src/lua/l_task.c", "src/lua/l_produce.c",
                "src/lua/l_json.cpp",
            },
            defines = { "_GNU_SOURCE", "BQ_BUILDING" },
            incdirs = { "$(HIREDIS_INCDIR)", "$(OPENSSL_INCDIR)", "$(PQ_INCDIR)", "$(MHD_INCDIR)",
                        "$(SIMDJSON_INCDIR)" },
            libdirs = { "$(HIREDIS_LIBDIR)", "$(OPENSSL_LIBDIR)", "$(PQ_LIBDIR)", "$(MHD_LIBDIR)",
                        "$(SIMDJSON_LIBDIR)" },
            libraries = { "hiredis", "pthread", "m", "dl", "simdjson", "stdc++" },
        },
        ["binduq"] = "lua/binduq/init.lua",
        ["binduq.cli"] = "lua/binduq/cli.lua",
        ["binduq.config"] = "lua/binduq/config.lua",
        ["binduq.dashboard"] = "lua/binduq/dashboard.lua",
        ["binduq.dashboard.page"] = "lua/binduq/dashboard/page.lua",
        ["binduq.dashboard.script"] = "lua/binduq/dashboard/script.lua",
        ["binduq.dashboard.style"] = "lua/binduq/dashboard/style.lua",
        ["binduq.errors"] = "lua/binduq/errors.lua",
        ["binduq.events"] = "lua/binduq/events.lua",
        ["binduq.gateway"] = "lua/binduq/gateway.lua",
        ["binduq.http"] = "lua/binduq/http.lua",
        ["binduq.json"] = "lua/binduq/json.lua",
        ["binduq.lifecycle"] = "lua/binduq/lifecycle.lua",
        ["binduq.lifecycle.admission"] = "lua/binduq/lifecycle/admission.lua",
        ["binduq.lifecycle.chunk"] = "lua/binduq/lifecycle/chunk.lua",
        ["binduq.lifecycle.context"] = "lua/binduq/lifecycle/context.lua",
        ["binduq.lifecycle.control"] = "lua/binduq/lifecycle/control.lua",
        ["binduq.lifecycle.failure"] = "lua/binduq/lifecycle/failure.lua",
        ["binduq.lifecycle.finish"] = "lua/binduq/lifecycle/finish.lua",
        ["binduq.lifecycle.order"] = "lua/binduq/lifecycle/order.lua",
        ["binduq.lifecycle.run"] = "lua/binduq/lifecycle/run.lua",
        ["binduq.push"] = "lua/binduq/push.lua",
        ["binduq.recurring"] = "lua/binduq/recurring.lua",
        ["binduq.retry"] = "lua/binduq/retry.lua",
        ["binduq.scheduler"] = "lua/binduq/scheduler.lua",
        ["binduq.storage"] = "lua/binduq/storage.lua",
        ["binduq.task"] = "lua/binduq/task.lua",
        ["binduq.worker"] = "lua/binduq/worker.lua",
    },
}
test = {
    type = "busted",
}
