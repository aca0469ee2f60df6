-- wrk script for `POST /echo`: every request carries the same ~1 KB JSON body, read from echo.json
-- beside this file (benches/run.py sends that file too when it checks an endpoint before measuring).
--   taskset -c 0 wrk -t1 -c64 -d10s --latency -s benches/echo.lua http://127.0.0.1:8000/echo
local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
local file = assert(io.open(here .. "echo.json", "rb"))
local body = file:read("*a"):gsub("%s+$", "")
file:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
