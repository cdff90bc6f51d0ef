"""A gateway build that never cancels on a client disconnect: for proving tests can fail.

Put this directory first on ``PYTHONPATH`` of a gateway process (``run_gateway(env=NOCANCEL)``):
Python imports ``sitecustomize`` at start-up, and this one makes ``DisconnectGuard`` ignore
``http.disconnect``, so the gateway keeps its upstream request running for a gone client, as it
would without the guard. Test support only: the product has no such setting.
"""

import asyncio

from gateway.edge import asgi


async def _never(self: asgi.DisconnectGuard, receive: object) -> None:
    await asyncio.sleep(3600)


asgi.DisconnectGuard._run = _never  # type: ignore[method-assign]
