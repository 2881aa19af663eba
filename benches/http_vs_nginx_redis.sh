#!/usr/bin/env bash
# fsdb over HTTP beside nginx (static reply) and redis GET, on loopback (see the .py).
# Usage: benches/http_vs_nginx_redis.sh      (FSDB_BENCH_SECONDS=10 per measurement)
set -euo pipefail
cd "$(dirname "$0")/.."
./.ci/deps
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null || ! command -v redis-benchmark >/dev/null; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq wrk nginx-light redis-server redis-tools >/dev/null
  # The packages start system services; this benchmark runs its own on other ports.
  $sudo service nginx stop >/dev/null 2>&1 || true
  $sudo service redis-server stop >/dev/null 2>&1 || true
fi
cargo build --release --quiet --bin fsdb
exec python3 benches/http_vs_nginx_redis.py "${CARGO_TARGET_DIR:-target}/release/fsdb"
