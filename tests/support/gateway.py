"""Run the real gateway process (``python -m gateway``) in front of an upstream, for tests.

Shared with the warm-up tests (see the handshake contract): ``run_gateway`` starts the gateway in
its own process group on a free loopback port with a private internal-token file, waits for
``/livez`` and stops the group on exit. ``mark_warm`` performs the real warm-up handshake
(GET the engine instance the gateway sees, POST "passed" for it), for tests that need a
serving gateway without running the warm-up itself. The runner is ``bench.gatewayproc`` (the
gateway benchmark uses it too); tests add the /metrics readers below.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import gatewayproc
from bench.gatewayproc import GatewayProcess, mark_warm, wait_for_instance
from protocol.prometheus import metric_sum
from tests.support.process import REPO

PROFILE = REPO / "env" / "cpu.env"
# A gateway that never cancels its upstream request on a disconnect (nocancel/sitecustomize.py).
NOCANCEL = {"PYTHONPATH": f"{Path(__file__).parent / 'nocancel'}:{REPO}"}
_LABEL = re.compile(r'(\w+)="([^"]*)"')

__all__ = ["NOCANCEL", "PROFILE", "RunningGateway", "mark_warm", "run_gateway", "wait_for_instance"]


@dataclass
class RunningGateway(GatewayProcess):
    """A gateway process, its internal-token dir, and readers of its own /metrics page."""

    def metrics_text(self, timeout_s: float = 30.0) -> str:
        """The gateway's own /metrics page (internal token)."""
        r = httpx.get(f"{self.url}/metrics", headers=self.internal_headers, timeout=timeout_s)
        r.raise_for_status()
        return r.text

    def metric(self, sample: str, default: float | None = None) -> float:
        """One sample's value, by its exact name and labels as printed (``name`` or
        ``name{label="v"}``); ``default`` if absent (else AssertionError)."""
        name, _, rest = sample.partition("{")
        labels = dict(_LABEL.findall(rest))
        value = metric_sum(self.metrics_text(), name, **labels)
        if value is not None:
            return value
        if default is None:
            raise AssertionError(f"{sample} not in gateway metrics")
        return default


@contextmanager
def run_gateway(
    upstream_url: str,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    profile: Path = PROFILE,
) -> Iterator[RunningGateway]:
    """``python -m gateway --profile cpu`` against ``upstream_url``; stopped by process group."""
    with gatewayproc.run_gateway(upstream_url, port, env, profile) as gw:
        yield RunningGateway(server=gw.server, port=gw.port, env=gw.env, workdir=gw.workdir)


@contextmanager
def pair_gateway(
    first_url: str, second_url: str, routing: str, extra: Mapping[str, str] | None = None
) -> Iterator[RunningGateway]:
    """One gateway in front of two engines with ``GATEWAY_ROUTING=routing``, both marked warm
    (the replicas and KV-routing e2e tests differ only in the routing policy; ``extra``: more
    settings, e.g. the fleet's ``GATEWAY_STATE_URL``)."""
    env = {
        "GATEWAY_UPSTREAM_URLS": f"{first_url},{second_url}",
        "GATEWAY_ROUTING": routing,
        "GATEWAY_QUEUE_DEPTH": "64",
        **(extra or {}),
    }
    with run_gateway(first_url, env=env) as gw:
        gatewayproc.mark_all_warm(gw)
        yield gw
