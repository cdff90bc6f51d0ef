"""Heatmaps of a sweep (context x concurrency), one PNG per metric.

Skipped and unmeasured cells are drawn grey and labelled with their status code, so a blank
area in the picture is never mistaken for a good or a bad result.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt
import numpy as np

from bench.report import SYMBOL

HEATMAPS = {
    "output_throughput": ("Output throughput (tok/s)", "viridis", "{:,.0f}"),
    "ttft_ms_p50": ("TTFT p50 (ms)", "magma_r", "{:,.0f}"),
    "ttft_ms_p99": ("TTFT p99 (ms)", "magma_r", "{:,.0f}"),
    "error_rate": ("Error + timeout rate", "Reds", "{:.0%}"),
}


def heatmap(rows: list[dict], key: str, title: str, cmap: str, label: str, path: Path) -> None:
    contexts = sorted({r["context"] for r in rows})
    concs = sorted({r["concurrency"] for r in rows})
    by = {(r["context"], r["concurrency"]): r for r in rows}
    data = np.full((len(contexts), len(concs)), np.nan)
    for i, ctx in enumerate(contexts):
        for j, conc in enumerate(concs):
            r = by.get((ctx, conc))
            if r and r.get("requests") and r.get(key) is not None:
                data[i, j] = float(r[key])
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(concs), 1.2 + 0.45 * len(contexts)))
    cm = plt.get_cmap(cmap).with_extremes(bad="#d9d9d9")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cm, aspect="auto", origin="lower")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_xticks(range(len(concs)), [str(c) for c in concs])
    ax.set_yticks(range(len(contexts)), [str(c) for c in contexts])
    ax.set_xlabel("concurrency")
    ax.set_ylabel("context (prompt tokens)")
    ax.set_title(title)
    finite = data[np.isfinite(data)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i, ctx in enumerate(contexts):
        for j, conc in enumerate(concs):
            r = by.get((ctx, conc))
            if r is None:
                continue
            if np.isfinite(data[i, j]):
                text = label.format(data[i, j])
                dark = (data[i, j] < mid) == (not cmap.endswith("_r") and cmap != "Reds")
                color = "white" if dark else "black"
            else:
                text, color = SYMBOL.get(r["status"], r["status"]), "#555555"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_heatmaps(rows: list[dict], out_dir: Path) -> list[Path]:
    paths = []
    for key, (title, cmap, label) in HEATMAPS.items():
        path = out_dir / f"heatmap_{key}.png"
        heatmap(rows, key, title, cmap, label, path)
        paths.append(path)
    return paths
