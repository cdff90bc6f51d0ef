"""The gateway's request schema against vLLM's own, request by request.

Each row is a request body and, where the gateway deliberately decides differently from the
vLLM release pinned in the engine lock, the reason. vLLM's verdict is its pydantic model
(``ChatCompletionRequest`` / ``CompletionRequest``) plus ``to_sampling_params`` (where
``SamplingParams`` checks the ranges), i.e. everything vLLM checks before it renders the prompt.
A row without a reason must get the same verdict from both; a row with one must differ, so a
vLLM upgrade that changes a rule (either way) fails here instead of drifting silently.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from vllm.entrypoints.openai.chat_completion import protocol as vllm_chat
from vllm.entrypoints.openai.completion import protocol as vllm_completion

from gateway.errors import OpenAIError
from gateway.request.validation import Kind, parse
from tests.gateway.test_validation import CPU, MODEL

M = MODEL
MSG = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

STRICT = "strict JSON types: vLLM's lax pydantic coerces this value, OpenAI's API and we refuse it"
RENDER = "vLLM accepts it here and fails it later while rendering the prompt; we refuse it first"
ROLE = "a role outside OpenAI's set is a 400 here (as in OpenAI's API); vLLM accepts any string"
MODEL_REQUIRED = "'model' is required here (as in OpenAI's API); vLLM defaults to its only model"


def c(**kw: Any) -> dict[str, Any]:
    return {"model": M, "messages": MSG, **kw}


def p(**kw: Any) -> dict[str, Any]:
    return {"model": M, "prompt": "hi", **kw}


# (name, kind, body, deviation reason or None)
TABLE: list[tuple[str, Kind, dict[str, Any], str | None]] = [
    ("plain chat", "chat", c(), None),
    ("full sampling", "chat", c(temperature=0.7, top_p=0.9, top_k=40, min_p=0.1, seed=3,
                               presence_penalty=1, frequency_penalty=-1, repetition_penalty=1.1,
                               stop=["x"], n=2, max_tokens=8, logprobs=True, top_logprobs=5),
     None),
    ("max_completion_tokens", "chat", c(max_completion_tokens=5), None),
    ("stream with options", "chat", c(stream=True, stream_options={"include_usage": True}), None),
    ("stream_options without stream", "chat", c(stream_options={"include_usage": True}), None),
    ("unknown extra field", "chat", c(some_vendor_field={"a": 1}), None),
    ("any role string", "chat", {"model": M, "messages": [{"role": "robot", "content": "x"}]},
     ROLE),
    ("developer role", "chat", {"model": M, "messages": [{"role": "developer", "content": "x"}]},
     None),
    ("user without content", "chat", {"model": M, "messages": [{"role": "user"}]}, None),
    ("temperature 2", "chat", c(temperature=2), None),
    ("temperature above 2", "chat", c(temperature=2.5), None),
    ("temperature negative", "chat", c(temperature=-0.1), None),
    ("top_p zero", "chat", c(top_p=0), None),
    ("top_p above one", "chat", c(top_p=1.01), None),
    ("top_k -1", "chat", c(top_k=-1), None),
    ("top_k -2", "chat", c(top_k=-2), None),
    ("min_p above one", "chat", c(min_p=1.5), None),
    ("n zero", "chat", c(n=0), None),
    ("presence_penalty 3", "chat", c(presence_penalty=3), None),
    ("frequency_penalty -3", "chat", c(frequency_penalty=-3), None),
    ("repetition_penalty 0", "chat", c(repetition_penalty=0), None),
    ("seed above int64", "chat", c(seed=2**63), None),
    ("min_tokens above max_tokens", "chat", c(min_tokens=10, max_tokens=3), None),
    ("min_tokens negative", "chat", c(min_tokens=-1), None),
    ("stop int", "chat", c(stop=5), None),
    ("stop empty string in list", "chat", c(stop=["a", ""]), None),
    ("logit_bias non-id key", "chat", c(logit_bias={"abc": 1}), None),
    ("logit_bias big value (vLLM clamps)", "chat", c(logit_bias={"5": 500}), None),
    ("top_logprobs without logprobs", "chat", c(top_logprobs=3), None),
    ("tools and auto", "chat", c(tools=[TOOL], tool_choice="auto"), None),
    ("tool_choice without tools", "chat", c(tool_choice="required"), None),
    ("tool_choice bogus string", "chat", c(tools=[TOOL], tool_choice="sometimes"), None),
    ("tool_choice names a missing tool", "chat",
     c(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "g"}}), None),
    ("tools empty list", "chat", c(tools=[]), None),
    ("tool without name", "chat", c(tools=[{"type": "function", "function": {}}]), None),
    ("response_format json_object", "chat", c(response_format={"type": "json_object"}), None),
    ("response_format json_schema without schema", "chat",
     c(response_format={"type": "json_schema"}), None),
    ("response_format bogus type", "chat", c(response_format={"type": "xml"}), None),
    ("continue_final_message with generation prompt", "chat",
     c(continue_final_message=True, add_generation_prompt=True), None),
    ("truncate_prompt_tokens -2", "chat", c(truncate_prompt_tokens=-2), None),
    ("message not an object", "chat", {"model": M, "messages": ["hi"]}, None),
    # Deliberate differences.
    ("no model", "chat", {"messages": MSG}, MODEL_REQUIRED),
    ("max_tokens as a string", "chat", c(max_tokens="10"), STRICT),
    ("stream as a string", "chat", c(stream="yes"), STRICT),
    ("temperature as a string", "chat", c(temperature="0.5"), STRICT),
    ("max_tokens zero", "chat", c(max_tokens=0), None),
    ("messages empty", "chat", {"model": M, "messages": []}, RENDER),
    ("text part without text", "chat",
     {"model": M, "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
     STRICT),
    ("image part without url", "chat",
     {"model": M, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, RENDER),
    ("top_logprobs above 20", "chat", c(logprobs=True, top_logprobs=50),
     "OpenAI's limit is 20; vLLM's is the server's --max-logprobs, checked later"),
    # Completions.
    ("plain completion", "completions", p(), None),
    ("token ids", "completions", {"model": M, "prompt": [1, 2, 3]}, None),
    ("token-id lists", "completions", {"model": M, "prompt": [[1, 2], [3]]}, None),
    ("several strings", "completions", {"model": M, "prompt": ["a", "b"]}, None),
    ("echo with max_tokens 0", "completions", p(echo=True, max_tokens=0, logprobs=1), None),
    ("prompt object", "completions", {"model": M, "prompt": {"a": 1}}, None),
    ("prompt mixed list", "completions", {"model": M, "prompt": ["a", 1]}, None),
    ("best_of below n", "completions", p(n=3, best_of=2),
     "OpenAI's API refuses best_of < n; vLLM 0.32 ignores best_of"),
    ("temperature above 2", "completions", p(temperature=3), None),
    ("no prompt", "completions", {"model": M}, None),
    ("empty prompt", "completions", p(prompt=""), None),
    ("negative token id", "completions", {"model": M, "prompt": [1, -2]}, None),
    ("logprobs above 20", "completions", p(logprobs=99),
     "OpenAI's limit is 20; vLLM's is the server's --max-logprobs, checked later"),
    ("echo as a string", "completions", p(echo="y"), STRICT),
]  # fmt: skip


def vllm_accepts(kind: Kind, body: dict[str, Any]) -> bool:
    """vLLM's verdict before rendering: its request model, then its sampling-parameter checks."""
    model = (vllm_chat.ChatCompletionRequest if kind == "chat" else
             vllm_completion.CompletionRequest)  # fmt: skip
    try:
        req = model.model_validate(json.loads(json.dumps(body)))
        mt = getattr(req, "max_completion_tokens", None)
        mt = mt if mt is not None else req.max_tokens
        req.to_sampling_params(mt if mt is not None else 16, {})
    except Exception:  # pydantic's ValidationError, VLLMValidationError, ValueError
        return False
    return True


def gateway_accepts(kind: Kind, body: dict[str, Any]) -> bool:
    try:
        parse(kind, json.dumps(body).encode(), CPU)
    except OpenAIError as err:
        assert 400 <= err.status < 500
        return False
    return True


@pytest.mark.parametrize("name,kind,body,reason", TABLE, ids=[row[0] for row in TABLE])
def test_same_verdict_as_vllm_unless_listed(
    name: str, kind: Kind, body: dict[str, Any], reason: str | None
) -> None:
    ours, theirs = gateway_accepts(kind, body), vllm_accepts(kind, body)
    if reason is None:
        assert ours == theirs, f"gateway {'accepts' if ours else 'refuses'}, vLLM does not"
    else:
        assert ours != theirs, f"listed as a deliberate difference ({reason}) but both agree"


def test_the_table_covers_both_verdicts() -> None:
    """Rows where vLLM refuses and where it accepts (so neither side is vacuous)."""
    verdicts = {vllm_accepts(kind, body) for _, kind, body, _ in TABLE}
    assert verdicts == {True, False}
