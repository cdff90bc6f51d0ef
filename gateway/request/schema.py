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

Errors: ``schema_errors.error_from(ValidationError)`` turns pydantic's most telling error into
the one ``OpenAIError`` the client sees, with the offending parameter as a path
(``messages[0].role``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.request.schema_errors import Rule, error_from

__all__ = ["ChatRequest", "CompletionRequest", "MessagesRequest", "ResponsesRequest", "error_from"]

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


# OpenAI's roles. vLLM accepts any string and its chat template decides; a typo'd role then
# reaches the engine and is answered 200. OpenAI answers 400 naming the supported values.
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class Message(_Open):
    role: Role
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
            raise Rule('only allowed with "stream": true', "stream_options")
        return self

    @property
    def effective_max_tokens(self) -> int | None:
        return self.max_tokens

    def _check_min_tokens(self) -> None:
        mt = self.effective_max_tokens
        if self.min_tokens and mt is not None and self.min_tokens > mt:
            raise Rule(f"({self.min_tokens}) must not exceed max_tokens ({mt})", "min_tokens")


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
                raise Rule(f"must be >= 1, got {v}", name)
        if self.top_logprobs and not self.logprobs:
            raise Rule('requires "logprobs": true', "top_logprobs")
        if self.tools == []:
            raise Rule("must not be an empty list; omit it instead", "tools")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise Rule("requires 'tools'", "tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tools:
            name = self.tool_choice.function.name
            if all(t.function.name != name for t in self.tools):
                raise Rule(f"names the function {name!r}, which is not in 'tools'", "tool_choice")
        if self.continue_final_message and self.add_generation_prompt:
            raise Rule(
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
            raise Rule(f"must be >= 0, got {self.max_tokens}", "max_tokens")
        n = self.n or 1
        if self.best_of is not None and self.best_of < n:
            raise Rule(f"({self.best_of}) must be >= n ({n})", "best_of")
        self._check_min_tokens()
        return self


class ResponsesRequest(_Open):
    """OpenAI's Responses API (``POST /v1/responses``), as vLLM 0.32 serves it."""

    model: str | None = None
    input: str | Annotated[list[dict[str, Any]], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    stream: bool | None = False
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Prob | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[dict[str, Any]] | None = None
    previous_response_id: str | None = None
    store: bool | None = True
    background: bool | None = False
    user: str | None = None

    @model_validator(mode="after")
    def _responses_rules(self) -> ResponsesRequest:
        if isinstance(self.input, str) and not self.input:
            raise Rule("must not be empty", "input")
        return self

    @property
    def effective_max_tokens(self) -> int | None:
        return self.max_output_tokens


class AnthropicBlock(_Open):
    type: str
    text: str | None = None


class AnthropicMessage(_Open):
    role: Literal["user", "assistant", "system"]
    content: str | list[AnthropicBlock]


class MessagesRequest(_Open):
    """Anthropic's Messages API (``POST /v1/messages``), as vLLM 0.32 serves it."""

    model: str | None = None
    messages: Annotated[list[AnthropicMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)]  # required by the Messages API
    system: str | list[AnthropicBlock] | None = None
    stream: bool | None = False
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    stop_sequences: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None

    @property
    def effective_max_tokens(self) -> int | None:
        return self.max_tokens
