"""``python -m bench fairness``: the keys file it writes (read by the gateway's own loader), the
scenario matrix and the table it prints (on scripted TTFTs), and one real run: the real gateway
in front of the synthetic upstream, every scenario, every short request answered."""

from __future__ import annotations

import contextlib
import hashlib
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import fairness
from bench.cli import build_parser
from gateway.tenancy import tenants
from tests.support.process import REPO


@pytest.mark.parametrize("flood_class", ["interactive", "batch"])
def test_keys_file_is_one_the_gateway_loads(flood_class: str) -> None:
    keys = tenants.parse(fairness.keys_yaml(flood_class))
    by_digest = {digest: t for digest, t in keys.entries}
    flood = by_digest[hashlib.sha256(fairness.FLOOD.encode()).digest()]
    short = by_digest[hashlib.sha256(fairness.SHORT.encode()).digest()]
    assert (flood.label, flood.sched.name) == ("flood", flood_class)
    assert (short.label, short.sched.name) == ("short", "interactive")
    assert len(keys.entries) == 2 and not flood.limited and not short.limited


def test_a_flood_over_several_keys_is_several_tenants_of_its_class() -> None:
    keys = tenants.parse(fairness.keys_yaml("batch", 3))
    by_digest = {digest: t for digest, t in keys.entries}
    floods = [by_digest[hashlib.sha256(k.encode()).digest()] for k in fairness.flood_keys(3)]
    assert [(t.label, t.sched.name) for t in floods] == [
        ("flood0", "batch"), ("flood1", "batch"), ("flood2", "batch")
    ]  # fmt: skip
    assert len(keys.entries) == 4 and fairness.flood_keys(1) == [fairness.FLOOD]


def test_pct_is_the_nearest_rank() -> None:
    assert fairness._pct([0.3, 0.1, 0.2], 0.5) == 0.2
    assert fairness._pct([0.3, 0.1, 0.2], 0.99) == 0.3
    assert fairness._pct([0.4, 0.1, 0.3, 0.2], 0.5) == 0.3  # rank round(1.5) = 2
    assert fairness._pct([0.4], 0.99) == 0.4
    assert math.isnan(fairness._pct([], 0.5))


# Scripted short-key TTFTs (s) per (flood class, scheduling, flood), in the order run() goes.
SCRIPT = {
    ("interactive", "fair", False): [0.040, 0.050],  # p50 (rank 0) 40 ms, p99 (rank 1) 50 ms
    ("interactive", "fifo", True): [0.1, 0.2, 0.3, 0.4],  # p50 300, p99 400: 7.50x of 40
    ("interactive", "fair", True): [0.050],
    ("batch", "fair", False): [0.010, 0.020, 0.030],
    ("batch", "fifo", True): [],  # nothing answered: no percentiles, no ratio
    ("batch", "fair", True): [0.010],
}


