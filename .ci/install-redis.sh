#!/usr/bin/env bash
# Install redis-server (Debian's package) for the shared-state tests (GATEWAY_STATE_URL).
#
# The tests start their own private redis-server (tests/support/redis.py: a free loopback port,
# no persistence, stopped by process group), so the system service the package installs is
# disabled and stopped where systemd runs it. Idempotent: a no-op when redis-server runs.
#
#   .ci/install-redis.sh      (root or passwordless sudo; a few seconds)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

if command -v redis-server >/dev/null 2>&1 && redis-server --version >/dev/null 2>&1; then
  ci_log "redis-server already installed: $(redis-server --version | head -n1)"
  exit 0
fi

ci_log "apt-get install redis-server"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  redis-server >/dev/null
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  as_root systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
ci_log "installed $(redis-server --version | head -n1)"
