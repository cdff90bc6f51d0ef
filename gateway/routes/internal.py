"""The warm-up handshake (``/internal/warmup``), authenticated by the internal token.

Contract (see the warm-up README): GET returns the serving state; POST reports a warm-up result
for a named engine instance and is refused with 409 ``stale_engine_instance`` when the engine
restarted since the warm-up began, because the new process has not been warmed.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from gateway.asgi import Receive, Scope, Send, read_body, send_error, send_json
from gateway.errors import OpenAIError, bad_request
from gateway.health import StaleInstance

if TYPE_CHECKING:
    from gateway.app import Gateway

_STATUSES = ("running", "passed", "failed")


def _check_token(gw: Gateway, scope: Scope) -> None:
    if not gw.is_internal(scope):
        gw.metrics.reject("auth")
        raise OpenAIError(401, "internal endpoint: bearer internal token required",
                          code="invalid_internal_token")  # fmt: skip


async def warmup_get(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    try:
        _check_token(gw, scope)
    except OpenAIError as err:
        await send_error(send, err)
        return
    await send_json(send, 200, gw.health.snapshot().as_dict())


async def warmup_post(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    try:
        _check_token(gw, scope)
        report = _parse_report(await read_body(scope, receive, 64 * 1024))
        try:
            snap = gw.health.report_warmup(**report)
        except StaleInstance as exc:
            raise OpenAIError(409, str(exc), code="stale_engine_instance",
                              param="engine_instance") from None  # fmt: skip
    except OpenAIError as err:
        await send_error(send, err)
        return
    await send_json(send, 200, snap.as_dict())


def _parse_report(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        raise bad_request("body is not valid JSON", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("body must be a JSON object", None, "invalid_type")
    instance = data.get("engine_instance")
    if not isinstance(instance, str) or not instance:
        raise bad_request("'engine_instance' must be a non-empty string", "engine_instance")
    status = data.get("status")
    if status not in _STATUSES:
        raise bad_request(f"'status' must be one of {', '.join(_STATUSES)}", "status")
    out: dict[str, Any] = {"instance": instance, "status": status}
    for key in ("step", "detail"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise bad_request(f"'{key}' must be a string or null", key)
        out[key] = value[:2000] if isinstance(value, str) else None
    return out
