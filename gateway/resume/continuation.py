"""The continuation request: go on from exactly where the client is, on another replica.

Three ways, the first that applies:

- **restart**: nothing was generated yet (the client has at most the role event): the original
  request again, as it was sent.
- **ids** (exact): vLLM sent the prompt's token ids and every generated token's (the gateway asks
  for them, ``policy.py``): ``POST /v1/completions`` with ``prompt`` = prompt ids + generated ids,
  the remaining ``max_tokens``, the same sampling parameters and seed. The engine then sees the
  very tokens it would have had, so a greedy continuation is the uninterrupted answer token for
  token. A chat request goes this way too (its chunks are rewritten back into chat chunks,
  ``rewrite.py``) unless the chat endpoint must do the work: media (the ids hold placeholders,
  not the images), ``tools`` (the tool-call parser) or ``logprobs`` (chat's format).

  The text needs care: it can lag its tokens (vLLM holds back an incomplete UTF-8 character, a
  possible stop string, and chat's parsers text that could start one of their markers, e.g. the
  "c" of "call:"), and vLLM never writes text held back before a prompt's end; a prompt that ends
  inside a character even makes it decode the whole prompt into the first event. So the
  continuation starts one or a few tokens earlier (``anchor``): before the latest event whose text
  began with whitespace after an event with text. Nothing can be held there (every marker and
  the rest of a character start otherwise), so the client's text since then (the anchor) is
  exactly what the regenerated tokens write; the rewriter drops them and their text and sends the
  rest. The cost is those tokens' decode steps in the switch gap (one in most text).

- **text**: chat: the original messages plus the partial assistant message,
  ``continue_final_message: true``, ``add_generation_prompt: false`` (vLLM's own fields; appended
  to the last message when the client itself prefilled one); completions: ``prompt`` + generated
  text. vLLM re-tokenizes that text, so token boundaries can differ from the original stream and
  a greedy continuation can diverge from the uninterrupted answer (never duplicated or missing
  text: the client has what it was sent, and the rest continues that text).

Never continued (``NotResumable``, the terminal error as without resume): ``n`` > 1 or several
prompts, ``echo``, top logprobs (the alternatives of a continuation are computed on another
context), structured output (a grammar restarts at the cut) and ``tool_choice`` required or
named (vLLM forces those with a grammar), a tool call under way, reasoning (thinking enabled, or
reasoning already sent: the partial message cannot hold it), a token-id prompt without the
generated ids. Sampling with ``temperature`` > 0 is continued, but not reproducibly: the
continuation's random stream starts afresh even with a ``seed``. A ``stop`` string that spans the
cut is not seen.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.apis import APIS
from gateway.resume.policy import Resumable
from gateway.resume.transcript import Delivered

COMPLETIONS_PATH = APIS["completions"].path
# What a completions continuation takes from the original request: vLLM's sampling parameters
# common to both APIs (the chat-only ones make a chat request go the text way, above).
SAMPLING = (
    "temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "stop", "stop_token_ids", "ignore_eos", "min_tokens", "logit_bias",
    "allowed_token_ids", "bad_words", "skip_special_tokens", "spaces_between_special_tokens",
    "include_stop_str_in_output", "length_penalty", "priority", "user", "cache_salt",
    "vllm_xargs",
)  # fmt: skip
_GUIDED = ("structured_outputs", "guided_json", "guided_regex", "guided_choice",
           "guided_grammar", "guided_decoding_backend")  # fmt: skip


class NotResumable(Exception):
    """This stream's output cannot be continued faithfully; ``reason`` names why (logged)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


MAX_LAG = 16  # characters the rewriter looks for when the anchor's text lagged after all
MAX_BACKOFF = 64  # events an ids continuation may go back for a clean boundary (else: all)


@dataclass(frozen=True)
class Continuation:
    path: str
    body: bytes
    strategy: str  # "restart", "ids" or "text"
    prompt_tokens: int | None  # the original prompt's tokens, when known exactly
    delivered: int  # generated tokens the client already has
    start: int = 0  # generated tokens in the continuation's prompt (ids: <= delivered)
    anchor: str | None = None  # ids: the client's text for tokens start..delivered-1
    regenerated: tuple[int, ...] = ()  # ids: those tokens, which the continuation repeats

    @property
    def via_completions(self) -> bool:
        """Its stream is /v1/completions' whatever the client's API (token ids)."""
        return self.strategy == "ids"