def test_scenarios_and_table(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    started: list[dict[str, object]] = []

    @contextlib.contextmanager
    def upstream(model: str, itl_ms: float, ttft_ms: float) -> Iterator[tuple[str, int]]:
        assert (model, itl_ms, ttft_ms) == ("gemma-4-tiny", 7.0, 3.0)
        yield "http://upstream", 1

    @contextlib.contextmanager
    def gateway(url: str, env: dict[str, str]) -> Iterator[SimpleNamespace]:
        keys = Path(env.pop("GATEWAY_API_KEYS_FILE")).read_text()
        started.append({"upstream": url, "keys": keys, **env})
        yield SimpleNamespace(url=f"http://gw{len(started)}", warm=[])

    async def measure(url: str, args: object, flood_urls: tuple[str, ...] = ()) -> list[float]:
        assert url == f"http://gw{len(started)}"  # the gateway of this scenario
        assert flood_urls in ((), (url,))  # one gateway: the flood goes through it too
        flood = bool(flood_urls)
        env = started[-1]
        flood_class = "batch" if "priority: batch" in str(env["keys"]) else "interactive"
        return SCRIPT[(flood_class, str(env["GATEWAY_SCHEDULING"]), flood)]

    monkeypatch.setattr(fairness, "synthetic_upstream", upstream)
    monkeypatch.setattr(fairness, "run_gateway", gateway)
    monkeypatch.setattr(fairness, "mark_warm", lambda gw: gw.warm.append(True))
    monkeypatch.setattr(fairness, "_measure", measure)
    args = build_parser().parse_args(
        ["fairness", "--cap", "3", "--itl-ms", "7", "--ttft-ms", "3", "--long-tokens", "50"]
    )
    assert args.func(args) == 0

    common = {
        "upstream": "http://upstream", "GATEWAY_MAX_INFLIGHT": "3", "GATEWAY_QUEUE_DEPTH": "48",
        "GATEWAY_QUEUE_TIMEOUT_S": "600", "GATEWAY_METRICS_MAX_AGE_S": "30",
        "GATEWAY_LOG_FORMAT": "off",
    }  # fmt: skip
    assert started == [
        {**common, "keys": fairness.keys_yaml(cls), "GATEWAY_SCHEDULING": sched}
        for cls in ("interactive", "batch")
        for sched in ("fair", "fifo", "fair")
    ]
    out = capsys.readouterr().out
    table = out[out.index("\nshort key TTFT") :]
    assert table == (
        "\nshort key TTFT, cap 3, flood 24 streams of 50 tokens at 7 ms/token; 1 short request/s"
        " of 4 tokens\n"
        "| flood key class | scenario | n | TTFT p50 ms | TTFT p99 ms | p50 / no flood |\n"
        "|---|---|---|---|---|---|\n"
        "| interactive | no flood | 2 | 40.0 | 50.0 | 1.00x |\n"
        "| interactive | flood fifo | 4 | 300.0 | 400.0 | 7.50x |\n"
        "| interactive | flood fair | 1 | 50.0 | 50.0 | 1.25x |\n"
        "| batch | no flood | 3 | 20.0 | 30.0 | 1.00x |\n"
        "| batch | flood fifo | 0 | nan | nan | nanx |\n"
        "| batch | flood fair | 1 | 10.0 | 10.0 | 0.50x |\n"
    )


def test_a_real_run_answers_every_short_request_in_every_scenario() -> None:
    """Timings are printed, never asserted (a shared 2-core machine); what is checked: each of
    the six gateways started, took the keys file, and answered the short key under the flood."""
    cmd = [sys.executable, "-m", "bench", "fairness", "--cap", "1", "--samples", "1",
           "--warmup-s", "0.5", "--long-tokens", "10", "--itl-ms", "5", "--ttft-ms", "5"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [(r[0][2:], r[1], r[2]) for r in rows[1:]] == [
        (cls, scenario, "1")  # n: the one short request was answered with content
        for cls in ("interactive", "batch")
        for scenario in ("no flood", "flood fifo", "flood fair")
    ]
    assert [r[5] for r in rows[1:] if r[1] == "no flood"] == ["1.00x |", "1.00x |"]


@pytest.mark.redis
def test_a_real_fleet_run_shares_state_and_answers_every_scenario() -> None:
    """``--gateways 2``: two real gateways over a redis-server the bench starts; each scenario
    (no flood, the flood through the first gateway, through both) answered the short key."""
    cmd = [sys.executable, "-m", "bench", "fairness", "--gateways", "2", "--cap", "2",
           "--samples", "1", "--warmup-s", "0.5", "--long-tokens", "10", "--itl-ms", "5",
           "--ttft-ms", "5"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "through gateway 2 of 2 (shared state), fleet cap 2" in done.stdout
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [(r[0][2:], r[1]) for r in rows[1:]] == [
        ("no flood", "1"),
        ("flood on gateway 1", "1"),
        ("flood on all 2", "1"),
    ]
