"""deploy.up: how `make up` reads the gateway's /health and the engine container's state."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploy.up import engine_problem, probe


class _Handler(BaseHTTPRequestHandler):
    answer: tuple[int, dict[str, object]] = (200, {"status": "ok"})

    def do_GET(self) -> None:
        code, body = self.answer
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _url(srv: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/health"


def test_probe_ok(server: ThreadingHTTPServer) -> None:
    _Handler.answer = (200, {"status": "ok"})
    assert (probe(_url(server)).status, probe(_url(server)).reason) == (200, "ok")


def test_probe_503_reason(server: ThreadingHTTPServer) -> None:
    _Handler.answer = (503, {"status": "warmup_failed: logprobs"})
    health = probe(_url(server))
    assert health.status == 503
    assert health.reason == "warmup_failed: logprobs"


def test_probe_no_answer() -> None:
    from tests.support.process import free_port

    health = probe(f"http://127.0.0.1:{free_port()}/health", timeout_s=2)
    assert health.status == 0
    assert "no answer" in health.reason


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (None, None),
        ({"Status": "running", "RestartCount": 0, "Health": {"Status": "starting"}}, None),
        ({"Status": "running", "RestartCount": 0, "Health": {"Status": "healthy"}}, None),
        ({"Status": "exited", "ExitCode": 1, "RestartCount": 0}, "exited with code 1"),
        ({"Status": "running", "ExitCode": 1, "RestartCount": 2}, "restarted 2 time(s)"),
        ({"Status": "running", "RestartCount": 0, "Health": {"Status": "unhealthy"}}, "unhealthy"),
    ],
)
def test_engine_problem(state: dict[str, object] | None, expected: str | None) -> None:
    problem = engine_problem(state)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem
