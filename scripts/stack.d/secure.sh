# The secured set (sourced by scripts/stack), as a production cluster would
# be reached: Kafka over SASL_SSL with SCRAM, PostgreSQL over TLS through
# pgbouncer (the wheel's PostgreSQL is built without OpenSSL), Redis over TLS
# with an ACL user. A private CA and a server certificate for 127.0.0.1 and
# localhost are made here with openssl on first use; passwords are random,
# kept in $SECURE_DIR/secrets.env (mode 0600) and never printed but by `env`.

SECRETS_FILE=$SECURE_DIR/secrets.env
TLS_DIR=$SECURE_DIR/tls
PGBOUNCER_DIR=$SECURE_DIR/pgbouncer
REDIS_TLS_DIR=$SECURE_DIR/redis-tls

pgbouncer_ok() { command -v pgbouncer >/dev/null 2>&1; }

# A secret by name from the secrets file.
secret() { sed -n "s/^$1=//p" "$SECRETS_FILE"; }

secure_secrets() {
  [[ -s $SECRETS_FILE ]] && return 0
  mkdir -p "$SECURE_DIR"
  (
    umask 077
    for name in KAFKA_PASSWORD KAFKA_ADMIN_PASSWORD PG_PASSWORD REDIS_PASSWORD; do
      printf '%s=%s\n' "$name" "$(openssl rand -hex 16)"
    done >"$SECRETS_FILE.tmp"
    mv "$SECRETS_FILE.tmp" "$SECRETS_FILE"
  )
}

# CA, server key and certificate (SAN 127.0.0.1 and localhost), Kafka's PEM
# keystore (key + chain in one file).
secure_certs() {
  [[ -s $TLS_DIR/kafka-keystore.pem ]] && return 0
  command -v openssl >/dev/null 2>&1 || apt_install openssl openssl
  local tmp=$TLS_DIR.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp"
  log "secure: making a CA and a server certificate in $TLS_DIR"
  (
    cd "$tmp"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=udo-stream local CA" \
      -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
      -extfile server.ext -out server.pem 2>/dev/null
    cat server.key server.pem >kafka-keystore.pem
    chmod 0644 ca.pem server.pem
    rm -f server.csr server.ext ca.srl
  ) || die "secure: openssl could not make the certificates"
  rm -rf "$TLS_DIR"
  mv -T "$tmp" "$TLS_DIR"
}

# Client settings for Kafka's tools against the SASL_SSL node (the admin user).
secure_admin_client_config() {
  (
    umask 077
    cat >"$SECURE_DIR/admin-client.properties" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(secret KAFKA_ADMIN_PASSWORD)";
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
EOF
  )
}

# ---------------------------------------------------------------- pgbouncer

pgbouncer_pidfile() { printf '%s/pgbouncer.pid' "$PGBOUNCER_DIR"; }

pgbouncer_pid() {
  local pid
  pid=$(read_pidfile "$(pgbouncer_pidfile)")
  pid_alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == pgbouncer ]] && printf '%s' "$pid"
  return 0
}

pgbouncer_ping() {
  PGPASSWORD=$(secret PG_PASSWORD) PGSSLMODE=verify-full PGSSLROOTCERT=$TLS_DIR/ca.pem PGCONNECT_TIMEOUT=5 \
    psql_any -X -q -tA -h "$HOST" -p "$PGBOUNCER_PORT" -U "$PG_TLS_USER" -d "$PG_DB" -c 'SELECT 1' 2>/dev/null | grep -qx 1
}

# The wheel's psql is built without OpenSSL; Debian's client speaks TLS.
psql_any() { /usr/bin/psql "$@"; }

# The role pgbouncer logs in as, with its own random password (set through
# stdin, so it never appears in a process list).
pg_tls_role() {
  local pw
  pw=$(secret PG_PASSWORD)
  pg_sql postgres >/dev/null <<EOF
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_TLS_USER') THEN
    CREATE ROLE $PG_TLS_USER LOGIN SUPERUSER;
  END IF;
END \$\$;
ALTER ROLE $PG_TLS_USER PASSWORD '$pw';
EOF
}

