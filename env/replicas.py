"""Which engine replicas a deployment has: one answer for the gateway, the warm-up and compose.

Three ways to say it, in the order the gateway honours them:

- ``GATEWAY_UPSTREAM_DNS=http://engine.ns.svc.cluster.local:8000``: a name resolved to *all*
  its addresses and re-resolved every ``GATEWAY_DNS_REFRESH_S`` (a Kubernetes headless Service
  lists one address per ready pod). The replica set changes at run time; this module only
  checks the URL, the gateway resolves it.
- ``GATEWAY_UPSTREAM_URLS=http://10.0.0.5:8000,http://10.0.0.6:8000``: engines elsewhere.
- neither: ``ENGINE_REPLICAS`` engines on this host, replica ``i`` on ``ENGINE_PORT + i``
  (``GATEWAY_UPSTREAM_URL``, the one-engine override, still wins when set).

A replica is named by its ``host:port``: unique by construction once duplicates are refused, and
what an operator sees in ``/health``, ``/metrics`` and ``make drain REPLICA=...``. Every problem
is one line; ``UpstreamError`` carries them all so a start refuses with the full list.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from env.settings import EngineSettings, GatewaySettings


class UpstreamError(ValueError):
    """The configured upstreams cannot be served; ``problems`` has one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Upstream:
    """One replica's base URL and its name."""

    url: str

    @property
    def name(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port}"


def check_url(raw: str, what: str) -> tuple[str, list[str]]:
    """Normalise one engine base URL (``http(s)://host:port``, no path); problems as lines."""
    url = raw.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a port that is not a number or out of range
        return url, [f"{what}: {raw!r} is not a URL ({exc})"]
    # One line per entry: the first thing wrong (the rest usually follows from it).
    if parts.scheme not in ("http", "https"):
        return url, [f"{what}: {raw!r} must start with http:// or https://"]
    if not parts.hostname:
        return url, [f"{what}: {raw!r} has no host"]
    if port is None:
        return url, [f"{what}: {raw!r} needs an explicit port (e.g. http://host:8000)"]
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return url, [f"{what}: {raw!r} must be a base URL, without a path or query"]
    return url, []


def static_upstreams(engine: EngineSettings, gateway: GatewaySettings) -> list[Upstream]:
    """The fixed replica list (``GATEWAY_UPSTREAM_URLS``, else the engine's own replicas).

    Raises ``UpstreamError`` for malformed URLs, duplicates or an empty list. Not for the DNS
    form: there the set is whatever the name resolves to (``dns_target``).
    """
    if gateway.upstream_urls.strip():
        raws = gateway.upstream_urls.split(",")
        what = "GATEWAY_UPSTREAM_URLS"
    elif gateway.upstream_url.strip():
        raws, what = [gateway.upstream_url], "GATEWAY_UPSTREAM_URL"
    else:
        raws, what = engine.replica_urls, "ENGINE_REPLICAS"
    problems: list[str] = []
    seen: dict[str, str] = {}
    out: list[Upstream] = []
    for raw in raws:
        if not raw.strip():
            problems.append(f"{what}: an empty entry (two commas, or a trailing one)")
            continue
        url, url_problems = check_url(raw, what)
        if url_problems:
            problems += url_problems
            continue
        up = Upstream(url)
        if up.name in seen:
            problems.append(f"{what}: replica {up.name} is listed twice ({seen[up.name]}, {url})")
            continue
        seen[up.name] = url
        out.append(up)
    if not out and not problems:
        problems.append(f"{what}: no replicas")
    if problems:
        raise UpstreamError(problems)
    return out


def dns_target(gateway: GatewaySettings) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of ``GATEWAY_UPSTREAM_DNS``, or None when it is not set."""
    if not gateway.upstream_dns.strip():
        return None
    url, problems = check_url(gateway.upstream_dns, "GATEWAY_UPSTREAM_DNS")
    if problems:
        raise UpstreamError(problems)
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None  # check_url guarantees both
    return parts.scheme, parts.hostname, parts.port


def upstream_problems(engine: EngineSettings, gateway: GatewaySettings) -> list[str]:
    """Every upstream problem as lines (the preflight's view); empty when it can be served."""
    try:
        if dns_target(gateway) is None:
            static_upstreams(engine, gateway)
    except UpstreamError as exc:
        return exc.problems
    return []
