#!/usr/bin/env bash
# `fsdb ingest` of the reference workload's CSV files, timed (docs/benchmarks.md).
#
# Usage: benches/cli_ingest.sh [FSDB_BINARY] [SCALE]
#   FSDB_BINARY: default target/release/fsdb; SCALE: S (default), M or demo.
# Generates the workload's files (untimed), applies its definitions to an empty data
# directory, then times `fsdb ingest` of transactions.csv and clicks.csv and prints
# "ingest N k events/s" (the pattern benches/interleave.sh takes:
# 'ingest ([0-9]+) k events/s'). Everything lives in a temporary directory, removed after.
set -euo pipefail
fsdb=${1:-target/release/fsdb}
scale=${2:-S}
work=$(mktemp -d "${TMPDIR:-/tmp}/fsdb-cli-ingest.XXXXXX")
trap 'rm -rf "$work"' EXIT
export FSDB_DATA="$work/data"
"$fsdb" generate --scale "$scale" --out "$work/files" >/dev/null
"$fsdb" apply "$work/files/definitions.toml" >/dev/null
events=$(($(wc -l <"$work/files/transactions.csv") + $(wc -l <"$work/files/clicks.csv") - 2))
start=$(date +%s%N)
"$fsdb" ingest --stream transactions "$work/files/transactions.csv" >/dev/null
"$fsdb" ingest --stream clicks "$work/files/clicks.csv" >/dev/null
end=$(date +%s%N)
echo "ingest $((events * 1000000 / ((end - start) / 1000) / 1000)) k events/s ($events rows in $(((end - start) / 1000000)) ms)"
