"""Prometheus text, read in one place (the gateway's monitor, the warm-up, the ops server,
tests, benchmarks).

Two readers on purpose: ``values`` is a ``str.find`` scan for the monitor's poll (four times a
second per engine, a few names out of a page of hundreds of samples: the full parser would be
most of the monitor's CPU), and ``samples``/``Scrape`` use ``prometheus_client``'s own parser for
everything where speed does not matter and labels do. One rule sums by labels (``matching``).

A histogram's mean over a period is ``increase(_sum) / increase(_count)``: over the whole run
that is the counters themselves, over a window the difference of two scrapes (what Prometheus'
``rate(x_sum) / rate(x_count)`` computes).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


def values(text: str, name: str) -> list[float]:
    """Every sample value of metric ``name`` (labelled or not), by a fast scan of the text."""
    out: list[float] = []
    start = 0
    while True:
        i = text.find(name, start)
        if i < 0:
            return out
        start = i + len(name)
        at_line_start = i == 0 or text[i - 1] == "\n"
        nxt = text[start : start + 1]
        if not at_line_start or nxt not in ("{", " "):
            continue
        end = text.find("\n", start)
        line = text[start : end if end >= 0 else len(text)]
        try:
            out.append(float(line.rsplit("}", 1)[-1].split()[0]))
        except (ValueError, IndexError):
            continue


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample named exactly ``name`` (a counter's ``..._total`` too)."""
    return [
        (dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def matching(found: Iterable[tuple[Mapping[str, str], float]], **labels: str) -> float | None:
    """Sum of the values whose labels include ``labels``; None if there are none."""
    hits = [v for lab, v in found if all(lab.get(k) == x for k, x in labels.items())]
    return sum(hits) if hits else None


def metric_sum(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``labels``; None if there are none."""
    return matching(samples(text, name), **labels)


def metric_labels(text: str, name: str) -> dict[str, str]:
    """Labels of the first sample of an ``*_info`` style metric ({} if absent)."""
    found = samples(text, name)
    return found[0][0] if found else {}


@dataclass(frozen=True)
class Scrape:
    """One page of samples: (sample name, labels, value), and when it was taken."""

    samples: tuple[tuple[str, tuple[tuple[str, str], ...], float], ...]
    taken_at: float = field(default_factory=time.time)
    families: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str, taken_at: float | None = None) -> Scrape:
        samples = []
        families = set()
        for family in text_string_to_metric_families(text):
            families.add(family.name)
            for s in family.samples:
                samples.append((s.name, tuple(sorted(s.labels.items())), float(s.value)))
        return cls(tuple(samples), taken_at or time.time(), frozenset(families))

    def names(self) -> set[str]:
        """Every sample name (``x_total``, ``x_bucket``, ...) and family name on the page."""
        return {name for name, _, _ in self.samples} | set(self.families)

    def get(self, name: str, **labels: str) -> float | None:
        """Sum of the samples named ``name`` whose labels include ``labels``; None if none."""
        return matching(((dict(lab), v) for n, lab, v in self.samples if n == name), **labels)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for n, lab, v in self.samples:
            if n == name and (key := dict(lab).get(label)) is not None:
                out[key] = out.get(key, 0.0) + v
        return out


def histogram_mean(
    now: Scrape, name: str, before: Scrape | None = None
) -> tuple[float | None, int]:
    """(mean, observations) of histogram ``name`` since ``before`` (None: since the start)."""
    s1, c1 = now.get(f"{name}_sum"), now.get(f"{name}_count")
    if s1 is None or c1 is None:
        return None, 0
    s0 = (before.get(f"{name}_sum") or 0.0) if before else 0.0
    c0 = (before.get(f"{name}_count") or 0.0) if before else 0.0
    count = c1 - c0
    if count <= 0:
        return None, 0
    return (s1 - s0) / count, round(count)


def increase(now: Scrape, name: str, before: Scrape | None = None, **labels: str) -> float | None:
    """A counter's increase since ``before`` (its value when None); None if absent."""
    v1 = now.get(name, **labels)
    if v1 is None:
        return None
    v0 = (before.get(name, **labels) or 0.0) if before else 0.0
    return max(0.0, v1 - v0)  # a counter reset (new engine instance) shows as no increase
