"""The gateway's HTTP limits on real sockets: slow or idle clients, oversized heads, stalled
bodies, and the h2c upgrade offer whose body uvicorn alone would drop.

One gateway process with 1-second head and body timeouts and no engine behind it (nothing here
needs one: a request that gets through is answered 503 engine_down, which proves its body was
read). Waits are on the socket itself (an answer, then end of stream) with generous bounds.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.gateway import RunningGateway, run_gateway
from tests.support.process import free_port

LIMITS = {"GATEWAY_HEAD_TIMEOUT_S": "1", "GATEWAY_BODY_TIMEOUT_S": "1",
          "GATEWAY_MAX_HEAD_BYTES": "32768"}  # fmt: skip
CHAT = json.dumps({"model": "gemma-4-tiny", "messages": [{"role": "user", "content": "x"}],
                   "max_tokens": 2}).encode()  # fmt: skip


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    with run_gateway(f"http://127.0.0.1:{free_port()}", env=LIMITS) as gateway:
        yield gateway


def connect(gw: RunningGateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=30)


def read_to_close(s: socket.socket) -> bytes:
    """Everything the server sends until it closes (the 30 s socket timeout bounds a hang)."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def status_and_error(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)["error"]


def test_an_idle_new_connection_is_closed_with_408(gw: RunningGateway) -> None:
    with connect(gw) as s:
        status, err = status_and_error(read_to_close(s))
    assert (status, err["code"]) == (408, "request_timeout")


def test_a_trickled_head_is_cut_off(gw: RunningGateway) -> None:
    with connect(gw) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n")
        sent = 0
        while sent < 200:  # a byte every 0.2 s, 200 times: far past the 1 s limit
            if select.select([s], [], [], 0.2)[0]:
                break  # the server answered (or closed): stop trickling
            try:
                s.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
        answer = read_to_close(s)
    assert sent < 200, "the server kept reading a head that never ended"
    assert status_and_error(answer)[0] == 408


def test_many_slow_connections_are_all_released(gw: RunningGateway) -> None:
    socks = [connect(gw) for _ in range(50)]
    try:
        for s in socks:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
        answers = [read_to_close(s) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert {status_and_error(a)[0] for a in answers} == {408}


def test_an_oversized_head_is_431(gw: RunningGateway) -> None:
    with connect(gw) as s:
        # The server may answer and close while we are still sending.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(b"GET /health HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * (1024 * 1024))
        status, err = status_and_error(read_to_close(s))
    assert (status, err["code"]) == (431, "request_head_too_large")


def test_a_stalled_body_is_408(gw: RunningGateway) -> None:
    with connect(gw) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mod")  # fmt: skip
        status, err = status_and_error(read_to_close(s))
    assert (status, err["code"]) == (408, "request_timeout")


def test_an_h2c_offer_keeps_its_body(gw: RunningGateway) -> None:
    """Exactly what ``curl --http2 -d @body http://...`` sends: the body must reach the app."""
    with connect(gw) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nUser-Agent: curl/8.5.0\r\n"
            b"Accept: */*\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(CHAT), CHAT)
        )
        answer = read_to_close(s)  # and the connection is closed after the answer
    status, err = status_and_error(answer)
    # Validated (the body arrived whole), then refused only because no engine is up.
    assert (status, err["code"]) == (503, "engine_down")


def test_it_still_serves_after_all_that(gw: RunningGateway) -> None:
    started = time.monotonic()
    r = httpx.get(f"{gw.url}/livez", timeout=30)
    assert r.status_code == 200 and time.monotonic() - started < 30
