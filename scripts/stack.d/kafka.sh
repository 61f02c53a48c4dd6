# Apache Kafka (KRaft) from Maven Central jars (sourced by scripts/stack).
#
# Nodes, each a combined broker+controller with its own directory under
# $DATA/kafka/<node>, pid file, log and server.properties:
#   kafka              the default single node (PLAINTEXT)
#   kafka-1..kafka-3   the three-node cluster (static quorum, RF 3, min ISR 2)
#   kafka-secure       a single node with a SASL_SSL (SCRAM) listener only
# Readiness is a real Kafka API answer: Kafka's own BrokerApiVersionsCommand.

kafka_ok() { [[ -f $KAFKA_HOME/.complete ]]; }
java_ok() {
  command -v java >/dev/null 2>&1 &&
    (($(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p') >= 17))
}

# Kafka's jars into $KAFKA_HOME/lib through a throw-away POM (packaging pom,
# the broker plus kafka-tools plus the log4j binding), into a temporary
# directory renamed into place: an interrupted run never leaves a half
# install that looks complete.
install_kafka() {
  kafka_ok && return 0
  java_ok || die "kafka: Java 17 or newer is needed (apt-get install openjdk-17-jre-headless)"
  command -v mvn >/dev/null 2>&1 || die "kafka: Maven is needed to fetch Kafka from Maven Central (apt-get install maven)"
  local tmp t0
  t0=$(now_ms)
  mkdir -p "$TOOLS"
  rm -rf "$TOOLS"/.kafka-install.*
  tmp=$(mktemp -d "$TOOLS/.kafka-install.XXXXXX")
  cp "$STACK_LIB/kafka-pom.xml" "$tmp/pom.xml"
  cp "$STACK_LIB"/log4j2-*.properties "$tmp/"
  log "kafka: fetching Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_HOME (log: $tmp/mvn.log)"
  if ! (cd "$tmp" && mvn -B -q "-Dkafka.version=$KAFKA_VERSION" "-Dlog4j.version=$LOG4J_VERSION" \
    "$MAVEN_DEPENDENCY_PLUGIN:copy-dependencies" -DoutputDirectory=lib) >"$tmp/mvn.log" 2>&1; then
    tail -n 30 "$tmp/mvn.log" >&2
    die "kafka: fetching the jars with Maven failed (log above)"
  fi
  [[ -f $tmp/lib/kafka_2.13-$KAFKA_VERSION.jar ]] || die "kafka: Maven did not bring kafka_2.13-$KAFKA_VERSION.jar"
  touch "$tmp/.complete"
  rm -rf "$KAFKA_HOME"
  mv -T "$tmp" "$KAFKA_HOME"
  log "kafka: installed $(find "$KAFKA_LIB" -name '*.jar' | wc -l) jars in $(since "$t0")"
}

# A Kafka command-line tool by class name: small heap, quick JIT, warnings only.
kafka_tool_java() {
  printf '%s\n' java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
    "-Dlog4j2.configurationFile=$KAFKA_HOME/log4j2-tools.properties" -cp "$KAFKA_LIB/*"
}
kafka_java_tool() {
  local java
  mapfile -t java < <(kafka_tool_java)
  "${java[@]}" "$@"
}

# Kafka's CLI tools by the names of the distribution's bin/kafka-*.sh scripts.
kafka_tool_class() {
  case $1 in
  topics) echo org.apache.kafka.tools.TopicCommand ;;
  consumer-groups) echo org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
  console-consumer) echo org.apache.kafka.tools.consumer.ConsoleConsumer ;;
  console-producer) echo org.apache.kafka.tools.ConsoleProducer ;;
  producer-perf-test) echo org.apache.kafka.tools.ProducerPerformance ;;
  consumer-perf-test) echo org.apache.kafka.tools.ConsumerPerformance ;;
  transactions) echo org.apache.kafka.tools.TransactionsCommand ;;
  broker-api-versions) echo org.apache.kafka.tools.BrokerApiVersionsCommand ;;
  get-offsets) echo org.apache.kafka.tools.GetOffsetShell ;;
  metadata-quorum) echo org.apache.kafka.tools.MetadataQuorumCommand ;;
  configs) echo kafka.admin.ConfigCommand ;;
  storage) echo kafka.tools.StorageTool ;;
  *) return 1 ;;
  esac
}
KAFKA_TOOLS="topics consumer-groups console-consumer console-producer producer-perf-test consumer-perf-test transactions broker-api-versions get-offsets metadata-quorum configs storage"

