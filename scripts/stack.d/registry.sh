# Apicurio Registry 3.x, a Confluent-compatible schema registry (its
# /apis/ccompat/v7 API), on demand (sourced by scripts/stack;
# `scripts/stack registry up|down|status|env`). From Maven Central: the
# runnable Quarkus layout (`apicurio-registry-app:<v>:tar.gz:all`), cached
# per version; in-memory storage (nothing to configure; a restart forgets
# the subjects). It needs Java 21 or newer: the first such `java` on PATH or
# under /usr/lib/jvm, or UDO_REGISTRY_JAVA.

registry_ok() { [[ -f $REG_HOME/.complete ]]; }

install_registry() {
  registry_ok && return 0
  command -v mvn >/dev/null 2>&1 || die "registry: Maven is needed to fetch Apicurio Registry (apt-get install maven)"
  local tmp t0
  t0=$(now_ms)
  mkdir -p "$TOOLS"
  rm -rf "$TOOLS"/.registry-install.*
  tmp=$(mktemp -d "$TOOLS/.registry-install.XXXXXX")
  log "registry: fetching Apicurio Registry $APICURIO_VERSION from Maven Central (~160 MB; log: $tmp/mvn.log)"
  if ! (cd "$tmp" && mvn -B -q "$MAVEN_DEPENDENCY_PLUGIN:copy" \
    "-Dartifact=io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all" -DoutputDirectory=.) >"$tmp/mvn.log" 2>&1; then
    tail -n 30 "$tmp/mvn.log" >&2
    die "registry: fetching Apicurio Registry with Maven failed (log above)"
  fi
  tar -xzf "$tmp/apicurio-registry-app-$APICURIO_VERSION-all.tar.gz" -C "$tmp" && rm -f "$tmp"/*.tar.gz
  [[ -f $tmp/quarkus-run.jar ]] || die "registry: the archive has no quarkus-run.jar"
  touch "$tmp/.complete"
  rm -rf "$REG_HOME"
  mv -T "$tmp" "$REG_HOME"
  log "registry: installed in $(since "$t0")"
}

# A java of version 21 or newer.
registry_java() {
  local j v
  for j in ${UDO_REGISTRY_JAVA:-} "$(command -v java 2>/dev/null)" /usr/lib/jvm/*/bin/java; do
    [[ -n $j && -x $j ]] || continue
    v=$("$j" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
    [[ $v =~ ^[0-9]+$ ]] && ((v >= 21)) && { printf '%s' "$j"; return 0; }
  done
  die "registry: Apicurio Registry $APICURIO_VERSION needs Java 21 or newer (found none; apt-get install openjdk-21-jre-headless, or set UDO_REGISTRY_JAVA)"
}

registry_pid() {
  local pid
  pid=$(read_pidfile "$REG_PIDFILE")
  pid_is_ours "$pid" java "$REG_DIR" && printf '%s' "$pid"
  return 0
}

registry_ready() { curl -fsS -o /dev/null --max-time 3 "http://$HOST:$REG_PORT/apis/ccompat/v7/subjects" 2>/dev/null; }

registry_serving() { cmdline_has "$1" "-Dquarkus.http.port=$REG_PORT" && registry_ready; }

registry_start() {
  local log_file pid t0 java start=$SECONDS
  t0=$(now_ms)
  java=$(registry_java)
  log_file=$(logfile registry)
  mkdir -p "$REG_DIR"
  log "registry: starting Apicurio Registry $APICURIO_VERSION on $HOST:$REG_PORT (heap $REG_HEAP; log: $log_file)"
  (
    cd "$REG_DIR"
    if [[ -n $LOCK_FD ]]; then exec {LOCK_FD}>&-; fi
    exec nohup setsid "$java" "-Xms$REG_HEAP" "-Xmx$REG_HEAP" -XX:TieredStopAtLevel=1 \
      "-Dquarkus.http.host=$HOST" "-Dquarkus.http.port=$REG_PORT" -jar "$REG_HOME/quarkus-run.jar" \
      </dev/null >>"$log_file" 2>&1
  ) &
  pid=$!
  printf '%s\n' "$pid" >"$REG_PIDFILE"
  until registry_ready; do
    pid_alive "$pid" || fail_with_log registry "the registry exited during startup"
    ((SECONDS - start < READY_TIMEOUT)) || fail_with_log registry "not ready on $HOST:$REG_PORT after ${READY_TIMEOUT}s"
    sleep 0.3
  done
  log "registry: running (pid $pid) on $HOST:$REG_PORT (ready in $(since "$t0"))"
}

registry_up() {
  install_registry
  keep_or_start registry "$REG_PORT" UDO_REGISTRY_PORT "$REG_PIDFILE"
}

registry_down() {
  stop_pid "$(registry_pid)" registry
  rm -f "$REG_PIDFILE"
}

registry_status() {
  local pid
  pid=$(registry_pid)
  print_status registry "$REG_PORT" "$pid" registry_serving "$pid"
}

registry_env() { printf 'export SCHEMA_REGISTRY_URL=%s\n' "http://$HOST:$REG_PORT/apis/ccompat/v7"; }
