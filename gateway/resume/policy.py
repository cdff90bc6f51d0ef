"""Which streams are resumable, decided once before the request is sent, and their state.

A stream is resumable when ``GATEWAY_RESUME=on``, the gateway has two replicas or more (with one
there is nowhere else to go, so nothing is kept), it is a Chat or Completions stream, and it
generates one sequence (``n`` = 1, one prompt): several choices interleave in one stream and
would have to be continued together. Everything that depends on what was generated (a tool call
under way, reasoning, top logprobs already sent) is decided at the break, by
``continuation.build``.

Token ids: unless the client set ``return_token_ids`` itself, the gateway asks the engine for
them (one member spliced into the body, like ``stream_options``) and the relay puts them back to
``null`` before the client sees the event (vLLM sends ``"token_ids":null`` when not asked, so the
client's bytes are the same either way). They are what makes a continuation exact: the tokenizer
does not round-trip generated text (measured on the tiny model: the text of 200 greedy tokens
re-tokenizes to 221 tokens, the first difference at token 14), and a greedy continuation from
re-tokenized text then diverges from the uninterrupted answer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from env.settings import GatewaySettings
from gateway.apis import APIS, Kind
from gateway.apis.base import Resume
from gateway.resume.transcript import Transcript

if TYPE_CHECKING:
    from gateway.request.validation import Final


@dataclass(frozen=True)
class ResumePolicy:
    """``GATEWAY_RESUME``, ``GATEWAY_RESUME_MAX``, ``GATEWAY_RESUME_COMMENT``."""

    enabled: bool = False
    max_continuations: int = 1
    comment: bool = False  # an SSE comment line where a continuation starts

    @classmethod
    def from_settings(cls, s: GatewaySettings) -> ResumePolicy:
        return cls(s.resume == "on", s.resume_max, s.resume_comment)


RESUME_OFF = ResumePolicy()


class Resumable:
    """One resumable stream: the body it was sent with, what its client received, and how
    many continuations it has had."""

    __slots__ = (
        "body", "continuations", "fmt", "kind", "max_tokens", "resumed_from", "strip_ids",
        "transcript",
    )  # fmt: skip

    def __init__(self, kind: Kind, body: bytes, max_tokens: int, strip_ids: bool) -> None:
        fmt = APIS[kind].resume
        assert fmt is not None, kind
        self.kind = kind
        self.fmt: Resume = fmt  # its chunks' shape, the continuations it allows
        self.body = body  # as forwarded (validated, defaults written), without the ids member
        self.max_tokens = max_tokens
        self.strip_ids = strip_ids  # the gateway asked for token ids: the client sees null
        self.transcript = Transcript()
        self.continuations = 0
        self.resumed_from: str | None = None  # the replicas it broke on, for the access log


def begin(
    policy: ResumePolicy, kind: Kind, final: Final, replicas: int
) -> tuple[Final, Resumable | None]:
    """The body to send and the stream's resume state (None: not resumable, nothing kept)."""
    if not (
        policy.enabled and policy.max_continuations > 0 and replicas >= 2 and final.stream
        and final.sequences == 1 and APIS[kind].resume is not None
    ):  # fmt: skip
        return final, None
    asked = b'"return_token_ids"' in final.body  # the client's choice, whatever its value
    state = Resumable(kind, final.body, final.max_tokens, strip_ids=not asked)
    if asked:
        return final, state
    at = final.body.index(b"{") + 1
    body = final.body[:at] + b'"return_token_ids":true,' + final.body[at:]
    return dataclasses.replace(final, body=body), state