@dataclass(frozen=True)
class Finished:
    """The generation had ended (its finish reason sent, or the budget spent): no engine is
    needed, the gateway writes the end of the stream."""

    finish_reason: str | None  # None: not sent yet ("length": the budget is spent)
    prompt_tokens: int | None
    delivered: int


def build(
    state: Resumable, delivered: Delivered, prompt_tokens: int | None
) -> Continuation | Finished:
    """``prompt_tokens``: the gateway's own count of the original prompt, if it made one."""
    api, fmt = APIS[state.kind], state.fmt
    try:
        body = json.loads(state.body)
    except (ValueError, RecursionError):
        raise NotResumable("unparsable body") from None
    _check(body, delivered, fmt.alternatives(body))
    known = len(delivered.prompt_ids) if delivered.prompt_ids is not None else prompt_tokens
    if delivered.finish_reason or delivered.tokens >= state.max_tokens:
        return Finished(delivered.finish_reason, known, delivered.tokens)
    ids = {"return_token_ids": True} if state.strip_ids else {}  # asked again, hidden again
    if delivered.tokens == 0:
        return Continuation(api.path, _encode({**body, **ids}), "restart", known, 0)
    generated = delivered.token_ids
    if delivered.prompt_ids is not None and generated is not None and fmt.exact(body):
        start, text = anchor(delivered.pieces, delivered.tokens, delivered.content)
        out = {"model": body.get("model"), "prompt": delivered.prompt_ids + generated[:start],
               **{k: body[k] for k in (*SAMPLING, *fmt.keep) if body.get(k) is not None},
               "return_token_ids": True}  # fmt: skip
        return Continuation(
            COMPLETIONS_PATH, _encode(_budget(out, state.max_tokens - start, start, ())),
            "ids", known, delivered.tokens, start, text, tuple(generated[start:]),
        )  # fmt: skip
    out = fmt.from_text({**body, **ids}, delivered.content)
    if out is None:
        raise NotResumable("a token-id prompt without the generated token ids")
    remaining = state.max_tokens - delivered.tokens
    budget = _budget(out, remaining, delivered.tokens, api.max_tokens_aliases)
    return Continuation(api.path, _encode(budget), "text", known, delivered.tokens,
                        delivered.tokens)  # fmt: skip


def anchor(pieces: Sequence[tuple[str, int]], tokens: int, text: str) -> tuple[int, str]:
    """Where an ids continuation starts (generated tokens kept in its prompt) and the client's
    text since then: before the latest of the last events (``pieces``: their text and tokens)
    whose text began with whitespace after an event with text; else the very start (the
    prompt's end is clean). ``tokens`` and ``text``: everything the client has."""
    since = ""
    for j in range(len(pieces) - 1, max(0, len(pieces) - MAX_BACKOFF), -1):
        piece, n = pieces[j]
        tokens -= n
        since = piece + since
        if piece[:1].isspace() and pieces[j - 1][0]:
            return tokens, since
    return 0, text


def _check(body: dict[str, Any], d: Delivered, alternatives: bool) -> None:
    if (body.get("n") or 1) > 1:
        raise NotResumable("n > 1")
    if body.get("echo"):
        raise NotResumable("echo")
    if d.logprob_alternatives or alternatives:
        raise NotResumable("top logprobs")
    fmt = body.get("response_format")
    choice = body.get("tool_choice")
    if (
        (isinstance(fmt, dict) and fmt.get("type") not in (None, "text"))
        or any(body.get(k) is not None for k in _GUIDED)
        or choice == "required" or isinstance(choice, dict)
    ):  # fmt: skip
        raise NotResumable("structured output")
    if d.tool_calls:
        raise NotResumable("tool call under way")
    kwargs = body.get("chat_template_kwargs")
    thinking = isinstance(kwargs, dict) and bool(kwargs.get("enable_thinking"))
    if d.reasoning or thinking:
        raise NotResumable("reasoning")


def _budget(
    out: dict[str, Any], remaining: int, delivered: int, aliases: tuple[str, ...]
) -> dict[str, Any]:
    for alias in aliases:  # Chat's max_completion_tokens: one length, as max_tokens
        out.pop(alias, None)
    out["max_tokens"] = remaining
    if isinstance(out.get("min_tokens"), int):
        out["min_tokens"] = max(0, out["min_tokens"] - delivered)
    out.update(stream=True, stream_options={"include_usage": True})
    return out


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
