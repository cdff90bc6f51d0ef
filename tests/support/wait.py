"""Wait until something is true, where one slow or refused answer means "not yet", not a failure.

A "wait until" loop that polls an HTTP endpoint on a loaded 2-core machine meets answers that
take longer than the request's own timeout, and servers that are between processes: an
``httpx`` timeout or a network error (connection refused, reset) inside the loop is retried. Any
other exception (an assertion, a 4xx/5xx from ``raise_for_status``, a JSON error) is real and
propagates at once. The deadline bounds a hang; it is never an assertion about speed: when it
passes, the error says what was waited for, the last value seen and the last transport error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from bench.gatewayproc import NOT_YET

T = TypeVar("T")


def _timed_out(what: str, timeout_s: float, last: object, error: BaseException | None) -> str:
    text = f"not {what} after {timeout_s:g} s; last value: {last!r}"
    return text + (f"; last transport error: {error!r}" if error is not None else "")


def wait_until(probe: Callable[[], T], what: str, timeout_s: float, interval_s: float = 0.2) -> T:
    """Call ``probe`` until it returns a truthy value and return that value.

    A transport error or a timeout from ``probe`` is "not yet"; ``what`` names the condition in
    the error raised (``AssertionError``) when ``timeout_s`` passes first.
    """
    deadline = time.monotonic() + timeout_s
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            last = probe()
            if last:
                return last
        except NOT_YET as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(what, timeout_s, last, error))
        time.sleep(interval_s)


async def wait_until_async(
    probe: Callable[[], Awaitable[T]], what: str, timeout_s: float, interval_s: float = 0.2
) -> T:
    """``wait_until`` for an event loop: ``probe`` is awaited, the pause does not block."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            last = await probe()
            if last:
                return last
        except NOT_YET as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(what, timeout_s, last, error))
        await asyncio.sleep(interval_s)
