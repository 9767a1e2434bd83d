-- wrk script for the "PUT memory" row of tests/bench/run.
--
-- Each request is PUT /v1/kv/<store>/bench-put-<thread>-<n> with a fixed
-- 100-byte body, n cycling over BENCH_PUT_KEYS keys per wrk thread (default
-- 1000): the first pass inserts, every later pass overwrites, and the store
-- stays a bounded size however long the run is.  Every answer should be
-- 204; wrk counts anything else as "Non-2xx or 3xx responses", which the
-- runner reports as an invalid row.
--
-- Environment: BENCH_STORE (default "default"), BENCH_PUT_KEYS (default 1000).

local VALUE_BYTES = 100

local store = os.getenv("BENCH_STORE") or "default"
local key_count = tonumber(os.getenv("BENCH_PUT_KEYS") or "") or 1000
if key_count < 1 then
    key_count = 1
end

local next_thread_id = 0

-- Runs in the main Lua state, once per wrk thread before it starts.
function setup(thread)
    thread:set("thread_id", next_thread_id)
    next_thread_id = next_thread_id + 1
end

local body = string.rep("v", VALUE_BYTES)
local headers = { ["Content-Type"] = "application/octet-stream" }
local counter = 0

-- Runs in each thread's own Lua state, once per request.
function request()
    local path = string.format("/v1/kv/%s/bench-put-%d-%d", store,
                               thread_id or 0, counter)
    counter = (counter + 1) % key_count
    return wrk.format("PUT", path, headers, body)
end
