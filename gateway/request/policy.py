"""The gateway's own policy, on top of the request schema: what this deployment serves.

The schema (``schema.py``) says what a well-formed request is; this says what *this* gateway
accepts of it: the served model names, media counts against ``ENGINE_LIMIT_MM_PER_PROMPT``, and
on TPU profiles what the TPU engine cannot do (a per-request seed, structured output, the
sampling parameters its sampler ignores). Pure functions over the parsed body and ``Policy``,
resolved once from the settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from env.settings import EngineSettings, GatewaySettings
from gateway.errors import OpenAIError, bad_request
from gateway.request.schema import ChatRequest, MessagesRequest, ResponsesRequest

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
    **dict.fromkeys(("image_url", "input_image", "image_embeds", "image_pil", "image"), "image"),
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


def check_model(body: dict[str, Any], policy: Policy) -> None:
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


def count_media(req: ChatRequest | MessagesRequest | ResponsesRequest) -> dict[str, int]:
    """Media items per modality, from the content parts of any of the chat-like APIs."""
    media = {"image": 0, "audio": 0, "video": 0}
    for part_type in _part_types(req):
        modality = _MODALITY.get(part_type)
        if modality:
            media[modality] += 1
    return media


def _part_types(req: ChatRequest | MessagesRequest | ResponsesRequest) -> list[str]:
    if isinstance(req, ResponsesRequest):
        if isinstance(req.input, str):
            return []
        types = []
        for item in req.input:
            content = item.get("content")
            if isinstance(content, list):
                types.extend(str(p.get("type")) for p in content if isinstance(p, dict))
        return types
    return [
        part.type for msg in req.messages if isinstance(msg.content, list) for part in msg.content
    ]


def completion_bounds(
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


def check_media(media: dict[str, int], policy: Policy) -> None:
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


def tpu_hygiene(body: dict[str, Any], policy: Policy) -> list[str]:
    """TPU-only refusals; returns the ignored sampling parameters it stripped from ``body``."""
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
    text = body.get("text")  # the Responses API's structured output: text.format
    fmt = text.get("format") if isinstance(text, dict) else None
    for param, spec in (("response_format", rf), ("text.format", fmt)):
        if isinstance(spec, dict) and spec.get("type") not in (None, "text"):
            raise bad_request(
                f"{param} type {spec.get('type')!r} (structured output) is not supported on "
                "TPU yet",
                param,
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
        return []
    if policy.unsupported_sampling == "reject":
        raise bad_request(
            f"{', '.join(ignored)}: the TPU sampler ignores these parameters (it uses only "
            "temperature, top_k, top_p and logprobs); remove them",
            ignored[0],
            "unsupported_on_tpu",
        )
    for k in ignored:
        body.pop(k, None)
    return ignored


def _is_set(value: Any, off: Any) -> bool:
    if value is None:
        return False
    if off is None:
        return bool(value)
    return value != off
