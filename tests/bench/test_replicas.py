"""bench.replicas: argument parsing, the result maths, the workloads, the routing microbenchmark,
and the synthetic upstream's additions the benchmark stands on (its run-slot queue, content
token ids, the render answer vllm-router gets, /synthetic/stats). No timed assertions: the
benchmark prints speed, these check what it computes. One tiny real run (a few seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench import replicas as R
from bench.cli import build_parser
from bench.synthetic import (
    CHAT_TEMPLATE_TOKENS,
    VOCAB,
    Config,
    Protocol,
    content_token_ids,
    prefix_key,
)
from gateway.routing.prefix import routing_key
from tests.support.process import REPO

# --- arguments --------------------------------------------------------------------------------


def test_defaults_cover_the_issues_matrix() -> None:
    args = build_parser().parse_args(["replicas"])
    assert args.replicas == [1, 2, 4] and args.concurrency == [64, 256]
    assert [r.label for r in args.routers] == [
        "gateway prefix", "gateway least_loaded", "gateway round_robin",
        "vllm-router cache_aware", "vllm-router power_of_two",
    ]  # fmt: skip
    assert args.workloads == ["distinct", "shared"] and args.prefixes == 8
    assert not args.routing_only
    assert build_parser().parse_args(["routing"]).routing_only  # the alias the gateway cites


def test_router_list_is_checked_one_line_per_problem() -> None:
    assert R.parse_routers("vllm-router:power_of_two, gateway:round_robin") == [
        R.RouterSpec("vllm-router", "power_of_two"), R.RouterSpec("gateway", "round_robin"),
    ]  # fmt: skip
    with pytest.raises(argparse.ArgumentTypeError) as err:
        R.parse_routers("nginx:rr,gateway:cache_aware,gateway:prefix,gateway:prefix")
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    assert "'nginx:rr'" in lines[0] and "gateway or vllm-router" in lines[0]
    assert "'gateway:cache_aware'" in lines[1] and "prefix, least_loaded, round_robin" in lines[1]
    assert "listed twice" in lines[2]


def test_bad_workloads_and_counts_are_refused() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="bogus"):
        R.parse_workloads("shared,bogus")
    assert R.parse_workloads("shared,distinct,shared") == ["shared", "distinct"]
    with pytest.raises(argparse.ArgumentTypeError):
        R.positive_list("0,2")


def test_power_of_two_needs_two_replicas() -> None:
    assert R.RouterSpec("vllm-router", "power_of_two").min_replicas() == 2
    assert R.RouterSpec("vllm-router", "cache_aware").min_replicas() == 1
    assert R.RouterSpec("gateway", "prefix").min_replicas() == 1


def test_each_replica_gets_the_replica_model_and_render_answer() -> None:
    args = build_parser().parse_args(["replicas", "--max-running", "7", "--itl-ms", "3"])
    argv = R.synthetic_argv(args, "gemma")
    assert argv[argv.index("--model") + 1] == "gemma" and "--content-token-ids" in argv
    assert argv[argv.index("--max-running") + 1] == "7"
    assert argv[argv.index("--itl-ms") + 1] == "3.0"
    assert argv[argv.index("--render-status") + 1] == "404"  # vllm-router's /tokenize path
    no = build_parser().parse_args(["replicas", "--render-status", "403"])
    assert R.synthetic_argv(no, "gemma")[-1] == "403"


def test_vllm_router_command_line() -> None:
    argv = R.vllm_router_argv("vr", 9000, 9001, ["http://a:1", "http://b:2"], "cache_aware")
    assert argv[argv.index("--worker-urls") + 1 : argv.index("--worker-urls") + 3] == [
        "http://a:1", "http://b:2",
    ]  # fmt: skip
    assert argv[argv.index("--policy") + 1] == "cache_aware"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--prometheus-port") + 1] == "9001"


# --- result maths -------------------------------------------------------------------------------


def test_diff_balance_and_per_1k() -> None:
    assert R.diff_counts({"a": 3, "b": 5}, {"a": 7, "b": 5, "c": 2}) == {"a": 4, "c": 2}
    assert R.balance([130, 100, 120]) == pytest.approx(1.3)
    assert R.balance([5, 0]) is None and R.balance([]) is None
    assert R.per_1k(0.5, 250) == pytest.approx(2.0)
    assert R.per_1k(None, 10) is None and R.per_1k(1.0, 0) is None


def test_prefix_spread_is_the_top_replicas_share_per_prefix() -> None:
    per_replica = [{"p1": 9, "p2": 2, "other": 50}, {"p1": 1, "p2": 2}, {"p2": 4}]
    spread = R.prefix_spread(per_replica)
    assert spread == {"p1": pytest.approx(0.9), "p2": pytest.approx(0.5)}  # "other" ignored


def test_run_row_against_hand_worked_values() -> None:
    metrics = {"requests": 40, "errors": 1, "timeouts": 1, "request_throughput": 20.0,
               "output_throughput": 640.0, "ttft_ms_p50": 55.0, "ttft_ms_p99": 80.0}  # fmt: skip
    row = R.run_row(
        2, R.RouterSpec("gateway", "prefix"), "shared", 64, metrics, [22, 18],
        [{"a": 9, "b": 1}, {"a": 1, "b": 9}], cpu_s=0.2, upstream_calls=120,
        gateway_served=[22, 18],
    )  # fmt: skip
    assert row["errors"] == 2 and row["served"] == [22, 18]
    assert row["balance"] == pytest.approx(22 / 18)
    assert row["prefix_top_mean"] == pytest.approx(0.9) and row["prefix_top_min"] == 0.9
    assert row["prefixes_seen"] == 2
    assert row["cpu_s_per_1k_requests"] == pytest.approx(5.0)
    assert row["upstream_calls_per_request"] == pytest.approx(3.0)
    assert row["gateway_served_matches"] is True
    distinct = R.run_row(2, R.RouterSpec("vllm-router", "cache_aware"), "distinct", 64, metrics,
                         [20, 20], [{}, {}], None, 40)  # fmt: skip
    assert distinct["prefix_top_mean"] is None and distinct["cpu_s_per_1k_requests"] is None
    assert distinct["gateway_served_matches"] is None


def test_request_calls_and_polling_apart() -> None:
    paths = {"/v1/chat/completions": 10, "/v1/chat/completions/render": 10, "/tokenize": 10,
             "/health": 3, "/metrics": 5, "/synthetic/stats": 2}  # fmt: skip
    assert R.request_calls(paths) == 30
    assert R.polled(paths) == {"/health": 3, "/metrics": 5}


def test_markdown_table_has_every_column() -> None:
    row = R.run_row(1, R.RouterSpec("gateway", "round_robin"), "distinct", 64,
                    {"requests": 10, "errors": 0, "timeouts": 0, "request_throughput": 1.5,
                     "output_throughput": 48.0, "ttft_ms_p50": None, "ttft_ms_p99": 2.0},
                    [10], [{}], 0.01, 10)  # fmt: skip
    _, md = R.render([row], R.RUN_COLUMNS, "t")
    lines = md.splitlines()
    assert len(lines) == 3
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert len(cells) == len(R.RUN_COLUMNS)
    assert cells[:5] == ["1", "gateway round_robin", "distinct", "64", "1.5"]
    assert cells[6] == "-"  # no TTFT p50: a dash, never 0
    assert cells[8] == "10"


# --- workloads ----------------------------------------------------------------------------------


def test_shared_workload_draws_few_long_system_prompts() -> None:
    p = R.Prompts(suffix_words=5, prefixes=3, prefix_words=40, seed=1)
    bodies = [p.body(i) for i in range(60)]
    systems = {b["messages"][0]["content"] for b in bodies}
    users = {b["messages"][1]["content"] for b in bodies}
    assert len(systems) == 3 and len(users) == 60
    assert all(len(s.split()) == 40 for s in systems)
    assert p.tokens == 5 + 40 + CHAT_TEMPLATE_TOKENS
    order = [p.prefix_of(i) for i in range(60)]
    assert order != [i % 3 for i in range(60)]  # not in lock-step with round-robin routing
    assert R.Prompts(5, 3, 40, seed=1).body(7) == p.body(7)  # deterministic from the seed


def test_distinct_workload_is_one_user_message_each() -> None:
    p = R.Prompts(suffix_words=6, seed=2)
    msgs = p.text(3)
    assert len(msgs) == 1 and msgs[0]["role"] == "user" and len(msgs[0]["content"].split()) == 6
    assert p.prefix_of(3) is None and p.text(4) != msgs


def test_messages_target_sends_the_message_list() -> None:
    t = R.MessagesTarget("http://x", "m", api="chat")
    msgs = R.Prompts(3, 2, 4).text(0)
    body = json.loads(t.payload(msgs, 7))
    assert body["messages"] == msgs and body["max_tokens"] == 7 and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_gateway_keys_tell_the_shared_prefixes_apart() -> None:
    p = R.Prompts(suffix_words=8, prefixes=4, prefix_words=200)
    keys = {routing_key("chat", p.body(i)) for i in range(40)}
    assert len(keys) == 4  # the key is the first 512 characters: the system prompt alone


# --- routing microbenchmark ---------------------------------------------------------------------


def test_routing_latency_with_a_fake_clock() -> None:
    ticks = iter(range(0, 10**9, 500))  # every clock read 0.5 us later
    bodies = [R.Prompts(4, 2, 20).body(i) for i in range(10)]
    row = R.routing_latency("least_loaded", 4, bodies, 50, clock=lambda: next(ticks))
    assert row["pick_us_p50"] == pytest.approx(0.5) and row["key_pick_us_p50"] == pytest.approx(1.0)
    assert row["decisions"] == 50 and row["replicas"] == 4


def test_routing_rows_cover_every_policy_and_size() -> None:
    args = build_parser().parse_args(["routing", "--decisions", "40", "--routing-replicas", "2,3"])
    rows = R.routing_rows(args)
    assert [(r["policy"], r["replicas"]) for r in rows] == [
        (p, n) for n in (2, 3) for p in R.GATEWAY_POLICIES
    ]
    assert "PASS" in R.routing_verdict([{**rows[0], "key_pick_us_p50": 99.0}])
    assert "MISS" in R.routing_verdict([{**rows[0], "key_pick_us_p50": 101.0}])


# --- the synthetic upstream's additions --------------------------------------------------------


def test_content_token_ids_follow_the_words() -> None:
    a = {
        "messages": [{"role": "system", "content": "alpha beta"}, {"role": "user", "content": "x"}]
    }
    b = {
        "messages": [{"role": "system", "content": "alpha beta"}, {"role": "user", "content": "y"}]
    }
    ia, ib = content_token_ids(a, chat=True), content_token_ids(b, chat=True)
    assert len(ia) == 3 + CHAT_TEMPLATE_TOKENS
    assert ia[:-1] == ib[:-1] and ia[-1] != ib[-1]  # a shared prefix, then different
    assert ia[CHAT_TEMPLATE_TOKENS] == zlib.crc32(b"alpha") % VOCAB
    assert content_token_ids({"prompt": [5, 6]}, chat=False) == [5, 6]
    assert len(content_token_ids({"prompt": "one two three"}, chat=False)) == 3


def test_prefix_key_needs_a_leading_message() -> None:
    two = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}
    assert prefix_key(two) == f"{zlib.crc32(b's'):08x}"
    assert prefix_key({"messages": [{"role": "user", "content": "u"}]}) is None
    assert prefix_key({"prompt": "p"}) is None


@pytest.fixture(scope="module")
def limited() -> Iterator[str]:
    """A synthetic replica with one run slot and content token ids."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "synthetic", "--port", "0", "--itl-ms", "5",
         "--ttft-ms", "5", "--max-running", "1", "--content-token-ids"],
        cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "http://" in line, line
        yield line.split()[3]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def _metric(text: str, name: str) -> float:
    return next(float(x.split()[-1]) for x in text.splitlines() if x.startswith(name))


