"""The gateway shuts down when asked, even after a busy spell with its engine gone.

On Python 3.11 ``asyncio.wait_for`` returns the awaited outcome and drops a cancel that arrives
in the same loop turn. The monitor's connect went through it: a gateway stopping after its
event loop had been busy for a while, with the engine gone (every poll a refused connect), lost
the cancel of its metrics monitor in a refused connect; the monitor polled on and the shutdown
waited for it forever (seen as a 30 s lifespan timeout in the route tests on a loaded machine;
for a user: a SIGTERM that never finishes until the orchestrator kills the gateway). Real
sockets on loopback: the race is in asyncio's connect path.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.edge.app import GatewayApp
from tests.gateway.test_routes import Lifespan, make_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def running_app(tmp_path: Path) -> AsyncIterator[GatewayApp]:
    """The app started, stopped at teardown: the lifespan's exit waits at most 30 s for
    ``lifespan.shutdown.complete``, or the teardown fails."""
    app = make_app(tmp_path, keyed=True)  # its upstream refuses every connection
    async with Lifespan(app):
        yield app


@pytest.mark.parametrize("busy_s", [1.0, 2.5])
async def test_shutdown_completes_after_a_busy_spell_with_the_engine_gone(
    running_app: GatewayApp, busy_s: float
) -> None:
    assert running_app.components is not None
    time.sleep(busy_s)  # the loop is busy: poll timers, connect outcomes and the cancel meet
