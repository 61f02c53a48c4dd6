# Shared helpers of scripts/stack: logging, processes, ports (sourced).

log() { printf '%s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}
now_ms() { date +%s%3N; }
since() { # seconds since a now_ms value, e.g. 1.234s
  local ms=$(($(now_ms) - $1))
  printf '%d.%03ds' $((ms / 1000)) $((ms % 1000))
}
logfile() { printf '%s/logs/%s.log' "$DATA" "$1"; }

# Print the tail of a service's log and fail.
fail_with_log() {
  local svc=$1 msg=$2 file
  file=$(logfile "$svc")
  log "error: $svc: $msg"
  if [[ -s $file ]]; then
    log "---- last 30 lines of $file ----"
    tail -n 30 "$file" >&2
    log "----"
  fi
  exit 1
}

# ---------------------------------------------------------------- processes

# Zombies count as dead: a killed server whose parent is gone may linger
# unreaped for a while.
pid_alive() {
  local stat
  [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null || return 1
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) } # the state letter follows the command name
  [[ ${stat:0:1} != Z ]]
}

read_pidfile() {
  [[ -f $1 ]] || return 0
  head -n 1 "$1" | tr -dc '0-9'
}

# A pid from a pid file counts as ours only if it is alive, is the expected
# program and runs in our directory: guards against recycled pids and other
# instances of the same program.
pid_is_ours() {
  local pid=$1 comm=$2 dir=$3
  pid_alive "$pid" &&
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm"* ]] &&
    [[ $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$dir" ]]
}

# True if one argument of the process (or its title) ends with $2, e.g.
# "127.0.0.1:1637" must not match a process on port 16379.
cmdline_has() {
  local cmd
  cmd=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ "$cmd " == *"$2 "* ]]
}

# Keeps a pid-file service that serves, or (re)starts it: SVC names its
# SVC_pid, SVC_serving PID and SVC_start functions.
#   keep_or_start SVC PORT PORT_VARIABLE PIDFILE
keep_or_start() {
  local svc=$1 port=$2 port_var=$3 pidfile=$4 pid
  pid=$("${svc}_pid")
  if [[ -n $pid ]] && "${svc}_serving" "$pid"; then
    log "$svc: running (pid $pid) on $HOST:$port"
    return 0
  fi
  if [[ -n $pid ]]; then
    log "$svc: pid $pid does not answer on $HOST:$port; restarting it"
    stop_pid "$pid" "$svc"
  elif [[ -s $pidfile ]]; then
    log "$svc: not running (stale pid file); starting it"
  fi
  rm -f "$pidfile"
  ensure_port_free "$svc" "$port" "$port_var"
  "${svc}_start"
}

