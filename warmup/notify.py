"""The gateway handshake (``/internal/warmup``) and the compile-cache write-back.

The gateway serves an engine instance only after the sidecar posts ``passed`` for that exact
instance (the contract is ``protocol/handshake.py``, which both sides import). The sidecar therefore always
names the instance it warmed; a 409 means the gateway sees another one, either because the
engine restarted (warm the new one) or because the gateway has not polled the engine yet (wait
a moment and post again). Which of the two is for the caller to decide: it can look at the
engine, this module cannot.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from env.settings import GatewaySettings, WarmupSettings
from protocol import handshake


class GatewayStale(Exception):
    """409 stale_engine_instance: the gateway sees a different engine instance."""


class GatewayUnavailable(Exception):
    """No usable answer from the gateway within the handshake timeout."""


def gateway_url(warmup: WarmupSettings, gateway: GatewaySettings) -> str:
    """WARMUP_GATEWAY_URL, else the gateway's own listen address (loopback for 0.0.0.0)."""
    if warmup.gateway_url:
        return warmup.gateway_url.rstrip("/")
    return gateway.url


class HandshakeClient:
    """Client of the gateway's internal warm-up endpoint (``protocol/handshake.py``)."""

    def __init__(self, url: str, token_file: Path, timeout_s: float) -> None:
        self.url = url
        self.token_file = token_file
        self.timeout_s = timeout_s

    async def _token(self, deadline: float) -> str:
        """The shared token; the gateway writes it at start, so wait for it a little."""
        while True:
            try:
                token = self.token_file.read_text(encoding="utf-8").strip()
                if token:
                    return token
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise GatewayUnavailable(f"internal token file {self.token_file} missing or empty")
            await asyncio.sleep(0.5)

    async def _call(
        self, method: str, body: dict[str, Any] | None = None, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """One request, retried on transport errors and 5xx until the handshake timeout."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        last = "no attempt"
        while True:
            token = await self._token(deadline)
            try:
                async with httpx.AsyncClient(timeout=10) as client:
                    resp = await client.request(
                        method,
                        f"{self.url}{handshake.PATH}",
                        json=body,
                        headers={"Authorization": f"Bearer {token}"},
                    )
                if resp.status_code == 200:
                    return dict(resp.json())
                if resp.status_code == 409:
                    raise GatewayStale(resp.text[:300])
                last = f"HTTP {resp.status_code}: {resp.text[:300]}"
                if resp.status_code < 500:
                    raise GatewayUnavailable(f"gateway {self.url} refused the report: {last}")
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise GatewayUnavailable(f"gateway {self.url} unreachable: {last}")
            await asyncio.sleep(1.0)

    async def state(self, timeout_s: float | None = None) -> dict[str, Any]:
        """The gateway's current warm-up state (GET)."""
        return await self._call("GET", None, timeout_s)

    async def report(
        self,
        instance: str,
        status: str,
        step: str | None = None,
        detail: str | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """POST running/passed/failed for ``instance``; raises GatewayStale on 409."""
        report = handshake.Report(instance, status, step, detail)  # type: ignore[arg-type]
        return await self._call("POST", report.to_json(), timeout_s)


def cache_save(
    profile: str, replica: int | None = None, timeout_s: float = 900
) -> tuple[bool, str]:
    """``python -m entrypoint cache save``: persist the now-warm compile cache.

    ``replica``: one of this host's replicas (``--replica I``: each has its own hot-cache
    subdirectory); None for a single engine, the command exactly as before.
    A failure here never fails the warm-up (the engine *is* warm; only the next cold start is
    slower), so it is returned as a message for a warning.
    """
    argv = [sys.executable, "-m", "entrypoint", "cache", "save", "--profile", profile]
    if replica is not None:
        argv += ["--replica", str(replica)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cache save did not run: {exc}"
    output = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    tail = " | ".join(output[-3:])
    if done.returncode != 0:
        return False, f"cache save exited {done.returncode}: {tail}"
    return True, tail
