#!/usr/bin/env bash
# Side-by-side `bench` of two checkouts (e.g. before and after a change), interleaved, against one server.
#
#   git worktree add /tmp/before <rev> && (cd /tmp/before && cargo build --release -p pgcache-harness)
#   cargo build --release -p pgcache-harness
#   scripts/with-postgres harness/scripts/bench-ab.sh /tmp/before . [sections] [rounds]
#
# sections: as `bench --only` (default l1,l2,set,http); rounds: default 2. Prints the ratio rows of each run.
set -euo pipefail
before="${1:?usage: bench-ab.sh BEFORE_DIR AFTER_DIR [sections] [rounds]}"
after="${2:?usage: bench-ab.sh BEFORE_DIR AFTER_DIR [sections] [rounds]}"
sections="${3:-l1,l2,set,http}"
rounds="${4:-2}"
for round in $(seq 1 "$rounds"); do
  for side in "$before" "$after"; do
    echo "== round $round: $side"
    (cd "$side" && ./target/release/pgcache-harness bench --only "$sections" 2>&1 | grep -E '^\| [A-Za-z]' | grep -v '^| what')
  done
done
