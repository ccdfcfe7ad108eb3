-- wrk script for `make bench`: every request is the same MCP JSON-RPC POST with a bearer token.
-- Environment:
--   BENCH_BODY_FILE  file holding the JSON-RPC body
--   BENCH_TOKEN      bearer token (from `tollgate dev token`)
--   BENCH_OUT        file that done() writes one JSON object to (requests/s, p50, p99, errors)
--   BENCH_SESSIONS   optional: MCP session ids, comma-separated; each request carries the next
local function slurp(path)
  local f = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
  local s = f:read("*a")
  f:close()
  return s
end

wrk.method = "POST"
wrk.body = slurp(os.getenv("BENCH_BODY_FILE"))
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")

local sessions = {}
for id in string.gmatch(os.getenv("BENCH_SESSIONS") or "", "[^,]+") do
  sessions[#sessions + 1] = id
end
if #sessions > 0 then
  local next_session = 0
  function request()
    next_session = next_session % #sessions + 1
    wrk.headers["Mcp-Session-Id"] = sessions[next_session]
    return wrk.format()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local seconds = summary.duration / 1e6
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  out:write(string.format(
    '{"requests":%d,"seconds":%.3f,"rps":%.2f,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"bytes":%d,"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50), latency:percentile(99), latency.max,
    summary.bytes, e.connect, e.read, e.write, e.status, e.timeout))
  out:close()
end
