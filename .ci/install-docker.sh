#!/usr/bin/env bash
# Install a Docker engine, Compose v2 and buildx on a Debian bookworm machine without a registry.
#
# Why this shape (measured on these CI machines): bookworm ships docker.io 20.10 + containerd + runc,
# which is all the engine we need, but not Compose v2 nor buildx (its docker-compose is v1.29,
# which rejects current compose keys). Trixie packages both as Go binaries that run on bookworm's
# libc, so we fetch the two .debs with a throw-away apt state (bookworm's apt config untouched)
# and unpack only their CLI plugins into $DOCKER_CONFIG/cli-plugins. Idempotent: re-running is a
# no-op when everything is there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

DOCKER_CONFIG=${DOCKER_CONFIG:-$HOME/.docker}
plugins="$DOCKER_CONFIG/cli-plugins"

need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io containerd runc)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
if [ ${#need_apt[@]} -gt 0 ]; then
  ci_log "apt install ${need_apt[*]}"
  as_root apt-get update -qq
  # --no-install-recommends: skip cgroupfs-mount, git, xz helpers etc. we do not need.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
fi
# docker.io's postinst may start dockerd through systemd on machines that have it; we manage
# dockerd ourselves (.ci/dockerd.sh) with the flags this network needs.

if [ ! -x "$plugins/docker-compose" ] || [ ! -x "$plugins/docker-buildx" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  uri=$(mirror_uri)
  ci_log "fetching docker-compose + docker-buildx from trixie at $uri"
  mkdir -p "$work/state/lists/partial" "$work/cache/archives/partial" "$work/debs"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  echo "deb [signed-by=$keyring] $uri trixie main" >"$work/sources.list"
  apt_opts=(
    -o "Dir::State=$work/state" -o "Dir::Cache=$work/cache"
    -o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::status=/dev/null" -o "APT::Sandbox::User=root"
  )
  apt-get "${apt_opts[@]}" update -qq
  (cd "$work/debs" && apt-get "${apt_opts[@]}" download docker-compose docker-buildx >/dev/null)
  mkdir -p "$plugins"
  for deb in "$work"/debs/*.deb; do
    dpkg-deb -x "$deb" "$work/root"
  done
  install -m 0755 "$work"/root/usr/libexec/docker/cli-plugins/* "$plugins/"
fi

ci_log "docker $(docker --version 2>/dev/null | cut -d' ' -f3 | tr -d ,)," \
  "compose $(docker compose version --short 2>/dev/null)," \
  "buildx $(docker buildx version 2>/dev/null | cut -d' ' -f2)"
