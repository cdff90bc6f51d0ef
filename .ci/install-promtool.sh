#!/usr/bin/env bash
# Install promtool (Prometheus' rule checker and rule unit-test runner) on a Debian machine.
#
# Debian's `prometheus` package ships /usr/bin/promtool. Installing the whole package would also
# install and (with systemd) start a Prometheus server we do not want, so we download the .deb
# with apt and unpack only promtool into /usr/local/bin. Idempotent: a no-op when promtool runs.
#
#   .ci/install-promtool.sh      (root or passwordless sudo; a few seconds)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

if command -v promtool >/dev/null 2>&1 && promtool --version >/dev/null 2>&1; then
  ci_log "promtool already installed: $(command -v promtool)"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ci_log "apt download prometheus (for promtool only)"
as_root apt-get update -qq
# `apt-get download` writes into the current directory as the calling user; _apt needs to read it.
chmod 0777 "$work"
(cd "$work" && as_root apt-get download -qq prometheus >/dev/null)
deb=$(ls "$work"/prometheus_*.deb)
dpkg-deb -x "$deb" "$work/root"
as_root install -m 0755 "$work/root/usr/bin/promtool" /usr/local/bin/promtool
ci_log "installed $(/usr/local/bin/promtool --version 2>&1 | head -n1)"
