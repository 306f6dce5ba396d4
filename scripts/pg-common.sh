# Helpers shared by scripts/with-postgres and the test support code (sourced, not run).

# Prints the directory holding initdb/pg_ctl/postgres, installing PostgreSQL with apt when none is found.
pgcache_find_pg_bin() {
  local candidate
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"
    return 0
  fi
  candidate="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -n "$candidate" ] && [ -x "$candidate/initdb" ]; then
    echo "$candidate"
    return 0
  fi
  echo "with-postgres: PostgreSQL server not found; installing it with apt-get" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 install -y postgresql >&2
  candidate="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$candidate" ]; then
    echo "with-postgres: could not install PostgreSQL; install the 'postgresql' package and retry" >&2
    return 1
  fi
  echo "$candidate"
}

# PostgreSQL refuses to run as root: as root, run the server as an unprivileged 'pgcache' user.
pgcache_as_owner() {
  local dir="$1"
  shift
  if [ "$(id -u)" -eq 0 ]; then
    id pgcache >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin pgcache
    chown -R pgcache "$dir"
    runuser -u pgcache -- "$@"
  else
    "$@"
  fi
}

# Prints a free TCP port on 127.0.0.1.
pgcache_free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "with-postgres: no free port found" >&2
  return 1
}

# initdb + start a throw-away cluster in DIR; prints the port. Durability is off (fast tests) unless
# PGCACHE_PG_DURABLE=1: then fsync, synchronous_commit and full_page_writes are on, as production runs.
pgcache_start_cluster() {
  local bin="$1" dir="$2" port durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  if [ "${PGCACHE_PG_DURABLE:-0}" = "1" ]; then
    durability="-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
  fi
  chmod 755 "$dir"
  pgcache_as_owner "$dir" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    return 1
  }
  for _ in 1 2 3 4 5; do
    port="$(pgcache_free_port)"
    if pgcache_as_owner "$dir" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=400 $durability -c shared_buffers=256MB" \
      start >/dev/null 2>&1; then
      echo "$port"
      return 0
    fi
  done
  cat "$dir/server.log" >&2
  return 1
}
