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
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from env.settings import EngineSettings, GatewaySettings
from gateway.errors import OpenAIError, bad_request
from gateway.schema import ChatRequest, CompletionRequest, error_from

Kind = Literal["chat", "completions"]

# Fixed template overhead bound for a chat prompt (BOS, turn markers, generation prompt,
# a thinking-mode system turn): generous, since undercounting only costs a /tokenize call.
CHAT_TEMPLATE_SLACK = 256
COMPLETION_SLACK = 8

# Sampling parameters the TPU sampler ignores (tpu-inference's sampler reads only temperature,
# top_k, top_p and logprobs; its ``tpu_platform.validate_request`` refuses a per-request seed),
# with the value that means "off" (None: empty or absent means off).
TPU_IGNORED_SAMPLING: dict[str, Any] = {
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "repetition_penalty": 1,
    "min_p": 0,
    "logit_bias": None,
    "bad_words": None,
    "min_tokens": 0,
}
STRUCTURED_OUTPUT_KEYS = ("structured_outputs", "guided_json", "guided_regex", "guided_choice")
# Content part types by the modality whose per-prompt limit they count against.
_MODALITY = {
    **dict.fromkeys(("image_url", "input_image", "image_embeds", "image_pil"), "image"),
    **dict.fromkeys(("input_audio", "audio_url"), "audio"),
    "video_url": "video",
}


@dataclass(frozen=True)
class Policy:
    """Everything validation needs, resolved once from the two settings slices."""

    served_model_names: frozenset[str]
    max_model_len: int
    prompt_limit: int
    platform: str
    mm_limits: dict[str, int]
    max_body_bytes: int
    default_max_tokens: int
    stream_required_prompt_tokens: int
    stream_required_max_tokens: int
    unsupported_sampling: Literal["reject", "strip"] = "reject"

    @classmethod
    def from_settings(cls, engine: EngineSettings, gateway: GatewaySettings) -> Policy:
        return cls(
            served_model_names=frozenset({engine.served_model_name}),
            max_model_len=engine.max_model_len,
            prompt_limit=min(engine.prompt_limit, engine.max_model_len),
            platform=engine.platform,
            mm_limits=dict(engine.limit_mm_per_prompt or {}),
            max_body_bytes=gateway.max_body_bytes,
            default_max_tokens=gateway.default_max_tokens,
            stream_required_prompt_tokens=gateway.stream_required_prompt_tokens,
            stream_required_max_tokens=gateway.stream_required_max_tokens,
            unsupported_sampling=gateway.unsupported_sampling,
        )

    @property
    def tpu(self) -> bool:
        return self.platform == "tpu"


@dataclass
class Parsed:
    """Outcome of phase 1."""

    kind: Kind
    body: dict[str, Any]
    raw: bytes
    stream: bool
    max_tokens: int | None  # as sent (max_completion_tokens wins over max_tokens)
    prompt_upper_bound: int | None  # None: cannot bound without tokenizing (tools, media)
    exact_prompt_tokens: int | None = None  # token-id prompts are counted by length
    truncate_prompt_tokens: int | None = None
    stripped: list[str] = field(default_factory=list)
    modified: bool = False

    @property
    def prompt_strings(self) -> list[str]:
        """Completions only: the text prompts to count (each is its own sequence)."""
        p = self.body.get("prompt")
        if isinstance(p, str):
            return [p]
        if isinstance(p, list) and p and all(isinstance(x, str) for x in p):
            return list(p)
        return []


@dataclass
class Final:
    """Outcome of phase 2: what to forward."""

    body: bytes
    stream: bool
    max_tokens: int
    prompt_tokens: int | None  # None when the count was skipped (provably short)
    stripped: list[str]


# -- phase 1 ---------------------------------------------------------------------------------

