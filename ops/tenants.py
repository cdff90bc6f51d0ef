"""Per-key usage over a window, from two scrapes of the gateway's /metrics (pure).

What ``get_tenant_usage`` answers: per key, the requests admitted, the tokens settled (prompt,
completion, cached) and the chip-seconds the gateway's ledger charged (gateway/ledger/: engine
busy time split by the keys' prefill and decode work), with their cost where the deployment has
a price (``gateway_key_chip_cost_usd_total``, from ``PRICE_PER_HOUR_USD``). Counters only, so a
window is the difference of two scrapes (the whole run without an earlier one).
"""

from __future__ import annotations

from typing import Any

from protocol.prometheus import Scrape


def _by_key(now: Scrape, before: Scrape | None, name: str, **labels: str) -> dict[str, float]:
    def per_key(s: Scrape) -> dict[str, float]:
        out: dict[str, float] = {}
        for n, lab, v in s.samples:
            d = dict(lab)
            if n == name and "key" in d and all(d.get(k) == x for k, x in labels.items()):
                out[d["key"]] = out.get(d["key"], 0.0) + v
        return out

    a, b = per_key(now), per_key(before) if before else {}
    return {k: max(0.0, v - b.get(k, 0.0)) for k, v in a.items()}


def tenant_usage(now: Scrape, before: Scrape | None) -> dict[str, Any]:
    requests = _by_key(now, before, "gateway_key_requests_total")
    tokens = {kind: _by_key(now, before, "gateway_key_tokens_total", kind=kind)
              for kind in ("prompt", "completion", "cached")}  # fmt: skip
    chip = {phase: _by_key(now, before, "gateway_key_chip_seconds_total", phase=phase)
            for phase in ("prefill", "decode")}  # fmt: skip
    priced = "gateway_key_chip_cost_usd" in now.families
    cost = _by_key(now, before, "gateway_key_chip_cost_usd_total") if priced else {}
    keys = sorted(
        set(requests) | set(chip["prefill"]) | set(chip["decode"]) | set(tokens["prompt"])
    )
    rows = []
    for k in keys:
        pre, dec = chip["prefill"].get(k, 0.0), chip["decode"].get(k, 0.0)
        rows.append({
            "key": k,
            "requests": round(requests.get(k, 0.0)),
            "prompt_tokens": round(tokens["prompt"].get(k, 0.0)),
            "completion_tokens": round(tokens["completion"].get(k, 0.0)),
            "cached_tokens": round(tokens["cached"].get(k, 0.0)),
            "chip_seconds": round(pre + dec, 4),
            "chip_seconds_prefill": round(pre, 4),
            "chip_seconds_decode": round(dec, 4),
            "cost_usd": round(cost.get(k, 0.0), 6) if priced else None,
        })  # fmt: skip
    busy = now.get("gateway_replica_busy_seconds_total")
    busy0 = (before.get("gateway_replica_busy_seconds_total") or 0.0) if before else 0.0
    return {
        "keys": sorted(rows, key=lambda r: -r["chip_seconds"]),
        "engine_busy_seconds": None if busy is None else round(max(0.0, busy - busy0), 4),
        "priced": priced,
        "price_note": None
        if priced
        else "no PRICE_PER_HOUR_USD in the gateway's profile: chip-seconds without cost",
    }
