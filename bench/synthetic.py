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
tokens and ends; ``{"drop_after": k}`` closes the connection after k tokens (one inter-token
delay later, when the next one is due); ``{"cut_after": k}`` closes it at once after the k-th
token's chunk (a replica killed right after a chunk: the resume benchmark's switch gap);
``{"crlf": true}`` uses CRLF line ends; ``{"no_done": true}`` omits ``[DONE]``.

``"return_token_ids": true`` (vLLM's field) adds the token ids as vLLM does: ``prompt_token_ids``
on the first event (top level for chat, in the choice for completions) and ``token_ids`` on each
choice, so the gateway's resume path (it asks for them) costs here what it costs against vLLM.
Asked for ids, it behaves like a deterministic model: the token at position p of prompt +
output is ``token_at(p)``, written `` w<id>``, so a continuation from a prompt of token ids (what
the gateway sends after a replica died) goes on with exactly the tokens and text the first
answer would have had.

For routing benchmarks (``python -m bench replicas``), all opt-in so the defaults above hold:

- ``--max-running N``: like vLLM's ``--max-num-seqs``, at most N streams generate at once; the
  rest wait in a FIFO queue (response headers sent, first token not yet) and count in
  ``vllm:num_requests_waiting``. Without it a replica has infinite capacity and adding replicas
  could not change throughput.
- ``--content-token-ids``: ``/tokenize`` returns ids derived from each word (crc32 mod a
  Gemma-sized vocabulary) instead of ``0..n-1``. vllm-router's ``cache_aware`` policy builds its
  prefix tree from the ids ``/tokenize`` returns, so with ``0..n-1`` every prompt of one length
  would look like one shared prefix.
- ``POST /v1/chat/completions/render`` and ``/v1/completions/render`` answer 403 as vLLM 0.32
  does without ``--enable-scale-out``, or 404 (``--render-status 404``) as a vLLM without those
  routes. vllm-router 0.1.17 asks for a render of each request: after a 404 it falls back to
  ``/tokenize`` and its ``cache_aware`` policy matches prefixes on those ids; after a 403 it
  asks every replica, gives up ("preparation_rejected" in its debug log) and routes without
  prefix information.
- ``GET /synthetic/stats``: requests served, HTTP requests per path (what a router probes), and
  requests per leading message (``prefixes``: crc32 of the first message's content, for chat
  requests of two or more messages, i.e. with a system prompt), so a benchmark can tell how
  requests sharing a prefix spread over replicas whatever router sent them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
import zlib
from collections import deque
from typing import Any, ClassVar

import httptools

CHAT_TEMPLATE_TOKENS = 8
VOCAB = 262_144  # Gemma's vocabulary size: the range of ``--content-token-ids``
MAX_PATHS = 64  # distinct paths counted in /synthetic/stats (then "other")
MAX_PREFIXES = 4096  # distinct leading messages counted (then "other")
RENDER_PATHS = (b"/v1/chat/completions/render", b"/v1/completions/render")
RENDER_DISABLED = (
    b'{"error":{"message":"Scale-out endpoints are disabled. Restart vllm serve with '
    b'--enable-scale-out to enable them.","type":"PermissionDeniedError","param":null,'
    b'"code":403}}'
)


class Config:
    def __init__(
        self,
        model: str = "synthetic",
        ttft_ms: float = 0.0,
        itl_ms: float = 10.0,
        max_model_len: int = 1 << 20,
        default_tokens: int = 16,
        max_running: int = 0,
        content_token_ids: bool = False,
        render_status: int = 403,
    ) -> None:
        self.model = model
        self.ttft = ttft_ms / 1000.0
        self.itl = itl_ms / 1000.0
        self.max_model_len = max_model_len
        self.default_tokens = default_tokens
        self.max_running = max_running  # 0: no limit
        self.content_token_ids = content_token_ids
        self.render_status = render_status  # 403: vLLM 0.32 default; 404: a vLLM without it
        self.start_time = time.time()


class Stats:
    running = 0
    requests = 0
    chunks = 0
    waiting: ClassVar[deque[Stream]] = deque()
    paths: ClassVar[dict[str, int]] = {}
    prefixes: ClassVar[dict[str, int]] = {}

    @classmethod
    def count_path(cls, path: bytes) -> None:
        key = path.decode("latin-1")
        if key not in cls.paths and len(cls.paths) >= MAX_PATHS:
            key = "other"
        cls.paths[key] = cls.paths.get(key, 0) + 1

    @classmethod
    def count_prefix(cls, req: dict[str, Any]) -> None:
        key = prefix_key(req)
        if key is None:
            return
        if key not in cls.prefixes and len(cls.prefixes) >= MAX_PREFIXES:
            key = "other"
        cls.prefixes[key] = cls.prefixes.get(key, 0) + 1

    @classmethod
    def snapshot(cls) -> dict[str, Any]:
        return {
            "requests": cls.requests,
            "running": cls.running,
            "waiting": len(cls.waiting),
            "paths": dict(cls.paths),
            "prefixes": dict(cls.prefixes),
        }


def _chunked(payload: bytes) -> bytes:
    """One HTTP/1.1 chunked-encoding frame."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _response(status: int, body: bytes, ctype: bytes = b"application/json") -> bytes:
    reason = {200: b"OK", 404: b"Not Found", 400: b"Bad Request", 403: b"Forbidden"}.get(
        status, b"Error"
    )
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
        "cut_after",
        "drop_after",
        "eol",
        "error_after",
        "handle",
        "head",
        "ids",
        "left",
        "n",
        "no_done",
        "prompt",
        "prompt_tokens",
        "proto",
        "queued",
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
        self.cut_after = fault.get("cut_after")
        self.ids = bool(req.get("return_token_ids"))
        self.no_done = bool(fault.get("no_done"))
        self.usage = bool((req.get("stream_options") or {}).get("include_usage"))
        self.prompt_tokens = count_tokens(req, chat)
        prompt = req.get("prompt")
        self.prompt = prompt if isinstance(prompt, list) and not chat else None  # token ids
        kind = b"chat.completion.chunk" if chat else b"text_completion"
        self.head = b'data: {"id":"%s-%d","object":"%s","created":%d,"model":"%s","choices":' % (
            b"chatcmpl" if chat else b"cmpl",
            rid,
            kind,
            int(time.time()),
            cfg.model.encode(),
        )
        self.handle: asyncio.TimerHandle | None = None
        self.queued = False

    def _choice(self, first: bool, last: bool) -> bytes:
        finish = b'"length"' if last else b"null"
        ids = b""
        text = b" tok"
        if self.ids:
            token = token_at(self.prompt_tokens + self.sent)
            text = b" w%d" % token
            ids = b',"token_ids":[%d]' % token
            if first and not self.chat:
                ids = b',"prompt_token_ids":%s%s' % (self._prompt_ids(), ids)
        if self.chat:
            delta = b'{"role":"assistant","content":"%s"}' % text if first else (
                b'{"content":"%s"}' % text)  # fmt: skip
            top = b',"prompt_token_ids":%s' % self._prompt_ids() if first and self.ids else b""
            return b'[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s%s}]%s' % (
                delta, finish, ids, top)  # fmt: skip
        return b'[{"index":0,"text":"%s","logprobs":null,"finish_reason":%s%s}]' % (
            text, finish, ids)  # fmt: skip

    def _prompt_ids(self) -> bytes:
        ids = self.prompt if self.prompt is not None else list(range(self.prompt_tokens))
        return json.dumps(ids, separators=(",", ":")).encode()

    def start(self) -> None:
        self.proto.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        cap = self.proto.cfg.max_running
        if cap and Stats.running >= cap:  # like vLLM's waiting queue: FIFO, first token later
            self.queued = True
            Stats.waiting.append(self)
            return
        self.run()

    def run(self) -> None:
        Stats.running += 1
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
        if self.cut_after is not None and self.sent >= self.cut_after and not last:
            proto.write(_chunked(event))
            self.stop()
            proto.transport.close()
            return
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
            _admit_waiting()
        elif self.queued:  # its client went away while it waited
            self.queued = False
            Stats.waiting.remove(self)
        self.proto.stream = None


def token_at(position: int) -> int:
    """The deterministic "model": the token id at a position of prompt + output."""
    return 100 + (position * 7919) % 3000


def _admit_waiting() -> None:
    """A running slot freed: the longest-waiting stream starts (its TTFT timer now)."""
    if Stats.waiting:
        nxt = Stats.waiting.popleft()
        nxt.queued = False
        nxt.run()


def _message_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def prompt_words(req: dict[str, Any]) -> list[str]:
    """The prompt's words in order (every message's content, or the completion prompt)."""
    if "messages" in req:
        words: list[str] = []
        for m in req.get("messages") or []:
            words += _message_text(m.get("content")).split()
        return words
    prompt = req.get("prompt", "")
    return [] if isinstance(prompt, list) else str(prompt).split()


def content_token_ids(req: dict[str, Any], chat: bool) -> list[int]:
    """Token ids that depend on the words (crc32 of each, mod ``VOCAB``), the same count as
    ``count_tokens``: equal prefixes give equal leading ids, different words different ids."""
    prompt = req.get("prompt")
    if not chat and isinstance(prompt, list):
        return [int(t) for t in prompt]
    ids = [zlib.crc32(w.encode()) % VOCAB for w in prompt_words(req)]
    if chat or "messages" in req:
        ids = list(range(2, 2 + CHAT_TEMPLATE_TOKENS)) + ids  # the template's fixed tokens
    return ids


def prefix_key(req: dict[str, Any]) -> str | None:
    """The leading message's identity (crc32 of its content, hex) for a chat request of two or
    more messages; None otherwise (a lone message is all suffix, nothing shared to track)."""
    msgs = req.get("messages")
    if not isinstance(msgs, list) or len(msgs) < 2 or not isinstance(msgs[0], dict):
        return None
    return f"{zlib.crc32(_message_text(msgs[0].get('content')).encode()):08x}"


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
        Stats.count_path(path)
        if path in (b"/v1/chat/completions", b"/v1/completions") and method == b"POST":
            req = json.loads(body)
            fault = req.get("synthetic") or {}
            Stats.requests += 1
            Stats.count_prefix(req)
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
                f'vllm:num_requests_waiting{{model_name="{m}"}} {len(Stats.waiting)}.0\n'
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
            ids = content_token_ids(req, chat) if cfg.content_token_ids else list(range(n))
            doc = {"count": n, "max_model_len": cfg.max_model_len, "tokens": ids}
            self.write(_response(200, json.dumps(doc).encode()))
        elif path == b"/detokenize" and method == b"POST":
            ids = json.loads(body).get("tokens") or []
            doc = {"prompt": " ".join(f"w{i}" for i in ids)}
            self.write(_response(200, json.dumps(doc).encode()))
        elif path == b"/version":
            self.write(_response(200, b'{"version":"synthetic"}'))
        elif path in RENDER_PATHS and method == b"POST":
            if cfg.render_status == 404:
                self.write(_response(404, b'{"error":"not found"}'))
            else:
                self.write(_response(403, RENDER_DISABLED))
        elif path == b"/synthetic/stats":
            self.write(_response(200, json.dumps(Stats.snapshot()).encode()))
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
    p.add_argument(
        "--max-running",
        type=int,
        default=0,
        help="streams generating at once, the rest queue (like --max-num-seqs); 0: no limit",
    )
    p.add_argument(
        "--content-token-ids",
        action="store_true",
        help="/tokenize returns ids derived from the words (for prefix-aware routers)",
    )
    p.add_argument(
        "--render-status",
        type=int,
        choices=(403, 404),
        default=403,
        help="answer to /v1/*/render: 403 (vLLM 0.32 default) or 404 (no such route)",
    )
    p.set_defaults(func=cmd_synthetic)


def cmd_synthetic(args: argparse.Namespace) -> int:
    from bench.shards import new_loop

    cfg = Config(
        args.model,
        args.ttft_ms,
        args.itl_ms,
        args.max_model_len,
        max_running=args.max_running,
        content_token_ids=args.content_token_ids,
        render_status=args.render_status,
    )
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(serve(cfg, args.host, args.port))
    return 0
