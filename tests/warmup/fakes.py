"""Small real fakes for the sidecar's peers: loopback HTTP servers run in a thread of the test.

``FakeEngine`` answers ``/metrics`` with a ``process_start_time_seconds`` the test can change (a
restart, as far as the sidecar can tell). ``FakeGateway`` implements ``/internal/warmup`` with a
state the test controls, a policy deciding each POST's answer, and a record of what was posted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.support import fakehttp
from tests.support.fakehttp import Answer


@contextmanager
def serve(app: Callable[[str, str, Any], Answer]) -> Iterator[str]:
    """Serve ``app(method, path, json_body) -> (status, json or text)`` on loopback; yields URL."""
    with fakehttp.serve(lambda req: app(req.method, req.path, req.body)) as url:
        yield url


@dataclass
class FakeEngine:
    """An engine as the sidecar's identity checks see it: ``/metrics`` with a start time."""

    start_time: float = 1_790_000_000.0

    @property
    def instance(self) -> str:
        return repr(float(self.start_time))

    def app(self, method: str, path: str, body: Any) -> Answer:
        if path == "/metrics":
            return 200, f"process_start_time_seconds {self.start_time}\n"
        return 404, {"error": "not found"}


@dataclass
class FakeGateway:
    """``/internal/warmup``: GET returns ``state``; ``on_post`` answers each POST (default:
    accept it for the current instance, as the real gateway does). Every POST is recorded."""

    instance: str | None = None
    state: str = "warming_up"
    posts: list[dict[str, Any]] = field(default_factory=list)
    gets: int = 0
    on_post: Callable[[FakeGateway, dict[str, Any]], Answer] | None = None
    _seen: threading.Condition = field(default_factory=threading.Condition)

    def accept(self, body: dict[str, Any]) -> Answer:
        if body["engine_instance"] != self.instance:
            return 409, {"error": {"code": "stale_engine_instance"}}
        self.state = {"running": "warming_up", "passed": "ready", "failed": "warmup_failed"}[
            body["status"]
        ]
        return 200, self.doc()

    def doc(self) -> dict[str, Any]:
        return {"state": self.state, "engine_instance": self.instance}

    def app(self, method: str, path: str, body: Any) -> Answer:
        if path != "/internal/warmup":
            return 404, {"error": "not found"}
        with self._seen:
            if method == "GET":
                answer = 200, self.doc()
                self.gets += 1
            else:
                answer = self.on_post(self, body) if self.on_post else self.accept(body)
                self.posts.append(body)
            self._seen.notify_all()
        return answer

    def wait_until(self, what: Callable[[FakeGateway], bool], timeout_s: float = 30.0) -> None:
        """Block until ``what(self)`` holds after some request (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout_s
        with self._seen:
            while not what(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"gateway never got there: {self.gets} GETs {self.posts}")
                self._seen.wait(left)


@dataclass
class FakeReplicaGateway:
    """``/internal/warmup`` of a gateway over several replicas: a POST is accepted when it names
    an instance the gateway sees (``instances``), as the real one matches it to its replica."""

    instances: set[str] = field(default_factory=set)
    posts: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self, method: str, path: str, body: Any) -> Answer:
        if path != "/internal/warmup":
            return 404, {"error": "not found"}
        with self._lock:
            if method == "GET":
                replicas = [{"engine_instance": i, "state": self.states.get(i, "warming_up")}
                            for i in sorted(self.instances)]  # fmt: skip
                return 200, {"replicas": replicas}
            self.posts.append(body)
            if body["engine_instance"] not in self.instances:
                return 409, {"error": {"code": "stale_engine_instance"}}
            self.states[body["engine_instance"]] = body["status"]
            return 200, {"engine_instance": body["engine_instance"], "state": body["status"]}

    def finals(self) -> list[tuple[str, str]]:
        """(instance, status) of every accepted passed/failed post, in order."""
        with self._lock:
            return [(p["engine_instance"], p["status"]) for p in self.posts
                    if p["status"] != "running" and p["engine_instance"] in self.instances]  # fmt: skip


@contextmanager
def synthetic_engine(port: int) -> Iterator[str]:
    """``python -m bench synthetic`` on ``port`` (a fixed port, so a test can restart it: a new
    process is a new engine instance), in its own process group, stopped by that group."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "synthetic", "--port", str(port), "--model", "synthetic",
         "--itl-ms", "1", "--ttft-ms", "0"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "http://" not in line:
            raise RuntimeError(f"synthetic engine did not start: {line!r}")
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
