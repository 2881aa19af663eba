#!/usr/bin/env bash
# `POST /v1/streams/clicks/events` over loopback, timed with wrk (docs/benchmarks.md).
#
# Usage: benches/http_ingest.sh [FSDB_BINARY] [CONNECTIONS] [SECONDS] [json|ndjson]
#   FSDB_BINARY: default target/release/fsdb; CONNECTIONS: 1 (default); SECONDS: 5;
#   the body: a JSON array (default) or NDJSON, 1,000 click events per request, 16
#   distinct bodies (benches/http_ingest.lua, also used by http_vs_nginx_redis.py).
# Applies the reference workload's definitions to an empty data directory, serves it on
# 127.0.0.1:18791, posts for SECONDS with wrk and prints "http ingest N k events/s"
# (every event accepted and durable; the pattern benches/interleave.sh takes:
# 'http ingest ([0-9]+) k events/s'). Needs wrk (benches/http_vs_nginx_redis.sh installs it).
set -euo pipefail
fsdb=${1:-target/release/fsdb}
connections=${2:-1}
seconds=${3:-5}
format=${4:-json}
if [[ $format != json && $format != ndjson ]]; then
    echo "the body is json or ndjson" >&2
    exit 2
fi
port=18791
source "$(dirname "$0")/serve.sh"
work=$(mktemp -d "${TMPDIR:-/tmp}/fsdb-http-ingest.XXXXXX")
cleanup() {
    stop_fsdb
    rm -rf "$work"
}
trap cleanup EXIT
"$fsdb" generate --scale demo --spine-rows 1 --out "$work/files" >/dev/null
"$fsdb" --data "$work/data" apply "$work/files/definitions.toml" >/dev/null
serve_fsdb "$fsdb" "$work/data" "$port"
out=$(wrk -t1 -c"$connections" -d"${seconds}s" -s "$(dirname "$0")/http_ingest.lua" \
    "http://127.0.0.1:$port" -- "$format")
if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
    echo "wrk saw failures:" >&2
    echo "$out" >&2
    exit 1
fi
requests=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
echo "http ingest $(awk -v r="$requests" 'BEGIN {printf "%d", r}') k events/s ($connections connection(s), $format, 1,000 events per request)"
