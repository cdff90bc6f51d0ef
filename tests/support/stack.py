"""Checks shared by the whole-stack tests (`make up`, `make dev`): one real chat completion."""

from __future__ import annotations

from typing import Any

import httpx

MODEL = "gemma-4-tiny"  # ENGINE_SERVED_MODEL_NAME of env/cpu.env


def chat_once(base_url: str, max_tokens: int = 8) -> dict[str, Any]:
    """POST one non-streamed chat completion through ``base_url``; assert it produced tokens."""
    reply = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] > 0
    return body
