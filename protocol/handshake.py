"""The warm-up handshake contract, one module for both sides (gateway and warm-up sidecar).

The gateway serves an engine instance only after the warm-up reported ``passed`` for that exact
instance. The sidecar GETs ``PATH`` for the serving state and POSTs a report: the engine
instance it warmed, a status, and optionally the step and a detail text (truncated to
``DETAIL_MAX`` by both sides). The gateway answers 409 ``stale_engine_instance`` when the report
names another instance than the one it sees. Both requests carry the internal token as a bearer.
Pure: no web stack, so the sidecar imports it without the gateway's server dependencies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

PATH = "/internal/warmup"
Status = Literal["running", "passed", "failed"]
STATUSES: tuple[str, ...] = get_args(Status)
DETAIL_MAX = 2000
BODY_MAX = 64 * 1024


class BadReport(ValueError):
    """A report body the gateway refuses: the message, the field it names and an error code
    (the gateway answers it as a 400 in OpenAI's error shape)."""

    def __init__(self, message: str, param: str | None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


@dataclass(frozen=True)
class Report:
    instance: str
    status: Status
    step: str | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The POST body the sidecar sends."""
        return {
            "engine_instance": self.instance,
            "status": self.status,
            "step": self.step,
            "detail": self.detail[:DETAIL_MAX] if self.detail else None,
        }


def parse_report(raw: bytes) -> Report:
    """The gateway's reading of a POST body; raises ``BadReport`` naming the field."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadReport("body is not valid JSON", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise BadReport("body must be a JSON object", None, "invalid_type")
    instance = data.get("engine_instance")
    if not isinstance(instance, str) or not instance:
        raise BadReport("'engine_instance' must be a non-empty string", "engine_instance")
    status = data.get("status")
    if status not in STATUSES:
        raise BadReport(f"'status' must be one of {', '.join(STATUSES)}", "status")
    texts: dict[str, str | None] = {}
    for key in ("step", "detail"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise BadReport(f"'{key}' must be a string or null", key)
        texts[key] = value[:DETAIL_MAX] if isinstance(value, str) else None
    return Report(instance, status, texts["step"], texts["detail"])
