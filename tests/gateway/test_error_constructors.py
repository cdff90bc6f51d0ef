"""One place per error: the 429 and the 503 ``engine_down`` each have one constructor
(``gateway.errors``), and an error is never changed after it is raised."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from gateway.admission.core import Rejected
from gateway.errors import RateLimited, engine_down, rate_limited, request_limits
from gateway.upstream.relay import upstream_error

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


def test_no_429_or_engine_down_is_built_outside_its_constructor() -> None:
    built = re.compile(r"OpenAIError\(\s*429|code=\"engine_down\"")
    offenders = [
        str(p.relative_to(GATEWAY))
        for p in GATEWAY.rglob("*.py")
        if p.name != "errors.py" and built.search(p.read_text())
    ]
    assert offenders == []


def test_the_429_carries_retry_after_and_the_rate_limit_headers() -> None:
    err = rate_limited("full", "queue_full", retry_after=3, limits=request_limits(8, 0, 3))
    assert isinstance(err, RateLimited) and Rejected is RateLimited and err.status == 429
    assert dict(err.header_list()) == {
        b"x-ratelimit-limit-requests": b"8",
        b"x-ratelimit-remaining-requests": b"0",
        b"x-ratelimit-reset-requests": b"3s",
        b"retry-after": b"3",
    }


def test_more_headers_make_a_copy() -> None:
    err = rate_limited("slow down", "rpm_limit", retry_after=None, limits={})
    more = err.with_headers({"x-ratelimit-limit-tokens": "10"})
    assert err.headers == {} and more.headers == {"x-ratelimit-limit-tokens": "10"}
    assert type(more) is RateLimited and more.body() == err.body()


def test_engine_down_is_one_503_whoever_finds_it() -> None:
    connect = httpx.ConnectError("refused")
    for err in (engine_down(), upstream_error(connect), upstream_error(connect, counting=True)):
        assert (err.status, err.code, err.retry_after) == (503, "engine_down", 5)
    slow = upstream_error(httpx.ReadTimeout("slow"), counting=True)
    assert (slow.status, slow.code) == (503, "tokenize_timeout")
