"""Wait for the engine to serve: connection refused is the normal state during compilation.

On TPU a cold start compiles every bucket for 10-30 minutes for the 26B/31B models
(tpu-inference PR #3408 and its benchmarks), and vLLM's API server only opens its port once the
engine is ready, so refusals, resets and 503s are all "not yet", never errors. Only the profile's
ready timeout (``VLLM_ENGINE_READY_TIMEOUT_S``, the same budget the engine gives itself) ends
the wait. Ready means ``/health`` 200 *and* ``/v1/models`` listing a model: the warm-up needs
the served name, and the two turn on at slightly different moments.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from warmup.progress import Reporter

POLL_S = 1.0


class EngineNotReady(RuntimeError):
    """The engine did not become ready within the ready timeout."""


async def probe(client: httpx.AsyncClient) -> tuple[str | None, str]:
    """One readiness check: (served model name or None, reason it is not ready)."""
    try:
        health = await client.get("/health", timeout=5)
        if health.status_code != 200:
            return None, f"/health {health.status_code}"
        models = await client.get("/v1/models", timeout=5)
        if models.status_code != 200:
            return None, f"/v1/models {models.status_code}"
        data = models.json().get("data") or []
        if not data:
            return None, "no model listed yet"
        return str(data[0]["id"]), "ready"
    except httpx.ConnectError:
        return None, "connection refused"
    except httpx.TimeoutException:
        return None, "timed out"
    except (httpx.TransportError, ValueError, KeyError) as exc:
        return None, type(exc).__name__


async def wait_ready(
    client: httpx.AsyncClient, timeout_s: float, reporter: Reporter, poll_s: float = POLL_S
) -> str:
    """Poll until ready; returns the served model name. Raises ``EngineNotReady`` at timeout."""
    start = time.monotonic()
    url = str(client.base_url)
    while True:
        model, reason = await probe(client)
        elapsed = time.monotonic() - start
        if model is not None:
            reporter.waited(elapsed)
            return model
        if elapsed >= timeout_s:
            raise EngineNotReady(f"engine {url} not ready after {timeout_s:.0f} s ({reason})")
        reporter.waiting(url, elapsed, timeout_s, reason)
        await asyncio.sleep(poll_s)
