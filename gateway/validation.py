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
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from env.settings import EngineSettings, GatewaySettings
from gateway.errors import OpenAIError, bad_request

Kind = Literal["chat", "completions"]

# Fixed template overhead bound for a chat prompt (BOS, turn markers, generation prompt,
# a thinking-mode system turn): generous, since undercounting only costs a /tokenize call.
CHAT_TEMPLATE_SLACK = 256
COMPLETION_SLACK = 8

# Sampling parameters the TPU sampler ignores (FACTS.md: it reads only temperature, top_k,
# top_p and logprobs), with the value that means "off" (None: empty or absent means off).
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
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
IMAGE_PARTS = frozenset({"image_url", "input_image", "image_embeds", "image_pil"})
AUDIO_PARTS = frozenset({"input_audio", "audio_url"})
VIDEO_PARTS = frozenset({"video_url"})


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


def parse(kind: Kind, raw: bytes, policy: Policy) -> Parsed:
    if len(raw) > policy.max_body_bytes:
        raise OpenAIError(
            413,
            f"request body is {len(raw)} bytes; the limit is {policy.max_body_bytes}",
            code="request_too_large",
        )
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", None, "invalid_type")

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a string", "model", "missing_field")
    if model not in policy.served_model_names:
        names = ", ".join(sorted(policy.served_model_names))
        raise OpenAIError(
            404,
            f"the model '{model}' does not exist on this server; available: {names}",
            code="model_not_found",
            param="model",
        )

    stream = _opt_bool(body, "stream") or False
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict):
            raise bad_request(
                "'stream_options' must be an object", "stream_options", "invalid_type"
            )
        if not stream:
            raise bad_request(
                "'stream_options' is only allowed with \"stream\": true", "stream_options"
            )
        _opt_bool(so, "include_usage", "stream_options.include_usage")

    max_tokens = _max_tokens(kind, body)
    _check_sampling(kind, body, max_tokens)
    truncate = _opt_int(body, "truncate_prompt_tokens", lo=-1)

    if kind == "chat":
        upper, media = _check_chat(body, len(raw))
    else:
        upper, media = _check_completions(body), {}
    exact = _token_id_prompt_len(body) if kind == "completions" else None
    _check_media(media, policy)

    parsed = Parsed(kind, body, raw, stream, max_tokens, upper, exact, truncate)
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


# -- field checks ----------------------------------------------------------------------------


def _type_error(name: str, expected: str, value: Any) -> OpenAIError:
    return bad_request(
        f"'{name}' must be {expected}, got {type(value).__name__}: {_short(value)}",
        name,
        "invalid_type",
    )


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _opt_bool(obj: dict[str, Any], key: str, name: str | None = None) -> bool | None:
    v = obj.get(key)
    if v is not None and not isinstance(v, bool):
        raise _type_error(name or key, "a boolean", v)
    return v


