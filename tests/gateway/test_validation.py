"""Validation is pure: raw body + policy -> normalised request or an OpenAI error naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from env.settings import EngineSettings, GatewaySettings
from gateway.errors import OpenAIError
from gateway.request.policy import Policy
from gateway.request.validation import Kind, finalize, needs_count, parse

ENV = {"GATEWAY_API_KEYS_FILE": "", "GATEWAY_UNSUPPORTED_SAMPLING": "reject"}


def cpu_policy(**overrides: Any) -> Policy:
    base = Policy.from_settings(EngineSettings.load("cpu"), GatewaySettings.load("cpu"))
    return Policy(**{**base.__dict__, **overrides})


def tpu_policy(**overrides: Any) -> Policy:
    base = Policy.from_settings(
        EngineSettings.load("v6e4-gemma4-26b"), GatewaySettings.load("v6e4-gemma4-26b")
    )
    return Policy(**{**base.__dict__, **overrides})


CPU = cpu_policy()
MODEL = CPU.served_model_names and next(iter(CPU.served_model_names))
TPU = tpu_policy()
TPU_MODEL = next(iter(TPU.served_model_names))


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **kw}


def run(body: dict[str, Any] | bytes, kind: Kind = "chat", policy: Policy = CPU, tokens=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    parsed = parse(kind, raw, policy)
    return finalize(parsed, tokens, policy)


def refused(body: dict[str, Any] | bytes, kind: Kind = "chat", policy: Policy = CPU, tokens=None):
    with pytest.raises(OpenAIError) as info:
        run(body, kind, policy, tokens)
    return info.value


def test_profiles_resolve_policy() -> None:
    assert CPU.platform == "cpu" and not CPU.tpu
    assert CPU.max_model_len == 2048
    assert CPU.prompt_limit == 2048 - 256
    assert TPU.tpu and TPU.mm_limits.get("image", 0) > 0


def test_valid_request_is_forwarded_byte_for_byte() -> None:
    raw = json.dumps(chat(max_tokens=8)).encode()
    final = finalize(parse("chat", raw, CPU), None, CPU)
    assert final.body is raw  # no re-serialisation on the common path
    assert not final.stream and final.max_tokens == 8 and not final.strip_usage


def test_streams_always_ask_the_engine_for_usage_and_strip_it_unless_asked() -> None:
    raw = json.dumps(chat(max_tokens=8, stream=True)).encode()
    final = finalize(parse("chat", raw, CPU), None, CPU)
    # spliced, not re-serialised: the client's bytes follow unchanged
    assert final.body == b'{"stream_options":{"include_usage":true},' + raw[1:]
    assert json.loads(final.body)["stream_options"] == {"include_usage": True}
    assert final.stream and final.strip_usage
    asked = chat(max_tokens=8, stream=True, stream_options={"include_usage": True})
    final = run(asked)
    assert not final.strip_usage and json.loads(final.body) == asked
    other = run(chat(max_tokens=8, stream=True, stream_options={"continuous_usage_stats": False}))
    assert other.strip_usage
    assert json.loads(other.body)["stream_options"] == {
        "continuous_usage_stats": False, "include_usage": True,
    }  # fmt: skip


def test_missing_max_tokens_gets_the_default() -> None:
    final = run(chat())
    assert final.max_tokens == CPU.default_max_tokens
    assert json.loads(final.body)["max_tokens"] == CPU.default_max_tokens


def test_default_max_tokens_shrinks_to_the_room_left() -> None:
    final = run(chat(), tokens=CPU.prompt_limit)
    assert final.max_tokens == min(CPU.default_max_tokens, CPU.max_model_len - CPU.prompt_limit)
    # Room left is only the generation buffer here: the prompt limit applies first.
    policy = cpu_policy(prompt_limit=2048)
    assert run(chat(), policy=policy, tokens=2040).max_tokens == 8


def test_max_completion_tokens_wins() -> None:
    final = run(chat(max_tokens=5, max_completion_tokens=7))
    assert final.max_tokens == 7


def test_short_prompts_skip_the_count_long_ones_do_not() -> None:
    short = parse("chat", json.dumps(chat(max_tokens=10)).encode(), CPU)
    assert not needs_count(short, CPU)
    long_text = "x" * 3000
    long = parse("chat", json.dumps(chat(messages=[{"role": "user", "content": long_text}],
                                         max_tokens=10)).encode(), CPU)  # fmt: skip
    assert needs_count(long, CPU)
    big_gen = parse("chat", json.dumps(chat(max_tokens=2000, stream=True)).encode(), CPU)
    assert needs_count(big_gen, CPU)  # the bound plus 2000 could pass 2048


def test_tools_and_media_always_count() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    parsed = parse("chat", json.dumps(chat(tools=tools, max_tokens=4)).encode(), CPU)
    assert parsed.prompt_upper_bound is None and needs_count(parsed, CPU)


def test_token_id_prompts_are_counted_by_length() -> None:
    body = {"model": MODEL, "prompt": list(range(10, 1010)), "max_tokens": 1048, "stream": True}
    parsed = parse("completions", json.dumps(body).encode(), CPU)
    assert not needs_count(parsed, CPU)
    assert finalize(parsed, None, CPU).max_tokens == 1048
    body["max_tokens"] = 1049
    err = refused(body, "completions")
    assert err.status == 400 and err.param == "max_tokens"


def test_context_boundary_exact_passes_one_over_fails() -> None:
    limit = CPU.max_model_len
    ok = run(chat(max_tokens=limit - 1000, stream=True), tokens=1000)
    assert ok.max_tokens == limit - 1000
    err = refused(chat(max_tokens=limit - 999, stream=True), tokens=1000)
    assert (err.status, err.code, err.param) == (400, "context_length_exceeded", "max_tokens")
    assert str(limit - 1000) in err.message  # says what would fit


def test_prompt_over_the_prompt_limit() -> None:
    err = refused(chat(max_tokens=1, stream=True), tokens=CPU.prompt_limit + 1)
    assert (err.status, err.code, err.param) == (400, "context_length_exceeded", "messages")
    assert run(chat(max_tokens=1, stream=True), tokens=CPU.prompt_limit).max_tokens == 1


def test_truncate_prompt_tokens_is_honoured() -> None:
    body = chat(max_tokens=10, stream=True, truncate_prompt_tokens=100)
    assert run(body, tokens=5000).prompt_tokens == 100


def test_streaming_required_for_long_generations_and_prompts() -> None:
    policy = cpu_policy(stream_required_max_tokens=100, stream_required_prompt_tokens=500)
    err = refused(chat(max_tokens=101), policy=policy)
    assert (err.code, err.param) == ("stream_required", "stream")
    assert '"stream": true' in err.message
    assert run(chat(max_tokens=101, stream=True), policy=policy).stream
    assert run(chat(max_tokens=100), policy=policy).max_tokens == 100
    err = refused(chat(max_tokens=10), policy=policy, tokens=501)
    assert err.code == "stream_required"


def test_unknown_model_is_404() -> None:
    err = refused(chat(model="gpt-4"))
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}


def test_media_limits() -> None:
    err = refused(chat(messages=[{"role": "user", "content": [IMAGE]}]))
    assert err.code == "too_many_images"  # cpu: images not enabled at all
    n = TPU.mm_limits["image"]
    ok = [{"role": "user", "content": [IMAGE] * n}]
    parsed = parse("chat", json.dumps(chat(model=TPU_MODEL, messages=ok)).encode(), TPU)
    assert parsed.prompt_upper_bound is None  # images: always counted
    over = [{"role": "user", "content": [IMAGE] * (n + 1)}]
    err = refused(chat(model=TPU_MODEL, messages=over), policy=TPU)
    assert err.code == "too_many_images" and err.param == "messages"


def test_audio_and_video_rejected_on_tpu_even_if_limits_allow() -> None:
    policy = tpu_policy(mm_limits={"image": 4, "audio": 4, "video": 4})
    err = refused(chat(model=TPU_MODEL, messages=[{"role": "user", "content": [AUDIO]}]),
                  policy=policy)  # fmt: skip
    assert err.code == "unsupported_modality" and "TPU" in err.message
    video = {"type": "video_url", "video_url": {"url": "http://x/v.mp4"}}
    err = refused(chat(model=TPU_MODEL, messages=[{"role": "user", "content": [video]}]),
                  policy=policy)  # fmt: skip
    assert err.code == "unsupported_modality"


def test_tpu_rejects_seed_with_the_reason() -> None:
    err = refused(chat(model=TPU_MODEL, seed=42), policy=TPU)
    assert (err.param, err.code) == ("seed", "unsupported_on_tpu")
    assert "JAX" in err.message
    assert run(chat(seed=42)).max_tokens  # cpu: fine


@pytest.mark.parametrize(
    "param,value",
    [
        ("presence_penalty", 0.5),
        ("frequency_penalty", -0.5),
        ("repetition_penalty", 1.2),
        ("min_p", 0.1),
        ("logit_bias", {"42": 5}),
        ("bad_words", ["x"]),
        ("min_tokens", 3),
    ],
)
def test_tpu_ignored_sampling_rejected_or_stripped(param: str, value: Any) -> None:
    body = chat(model=TPU_MODEL, max_tokens=10, **{param: value})
    err = refused(body, policy=TPU)
    assert (err.param, err.code) == (param, "unsupported_on_tpu")
    stripped = run(body, policy=tpu_policy(unsupported_sampling="strip"))
    assert stripped.stripped == [param]
    assert param not in json.loads(stripped.body)
    assert run(chat(max_tokens=10, **{param: value})).stripped == []  # cpu keeps them


def test_tpu_default_valued_sampling_is_not_flagged() -> None:
    body = chat(model=TPU_MODEL, presence_penalty=0, repetition_penalty=1, min_tokens=0)
    assert run(body, policy=TPU).stripped == []


def test_tpu_structured_output_refused() -> None:
    err = refused(chat(model=TPU_MODEL, response_format={"type": "json_object"}), policy=TPU)
    assert err.code == "unsupported_on_tpu"
    final = run(chat(model=TPU_MODEL, response_format={"type": "text"}), policy=TPU)
    assert json.loads(final.body)["response_format"] == {"type": "text"}


# The bad-input corpus: every entry is a 4xx OpenAI error, never a crash.
M = MODEL
BAD: list[tuple[str, Kind, Any, tuple[int, str, str | None]]] = [
    ("not json", "chat", b"{not json", (400, 'invalid_json', None)),
    ("huge integer", "chat", b'{"model": "' + M.encode() + b'", "messages": [{"role": "user", "content": "x"}], "max_tokens": ' + b"9" * 5000 + b"}", (400, "invalid_json", None)),
    ("infinite float", "chat", b'{"model": "' + M.encode() + b'", "messages": [{"role": "user", "content": "x"}], "temperature": 1e999}', (400, "invalid_value", "temperature")),
    ("empty body", "chat", b"", (400, 'invalid_json', None)),
    ("json array", "chat", b"[1, 2]", (400, 'invalid_type', None)),
    ("json string", "chat", b'"hello"', (400, 'invalid_type', None)),
    ("invalid utf-8", "chat", b'{"model": "\xff\xfe"}', (400, 'invalid_json', None)),
    ("no model", "chat", {"messages": [{"role": "user", "content": "x"}]}, (400, 'missing_field', 'model')),
    ("model not a string", "chat", {"model": 3, "messages": [{"role": "user", "content": "x"}]}, (400, 'invalid_type', 'model')),
    ("unknown model", "chat", chat(model="nope"), (404, 'model_not_found', 'model')),
    ("no messages", "chat", {"model": M}, (400, 'missing_field', 'messages')),
    ("messages not a list", "chat", {"model": M, "messages": "hi"}, (400, 'invalid_type', 'messages')),
    ("messages empty", "chat", {"model": M, "messages": []}, (400, 'invalid_value', 'messages')),
    ("message not an object", "chat", {"model": M, "messages": ["hi"]}, (400, 'invalid_type', 'messages[0]')),
    ("role missing", "chat", {"model": M, "messages": [{"content": "hi"}]}, (400, 'missing_field', 'messages[0].role')),
    ("role outside OpenAI's set", "chat", {"model": M, "messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "x"}]}, (400, 'invalid_value', 'messages[1].role')),
    ("content wrong type", "chat", {"model": M, "messages": [{"role": "user", "content": 5}]}, (400, 'invalid_type', 'messages[0].content')),
    ("part not object", "chat", {"model": M, "messages": [{"role": "user", "content": ["x"]}]}, (400, 'invalid_type', 'messages[0].content[0]')),
    ("part text wrong", "chat",
     {"model": M, "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}, (400, 'invalid_type', 'messages[0].content[0].text')),
    ("image without url", "chat",
     {"model": M, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, (400, 'invalid_value', 'messages[0].content[0]')),
    ("max_tokens string", "chat", chat(max_tokens="10"), (400, 'invalid_type', 'max_tokens')),
    ("max_tokens zero", "chat", chat(max_tokens=0), (400, 'invalid_value', 'max_tokens')),
    ("max_tokens negative", "chat", chat(max_tokens=-5), (400, 'invalid_value', 'max_tokens')),
    ("max_tokens float", "chat", chat(max_tokens=1.5), (400, 'invalid_type', 'max_tokens')),
    ("max_tokens bool", "chat", chat(max_tokens=True), (400, 'invalid_type', 'max_tokens')),
    ("max_tokens huge", "chat", chat(max_tokens=10**9, stream=True), (400, 'context_length_exceeded', 'max_tokens')),
    ("temperature string", "chat", chat(temperature="hot"), (400, 'invalid_type', 'temperature')),
    ("temperature negative", "chat", chat(temperature=-1), (400, 'invalid_value', 'temperature')),
    ("temperature too high", "chat", chat(temperature=5), (400, 'invalid_value', 'temperature')),
    ("top_p zero", "chat", chat(top_p=0), (400, 'invalid_value', 'top_p')),
    ("top_p above one", "chat", chat(top_p=1.5), (400, 'invalid_value', 'top_p')),
    ("n zero", "chat", chat(n=0), (400, 'invalid_value', 'n')),
    ("stream not bool", "chat", chat(stream="yes"), (400, 'invalid_type', 'stream')),
    ("stream_options without stream", "chat", chat(stream_options={"include_usage": True}), (400, 'invalid_value', 'stream_options')),
    ("stream_options wrong type", "chat", chat(stream=True, stream_options=[1]), (400, 'invalid_type', 'stream_options')),
    ("stop wrong type", "chat", chat(stop=5), (400, 'invalid_type', 'stop')),
    ("logit_bias wrong", "chat", chat(logit_bias={"abc": 1}), (400, 'invalid_value', 'logit_bias')),
    ("top_logprobs without logprobs", "chat", chat(top_logprobs=3), (400, 'invalid_value', 'top_logprobs')),
    ("top_logprobs too high", "chat", chat(logprobs=True, top_logprobs=50), (400, 'invalid_value', 'top_logprobs')),
    ("tools not a list", "chat", chat(tools={"type": "function"}), (400, 'invalid_type', 'tools')),
    ("tool without name", "chat", chat(tools=[{"type": "function", "function": {}}]), (400, 'missing_field', 'tools[0].function.name')),
    ("tool_choice without tools", "chat", chat(tool_choice="required"), (400, 'invalid_value', 'tool_choice')),
    ("tool_choice bogus", "chat", chat(tool_choice="sometimes"), (400, 'invalid_value', 'tool_choice')),
    ("response_format bogus", "chat", chat(response_format={"type": "xml"}), (400, 'invalid_value', 'response_format.type')),
    ("min_tokens above max_tokens", "chat", chat(max_tokens=3, min_tokens=10), (400, 'invalid_value', 'min_tokens')),
    ("non-stream too long", "chat", chat(max_tokens=1500), (400, 'stream_required', 'stream')),
    ("presence_penalty out of range", "chat", chat(presence_penalty=3), (400, 'invalid_value', 'presence_penalty')),
    ("seed not int", "chat", chat(seed="abc"), (400, 'invalid_type', 'seed')),
    ("prompt missing", "completions", {"model": M}, (400, 'missing_field', 'prompt')),
    ("prompt empty", "completions", {"model": M, "prompt": ""}, (400, 'invalid_value', 'prompt')),
    ("prompt wrong type", "completions", {"model": M, "prompt": {"a": 1}}, (400, 'invalid_type', 'prompt')),
    ("prompt mixed list", "completions", {"model": M, "prompt": ["a", 1]}, (400, 'invalid_type', 'prompt[1]')),
    ("prompt negative ids", "completions", {"model": M, "prompt": [1, -2]}, (400, 'invalid_value', 'prompt[1]')),
    ("completions logprobs too high", "completions", {"model": M, "prompt": "x", "logprobs": 99}, (400, 'invalid_value', 'logprobs')),
    ("best_of below n", "completions", {"model": M, "prompt": "x", "n": 3, "best_of": 2}, (400, 'invalid_value', 'best_of')),
    ("echo not bool", "completions", {"model": M, "prompt": "x", "echo": "y"}, (400, 'invalid_type', 'echo')),
]  # fmt: skip


@pytest.mark.parametrize("name,kind,body,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_naming_the_parameter(
    name: str, kind: Kind, body: Any, expected: tuple[int, str, str | None]
) -> None:
    """Each bad body gets its own status, code and ``param`` (not just "some 4xx")."""
    err = refused(body, kind)
    assert (err.status, err.code, err.param) == expected
    payload = err.payload()["error"]
    assert set(payload) == {"message", "type", "param", "code"}
    assert payload["type"] == ("invalid_request_error")
    if err.param:  # the message names what to fix
        assert f"'{err.param}'" in err.message or err.param in err.message


def test_every_openai_role_is_accepted_and_the_refusal_names_them() -> None:
    for role in ("system", "developer", "user", "assistant", "tool", "function"):
        parse("chat", json.dumps(chat(messages=[{"role": role, "content": "x"}])).encode(), CPU)
    err = refused({"model": M, "messages": [{"role": "robot", "content": "x"}]}, "chat")
    assert "'developer'" in err.message and "'function'" in err.message and "robot" in err.message


def test_deeply_nested_json_is_a_400_not_a_crash() -> None:
    deep = (
        b'{"model": "'
        + MODEL.encode()
        + b'", "messages": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}"
    )
    err = refused(deep)
    assert (err.status, err.code) == (400, "invalid_json")


def test_errors_name_the_length_parameter_the_client_used() -> None:
    err = refused(chat(max_completion_tokens=1500))
    assert err.code == "stream_required" and "max_completion_tokens" in err.message
    assert "max_tokens=" not in err.message.replace("max_completion_tokens=", "")
    err = refused(chat(max_completion_tokens=CPU.max_model_len, stream=True), tokens=10)
    assert (err.code, err.param) == ("context_length_exceeded", "max_completion_tokens")
    body = {"model": MODEL, "input": "hi", "max_output_tokens": 1500}
    err = refused(body, "responses")
    assert err.code == "stream_required" and "max_output_tokens" in err.message


def test_responses_and_messages_get_the_same_policy_as_chat() -> None:
    final = run({"model": MODEL, "input": "hi"}, "responses")
    assert json.loads(final.body)["max_output_tokens"] == CPU.default_max_tokens
    final = run({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
                "messages")  # fmt: skip
    assert (
        final.max_tokens == 5
        and final.body
        == json.dumps(
            {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        ).encode()
    )
    err = refused({"model": TPU_MODEL, "input": "hi", "seed": 3}, "responses", TPU)
    assert err.code == "unsupported_on_tpu"
    err = refused({"model": TPU_MODEL, "input": "hi", "text": {"format": {"type": "json_schema"}}},
                  "responses", TPU)  # fmt: skip
    assert (err.code, err.param) == ("unsupported_on_tpu", "text.format")
    image = {"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [image]}]}
    err = refused(body, "messages")  # the cpu profile enables no images
    assert err.code == "too_many_images"
