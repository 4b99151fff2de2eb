-- luacheck configuration (`make lint`; tests/run runs it with the suite).
std = "lua54"
max_line_length = 140
-- An unused `self` is the method signature, not a mistake.
self = false

-- The Redis scripts run inside Redis: its globals, and Redis' Lua 5.1.
files["lua/binduq/redis"] = { std = "lua51", read_globals = { "redis", "KEYS", "ARGV", "cjson" } }
files["lua/binduq/rstore"] = { std = "lua51", read_globals = { "redis", "KEYS", "ARGV" } }
files["tests"] = { std = "+busted" }
-- Test data (expected wire bytes, fixtures) are long strings by nature.
files["tests"].max_string_line_length = false
-- The benchmarks' report lines are format strings, one line per printed line.
files["tests/bench"] = { std = "+busted", max_line_length = false }
