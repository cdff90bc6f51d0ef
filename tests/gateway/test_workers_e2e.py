"""``GATEWAY_WORKERS=2`` for real: one ``python -m gateway`` (a supervisor and two workers on one
port), the session's CPU engine and a real redis-server.

Every check reads the gateway's own numbers, never client-side timing: one scrape of
``/metrics`` carries both workers' series (``worker`` label), so "both workers served", "both
are ready" and "both hold streams" are read from it. Connections are spread by the kernel
(``SO_REUSEPORT``: a hash of each new connection's addresses), so every request below opens a
new connection; 30 of them landing all on one worker has odds of 2^-29.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from entrypoint.process import descendants
from gateway.state.ledger import LEADER
from gateway.tenancy.auth import hash_key
from protocol.prometheus import samples
from tests.support.engine import Engine
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.held import held_slots
from tests.support.redis import RedisServer
from tests.support.wait import wait_until

pytestmark = [pytest.mark.engine, pytest.mark.redis, pytest.mark.slow]
MODEL = "gemma-4-tiny"
RPM10 = "sk-workers-rpm-ten-0123456789"
OPEN = "sk-workers-no-limits-01234567"
KEYS = f"""
keys:
  - {{key: {hash_key(RPM10)}, label: rpm10, rpm: 10}}
  - {{key: {hash_key(OPEN)}, label: open}}
