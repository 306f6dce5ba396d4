#!/usr/bin/env bash
# `compare` with the Python library's rows in the same run: installs `postgres-cache` (default 0.1.1, from
# PyPI) into a throw-away venv under a temp dir (never the repo), then runs
# `pgcache-harness compare --python <venv python>` with the pgcache, Redis and Python backends against the
# same PostgreSQL. The venv is removed on exit.
#
#   scripts/with-postgres harness/scripts/compare-python.sh --instance-per-client          # Shape B
#   scripts/with-postgres harness/scripts/compare-python.sh --instance-per-client --managed-service
#   scripts/with-postgres harness/scripts/compare-python.sh                                # Shape A
#
# Any further arguments go to `compare` (a `--backends` given there replaces the default list).
# Environment: PGCACHE_HARNESS (a built pgcache-harness binary; default: cargo build --release),
# POSTGRES_CACHE_VERSION (default 0.1.1), PYTHON (default python3, 3.10 or newer).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
version="${POSTGRES_CACHE_VERSION:-0.1.1}"
venv_dir="$(mktemp -d -t pgcache-compare-venv.XXXXXX)"
trap 'rm -rf "$venv_dir"' EXIT

"${PYTHON:-python3}" -m venv "$venv_dir/venv"
"$venv_dir/venv/bin/pip" install --quiet --disable-pip-version-check "postgres-cache==$version" >&2
echo "compare-python: postgres-cache $version in $venv_dir/venv" >&2

harness="${PGCACHE_HARNESS:-}"
if [ -z "$harness" ]; then
  (cd "$here" && cargo build --release --locked -q -p pgcache-harness)
  harness="${CARGO_TARGET_DIR:-$here/target}/release/pgcache-harness"
fi
backends="full,no-local,no-notify,raw-postgres,redis,python-full,python-no-local,python-no-notify"
case " $* " in *" --backends"*) backends="" ;; esac
"$harness" compare --python "$venv_dir/venv/bin/python" ${backends:+--backends "$backends"} "$@"
