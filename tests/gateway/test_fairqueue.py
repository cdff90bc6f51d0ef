"""The fair queue's order: strict priority between classes, SFQ between keys, longest-queue drop."""

from __future__ import annotations

from gateway.admission.fairqueue import Entry, FairQueue


def drain(q: FairQueue) -> list[str]:
    out = []
    while (e := q.pop()) is not None:
        out.append(e.payload)
    return out


def push(
    q: FairQueue, key: str, n: int, prio: int = 0, weight: float = 1.0, cost: float = 1.0
) -> list[Entry]:
    entries = [Entry(key, prio, weight, f"{key}{i}", cost) for i in range(n)]
    for e in entries:
        q.push(e)
    return entries


def test_a_newcomer_goes_after_at_most_one_request_of_a_flooding_key() -> None:
    q = FairQueue()
    push(q, "flood", 50)
    assert q.pop().payload == "flood0"
    push(q, "short", 1)
    assert [q.pop().payload for _ in range(2)] == ["short0", "flood1"]


def test_keys_alternate_whatever_they_queued_and_fifo_does_not() -> None:
    fair, fifo = FairQueue(), FairQueue(fair=False)
    for q in (fair, fifo):
        push(q, "a", 4)
        push(q, "b", 2)
    assert drain(fair) == ["a0", "b0", "a1", "b1", "a2", "a3"]
    assert drain(fifo) == ["a0", "a1", "a2", "a3", "b0", "b1"]


def test_weights_share_the_slots() -> None:
    q = FairQueue()
    push(q, "heavy", 6, weight=2.0)
    push(q, "light", 3)
    assert drain(q) == [
        "heavy0", "light0", "heavy1", "heavy2", "light1", "heavy3", "heavy4", "light2", "heavy5",
    ]  # fmt: skip


def test_higher_priority_first_unless_not_eligible() -> None:
    q = FairQueue()
    push(q, "batch", 2, prio=0)
    push(q, "chat", 1, prio=10)
    assert q.pop(lambda p: p != 10).payload == "batch0"  # interactive held: batch may go
    assert q.pop().payload == "chat0"
    assert q.pop(lambda p: p != 0) is None


def test_remove_and_ahead() -> None:
    q = FairQueue()
    a = push(q, "a", 3)
    b = push(q, "b", 1)
    assert q.ahead(b[0]) == 1  # after a0 only
    assert q.ahead(a[2]) == 3
    assert q.remove(a[1]) and not q.remove(a[1])
    assert len(q) == 3 and drain(q) == ["a0", "b0", "a2"]


def test_full_queue_victim_is_the_newest_of_the_longest_or_lower_class() -> None:
    q = FairQueue()
    push(q, "flood", 5)
    push(q, "x", 1)
    assert q.victim("x", 0).payload == "flood4"  # x would have 2, flood has 5
    assert q.victim("flood", 0) is None  # the longest flow cannot push out others
    push(q, "batch", 2, prio=-1)
    assert q.victim("flood", 0).payload == "batch1"  # a lower class goes first
    assert FairQueue(fair=False).victim("x", 0) is None


def test_turns_cost_their_tokens_and_a_served_request_is_settled_to_what_it_used() -> None:
    """Per request, two keys of 100-token requests would each get as many turns as a key of
    10-token ones (a third of them); counted in tokens, the short key's requests go ten for one
    of theirs. A request that reserved 100 tokens but used 10 is refunded the difference."""
    q = FairQueue()
    push(q, "long1", 3, cost=100)
    push(q, "long2", 3, cost=100)
    push(q, "short", 12, cost=10)
    assert drain(q) == [
        "long10", "long20", "short0",  # every key's first starts at 0: arrival breaks ties
        *(f"short{i}" for i in range(1, 10)),  # until the short key's finish reaches 100
        "long11", "long21", "short10", "short11", "long12", "long22",
    ]  # fmt: skip
    long, short = push(q, "long", 3, cost=100), push(q, "short", 3, cost=10)
    assert q.ahead(short[2]) == 3 and q.ahead(long[1]) == 4  # Retry-After counts by the tags

    q = FairQueue()
    push(q, "greedy", 1, cost=100)
    push(q, "other", 1, cost=100)
    assert q.pop().payload == "greedy0"  # charged 100, it used 10
    q.settle("greedy", 0, 100, 10)
    q.pop()  # other0
    push(q, "other", 1, cost=100)
    push(q, "greedy", 1, cost=100)
    assert q.pop().payload == "greedy0", "its finish is 10, the other key's 100"


def test_equal_start_tags_go_to_the_key_that_used_less_not_the_oldest_queued() -> None:
    """Refunds put two keys' finish below the class's virtual time, so both start at it: the key
    that used less goes first, though the other's request queued before it (by arrival alone,
    the oldest queued, a flood's, would win every such tie: FIFO again)."""
    q = FairQueue()
    push(q, "flood", 2, cost=100)
    push(q, "light", 1, cost=100)
    assert drain(q) == ["flood0", "light0", "flood1"]  # the virtual time is now 100
    q.settle("flood", 0, 100, 5)
    q.settle("flood", 0, 100, 5)  # flood's finish: 200 - 190 = 10
    q.settle("light", 0, 100, 2)  # light's: 100 - 98 = 2
    push(q, "flood", 1, cost=100)
    light = push(q, "light", 1, cost=100)
    assert q.ahead(light[0]) == 0
    assert drain(q) == ["light0", "flood0"]
