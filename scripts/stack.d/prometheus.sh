# Prometheus: Debian's prometheus on our own port, on demand (sourced by
# scripts/stack; `scripts/stack prometheus up|down|status|env`).
#
# It loads prometheus/rules.yml and scrapes every target listed in the
# files of $PROM_TARGETS (file service discovery, picked up within a
# second): a test or a local `udo-stream run` adds itself with
#   echo '[{"targets":["127.0.0.1:9464"]}]' > "$PROMETHEUS_TARGETS_DIR/run.json"
# Scrape and rule evaluation every UDO_PROMETHEUS_INTERVAL (1s: the tests
# read rates within seconds).

prometheus_ok() { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; }

install_prometheus() {
  prometheus_ok && return 0
  # Our own instance on our own port; a service the package may start on
  # 9090 is left alone and never used.
  apt_install prometheus prometheus
  prometheus_ok || die "prometheus: prometheus/promtool still missing after apt-get install"
}

prometheus_pid() {
  local pid
  pid=$(read_pidfile "$PROM_PIDFILE")
  pid_is_ours "$pid" prometheus "$PROM_DIR" && printf '%s' "$pid"
  return 0
}

prometheus_ready() { curl -fsS -o /dev/null --max-time 3 "http://$HOST:$PROM_PORT/-/ready" 2>/dev/null; }

prometheus_serving() { cmdline_has "$1" "--web.listen-address=$HOST:$PROM_PORT" && prometheus_ready; }

prometheus_config() {
  mkdir -p "$PROM_DIR/data" "$PROM_TARGETS"
  cat >"$PROM_DIR/prometheus.yml" <<YAML
# Written by scripts/stack (stack.d/prometheus.sh); edits are overwritten.
global:
  scrape_interval: $PROM_INTERVAL
  evaluation_interval: $PROM_INTERVAL
rule_files:
  - $ROOT/prometheus/rules.yml
scrape_configs:
  - job_name: udo-stream
    metrics_path: /metrics
    file_sd_configs:
      - files: ["$PROM_TARGETS/*.json"]
        refresh_interval: 1s
YAML
  promtool check config "$PROM_DIR/prometheus.yml" >/dev/null 2>&1 ||
    die "prometheus: the generated $PROM_DIR/prometheus.yml does not check: $(promtool check config "$PROM_DIR/prometheus.yml" 2>&1 | tail -n 3)"
}

prometheus_start() {
  local log_file pid t0 start=$SECONDS
  t0=$(now_ms)
  log_file=$(logfile prometheus)
  prometheus_config
  log "prometheus: starting on $HOST:$PROM_PORT (log: $log_file)"
  (
    cd "$PROM_DIR"
    if [[ -n $LOCK_FD ]]; then exec {LOCK_FD}>&-; fi
    exec nohup setsid prometheus "--config.file=$PROM_DIR/prometheus.yml" \
      "--storage.tsdb.path=$PROM_DIR/data" "--web.listen-address=$HOST:$PROM_PORT" \
      --storage.tsdb.retention.time=1d --web.enable-lifecycle </dev/null >>"$log_file" 2>&1
  ) &
  pid=$!
  printf '%s\n' "$pid" >"$PROM_PIDFILE"
  until prometheus_ready; do
    pid_alive "$pid" || fail_with_log prometheus "prometheus exited during startup"
    ((SECONDS - start < READY_TIMEOUT)) || fail_with_log prometheus "not ready on $HOST:$PROM_PORT after ${READY_TIMEOUT}s"
    sleep 0.2
  done
  log "prometheus: running (pid $pid) on $HOST:$PROM_PORT (ready in $(since "$t0"))"
}

prometheus_up() {
  local pid
  install_prometheus
  pid=$(prometheus_pid)
  if [[ -n $pid ]] && prometheus_serving "$pid"; then
    # The rules may have changed: rewrite the config and reload.
    prometheus_config
    curl -fsS -X POST --max-time 10 "http://$HOST:$PROM_PORT/-/reload" >/dev/null ||
      die "prometheus: reloading the configuration failed (see $(logfile prometheus))"
  fi
  keep_or_start prometheus "$PROM_PORT" UDO_PROMETHEUS_PORT "$PROM_PIDFILE"
}

prometheus_down() {
  stop_pid "$(prometheus_pid)" prometheus
  rm -f "$PROM_PIDFILE"
}

prometheus_status() {
  local pid
  pid=$(prometheus_pid)
  print_status prometheus "$PROM_PORT" "$pid" prometheus_serving "$pid"
}

prometheus_env() {
  printf 'export PROMETHEUS_URL=%s\n' "http://$HOST:$PROM_PORT"
  printf 'export PROMETHEUS_TARGETS_DIR=%q\n' "$PROM_TARGETS"
}
