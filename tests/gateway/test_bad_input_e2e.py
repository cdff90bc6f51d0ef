"""The bad-input corpus through the real gateway: a 4xx with OpenAI error JSON each, never a 5xx.

Reuses the validation corpus (bodies) and adds what only exists at the HTTP level: methods,
paths, body size, content-type noise, and auth on a keyed gateway.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.gateway.test_validation import BAD
from tests.support.gateway import RunningGateway

pytestmark = pytest.mark.engine
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


def assert_openai_error(r: httpx.Response) -> dict[str, Any]:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    return err


def test_corpus(gateway: RunningGateway) -> None:
    failures = []
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for name, kind, body, (status, code, param) in BAD:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = client.post(PATHS[kind], content=raw, headers={"content-type": "application/json"})
            try:
                err = assert_openai_error(r)
                assert (r.status_code, err["code"], err["param"]) == (status, code, param)
            except (AssertionError, ValueError, KeyError) as exc:
                failures.append(f"{name}: {r.status_code} {r.text[:200]} ({exc})")
    assert failures == []


def test_http_level_cases(gateway: RunningGateway) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        assert assert_openai_error(client.get("/v1/chat/completions"))["code"] == "bad_method"
        assert client.get("/v1/chat/completions").headers["allow"] == "POST"
        assert assert_openai_error(client.get("/v1/nope"))["code"] == "not_found"
        assert assert_openai_error(client.post("/v1/chat/completions"))["code"] == "invalid_json"
        big = b'{"model": "gemma-4-tiny", "prompt": "' + b"x" * (17 * 1024 * 1024) + b'"}'
        r = client.post("/v1/completions", content=big)
        assert r.status_code == 413 and assert_openai_error(r)["code"] == "request_too_large"
        r = client.post(
            "/v1/chat/completions", content=b"model=x", headers={"content-type": "text/plain"}
        )
        assert_openai_error(r)
        # A chat message the engine's template rejects is still a 4xx (from /tokenize).
        tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
        r = client.post(
            "/v1/chat/completions",
            json={"model": "gemma-4-tiny", "tools": tools, "max_tokens": 4,
                  "messages": [{"role": "user", "content": [{"type": "mystery", "x": 1}]}]},
        )  # fmt: skip
        assert 400 <= r.status_code < 500, r.text
        assert assert_openai_error(r)["param"] == "messages"
