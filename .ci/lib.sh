# Shared helpers for the .ci scripts: logging and per-phase timing.
# Sourced, not executed. Every phase prints its own duration so a slow CI run says where the
# time went without anyone re-running it under `time`.

ci_log() { printf '[ci %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

ci_die() { ci_log "ERROR: $*"; exit 1; }

# ci_phase NAME CMD...: run CMD, record and print how long it took; keeps the exit status.
CI_PHASES=()
ci_phase() {
  local name=$1 start rc
  shift
  ci_log "phase ${name}: start"
  start=$(date +%s)
  # A subshell with errexit: a failing step inside a shell-function phase fails the phase (the
  # caller's `set -e` does not reach into a function whose status is being collected).
  set +e
  (set -e; "$@")
  rc=$?
  set -e
  local secs=$(($(date +%s) - start))
  CI_PHASES+=("$(printf '%-14s %5ss  rc=%s' "$name" "$secs" "$rc")")
  ci_log "phase ${name}: ${secs}s (rc=${rc})"
  return "$rc"
}

ci_summary() {
  ci_log "phase summary:"
  local line
  for line in "${CI_PHASES[@]}"; do printf '    %s\n' "$line" >&2; done
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# The mirror URI the machine already uses (deb822 .sources or one-line .list), so the trixie
# download goes through the same allowed host.
mirror_uri() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' "$f")
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$(awk '$1=="deb" {for (i=2;i<=NF;i++) if ($i ~ /^https?:.*\/debian\/?$/) {print $i; exit}}' "$f")
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  echo "http://deb.debian.org/debian"
}
