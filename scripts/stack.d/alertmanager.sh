# Alertmanager: Debian's prometheus-alertmanager on our own port, on demand
# (sourced by scripts/stack; `scripts/stack alertmanager up|down|status|env`).
# A single instance (clustering off) with one do-nothing receiver: the tests
# read what it holds through its v2 API; route it to real receivers by
# editing $AM_DIR/alertmanager.yml's `receivers` (kept across `up`).

alertmanager_ok() { command -v prometheus-alertmanager >/dev/null 2>&1; }

install_alertmanager() {
  alertmanager_ok && return 0
  # Our own instance on our own port; a service the package may start on
  # 9093 is left alone and never used.
  apt_install alertmanager prometheus-alertmanager
  alertmanager_ok || die "alertmanager: prometheus-alertmanager still missing after apt-get install"
}

alertmanager_pid() {
  local pid
  pid=$(read_pidfile "$AM_PIDFILE")
  # /proc/PID/comm is cut at 15 characters.
  pid_is_ours "$pid" prometheus-aler "$AM_DIR" && printf '%s' "$pid"
  return 0
}

alertmanager_ready() { curl -fsS -o /dev/null --max-time 3 "http://$HOST:$AM_PORT/-/ready" 2>/dev/null; }

alertmanager_serving() { cmdline_has "$1" "--web.listen-address=$HOST:$AM_PORT" && alertmanager_ready; }

alertmanager_config() {
  mkdir -p "$AM_DIR/data"
  [[ -f $AM_DIR/alertmanager.yml ]] && return 0
  cat >"$AM_DIR/alertmanager.yml" <<YAML
# Written once by scripts/stack (stack.d/alertmanager.sh); yours to edit.
global:
  resolve_timeout: 5m
route:
  receiver: "null"
  group_by: [alertname, component]
  group_wait: 1s
  group_interval: 5s
  repeat_interval: 1h
receivers:
  - name: "null"
YAML
}

alertmanager_start() {
  local log_file pid t0 start=$SECONDS
  t0=$(now_ms)
  log_file=$(logfile alertmanager)
  alertmanager_config
  log "alertmanager: starting on $HOST:$AM_PORT (log: $log_file)"
  (
    cd "$AM_DIR"
    if [[ -n $LOCK_FD ]]; then exec {LOCK_FD}>&-; fi
    exec nohup setsid prometheus-alertmanager "--config.file=$AM_DIR/alertmanager.yml" \
      "--storage.path=$AM_DIR/data" "--web.listen-address=$HOST:$AM_PORT" \
      --cluster.listen-address= </dev/null >>"$log_file" 2>&1
  ) &
  pid=$!
  printf '%s\n' "$pid" >"$AM_PIDFILE"
  until alertmanager_ready; do
    pid_alive "$pid" || fail_with_log alertmanager "alertmanager exited during startup"
    ((SECONDS - start < READY_TIMEOUT)) || fail_with_log alertmanager "not ready on $HOST:$AM_PORT after ${READY_TIMEOUT}s"
    sleep 0.2
  done
  log "alertmanager: running (pid $pid) on $HOST:$AM_PORT (ready in $(since "$t0"))"
}

alertmanager_up() {
  install_alertmanager
  keep_or_start alertmanager "$AM_PORT" UDO_ALERTMANAGER_PORT "$AM_PIDFILE"
}

alertmanager_down() {
  stop_pid "$(alertmanager_pid)" alertmanager
  rm -f "$AM_PIDFILE"
}

alertmanager_status() {
  local pid
  pid=$(alertmanager_pid)
  print_status alertmanager "$AM_PORT" "$pid" alertmanager_serving "$pid"
}

alertmanager_env() { printf 'export ALERTMANAGER_URL=%s\n' "http://$HOST:$AM_PORT"; }
