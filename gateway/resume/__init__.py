"""A stream survives its engine: continue on another replica after the first byte (issue 24).

Before the first byte a failed replica is simply retried elsewhere (``service.py``). After it,
the client holds half an answer; this package lets a healthy replica finish it in the same
client stream, one concern a module:

- ``policy``: which streams are resumable (``GATEWAY_RESUME``, two replicas or more, Chat or
  Completions, one choice) and their state; the gateway asks the engine for token ids.
- ``transcript``: what the client received, kept as raw event bytes (one ``list.append`` a
  piece) and parsed only when a continuation is needed.
- ``continuation``: the continuation request per API, or why there can be none.
- ``rewrite``: the continuation's events as the original stream's (same id, created, model,
  choice index; one final usage).
- ``resumer``: the loop, at most ``GATEWAY_RESUME_MAX`` continuations, metrics, the terminal
  error when nothing can continue.

What differs per API is declared with it: ``Api.resume`` (``gateway/apis/chat.py``,
``completions.py``): its chunks' shape, whether token ids can stand in for the request, the
request continuing from text.

Responses and Messages streams are not continued: they end with their terminal error event as
before (their events carry output items and content-block indices a continuation would have to
renumber; documented in gateway/README.md).
"""

from gateway.resume.policy import RESUME_OFF, Resumable, ResumePolicy
from gateway.resume.resumer import Resumer, stream_failure

__all__ = ["RESUME_OFF", "Resumable", "ResumePolicy", "Resumer", "stream_failure"]
