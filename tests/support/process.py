"""Start a real server process for a test, wait until it answers, stop it by process group.

Every process a test starts is a session leader bound to 127.0.0.1 on a free port, waited for
with a deadline, and stopped with SIGTERM then SIGKILL to its whole group: no test leaves an
EngineCore or worker behind, and nothing is ever killed by name. The runner itself lives in
``bench.gatewayproc`` (the gateway benchmark starts servers the same way, and product code
never imports ``tests``); this module is the tests' name for it.
"""

from __future__ import annotations

import socket

from bench.gatewayproc import REPO, RunningServer, ServerProcess, free_port

__all__ = ["REPO", "RunningServer", "ServerProcess", "consecutive_free_ports", "free_port"]


def consecutive_free_ports(n: int) -> int:
    """A base port free with its ``n - 1`` successors (replica i listens on ENGINE_PORT + i)."""
    for _ in range(50):
        base = free_port()
        try:
            for offset in range(1, n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise AssertionError(f"no {n} consecutive free ports")
