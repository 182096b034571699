# Shared by the scripts under e2e/: where things are cached and kept.
# shellcheck shell=bash

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_DIR=$(cd "$E2E_DIR/.." && pwd)
TENANTGATE_CACHE=${TENANTGATE_CACHE:-$HOME/.cache/tenantgate}
# Runtime state of the services and control plane started from this checkout.
# The default is keyed by the checkout path so two checkouts never share it.
TENANTGATE_RUN=${TENANTGATE_RUN:-$TENANTGATE_CACHE/run/$(printf '%s' "$REPO_DIR" | sha256sum | cut -c1-12)}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# free_port prints a TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
  python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

# apt_install PACKAGE...: installs Debian packages (after apt-get update).
apt_install() {
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  # Debian's packages start their own servers where an init system runs; ours
  # do not use them (here nothing starts them: no systemd).
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# node_image NAME: the reference of an image that e2e/cluster/node-images
# builds for the real nodes (pause, coredns, metrics-server, busybox).
node_image() { echo "tenantgate.local/$1:e2e"; }

# wait_for DESCRIPTION TIMEOUT_S COMMAND...: retries COMMAND until it succeeds.
wait_for() {
  local what=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

# stop_pidfile FILE: stops the process whose PID FILE holds (TERM, then KILL).
stop_pidfile() {
  local file=$1 pid
  [[ -f $file ]] || return 0
  pid=$(cat "$file")
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

# ---------------------------------------------------------------------------
# Processes started by e2e/cluster/up and e2e/services/up.
# Every such process runs with its working directory (or an argument) under
# $TENANTGATE_RUN, which is how pid files are checked before a signal is sent:
# a stale pid file whose PID now belongs to someone else is only removed.

# reserve_port prints a free TCP port on 127.0.0.1 that no other run of these
# scripts on this machine picked in the last 10 minutes (between picking a port
# and binding it, a concurrent run could otherwise be handed the same one).
reserve_port() {
  local dir=${TMPDIR:-/tmp}/tenantgate-ports port
  mkdir -p "$dir"
  find "$dir" -mindepth 1 -maxdepth 1 -mmin +10 -exec rmdir {} + 2>/dev/null || true
  for _ in $(seq 1 50); do
    port=$(free_port)
    if mkdir "$dir/$port" 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  die "could not reserve a free port"
}

# run_lock NAME: the path of a lock file for NAME (cluster, services) of
# $TENANTGATE_RUN. It lives outside $TENANTGATE_RUN, so down can remove that.
run_lock() {
  local dir=${TMPDIR:-/tmp}/tenantgate-locks
  mkdir -p "$dir"
  echo "$dir/$(printf '%s' "$TENANTGATE_RUN" | sha256sum | cut -c1-16).$1.lock"
}

# pid_running PID: the process exists and has not exited. (An exited child of
# a script that has itself exited stays a zombie until PID 1 reaps it, which
# here can take seconds; kill -0 still succeeds on it.)
pid_running() {
  local state
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $state && $state != Z && $state != X ]]
}

# pid_is_ours PID: the process runs and its working directory or command line
# lies under $TENANTGATE_RUN.
pid_is_ours() {
  local pid=$1 cwd
  pid_running "$pid" || return 1
  cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null || true)
  [[ $cwd == "$TENANTGATE_RUN" || $cwd == "$TENANTGATE_RUN"/* ]] && return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$TENANTGATE_RUN"
}

# pidfile_alive FILE: FILE names a running process of ours.
pidfile_alive() { [[ -f $1 ]] && pid_is_ours "$(cat "$1")"; }

# stop_our_pidfile FILE [SIGNAL]: like stop_pidfile, but only signals the
# process if it is ours (see pid_is_ours), so a stale pid file whose PID was
# reused is just removed. Sends SIGNAL (default TERM), waits up to 10 s for the
# process to exit, then sends KILL.
stop_our_pidfile() {
  local file=$1 sig=${2:-TERM} pid
  [[ -f $file ]] || return 0
  pid=$(cat "$file")
  if pid_is_ours "$pid"; then
    kill -"$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      pid_running "$pid" || break
      sleep 0.1
    done
    if pid_running "$pid"; then
      log "pid $pid ($file) did not exit after SIG$sig; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do
        pid_running "$pid" || break
        sleep 0.1
      done
    fi
  fi
  rm -f "$file"
}

# start_bg DIR LOG PIDFILE COMMAND...: starts COMMAND (a full path) in its own
# session, in directory DIR, with output to LOG, and writes its PID to PIDFILE.
# It holds none of the caller's file descriptors, so $(...) around a caller
# returns, and a signal to the caller's process group does not reach it.
start_bg() {
  local dir=$1 logf=$2 pidf=$3; shift 3
  (
    cd "$dir" || exit 1
    # setsid forks when its caller leads a process group (as a background job
    # does when job control is on); such a job has its own group already.
    read -r -a stat <"/proc/$BASHPID/stat"
    if [[ ${stat[4]} == "$BASHPID" ]]; then
      exec "$@" </dev/null >>"$logf" 2>&1 9>&- 8>&-
    fi
    exec setsid "$@" </dev/null >>"$logf" 2>&1 9>&- 8>&-
  ) &
  echo $! >"$pidf"
}

# run_logged LOG COMMAND...: runs COMMAND with its stdout and stderr both on
# stdout and copied to LOG, and returns its exit status.
run_logged() {
  local file=$1
  shift
  mkdir -p "$(dirname "$file")"
  "$@" 2>&1 | tee "$file"
}

# command_tail LOG RC WHAT: after a failed run_logged (RC not 0), the last
# lines of its LOG again on stderr, for a wrapper to print after its
# components' logs: the reason then ends the output, where a CI log's tail
# shows it. Removes LOG either way.
command_tail() {
  if (($2 != 0)) && [[ -s $1 ]]; then
    printf '\n===== the last lines of: %s (exit %s) =====\n' "$3" "$2" >&2
    tail -n 30 "$1" >&2
  fi
  rm -f "$1"
}

# tail_log FILE: the last 30 lines of a component's log, on stderr.
tail_log() {
  [[ -f $1 ]] || return 0
  log "last 30 lines of $1:"
  tail -n 30 "$1" >&2
}

# ---------------------------------------------------------------------------
# PostgreSQL and Redis of e2e/services/up. Their ports are kept in
# $TENANTGATE_RUN/services/{postgres,redis}.port, so fault-injection tests can
# stop and restart them on the same address:
#   source e2e/lib/common.sh
#   services_stop_postgres KILL; ...; services_start_postgres
#   services_stop_redis;         ...; services_start_redis

SERVICES_DIR=$TENANTGATE_RUN/services

services_pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [[ -n $d && -x $d/postgres ]] || return 1
  echo "$d"
}

# services_as_postgres COMMAND...: runs COMMAND as the postgres user (postgres
# refuses to run as root). When $TENANTGATE_RUN lies below a directory that
# user may not enter (such as /root), the command keeps CAP_DAC_READ_SEARCH so
# it can reach its data directory; nothing else is loosened.
services_as_postgres() {
  local cmd
  mapfile -t cmd < <(services_as_postgres_argv)
  "${cmd[@]}" "$@"
}
# services_as_postgres_argv: the setpriv command line of services_as_postgres, one word a line.
services_as_postgres_argv() {
  printf '%s\n' /usr/bin/setpriv --reuid postgres --regid postgres --init-groups
  /usr/bin/setpriv --reuid postgres --regid postgres --init-groups -- test -x "$SERVICES_DIR" 2>/dev/null ||
    printf '%s\n' --inh-caps +dac_read_search --ambient-caps +dac_read_search
  echo --
}

services_postgres_port() { cat "$SERVICES_DIR/postgres.port"; }
services_redis_port() { cat "$SERVICES_DIR/redis.port"; }
services_postgres_url() { echo "postgres://tenantgate:tenantgate@127.0.0.1:$(services_postgres_port)/tenantgate"; }
services_redis_url() { echo "redis://127.0.0.1:$(services_redis_port)/0"; }

# TLS (opt-in: TENANTGATE_SERVICES_TLS=1 e2e/services/up): a throwaway CA and a
# server certificate for 127.0.0.1 under $SERVICES_DIR/tls; PostgreSQL then
# also accepts TLS on its port (ssl=on) and Redis listens for TLS on a second
# port. The helpers below restart them the same way while the directory exists.
services_tls_dir() { echo "$SERVICES_DIR/tls"; }
services_tls_on() { [[ -f $SERVICES_DIR/tls/server.crt && -f $SERVICES_DIR/redis-tls.port ]]; }
services_redis_tls_port() { cat "$SERVICES_DIR/redis-tls.port"; }
services_postgres_tls_url() { echo "$(services_postgres_url)?sslmode=verify-full&sslrootcert=$(services_tls_dir)/ca.crt"; }
services_redis_tls_url() { echo "rediss://127.0.0.1:$(services_redis_tls_port)/0"; }

# services_tls_make_certs: the CA (ca.crt) and the server's key and certificate
# (IP SAN 127.0.0.1, signed by the CA), with the openssl CLI; the key is
# readable by the postgres user only (PostgreSQL refuses a wider mode).
services_tls_make_certs() {
  local d
  d=$(services_tls_dir)
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=tenantgate test CA" -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null || return 1
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null || return 1
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
    -extfile "$d/server.ext" -out "$d/server.crt" 2>/dev/null || return 1
  chmod 755 "$d"
  chmod 644 "$d/ca.crt" "$d/server.crt"
  chmod 600 "$d/server.key" "$d/ca.key"
  # PostgreSQL (running as postgres) wants its own copy of the key, mode 0600.
  install -m 600 -o postgres -g postgres "$d/server.key" "$d/postgres-server.key"
}

# services_postgres_tls_args: the extra postgres flags when TLS is on.
services_postgres_tls_args() {
  services_tls_on || return 0
  local d
  d=$(services_tls_dir)
  printf '%s\n' -c ssl=on -c "ssl_cert_file=$d/server.crt" -c "ssl_key_file=$d/postgres-server.key"
}

# services_redis_tls_args: the extra redis-server flags when TLS is on.
services_redis_tls_args() {
  services_tls_on || return 0
  local d
  d=$(services_tls_dir)
  printf '%s\n' --tls-port "$(services_redis_tls_port)" --tls-cert-file "$d/server.crt" \
    --tls-key-file "$d/server.key" --tls-ca-cert-file "$d/ca.crt" --tls-auth-clients no
}

services_postgres_ready() {
  "$(services_pg_bindir)/pg_isready" -q -h 127.0.0.1 -p "$(services_postgres_port)" -U postgres -d postgres
}
services_redis_ready() {
  [[ $(redis-cli -h 127.0.0.1 -p "$(services_redis_port)" ping 2>/dev/null) == PONG ]]
}

# services_start_postgres: starts PostgreSQL on its saved port with its existing
# data directory and waits until it accepts connections. A no-op when it runs.
services_start_postgres() {
  local bindir port dir=$SERVICES_DIR/postgres
  bindir=$(services_pg_bindir) || die "PostgreSQL is not installed"
  port=$(services_postgres_port)
  if pidfile_alive "$SERVICES_DIR/postgres.pid" && services_postgres_ready; then return 0; fi
  stop_our_pidfile "$SERVICES_DIR/postgres.pid"
  local as_pg tls_args
  mapfile -t as_pg < <(services_as_postgres_argv)
  mapfile -t tls_args < <(services_postgres_tls_args)
  # After a KILL, the old server's backends may hold its shared memory for a
  # moment, and postgres then refuses to start: try a few times.
  local attempt
  for attempt in 1 2 3 4 5; do
    # setpriv execs postgres, so the pid file holds the postmaster's PID.
    start_bg "$dir/data" "$dir/postgres.log" "$SERVICES_DIR/postgres.pid" \
      "${as_pg[@]}" "$bindir/postgres" -D "$dir/data" -p "$port" -c listen_addresses=127.0.0.1 \
      -c unix_socket_directories= -c fsync=off -c synchronous_commit=off \
      -c full_page_writes=off -c max_connections=200 -c shared_buffers=64MB "${tls_args[@]}"
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
      services_postgres_ready && return 0
      pidfile_alive "$SERVICES_DIR/postgres.pid" || break
      sleep 0.2
    done
    stop_our_pidfile "$SERVICES_DIR/postgres.pid"
    log "postgres did not start (attempt $attempt)"
    sleep 1
  done
  tail_log "$dir/postgres.log"
  return 1
}

# services_stop_postgres [SIGNAL]: INT (default) is PostgreSQL's fast shutdown;
# KILL simulates a crash.
services_stop_postgres() { stop_our_pidfile "$SERVICES_DIR/postgres.pid" "${1:-INT}"; }

# services_start_redis: starts Redis on its saved port (an empty store: it
# keeps no data on disk) and waits until it answers PING.
services_start_redis() {
  local port dir=$SERVICES_DIR/redis
  port=$(services_redis_port)
  if pidfile_alive "$SERVICES_DIR/redis.pid" && services_redis_ready; then return 0; fi
  stop_our_pidfile "$SERVICES_DIR/redis.pid"
  mkdir -p "$dir"
  local tls_args
  mapfile -t tls_args < <(services_redis_tls_args)
  start_bg "$dir" "$dir/redis.log" "$SERVICES_DIR/redis.pid" \
    "$(command -v redis-server)" --port "$port" --bind 127.0.0.1 --save '' \
    --appendonly no --daemonize no --dir "$dir" "${tls_args[@]}"
  local deadline=$((SECONDS + 20))
  while ((SECONDS < deadline)); do
    services_redis_ready && return 0
    pidfile_alive "$SERVICES_DIR/redis.pid" || break
    sleep 0.1
  done
  tail_log "$dir/redis.log"
  return 1
}

# services_stop_redis [SIGNAL]: TERM by default; KILL simulates a crash.
services_stop_redis() { stop_our_pidfile "$SERVICES_DIR/redis.pid" "${1:-TERM}"; }
