"""``GATEWAY_WORKERS`` without an engine: the restart backoff, one ``/metrics`` page from every
worker's, and the start refused (one line) without the shared state the workers need."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import GatewayMetrics
from gateway.workers.metrics import merge
from gateway.workers.supervisor import Backoff
from protocol.prometheus import samples
from tests.support.gateway import run_gateway
from tests.support.process import REPO, free_port
from tests.support.redis import RedisServer
from tests.support.wait import wait_until


def test_backoff_doubles_while_workers_die_young_and_resets_after_a_stable_run() -> None:
    b = Backoff(first_s=0.5, max_s=4.0, stable_s=30.0)
    assert [b.delay(1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.delay(31.0) == 0.5  # it had lived long enough: start again from the first
    assert b.delay(2.0) == 1.0


def page(requests: int, inflight: float) -> bytes:
    m = GatewayMetrics()
    for _ in range(requests):
        m.request("chat", 200)
    m.gauge("gateway_inflight", "Requests currently upstream", lambda: inflight)
    m.warmup_state.state("ready")
    return m.render()


def test_one_page_labels_every_workers_series_and_names_the_missing() -> None:
    text = merge({"0": page(3, 2), "1": page(4, 1), "2": None}).decode()
    families = [f.name for f in text_string_to_metric_families(text)]
    assert len(families) == len(set(families))  # each family once: a valid exposition
    served = samples(text, "gateway_requests_total")
    assert sorted((lab["worker"], v) for lab, v in served) == [("0", 3.0), ("1", 4.0)]
    assert sum(v for _, v in served) == 7  # the host's requests: sum without (worker)
    assert {lab["worker"]: v for lab, v in samples(text, "gateway_inflight")} == {"0": 2, "1": 1}
    up = {lab["worker"]: v for lab, v in samples(text, "gateway_worker_up")}
    assert up == {"0": 1.0, "1": 1.0, "2": 0.0}
    ready = samples(text, "gateway_warmup_state")
    assert {lab["worker"] for lab, v in ready if lab["gateway_warmup_state"] == "ready" and v} == {
        "0", "1",
    }  # fmt: skip


def start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--profile", "cpu"],
        env={**os.environ, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_UPSTREAM_URL":
             "http://127.0.0.1:9", **env},
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_several_workers_without_shared_state_refuse_to_start_in_one_line(tmp_path: Path) -> None:
    done = start({
        "GATEWAY_WORKERS": "2", "GATEWAY_STATE_URL": "",
        "GATEWAY_PORT": str(free_port()),
        "GATEWAY_INTERNAL_TOKEN_FILE": str(tmp_path / "token"),
    })  # fmt: skip
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("gateway: GATEWAY_WORKERS=2 needs GATEWAY_STATE_URL"), done.stderr


def test_a_port_in_use_is_one_line_before_any_worker_starts(tmp_path: Path) -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):  # another program's, without SO_REUSEPORT
        done = start({
            "GATEWAY_WORKERS": "2", "GATEWAY_STATE_URL": "redis://127.0.0.1:9/0",
            "GATEWAY_PORT": str(port), "GATEWAY_INTERNAL_TOKEN_FILE": str(tmp_path / "token"),
        })  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"gateway: cannot bind 127.0.0.1:{port}")
    assert "worker 0 started" not in done.stderr


@pytest.mark.redis
def test_sighup_to_the_supervisor_reloads_the_keys_in_every_worker(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-workers-old-key-0123456789 old\n")
    env = {
        "GATEWAY_WORKERS": "2",
        "GATEWAY_STATE_URL": redis_server.url,
        "GATEWAY_API_KEYS_FILE": str(keys),
        "GATEWAY_KEYS_RELOAD_S": "0",
    }  # SIGHUP only
    with run_gateway("http://127.0.0.1:9", env=env) as gw:
        wait_until(lambda: gw.log_tail(200).count("serving on") == 2, "both workers up", 60)
        keys.write_text("sk-workers-new-key-0123456789 new\n")
        os.kill(gw.pid, signal.SIGHUP)
        wait_until(lambda: gw.log_tail(200).count("keys file reloaded (SIGHUP)") == 2,
                   "both workers reloaded", 30)  # fmt: skip
        for _ in range(10):  # new connections, spread by the kernel: the new key everywhere
            with httpx.Client(timeout=30) as c:
                r = c.get(f"{gw.url}/v1/models",
                          headers={"Authorization": "Bearer sk-workers-new-key-0123456789"})  # fmt: skip
                old = c.get(f"{gw.url}/v1/models",
                            headers={"Authorization": "Bearer sk-workers-old-key-0123456789"})  # fmt: skip
            assert r.status_code != 401, r.text
            assert old.status_code == 401, old.text  # the check can fail: the old key is gone
