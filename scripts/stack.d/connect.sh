# Kafka Connect, one worker in distributed mode, on demand (sourced by
# scripts/stack; `scripts/stack connect up|down|status|env`). The runtime is
# the connect-runtime jar Kafka's own lib/ already holds; the plugins come
# from Maven Central, each in its own folder under the plugin path:
#   file/                     Kafka's FileStream connectors (connect-file)
#   avro-converter/           Apicurio's AvroConverter and its dependencies
#   debezium-connector-jdbc/  Debezium's JDBC sink (its -plugin.tar.gz)
# Keys are strings and values Avro through the stack's registry, which
# `connect up` starts too. Connector configs (connectors/*.json) take what
# differs between this stack and docker-compose from the worker's
# environment through `${env:NAME}` (EnvVarConfigProvider): UDO_CONNECT_*.

connect_ok() { [[ -f $CONNECT_PLUGINS/.complete ]]; }

install_connect() {
  connect_ok && return 0
  kafka_ok || install_kafka
  command -v mvn >/dev/null 2>&1 || die "connect: Maven is needed to fetch the Connect plugins (apt-get install maven)"
  local tmp t0 dz=io.debezium:debezium-connector-jdbc:$DEBEZIUM_VERSION:tar.gz:plugin
  t0=$(now_ms)
  mkdir -p "$TOOLS"
  rm -rf "$TOOLS"/.connect-install.*
  tmp=$(mktemp -d "$TOOLS/.connect-install.XXXXXX")
  log "connect: fetching connect-file $KAFKA_VERSION, Apicurio's converter $APICURIO_CONVERTER_VERSION and Debezium's JDBC sink $DEBEZIUM_VERSION from Maven Central (~45 MB; log: $tmp/mvn.log)"
  cp "$STACK_LIB/connect-pom.xml" "$tmp/pom.xml"
  local mvn=(mvn -B -q "-Dapicurio.converter.version=$APICURIO_CONVERTER_VERSION")
  if ! (cd "$tmp" &&
    "${mvn[@]}" "$MAVEN_DEPENDENCY_PLUGIN:copy" "-Dartifact=org.apache.kafka:connect-file:$KAFKA_VERSION" -DoutputDirectory=file &&
    "${mvn[@]}" "$MAVEN_DEPENDENCY_PLUGIN:copy-dependencies" -DincludeScope=runtime -DoutputDirectory=avro-converter &&
    "${mvn[@]}" "$MAVEN_DEPENDENCY_PLUGIN:copy" "-Dartifact=$dz" -DoutputDirectory=.) >"$tmp/mvn.log" 2>&1; then
    tail -n 30 "$tmp/mvn.log" >&2
    die "connect: fetching the plugins with Maven failed (log above)"
  fi
  tar -xzf "$tmp"/debezium-connector-jdbc-*-plugin.tar.gz -C "$tmp" && rm -f "$tmp"/*.tar.gz "$tmp/pom.xml"
  [[ -d $tmp/debezium-connector-jdbc ]] || die "connect: the Debezium archive has no debezium-connector-jdbc/"
  touch "$tmp/.complete"
  rm -rf "$CONNECT_PLUGINS"
  mv -T "$tmp" "$CONNECT_PLUGINS"
  log "connect: plugins installed in $(since "$t0")"
}

connect_pid() {
  local pid
  pid=$(read_pidfile "$CONNECT_PIDFILE")
  pid_is_ours "$pid" java "$CONNECT_DIR" && printf '%s' "$pid"
  return 0
}

connect_url() { printf 'http://%s:%s' "$HOST" "$CONNECT_PORT"; }

# Ready once the REST API lists the plugins (the herder has started).
connect_ready() {
  curl -fsS --max-time 3 "$(connect_url)/connector-plugins" 2>/dev/null | grep -q JdbcSinkConnector
}

connect_serving() { cmdline_has "$1" "$CONNECT_DIR/worker.properties" && connect_ready; }

connect_config() {
  mkdir -p "$CONNECT_DIR" "$CONNECT_OUT"
  cat >"$CONNECT_DIR/worker.properties" <<PROPS
# Written by scripts/stack (stack.d/connect.sh); edits are overwritten.
bootstrap.servers=$HOST:$KAFKA_PORT
group.id=udo-connect
config.storage.topic=_udo-connect-configs
offset.storage.topic=_udo-connect-offsets
status.storage.topic=_udo-connect-status
config.storage.replication.factor=1
offset.storage.replication.factor=1
status.storage.replication.factor=1
offset.storage.partitions=1
status.storage.partitions=1
offset.flush.interval.ms=1000
listeners=http://$HOST:$CONNECT_PORT
rest.advertised.host.name=$HOST
rest.advertised.port=$CONNECT_PORT
plugin.path=$CONNECT_PLUGINS
config.providers=env
config.providers.env.class=org.apache.kafka.common.config.provider.EnvVarConfigProvider
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=io.apicurio.registry.utils.converter.AvroConverter
value.converter.apicurio.registry.url=http://$HOST:$REG_PORT/apis/registry/v2
# udo-stream writes Confluent framing (0x00 + the 4-byte id its ccompat
# API gives, a content id): read that, never register.
value.converter.apicurio.registry.id-handler=io.apicurio.registry.serde.Legacy4ByteIdHandler
value.converter.apicurio.registry.use-id=contentId
value.converter.apicurio.registry.auto-register=false
PROPS
}

connect_start() {
  local log_file pid t0 start=$SECONDS
  t0=$(now_ms)
  log_file=$(logfile connect)
  connect_config
  log "connect: starting a worker on $HOST:$CONNECT_PORT (heap $CONNECT_HEAP; log: $log_file)"
  (
    cd "$CONNECT_DIR"
    if [[ -n $LOCK_FD ]]; then exec {LOCK_FD}>&-; fi
    export UDO_CONNECT_OUT_DIR=$CONNECT_OUT
    export UDO_CONNECT_JDBC_URL=jdbc:postgresql://$HOST:$PG_PORT/$PG_DB
    export UDO_CONNECT_JDBC_USER=$PG_USER UDO_CONNECT_JDBC_PASSWORD=$PG_PASSWORD
    exec nohup setsid java "-Xms$CONNECT_HEAP" "-Xmx$CONNECT_HEAP" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      "-Dlog4j2.configurationFile=$KAFKA_HOME/log4j2-broker.properties" -cp "$KAFKA_LIB/*" \
      org.apache.kafka.connect.cli.ConnectDistributed "$CONNECT_DIR/worker.properties" \
      </dev/null >>"$log_file" 2>&1
  ) &
  pid=$!
  printf '%s\n' "$pid" >"$CONNECT_PIDFILE"
  until connect_ready; do
    pid_alive "$pid" || fail_with_log connect "the worker exited during startup"
    ((SECONDS - start < READY_TIMEOUT)) || fail_with_log connect "not ready on $HOST:$CONNECT_PORT after ${READY_TIMEOUT}s"
    sleep 0.5
  done
  log "connect: running (pid $pid) on $HOST:$CONNECT_PORT (ready in $(since "$t0"))"
}

connect_up() {
  install_connect
  registry_up
  keep_or_start connect "$CONNECT_PORT" UDO_CONNECT_PORT "$CONNECT_PIDFILE"
}

connect_down() {
  stop_pid "$(connect_pid)" connect
  rm -f "$CONNECT_PIDFILE"
}

connect_status() {
  local pid
  pid=$(connect_pid)
  print_status connect "$CONNECT_PORT" "$pid" connect_serving "$pid"
}

connect_env() {
  printf 'export CONNECT_URL=%s\n' "$(connect_url)"
  printf 'export UDO_CONNECT_OUT_DIR=%s\n' "$CONNECT_OUT"
}
