#!/usr/bin/env bash
# `fsdb ingest` of the reference workload's files, timed (docs/benchmarks.md).
#
# Usage: benches/cli_ingest.sh [FSDB_BINARY] [SCALE] [FORMAT]
#   FSDB_BINARY: default target/release/fsdb; SCALE: S (default), M or demo;
#   FORMAT: csv (default, the files `fsdb generate` writes) or ndjson (the same rows as
#   JSON objects, typed as the streams declare, empty cells left out; converted by Python).
# Generates the files (untimed), applies the workload's definitions to an empty data
# directory, then times `fsdb ingest` of the transactions and the clicks and prints
# "ingest N k events/s" (the pattern benches/interleave.sh takes:
# 'ingest ([0-9]+) k events/s'). Everything lives in a temporary directory, removed after.
set -euo pipefail
fsdb=${1:-target/release/fsdb}
scale=${2:-S}
format=${3:-csv}
if [[ $format != csv && $format != ndjson ]]; then
    echo "FORMAT is csv or ndjson" >&2
    exit 2
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/fsdb-cli-ingest.XXXXXX")
trap 'rm -rf "$work"' EXIT
export FSDB_DATA="$work/data"
"$fsdb" generate --scale "$scale" --out "$work/files" >/dev/null
"$fsdb" apply "$work/files/definitions.toml" >/dev/null
case $format in
csv) ;;
ndjson)
    python3 - "$work/files" <<'EOF'
import csv, json, sys
# The reference workload's typed columns (src/workload.rs); the rest are text.
types = {"ts": int, "amount": float, "dwell_ms": int, "approved": lambda s: s == "true"}
for stream in ("transactions", "clicks"):
    with open(f"{sys.argv[1]}/{stream}.csv") as rows, open(f"{sys.argv[1]}/{stream}.ndjson", "w") as out:
        for row in csv.DictReader(rows):
            out.write(json.dumps({k: types.get(k, str)(v) for k, v in row.items() if v != ""}) + "\n")
EOF
    ;;
esac
events=$(($(wc -l <"$work/files/transactions.csv") + $(wc -l <"$work/files/clicks.csv") - 2))
start=$(date +%s%N)
"$fsdb" ingest --stream transactions "$work/files/transactions.$format" >/dev/null
"$fsdb" ingest --stream clicks "$work/files/clicks.$format" >/dev/null
end=$(date +%s%N)
echo "ingest $((events * 1000000 / ((end - start) / 1000) / 1000)) k events/s ($events rows in $(((end - start) / 1000000)) ms)"
