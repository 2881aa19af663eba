#!/usr/bin/env bash
# Interleaved A/B runs: on this noisy machine a change is judged by pairs run back to back,
# never by runs minutes apart (docs/benchmarks.md).
#
# Usage: benches/interleave.sh PAIRS 'COMMAND A' 'COMMAND B' [PATTERN]
#   Runs A then B, PAIRS times. From each run's output it takes the first number that
#   PATTERN (an extended regex, its number in the first group; default: the rate that
#   examples/profile_ingest prints) matches, and prints every pair, then each side's
#   median and how many pairs B won (higher is better).
# Example (env overrides apply to one side only):
#   benches/interleave.sh 10 'FSDB_APPENDERS=4 target/release/examples/profile_ingest' \
#       'FSDB_APPENDERS=8 target/release/examples/profile_ingest'
set -euo pipefail

if [[ $# -lt 3 ]]; then
    sed -n '5,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
pairs=$1
command_a=$2
command_b=$3
pattern=${4:-'([0-9.]+) k events/s'}

# The first number PATTERN captures in one run of COMMAND; fails loudly if there is none.
measure() {
    local output
    output=$(bash -c "$1" 2>/dev/null) || true
    if [[ ! $output =~ $pattern ]] || [[ -z ${BASH_REMATCH[1]:-} ]]; then
        echo "no match for /$pattern/ in the output of: $1" >&2
        exit 1
    fi
    echo "${BASH_REMATCH[1]}"
}

results=()
for ((i = 1; i <= pairs; i++)); do
    a=$(measure "$command_a")
    b=$(measure "$command_b")
    echo "pair $i: A $a  B $b"
    results+=("$a $b")
done
printf '%s\n' "${results[@]}" | awk '
    { a[NR] = $1; b[NR] = $2; if ($2 > $1) wins++ }
    function median(x, n,    i, j, t) {
        for (i = 2; i <= n; i++) { t = x[i]; for (j = i - 1; j >= 1 && x[j] > t; j--) x[j + 1] = x[j]; x[j + 1] = t }
        return n % 2 ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2
    }
    END {
        n = NR
        printf "median A %s, median B %s; B higher in %d of %d pairs\n", median(a, n), median(b, n), wins + 0, n
    }'
