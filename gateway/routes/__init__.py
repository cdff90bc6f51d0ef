"""Route table: exact path -> method -> raw ASGI handler."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from gateway.routes.health import health, livez, metrics
from gateway.routes.internal import warmup_get, warmup_post
from gateway.routes.openai import CompletionsEndpoint, Passthrough

if TYPE_CHECKING:
    from gateway.app import Gateway, Handler


def build_routes(gw: Gateway) -> dict[str, dict[str, Handler]]:
    return {
        "/v1/chat/completions": {"POST": CompletionsEndpoint(gw, "chat", "/v1/chat/completions")},
        "/v1/completions": {"POST": CompletionsEndpoint(gw, "completions", "/v1/completions")},
        "/v1/models": {"GET": Passthrough(gw, "GET", "/v1/models", "models")},
        "/tokenize": {"POST": Passthrough(gw, "POST", "/tokenize", "tokenize")},
        "/detokenize": {"POST": Passthrough(gw, "POST", "/detokenize", "detokenize")},
        "/health": {"GET": partial(health, gw)},
        "/livez": {"GET": partial(livez, gw)},
        "/metrics": {"GET": partial(metrics, gw)},
        "/internal/warmup": {"GET": partial(warmup_get, gw), "POST": partial(warmup_post, gw)},
    }