pgbouncer_up() {
  pgbouncer_ok || apt_install pgbouncer pgbouncer
  [[ -x /usr/bin/psql ]] || apt_install psql postgresql-client
  local pid log_file
  pid=$(pgbouncer_pid)
  if [[ -n $pid ]] && pgbouncer_ping; then
    log "pgbouncer: running (pid $pid) on $HOST:$PGBOUNCER_PORT (TLS, in front of PostgreSQL)"
    return 0
  fi
  [[ -n $pid ]] && stop_pid "$pid" pgbouncer
  ensure_port_free pgbouncer "$PGBOUNCER_PORT" UDO_PGBOUNCER_PORT
  pg_tls_role
  log_file=$(logfile pgbouncer)
  mkdir -p "$PGBOUNCER_DIR"
  # pgbouncer refuses to run as root: it runs as PostgreSQL's OS user, who
  # gets its own copy of the key.
  (
    umask 077
    cp "$TLS_DIR/server.key" "$PGBOUNCER_DIR/server.key"
    printf '"%s" "%s"\n' "$PG_TLS_USER" "$(secret PG_PASSWORD)" >"$PGBOUNCER_DIR/userlist.txt"
    cat >"$PGBOUNCER_DIR/pgbouncer.ini" <<EOF
; Written by scripts/stack: TLS for clients, plain loopback to PostgreSQL.
[databases]
* = host=$HOST port=$PG_PORT

[pgbouncer]
listen_addr = $HOST
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
pool_mode = session
auth_type = scram-sha-256
auth_file = $PGBOUNCER_DIR/userlist.txt
max_client_conn = 400
default_pool_size = 100
ignore_startup_parameters = extra_float_digits,search_path
client_tls_sslmode = require
client_tls_key_file = $PGBOUNCER_DIR/server.key
client_tls_cert_file = $TLS_DIR/server.pem
client_tls_ca_file = $TLS_DIR/ca.pem
server_tls_sslmode = disable
logfile = $log_file
pidfile = $(pgbouncer_pidfile)
EOF
  )
  touch "$log_file"
  if is_root; then chown -R "$PG_OS_USER:" "$PGBOUNCER_DIR" "$log_file"; fi
  log "pgbouncer: starting on $HOST:$PGBOUNCER_PORT (TLS; log: $log_file)"
  without_lock as_pg pgbouncer -d -q "$PGBOUNCER_DIR/pgbouncer.ini" </dev/null >>"$log_file" 2>&1 ||
    fail_with_log pgbouncer "pgbouncer failed to start"
  local start=$SECONDS
  until pgbouncer_ping; do
    ((SECONDS - start < 30)) || fail_with_log pgbouncer "no TLS answer on $HOST:$PGBOUNCER_PORT after 30s"
    sleep 0.3
  done
  log "pgbouncer: running (pid $(pgbouncer_pid)) on $HOST:$PGBOUNCER_PORT"
}

pgbouncer_down() { stop_pid "$(pgbouncer_pid)" pgbouncer; }

# ---------------------------------------------------------------- redis over TLS

redis_tls_pidfile() { printf '%s/redis.pid' "$REDIS_TLS_DIR"; }

redis_tls_pid() {
  local pid
  pid=$(read_pidfile "$(redis_tls_pidfile)")
  pid_is_ours "$pid" redis-server "$REDIS_TLS_DIR" && printf '%s' "$pid"
  return 0
}

redis_tls_ping() {
  [[ $(REDISCLI_AUTH=$(secret REDIS_PASSWORD) timeout 3 redis-cli --tls --cacert "$TLS_DIR/ca.pem" \
    -h "$HOST" -p "$REDIS_TLS_PORT" --user udo ping 2>/dev/null) == PONG ]]
}

