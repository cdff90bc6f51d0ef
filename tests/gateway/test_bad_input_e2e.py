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


def openai_error(r: httpx.Response) -> tuple[int, str | None, str | None]:
    """(status, code, param) of an OpenAI error answer; its shape checked on the way."""
    assert r.headers["content-type"] == "application/json", (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and err["type"] == "invalid_request_error", err
    return r.status_code, err["code"], err["param"]


def test_corpus(gateway: RunningGateway) -> None:
    failures = []
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for name, kind, body, expected in BAD:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = client.post(PATHS[kind], content=raw, headers={"content-type": "application/json"})
            try:
                assert openai_error(r) == expected
            except (AssertionError, ValueError, KeyError) as exc:
                failures.append(f"{name}: {r.status_code} {r.text[:200]} ({exc})")
    assert failures == []


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
BIG = b'{"model": "gemma-4-tiny", "prompt": "' + b"x" * (17 * 1024 * 1024) + b'"}'
# (name, method, path, body, extra headers, (status, code, param)); a body that is not bytes is
# sent as JSON.
HTTP_CASES: list[tuple[str, str, str, Any, dict[str, str], tuple[int, str, str | None]]] = [
    ("get on a POST route", "GET", "/v1/chat/completions", None, {}, (405, "bad_method", None)),
    ("put on a GET route", "PUT", "/v1/models", None, {}, (405, "bad_method", None)),
    ("unknown path", "GET", "/v1/nope", None, {}, (404, "not_found", None)),
    ("empty body", "POST", "/v1/chat/completions", b"", {}, (400, "invalid_json", None)),
    ("too large", "POST", "/v1/completions", BIG, {}, (413, "request_too_large", None)),
    # the body is what counts: a form body under text/plain is not JSON
    ("form body as text/plain", "POST", "/v1/chat/completions", b"model=x",
     {"content-type": "text/plain"}, (400, "invalid_json", None)),
    ("unsupported content-encoding", "POST", "/v1/chat/completions", b"{}",
     {"content-encoding": "br"}, (415, "unsupported_encoding", None)),
    # a chat message the engine's template rejects: the engine's 4xx from /tokenize, a 400
    ("template rejects the message", "POST", "/v1/chat/completions",
     {"model": "gemma-4-tiny", "tools": TOOLS, "max_tokens": 4,
      "messages": [{"role": "user", "content": [{"type": "mystery", "x": 1}]}]},
     {}, (400, "invalid_prompt", "messages")),
]  # fmt: skip


def test_http_level_cases(gateway: RunningGateway) -> None:
    failures = []
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        for name, method, path, body, headers, expected in HTTP_CASES:
            if body is not None and not isinstance(body, bytes):
                body = json.dumps(body).encode()
                headers = {"content-type": "application/json", **headers}
            r = client.request(method, path, content=body, headers=headers)
            try:
                assert openai_error(r) == expected
                if expected[1] == "bad_method":
                    allowed = "POST" if path != "/v1/models" else "GET"
                    assert r.headers["allow"] == allowed, r.headers
            except (AssertionError, ValueError, KeyError) as exc:
                failures.append(f"{name}: {r.status_code} {r.text[:200]} ({exc})")
    assert failures == []
