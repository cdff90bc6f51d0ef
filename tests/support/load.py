"""A steady chat load on a gateway while something happens to it (a restart, a drain).

Each client sends one small chat, waits for its answer, pauses ``pause_s``, and goes on until
the block ends: a steady load, not a saturating one (on 2 cores a saturating one competes with
the very engine start-up it is meant to observe). Every answer's status, or the name of the
transport error, is recorded in order, for the test to assert that none failed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import httpx

MODEL = "gemma-4-tiny"


@contextlib.contextmanager
def steady_chats(
    url: str, clients: int = 1, pause_s: float = 0.5, tag: str = "steady"
) -> Iterator[list[int | str]]:
    """Run ``clients`` chat loops against ``url`` for the duration of the block."""
    results: list[int | str] = []
    stop = threading.Event()

    def client(w: int) -> None:
        with httpx.Client(timeout=120) as c:
            i = 0
            while not stop.is_set():
                body = {"model": MODEL, "max_tokens": 8,
                        "messages": [{"role": "user", "content": f"{tag} {w} {i}"}]}  # fmt: skip
                try:
                    results.append(c.post(f"{url}/v1/chat/completions", json=body).status_code)
                except httpx.HTTPError as exc:
                    results.append(type(exc).__name__)
                i += 1
                stop.wait(pause_s)

    threads = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(clients)]
    for t in threads:
        t.start()
    try:
        yield results
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=130)