redis_tls_up() {
  local pid log_file
  pid=$(redis_tls_pid)
  if [[ -n $pid ]] && redis_tls_ping; then
    log "redis-tls: running (pid $pid) on $HOST:$REDIS_TLS_PORT"
    return 0
  fi
  [[ -n $pid ]] && stop_pid "$pid" redis-tls
  ensure_port_free redis-tls "$REDIS_TLS_PORT" UDO_REDIS_TLS_PORT
  log_file=$(logfile redis-tls)
  mkdir -p "$REDIS_TLS_DIR"
  # The ACL user's password lives in the config file (mode 0600), not on a
  # command line; the default user is off.
  (
    umask 077
    cat >"$REDIS_TLS_DIR/redis.conf" <<EOF
bind $HOST
port 0
tls-port $REDIS_TLS_PORT
tls-cert-file $TLS_DIR/server.pem
tls-key-file $TLS_DIR/server.key
tls-ca-cert-file $TLS_DIR/ca.pem
tls-auth-clients no
dir $REDIS_TLS_DIR
daemonize yes
pidfile $(redis_tls_pidfile)
logfile $log_file
save ""
appendonly no
user default off
user udo on >$(secret REDIS_PASSWORD) ~* &* +@all
EOF
  )
  log "redis-tls: starting on $HOST:$REDIS_TLS_PORT (TLS, ACL user udo; log: $log_file)"
  without_lock redis-server "$REDIS_TLS_DIR/redis.conf" </dev/null >>"$log_file" 2>&1 ||
    fail_with_log redis-tls "redis-server failed to start (is Debian's redis built with TLS?)"
  local start=$SECONDS
  until redis_tls_ping; do
    ((SECONDS - start < 30)) || fail_with_log redis-tls "no TLS answer on $HOST:$REDIS_TLS_PORT after 30s"
    sleep 0.2
  done
  log "redis-tls: running (pid $(redis_tls_pid)) on $HOST:$REDIS_TLS_PORT"
}

redis_tls_down() { stop_pid "$(redis_tls_pid)" redis-tls; }

# ---------------------------------------------------------------- commands

secure_up() {
  secure_secrets
  secure_certs
  secure_admin_client_config
  kafka_nodes_up kafka-secure
  pgbouncer_up
  redis_tls_up
}

secure_down() {
  kafka_node_down kafka-secure
  pgbouncer_down
  redis_tls_down
}

secure_status() {
  local rc=0
  kafka_node_status kafka-secure || rc=3
  print_status pgbouncer "$PGBOUNCER_PORT" "$(pgbouncer_pid)" pgbouncer_ping || rc=3
  print_status redis-tls "$REDIS_TLS_PORT" "$(redis_tls_pid)" redis_tls_ping || rc=3
  return "$rc"
}

# What udo-stream reads to use the secured set: `eval "$(scripts/stack secure env)"`.
# The Redis client verifies against OpenSSL's default trust store, which
# SSL_CERT_FILE points at the local CA.
secure_env() {
  [[ -s $SECRETS_FILE && -s $TLS_DIR/ca.pem ]] || die "the secured set was never started; run: scripts/stack secure up"
  local ca=$TLS_DIR/ca.pem
  printf 'export KAFKA_BROKERS=%q\n' "$HOST:$SECURE_KAFKA_PORT"
  printf 'export UDO__KAFKA__SECURITY_PROTOCOL=SASL_SSL\n'
  printf 'export UDO__KAFKA__SASL_MECHANISM=SCRAM-SHA-512\n'
  printf 'export UDO__KAFKA__SASL_USERNAME=udo\n'
  printf 'export UDO__KAFKA__SASL_PASSWORD=%q\n' "$(secret KAFKA_PASSWORD)"
  printf 'export UDO__KAFKA__SSL_CA_LOCATION=%q\n' "$ca"
  printf 'export DATABASE_URL=%q\n' "postgres://$PG_TLS_USER:$(secret PG_PASSWORD)@$HOST:$PGBOUNCER_PORT/$PG_DB?sslmode=verify-full&sslrootcert=$ca"
  printf 'export REDIS_URL=%q\n' "rediss://udo:$(secret REDIS_PASSWORD)@$HOST:$REDIS_TLS_PORT/0"
  printf 'export SSL_CERT_FILE=%q\n' "$ca"
}
