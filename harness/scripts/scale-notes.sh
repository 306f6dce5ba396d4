#!/usr/bin/env bash
# Scale notes: runs `pgcache-harness load` over table size, value size, process count and notifications,
# and prints one markdown row per run (throughput, get/get_or_set/set p50 and p99, L1 hit ratio,
# invalidation p99, violations). Run from the repository root:
#
#   scripts/with-postgres harness/scripts/scale-notes.sh [DURATION]      # default 10s per run
#
# Needs jq. Results of each run stay in harness-out/scale/<name>/results.json.
set -euo pipefail
duration="${1:-10s}"
cargo build --release -p pgcache-harness >&2
bin="${CARGO_TARGET_DIR:-target}/release/pgcache-harness"

echo "| run | ops/s | get p50 / p99 | get_or_set p50 / p99 | set p50 / p99 | L1 hit (get_or_set) | invalidation p99 | violations |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
run() {
  local name="$1"; shift
  local out="harness-out/scale/$name"
  "$bin" load --quiet --duration "$duration" --out "$out" "$@" >"$out.log" 2>&1 || true
  jq -r --arg name "$name" '
    def ms(x): if x == null then "-" elif x >= 1000 then "\((x / 1000 * 100 | round) / 100)ms" else "\(x | round)µs" end;
    "| \($name) | \(.throughput_ops_per_s | round) | \(ms(.ops.get.p50_us)) / \(ms(.ops.get.p99_us)) | \(ms(.ops.get_or_set.p50_us)) / \(ms(.ops.get_or_set.p99_us)) | \(ms(.ops.set.p50_us)) / \(ms(.ops.set.p99_us)) | \(.l1_hit_ratio * 1000 | round / 10)% | \(if .invalidation.samples > 0 then ms(.invalidation.delay.p99_us) else "-" end) | \(.check.violations_total) |"
  ' "$out/results.json" 2>/dev/null || echo "| $name | failed: see $out.log | | | | | | |"
}
mkdir -p harness-out/scale
run "rows 10^4, 100 B"          --keys 10000 --prefill 10000
run "rows 10^6, 100 B"          --keys 1000000 --prefill 1000000
run "value 10 KB"               --keys 10000 --value-size 10000
run "value 1 MB (8 tasks)"      --keys 500 --value-size 1000000 --tasks 8
for p in 1 2 4 8; do
  run "processes $p"            --processes "$p"
done
run "notify on"                 --processes 4
run "notify off"                --processes 4 --disable-notify
run "notify on, unlogged"       --processes 4 --unlogged
run "no local cache"            --processes 4 --no-local
