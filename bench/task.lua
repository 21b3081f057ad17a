-- wrk script: POST /task. The body comes from the environment: TARGET (a node's gRPC address;
-- absent: the node's own plugins), or TARGET_JSON (a target as raw JSON, e.g. a selector `{}`),
-- PLUGIN (absent: the default plugin) and INPUT (default "hello").
local fields = {}
local function add(name, value)
  if value and value ~= "" then
    local escaped = value:gsub("\\", "\\\\"):gsub('"', '\\"'):gsub("\n", "\\n")
    table.insert(fields, string.format('"%s": "%s"', name, escaped))
  end
end
add("target", os.getenv("TARGET"))
if os.getenv("TARGET_JSON") then
  table.insert(fields, '"target": ' .. os.getenv("TARGET_JSON"))
end
add("plugin", os.getenv("PLUGIN"))
add("id", "1")
add("input", os.getenv("INPUT") or "hello")

wrk.method = "POST"
wrk.body = "{" .. table.concat(fields, ", ") .. "}"
wrk.headers["Content-Type"] = "application/json"

function response(status, headers, body)
  if status ~= 200 then
    print("unexpected status " .. status .. ": " .. body)
    os.exit(1)
  end
end

done = function(summary, latency, requests)
  io.write(string.format("requests: %d\n", summary.requests))
  io.write(string.format("requests/s: %.0f\n", summary.requests / (summary.duration / 1e6)))
  io.write(string.format("p50: %.2f ms  p99: %.2f ms\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
  io.write(string.format("errors: %d\n", summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
