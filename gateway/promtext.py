"""Prometheus text, read in one place (the gateway's monitor, the warm-up, tests, benchmarks).

Two readers on purpose: ``values`` is a ``str.find`` scan for the monitor's poll (four times a
second per engine, a few names out of a page of hundreds of samples: the full parser would be
most of the monitor's CPU), and ``samples`` is ``prometheus_client``'s own parser for everything
where speed does not matter and labels do.
"""

from __future__ import annotations

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


def metric_sum(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``labels``; None if there are none."""
    found = [v for lab, v in samples(text, name) if all(lab.get(k) == x for k, x in labels.items())]
    return sum(found) if found else None


def metric_labels(text: str, name: str) -> dict[str, str]:
    """Labels of the first sample of an ``*_info`` style metric ({} if absent)."""
    found = samples(text, name)
    return found[0][0] if found else {}
