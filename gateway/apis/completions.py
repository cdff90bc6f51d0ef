"""Legacy Completions (``POST /v1/completions``): a prompt, or a batch of them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gateway.apis.base import OPENAI_CACHED_USAGE, OPENAI_PROMPT_USAGE, OPENAI_STREAM, Api, Resume
from gateway.request.schema import CompletionRequest


def prompts(body: Mapping[str, Any]) -> list[Any]:
    """The prompts of the request: one string or token-id list, or a batch of them."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        return list(prompt)
    return [prompt]


def leading(body: Mapping[str, Any]) -> Iterable[object]:
    """The (first) prompt: a batch routes by its first."""
    return prompts(body)[:1]


def tokenize_bodies(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """One body per text prompt; token ids need no counting (None: the engine judges them)."""
    texts = prompts(body)
    if not all(isinstance(p, str) for p in texts):
        return None
    return [{"model": body["model"], "prompt": p} for p in texts]


def alternatives(body: Mapping[str, Any]) -> bool:
    lp = body.get("logprobs")
    return isinstance(lp, int) and not isinstance(lp, bool) and lp > 0


def from_text(body: dict[str, Any], text: str) -> dict[str, Any] | None:
    """The prompt followed by the text generated so far (a token-id prompt cannot be)."""
    [prompt] = prompts(body)
    return {**body, "prompt": prompt + text} if isinstance(prompt, str) else None


API = Api(
    kind="completions", title="OpenAI Completions (legacy)", path="/v1/completions", schema=CompletionRequest,
    max_tokens_field="max_tokens", prompt_field="prompt", stream=OPENAI_STREAM,
    prompt_usage=OPENAI_PROMPT_USAGE, cached_usage=OPENAI_CACHED_USAGE, leading=leading,
    tokenize_bodies=tokenize_bodies, stream_options=True,
    resume=Resume("text_completion", False, lambda body: True, alternatives, from_text,
                  keep=("logprobs",)),
)  # fmt: skip
