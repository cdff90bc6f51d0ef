"""The routing plugins on fake replicas: who is a candidate, and who is picked.

The promises: a replica that is not ready, or draining, never gets a request; a prefix seen
before goes back to its replica while that keeps within the load bound; new prefixes spread like
least-loaded (evenly, deterministically); the load bound is honoured.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from gateway.routing import Request, build_scheduler
from gateway.routing.prefix import PrefixAffinity, routing_key
from gateway.routing.room import HasRoom
from gateway.routing.routable import Routable

K = Request.keyed  # a request known by its affinity key alone


@dataclass(eq=False)
class Fake:
    name: str
    routable: bool = True
    saturated: bool = False
    inflight: int = 0
    cap: int = 8
    served: int = 0

    @property
    def load(self) -> float:
        return float(self.inflight)


def send(picked: Fake) -> Fake:
    picked.served += 1
    return picked


def test_only_routable_replicas_are_candidates() -> None:
    a, b, c = Fake("a"), Fake("b", routable=False), Fake("c")
    assert Routable().filter(K(b""), [a, b, c]) == [a, c]
    sched = build_scheduler("round_robin")
    assert {sched.pick(K(b""), [a, b, c]).name for _ in range(10)} == {"a", "c"}  # type: ignore[union-attr]
    assert sched.pick(K(b""), [b]) is None


def test_room_prefers_below_cap_then_unsaturated_but_never_empties() -> None:
    full, sat, free = Fake("full", inflight=8), Fake("sat", saturated=True), Fake("free")
    assert HasRoom().filter(K(b""), [full, sat, free]) == [free]
    assert HasRoom().filter(K(b""), [full, sat]) == [sat]
    both_full = [Fake("x", inflight=8), Fake("y", inflight=9)]
    assert HasRoom().filter(K(b""), both_full) == both_full  # admission already said "go"


def test_exclude_drops_the_replica_that_failed() -> None:
    a, b = Fake("a"), Fake("b")
    sched = build_scheduler("least_loaded")
    assert sched.pick(K(b"k"), [a, b], exclude=(a,)) is b
    assert sched.pick(K(b"k"), [a], exclude=(a,)) is None


@pytest.mark.parametrize("policy", ["prefix", "least_loaded", "round_robin"])
def test_distinct_prefixes_spread_evenly_one_at_a_time(policy: str) -> None:
    replicas = [Fake("10.0.0.1:8000"), Fake("10.0.0.2:8000"), Fake("10.0.0.3:8000")]
    sched = build_scheduler(policy)
    counts = Counter(
        send(sched.pick(K(f"prompt {i}".encode()), replicas)).name  # type: ignore[arg-type]
        for i in range(300)
    )
    assert max(counts.values()) / min(counts.values()) <= 1.05, counts


def test_a_shared_prefix_sticks_to_its_replica() -> None:
    replicas = [Fake("a"), Fake("b")]
    picker = PrefixAffinity()
    first = send(picker.pick(K(b"system prompt"), replicas))
    for i in range(50):
        send(picker.pick(K(f"other {i}".encode()), replicas))  # others come and go in between
        assert picker.pick(K(b"system prompt"), replicas) is first


def test_the_load_bound_spills_a_hot_prefix_and_remembers_it() -> None:
    a, b = Fake("a"), Fake("b")
    picker = PrefixAffinity(load_factor=1.25, slack=2)
    home = picker.pick(K(b"hot"), [a, b])
    other = b if home is a else a
    placed = []
    for _ in range(12):  # concurrent requests of one prefix: nothing finishes
        r = picker.pick(K(b"hot"), [a, b])
        r.inflight += 1
        placed.append(r)
        # never above 1.25 x the mean load + 2, consistent hashing with bounded loads' bound
        assert r is not home or r.inflight <= 1.25 * (a.inflight + b.inflight) / 2 + 2
    assert other in placed and placed.count(home) > placed.count(other)
    for r in (a, b):
        r.inflight = 0
    assert picker.pick(K(b"hot"), [a, b]) is home  # the burst is over: back where its cache is


def test_a_remembered_replica_that_left_is_replaced() -> None:
    a, b = Fake("a"), Fake("b")
    picker = PrefixAffinity()
    home = picker.pick(K(b"p"), [a, b])
    rest = [r for r in (a, b) if r is not home]
    assert picker.pick(K(b"p"), rest) is rest[0]


def test_routing_key_is_the_leading_text_of_each_api() -> None:
    system = "You are a helpful assistant. " * 40  # longer than the key
    chat = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": "a"}]}
    chat2 = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": "b"}]}
    assert routing_key("chat", chat) == routing_key("chat", chat2)  # same long prefix
    short = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert routing_key("chat", short) == b"hi"
    assert routing_key("completions", {"prompt": ["abc", "def"]}) == b"abc"
    assert routing_key("completions", {"prompt": [1, 2, 3]}) == b"[1,2,3]"
    assert routing_key("messages", {"system": "S", "messages": [{"content": "x"}]}) == b"S\x00x"
    assert routing_key("responses", {"instructions": "I", "input": "q"}) == b"I\x00q"
    assert routing_key("chat", {"messages": [{"role": "user", "content": "x"}]}) != routing_key(
        "chat", {"messages": [{"role": "user", "content": "y"}]}
    )


def test_ties_alternate_even_after_a_replica_was_away() -> None:
    back = Fake("back", served=0)  # restarted: it served nothing for a while
    busy = Fake("busy", served=500)
    sched = build_scheduler("least_loaded")
    picks = [sched.pick(K(f"{i}".encode()), [back, busy]).name for i in range(10)]  # type: ignore[union-attr]
    assert picks.count("back") == picks.count("busy") == 5  # not 10 to the one that was away
