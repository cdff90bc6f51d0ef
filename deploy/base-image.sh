#!/usr/bin/env bash
# Build the local base image that replaces `python:3.11-slim-bookworm` where no registry answers.
#
#   deploy/base-image.sh [IMAGE]        (default gemma4-serving/base:bookworm; `make docker-base`)
#
# No container registry is reachable from the development and CI machines, so nothing can be
# pulled: the Dockerfiles built from a Python base (entrypoint/Dockerfile.cpu,
# deploy/Dockerfile.app) take `ARG BASE_IMAGE` (default the public python:3.11-slim-bookworm) and
# the Makefile passes this image instead when it exists. (entrypoint/Dockerfile.upstream builds
# on the profile's ENGINE_IMAGE, the upstream vLLM image, instead.) It is a debootstrap'ed Debian bookworm minbase with
# Python 3.11 + venv, CA certificates and the few shared libraries the vLLM CPU build links
# (libnuma, libstdc++, libgomp), so image builds need no apt at all. Idempotent: an existing
# image is kept unless FORCE=1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../.ci/lib.sh"

image=${1:-${BASE_IMAGE_LOCAL:-gemma4-serving/base:bookworm}}
if [ "${FORCE:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
  ci_log "base image $image already present"
  exit 0
fi
command -v debootstrap >/dev/null || ci_die "debootstrap missing (run .ci/install-docker.sh)"

root=$(mktemp -d /tmp/base-rootfs.XXXXXX)
cleanup() { as_root rm -rf "$root"; }
trap cleanup EXIT

pkgs=python3,python3-venv,ca-certificates,libnuma1,libstdc++6,libgomp1
uri=$(mirror_uri)
ci_log "debootstrap bookworm minbase ($pkgs) from $uri"
as_root debootstrap --variant=minbase --include="$pkgs" bookworm "$root" "$uri" >/dev/null

# Slim the tree like the official slim images: no apt lists, caches, docs or locales.
as_root rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
  "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/doc/* "$root"/usr/share/man/* \
  "$root"/usr/share/locale/* "$root"/var/log/*.log "$root"/tmp/*
# Same names the public image has, so Dockerfiles can say `python` and `python3` alike.
as_root ln -sf python3 "$root/usr/bin/python"

as_root tar -C "$root" -c . | docker import \
  -c 'ENV LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1' \
  -c 'CMD ["python3"]' - "$image" >/dev/null
ci_log "base image $image: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
