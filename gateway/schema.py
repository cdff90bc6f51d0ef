"""The request schema: what a chat or completions body must look like, declared once.

Pydantic v2 models in the spirit of vLLM's own ``ChatCompletionRequest`` /
``CompletionRequest`` (``vllm/entrypoints/openai/*/protocol.py``, plus the ranges that vLLM's
``SamplingParams._verify_args`` enforces later): every field the gateway or the engine would
refuse is typed here, cross-field rules are validators, and every other field passes through
(``extra="allow"``), so a parameter this file does not know is the engine's to judge.

One deliberate difference from vLLM: the models are *strict* (JSON types as written, as
OpenAI's API takes them): vLLM's lax pydantic turns ``"max_tokens": "10"`` into 10 and
``"stream": "yes"`` into true; here those are 400s that name the field. The other differences
are the gateway's policy (``validation.py``); ``tests/gateway/test_schema_parity.py`` runs a
table of requests through both this schema and vLLM's and lists every case that differs, with
its reason, so a vLLM upgrade that moves a rule fails a test instead of drifting silently.

Errors: ``error_from(ValidationError)`` turns pydantic's first error into the one
``OpenAIError`` the client sees, with the offending parameter as a path (``messages[0].role``).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import OpenAIError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Prob = Annotated[float, Field(ge=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]


class _Open(BaseModel):
    """Strict types for the known fields; unknown fields kept as sent."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class StreamOptions(_Open):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object")
        return self


class FunctionDef(_Open):
    name: str
    parameters: dict[str, Any] | None = None


class Tool(_Open):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(_Open):
    name: Annotated[str, Field(min_length=1)]


class NamedToolChoice(_Open):
    type: Literal["function"] = "function"
    function: NamedFunction


class ImageURL(_Open):
    url: Annotated[str, Field(min_length=1)]


class ContentPart(_Open):
    """One part of a list content: text, or a media item the policy counts per modality."""

    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None

    @model_validator(mode="after")
    def _part_fields(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a 'text' part needs a string 'text'")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("an 'image_url' part needs 'image_url.url'")
        return self


class Message(_Open):
    role: str
    content: str | list[ContentPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None


class _Sampling(_Open):
    """Fields and ranges both routes share (vLLM's ``SamplingParams`` checks)."""

    model: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Prob | None = None
    n: Annotated[int, Field(ge=1)] | None = 1
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    seed: Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)] | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, float] | None = None
    bad_words: list[str] | None = None
    min_tokens: Annotated[int, Field(ge=0)] = 0
    ignore_eos: bool = False
    echo: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    truncate_prompt_tokens: Annotated[int, Field(ge=-1, le=INT64_MAX)] | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and any(not s for s in v):
            raise ValueError("stop strings must not be empty")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        # vLLM clamps the values to [-100, 100] and refuses keys that are not token ids.
        if v and any(not k.lstrip("-").isdigit() for k in v):
            raise ValueError(
                f"keys must be token ids, got {[k for k in v if not k.lstrip('-').isdigit()]}"
            )
        return v

    @field_validator("bad_words")
    @classmethod
    def _no_empty_bad_word(cls, v: list[str] | None) -> list[str] | None:
        if v and any(not w for w in v):
            raise ValueError("bad words must not be empty")
        return v

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Sampling:
        if self.stream_options is not None and not self.stream:
            raise _Rule('only allowed with "stream": true', "stream_options")
        return self

    @property
    def effective_max_tokens(self) -> int | None:
        return self.max_tokens

    def _check_min_tokens(self) -> None:
        mt = self.effective_max_tokens
        if self.min_tokens and mt is not None and self.min_tokens > mt:
            raise _Rule(f"({self.min_tokens}) must not exceed max_tokens ({mt})", "min_tokens")


class ChatRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    documents: list[dict[str, Any]] | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False

    @property
    def effective_max_tokens(self) -> int | None:
        """``max_completion_tokens`` wins over the legacy ``max_tokens``."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    @model_validator(mode="after")
    def _chat_rules(self) -> ChatRequest:
        for name in ("max_tokens", "max_completion_tokens"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise _Rule(f"must be >= 1, got {v}", name)
        if self.top_logprobs and not self.logprobs:
            raise _Rule('requires "logprobs": true', "top_logprobs")
        if self.tools == []:
            raise _Rule("must not be an empty list; omit it instead", "tools")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise _Rule("requires 'tools'", "tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tools:
            name = self.tool_choice.function.name
            if all(t.function.name != name for t in self.tools):
                raise _Rule(f"names the function {name!r}, which is not in 'tools'", "tool_choice")
        if self.continue_final_message and self.add_generation_prompt:
            raise _Rule(
                "cannot be true together with add_generation_prompt (set that to false)",
                "continue_final_message",
            )
        self._check_min_tokens()
        return self


class CompletionRequest(_Sampling):
    # A string, strings, token ids or token-id lists (the union tried left to right).
    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
        | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
        | Annotated[
            list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]],
            Field(min_length=1),
        ]
    ) = Field(union_mode="left_to_right")
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _completion_rules(self) -> CompletionRequest:
        if self.max_tokens is not None and self.max_tokens < 0:
            raise _Rule(f"must be >= 0, got {self.max_tokens}", "max_tokens")
        n = self.n or 1
        if self.best_of is not None and self.best_of < n:
            raise _Rule(f"({self.best_of}) must be >= n ({n})", "best_of")
        self._check_min_tokens()
        return self


class _Rule(ValueError):
    """A cross-field rule broken; carries the parameter to name (pydantic's loc is the model)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


_TYPE_WORDS = {
    "bool_type": "a boolean",
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


_RANGE_WORDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def error_from(exc: ValidationError) -> OpenAIError:
    """Pydantic's most specific error as the gateway's 400: the parameter path and why."""
    errors = exc.errors(include_url=False)
    for e in errors:  # a broken cross-field rule names its own parameter
        rule = (e.get("ctx") or {}).get("error")
        if isinstance(rule, _Rule):
            return OpenAIError(400, f"'{rule.param}' {rule.message}", code="invalid_value",
                               param=rule.param)  # fmt: skip
    # Union arms each report an error; the deepest location is the most telling one.
    depth = max(len(_path(e["loc"])) for e in errors)
    deepest = [e for e in errors if len(_path(e["loc"])) == depth]
    # ...and a broken range beats a type mismatch reported by another arm.
    deepest.sort(key=lambda e: e["type"] in _TYPE_WORDS)
    err = deepest[0]
    param = _param(err["loc"])
    kind = err["type"]
    value = err.get("input")
    if kind == "missing":
        return OpenAIError(400, f"'{param}' is required", code="missing_field", param=param)
    if kind in _TYPE_WORDS:
        same = [e for e in deepest if _param(e["loc"]) == param]
        words = dict.fromkeys(_TYPE_WORDS.get(e["type"]) or "" for e in same)
        expected = " or ".join(w for w in words if w)
        if expected and all(e["type"] in _TYPE_WORDS for e in same):
            return OpenAIError(
                400, f"'{param}' must be {expected}, got {_json_type(value)}: {_short(value)}",
                code="invalid_type", param=param,
            )  # fmt: skip
    ctx = err.get("ctx") or {}
    msg = str(err["msg"])
    if kind in _RANGE_WORDS:
        op, key = _RANGE_WORDS[kind]
        msg = f"must be {op} {ctx.get(key)}"
    elif kind == "literal_error":
        msg = f"must be {ctx.get('expected')}"
    elif kind in ("string_too_short", "too_short"):
        msg = "must not be empty"
    elif isinstance(ctx.get("error"), ValueError):
        msg = str(ctx["error"])
    if isinstance(value, float) and not math.isfinite(value):
        msg = "must be a finite number"
    return OpenAIError(400, f"'{param}' {msg} (got {_short(value)})", code="invalid_value",
                       param=param)  # fmt: skip


def _path(loc: tuple[int | str, ...]) -> list[int | str]:
    return [p for p in loc if isinstance(p, int) or not _is_tag(p)]


def _is_tag(part: str) -> bool:
    """Pydantic's union-arm and validator labels in a location (``list[str]``, ``function-...``)."""
    return part in _UNION_TAGS or "[" in part or part.startswith(("function-", "constrained-"))


def _param(loc: tuple[int | str, ...]) -> str:
    """``("messages", 0, "role")`` -> ``messages[0].role``; union arm labels are dropped."""
    out = ""
    for part in _path(loc):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


_UNION_TAGS = frozenset(
    {"str", "int", "float", "bool", "list", "dict", "NamedToolChoice", "ImageURL"}
)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)  # fmt: skip


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
