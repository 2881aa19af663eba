#!/usr/bin/env bash
# fsdb vs DuckDB on the same point-in-time training set (see the .py for what is measured).
# Usage: benches/training_set_vs_duckdb.sh [S|M]     (default M: 10M events, 1M spine rows)
set -euo pipefail
cd "$(dirname "$0")/.."
./.ci/deps
python3 -c "import duckdb" 2>/dev/null || python3 -m pip install --quiet duckdb
cargo build --release --quiet
exec python3 benches/training_set_vs_duckdb.py "${1:-M}"
