"""Gateway fixtures: one warmed gateway process in front of the session's real CPU engine.

Its in-flight cap and queue are small on purpose (4 and 4) so that overload and queueing
behaviour shows up with a handful of requests instead of hundreds on a 2-core machine. The
engine-metrics age limit is the product default: the fail-closed stale-metrics hold is part of
what these tests run through.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from protocol.prometheus import metric_sum
from tests.support.engine import Engine
from tests.support.gateway import RunningGateway, mark_warm, run_gateway
from tests.support.redis import RedisServer

SMALL = {
    "GATEWAY_MAX_INFLIGHT": "4",
    "GATEWAY_QUEUE_DEPTH": "4",
    "GATEWAY_QUEUE_TIMEOUT_S": "60",
    "GATEWAY_QUEUE_KEEPALIVE_S": "0.5",
}


@pytest.fixture(scope="session")
def gateway(engine: Engine) -> Iterator[RunningGateway]:
    with run_gateway(engine.url, env=SMALL) as gw:
        mark_warm(gw)
        yield gw


def engine_metric(engine_url: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples on the engine's /metrics (optionally filtered by labels)."""
    text = httpx.get(f"{engine_url}/metrics", timeout=30).text
    return metric_sum(text, name, **labels) or 0.0


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session (tests that stop it start it again)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_server(redis_session: RedisServer) -> RedisServer:
    """The session's redis-server, running and emptied for each module. Why: the gateways keep
    their buckets by a key's label (``gw:rl:<label>/requests``), and modules use the same labels:
    a CI run's workers test found the ``rpm10`` bucket that the state test had spent 30 s before
    (5 of its 10 requests had come back by then, and 5 were admitted)."""
    if not redis_session.ping():
        redis_session.start()
    redis_session.flush()
    return redis_session
