-- wrk runs for a duration; with this script it runs for a count. Used by loadtest.sh as
--   wrk -tTHREADS ... -s scripts/wrk-count.lua URL -- SHARE FINISHED_FILE
-- Each thread stops after SHARE responses (a response or two already read in the same
-- event-loop pass still counts, so a batch can be a few over), notes when it started and
-- stopped, and adds a line to FINISHED_FILE. loadtest.sh interrupts wrk once every thread
-- has, and done() prints the throughput from the notes: wrk's own would include the wait
-- for the interrupt.
local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } timespec;
int clock_gettime(int clock, timespec *now);
]])

local CLOCK_MONOTONIC = 1

local function now()
    local t = ffi.new("timespec")
    ffi.C.clock_gettime(CLOCK_MONOTONIC, t)
    return tonumber(t.tv_sec) + tonumber(t.tv_nsec) / 1e9
end

local threads = {}
function setup(thread)
    table.insert(threads, thread)
end

local share, finished, responses = 0, nil, 0
-- Globals, so that done() can read them from each thread with thread:get.
started, stopped = 0, 0

function init(args)
    share, finished = tonumber(args[1]), args[2]
    started = now()
end

function response()
    responses = responses + 1
    if responses ~= share then
        return
    end
    stopped = now()
    wrk.thread:stop()
    local file = assert(io.open(finished, "a"))
    file:write("stopped\n")
    file:close()
end

function done(summary)
    local first, last = math.huge, 0
    for _, thread in ipairs(threads) do
        first = math.min(first, thread:get("started"))
        last = math.max(last, thread:get("stopped"))
    end
    io.write(string.format("counted: %d requests in %.3f s, %.0f req/s\n",
        summary.requests, last - first, summary.requests / (last - first)))
end
