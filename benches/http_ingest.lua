-- wrk requests for POST /v1/streams/clicks/events: 16 distinct bodies of 1,000 click
-- events each, stamped near now (clicks have no id, so every event is accepted), sent in
-- turn. A JSON array by default; `wrk ... -s benches/http_ingest.lua URL -- ndjson` sends
-- the same events as NDJSON. Used by benches/http_ingest.sh and http_vs_nginx_redis.py.
local bodies = {}
local content_type = "application/json"

init = function(args)
  local ndjson = args[1] == "ndjson"
  if ndjson then
    content_type = "application/x-ndjson"
  end
  math.randomseed(3)
  local now = os.time() * 1000
  for b = 1, 16 do
    local events = {}
    for i = 1, 1000 do
      events[i] = string.format('{"user_id":"cust%d","ts":%d,"page":"/p/%d","dwell_ms":%d}',
        math.random(1, 10000), now - math.random(0, 60000), math.random(1, 200), math.random(1, 60000))
    end
    if ndjson then
      bodies[b] = table.concat(events, "\n")
    else
      bodies[b] = "[" .. table.concat(events, ",") .. "]"
    end
  end
end

local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/v1/streams/clicks/events",
    {["Content-Type"] = content_type}, bodies[(n % 16) + 1])
end