"""
WORKERS = ("0", "1")
CAP = 2  # the drain test's fleet-wide in-flight cap: both slots held
MIN_QUEUED = 4


def env_for(redis_server: RedisServer, keys: Path, db: int = 0, **extra: str) -> dict[str, str]:
    """``db``: a gateway started next to the module's ``two`` uses another database, so that it
    does not join that fleet (a CI run's order put the drain test before the ledger test: the
    drain test's workers had shared the ledger's leadership with ``two``'s, and the busy time
    a leader drops when it hands over was missing from the charges for good)."""
    return {
        "GATEWAY_WORKERS": "2",
        "GATEWAY_API_KEYS_FILE": str(keys),
        "GATEWAY_STATE_URL": redis_server.url_for(db),
        # The product's default lease TTL (heartbeats, and the warm-up reads, every 3.3 s). Not
        # shorter: the held 8 x 1,900-token generations of the drain test stall both workers for
        # seconds on 2 cores (Redis MONITOR: 7 s between two renewals). A lease that expires in
        # a stall is taken by a queued stream and re-created by the late renewal (3 holders of a
        # cap of 2), and a ledger lease that expires moves the leadership to the other worker:
        # by the TTL's own rule (a gateway silent for longer has lost what it held), which is
        # not what these tests are about.
        "GATEWAY_STATE_LEASE_TTL_S": "10",
        "GATEWAY_STATE_TIMEOUT_S": "2",  # a loaded machine's stall is not what this tests
        "GATEWAY_METRICS_MAX_AGE_S": "10",
        **extra,
    }


def report_passed_once(gw: RunningGateway) -> None:
    """The sidecar's one POST "passed" (to whichever worker takes it): retried only while the
    worker that takes it has not seen the engine yet (409 or not yet ready to answer)."""

    def post() -> bool:
        state = gw.state()
        instance = state["engine_instance"]
        if not instance or state["state"] == "engine_down":
            return False
        r = httpx.post(
            f"{gw.url}/internal/warmup", headers=gw.internal_headers, timeout=5,
            json={"engine_instance": instance, "status": "passed", "step": None, "detail": None},
        )  # fmt: skip
        return r.status_code == 200

    wait_until(post, "a warm-up report accepted", 60)


def by_worker(text: str, name: str, **labels: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for lab, v in samples(text, name):
        if all(lab.get(k) == x for k, x in labels.items()):
            out[lab["worker"]] = out.get(lab["worker"], 0.0) + v
    return out


def every_worker_ready(gw: RunningGateway) -> str | None:
    text = gw.metrics_text()
    up = by_worker(text, "gateway_worker_up")
    ready = by_worker(text, "gateway_warmup_state", gateway_warmup_state="ready")
    ok = all(up.get(w) == 1 and ready.get(w) == 1 for w in WORKERS)
    return text if ok else None


def why(gw: RunningGateway, codes: list[int]) -> str:
    """What a failure report needs first, short (a CI log shows only its start): the codes, each
    worker's key counters and shared-state gauges, and the log's warnings."""
    text = gw.metrics_text()
    series = [
        ln
        for ln in text.splitlines()
        if ln.startswith("gateway_state_") or (ln.startswith("gateway_key_") and "rpm10" in ln)
    ]
    warnings = [ln for ln in gw.log_tail(400).splitlines() if " WARNING " in ln or "ERROR" in ln]
    return "\n".join([f"codes {dict(Counter(codes))}: {codes}", *series, *warnings[-20:]])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("workers") / "keys.yaml"
    path.write_text(KEYS)
    return path


@pytest.fixture(scope="module")
def two(engine: Engine, redis_server: RedisServer, keys: Path) -> Iterator[RunningGateway]:
    with run_gateway(engine.url, env=env_for(redis_server, keys)) as gw:
        report_passed_once(gw)
        yield gw


def chat(gw: RunningGateway, key: str, max_tokens: int = 1, ignore_eos: bool = False) -> int:
    """One request on a new connection (the kernel picks the worker)."""
    body = {"model": MODEL, "max_tokens": max_tokens, "ignore_eos": ignore_eos,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {key}"}) as c:
        return c.post(f"{gw.url}/v1/chat/completions", json=body).status_code


def test_a_warmup_reported_to_one_worker_makes_every_worker_ready(two: RunningGateway) -> None:
    wait_until(lambda: every_worker_ready(two), "both workers ready after one report", 30)


def test_rpm_10_is_exact_across_workers_and_one_scrape_counts_both(two: RunningGateway) -> None:
    wait_until(lambda: every_worker_ready(two), "both workers ready", 30)
    codes = [chat(two, RPM10) for _ in range(30)]
    assert codes.count(200) == 10 and codes.count(429) == 20, why(two, codes)
    text = two.metrics_text()
    admitted = by_worker(text, "gateway_key_requests_total", key="rpm10")
    refused = by_worker(text, "gateway_key_rejections_total", key="rpm10")
    assert sum(admitted.values()) == 10 and sum(refused.values()) == 20, (admitted, refused)
    took = {w: admitted.get(w, 0) + refused.get(w, 0) for w in WORKERS}
    assert all(took[w] > 0 for w in WORKERS), took  # both workers answered some
    print(f"rpm 10 over 2 workers: {took} requests per worker, 10 admitted: {admitted}")


def test_one_worker_keeps_the_chip_ledger_and_charges_both_workers_requests(
    two: RunningGateway,
) -> None:
    """Issue 28 in a fleet: each worker samples the engine, but only the ledger's leader
    measures busy time and charges it (gateway/state/ledger.py); the other sends its finished
    work there. So exactly one worker exports busy seconds, the requests both workers served are
    charged, and the fleet's chip-seconds equal that one measurement (one CPU chip: chip-seconds
    = busy seconds). Before, each worker charged its own requests all the busy time it saw."""
    wait_until(lambda: every_worker_ready(two), "both workers ready", 30)
    # A live worker leads (after the kill test the dead one's leadership lasts up to the TTL:
    # requests sent before a worker takes it over are charged, but nobody measured their time)
    store = redis.Redis.from_url(two.env["GATEWAY_STATE_URL"], decode_responses=True)

    def live_leader() -> bool:
        holder = store.get(LEADER)  # "host:pid:random"
        return holder is not None and int(holder.split(":")[1]) in descendants(two.pid)

    wait_until(live_leader, "a live worker keeps the ledger", 30)
    store.close()
    before = by_worker(two.metrics_text(), "gateway_key_requests_total", key="open")
    # Long enough that the leader's engine samples (every GATEWAY_METRICS_POLL_S, 0.25 s) see
    # them running: the busy time is measured from those samples. Without ignore_eos the tiny
    # model may stop after a token or two, and 16 requests of a few ms each could all fall
    # between two samples: a local run measured no busy time at all ({} above).
    assert [chat(two, OPEN, max_tokens=64, ignore_eos=True) for _ in range(16)] == [200] * 16

    seen: dict[str, object] = {}

    def settled() -> tuple[dict[str, float], float, dict[str, float]] | None:
        text = two.metrics_text()
        busy = by_worker(text, "gateway_replica_busy_seconds_total")
        chips = sum(by_worker(text, "gateway_key_chip_seconds_total").values())  # every key
        served = by_worker(text, "gateway_key_requests_total", key="open")
        measured = sum(busy.values())
        seen.update(busy=busy, charged=chips)
        done = measured > 0 and abs(chips - measured) < 1e-6 * max(1.0, measured)
        return (busy, chips, served) if done else None

    try:
        busy, chips, served = wait_until(settled, "the ledger settled", 60)
    except AssertionError as exc:  # the numbers and who led, first
        led = [ln for ln in two.log_tail(400).splitlines() if "chip-time ledger" in ln]
        raise AssertionError(f"{seen}; {exc}; leadership:\n" + "\n".join(led)) from None
    assert len([w for w, v in busy.items() if v > 0]) == 1, busy  # one worker measures
    took = {w: served.get(w, 0) - before.get(w, 0) for w in WORKERS}
    assert all(took[w] > 0 for w in WORKERS), took  # both served some: all of it charged once
    print(f"ledger over 2 workers: busy {busy}, charged {chips:.3f} chip-s, requests {took}")


def test_a_killed_worker_is_restarted_and_ready_without_a_new_report(
    two: RunningGateway,
) -> None:
    wait_until(lambda: every_worker_ready(two), "both workers ready", 30)
    workers = sorted(descendants(two.pid))
    assert len(workers) == 2, workers
    victim = workers[1]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in descendants(two.pid) and len(descendants(two.pid)) == 2,
               "a new worker in its place", 60)  # fmt: skip
    # The new worker learns the warm-up from the shared state (nobody reports again).
    wait_until(lambda: every_worker_ready(two), "the restarted worker ready", 60)
    log = two.log_tail(200)
    assert "died (signal SIGKILL)" in log and "restarting in" in log, log
    assert chat(two, OPEN) == 200


def test_sigterm_drains_every_worker_and_the_supervisor_exits_0(
    engine: Engine, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two slots (fleet-wide) held by clients that do not read (``tests/support/held.py``: the
    drain cannot end before the test lets them go, however fast the engine), and short streams
    queued behind them, one new connection at a time until both workers have some: then SIGTERM,
    then the held streams are read. Every stream ends ``[DONE]`` and the supervisor exits 0.
    (A CI run lost the earlier version's race: twelve unheld 200-token streams were over before
    the test's first look at the workers' gauges.)"""
    # One tenant: a key alone takes the whole cap (with several, it leaves one slot free for
    # the others, gateway/admission/headroom.py, and could not hold both).
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - {{key: {hash_key(OPEN)}, label: open}}\n")
    env = env_for(redis_server, keys, 1, GATEWAY_MAX_INFLIGHT=str(CAP), GATEWAY_QUEUE_DEPTH="32",
                  GATEWAY_DRAIN_TIMEOUT_S="300", GATEWAY_QUEUE_TIMEOUT_S="300")  # fmt: skip
    headers = {"Authorization": f"Bearer {OPEN}"}
    with run_gateway(engine.url, env=env) as gw:
        report_passed_once(gw)
        wait_until(lambda: every_worker_ready(gw), "both workers ready", 30)
        ends: list[str] = []

        async def queued_stream(i: int) -> None:
            body = {
                "model": MODEL, "stream": True, "max_tokens": 16, "ignore_eos": True,
                "messages": [{"role": "user", "content": f"drain {i}"}],
            }  # fmt: skip
            last = ""
            async with (
                httpx.AsyncClient(timeout=300, headers=headers) as client,  # its own connection
                client.stream("POST", f"{gw.url}/v1/chat/completions", json=body) as r,
            ):
                assert r.status_code == 200, await r.aread()
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        last = line
            ends.append(last)

        def out_by_worker() -> tuple[dict[str, float], float]:
            text = gw.metrics_text()
            held = by_worker(text, "gateway_inflight")
            queued = by_worker(text, "gateway_queue_depth")
            out = {w: held.get(w, 0) + queued.get(w, 0) for w in WORKERS}
            return out, sum(queued.values())

        async def scenario() -> None:
            limits = httpx.Limits(max_connections=CAP + 2)
            async with (
                httpx.AsyncClient(base_url=gw.url, timeout=300, limits=limits,
                                  headers=headers) as client,
                held_slots(gw, client, CAP),  # read to [DONE] on leaving the block
            ):  # fmt: skip
                tasks: list[asyncio.Task[None]] = []
                deadline = time.monotonic() + 120  # a bound against hanging, not a timing claim
                while True:  # the kernel picks each new connection's worker
                    out, queued = await asyncio.to_thread(out_by_worker)
                    if all(out[w] >= 1 for w in WORKERS) and queued >= MIN_QUEUED:
                        break
                    for t in tasks:  # a queued stream refused or broken says why, now
                        if t.done():  # with the fleet's leases and the workers' own words
                            store = redis.Redis.from_url(
                                env["GATEWAY_STATE_URL"], decode_responses=True
                            )
                            leases = store.zrange("gw:lease:inflight", 0, -1, withscores=True)
                            raise AssertionError(
                                f"a queued stream ended: {t.exception()}; leases {leases}, "
                                f"served by {out}; log:\n{gw.log_tail(40)}"
                            )
                    assert time.monotonic() < deadline, f"never held by both: {out}"
                    if queued == len(tasks) < 24:  # every one so far is queued: one more
                        tasks.append(asyncio.create_task(queued_stream(len(tasks))))
                    await asyncio.sleep(0.1)
                gw.server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            await asyncio.wait_for(asyncio.gather(*tasks), 300)
            assert ends == ["data: [DONE]"] * len(tasks), ends

        asyncio.run(scenario())
        proc = gw.server.proc
        assert proc is not None and proc.wait(timeout=60) == 0
        log = gw.server.log_path.read_text()
        assert log.count("drained: shutting down") == 2, log[-3000:]
        assert "drain timeout" not in log and "all workers exited" in log
