#!/usr/bin/env bash
# Lookups while large bodies are ingested: `GET /v1/features` latency over loopback while a
# second client posts 100,000-event bodies (~6 MB) back to back (docs/benchmarks.md).
#
# Usage: benches/http_lookup_under_ingest.sh [FSDB_BINARY] [SECONDS]
#   FSDB_BINARY: default target/release/fsdb; SECONDS: 5.
# Serves a fresh directory with the reference workload's definitions (the demo scale's
# events ingested first, so lookups find entities) on 127.0.0.1:18792, runs wrk (one
# connection, `--latency`) on single-entity lookups for SECONDS while Python posts, and
# prints "lookup p50 X ms p99 Y ms max Z ms; ingest N k events/s". Needs wrk.
set -euo pipefail
fsdb=${1:-target/release/fsdb}
seconds=${2:-5}
port=18792
source "$(dirname "$0")/serve.sh"
work=$(mktemp -d "${TMPDIR:-/tmp}/fsdb-lookup-ingest.XXXXXX")
poster=
cleanup() {
    if [[ -n $poster ]]; then
        kill "$poster" 2>/dev/null || true
        wait "$poster" 2>/dev/null || true
    fi
    stop_fsdb
    rm -rf "$work"
}
trap cleanup EXIT
"$fsdb" generate --scale demo --spine-rows 1 --out "$work/files" >/dev/null
"$fsdb" --data "$work/data" apply "$work/files/definitions.toml" >/dev/null
"$fsdb" --data "$work/data" ingest --stream clicks "$work/files/clicks.csv" >/dev/null
serve_fsdb "$fsdb" "$work/data" "$port"
python3 - "$port" "$seconds" >"$work/posted" <<'PY' &
import http.client, json, random, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
random.seed(4)
now = int(time.time() * 1000)
bodies = [json.dumps([{"user_id": f"cust{random.randint(1, 2000)}", "ts": now - random.randint(0, 60000),
                       "page": f"/p/{random.randint(1, 200)}", "dwell_ms": random.randint(1, 60000)}
                      for _ in range(100_000)]).encode() for _ in range(4)]
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
events, start = 0, time.time()
for i in range(10_000):
    if time.time() - start > seconds + 1:
        break
    connection.request("POST", "/v1/streams/clicks/events", bodies[i % 4], {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"status {response.status}")
    events += 100_000
print(f"{events / (time.time() - start) / 1000:.0f}")
PY
poster=$!
sleep 1
cat >"$work/lookup.lua" <<'LUA'
math.randomseed(5)
request = function()
  return wrk.format("GET", "/v1/features?entity=cust" .. math.random(1, 2000) .. "&names=user_clicks_1h,user_pages_1d")
end
LUA
out=$(wrk -t1 -c1 -d"${seconds}s" --latency -s "$work/lookup.lua" "http://127.0.0.1:$port")
wait "$poster"
poster=
p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
max=$(awk '$1 == "Latency" {print $4; exit}' <<<"$out")
echo "lookup p50 $p50 p99 $p99 max $max; ingest $(cat "$work/posted") k events/s"
