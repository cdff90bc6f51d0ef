"""Route table: exact path -> method -> raw ASGI handler, built from the live components."""

from __future__ import annotations

from gateway.components import Components
from gateway.handshake import PATH as WARMUP_PATH
from gateway.routes.health import Health, Metrics, livez
from gateway.routes.internal import Warmup
from gateway.routes.openai import CompletionsRoute, Passthrough
from gateway.types import Handler


def build_routes(c: Components) -> dict[str, dict[str, Handler]]:
    limit = c.policy.max_body_bytes
    timeout = c.config.settings.tokenize_timeout_s

    def completions(kind: str, path: str) -> CompletionsRoute:
        return CompletionsRoute(kind, path, c.completions, c.access, c.metrics, limit)  # type: ignore[arg-type]

    def passthrough(method: str, path: str, route: str) -> Passthrough:
        return Passthrough(method, path, route, c.control, c.access, c.metrics, limit, timeout)

    warmup = Warmup(c.access, c.health, c.metrics)
    return {
        "/v1/chat/completions": {"POST": completions("chat", "/v1/chat/completions")},
        "/v1/completions": {"POST": completions("completions", "/v1/completions")},
        "/v1/models": {"GET": passthrough("GET", "/v1/models", "models")},
        "/tokenize": {"POST": passthrough("POST", "/tokenize", "tokenize")},
        "/detokenize": {"POST": passthrough("POST", "/detokenize", "detokenize")},
        "/health": {"GET": Health(c.health, c.metrics)},
        "/livez": {"GET": livez},
        "/metrics": {"GET": Metrics(c.access, c.metrics)},
        WARMUP_PATH: {"GET": warmup.get, "POST": warmup.post},
    }
