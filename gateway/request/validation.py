"""Request validation: raw body -> normalised request, or an ``OpenAIError`` naming the field.

Why before the engine: a bad request that reaches the engine costs a slot, a tokenizer pass and
sometimes a compile (TPU), and its error comes back in whatever shape the engine picks. Here
every refusal is a 4xx in OpenAI's error shape, decided in microseconds, with the offending
parameter named.

Two pure phases so that the only I/O (counting prompt tokens with the engine's ``/tokenize``)
happens between them and only when needed:

1. ``parse(kind, raw, policy)``: JSON, types, model, media counts, TPU hygiene. It also bounds
   the prompt's token count from above without tokenizing (every byte-level BPE token covers at
   least one byte of the rendered prompt, and the rendered prompt is no longer than the JSON body
   plus the template's fixed overhead), so short requests skip the count entirely.
2. ``finalize(parsed, prompt_tokens, policy)``: context-length and streaming policy with the real
   count, the default ``max_tokens``, and the body bytes to forward (the original bytes when
   nothing changed: no re-serialisation on the common path).

Streamed chat and completions always ask the engine for the final usage chunk (per-key token
accounting settles from it): ``stream_options.include_usage`` is added when the client did not
set it (spliced into the raw bytes when nothing else changed) and ``Final.strip_usage`` tells the
relay to drop that chunk again before the client sees it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from gateway.apis import APIS, Api, Kind
from gateway.errors import bad_request
from gateway.request.policy import (
    Policy,
    check_media,
    check_model,
    completion_bounds,
    count_media,
    tpu_hygiene,
)
from gateway.request.schema import CompletionRequest, error_from

__all__ = ["Final", "Kind", "Parsed", "Policy", "finalize", "needs_count", "parse"]

# Fixed template overhead bound for a chat prompt (BOS, turn markers, generation prompt,
# a thinking-mode system turn): generous, since undercounting only costs a /tokenize call.
CHAT_TEMPLATE_SLACK = 256


@dataclass
class Parsed:
    """Outcome of phase 1."""

    api: Api
    body: dict[str, Any]
    raw: bytes
    stream: bool
    max_tokens: int | None  # as sent (max_completion_tokens wins over max_tokens)
    prompt_upper_bound: int | None  # None: cannot bound without tokenizing (tools, media)
    exact_prompt_tokens: int | None = None  # token-id prompts are counted by length
    truncate_prompt_tokens: int | None = None
    stripped: list[str] = field(default_factory=list)
    modified: bool = False
    force_usage: bool = False  # add stream_options.include_usage (the client did not ask)
    sequences: int = 1  # prompts x n: the completions the engine will generate

    @property
    def model(self) -> object:
        return self.body.get("model")

    @property
    def max_tokens_param(self) -> str:
        """The parameter the client set (or would set) for the generation length."""
        return self.api.max_tokens_param(self.body)

    @property
    def kind(self) -> Kind:
        return self.api.kind


@dataclass
class Final:
    """Outcome of phase 2: what to forward."""

    body: bytes
    stream: bool
    max_tokens: int
    prompt_tokens: int | None  # None when the count was skipped (provably short)
    stripped: list[str]
    prompt_bound: int = 0  # the count, else its upper bound: what rate limits reserve
    strip_usage: bool = False  # drop the usage chunk the gateway asked for (relay)
    sequences: int = 1


# -- phase 1 ---------------------------------------------------------------------------------


def parse(kind: Kind, raw: bytes, policy: Policy) -> Parsed:
    """The body checked against the schema (types, ranges, cross-field rules) and the policy
    (model, media, TPU hygiene), with the prompt's token count bounded from above.

    The body size is not checked here: ``asgi.read_body`` refuses an oversized body while it is
    still arriving (413), the one place that limit lives.
    """
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", None, "invalid_json") from None
    except RecursionError:
        raise _too_deep() from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", None, "invalid_type")
    check_model(body, policy)
    api = APIS[kind]
    try:
        req: Any = api.schema.model_validate(body)
    except ValidationError as exc:
        raise error_from(exc) from None
    except RecursionError:
        raise _too_deep() from None

    exact = None
    if isinstance(req, CompletionRequest):
        media: dict[str, int] = {}
        upper, exact = completion_bounds(req.prompt)
    else:
        media = count_media(req)
        # Tools and documents are re-rendered by the template, media expand to many tokens.
        extra = req.tools or getattr(req, "documents", None) or getattr(req, "chat_template", None)
        upper = None if extra or any(media.values()) else len(raw) + CHAT_TEMPLATE_SLACK
    check_media(media, policy)

    parsed = Parsed(
        api, body, raw, bool(req.stream), req.effective_max_tokens, upper, exact,
        getattr(req, "truncate_prompt_tokens", None),
    )  # fmt: skip
    if policy.tpu:
        parsed.stripped = tpu_hygiene(body, policy)
        parsed.modified = bool(parsed.stripped)
    prompts = 1
    if isinstance(req, CompletionRequest) and isinstance(req.prompt, list):
        prompts = len(req.prompt) if isinstance(req.prompt[0], str | list) else 1
    parsed.sequences = prompts * (getattr(req, "n", None) or 1)
    if req.stream and api.stream_options:
        options = body.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage") is True):
            parsed.force_usage = True
            # Continuous usage (in every chunk) only ever came with include_usage: keep it off.
            body["stream_options"] = {**(options or {}), "include_usage": True}
            if isinstance(options, dict) and options.get("continuous_usage_stats"):
                body["stream_options"]["continuous_usage_stats"] = False
            parsed.modified = parsed.modified or options is not None
    return parsed


def needs_count(parsed: Parsed, policy: Policy) -> bool:
    """Whether the prompt must be tokenized: only when its upper bound could break a rule."""
    if parsed.exact_prompt_tokens is not None:
        return False
    upper = parsed.prompt_upper_bound
    if upper is None:
        return True
    gen = parsed.max_tokens if parsed.max_tokens is not None else policy.default_max_tokens
    return (
        upper > policy.prompt_limit
        or upper + gen > policy.max_model_len
        or (not parsed.stream and upper > policy.stream_required_prompt_tokens)
    )


# -- phase 2 ---------------------------------------------------------------------------------


def finalize(parsed: Parsed, prompt_tokens: int | None, policy: Policy) -> Final:
    counted = prompt_tokens if prompt_tokens is not None else parsed.exact_prompt_tokens
    if counted is not None and parsed.truncate_prompt_tokens not in (None, -1):
        counted = min(counted, parsed.truncate_prompt_tokens)
    # For the default and the checks below, a skipped count is replaced by its upper bound,
    # which by construction (needs_count) passes every rule.
    known = counted if counted is not None else (parsed.prompt_upper_bound or 0)
    prompt_param = parsed.api.prompt_field
    mt_param = parsed.max_tokens_param
    limit = policy.max_model_len

    if known > policy.prompt_limit:
        raise bad_request(
            f"the prompt has {known} tokens; this deployment accepts at most "
            f"{policy.prompt_limit} prompt tokens (context length {limit} minus the "
            "generation buffer)",
            prompt_param,
            "context_length_exceeded",
        )

    max_tokens = parsed.max_tokens
    if max_tokens is None:
        max_tokens = min(policy.default_max_tokens, limit - known)
        if max_tokens < 1:
            raise bad_request(
                f"the prompt has {known} tokens and leaves no room to generate within the "
                f"context length {limit}",
                prompt_param,
                "context_length_exceeded",
            )
        parsed.body[parsed.api.max_tokens_field] = max_tokens
        parsed.modified = True
    elif known + max_tokens > limit:
        raise bad_request(
            f"the prompt has {known} tokens and {mt_param} is {max_tokens}: "
            f"{known + max_tokens} exceeds the context length {limit}; set {mt_param} to at most "
            f"{max(0, limit - known)}",
            mt_param,
            "context_length_exceeded",
        )

    if not parsed.stream:
        if max_tokens > policy.stream_required_max_tokens:
            raise bad_request(
                f"requests with {mt_param} above {policy.stream_required_max_tokens} must set "
                f'"stream": true (got {mt_param}={max_tokens}): long non-streaming requests '
                "time out in clients and proxies and get retried",
                "stream",
                "stream_required",
            )
        if known > policy.stream_required_prompt_tokens:
            raise bad_request(
                f"requests with prompts above {policy.stream_required_prompt_tokens} tokens "
                f'must set "stream": true (the prompt has {known} tokens)',
                "stream",
                "stream_required",
            )

    out = parsed.raw
    if parsed.modified:
        out = json.dumps(parsed.body, separators=(",", ":"), ensure_ascii=False).encode()
    elif parsed.force_usage:  # no stream_options in the body: one more member, bytes spliced
        at = out.index(b"{") + 1
        out = out[:at] + b'"stream_options":{"include_usage":true},' + out[at:]
    return Final(
        out, parsed.stream, max_tokens, counted, parsed.stripped, known, parsed.force_usage,
        parsed.sequences,
    )  # fmt: skip


def _too_deep() -> Exception:
    return bad_request(
        f"request body is nested too deeply (the limit is about {sys.getrecursionlimit()} "
        "levels)", None, "invalid_json",
    )  # fmt: skip
