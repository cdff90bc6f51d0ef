"""A minimal synthetic OpenAI-compatible SSE upstream, for measuring the gateway, not an engine.

``python -m bench synthetic --port P --itl-ms 10``: every streamed chat/completions request gets
``max_tokens`` token chunks, the first after ``--ttft-ms``, then one every ``--itl-ms``, in
vLLM's exact chunk format (compact JSON, role on the first chunk, ``finish_reason`` on the last,
a usage chunk when ``stream_options.include_usage``, then ``data: [DONE]``).

Built to cost as little CPU per chunk as possible, so that it is never the bottleneck: a raw
asyncio protocol on uvloop with httptools' C parser (no ASGI framework), chunk bytes assembled
from pre-encoded pieces, one ``call_later`` timer per stream. Each token chunk carries ``"t"``:
its emission time on the machine's monotonic clock (``time.perf_counter``), so a client on the
same machine measures the delivery lag of every chunk, and the gateway's added per-chunk latency
is the difference between the lags through the gateway and directly.

Also served, because a gateway polls them: ``/health``, ``/v1/models`` (with max_model_len),
``/metrics`` (``vllm:num_requests_running/waiting``, ``vllm:kv_cache_usage_perc``,
``process_start_time_seconds``), ``/tokenize`` (one token per whitespace-separated word; chat adds
8 template tokens like the tiny Gemma 4), ``/detokenize`` (one word per token, so the warm-up's
exact-length prompts round-trip), ``/version``.

Fault injection for client tests, per request, through an extra body field ``"synthetic"``:
``{"status": 500}`` answers an error; ``{"error_after": k}`` sends an SSE error event after k
tokens and ends; ``{"drop_after": k}`` closes the connection after k tokens; ``{"crlf": true}``
uses CRLF line ends; ``{"no_done": true}`` omits ``[DONE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from typing import Any

import httptools

CHAT_TEMPLATE_TOKENS = 8


class Config:
    def __init__(
        self,
        model: str = "synthetic",
        ttft_ms: float = 0.0,
        itl_ms: float = 10.0,
        max_model_len: int = 1 << 20,
        default_tokens: int = 16,
    ) -> None:
        self.model = model
        self.ttft = ttft_ms / 1000.0
        self.itl = itl_ms / 1000.0
        self.max_model_len = max_model_len
        self.default_tokens = default_tokens
        self.start_time = time.time()


class Stats:
    running = 0
    requests = 0
    chunks = 0


def _chunked(payload: bytes) -> bytes:
    """One HTTP/1.1 chunked-encoding frame."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _response(status: int, body: bytes, ctype: bytes = b"application/json") -> bytes:
    reason = {200: b"OK", 404: b"Not Found", 400: b"Bad Request"}.get(status, b"Error")
    return b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status,
        reason,
        ctype,
        len(body),
        body,
    )


class Stream:
    """One streamed response: pre-encoded pieces and a timer that emits the next chunk."""

    __slots__ = (
        "chat",
        "drop_after",
        "eol",
        "error_after",
        "handle",
        "head",
        "left",
        "n",
        "no_done",
        "prompt_tokens",
        "proto",
        "sent",
        "usage",
    )  # fmt: skip

    def __init__(self, proto: Protocol, req: dict[str, Any], chat: bool, rid: int) -> None:
        cfg = proto.cfg
        self.proto = proto
        self.chat = chat
        fault = req.get("synthetic") or {}
        self.n = int(req.get("max_tokens") or req.get("max_completion_tokens") or 0)
        self.n = self.n or cfg.default_tokens
        self.left = self.n
        self.sent = 0
        self.eol = b"\r\n" if fault.get("crlf") else b"\n"
        self.error_after = fault.get("error_after")
        self.drop_after = fault.get("drop_after")
        self.no_done = bool(fault.get("no_done"))
        self.usage = bool((req.get("stream_options") or {}).get("include_usage"))
        self.prompt_tokens = count_tokens(req, chat)
        kind = b"chat.completion.chunk" if chat else b"text_completion"
        self.head = b'data: {"id":"%s-%d","object":"%s","created":%d,"model":"%s","choices":' % (
            b"chatcmpl" if chat else b"cmpl",
            rid,
            kind,
            int(time.time()),
            cfg.model.encode(),
        )
        self.handle: asyncio.TimerHandle | None = None

    def _choice(self, first: bool, last: bool) -> bytes:
        finish = b'"length"' if last else b"null"
        if self.chat:
            delta = b'{"role":"assistant","content":" tok"}' if first else b'{"content":" tok"}'
            return b'[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]' % (delta, finish)
        return b'[{"index":0,"text":" tok","logprobs":null,"finish_reason":%s}]' % finish

    def start(self) -> None:
        Stats.running += 1
        self.proto.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        self.handle = self.proto.loop.call_later(self.proto.cfg.ttft, self.tick)

    def tick(self) -> None:
        proto = self.proto
        if proto.closed:
            self.stop()
            return
        if self.error_after is not None and self.sent >= self.error_after:
            err = b'data: {"error":{"message":"synthetic failure","type":"server_error"}}'
            proto.write(_chunked(err + self.eol + self.eol) + b"0\r\n\r\n")
            self.stop()
            return
        if self.drop_after is not None and self.sent >= self.drop_after:
            self.stop()
            proto.transport.close()
            return
        first, last = self.sent == 0, self.left == 1
        event = b'%s%s,"t":%.6f}%s%s' % (
            self.head,
            self._choice(first, last),
            time.perf_counter(),
            self.eol,
            self.eol,
        )
        self.sent += 1
        self.left -= 1
        Stats.chunks += 1
        if last:
            if self.usage:
                usage = json.dumps(
                    {
                        "prompt_tokens": self.prompt_tokens,
                        "total_tokens": self.prompt_tokens + self.n,
                        "completion_tokens": self.n,
                    },
                    separators=(",", ":"),
                ).encode()
                event += b'%s[],"usage":%s}%s%s' % (self.head, usage, self.eol, self.eol)
            if not self.no_done:
                event += b"data: [DONE]" + self.eol + self.eol
            proto.write(_chunked(event) + b"0\r\n\r\n")
            self.stop()
            return
        proto.write(_chunked(event))
        self.handle = proto.loop.call_later(proto.cfg.itl, self.tick)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
            Stats.running -= 1
        self.proto.stream = None