# SIGTERM, wait (15 s, or $3 seconds), then SIGKILL.
stop_pid() {
  local pid=$1 svc=$2 grace=${3:-15} i
  pid_alive "$pid" || return 0
  log "$svc: stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  kill -CONT "$pid" 2>/dev/null || true # a stopped process acts on TERM only once resumed
  for ((i = 0; i < grace * 10; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
  log "$svc: pid $pid ignored SIGTERM for ${grace}s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
}

# ---------------------------------------------------------------- ports

# shellcheck disable=SC2016 # $0/$1 expand in the inner shell
port_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null; }

# "name (pid N)" of the process listening on a port, from ss or else /proc.
port_holder() {
  local users='' inode fd pid
  if command -v ss >/dev/null 2>&1; then
    users=$(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'users:(("[^"]*",pid=[0-9]*' | head -n 1 || true)
  fi
  if [[ $users =~ \"([^\"]*)\",pid=([0-9]+) ]]; then
    printf '%s (pid %s)' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
    return 0
  fi
  # Listening socket (state 0A) on the port -> its inode -> the fd naming it.
  inode=$(awk -v p="$(printf ':%04X' "$1")" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10; exit }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null || true)
  if [[ -n $inode && $inode != 0 ]]; then
    fd=$(find /proc/[0-9]*/fd -maxdepth 1 -lname "socket:\\[$inode\\]" 2>/dev/null | head -n 1 || true)
    pid=${fd#/proc/}
    pid=${pid%%/*}
    if [[ -n $pid ]]; then
      printf '%s (pid %s)' "$(cat "/proc/$pid/comm" 2>/dev/null)" "$pid"
      return 0
    fi
  fi
  printf 'an unknown process'
}

# Called when our own instance is not running: anything answering on the
# port belongs to someone else, and we must not start a second server there.
ensure_port_free() {
  local svc=$1 port=$2 var=$3
  port_open "$port" || return 0
  log "error: $svc: port $HOST:$port is already in use by $(port_holder "$port"), not by this stack's $svc."
  log "       Stop that process or choose another port, e.g. $var=$((port + 100)) scripts/stack up"
  exit 1
}

# One status line; the rest of the arguments is the "answers" check.
print_status() {
  local svc=$1 port=$2 pid=$3
  shift 3
  if [[ -n $pid ]] && "$@"; then
    log "$svc: running (pid $pid) on $HOST:$port"
    return 0
  fi
  if [[ -n $pid ]]; then
    log "$svc: not answering (pid $pid) on $HOST:$port"
  elif port_open "$port"; then
    log "$svc: stopped (port $port is held by $(port_holder "$port"))"
  else
    log "$svc: stopped (port $port)"
  fi
  return 1
}

# One `up`/`down` at a time per data directory, and per scope: the
# three-node cluster ("cluster") has its own, so a kill -9 drill on a node
# never waits a minute behind another run starting Connect or the registry.
# The servers we start must not inherit this descriptor, or they would hold
# the lock for their lifetime.
LOCK_FD=
lock_data() {
  local scope=${1:-}
  mkdir -p "$DATA"
  exec {LOCK_FD}>"$DATA/.lock${scope:+-$scope}"
  if ! flock -n "$LOCK_FD"; then
    log "waiting for another scripts/stack run on $DATA${scope:+ ($scope)}..."
    flock "$LOCK_FD"
  fi
}

# The lock scope of one service (see lock_data).
lock_scope() {
  case $1 in
  kafka-[123]) echo cluster ;;
  esac
}

# Run a command without the lock descriptor.
without_lock() {
  if [[ -n $LOCK_FD ]]; then
    "$@" {LOCK_FD}>&-
  else
    "$@"
  fi
}

is_root() { [[ $EUID -eq 0 ]]; }

# Installs from Debian's packages (as root), logged to the tools cache.
apt_install() {
  local what=$1 apt_log=$TOOLS/apt-$1.log
  shift
  is_root || die "$what: not installed; run: sudo apt-get install -y $*"
  mkdir -p "$TOOLS"
  log "$what: installing Debian's $* with apt-get (log: $apt_log)"
  if ! {
    DEBIAN_FRONTEND=noninteractive apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
  } </dev/null >"$apt_log" 2>&1; then
    tail -n 30 "$apt_log" >&2
    die "$what: apt-get install $* failed"
  fi
}

# Debian packages the build and the interop tests need: OpenSSL headers and
# pkg-config (librdkafka's TLS/SASL, sqlx and redis TLS), zlib headers,
# kcat (a third-party Kafka client the tests use), and jq and curl (the
# demo reads `status --json` and the metrics with them).
BUILD_DEPS=(libssl-dev pkg-config zlib1g-dev libzstd-dev kcat jq curl)

build_deps_ok() {
  local installed
  installed=$(dpkg-query -W -f='${db:Status-Status}\n' "${BUILD_DEPS[@]}" 2>/dev/null | grep -c '^installed$' || true)
  ((installed == ${#BUILD_DEPS[@]}))
}

install_build_deps() {
  build_deps_ok && return 0
  apt_install build-deps "${BUILD_DEPS[@]}"
  build_deps_ok || die "build-deps: ${BUILD_DEPS[*]} still missing after apt-get install"
}
