# Shared helpers for the .ci scripts: logging and per-phase timing.
# Sourced, not executed. Every phase prints its own duration so a slow CI run says where the
# time went without anyone re-running it under `time`.

ci_log() { printf '[ci %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

ci_die() { ci_log "ERROR: $*"; exit 1; }

# ci_phase NAME CMD...: run CMD, record and print how long it took; returns CMD's status.
# The caller's errexit setting is restored, not forced on: `ci_phase x cmd || rc=$?` collects a
# failing phase's status without the script dying there, and under `set -e` a bare
# `ci_phase x cmd` still stops the script at a failing phase.
CI_PHASES=()
ci_phase() {
  local name=$1 start rc errexit=0
  shift
  [[ $- == *e* ]] && errexit=1
  ci_log "phase ${name}: start"
  start=$(date +%s)
  # A subshell with errexit: a failing step inside a shell-function phase fails the phase (the
  # caller's `set -e` does not reach into a function whose status is being collected).
  set +e
  (set -e; "$@")
  rc=$?
  [ "$errexit" = 1 ] && set -e
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

# The test counts CI's harness reads: the last line of stdout, `N passed, N failed, N skipped`.
# Stays at zero when no test ran (a provisioning phase failed).
CI_COUNTS="0 passed, 0 failed, 0 skipped"
CI_SEED=""

# ci_tests RESULTS_DIR CMD...: run the test command (e.g. `make test`) as phase "test", in
# shuffled order with a printed seed (CI_RANDOM_SEED=N replays one), writing a JUnit report and
# pytest's own exit status to RESULTS_DIR; then print the verdict of .ci/verdict.py (skipped and
# failed tests, one verdict line), set CI_COUNTS and return the verdict's status (0, 1, 3 or 5).
ci_tests() {
  local results=$1 here make_rc=0 verdict vrc=0 py
  shift
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  py=$(command -v python3 || command -v python3.11) || ci_die "no python3 for .ci/verdict.py"
  mkdir -p "$results"
  rm -f "$results/junit.xml" "$results/pytest-status"
  CI_SEED=${CI_RANDOM_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
  ci_log "random test order seed: $CI_SEED (replay: CI_RANDOM_SEED=$CI_SEED .ci/run, or" \
    ".venv/bin/python -m pytest -p randomly --randomly-seed=$CI_SEED)"
  export PYTEST_STATUS_FILE="$results/pytest-status"
  export PYTEST_ADDOPTS="${PYTEST_ADDOPTS:-} --junitxml=$results/junit.xml -o junit_family=xunit1 -p randomly --randomly-seed=$CI_SEED"
  ci_phase test "$@" || make_rc=$?
  verdict=$("$py" "$here/verdict.py" "$results/junit.xml" --ci \
    --allowed-skips "$here/allowed-skips.txt" --pytest-status "$results/pytest-status" \
    --make-status "$make_rc" --slowest 20) || vrc=$?
  local line n=0 total
  total=$(printf '%s\n' "$verdict" | wc -l)
  while IFS= read -r line; do
    n=$((n + 1))
    if [ "$n" -lt "$total" ]; then ci_log "$line"; else CI_COUNTS=$line; fi
  done <<<"$verdict"
  case $vrc in
    0 | 1 | 3 | 5) return "$vrc" ;;
    *) ci_log "verdict: .ci/verdict.py failed (exit $vrc)"; return 3 ;;
  esac
}

# ci_finish RC STARTED: the phase summary, the seed, the total time and, last, alone on its line
# on stdout, the test counts; then exit RC.
ci_finish() {
  local rc=$1 started=$2
  ci_summary
  [ -z "$CI_SEED" ] || ci_log "random test order seed: $CI_SEED"
  ci_log "total $(($(date +%s) - started))s, exit $rc"
  printf '%s\n' "$CI_COUNTS"
  exit "$rc"
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
