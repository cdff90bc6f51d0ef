"""Route table, built from the live components: exact paths (one dict lookup on the token path)
plus the few ``/prefix/{id}`` routes."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.apis import APIS
from gateway.components import Components
from gateway.handshake import PATH as WARMUP_PATH
from gateway.routes.health import Health, Metrics, livez
from gateway.routes.internal import REPLICAS_PATH, Replicas, Warmup
from gateway.routes.openai import CompletionsRoute, ModelRoute, Passthrough
from gateway.types import Handler


@dataclass(frozen=True)
class Routes:
    exact: dict[str, dict[str, Handler]]
    prefixed: list[tuple[str, dict[str, Handler]]]  # (prefix ending in "/", methods)
    guarded: frozenset[Handler]  # handlers that answer their own unexpected errors


def build_routes(c: Components) -> Routes:
    limit = c.policy.max_body_bytes
    timeout = c.config.settings.tokenize_timeout_s

    def passthrough(method: str, path: str | None, route: str) -> Passthrough:
        control = c.replicas.control
        return Passthrough(method, path, route, control, c.access, c.metrics, limit, timeout)

    generation = {
        api.path: {
            "POST": CompletionsRoute(api, c.completions, c.access, c.metrics, limit, c.access_log)
        }
        for api in APIS.values()
    }
    warmup = Warmup(c.access, c.replicas, c.metrics)
    replicas = Replicas(c.access, c.replicas, c.metrics)
    exact: dict[str, dict[str, Handler]] = {
        **generation,
        "/v1/messages/count_tokens": {"POST": passthrough("POST", None, "count_tokens")},
        "/v1/models": {"GET": passthrough("GET", "/v1/models", "models")},
        "/tokenize": {"POST": passthrough("POST", "/tokenize", "tokenize")},
        "/detokenize": {"POST": passthrough("POST", "/detokenize", "detokenize")},
        "/health": {"GET": Health(c.replicas, c.metrics)},
        "/livez": {"GET": livez},
        "/metrics": {"GET": Metrics(c.access, c.metrics)},
        WARMUP_PATH: {"GET": warmup.get, "POST": warmup.post},
        REPLICAS_PATH: {"GET": replicas.list},
    }
    prefixed: list[tuple[str, dict[str, Handler]]] = [
        # GET /v1/responses/{id}, POST /v1/responses/{id}/cancel: the engine's stored responses
        ("/v1/responses/", {"GET": passthrough("GET", None, "responses_get"),
                            "POST": passthrough("POST", None, "responses_cancel")}),
        ("/v1/models/", {"GET": ModelRoute(c.replicas.control, c.access, c.metrics, timeout)}),
        (REPLICAS_PATH + "/", {"POST": replicas.action}),
    ]  # fmt: skip
    guarded = frozenset(h for methods in generation.values() for h in methods.values())
    return Routes(exact, prefixed, guarded)
