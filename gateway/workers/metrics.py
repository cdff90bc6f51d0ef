"""``/metrics`` of every worker from whichever worker answers the scrape.

Why merge at scrape time rather than prometheus_client's multiprocess mode: the gateway's gauges
are read from live state when scraped (``set_function``, the per-replica collector), which
multiprocess mode cannot carry, and a worker's page is cheap to ask for. Each worker serves its
own page on a private Unix socket (``worker-<i>.sock`` in the supervisor's directory); the
worker that gets the scrape reads its siblings' pages (concurrently, bounded by ``timeout_s``),
labels every series of page *i* with ``worker="<i>"`` and renders one page with each family
once. Counters and histograms then add up with ``sum without (worker)``; gauges keep their
per-worker meaning. ``gateway_worker_up{worker}`` says which pages are in (0: the worker did
not answer, e.g. while it restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

LABEL = "worker"


def socket_path(peers_dir: str | Path, index: int) -> Path:
    return Path(peers_dir) / f"worker-{index}.sock"


class _Pages:
    """A collector over already-parsed families (what ``generate_latest`` renders)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def merge(pages: Mapping[str, bytes | None]) -> bytes:
    """One page from each worker's (None: it did not answer), every series labelled."""
    families: dict[str, Metric] = {}
    up = GaugeMetricFamily("gateway_worker_up", "1 for each worker whose metrics are on this "
                           "page (0: it did not answer the scrape)", labels=[LABEL])  # fmt: skip
    for worker, page in pages.items():
        up.add_metric([worker], 0.0 if page is None else 1.0)
        if page is None:
            continue
        for fam in text_string_to_metric_families(page.decode()):
            out = families.get(fam.name)
            if out is None:
                out = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            out.samples.extend(
                Sample(s.name, {**s.labels, LABEL: worker}, s.value, s.timestamp, s.exemplar)
                for s in fam.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Pages([*families.values(), up]))  # type: ignore[arg-type]
    return generate_latest(registry)


async def read_page(path: Path, timeout_s: float) -> bytes | None:
    """A sibling's page from its socket, or None (gone, restarting, too slow)."""
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(str(path))
            return await reader.read()
    except (OSError, TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def gather(
    peers_dir: str | Path, workers: int, me: int, own: bytes, timeout_s: float = 1.0
) -> bytes:
    """The whole host's page: ``own`` (worker ``me``) merged with every sibling's."""
    others = [i for i in range(workers) if i != me]
    found = await asyncio.gather(*(read_page(socket_path(peers_dir, i), timeout_s) for i in others))
    pages: dict[str, bytes | None] = {str(me): own}
    pages.update({str(i): page for i, page in zip(others, found, strict=True)})
    return merge(dict(sorted(pages.items(), key=lambda kv: int(kv[0]))))