def _opt_int(
    obj: dict[str, Any], key: str, lo: int | None = None, hi: int | None = None
) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _type_error(key, "an integer", v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise bad_request(f"'{key}' must be {_range(lo, hi)}, got {v}", key)
    return v


def _opt_number(
    obj: dict[str, Any],
    key: str,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
) -> float | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _type_error(key, "a number", v)
    if not math.isfinite(v):
        raise bad_request(f"'{key}' must be a finite number", key)
    too_low = lo is not None and (v <= lo if lo_open else v < lo)
    if too_low or (hi is not None and v > hi):
        lo_text = f"> {lo}" if lo_open else f">= {lo}"
        rng = lo_text if hi is None else f"{lo_text} and <= {hi}"
        raise bad_request(f"'{key}' must be {rng}, got {v}", key)
    return float(v)


def _range(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}"
    return f">= {lo}" if lo is not None else f"<= {hi}"


def _max_tokens_param(body: dict[str, Any]) -> str:
    return (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )


def _max_tokens(kind: Kind, body: dict[str, Any]) -> int | None:
    lo = 1 if kind == "chat" else 0  # completions: max_tokens=0 with echo scores a prompt
    mt = _opt_int(body, "max_tokens", lo=lo)
    if kind == "chat":
        mct = _opt_int(body, "max_completion_tokens", lo=lo)
        if mct is not None:
            return mct
    return mt


def _check_sampling(kind: Kind, body: dict[str, Any], max_tokens: int | None) -> None:
    _opt_number(body, "temperature", 0, 2)
    _opt_number(body, "top_p", 0, 1, lo_open=True)
    _opt_int(body, "top_k", lo=-1)
    _opt_int(body, "n", lo=1, hi=128)
    _opt_number(body, "presence_penalty", -2, 2)
    _opt_number(body, "frequency_penalty", -2, 2)
    _opt_number(body, "repetition_penalty", 0, 2, lo_open=True)
    _opt_number(body, "min_p", 0, 1)
    _opt_int(body, "seed", lo=-(2**63), hi=2**63 - 1)
    min_tokens = _opt_int(body, "min_tokens", lo=0)
    if min_tokens and max_tokens is not None and min_tokens > max_tokens:
        raise bad_request(
            f"'min_tokens' ({min_tokens}) must not exceed max_tokens ({max_tokens})", "min_tokens"
        )
    for key in ("ignore_eos", "echo", "skip_special_tokens", "include_stop_str_in_output"):
        _opt_bool(body, key)
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise _type_error("stop", "a string or a list of strings", stop)
    bias = body.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict):
            raise _type_error("logit_bias", "an object of token id -> bias", bias)
        for k, v in bias.items():
            if not str(k).lstrip("-").isdigit():
                raise bad_request(f"'logit_bias' keys must be token ids, got {k!r}", "logit_bias")
            if isinstance(v, bool) or not isinstance(v, int | float) or not -100 <= v <= 100:
                raise bad_request(
                    "'logit_bias' values must be numbers in [-100, 100]", "logit_bias"
                )
    bad_words = body.get("bad_words")
    if bad_words is not None and not (
        isinstance(bad_words, list) and all(isinstance(w, str) for w in bad_words)
    ):
        raise _type_error("bad_words", "a list of strings", bad_words)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _type_error("user", "a string", user)
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
            raise bad_request(
                "'response_format' must be an object with a string 'type'", "response_format"
            )
        if rf["type"] not in ("text", "json_object", "json_schema", "structural_tag"):
            raise bad_request(
                f"'response_format.type' {rf['type']!r} is not one of text, json_object, "
                "json_schema, structural_tag",
                "response_format",
            )
    if kind == "chat":
        logprobs = _opt_bool(body, "logprobs")
        top = _opt_int(body, "top_logprobs", lo=0, hi=20)
        if top and not logprobs:
            raise bad_request("'top_logprobs' requires \"logprobs\": true", "top_logprobs")
    else:
        _opt_int(body, "logprobs", lo=0, hi=20)
        best_of = _opt_int(body, "best_of", lo=1, hi=128)
        n = body.get("n") or 1
        if best_of is not None and best_of < n:
            raise bad_request(f"'best_of' ({best_of}) must be >= n ({n})", "best_of")


def _check_chat(body: dict[str, Any], raw_len: int) -> tuple[int | None, dict[str, int]]:
    messages = body.get("messages")
    if messages is None:
        raise bad_request("'messages' is required", "messages", "missing_field")
    if not isinstance(messages, list):
        raise _type_error("messages", "a list of message objects", messages)
    if not messages:
        raise bad_request("'messages' must contain at least one message", "messages")
    media = {"image": 0, "audio": 0, "video": 0}
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _type_error(where, "an object", msg)
        role = msg.get("role")
        if not isinstance(role, str):
            raise bad_request(f"'{where}.role' is required and must be a string", f"{where}.role")
        if role not in ROLES:
            raise bad_request(
                f"'{where}.role' must be one of {', '.join(sorted(ROLES))}, got {role!r}",
                f"{where}.role",
            )
        content = msg.get("content")
        if content is None:
            if role not in ("assistant", "tool", "function") or (
                role == "assistant" and not msg.get("tool_calls") and "reasoning" not in msg
            ):
                raise bad_request(f"'{where}.content' is required", f"{where}.content")
        elif isinstance(content, list):
            for j, part in enumerate(content):
                _count_part(part, f"{where}.content[{j}]", media)
        elif not isinstance(content, str):
            raise _type_error(f"{where}.content", "a string or a list of content parts", content)
        tool_calls = msg.get("tool_calls")
        if tool_calls is not None and not isinstance(tool_calls, list):
            raise _type_error(f"{where}.tool_calls", "a list", tool_calls)

    _check_tools(body)
    for key in ("chat_template_kwargs", "mm_processor_kwargs"):
        v = body.get(key)
        if v is not None and not isinstance(v, dict):
            raise _type_error(key, "an object", v)
    for key in ("add_generation_prompt", "continue_final_message", "add_special_tokens"):
        _opt_bool(body, key)

    # Upper bound only when the rendered prompt provably stays near the body size: tools and
    # documents are re-rendered by the template, media expand to many tokens per item.
    boundable = (
        not body.get("tools")
        and not body.get("documents")
        and not body.get("chat_template")
        and not any(media.values())
    )
    return (raw_len + CHAT_TEMPLATE_SLACK if boundable else None), media