# ---------------------------------------------------------------- nodes

node_dir() { printf '%s/kafka/%s' "$DATA" "$1"; }
node_pidfile() { printf '%s/run/%s.pid' "$DATA" "$1"; }
node_id() { case $1 in kafka-[123]) printf '%s' "${1#kafka-}" ;; *) printf 1 ;; esac }
# A node's ports and the variables that move them:
# "port controller-port port-variable controller-port-variable".
node_spec() {
  local i
  case $1 in
  kafka) echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT UDO_KAFKA_PORT UDO_KAFKA_CONTROLLER_PORT" ;;
  kafka-[123])
    i=${1#kafka-}
    echo "$((CLUSTER_PORT + i - 1)) $((CLUSTER_CONTROLLER_PORT + i - 1)) UDO_CLUSTER_PORT UDO_CLUSTER_CONTROLLER_PORT"
    ;;
  # The secured node's controller listens on the port after its own.
  kafka-secure) echo "$SECURE_KAFKA_PORT $((SECURE_KAFKA_PORT + 1)) UDO_SECURE_KAFKA_PORT UDO_SECURE_KAFKA_PORT" ;;
  esac
}
node_field() {
  local spec
  read -ra spec <<<"$(node_spec "$1")"
  printf '%s' "${spec[$2]}"
}
node_port() { node_field "$1" 0; }
node_controller_port() { node_field "$1" 1; }
node_port_var() { node_field "$1" 2; }
node_controller_port_var() { node_field "$1" 3; }
# Nodes of one cluster share its id, made once.
node_cluster() { case $1 in kafka-[123]) printf cluster ;; kafka-secure) printf secure ;; *) printf single ;; esac }
node_heap() { case $1 in kafka-[123]) printf '%s' "$CLUSTER_HEAP" ;; *) printf '%s' "$KAFKA_HEAP" ;; esac }
# Client settings of Kafka's tools against the node (empty: PLAINTEXT).
node_client_config() { [[ $1 == kafka-secure ]] && printf '%s/admin-client.properties' "$SECURE_DIR"; return 0; }

kafka_pid() {
  local node=${1:-kafka} pid
  pid=$(read_pidfile "$(node_pidfile "$node")")
  pid_is_ours "$pid" java "$(node_dir "$node")" && printf '%s' "$pid"
  return 0
}

# server.properties of a node. One node must override the defaults that
# assume three (replication of the internal topics, their min ISR).
node_properties() {
  local node=$1 id port cport dir i voters=''
  id=$(node_id "$node")
  port=$(node_port "$node")
  cport=$(node_controller_port "$node")
  dir=$(node_dir "$node")
  cat <<EOF
# Written by scripts/stack on every start; edit the script, not this file.
process.roles=broker,controller
node.id=$id
controller.listener.names=CONTROLLER
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1
num.network.threads=2
num.io.threads=4
EOF
  case $node in
  kafka)
    cat <<EOF
listeners=PLAINTEXT://$HOST:$port,CONTROLLER://$HOST:$cport
advertised.listeners=PLAINTEXT://$HOST:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.quorum.bootstrap.servers=$HOST:$cport
EOF
    single_node_replication
    ;;
  kafka-[123])
    for i in 1 2 3; do voters+="${voters:+,}$i@$HOST:$((CLUSTER_CONTROLLER_PORT + i - 1))"; done
    cat <<EOF
listeners=PLAINTEXT://$HOST:$port,CONTROLLER://$HOST:$cport
advertised.listeners=PLAINTEXT://$HOST:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.quorum.voters=$voters
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
EOF
    ;;
  kafka-secure)
    # Clients and the broker itself (inter-broker) authenticate with SCRAM
    # over TLS; only the controller listener is plain, and only on loopback.
    cat <<EOF