def test_one_run_slot_queues_the_second_stream(limited: str) -> None:
    """The second stream waits (headers sent, no token) until the first gives its slot back,
    here by its client going away mid-stream, so nothing depends on timing."""
    msgs = [{"role": "system", "content": "s1"}, {"role": "user", "content": "q"}]
    endless = {"model": "m", "max_tokens": 10**6, "stream": True, "messages": msgs}
    short = {**endless, "max_tokens": 5}
    with (
        httpx.Client(timeout=20) as a,
        httpx.Client(timeout=20) as b,
        a.stream("POST", limited + "/v1/chat/completions", json=endless) as first,
    ):
        chunks = first.iter_raw()  # kept: a dropped iterator closes the response
        next(chunks)  # the first stream is generating
        with b.stream("POST", limited + "/v1/chat/completions", json=short) as second:
            m = httpx.get(limited + "/metrics").text
            assert _metric(m, "vllm:num_requests_running") == 1.0
            assert _metric(m, "vllm:num_requests_waiting") == 1.0
            first.close()  # its client goes away: the slot goes to the waiting stream
            text = b"".join(second.iter_raw()).decode()
            assert text.rstrip().endswith("data: [DONE]") and text.count('"t":') == 5
    m = httpx.get(limited + "/metrics").text
    assert _metric(m, "vllm:num_requests_running") == 0.0  # every slot given back
    assert _metric(m, "vllm:num_requests_waiting") == 0.0


