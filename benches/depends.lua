-- wrk script for `POST /depends`: a small pydantic body (depends.json beside this file, which
-- benches/run.py also sends when it checks the endpoint) and the headers the two dependencies read.
local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
local file = assert(io.open(here .. "depends.json", "rb"))
local body = file:read("*a"):gsub("%s+$", "")
file:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Tenant"] = "acme"
wrk.headers["Authorization"] = "Bearer ada"
