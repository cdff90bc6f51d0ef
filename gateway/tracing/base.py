"""What the completion service sees of tracing: a request trace and its steps, and the free one.

With tracing off every request's trace is ``NOOP_TRACE``, chosen once at start-up: each step is
an attribute lookup and one shared no-op context manager, and nothing is done per streamed chunk
(the relay span, when there is one, is filled in once when the stream ends from the counts the
relay keeps anyway). This module imports nothing from OpenTelemetry, so a gateway without
tracing never loads it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

Attr = str | bool | int | float | list[str]


class Step(Protocol):
    """What a step of the service may say about itself."""

    recording: bool  # False: attributes are dropped (compute costly ones only when True)

    def set(self, key: str, value: Attr) -> None: ...

    def error(self, what: BaseException | str) -> None: ...

    def forward(self, lines: bytes) -> bytes:
        """``lines`` (header lines for the engine) carrying this span's trace context."""
        ...


class RequestTrace(Protocol):
    """One request's trace, as the service uses it (``NOOP_TRACE`` when tracing is off)."""

    def step(self, name: str) -> AbstractContextManager[Step]: ...

    def attempt(self, replica: str, number: int, reason: str) -> AbstractContextManager[Step]:
        """An upstream attempt: ``reason`` is ``first``, ``failover`` or ``resume``."""
        ...

    @property
    def recording(self) -> bool:
        """False: spans and attributes are dropped (build costly attributes only when True)."""
        ...

    def relayed(self, seconds: float, attrs: dict[str, Attr]) -> None:
        """The relay of the current attempt's answer, just ended (a child of the attempt):
        recorded once afterwards, so the stream itself carries no tracing work."""
        ...

    def done(self, name: str, seconds: float, attrs: dict[str, Attr]) -> None:
        """A step that ended just now and lasted ``seconds`` (a wait known only afterwards)."""
        ...

    def end(self, status: int) -> None: ...


class _NoStep:
    __slots__ = ()
    recording = False

    def set(self, key: str, value: Attr) -> None:
        pass

    def error(self, what: BaseException | str) -> None:
        pass

    def forward(self, lines: bytes) -> bytes:
        return lines

    def __enter__(self) -> _NoStep:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NO_STEP = _NoStep()


class NoTrace:
    """Tracing off: every method returns the one shared no-op step."""

    __slots__ = ()

    def step(self, name: str) -> _NoStep:
        return _NO_STEP

    def attempt(self, replica: str, number: int, reason: str) -> _NoStep:
        return _NO_STEP

    recording = False

    def relayed(self, seconds: float, attrs: dict[str, Attr]) -> None:
        pass

    def done(self, name: str, seconds: float, attrs: dict[str, Attr]) -> None:
        pass

    def end(self, status: int) -> None:
        pass


NOOP_TRACE = NoTrace()