listeners=SASL_SSL://$HOST:$port,CONTROLLER://$HOST:$cport
advertised.listeners=SASL_SSL://$HOST:$port
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
controller.quorum.bootstrap.servers=$HOST:$cport
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(secret KAFKA_ADMIN_PASSWORD)";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=$SECURE_DIR/tls/kafka-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$SECURE_DIR/tls/ca.pem
ssl.client.auth=none
EOF
    single_node_replication
    ;;
  esac
}

single_node_replication() {
  cat <<'EOF'
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
EOF
}

# Writes server.properties and formats the node's storage once (KRaft never
# formats by itself). A single node bootstraps its own quorum (--standalone);
# the cluster's static voter list is formatted without a quorum flag.
node_prepare() {
  local node=$1 dir id_file cluster_id
  dir=$(node_dir "$node")
  mkdir -p "$dir/data" "$DATA/kafka"
  (umask 077 && node_properties "$node" >"$dir/server.properties")
  [[ -f $dir/data/meta.properties ]] && return 0
  id_file=$DATA/kafka/$(node_cluster "$node").cluster-id
  [[ -s $id_file ]] || kafka_java_tool kafka.tools.StorageTool random-uuid >"$id_file"
  cluster_id=$(<"$id_file")
  local args=(format -t "$cluster_id" -c "$dir/server.properties")
  case $node in
  kafka) args+=(--standalone) ;;
  kafka-secure)
    # SCRAM credentials exist before the first start (the broker's own
    # inter-broker login needs them). Given on the command line of one
    # short-lived local process; never printed.
    args+=(--standalone
      --add-scram "SCRAM-SHA-512=[name=admin,password=$(secret KAFKA_ADMIN_PASSWORD)]"
      --add-scram "SCRAM-SHA-512=[name=udo,password=$(secret KAFKA_PASSWORD)]"
      --add-scram "SCRAM-SHA-256=[name=udo,password=$(secret KAFKA_PASSWORD)]")
    ;;
  esac
  log "$node: formatting $dir/data (cluster id $cluster_id)"
  kafka_java_tool kafka.tools.StorageTool "${args[@]}" >>"$(logfile "$node")" 2>&1 ||
    fail_with_log "$node" "formatting the storage failed"
}

