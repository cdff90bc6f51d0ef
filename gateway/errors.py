"""OpenAI-shaped errors: one exception type, one JSON body, one place that picks status codes.

Every refusal the gateway makes (validation, auth, admission, engine state) is an ``OpenAIError``
so that clients written against the OpenAI API (and the official SDK's exception mapping) see
the shape they expect: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from protocol.engine_errors import engine_message

# OpenAI's ``type`` values for each status class (the SDK maps on status, humans read ``type``).
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
    504: "server_error",
}


@dataclass
class OpenAIError(Exception):
    """A refusal with everything needed to answer it: status, body fields and extra headers."""

    status: int
    message: str
    code: str | None = None
    param: str | None = None
    type: str | None = None
    retry_after: int | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)
        if self.type is None:
            self.type = _TYPES.get(self.status, "invalid_request_error")

    def payload(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return json.dumps(self.payload(), separators=(",", ":")).encode()

    def sse_event(self) -> bytes:
        """The terminal SSE event for an error that happens after the stream has started."""
        return b"data: " + self.body() + b"\n\ndata: [DONE]\n\n"

    def with_headers(self, extra: Mapping[str, str]) -> OpenAIError:
        """A copy with more headers (an error is never changed after it is raised)."""
        return dataclasses.replace(self, headers={**self.headers, **extra})

    def header_list(self) -> list[tuple[bytes, bytes]]:
        out = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        if self.retry_after is not None:
            out.append((b"retry-after", str(self.retry_after).encode()))
        return out


class RateLimited(OpenAIError):
    """The 429, whoever refuses (admission: cap, queue, per-key concurrency; tenancy: rpm/tpm).

    Built by ``rate_limited`` only: ``Retry-After`` when waiting helps, and the
    ``x-ratelimit-*`` headers that explain the refusal, given as one dict (``limits``)."""


def rate_limited(
    message: str, code: str, *, retry_after: int | None, limits: Mapping[str, str]
) -> RateLimited:
    return RateLimited(429, message, code=code, retry_after=retry_after, headers=dict(limits))


def request_limits(limit: int, remaining: int, reset_s: int) -> dict[str, str]:
    """``x-ratelimit-*-requests`` (OpenAI's names; the reset as ``"<n>s"``)."""
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": f"{reset_s}s",
    }


ENGINE_DOWN_RETRY_S = 5


def engine_down(message: str = "the engine is not reachable") -> OpenAIError:
    """The 503 for "no engine answers": health, routing, the passthroughs, token counting."""
    return OpenAIError(503, message, code="engine_down", retry_after=ENGINE_DOWN_RETRY_S)


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, code=code, param=param)


def internal_error(request_id: bytes) -> OpenAIError:
    """The answer to an unexpected exception (logged with its traceback by whoever caught it)."""
    return OpenAIError(
        500,
        f"internal error in the gateway (request id {request_id.decode()}); it has been logged",
        code="internal_error",
    )


def reshape_engine_error(status: int, body: bytes) -> bytes:
    """An engine error answer in OpenAI's shape: vLLM sends ``"type": "BadRequestError"`` and an
    integer ``code``; clients of OpenAI expect ``type`` by status class and a string or null
    ``code``. The engine's message and ``param`` are kept."""
    param = None
    code = None
    try:
        data = json.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            param = err.get("param") if isinstance(err.get("param"), str) else None
            code = err.get("code") if isinstance(err.get("code"), str) else None
    except (ValueError, RecursionError):
        pass
    return OpenAIError(status, engine_message(body), code=code, param=param).body()
