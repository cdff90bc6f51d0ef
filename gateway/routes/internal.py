"""The warm-up handshake endpoint (``gateway/handshake.py`` is the contract both sides import).

GET returns the serving state; POST reports a warm-up result for a named engine instance and is
refused with 409 ``stale_engine_instance`` when the engine restarted since the warm-up began,
because the new process has not been warmed. Both need the internal token.
"""

from __future__ import annotations

from gateway import handshake
from gateway.asgi import read_body, send_error, send_json
from gateway.auth import Access
from gateway.errors import OpenAIError
from gateway.health import HealthTracker, StaleInstance
from gateway.metrics import GatewayMetrics
from gateway.types import Receive, Scope, Send


class Warmup:
    def __init__(self, access: Access, health: HealthTracker, metrics: GatewayMetrics) -> None:
        self.access = access
        self.health = health
        self.metrics = metrics

    def _check_token(self, scope: Scope) -> None:
        if not self.access.is_internal(scope["headers"]):
            self.metrics.reject("auth")
            raise OpenAIError(401, "internal endpoint: bearer internal token required",
                              code="invalid_internal_token")  # fmt: skip

    async def get(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self._check_token(scope)
        except OpenAIError as err:
            await send_error(send, err)
            return
        await send_json(send, 200, self.health.snapshot().as_dict())

    async def post(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self._check_token(scope)
            report = handshake.parse_report(await read_body(scope, receive, handshake.BODY_MAX))
            try:
                snap = self.health.report_warmup(
                    report.instance, report.status, report.step, report.detail
                )
            except StaleInstance as exc:
                raise OpenAIError(409, str(exc), code="stale_engine_instance",
                                  param="engine_instance") from None  # fmt: skip
        except OpenAIError as err:
            await send_error(send, err)
            return
        await send_json(send, 200, snap.as_dict())
