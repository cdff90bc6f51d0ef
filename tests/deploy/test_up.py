"""deploy.up: how `make up` reads the gateway's /health and the engine container's state."""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploy.up import engine_problem, main, probe


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


# --- `python3 -m deploy.up` end to end, with a fake `docker` (a real executable on PATH) and a
# loopback server for the gateway's /health --------------------------------------------------

FAKE_DOCKER = """#!/bin/sh
# `docker compose ... <cmd>` and `docker inspect`, answering from files the test writes.
case "$*" in
  *" up "*) [ -f "$FAKE/up-blocks" ] && exec sleep 600; exit "$(cat "$FAKE/up-rc" 2>/dev/null || echo 0)" ;;
  *" ps "*) echo c0ffee ;;
  inspect*) cat "$FAKE/state" ;;
  *" logs "*engine*) printf '\\033[31mengine: RuntimeError: out of HBM\\033[0m\\n' ;;
  *" logs "*) : ;;
esac
"""


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    """A ``docker`` executable first on PATH; returns its control dir."""
    control = tmp_path / "fake"
    (control / "bin").mkdir(parents=True)
    docker = control / "bin" / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{control / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE", str(control))
    (control / "state").write_text('{"Status": "running", "Health": {"Status": "healthy"}}|0')
    return control


def run_up(tmp_path, monkeypatch, srv, *extra: str) -> tuple[int, str, str]:
    profile = tmp_path / "p.env"
    profile.write_text("ENGINE_PLATFORM=cpu\nSTACK_GATEWAY_HOST=127.0.0.1\n")
    monkeypatch.setenv("GATEWAY_PORT", str(srv.server_address[1]))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--profile-file", str(profile), "--timeout", "60", *extra,
                     "--", "docker", "compose", "-p", "test"])  # fmt: skip
    return code, out.getvalue(), err.getvalue()


def test_up_waits_for_the_gateways_health(server, fake_docker, tmp_path, monkeypatch) -> None:
    _Handler.answer = (200, {"status": "ok"})
    code, out, err = run_up(tmp_path, monkeypatch, server)
    assert code == 0, out + err
    assert "up: stack ready in" in out and f"127.0.0.1:{server.server_address[1]}" in out


def test_up_fails_fast_on_a_failed_warm_up(server, fake_docker, tmp_path, monkeypatch) -> None:
    _Handler.answer = (503, {"status": "warmup_failed: logprobs"})
    code, out, err = run_up(tmp_path, monkeypatch, server)
    assert code == 1
    assert "warmup_failed: logprobs" in out  # the reason as it changed
    assert "up: FAILED after" in err and "warm-up failed: warmup_failed: logprobs" in err
    # the engine's last lines, without the terminal colours compose adds
    assert "engine: RuntimeError: out of HBM" in err and "\x1b[" not in err


def test_up_stops_waiting_when_the_engine_container_exits(
    server, fake_docker, tmp_path, monkeypatch
) -> None:
    """`compose up -d` still blocked on the engine's healthcheck, the engine already dead."""
    (fake_docker / "up-blocks").touch()
    (fake_docker / "state").write_text('{"Status": "exited", "ExitCode": 137}|0')
    code, _, err = run_up(tmp_path, monkeypatch, server)
    assert code == 1
    assert "engine container exited with code 137" in err


def test_up_times_out_with_the_last_reason(server, fake_docker, tmp_path, monkeypatch) -> None:
    _Handler.answer = (503, {"status": "warming_up"})
    code, _, err = run_up(tmp_path, monkeypatch, server, "--timeout", "1")
    assert code == 1
    assert "timed out; gateway /health still 503 warming_up" in err


def _two(second: str) -> dict[str, object]:
    return {"status": "ok", "replicas": [{"name": "127.0.0.1:8000", "state": "ready"},
                                         {"name": "127.0.0.1:8001", "state": second}]}  # fmt: skip


def test_probe_200_names_the_replicas_still_coming(server: ThreadingHTTPServer) -> None:
    _Handler.answer = (200, _two("warming_up"))
    health = probe(_url(server))
    assert health.status == 200 and health.waiting == ("127.0.0.1:8001 warming_up",)
    assert health.reason == "1/2 replicas ready; 127.0.0.1:8001 warming_up"
    _Handler.answer = (200, _two("ready"))
    assert probe(_url(server)).waiting == ()


def test_up_waits_for_every_replica_not_just_the_first(
    server, fake_docker, tmp_path, monkeypatch
) -> None:
    """/health is 200 once one replica is ready (GATEWAY_MIN_READY_REPLICAS); `make up` is
    the deploy: it says ready only when all are, and times out saying which one is not."""
    _Handler.answer = (200, _two("warming_up"))
    code, out, err = run_up(tmp_path, monkeypatch, server, "--timeout", "1")
    assert code == 1, out + err
    assert "1/2 replicas ready; 127.0.0.1:8001 warming_up" in out
    assert "timed out; gateway /health still 200 1/2 replicas ready" in err


def test_up_fails_fast_when_one_replicas_warm_up_failed(
    server, fake_docker, tmp_path, monkeypatch
) -> None:
    _Handler.answer = (200, _two("warmup_failed: logprobs"))
    code, _, err = run_up(tmp_path, monkeypatch, server)
    assert code == 1
    assert "warm-up failed: 127.0.0.1:8001 warmup_failed: logprobs" in err


def test_up_refuses_to_start_without_the_secret_files(tmp_path, capsys) -> None:
    profile = tmp_path / "tpu.env"
    profile.write_text(f"ENGINE_PLATFORM=tpu\nENGINE_HF_TOKEN_FILE={tmp_path / 'hf'}\n"
                       f"GATEWAY_API_KEYS_FILE={tmp_path / 'keys'}\n")  # fmt: skip
    assert main(["--profile-file", str(profile), "--", "docker", "compose"]) == 2
    out = capsys.readouterr().out
    assert f"hf_token (ENGINE_HF_TOKEN_FILE): {tmp_path / 'hf'}" in out
    assert f"api_keys (GATEWAY_API_KEYS_FILE): {tmp_path / 'keys'}" in out
