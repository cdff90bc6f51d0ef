"""Which replica serves a request: small filters, then one picker (GIE's scheduler, in spirit).

The Gateway API Inference Extension splits endpoint selection into one-method plugins (filters
narrow the candidates, scorers rank them, a picker chooses); this package does the same at the
size this gateway needs, one plugin a file:

- ``routable.Routable``: ready for its current engine instance and not draining (a hard rule);
- ``room.HasRoom``: below its cap and not saturated, unless none is (then all of them: admission
  has already decided the request goes upstream, the least bad replica takes it);
- a picker by ``GATEWAY_ROUTING``: ``prefix.PrefixAffinity`` (a prefix seen before goes back
  to its replica unless that breaks the load bound, a new one to the least loaded),
  ``least_loaded.LeastLoaded``, ``round_robin.RoundRobin``, ``kv.KVCacheAware`` (the longest
  prefix each replica really holds, from the engines' KV-cache events, with load; ``prefix``
  where that is not known).

The plugins read replicas through ``Candidate``, the narrow view they define, and get the whole
request (``Request``: parsed kind and body, the token ids when a policy ``wants_tokens``); each
derives its own inputs (``prefix.affinity_key``, the index's block hashes). ``Scheduler.pick`` costs a few microseconds
for a handful of replicas (``python -m bench routing`` prints it).
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.routing.base import Candidate, Filter, Picker, Request, Scheduler
from gateway.routing.kv import CacheView, KVCacheAware
from gateway.routing.least_loaded import LeastLoaded
from gateway.routing.prefix import PrefixAffinity
from gateway.routing.room import HasRoom
from gateway.routing.round_robin import RoundRobin
from gateway.routing.routable import Routable

__all__ = ["Candidate", "Filter", "Picker", "Request", "Scheduler", "build_scheduler"]


def build_scheduler(policy: str, index: CacheView | None = None) -> Scheduler:
    """The scheduler for ``GATEWAY_ROUTING`` (``kv`` reads ``index``, the engines' KV events)."""
    pickers: dict[str, Callable[[], Picker]] = {
        "prefix": PrefixAffinity,
        "least_loaded": LeastLoaded,
        "round_robin": RoundRobin,
        "kv": lambda: KVCacheAware(index) if index is not None else PrefixAffinity(),
    }
    if policy not in pickers:
        raise ValueError(f"GATEWAY_ROUTING={policy!r}: one of {', '.join(pickers)}")
    return Scheduler([Routable(), HasRoom()], pickers[policy]())
