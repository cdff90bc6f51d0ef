"""A tiny fake engine for fault injection: killed mid-stream by a test, restarted as a new instance.

Speaks just enough of vLLM's surface for the gateway: ``/health``, ``/metrics`` (with
``process_start_time_seconds``, so every start is a new instance), ``/tokenize`` and a slow
streaming ``/v1/chat/completions`` (one token every ``--delay`` seconds). Never used where the
real engine can do the job: only to kill an upstream without costing a second real engine.

Run: ``python -m tests.gateway.synthetic_upstream --port N [--delay 0.05]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

START = time.time()
DELAY = 0.05


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    path = scope["path"]
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    if path == "/health":
        await _send(send, 200, b"", b"text/plain")
    elif path == "/metrics":
        text = (
            f"process_start_time_seconds {START}\n"
            'vllm:num_requests_running{engine="0",model_name="gemma-4-tiny"} 0.0\n'
            'vllm:num_requests_waiting{engine="0",model_name="gemma-4-tiny"} 0.0\n'
            'vllm:kv_cache_usage_perc{engine="0",model_name="gemma-4-tiny"} 0.0\n'
        )
        await _send(send, 200, text.encode(), b"text/plain")
    elif path == "/tokenize":
        await _send(send, 200, json.dumps({"count": max(1, len(body) // 4)}).encode())
    elif path == "/v1/chat/completions":
        req = json.loads(body)
        await send(
            {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"text/event-stream")]}
        )  # fmt: skip
        for i in range(int(req.get("max_tokens") or 16)):
            chunk = {"id": "x", "object": "chat.completion.chunk", "model": req["model"],
                     "choices": [{"index": 0, "delta": {"content": f" t{i}"}}]}  # fmt: skip
            data = b"data: " + json.dumps(chunk).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": data, "more_body": True})
            await asyncio.sleep(DELAY)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
    else:
        await _send(send, 404, b"{}")


async def _send(send, status: int, body: bytes, ctype: bytes = b"application/json") -> None:  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype)]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    global DELAY
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    DELAY = args.delay
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