def test_render_is_refused_like_vllm_and_tokenize_gives_content_ids(limited: str) -> None:
    msgs = [{"role": "user", "content": "red green"}]
    r = httpx.post(limited + "/v1/chat/completions/render", json={"messages": msgs}, timeout=5)
    assert r.status_code == 403 and "enable-scale-out" in r.json()["error"]["message"]
    assert httpx.post(limited + "/v1/completions/render", json={"prompt": "a"}).status_code == 403
    tok = httpx.post(limited + "/tokenize", json={"messages": msgs}, timeout=5).json()
    assert tok["count"] == 2 + CHAT_TEMPLATE_TOKENS
    assert tok["tokens"][-2:] == [zlib.crc32(b"red") % VOCAB, zlib.crc32(b"green") % VOCAB]


def test_render_can_answer_404_like_a_vllm_without_the_route() -> None:
    """In process, through the protocol's router (no server needed for one answer)."""

    class Sink:
        def __init__(self) -> None:
            self.data = b""

        def write(self, data: bytes) -> None:
            self.data += data

    async def answer(status: int) -> bytes:
        proto = Protocol(Config(render_status=status))
        proto.transport = Sink()  # type: ignore[assignment]
        proto.route(b"POST", b"/v1/chat/completions/render", b"{}")
        return proto.transport.data  # type: ignore[attr-defined]

    assert asyncio.run(answer(404)).startswith(b"HTTP/1.1 404 ")
    assert asyncio.run(answer(403)).startswith(b"HTTP/1.1 403 ")


