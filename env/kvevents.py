"""Where a replica publishes its KV-cache events, and where a gateway finds them: one rule.

vLLM (``--kv-events-config``, ``vllm/distributed/kv_events.py``, 0.32) publishes batches of
``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared`` on a ZMQ PUB socket and, when asked,
keeps the last ``buffer_steps`` batches for replay on a ZMQ ROUTER socket. Both addresses are
derived from the replica's own HTTP port, so the entrypoint (which renders the flag), the gateway
(which subscribes) and compose agree without a list: publisher on ``port + offset``, replay on
``port + 2 x offset`` (``ENGINE_KV_EVENTS_PORT_OFFSET``). A gateway that knows a replica by its
URL (a static list or a DNS answer) therefore knows where its events are.

The publisher binds only when its endpoint contains ``*`` or ``::`` (vLLM's
``ZmqEventPublisher._is_bind_endpoint``; otherwise it *connects*, to one subscriber). A
wildcard host binds every interface (``tcp://*:P``, as the engine's HTTP port in a pod); a
specific IPv4 host is written as its IPv4-mapped IPv6 form, ``tcp://[::ffff:127.0.0.1]:P``,
which vLLM binds and ZMQ binds on that IPv4 address alone (seen: ``LAST_ENDPOINT`` reads
``tcp://127.0.0.1:P``): a loopback engine keeps its events (which carry prompt token ids) on
loopback. Standard library only (``deploy/`` reads profiles with a bare Python).
"""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlsplit

from env.net import WILDCARDS

MAX_PORT = 65535
BUFFER_STEPS = 10_000  # vLLM's default: batches kept for replay (one per engine step)


class KVEventsError(ValueError):
    """A port layout the events cannot use (one line)."""


def ports(port: int, offset: int) -> tuple[int, int]:
    """(publisher, replay) ports of the replica listening on ``port``."""
    pub, replay = port + offset, port + 2 * offset
    if replay > MAX_PORT:
        raise KVEventsError(
            f"ENGINE_KV_EVENTS_PORT_OFFSET={offset}: replica port {port} puts its replay "
            f"socket on {replay} (> {MAX_PORT}); use a smaller offset"
        )
    return pub, replay


def _bind_host(host: str) -> str:
    if host in WILDCARDS:
        return "*"
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return "*"  # a host name: vLLM binds only wildcards or IPv6 literals
    return f"[::ffff:{ip}]" if ip.version == 4 else f"[{ip}]"


def publisher_config(host: str, port: int, offset: int, replica: int) -> dict[str, object]:
    """The ``--kv-events-config`` of the replica bound to ``host:port`` (replica ``replica``)."""
    pub, replay = ports(port, offset)
    bind = _bind_host(host)
    # vLLM always binds the replay socket: the plain IPv4 form binds that address.
    replay_host = bind.replace("[::ffff:", "").rstrip("]") if "::ffff:" in bind else bind
    return {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"tcp://{bind}:{pub}",
        "replay_endpoint": f"tcp://{replay_host}:{replay}",
        "buffer_steps": BUFFER_STEPS,
        "topic": f"kv-events.replica-{replica}",
    }


def publisher_flag(host: str, port: int, offset: int, replica: int) -> list[str]:
    """``--kv-events-config <json>`` for ``vllm serve``."""
    cfg = publisher_config(host, port, offset, replica)
    return ["--kv-events-config", json.dumps(cfg, separators=(",", ":"), sort_keys=True)]


def subscriber_endpoints(url: str, offset: int) -> tuple[str, str]:
    """(publisher, replay) endpoints a gateway connects to for the replica at ``url``."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if parts.port is None:
        raise KVEventsError(f"{url!r}: no port to derive the KV events endpoints from")
    pub, replay = ports(parts.port, offset)
    if ":" in host:
        host = f"[{host}]"
    return f"tcp://{host}:{pub}", f"tcp://{host}:{replay}"
