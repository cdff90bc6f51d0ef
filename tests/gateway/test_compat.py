"""Byte compatibility of every route: today's answers, recorded, against the app as it is now.

The gateway moved from a hand-written ASGI router to FastAPI (issue 27). Clients must not see
the move: for a corpus of good and bad requests this test replays each one against the real app
(``create_app`` under its lifespan, in front of the synthetic upstream ``bench.synthetic``, a
deterministic stand-in for vLLM) and compares status, headers (minus ``date``) and body bytes
(SSE framing included) with ``compat_corpus.json``, which was recorded from the hand-written app
before the move. Only what changes by itself between two runs is masked: the synthetic
upstream's timestamps and ports, the engine instance, the gateway's own counters.

Re-record (only for a deliberate, reviewed change of behaviour):
``GATEWAY_COMPAT_RECORD=1 pytest tests/gateway/test_compat.py``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.overhead import synthetic_upstream
from env.settings import EngineSettings, GatewaySettings
from gateway.edge.app import create_app
from gateway.tenancy.auth import hash_key
from tests.gateway.test_routes import Lifespan
from tests.support.process import free_port

pytestmark = pytest.mark.anyio
FIXTURE = Path(__file__).with_name("compat_corpus.json")
KEY = "sk-compat-0123456789abcdef"
TIGHT = "sk-compat-tight-0123456789"  # rpm 1: its second request is a 429
MODEL = "gemma-4-tiny"
BODY_LIMIT = 64 * 1024
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 3}
COMP = {"model": MODEL, "prompt": "hello there", "max_tokens": 3}
STREAM = {"stream": True, "stream_options": {"include_usage": True}}

# What varies between two runs of the same app: masked in both the record and the replay.
_MASKS = [
    (re.compile(rb'"t": ?[0-9.e+-]+'), b'"t":0'),
    (re.compile(rb'"created": ?\d+'), b'"created":0'),
    (re.compile(rb'"created_at": ?\d+'), b'"created_at":0'),
    (re.compile(rb"127\.0\.0\.1:\d+"), b"127.0.0.1:PORT"),
    (re.compile(rb'"(engine_instance|instance)": ?"[^"]*"'), rb'"\1":"X"'),
    (re.compile(rb'"(served|since)": ?[0-9.e+-]+'), rb'"\1":0'),
    (re.compile(rb"current is [0-9.e+-]+"), b"current is X"),
]
_VARYING_HEADERS = {b"date", b"x-ratelimit-reset-requests", b"retry-after", b"x-ratelimit-reset"}

Req = tuple[str, str, str, dict[str, str], bytes]  # name, method, path, headers, body


def _j(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _auth(key: str = KEY, **more: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "content-type": "application/json", **more}


def corpus(internal: str) -> list[Req]:
    """The requests, in order (some depend on the previous: the 429, drain then undrain)."""
    a = _auth()
    i = {"authorization": f"Bearer {internal}"}
    return [
        ("chat", "POST", "/v1/chat/completions", a, _j(CHAT)),
        ("chat_stream", "POST", "/v1/chat/completions", a, _j({**CHAT, **STREAM})),
        ("chat_stream_no_usage", "POST", "/v1/chat/completions", a, _j({**CHAT, "stream": True})),
        ("chat_trailing_slash", "POST", "/v1/chat/completions/", a, _j(CHAT)),
        ("chat_engine_500", "POST", "/v1/chat/completions", a,
         _j({**CHAT, "synthetic": {"status": 500}})),
        ("chat_stream_engine_error", "POST", "/v1/chat/completions", a,
         _j({**CHAT, **STREAM, "synthetic": {"error_after": 1}})),
        ("chat_stream_engine_drop", "POST", "/v1/chat/completions", a,
         _j({**CHAT, **STREAM, "synthetic": {"drop_after": 1}})),
        ("completions", "POST", "/v1/completions", a, _j(COMP)),
        ("completions_stream", "POST", "/v1/completions", a, _j({**COMP, **STREAM})),
        ("chat_gzip", "POST", "/v1/chat/completions", {**a, "content-encoding": "gzip"},
         gzip.compress(_j(CHAT))),
        ("chat_no_max_tokens", "POST", "/v1/chat/completions", a,
         _j({"model": MODEL, "messages": [{"role": "user", "content": "x"}]})),
        ("responses", "POST", "/v1/responses", a, _j({"model": MODEL, "input": "hi",
                                                      "max_output_tokens": 3})),
        ("messages", "POST", "/v1/messages", a, _j({"model": MODEL, "max_tokens": 3,
                                                    "messages": [{"role": "user", "content": "x"}]})),
        ("messages_no_max_tokens", "POST", "/v1/messages", a,
         _j({"model": MODEL, "messages": [{"role": "user", "content": "x"}]})),
        ("no_key", "POST", "/v1/chat/completions", {"content-type": "application/json"}, _j(CHAT)),
        ("bad_key", "POST", "/v1/chat/completions", _auth("sk-wrong-key-0000"), _j(CHAT)),
        ("basic_auth", "POST", "/v1/completions", {"authorization": "Basic eDp5"}, _j(COMP)),
        ("invalid_json", "POST", "/v1/chat/completions", a, b"{"),
        ("not_an_object", "POST", "/v1/chat/completions", a, b"[1]"),
        ("empty_body", "POST", "/v1/chat/completions", a, b""),
        ("no_messages", "POST", "/v1/chat/completions", a, _j({"model": MODEL})),
        ("bad_max_tokens", "POST", "/v1/chat/completions", a, _j({**CHAT, "max_tokens": "10"})),
        ("negative_temperature", "POST", "/v1/chat/completions", a,
         _j({**CHAT, "temperature": -1})),
        ("bad_content_part", "POST", "/v1/chat/completions", a,
         _j({**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]})),
        ("wrong_model", "POST", "/v1/chat/completions", a, _j({**CHAT, "model": "gpt-4"})),
        ("prompt_int", "POST", "/v1/completions", a, _j({"model": MODEL, "prompt": 5})),
        ("too_large", "POST", "/v1/completions", a, b"x" * (BODY_LIMIT + 1)),
        ("brotli", "POST", "/v1/chat/completions", {**a, "content-encoding": "br"}, b"x"),
        ("corrupt_gzip", "POST", "/v1/chat/completions", {**a, "content-encoding": "gzip"},
         b"not gzip"),
        ("tight_1", "POST", "/v1/completions", _auth(TIGHT), _j(COMP)),
        ("tight_2_rate_limited", "POST", "/v1/completions", _auth(TIGHT), _j(COMP)),
        ("models", "GET", "/v1/models", a, b""),
        ("models_slash", "GET", "/v1/models/", a, b""),
        ("model", "GET", f"/v1/models/{MODEL}", a, b""),
        ("model_unknown", "GET", "/v1/models/nope", a, b""),
        ("models_no_key", "GET", "/v1/models", {}, b""),
        ("tokenize", "POST", "/tokenize", a, _j({"model": MODEL, "prompt": "a b c"})),
        ("detokenize", "POST", "/detokenize", a, _j({"model": MODEL, "tokens": [1, 2]})),
        ("count_tokens", "POST", "/v1/messages/count_tokens", a, _j({"model": MODEL})),
        ("responses_get", "GET", "/v1/responses/resp_1", a, b""),
        ("responses_cancel", "POST", "/v1/responses/resp_1/cancel", a, b""),
        ("health", "GET", "/health", {}, b""),
        ("livez", "GET", "/livez", {}, b""),
        ("metrics_no_key", "GET", "/metrics", {}, b""),
        ("unknown_path", "GET", "/v1/nope", {}, b""),
        ("root", "GET", "/", {}, b""),
        ("get_chat", "GET", "/v1/chat/completions", a, b""),
        ("put_models", "PUT", "/v1/models", a, b""),
        ("head_health", "HEAD", "/health", {}, b""),
        ("delete_warmup", "DELETE", "/internal/warmup", i, b""),
        ("warmup_no_token", "GET", "/internal/warmup", {}, b""),
        ("warmup_api_key", "GET", "/internal/warmup", a, b""),
        ("warmup", "GET", "/internal/warmup", i, b""),
        ("warmup_unknown_instance", "GET", "/internal/warmup?instance=9.0", i, b""),
        ("warmup_post_bad_json", "POST", "/internal/warmup", i, b"["),
        ("warmup_post_bad_status", "POST", "/internal/warmup", i,
         _j({"engine_instance": "1.0", "status": "done"})),
        ("warmup_post_stale", "POST", "/internal/warmup", i,
         _j({"engine_instance": "1.0", "status": "passed"})),
        ("replicas_no_token", "GET", "/internal/replicas", {}, b""),
        ("replicas", "GET", "/internal/replicas", i, b""),
        ("replica_bad_verb", "POST", "/internal/replicas/r0/explode", i, b""),
        ("replica_unknown", "POST", "/internal/replicas/nope/drain", i, b""),
        ("replica_no_name", "POST", "/internal/replicas//drain", i, b""),
        ("replica_get_action", "GET", "/internal/replicas/nope/drain", i, b""),
        ("replica_action_no_token", "POST", "/internal/replicas/nope/drain", {}, b""),
    ]  # fmt: skip


def corpus_down(internal: str) -> list[Req]:
    """The same app with no engine behind it: the 503s."""
    a = _auth()
    return [
        ("down_chat", "POST", "/v1/chat/completions", a, _j(CHAT)),
        ("down_chat_stream", "POST", "/v1/chat/completions", a, _j({**CHAT, **STREAM})),
        ("down_models", "GET", "/v1/models", a, b""),
        ("down_model", "GET", f"/v1/models/{MODEL}", a, b""),
        ("down_tokenize", "POST", "/tokenize", a, _j({"model": MODEL, "prompt": "a"})),
        ("down_health", "GET", "/health", {}, b""),
        ("down_warmup", "GET", "/internal/warmup", {"authorization": f"Bearer {internal}"}, b""),
    ]


def _mask(body: bytes) -> bytes:
    for pattern, repl in _MASKS:
        body = pattern.sub(repl, body)
    return body


def _answer(r: httpx.Response) -> dict[str, Any]:
    headers = [
        [k.decode("latin-1"), "*" if k in _VARYING_HEADERS else v.decode("latin-1")]
        for k, v in r.headers.raw
        if k != b"date"
    ]
    body = _mask(r.content)
    if body != r.content:  # a masked value changes the length too
        headers = [[k, "*" if k == "content-length" else v] for k, v in headers]
    if r.headers.get("content-type", "").startswith("text/plain"):  # Prometheus: counters
        body = b"<metrics text>"
    return {"status": r.status_code, "headers": sorted(headers), "body": body.decode("latin-1")}


def _app(tmp_path: Path, upstream: str) -> Any:
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        "version: 1\nkeys:\n"
        f"  - key: {hash_key(KEY)}\n    label: main\n"
        f"  - key: {hash_key(TIGHT)}\n    label: tight\n    rpm: 1\n"
    )
    settings = GatewaySettings(
        internal_token_file=tmp_path / "token",
        upstream_url=upstream,
        api_keys_file=keys,
        health_poll_s=0.05,
        metrics_poll_s=0.05,
        max_body_bytes=BODY_LIMIT,
    )  # type: ignore[call-arg]
    return create_app(engine=EngineSettings.load("cpu"), settings=settings)


async def _replay(app: Any, requests: list[Req]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        for n, (name, method, path, headers, body) in enumerate(requests):
            h = {"x-request-id": f"compat-{n}", **headers}
            r = await c.request(method, path, headers=h, content=body or None)
            out[name] = _answer(r)
    return out


async def _mark_warm(app: Any, internal: dict[str, str]) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        for _ in range(200):
            state = (await c.get("/internal/warmup", headers=internal)).json()
            if state.get("engine_instance") and state["state"] != "engine_down":
                break
            await asyncio.sleep(0.05)
        report = {"engine_instance": state["engine_instance"], "status": "passed"}
        r = await c.post("/internal/warmup", json=report, headers=internal)
        assert r.json()["state"] == "ready", r.text
        for _ in range(100):  # the first metrics sample, so that admission is not held
            if (await c.get("/health")).status_code == 200:
                break
            await asyncio.sleep(0.05)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def answers(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    with synthetic_upstream(MODEL, 0.0, 0.0) as (url, _pid):
        (tmp_path / "up").mkdir()
        app = _app(tmp_path / "up", url)
        async with Lifespan(app):
            token = app.config.access.internal_token
            await _mark_warm(app, {"authorization": f"Bearer {token}"})
            await asyncio.sleep(0.2)  # a fresh engine-metrics sample (not stale)
            got = await _replay(app, corpus(token))
    (tmp_path / "down").mkdir()
    app = _app(tmp_path / "down", f"http://127.0.0.1:{free_port()}")
    async with Lifespan(app):
        got.update(await _replay(app, corpus_down(app.config.access.internal_token)))
    yield got


async def test_every_answer_is_byte_compatible_with_the_recording(answers: dict[str, Any]) -> None:
    if os.environ.get("GATEWAY_COMPAT_RECORD") == "1":
        FIXTURE.write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {len(answers)} answers into {FIXTURE.name}")
    recorded = json.loads(FIXTURE.read_text())
    assert sorted(answers) == sorted(recorded)
    different = [name for name in recorded if answers[name] != recorded[name]]
    for name in different:
        print(name, "\n  recorded:", recorded[name], "\n  now:     ", answers[name])
    assert not different, different