def test_stats_count_requests_paths_and_prefixes(limited: str) -> None:
    before = httpx.get(limited + "/synthetic/stats").json()
    for system in ("s1", "s1", "s2"):
        body = {"model": "m", "max_tokens": 1, "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": "q"}]}  # fmt: skip
        assert (
            httpx.post(limited + "/v1/chat/completions", json=body, timeout=10).status_code == 200
        )
    httpx.get(limited + "/health")
    after = httpx.get(limited + "/synthetic/stats").json()
    assert after["requests"] - before["requests"] == 3
    assert R.diff_counts(before["prefixes"], after["prefixes"]) == {
        f"{zlib.crc32(b's1'):08x}": 2, f"{zlib.crc32(b's2'):08x}": 1,
    }  # fmt: skip
    paths = R.diff_counts(before["paths"], after["paths"])
    assert paths["/v1/chat/completions"] == 3 and paths["/health"] == 1


# --- a tiny real run ----------------------------------------------------------------------------


def test_tiny_run_through_the_gateway(tmp_path: Path) -> None:
    """Two synthetic replicas, the real gateway, 8 streams, 16 requests per workload."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "replicas", "--replicas", "2", "--concurrency", "4",
         "--routers", "gateway:prefix", "--tokens", "3", "--itl-ms", "2", "--ttft-ms", "2",
         "--max-running", "4", "--prefixes", "2", "--prefix-words", "150",
         "--requests-per-stream", "1", "--min-requests", "16", "--decisions", "50",
         "--idle-s", "0.2", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((out / "results.json").read_text())
    runs = data["runs"]
    assert [(r["workload"], r["router"]) for r in runs] == [
        ("distinct", "gateway prefix"),
        ("shared", "gateway prefix"),
    ]
    for r in runs:
        assert r["errors"] == 0 and r["requests"] == 16 and sum(r["served"]) == 16
        assert r["gateway_served_matches"] is True  # the gateway's counts = the replicas' own
        assert r["upstream_calls_per_request"] == 1.0
    assert runs[1]["prefixes_seen"] == 2 and runs[0]["prefixes_seen"] == 0
    assert len(data["routing"]) == 9
    assert "| replicas | router |" in (out / "results.md").read_text()