def count_tokens(req: dict[str, Any], chat: bool) -> int:
    """One token per word; chat adds the tiny Gemma 4 template's 8 tokens."""
    if chat or "messages" in req:
        words = 0
        for m in req.get("messages") or []:
            c = m.get("content")
            if isinstance(c, str):
                words += len(c.split())
            elif isinstance(c, list):
                words += sum(len(p.get("text", "").split()) for p in c if isinstance(p, dict))
        return words + CHAT_TEMPLATE_TOKENS
    prompt = req.get("prompt", "")
    return len(prompt) if isinstance(prompt, list) else len(str(prompt).split())


class Protocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive connection; one request at a time (no pipelining needed)."""

    rid = 0

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.url = b""
        self.body: list[bytes] = []
        self.stream: Stream | None = None

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.stream is not None:
            self.stream.stop()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.write(_response(400, b'{"error":"bad request"}'))
            self.transport.close()

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url, self.body = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        try:
            self.route(method, path, b"".join(self.body))
        except (ValueError, KeyError, TypeError) as exc:
            self.write(_response(400, json.dumps({"error": str(exc)}).encode()))

    def route(self, method: bytes, path: bytes, body: bytes) -> None:
        cfg = self.cfg
        if path in (b"/v1/chat/completions", b"/v1/completions") and method == b"POST":
            req = json.loads(body)
            fault = req.get("synthetic") or {}
            Stats.requests += 1
            if status := fault.get("status"):
                self.write(_response(int(status), b'{"error":{"message":"synthetic status"}}'))
                return
            Protocol.rid += 1
            stream = Stream(self, req, path.endswith(b"chat/completions"), Protocol.rid)
            if not req.get("stream"):
                self.write(_response(200, self._full(stream)))
                return
            self.stream = stream
            stream.start()
        elif path in (b"/health", b"/ping"):
            self.write(_response(200, b""))
        elif path == b"/v1/models":
            doc = {
                "object": "list",
                "data": [
                    {
                        "id": cfg.model,
                        "object": "model",
                        "owned_by": "synthetic",
                        "max_model_len": cfg.max_model_len,
                    }
                ],
            }
            self.write(_response(200, json.dumps(doc).encode()))
        elif path == b"/metrics":
            m = cfg.model
            text = (
                f'vllm:num_requests_running{{model_name="{m}"}} {Stats.running}.0\n'
                f'vllm:num_requests_waiting{{model_name="{m}"}} 0.0\n'
                f'vllm:kv_cache_usage_perc{{model_name="{m}"}} 0.0\n'
                f"synthetic_chunks_total {Stats.chunks}\n"
                f"process_start_time_seconds {cfg.start_time}\n"
            )
            self.write(_response(200, text.encode(), b"text/plain; version=0.0.4"))
        elif path == b"/tokenize" and method == b"POST":
            req = json.loads(body)
            chat = "messages" in req
            n = count_tokens(req, chat)
            if not chat and req.get("add_special_tokens") is False:
                n = count_tokens(req, False)
            doc = {"count": n, "max_model_len": cfg.max_model_len, "tokens": list(range(n))}
            self.write(_response(200, json.dumps(doc).encode()))
        elif path == b"/detokenize" and method == b"POST":
            ids = json.loads(body).get("tokens") or []
            doc = {"prompt": " ".join(f"w{i}" for i in ids)}
            self.write(_response(200, json.dumps(doc).encode()))
        elif path == b"/version":
            self.write(_response(200, b'{"version":"synthetic"}'))
        else:
            self.write(_response(404, b'{"error":"not found"}'))

    def _full(self, stream: Stream) -> bytes:
        text = " tok" * stream.n
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        if stream.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        usage = {
            "prompt_tokens": stream.prompt_tokens,
            "completion_tokens": stream.n,
            "total_tokens": stream.prompt_tokens + stream.n,
        }
        return json.dumps(
            {"id": "synthetic", "model": self.cfg.model, "choices": [choice], "usage": usage}
        ).encode()


async def serve(cfg: Config, host: str, port: int, ready: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Protocol(cfg), host, port, backlog=4096)
    actual = server.sockets[0].getsockname()[1]
    print(f"synthetic upstream on http://{host}:{actual} pid {os.getpid()}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synthetic", help="run the synthetic SSE upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    p.add_argument("--model", default="synthetic")
    p.add_argument("--ttft-ms", type=float, default=0.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--max-model-len", type=int, default=1 << 20)
    p.set_defaults(func=cmd_synthetic)


def cmd_synthetic(args: argparse.Namespace) -> int:
    from bench.shards import new_loop

    cfg = Config(args.model, args.ttft_ms, args.itl_ms, args.max_model_len)
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(serve(cfg, args.host, args.port))
    return 0
