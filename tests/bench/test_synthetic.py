"""bench.synthetic: the upstream the gateway benchmark and the warm-up tests stand on.

It must look like vLLM where the gateway and the warm-up look: chunk format, usage, /metrics,
/tokenize and /detokenize. Talked to over real HTTP (the module's ``synthetic`` process).
"""

from __future__ import annotations

import json

import httpx
import pytest

from bench.synthetic import CHAT_TEMPLATE_TOKENS, count_tokens
from protocol.identity import engine_instance


def test_count_tokens_is_one_per_word_plus_the_chat_template() -> None:
    chat = {"messages": [{"role": "user", "content": "one two three"},
                         {"role": "user", "content": [{"type": "text", "text": "four five"},
                                                      {"type": "image_url"}]}]}  # fmt: skip
    assert CHAT_TEMPLATE_TOKENS == 8
    assert count_tokens(chat, chat=True) == 5 + 8
    assert count_tokens({"prompt": "a b c d"}, chat=False) == 4
    assert count_tokens({"prompt": [1, 2, 3]}, chat=False) == 3  # token ids


def sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_a_stream_in_vllms_chunk_format(synthetic: str, api: str) -> None:
    path, body = (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a b c"}]})
        if api == "chat"
        else ("/v1/completions", {"prompt": "a b c"})
    )
    r = httpx.post(synthetic + path, timeout=10,
                   json={"model": "synthetic", "max_tokens": 3, "stream": True,
                         "stream_options": {"include_usage": True}, **body})  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    tokens, usage = chunks[:-1], chunks[-1]
    assert len(tokens) == 3
    assert usage["choices"] == []
    prompt = 3 + 8 if api == "chat" else 3
    assert usage["usage"] == {"prompt_tokens": prompt, "completion_tokens": 3,
                              "total_tokens": prompt + 3}  # fmt: skip
    finishes = [c["choices"][0]["finish_reason"] for c in tokens]
    assert finishes == [None, None, "length"]
    stamps = [c["t"] for c in tokens]  # emission times, for the chunk-lag measurement
    assert stamps == sorted(stamps)
    if api == "chat":
        assert tokens[0]["object"] == "chat.completion.chunk"
        assert tokens[0]["choices"][0]["delta"] == {"role": "assistant", "content": " tok"}
        assert tokens[1]["choices"][0]["delta"] == {"content": " tok"}
    else:
        assert tokens[0]["object"] == "text_completion"
        assert [c["choices"][0]["text"] for c in tokens] == [" tok"] * 3


def test_a_non_streamed_answer(synthetic: str) -> None:
    r = httpx.post(f"{synthetic}/v1/chat/completions", timeout=10,
                   json={"model": "synthetic", "max_tokens": 4,
                         "messages": [{"role": "user", "content": "hi there"}]})  # fmt: skip
    doc = r.json()
    assert doc["choices"][0]["message"] == {"role": "assistant", "content": " tok" * 4}
    assert doc["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}


def test_the_endpoints_a_gateway_and_a_warm_up_poll(synthetic: str) -> None:
    with httpx.Client(base_url=synthetic, timeout=10) as http:
        assert http.get("/health").status_code == 200
        model = http.get("/v1/models").json()["data"][0]
        assert model["id"] == "synthetic" and model["max_model_len"] == 1 << 20
        metrics = http.get("/metrics").text
        assert engine_instance(metrics) is not None  # an instance identity, like vLLM's
        assert 'vllm:num_requests_running{model_name="synthetic"}' in metrics
        assert http.get("/version").json() == {"version": "synthetic"}
        tok = http.post("/tokenize", json={"prompt": "x y z", "add_special_tokens": False})
        assert tok.json()["count"] == 3 and tok.json()["tokens"] == [0, 1, 2]
        text = http.post("/detokenize", json={"tokens": [5, 6, 7, 8]}).json()["prompt"]
        assert http.post("/tokenize", json={"prompt": text}).json()["count"] == 4  # round trip
        assert http.get("/nope").status_code == 404
        assert http.post("/v1/completions", content=b"{not json").status_code == 400
