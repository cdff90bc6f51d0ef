#!/usr/bin/env bash
# Start or stop a Docker daemon for this machine: `dockerd.sh start|stop|status`.
#
# No init system runs dockerd here, so we start it ourselves. The flags are the ones this
# network allows (found on these CI machines): no iptables/NAT/forwarding and no default bridge,
# because containers must use the host network (bridge traffic goes to private addresses, which
# are blocked). `start` is a no-op if a daemon already answers; `stop` only stops the daemon that
# `start` launched (dockerd's own pidfile in $DOCKERD_STATE_DIR), never someone else's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

state=${DOCKERD_STATE_DIR:-/tmp/ci-dockerd}
pidfile="$state/dockerd.pid"
logfile="$state/dockerd.log"

answers() { timeout 5 docker info >/dev/null 2>&1; }

start() {
  if answers; then
    ci_log "a Docker daemon already answers; not starting another"
    return 0
  fi
  mkdir -p "$state"
  ci_log "starting dockerd (log: $logfile)"
  # setsid: its own session, so a Ctrl-C in the calling shell does not kill the daemon mid-run.
  # --pidfile: dockerd writes its own PID there ($! would be the PID of a wrapper: the
  # background subshell, or sudo). --group: the socket belongs to the caller's group, so a
  # non-root caller (sudo for the daemon only) can use docker without a `docker` group login.
  as_root setsid dockerd --iptables=false --ip-masq=false --ip-forward=false --bridge=none \
    --pidfile "$pidfile" --group "$(id -gn)" --log-level=warn >"$logfile" 2>&1 </dev/null &
  local launcher=$!
  for _ in $(seq 1 60); do
    answers && { ci_log "dockerd up (pid $(cat "$pidfile"))"; return 0; }
    kill -0 "$launcher" 2>/dev/null || break
    sleep 0.5
  done
  tail -n 30 "$logfile" >&2 || true
  ci_die "dockerd did not start"
}

# The PID in our pidfile, only if it is still a dockerd (never signal a recycled PID).
our_dockerd() {
  local pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || return 1
  echo "$pid"
}

stop() {
  local pid
  if ! pid=$(our_dockerd); then
    ci_log "no dockerd started by us is running"
    return 0
  fi
  ci_log "stopping dockerd (pid $pid)"
  as_root kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    ci_log "dockerd ignored SIGTERM for 30 s; killing it"
    as_root kill -KILL "$pid"
  fi
  as_root rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) answers && echo "dockerd answers" || { echo "no Docker daemon"; exit 1; } ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
