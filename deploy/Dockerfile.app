# The light image of the stack: the gateway and the warm-up sidecar (no vLLM, ~180 MB).
#
#   make docker-build   (docker-compose.yml builds it for both services, same tag)
#
# One image for both roles, not two near-identical Dockerfiles: they need the same Python
# dependencies (the `gateway` and `warmup` extras of pyproject.toml) and the same code (the
# warm-up imports gateway/identity.py, which defines "the same engine instance" for both, and runs
# `python -m entrypoint cache save` after a passing warm-up). Compose picks the role with
# `command:`; the default command is the gateway's.
#
# No `# syntax=` line on purpose: no registry is reachable here, so the daemon's built-in
# Dockerfile frontend must do (it knows RUN --mount). ARG BASE_IMAGE: the public slim image
# normally, the local debootstrap base (`make docker-base`) where nothing can be pulled. Wheels
# are bind-mounted from the host wheelhouse .cache/wheels/app (deploy/wheels.sh) and installed
# --no-index with the engine lock as constraints: the same pydantic/httpx/uvicorn versions the
# tests ran, nothing downloaded in the build, no wheel in a layer.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/app

# uid 10001 owns what the roles write: the gateway's handshake token dir, the compile-cache
# mount points (a new named volume takes the owner of the image directory it is mounted on) and
# the warm-up report dir.
RUN echo 'app:x:10001:10001:app:/home/app:/usr/sbin/nologin' >>/etc/passwd \
    && echo 'app:x:10001:' >>/etc/group \
    && mkdir -p /home/app /app /run/gateway /cache/compile-hot /cache/compile-persist /cache/hf \
       /var/lib/warmup \
    && chown -R 10001:10001 /home/app /run/gateway /cache /var/lib/warmup \
    && python3 -m venv "$VIRTUAL_ENV"

# Dependencies only (the code is copied below, not installed): the requirement list is read from
# pyproject.toml, so the image cannot drift from the extras.
RUN --mount=type=bind,source=.cache/wheels/app,target=/wheels \
    --mount=type=bind,source=pyproject.toml,target=/tmp/pyproject.toml \
    --mount=type=bind,source=entrypoint/cpu/vllm-cpu.lock,target=/tmp/constraints.txt \
    python -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; \
print('\n'.join(p['dependencies'] + extras['gateway'] + extras['warmup']))" >/tmp/req.txt \
    && pip install -q --no-index --find-links /wheels -c /tmp/constraints.txt -r /tmp/req.txt \
    && rm /tmp/req.txt && find "$VIRTUAL_ENV" -name '__pycache__' -prune -exec rm -rf {} +

WORKDIR /app
COPY protocol/ protocol/
COPY env/ env/
COPY entrypoint/ entrypoint/
COPY gateway/ gateway/
COPY warmup/ warmup/

USER 10001:10001
# The roles read the profile named by $PROFILE (compose mounts it at /etc/gemma4/<name>.env).
ENV PROFILE=env/cpu.env
CMD ["python", "-m", "gateway"]
