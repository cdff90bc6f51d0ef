"""Internal endpoints (internal token): the warm-up handshake and the replicas' drain controls.

``/internal/warmup`` (``gateway/handshake.py`` is the contract both sides import): GET returns
the serving state (``?instance=ID``: that engine instance's replica); POST reports a warm-up
result for a named engine instance, applied to the replica running it, and is refused with 409
``stale_engine_instance`` when no replica runs it any more (it restarted since the warm-up began:
the new process has not been warmed).

``/internal/replicas``: GET lists every replica (state, instance, drain flag, in-flight, served);
``POST /internal/replicas/{name}/drain`` takes one out of rotation (its requests finish; poll GET
until its ``inflight`` is 0, then it is safe to stop), ``.../undrain`` puts it back.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote

from gateway import handshake
from gateway.asgi import read_body, send_error, send_json
from gateway.auth import Access
from gateway.errors import OpenAIError
from gateway.health import StaleInstance
from gateway.metrics import GatewayMetrics
from gateway.replicas import ReplicaNotFound, ReplicaSet
from gateway.types import Receive, Scope, Send

REPLICAS_PATH = "/internal/replicas"


class _Internal:
    def __init__(self, access: Access, replicas: ReplicaSet, metrics: GatewayMetrics) -> None:
        self.access = access
        self.replicas = replicas
        self.metrics = metrics

    def _check_token(self, scope: Scope) -> None:
        if not self.access.is_internal(scope["headers"]):
            self.metrics.reject("auth")
            raise OpenAIError(401, "internal endpoint: bearer internal token required",
                              code="invalid_internal_token")  # fmt: skip


class Warmup(_Internal):
    async def get(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self._check_token(scope)
            query = parse_qs((scope.get("query_string") or b"").decode("latin-1"))
            instance = (query.get("instance") or [None])[0]
            if instance is None:
                snap = self.replicas.health()
                if len(self.replicas.replicas) == 1:
                    snap = self.replicas.replicas[0].health.snapshot()
                await send_json(send, 200, {**snap.as_dict(), **self.replicas.describe()})
                return
            found = self.replicas.instance_state(instance)
            if found is None:
                raise OpenAIError(404, f"no replica runs engine instance {instance}",
                                  code="unknown_engine_instance", param="instance")  # fmt: skip
        except OpenAIError as err:
            await send_error(send, err)
            return
        await send_json(send, 200, found.as_dict())

    async def post(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self._check_token(scope)
            report = handshake.parse_report(await read_body(scope, receive, handshake.BODY_MAX))
            try:
                snap = self.replicas.report_warmup(
                    report.instance, report.status, report.step, report.detail
                )
            except StaleInstance as exc:
                raise OpenAIError(409, str(exc), code="stale_engine_instance",
                                  param="engine_instance") from None  # fmt: skip
        except OpenAIError as err:
            await send_error(send, err)
            return
        await send_json(send, 200, snap.as_dict())


class Replicas(_Internal):
    """``GET /internal/replicas`` and ``POST /internal/replicas/{name}/drain|undrain``."""

    async def list(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self._check_token(scope)
        except OpenAIError as err:
            await send_error(send, err)
            return
        await send_json(send, 200, self.replicas.describe())

    async def action(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self._check_token(scope)
            rest = scope["path"][len(REPLICAS_PATH) + 1 :]
            name, _, verb = rest.rpartition("/")
            if verb not in ("drain", "undrain") or not name:
                raise OpenAIError(404, f"no route {scope['path']} (POST .../{{name}}/drain or "
                                  "undrain)", code="not_found")  # fmt: skip
            try:
                r = self.replicas.set_draining(unquote(name), verb == "drain")
            except ReplicaNotFound:
                known = ", ".join(r.name for r in self.replicas.replicas)
                raise OpenAIError(404, f"no replica {unquote(name)!r} (replicas: {known})",
                                  code="unknown_replica", param="name") from None  # fmt: skip
        except OpenAIError as err:
            await send_error(send, err)
            return
        await send_json(send, 200, r.as_dict())