_SCHEMAS: dict[Kind, type[ChatRequest] | type[CompletionRequest]] = {
    "chat": ChatRequest,
    "completions": CompletionRequest,
}


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
        raise bad_request("request body is nested too deeply", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", None, "invalid_type")
    _check_model(body, policy)
    try:
        req = _SCHEMAS[kind].model_validate(body)
    except ValidationError as exc:
        raise error_from(exc) from None
    except RecursionError:
        raise bad_request("request body is nested too deeply", None, "invalid_json") from None

    if isinstance(req, ChatRequest):
        media = _count_media(req)
        boundable = not (req.tools or req.documents or req.chat_template or any(media.values()))
        upper = len(raw) + CHAT_TEMPLATE_SLACK if boundable else None
        exact = None
    else:
        media = {}
        upper, exact = _completion_bounds(req.prompt)
    _check_media(media, policy)

    parsed = Parsed(
        kind, body, raw, bool(req.stream), req.effective_max_tokens, upper, exact,
        req.truncate_prompt_tokens,
    )  # fmt: skip
    if policy.tpu:
        _tpu_hygiene(parsed, policy)
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
    prompt_param = "messages" if parsed.kind == "chat" else "prompt"
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
        parsed.body["max_tokens"] = max_tokens
        parsed.modified = True
    elif known + max_tokens > limit:
        raise bad_request(
            f"the prompt has {known} tokens and max_tokens is {max_tokens}: {known + max_tokens} "
            f"exceeds the context length {limit}; set max_tokens to at most "
            f"{max(0, limit - known)}",
            _max_tokens_param(parsed.body),
            "context_length_exceeded",
        )

    if not parsed.stream:
        if max_tokens > policy.stream_required_max_tokens:
            raise bad_request(
                f"requests with max_tokens above {policy.stream_required_max_tokens} must set "
                f'"stream": true (got max_tokens={max_tokens}): long non-streaming requests '
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
    return Final(out, parsed.stream, max_tokens, counted, parsed.stripped)


# -- policy checks ---------------------------------------------------------------------------


def _check_model(body: dict[str, Any], policy: Policy) -> None:
    """``model`` is required (vLLM would default it; OpenAI's API and this gateway do not)."""
    model = body.get("model")
    if model is None:
        raise bad_request("'model' is required", "model", "missing_field")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' must be a non-empty string", "model", "invalid_type")
    if model not in policy.served_model_names:
        names = ", ".join(sorted(policy.served_model_names))
        raise OpenAIError(
            404,
            f"the model '{model}' does not exist on this server; available: {names}",
            code="model_not_found",
            param="model",
        )


def _max_tokens_param(body: dict[str, Any]) -> str:
    return (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )


def _count_media(req: ChatRequest) -> dict[str, int]:
    media = {"image": 0, "audio": 0, "video": 0}
    for msg in req.messages:
        if isinstance(msg.content, list):
            for part in msg.content:
                modality = _MODALITY.get(part.type)
                if modality:
                    media[modality] += 1
    return media


def _completion_bounds(
    prompt: str | list[str] | list[int] | list[list[int]],
) -> tuple[int, int | None]:
    """(upper bound, exact count or None): token ids are counted by length, text bounded."""
    if isinstance(prompt, str):
        return len(prompt.encode()) + COMPLETION_SLACK, None
    if isinstance(prompt[0], str):
        return max(len(p.encode()) for p in prompt) + COMPLETION_SLACK, None  # type: ignore[union-attr]
    if isinstance(prompt[0], list):
        n = max(len(p) for p in prompt)  # type: ignore[arg-type]
        return n, n
    return len(prompt), len(prompt)


def _check_media(media: dict[str, int], policy: Policy) -> None:
    for modality, n in media.items():
        if not n:
            continue
        if policy.tpu and modality in ("audio", "video"):
            raise bad_request(
                f"{modality} input is not supported on this TPU deployment (Gemma 4 on TPU "
                "accepts text and images only)",
                "messages",
                "unsupported_modality",
            )
        limit = policy.mm_limits.get(modality, 0)
        if n > limit:
            if limit == 0:
                text = f"{modality} input is not enabled on this deployment"
            else:
                text = f"the request has {n} {modality} items; at most {limit} are allowed"
            raise bad_request(text, "messages", f"too_many_{modality}s")


def _tpu_hygiene(parsed: Parsed, policy: Policy) -> None:
    body = parsed.body
    if body.get("seed") is not None:
        raise bad_request(
            "per-request 'seed' is not supported on TPU: the JAX sampler has no per-request "
            "seed; remove it (sampling is still random)",
            "seed",
            "unsupported_on_tpu",
        )
    for key in STRUCTURED_OUTPUT_KEYS:
        if body.get(key) is not None:
            raise bad_request(
                f"'{key}' (structured output) is not supported on TPU yet",
                key,
                "unsupported_on_tpu",
            )
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") not in (None, "text"):
        raise bad_request(
            f"response_format type {rf.get('type')!r} (structured output) is not supported on "
            "TPU yet",
            "response_format",
            "unsupported_on_tpu",
        )
    choice = body.get("tool_choice")
    if choice == "required" or isinstance(choice, dict):
        raise bad_request(
            "tool_choice 'required' or a named function needs structured output, which is not "
            "supported on TPU yet; use 'auto'",
            "tool_choice",
            "unsupported_on_tpu",
        )
    ignored = [k for k, off in TPU_IGNORED_SAMPLING.items() if _is_set(body.get(k), off)]
    if not ignored:
        return
    if policy.unsupported_sampling == "reject":
        raise bad_request(
            f"{', '.join(ignored)}: the TPU sampler ignores these parameters (it uses only "
            "temperature, top_k, top_p and logprobs); remove them",
            ignored[0],
            "unsupported_on_tpu",
        )
    for k in ignored:
        body.pop(k, None)
    parsed.stripped = ignored
    parsed.modified = True


def _is_set(value: Any, off: Any) -> bool:
    if value is None:
        return False
    if off is None:
        return bool(value)
    return value != off
