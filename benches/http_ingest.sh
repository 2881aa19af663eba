#!/usr/bin/env bash
# `POST /v1/streams/clicks/events` over loopback, timed with wrk (docs/benchmarks.md).
#
# Usage: benches/http_ingest.sh [FSDB_BINARY] [CONNECTIONS] [SECONDS] [json|ndjson]
#   FSDB_BINARY: default target/release/fsdb; CONNECTIONS: 1 (default); SECONDS: 5;
#   the body: a JSON array (default) or NDJSON, 1,000 click events per request, 16
#   distinct bodies (the requests of benches/http_vs_nginx_redis.py).
# Applies the reference workload's definitions to an empty data directory, serves it on
# 127.0.0.1:18791, posts for SECONDS with wrk and prints "http ingest N k events/s"
# (every event accepted and durable; the pattern benches/interleave.sh takes:
# 'http ingest ([0-9]+) k events/s'). Needs wrk (benches/http_vs_nginx_redis.sh installs it).
set -euo pipefail
fsdb=${1:-target/release/fsdb}
connections=${2:-1}
seconds=${3:-5}
format=${4:-json}
case $format in
json) content_type=application/json ;;
ndjson) content_type=application/x-ndjson ;;
*)
    echo "the body is json or ndjson" >&2
    exit 2
    ;;
esac
port=18791
work=$(mktemp -d "${TMPDIR:-/tmp}/fsdb-http-ingest.XXXXXX")
server=
cleanup() {
    if [[ -n $server ]]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
"$fsdb" generate --scale demo --spine-rows 1 --out "$work/files" >/dev/null
"$fsdb" --data "$work/data" apply "$work/files/definitions.toml" >/dev/null
"$fsdb" --data "$work/data" serve --listen "127.0.0.1:$port" 2>/dev/null &
server=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.1
done
cat >"$work/ingest.lua" <<LUA
local bodies = {}
init = function(args)
  math.randomseed(3)
  local now = os.time() * 1000
  for b = 1, 16 do
    local events = {}
    for i = 1, 1000 do
      events[i] = string.format('{"user_id":"cust%d","ts":%d,"page":"/p/%d","dwell_ms":%d}',
        math.random(1, 10000), now - math.random(0, 60000), math.random(1, 200), math.random(1, 60000))
    end
    if "$format" == "ndjson" then
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
    {["Content-Type"] = "$content_type"}, bodies[(n % 16) + 1])
end
response = function(status, headers, body)
  if status ~= 200 then
    io.stderr:write("status " .. status .. ": " .. body .. "\n")
    os.exit(1)
  end
end
LUA
out=$(wrk -t1 -c"$connections" -d"${seconds}s" -s "$work/ingest.lua" "http://127.0.0.1:$port")
requests=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
echo "http ingest $(awk -v r="$requests" 'BEGIN {printf "%d", r}') k events/s ($connections connection(s), $format, 1,000 events per request)"
