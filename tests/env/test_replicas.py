"""Which replicas a deployment has (env/replicas.py): the one answer every role reads, and one
clear line per problem for a list that cannot be served."""

from __future__ import annotations

import pytest

from env.replicas import UpstreamError, dns_target, static_upstreams, upstream_problems
from env.settings import EngineSettings, GatewaySettings


def gw(**kw: object) -> GatewaySettings:
    return GatewaySettings(_env_file=None, **kw)  # type: ignore[arg-type, call-arg]


def eng(**kw: object) -> EngineSettings:
    return EngineSettings(_env_file=None, **kw)  # type: ignore[arg-type, call-arg]


def test_the_profile_replicas_are_consecutive_ports_on_the_engine_host() -> None:
    ups = static_upstreams(eng(replicas=3, port=8100, host="0.0.0.0"), gw())
    assert [u.url for u in ups] == [f"http://127.0.0.1:{p}" for p in (8100, 8101, 8102)]
    assert [u.name for u in ups] == ["127.0.0.1:8100", "127.0.0.1:8101", "127.0.0.1:8102"]


def test_an_explicit_list_wins_and_names_replicas_by_host_and_port() -> None:
    ups = static_upstreams(eng(replicas=4), gw(upstream_urls=" http://10.0.0.5:8000/ ,http://b:9"))
    assert [(u.url, u.name) for u in ups] == [("http://10.0.0.5:8000", "10.0.0.5:8000"),
                                              ("http://b:9", "b:9")]  # fmt: skip
    assert [u.url for u in static_upstreams(eng(), gw(upstream_url="http://e:1"))] == ["http://e:1"]


@pytest.mark.parametrize(
    ("urls", "problem"),
    [
        ("10.0.0.5:8000", "must start with http:// or https://"),
        ("http://:8000", "has no host"),
        ("http://engine", "needs an explicit port"),
        ("http://engine:99999", "is not a URL"),
        ("http://engine:8000/v1", "without a path or query"),
        ("http://a:1,http://a:1", "replica a:1 is listed twice"),
        ("http://a:1,,http://b:1", "an empty entry"),
    ],
)
def test_bad_upstream_lists_are_refused_with_one_line_each(urls: str, problem: str) -> None:
    with pytest.raises(UpstreamError) as info:
        static_upstreams(eng(), gw(upstream_urls=urls))
    assert len(info.value.problems) == 1 and problem in info.value.problems[0]
    assert info.value.problems[0].startswith("GATEWAY_UPSTREAM_URLS: ")
    assert upstream_problems(eng(), gw(upstream_urls=urls)) == info.value.problems


def test_every_problem_is_listed_not_just_the_first() -> None:
    problems = upstream_problems(eng(), gw(upstream_urls="ftp://a:1,http://b,http://c:1/x"))
    assert len(problems) == 3


def test_zero_replicas_cannot_even_be_configured() -> None:
    with pytest.raises(ValueError, match="replicas"):
        eng(replicas=0)


def test_the_dns_form_is_checked_and_split() -> None:
    assert dns_target(gw()) is None
    assert dns_target(gw(upstream_dns="http://engine.ns.svc.cluster.local:8000")) == (
        "http", "engine.ns.svc.cluster.local", 8000,
    )  # fmt: skip
    assert upstream_problems(eng(), gw(upstream_dns="engine:8000")) != []