def _count_part(part: Any, where: str, media: dict[str, int]) -> None:
    if not isinstance(part, dict):
        raise _type_error(where, "a content part object", part)
    ptype = part.get("type")
    if not isinstance(ptype, str):
        raise bad_request(f"'{where}.type' is required and must be a string", f"{where}.type")
    if ptype == "text":
        if not isinstance(part.get("text"), str):
            raise bad_request(f"'{where}.text' must be a string", f"{where}.text")
    elif ptype in IMAGE_PARTS:
        if ptype == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url:
                raise bad_request(
                    f"'{where}.image_url.url' must be a non-empty string", f"{where}.image_url"
                )
        media["image"] += 1
    elif ptype in AUDIO_PARTS:
        media["audio"] += 1
    elif ptype in VIDEO_PARTS:
        media["video"] += 1


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _type_error("tools", "a list of tool objects", tools)
        for i, tool in enumerate(tools):
            where = f"tools[{i}]"
            if not isinstance(tool, dict) or tool.get("type", "function") != "function":
                raise bad_request(f"'{where}' must be an object with type 'function'", where)
            fn = tool.get("function")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                raise bad_request(
                    f"'{where}.function.name' is required and must be a non-empty string",
                    f"{where}.function",
                )
            params = fn.get("parameters")
            if params is not None and not isinstance(params, dict):
                raise _type_error(f"{where}.function.parameters", "a JSON schema object", params)
    choice = body.get("tool_choice")
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise bad_request(
                f"'tool_choice' must be none, auto, required or a named function, got {choice!r}",
                "tool_choice",
            )
    elif not (
        isinstance(choice, dict)
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        raise bad_request("'tool_choice' object must name a function", "tool_choice")
    if choice != "none" and not tools:
        raise bad_request("'tool_choice' requires 'tools'", "tool_choice")


def _check_completions(body: dict[str, Any]) -> int | None:
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("'prompt' is required", "prompt", "missing_field")
    msg = "a string, a list of strings, a list of token ids or a list of token-id lists"
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request("'prompt' must not be empty", "prompt")
        return len(prompt.encode()) + COMPLETION_SLACK
    if not isinstance(prompt, list) or not prompt:
        raise _type_error("prompt", f"non-empty {msg}", prompt)
    if all(isinstance(p, str) for p in prompt):
        if any(not p for p in prompt):
            raise bad_request("'prompt' entries must not be empty", "prompt")
        return max(len(p.encode()) for p in prompt) + COMPLETION_SLACK
    if all(_is_token_id(t) for t in prompt):
        return len(prompt)
    if all(isinstance(p, list) and p and all(_is_token_id(t) for t in p) for p in prompt):
        return max(len(p) for p in prompt)
    raise _type_error("prompt", msg, prompt)


def _is_token_id(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and t >= 0


def _token_id_prompt_len(body: dict[str, Any]) -> int | None:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], str):
        if isinstance(prompt[0], list):
            return max(len(p) for p in prompt)
        return len(prompt)
    return None


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
