-- wrk script for the routing experiment (experiments/routing.py): an uneven mix of requests.
-- Each request is slow (GET /work?ms=SLOW_MS) with probability SLOW_FRACTION, else fast (/work?ms=FAST_MS).
-- Environment: FAST_MS (default 0.2), SLOW_MS (default 10), SLOW_FRACTION (default 0.05); SLOW_FRACTION=0
-- gives an even load of fast requests only. WORK_PATH (default /work, the `async def` handler;
-- /work-sync is the `def` one).
local fast_ms = os.getenv("FAST_MS") or "0.2"
local slow_ms = os.getenv("SLOW_MS") or "10"
local slow_fraction = tonumber(os.getenv("SLOW_FRACTION") or "0.05")
local path = os.getenv("WORK_PATH") or "/work"
local fast, slow

-- Requests are formatted in init(), not at load: at load time wrk.host is not set yet, so wrk.format would
-- leave out the Host header, and an HTTP/1.1 request without Host is a 400 (RFC 9112 section 3.2).
function init(args)
    fast = wrk.format("GET", path .. "?ms=" .. fast_ms)
    slow = wrk.format("GET", path .. "?ms=" .. slow_ms)
    math.randomseed(os.time())
end

function request()
    if math.random() < slow_fraction then
        return slow
    end
    return fast
end