# Start the JVM in the background (setsid + redirected fds: it outlives this
# shell and never holds the caller's stdout).
node_launch() {
  local node=$1 dir log_file heap pid
  dir=$(node_dir "$node")
  log_file=$(logfile "$node")
  heap=$(node_heap "$node")
  ensure_port_free "$node" "$(node_port "$node")" "$(node_port_var "$node")"
  ensure_port_free "$node controller" "$(node_controller_port "$node")" "$(node_controller_port_var "$node")"
  node_prepare "$node"
  printf '%s' "$(stat -c %s "$log_file" 2>/dev/null || echo 0)" >"$dir/.log-offset"
  log "$node: starting Apache Kafka $KAFKA_VERSION on $HOST:$(node_port "$node") (heap $heap; log: $log_file)"
  (
    cd "$dir"
    if [[ -n $LOCK_FD ]]; then exec {LOCK_FD}>&-; fi
    exec nohup setsid java "-Xms$heap" "-Xmx$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      "-Dlog4j2.configurationFile=$KAFKA_HOME/log4j2-broker.properties" -cp "$KAFKA_LIB/*" \
      kafka.Kafka server.properties </dev/null >>"$log_file" 2>&1
  ) &
  pid=$!
  printf '%s\n' "$pid" >"$(node_pidfile "$node")"
}

# The node answers ApiVersions as a registered broker (Kafka's own tool).
kafka_answers() {
  local node=$1 port args
  port=$(node_port "$node")
  args=(--bootstrap-server "$HOST:$port")
  [[ -n $(node_client_config "$node") ]] && args+=(--command-config "$(node_client_config "$node")")
  local java
  mapfile -t java < <(kafka_tool_java)
  grep -q "^$HOST:$port (id: $(node_id "$node") " \
    < <(timeout 30 "${java[@]}" org.apache.kafka.tools.BrokerApiVersionsCommand "${args[@]}" 2>/dev/null)
}

# Wait until a node serves: first its log's startup line (cheap to poll),
# then an ApiVersions answer. Fails with the log's tail.
node_wait() {
  local node=$1 start=$SECONDS pid log_file offset=0 t0
  t0=$(now_ms)
  log_file=$(logfile "$node")
  [[ -f $(node_dir "$node")/.log-offset ]] && offset=$(<"$(node_dir "$node")/.log-offset")
  pid=$(read_pidfile "$(node_pidfile "$node")")
  # Loading (or, after a crash, recovering) thousands of partitions takes
  # minutes; a node still loading says so in its log.
  # Not `tail | grep -q`: under pipefail, grep quitting at the match makes a
  # long tail die of SIGPIPE and the pipeline fail (a large log never matched).
  until grep -q 'Kafka Server started' < <(tail -c +$((offset + 1)) "$log_file" 2>/dev/null); do
    pid_alive "$pid" || fail_with_log "$node" "the broker exited during startup"
    ((SECONDS - start < KAFKA_START_TIMEOUT)) || fail_with_log "$node" "not started after ${KAFKA_START_TIMEOUT}s (UDO_KAFKA_START_TIMEOUT)"
    sleep 0.3
  done
  until kafka_answers "$node"; do
    pid_alive "$pid" || fail_with_log "$node" "the broker exited right after startup"
    ((SECONDS - start < READY_TIMEOUT)) || fail_with_log "$node" "no ApiVersions answer on $HOST:$(node_port "$node") after ${READY_TIMEOUT}s"
    sleep 1
  done
  log "$node: running (pid $pid) on $HOST:$(node_port "$node") (ready in $(since "$t0"))"
}

# Bring nodes up together (a cluster elects its controller only once two of
# three run): launch every dead one, then wait for each. A running node that
# stopped answering is restarted.
kafka_nodes_up() {
  local node pid launched=()
  for node in "$@"; do
    pid=$(kafka_pid "$node")
    if [[ -n $pid ]]; then
      if kafka_answers "$node"; then
        log "$node: running (pid $pid) on $HOST:$(node_port "$node")"
        continue
      fi
      # A cluster node waits for its peers: only restart a single node.
      if [[ $node != kafka-[123] ]]; then
        log "$node: pid $pid does not answer on $HOST:$(node_port "$node"); restarting it"
        stop_pid "$pid" "$node"
      else
        launched+=("$node")
        continue
      fi
    elif [[ -s $(node_pidfile "$node") ]]; then
      log "$node: not running (stale pid file); starting it"
    fi
    rm -f "$(node_pidfile "$node")"
    node_launch "$node"
    launched+=("$node")
  done
  for node in "${launched[@]}"; do node_wait "$node"; done
}

# A controlled shutdown flushes and closes every partition's log; with
# thousands of partitions that takes a while, and a SIGKILL instead would
# make the next start recover every log.
kafka_node_down() {
  stop_pid "$(kafka_pid "$1")" "$1" 120
  rm -f "$(node_pidfile "$1")"
}

# kill -9, for broker-failure drills.
kafka_node_kill() {
  local pid
  pid=$(kafka_pid "$1")
  if [[ -n $pid ]]; then
    log "$1: kill -9 pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
    while pid_alive "$pid"; do sleep 0.1; done
  fi
  rm -f "$(node_pidfile "$1")"
}

kafka_node_status() {
  local pid
  pid=$(kafka_pid "$1")
  print_status "$1" "$(node_port "$1")" "$pid" kafka_answers "$1"
}

cluster_brokers() { printf '%s:%s,%s:%s,%s:%s' "$HOST" "$CLUSTER_PORT" "$HOST" $((CLUSTER_PORT + 1)) "$HOST" $((CLUSTER_PORT + 2)); }
