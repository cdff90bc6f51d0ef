"""The compose stack's shared state (the ``state`` service): Debian's ``redis-server``, started
so that only the gateway can use it.

Why a password the operator never types: the stack runs with host networking, so anything on the
host can reach a loopback port. At its first start the service writes a random password into a
URL file on a private tmpfs volume that only uid 10001 (the gateway's) can read,
``redis://:<password>@127.0.0.1:<STATE_PORT>/0``, and the gateway reads that file as its
``GATEWAY_STATE_URL`` (a file holding the URL, never an environment variable, a command line or a
log line). A restarted ``state`` container finds the file and keeps the password; the volume (and
so the password) goes with ``make down``.

Redis runs with persistence off (``save ""``, no AOF: a store restarted empty is rebuilt from the
leases the live gateways renew), bound to loopback, ``noeviction`` (a lease evicted under memory
pressure would free a slot that is held), its config file written on the container's ``/tmp``.
Standard library only: it runs in the state image, next to ``redis-server``.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_PORT = 6380  # not 6379: a host's own Redis keeps its port


def ensure_url(path: Path, port: int) -> str:
    """The URL in ``path``, or a new one with a random password written there (mode 0600)."""
    if path.is_file():
        url = path.read_text().strip()
        parts = urlsplit(url)
        if parts.scheme == "redis" and parts.password and parts.port == port:
            return url
    url = f"redis://:{secrets.token_urlsafe(32)}@127.0.0.1:{port}/0"
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(url + "\n")
    tmp.replace(path)
    return url


def redis_conf(url: str, workdir: Path, bind: str = "127.0.0.1") -> str:
    """redis.conf for the URL's port and password: on ``bind`` (loopback in compose; the pod's
    address on Kubernetes, where a NetworkPolicy admits only the gateways), nothing persisted,
    no eviction."""
    parts = urlsplit(url)
    password = parts.password or ""
    if not password or any(c in password for c in ' "\n\\'):
        raise ValueError("the state URL needs a password without spaces, quotes or backslashes")
    return "\n".join([
        f"bind {bind}",
        f"port {parts.port}",
        "protected-mode yes",
        f'requirepass "{password}"',
        'save ""',
        "appendonly no",
        f"dir {workdir}",
        "maxmemory 256mb",
        "maxmemory-policy noeviction",
        "",
    ])  # fmt: skip


def main(argv: list[str]) -> int:
    url_file = Path(argv[1] if len(argv) > 1 else "/run/state/url")
    port = int(os.environ.get("STATE_PORT", DEFAULT_PORT))
    workdir = Path(os.environ.get("STATE_DIR", "/tmp"))
    bind = os.environ.get("STATE_BIND", "127.0.0.1")
    url = ensure_url(url_file, port)  # Kubernetes: the Secret's URL, read-only, used as it is
    conf = workdir / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(redis_conf(url, workdir, bind))
    print(f"state: redis-server on {bind}:{port}, URL in {url_file}", flush=True)
    os.execvp("redis-server", ["redis-server", str(conf)])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
