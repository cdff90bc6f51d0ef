"""The warm-up state of each replica, and a tiny HTTP server that tells it (``WARMUP_STATUS_PORT``).

Who asks: a Kubernetes readinessProbe (one engine pod, one sidecar warming ``localhost``: the pod
is Ready only once its engine is warm) and gateways that pull warm states instead of being
pushed to (``GATEWAY_WARMUP_STATUS_PORT``; the sidecar then runs ``--no-notify``).

``GET /ready`` is 200 ``{"state": "passed", "engine_instance": ...}`` only when the latest
warm-up passed for the engine's *current* instance. "Current" is checked on every request (one
``GET /metrics`` to the engine, bounded by ``PROBE_TIMEOUT_S``), not taken from the watch loop's
last poll: an engine that restarted a second ago is a new, cold instance, and a probe must not
call it ready in the window before the loop notices. Otherwise 503 with ``state``:
``engine_down`` (the engine does not answer), ``running`` (a warm-up of the current instance is
under way), ``failed`` (it failed: ``step`` and ``detail`` say where) or ``waiting`` (not warmed
yet: waiting for the engine's readiness or for its turn). With several replicas ``/ready`` is
200 only if every one passed (the body lists each) and ``/ready?replica=host:port`` answers for
one. ``GET /livez`` is 200 while the process runs.

``GET /metrics`` is Prometheus text (format 0.0.4) about the compile-cache save that follows a
passed warm-up (issue 26: a failed save must be loud, not a log line, because every later cold
start then compiles from scratch): ``warmup_compile_cache_saved{replica}`` is 1 after a save
that succeeded, 0 after one that failed, and absent before any save (nothing to judge yet: an
alert on ``== 0`` must not fire for a replica still warming);
``warmup_compile_cache_save_failures_total{replica}`` counts failed saves since the process
started (0 from the start, so that ``increase()`` sees the first one). Written by hand: the warm-up image has no prometheus_client.

The server is ``asyncio.start_server`` with a minimal HTTP/1.1 answer (``Connection: close``):
the warm-up image has no web framework, and three read-only GETs do not need one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs

import httpx

from protocol.identity import engine_instance

State = Literal["waiting", "running", "passed", "failed", "engine_down"]
# The aggregate's state when not every replica passed: the first of these any replica is in.
SEVERITY: tuple[State, ...] = ("failed", "engine_down", "running", "waiting")
PROBE_TIMEOUT_S = 2.0
HEAD_TIMEOUT_S = 5.0
JSON_TYPE = "application/json"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text exposition format
# The metric families /metrics serves (ops/prometheus/rules.yml alerts on the first).
CACHE_SAVED = "warmup_compile_cache_saved"
CACHE_SAVE_FAILURES = "warmup_compile_cache_save_failures_total"
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           503: "Service Unavailable"}  # fmt: skip


class EngineDown(Exception):
    """The engine did not answer the identity probe."""


@dataclass
class WarmState:
    """What the sidecar last did for one replica (written by ``Sidecar``, read by the server)."""

    state: State = "waiting"
    instance: str | None = None
    step: str | None = None
    detail: str | None = None
    since: float = field(default_factory=time.time)
    # The compile-cache save after a pass: None until one ran, then whether the latest succeeded.
    # Not touched by ``set``: it describes the cache on disk, which outlives an engine instance.
    cache_saved: bool | None = None
    cache_save_failures: int = 0

    def saved(self, ok: bool) -> None:
        """Record the outcome of a compile-cache save (``/metrics`` tells it)."""
        self.cache_saved = ok
        if not ok:
            self.cache_save_failures += 1

    def set(
        self,
        state: State,
        instance: str | None = None,
        step: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.state, self.instance, self.step, self.detail = state, instance, step, detail
        self.since = time.time()


@dataclass
class Tracked:
    """One replica the status server answers for."""

    name: str
    url: str
    warm: WarmState


Probe = Callable[[str], Awaitable[str | None]]


async def probe_instance(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """The engine's current instance identity (the gateway's definition); EngineDown if none."""
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            resp = await client.get(f"{url}/metrics")
    except httpx.HTTPError as exc:
        raise EngineDown(f"{type(exc).__name__}: {exc}") from None
    if resp.status_code != 200:
        raise EngineDown(f"/metrics HTTP {resp.status_code}")
    return engine_instance(resp.text)


def _label(value: str) -> str:
    """A label value escaped as the text format requires (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(replicas: list[Tracked]) -> str:
    """The ``/metrics`` page: the compile-cache save gauge and failure counter per replica."""
    saved = [f"# HELP {CACHE_SAVED} 1 if the latest compile-cache save after a passed warm-up "
             "succeeded, 0 if it failed (absent before any save)",
             f"# TYPE {CACHE_SAVED} gauge"]  # fmt: skip
    failures = [f"# HELP {CACHE_SAVE_FAILURES} Compile-cache saves that failed since start",
                f"# TYPE {CACHE_SAVE_FAILURES} counter"]  # fmt: skip
    for r in replicas:
        label = f'{{replica="{_label(r.name)}"}}'
        if r.warm.cache_saved is not None:
            saved.append(f"{CACHE_SAVED}{label} {int(r.warm.cache_saved)}")
        failures.append(f"{CACHE_SAVE_FAILURES}{label} {r.warm.cache_save_failures}")
    return "\n".join(saved + failures) + "\n"


def judge(warm: WarmState, current: str | None) -> State:
    """The replica's state given the engine's current instance (pure)."""
    if current is not None and warm.instance == current and warm.state != "engine_down":
        return warm.state
    return "waiting"  # not warmed yet: a new instance, or one whose warm-up has not started


class StatusServer:
    """Answers ``/ready``, ``/livez`` and ``/metrics`` for the replicas of one sidecar."""

    def __init__(self, replicas: list[Tracked], probe: Probe = probe_instance) -> None:
        self.replicas = replicas
        self.probe = probe
        self._server: asyncio.Server | None = None

    async def one(self, replica: Tracked) -> dict[str, Any]:
        try:
            current = await self.probe(replica.url)
        except EngineDown as exc:
            return {"replica": replica.name, "state": "engine_down", "engine_instance": None,
                    "detail": str(exc)}  # fmt: skip
        warm = replica.warm
        doc: dict[str, Any] = {
            "replica": replica.name,
            "state": judge(warm, current),
            "engine_instance": current,
        }
        if doc["state"] == "failed":
            doc["step"], doc["detail"] = warm.step, warm.detail
        return doc

    async def ready(self, query: str = "") -> tuple[int, dict[str, Any]]:
        wanted = parse_qs(query).get("replica")
        if wanted:
            match = [r for r in self.replicas if r.name == wanted[0]]
            if not match:
                known = ", ".join(r.name for r in self.replicas)
                return 404, {"error": f"unknown replica {wanted[0]!r}; this sidecar warms {known}"}
            doc = await self.one(match[0])
            return (200 if doc["state"] == "passed" else 503), doc
        docs = await asyncio.gather(*(self.one(r) for r in self.replicas))
        if len(docs) == 1:
            return (200 if docs[0]["state"] == "passed" else 503), docs[0]
        states = {d["state"] for d in docs}
        overall = "passed" if states == {"passed"} else next(s for s in SEVERITY if s in states)
        return (200 if overall == "passed" else 503), {"state": overall, "replicas": docs}

    async def answer(self, method: str, target: str) -> tuple[int, dict[str, Any] | str]:
        """(status, JSON document) for /ready and /livez; (status, text) for /metrics."""
        path, _, query = target.partition("?")
        if path not in ("/ready", "/livez", "/metrics"):
            return 404, {"error": f"no route {path}; try /ready, /livez or /metrics"}
        if method not in ("GET", "HEAD"):
            return 405, {"error": f"{method} not allowed; use GET"}
        if path == "/livez":
            return 200, {"status": "ok"}
        if path == "/metrics":
            return 200, metrics_text(self.replicas)
        return await self.ready(query)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method = "GET"
        doc: dict[str, Any] | str
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                code, doc = 400, {"error": "malformed request line"}
            else:
                method = parts[0]
                code, doc = await self.answer(method, parts[1])
            text = isinstance(doc, str)
            body = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
            lines = [
                f"HTTP/1.1 {code} {REASONS.get(code, 'Error')}",
                f"Content-Type: {METRICS_TYPE if text else JSON_TYPE}",
                f"Content-Length: {len(body)}",
                "Cache-Control: no-store",
                "Connection: close",
            ]
            writer.write(
                ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if method == "HEAD" else body)
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that sent no complete request head, or went away: just close
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (``port`` 0 picks one, for tests)."""
        self._server = await asyncio.start_server(self._handle, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
