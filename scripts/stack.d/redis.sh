# Redis: Debian's redis-server on our own port (sourced by scripts/stack).

redis_ok() { command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; }

install_redis() {
  redis_ok && return 0
  # We run our own instance on our own port; whatever service the package
  # starts (if any) on 6379 is left alone and never used.
  apt_install redis redis-server
  redis_ok || die "redis: redis-server still missing after apt-get install"
}


redis_pid() {
  local pid
  pid=$(read_pidfile "$REDIS_PIDFILE")
  pid_is_ours "$pid" redis-server "$REDIS_DIR" && printf '%s' "$pid"
  return 0
}

redis_ping() { [[ $(timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

# Redis shows its listen address in its process title.
redis_serving() { cmdline_has "$1" "$HOST:$REDIS_PORT" && redis_ping; }

redis_start() {
  local log_file pid t0 start=$SECONDS
  t0=$(now_ms)
  log_file=$(logfile redis)
  mkdir -p "$REDIS_DIR"
  log "redis: starting on $HOST:$REDIS_PORT (log: $log_file)"
  # No config file: Debian's /etc/redis/redis.conf belongs to its own service.
  # 64 databases: each integration test takes its own.
  # shellcheck disable=SC2094 # redis appends to the log only after startup
  without_lock redis-server --bind "$HOST" --port "$REDIS_PORT" --dir "$REDIS_DIR" \
    --daemonize yes --pidfile "$REDIS_PIDFILE" --logfile "$log_file" \
    --appendonly yes --save '' --databases 64 </dev/null >>"$log_file" 2>&1 ||
    fail_with_log redis "redis-server failed to start"
  until redis_ping; do
    ((SECONDS - start < READY_TIMEOUT)) || fail_with_log redis "not ready on $HOST:$REDIS_PORT after ${READY_TIMEOUT}s"
    sleep 0.2
  done
  pid=$(redis_pid)
  log "redis: running (pid ${pid:-?}) on $HOST:$REDIS_PORT (ready in $(since "$t0"))"
}

redis_up() { keep_or_start redis "$REDIS_PORT" UDO_REDIS_PORT "$REDIS_PIDFILE"; }

# SIGTERM makes redis flush its append-only file and exit cleanly.
redis_down() {
  stop_pid "$(redis_pid)" redis
  rm -f "$REDIS_PIDFILE"
}

redis_status() {
  local pid
  pid=$(redis_pid)
  print_status redis "$REDIS_PORT" "$pid" redis_serving "$pid"
}
