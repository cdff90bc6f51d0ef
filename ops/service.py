"""The tools' work, independent of MCP: every figure is read from the stack or computed from a
documented model, and every failure is an ``OpsError`` whose message says what and where.

Sources: the gateway's ``/health``, ``/internal/warmup`` and ``/metrics`` (internal token), its
``/v1`` routes (a client key when the gateway has keys); each engine's ``/health``, ``/metrics``
and ``/version``; the warm-up's JSON report; the engine log the launcher keeps; the sweep runs;
the profile itself (``entrypoint.render``, ``entrypoint.cache``, ``entrypoint.capacity``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

from entrypoint import cache, capacity
from entrypoint.render import render
from env.settings import ENV_DIR, EngineSettings, PriceSettings
from ops import enginelog, runs
from ops.config import OpsConfig
from protocol.prometheus import Scrape, histogram_mean, increase, metric_sum

STARTED = time.time()
ENGINE_HISTOGRAMS = {
    "ttft_s": "vllm:time_to_first_token_seconds",
    "e2e_s": "vllm:e2e_request_latency_seconds",
    "itl_s": "vllm:inter_token_latency_seconds",
    "queue_s": "vllm:request_queue_time_seconds",
}
GATEWAY_HISTOGRAMS = {
    "ttft_s": "gateway_ttft_seconds",
    "duration_s": "gateway_request_duration_seconds",
    "queue_wait_s": "gateway_queue_wait_seconds",
}
MAX_HISTORY = 256  # scrapes kept per source for windowed figures


class OpsError(Exception):
    """A failure the caller should read: unreachable service, bad input, action refused."""


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or unreachable"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


class Ops:
    def __init__(self, config: OpsConfig) -> None:
        self.cfg = config
        self.timeout = config.ops.request_timeout_s
        self._history: dict[str, list[Scrape]] = {}

    # --- HTTP -----------------------------------------------------------------------------

    def _internal_headers(self) -> dict[str, str]:
        token = self.cfg.internal_token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _client_headers(self) -> dict[str, str]:
        key = self.cfg.api_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def _get(self, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            return await client.get(url, headers=headers or {})

    async def scrape(self, source: str) -> Scrape:
        """``engine`` (the first engine URL), ``engine:<url>`` or ``gateway``: one /metrics page."""
        if source == "gateway":
            url, headers, what = (
                f"{self.cfg.gateway_url}/metrics",
                self._internal_headers(),
                "gateway",
            )
        else:
            base = (
                source.partition(":")[2]
                if source.startswith("engine:")
                else self.cfg.engine_urls[0]
            )
            url, headers, what = f"{base}/metrics", {}, f"engine at {base}"
        try:
            r = await self._get(url, headers)
        except httpx.HTTPError as exc:
            raise OpsError(f"{what}: GET {url}: {_describe(exc)}") from exc
        if r.status_code != 200:
            hint = " (internal token missing or stale?)" if r.status_code == 401 else ""
            raise OpsError(f"{what}: GET {url}: HTTP {r.status_code}{hint}")
        scrape = Scrape.parse(r.text)
        hist = self._history.setdefault(source, [])
        hist.append(scrape)
        del hist[:-MAX_HISTORY]
        return scrape

    def _before(self, source: str, now: Scrape, window_s: float) -> Scrape | None:
        """The kept scrape closest to ``window_s`` before ``now`` without exceeding it."""
        older = [
            s for s in self._history.get(source, []) if s is not now and s.taken_at < now.taken_at
        ]
        inside = [s for s in older if now.taken_at - s.taken_at <= window_s]
        return min(inside, key=lambda s: s.taken_at) if inside else None

    # --- get_system_status ----------------------------------------------------------------

    async def system_status(self) -> dict[str, Any]:
        cfg = self.cfg
        gateway: dict[str, Any] = {"url": cfg.gateway_url}
        try:
            r = await self._get(f"{cfg.gateway_url}/health")
            body = _json(r)
            gateway.update(
                reachable=True,
                health_http=r.status_code,
                serving=r.status_code == 200,
                reason=str(body.get("status")) if isinstance(body, dict) else r.text[:200],
            )
        except httpx.HTTPError as exc:
            gateway.update(
                reachable=False, serving=False, reason=f"gateway unreachable: {_describe(exc)}"
            )
        warm: dict[str, Any] | None = None
        if gateway["reachable"]:
            try:
                r = await self._get(f"{cfg.gateway_url}/internal/warmup", self._internal_headers())
                warm = _json(r) if r.status_code == 200 else {"error": f"HTTP {r.status_code}"}
            except httpx.HTTPError as exc:
                warm = {"error": _describe(exc)}
        gateway["warmup_state"] = warm
        gateway["uptime_s"] = None
        if gateway["reachable"]:
            try:  # the gateway's own process start time, on its /metrics page
                r = await self._get(f"{cfg.gateway_url}/metrics", self._internal_headers())
                start = metric_sum(r.text, "process_start_time_seconds") if r.is_success else None
                gateway["uptime_s"] = round(time.time() - start, 1) if start else None
            except httpx.HTTPError:
                pass
        engines = [await self._engine_status(url) for url in cfg.engine_urls]
        report = self.warmup_report()
        return {
            "profile": cfg.profile.stem,
            "gateway": gateway,
            "engines": engines,
            "warmup_report": report,
            "ops_uptime_s": round(time.time() - STARTED, 1),
            "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    async def _engine_status(self, url: str) -> dict[str, Any]:
        out: dict[str, Any] = {"url": url}
        try:
            r = await self._get(f"{url}/health")
            out["health_http"] = r.status_code
            out["state"] = "up" if r.status_code == 200 else "unhealthy"
        except httpx.HTTPError as exc:
            out.update(state="down", detail=_describe(exc))
            return out
        try:
            s = await self.scrape(f"engine:{url}")
            start = s.get("process_start_time_seconds")
            out.update(
                instance=repr(start) if start is not None else None,
                uptime_s=round(time.time() - start, 1) if start else None,
                running=s.get("vllm:num_requests_running"),
                waiting=s.get("vllm:num_requests_waiting"),
                kv_cache_usage=s.get("vllm:kv_cache_usage_perc"),
            )
        except OpsError as exc:
            out["metrics_error"] = str(exc)
        return out

    def warmup_report(self) -> dict[str, Any]:
        return read_warmup_reports(self.cfg.warmup_report)

    # --- verify_model_health / query_with_stats / get_active_models -------------------------

    def _chat_body(self, prompt: str, max_tokens: int, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.cfg.engine.served_model_name,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def verify_model_health(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        url = f"{self.cfg.gateway_url}/v1/chat/completions"
        t0 = time.perf_counter()
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                r = await client.post(
                    url,
                    json=self._chat_body(prompt, max_tokens, False),
                    headers=self._client_headers(),
                )
        except httpx.HTTPError as exc:
            return {"passed": False, "detail": f"POST {url}: {_describe(exc)}", "latency_s": None}
        latency = time.perf_counter() - t0
        body = _json(r)
        if r.status_code != 200 or not isinstance(body, dict):
            err = body.get("error", {}) if isinstance(body, dict) else {}
            return {
                "passed": False,
                "http_status": r.status_code,
                "latency_s": round(latency, 4),
                "detail": f"HTTP {r.status_code}: {err.get('code') or ''} {err.get('message') or r.text[:200]}".strip(),
            }
        choice = (body.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        text = message.get("content") or message.get("reasoning_content") or ""
        usage = body.get("usage") or {}
        passed = bool(choice.get("finish_reason")) and (usage.get("completion_tokens") or 0) > 0
        return {
            "passed": passed,
            "http_status": 200,
            "latency_s": round(latency, 4),
            "text": text,
            "finish_reason": choice.get("finish_reason"),
            "completion_tokens": usage.get("completion_tokens"),
            "model": body.get("model"),
            "detail": "answered" if passed else "no tokens generated",
        }

    async def query_with_stats(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        """Stream one chat through the gateway. TTFT: first chunk carrying ``choices`` content;
        total: last such chunk (as ``vllm bench serve``); tokens: the usage chunk."""
        url = f"{self.cfg.gateway_url}/v1/chat/completions"
        parts: list[str] = []
        usage: dict[str, Any] = {}
        first = last = None
        finish = None
        t0 = time.perf_counter()
        try:
            async with (
                httpx.AsyncClient(timeout=self.timeout) as client,
                client.stream(
                    "POST", url, json=self._chat_body(prompt, max_tokens, True),
                    headers=self._client_headers(),
                ) as r,
            ):  # fmt: skip
                if r.status_code != 200:
                    text = (await r.aread()).decode(errors="replace")
                    raise OpsError(f"gateway answered HTTP {r.status_code}: {_error_text(text)}")
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise OpsError(
                            f"stream ended with an error: {event['error'].get('message')}"
                        )
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices") or []:
                        delta = choice.get("delta") or {}
                        piece = delta.get("content") or delta.get("reasoning_content") or ""
                        now = time.perf_counter()
                        if first is None:
                            first = now
                        last = now
                        parts.append(piece)
                        finish = choice.get("finish_reason") or finish
        except httpx.HTTPError as exc:
            raise OpsError(f"POST {url}: {_describe(exc)}") from exc
        n = usage.get("completion_tokens")
        total = (last - t0) if last is not None else None
        ttft = (first - t0) if first is not None else None
        decode = (
            (n - 1) / (total - ttft)
            if n and n > 1 and total and ttft is not None and total > ttft
            else None
        )
        return {
            "text": "".join(parts),
            "ttft_s": _r(ttft),
            "total_s": _r(total),
            "output_tokens": n,
            "prompt_tokens": usage.get("prompt_tokens"),
            "tokens_per_s": _r(n / total) if n and total else None,
            "decode_tokens_per_s": _r(decode),
            "finish_reason": finish,
        }

    async def active_models(self) -> dict[str, Any]:
        url = f"{self.cfg.gateway_url}/v1/models"
        try:
            r = await self._get(url, self._client_headers())
        except httpx.HTTPError as exc:
            raise OpsError(f"GET {url}: {_describe(exc)}") from exc
        if r.status_code != 200:
            raise OpsError(f"GET {url}: HTTP {r.status_code}: {_error_text(r.text)}")
        models = [
            {
                "id": m.get("id"),
                "max_model_len": m.get("max_model_len"),
                "root": m.get("root"),
                "owned_by": m.get("owned_by"),
            }
            for m in (_json(r) or {}).get("data", [])
        ]
        return {
            "models": models,
            "profile_max_model_len": self.cfg.engine.max_model_len,
            "profile_prompt_limit": self.cfg.engine.prompt_limit,
        }

    # --- get_system_details ----------------------------------------------------------------

    async def system_details(self) -> dict[str, Any]:
        cfg = self.cfg
        e = cfg.engine
        rendered = render(e, cfg.runtime, cfg.cache)
        layout = cache.CacheLayout.for_settings(e, cfg.cache)
        report = enginelog.read(cfg.engine_log)
        version = None
        try:
            r = await self._get(f"{cfg.engine_urls[0]}/version")
            version = (_json(r) or {}).get("version") if r.status_code == 200 else None
        except httpx.HTTPError:
            version = None
        return {
            "profile": cfg.profile.stem,
            "profile_path": str(cfg.profile),
            "platform": e.platform,
            "hardware": hardware(e),
            "model": e.model,
            "served_model_name": e.served_model_name,
            "engine_image": e.image,
            "vllm_version_running": version,
            "vllm_version_installed_here": cache.vllm_version(),
            "engine_argv": rendered.argv,
            "engine_env": rendered.masked_env(),
            "compile_cache_key": cache.active_key(cfg.cache.hot_dir) or layout.key,
            "compile_cache_hot_dir": str(layout.hot),
            "compile_cache_at_start": report.compile_cache if report else None,
            "compile_cache_seeded": (
                None if not report or not report.compile_cache else "seeded" in report.compile_cache
            ),
        }

    # --- get_metrics -----------------------------------------------------------------------

    async def metrics(self, window_s: float, sample_s: float) -> dict[str, Any]:
        import anyio

        engine = await self.scrape("engine")
        gateway: Scrape | None
        gateway_error = None
        try:
            gateway = await self.scrape("gateway")
        except OpsError as exc:
            gateway, gateway_error = None, str(exc)
        e_before = self._before("engine", engine, window_s)
        g_before = self._before("gateway", gateway, window_s) if gateway else None
        source = "kept scrape"
        if e_before is None and sample_s > 0:
            await anyio.sleep(sample_s)
            e_before, engine = engine, await self.scrape("engine")
            if gateway is not None:
                g_before, gateway = gateway, await self.scrape("gateway")
            source = f"two scrapes {sample_s:g} s apart"
        out: dict[str, Any] = {
            "engine_url": self.cfg.engine_urls[0],
            "engine": {
                "running": engine.get("vllm:num_requests_running"),
                "waiting": engine.get("vllm:num_requests_waiting"),
                "kv_cache_usage": engine.get("vllm:kv_cache_usage_perc"),
                "preemptions_total": engine.get("vllm:num_preemptions_total"),
            },
            "engine_whole_run": _engine_period(engine, None),
            "engine_recent": (
                {
                    "span_s": round(engine.taken_at - e_before.taken_at, 1),
                    "source": source,
                    **_engine_period(engine, e_before),
                }
                if e_before
                else None
            ),
            "gateway_error": gateway_error,
            "gateway": _gateway_now(gateway) if gateway else None,
            "gateway_whole_run": _gateway_period(gateway, None) if gateway else None,
            "gateway_recent": (
                {
                    "span_s": round(gateway.taken_at - g_before.taken_at, 1),
                    **_gateway_period(gateway, g_before),
                }
                if gateway and g_before
                else None
            ),
            "window_s": window_s,
        }
        if e_before is None:
            out["recent_note"] = (
                f"no earlier scrape within {window_s:g} s: call again later, or pass sample_seconds"
            )
        return out

    # --- get_tenant_usage (issue 28: the gateway's chip-time ledger) -------------------------

    async def tenant_usage(self, window_s: float | None) -> dict[str, Any]:
        """Per key: requests, tokens, chip-seconds and cost, over the window (the kept scrape
        closest to it; the whole run without one or with ``window_s`` None)."""
        from ops.tenants import tenant_usage

        now = await self.scrape("gateway")
        before = self._before("gateway", now, window_s) if window_s else None
        out = tenant_usage(now, before)
        out["span_s"] = round(now.taken_at - before.taken_at, 1) if before else None
        out["window"] = "whole run" if before is None else f"last {out['span_s']} s"
        return out

    # --- get_memory_layout -----------------------------------------------------------------

    def memory_layout(self) -> dict[str, Any]:
        cfg = self.cfg
        report = enginelog.read(cfg.engine_log)
        model = capacity.layout(cfg.engine, cfg.runtime)
        reported: dict[str, Any] | None = None
        if report is not None and report.kv_cache_tokens is not None:
            reported = {
                "device": report.device,
                "kv_cache_tokens": report.kv_cache_tokens,
                "max_concurrency": report.max_concurrency,
                "max_model_len": report.max_model_len,
            }
        diff = None
        if reported and model:
            diff = {
                "kv_cache_tokens_pct": _pct(model.kv_cache_tokens, report.kv_cache_tokens),  # type: ignore[union-attr]
                "max_concurrency_pct": _pct(model.max_concurrency, report.max_concurrency),  # type: ignore[union-attr]
            }
        return {
            "engine_log": str(cfg.engine_log),
            "engine_reported": reported,
            "engine_memory_lines": report.memory_lines if report else [],
            "engine_log_note": (
                None
                if reported
                else "engine log missing"
                if report is None
                else "no KV cache line in the engine log yet (the engine is starting, or its log was not kept)"
            ),
            "model": model.as_dict() if model else None,
            "model_note": None if model else "no estimate: model geometry or memory unknown",
            "model_minus_reported_pct": diff,
        }

    # --- benchmarks and cost ---------------------------------------------------------------

    def benchmark_summary(self, run: str) -> dict[str, Any]:
        try:
            return runs.summary(self.cfg.bench_dir, run)
        except runs.RunError as exc:
            raise OpsError(str(exc)) from exc

    def compare_runs(self, a: str, b: str, threshold: float) -> dict[str, Any]:
        try:
            return runs.compare_runs(self.cfg.bench_dir, a, b, threshold)
        except runs.RunError as exc:
            raise OpsError(str(exc)) from exc

    def estimate_cost(self, run: str, price_per_hour: float | None) -> dict[str, Any]:
        price = price_per_hour if price_per_hour is not None else self.cfg.price_per_hour_usd
        if price is None:
            raise OpsError(
                "no price: pass price_per_hour (USD per hour for the whole deployment) or set "
                f"PRICE_PER_HOUR_USD in {self.cfg.profile.name}"
            )
        try:
            name, meta, rows = runs.load(self.cfg.bench_dir, run)
        except runs.RunError as exc:
            raise OpsError(str(exc)) from exc
        return {
            "run": name,
            "model": meta.get("model"),
            "price_per_hour_usd": price,
            "price_source": "argument"
            if price_per_hour is not None
            else f"{self.cfg.profile.name}: PRICE_PER_HOUR_USD",
            **runs.costs(rows, price),
            "profiles": self._profile_costs(),
        }

    def _profile_costs(self) -> list[dict[str, Any]]:
        """Every profile with a price, costed at the latest run that matches it (same served
        model name and the same chip count recorded in the run's policy)."""
        out = []
        all_runs = runs.available(self.cfg.bench_dir)
        loaded = {}
        for name in all_runs:
            try:
                loaded[name] = runs.load(self.cfg.bench_dir, name)
            except runs.RunError:
                continue
        for path in sorted(ENV_DIR.glob("*.env")):
            price = PriceSettings.load(path).price_per_hour_usd
            if price is None:
                continue
            engine = EngineSettings.load(path)
            match = [
                n
                for n, (_, meta, _) in loaded.items()
                if meta.get("model") == engine.served_model_name
                and int((meta.get("policy") or {}).get("chips", 1)) == engine.tensor_parallel_size
            ]
            entry: dict[str, Any] = {
                "profile": path.stem,
                "price_per_hour_usd": price,
                "run": match[-1] if match else None,
            }
            if match:
                entry.update(runs.costs(loaded[match[-1]][2], price))
            out.append(entry)
        return out

    # --- actions ---------------------------------------------------------------------------

    async def start_warmup(self) -> dict[str, Any]:
        if not self.cfg.ops.allow_actions:
            raise OpsError(
                "actions are disabled: start the ops server with OPS_ALLOW_ACTIONS=true to allow "
                "start_warmup"
            )
        url = f"{self.cfg.gateway_url}/internal/warmup/start"
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                r = await client.post(url, headers=self._internal_headers())
        except httpx.HTTPError as exc:
            raise OpsError(f"POST {url}: {_describe(exc)}") from exc
        if r.status_code in (404, 405):
            raise OpsError(
                f"the gateway has no route to start a warm-up (POST {url}: HTTP {r.status_code}); "
                "run `make warmup` on the host until it has one"
            )
        if r.status_code >= 300:
            raise OpsError(f"POST {url}: HTTP {r.status_code}: {_error_text(r.text)}")
        return {"started": True, "gateway_answer": _json(r)}


# --- helpers -----------------------------------------------------------------------------------


def hardware(e: EngineSettings) -> dict[str, Any]:
    if e.platform == "tpu":
        chips = e.tensor_parallel_size
        topology = {1: "1x1", 4: "2x2", 8: "2x4"}.get(chips)
        return {
            "accelerator": f"v6e-{chips}" if chips in (1, 4, 8) else f"v6e ({chips} chips)",
            "topology": topology,
            "chips": chips,
            "source": "profile (ENGINE_TENSOR_PARALLEL_SIZE = the chips the engine uses)",
        }
    if e.platform == "gpu":
        return {"accelerator": "NVIDIA GPU", "gpus": e.tensor_parallel_size, "source": "profile"}
    return {
        "accelerator": None,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": _meminfo_gib(),
        "source": "this host (os.cpu_count, /proc/meminfo)",
    }


def _meminfo_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 2)
    except OSError:
        return None
    return None


def _engine_period(now: Scrape, before: Scrape | None) -> dict[str, Any]:
    means = {}
    for key, name in ENGINE_HISTOGRAMS.items():
        mean, count = histogram_mean(now, name, before)
        means[f"mean_{key}"] = _r(mean, 6)
        means[f"{key}_observations"] = count
    return {
        "requests_finished": increase(now, "vllm:request_success_total", before),
        "requests_finished_by_reason": {
            k: v
            - (
                (before.by_label("vllm:request_success_total", "finished_reason").get(k, 0.0))
                if before
                else 0.0
            )
            for k, v in now.by_label("vllm:request_success_total", "finished_reason").items()
        },
        "prompt_tokens": increase(now, "vllm:prompt_tokens_total", before),
        "generation_tokens": increase(now, "vllm:generation_tokens_total", before),
        "preemptions": increase(now, "vllm:num_preemptions_total", before),
        **means,
    }


def _gateway_now(s: Scrape) -> dict[str, Any]:
    return {
        "queue_depth": s.get("gateway_queue_depth"),
        "inflight": s.get("gateway_inflight"),
        "inflight_limit": s.get("gateway_inflight_limit"),
        "engine_saturated": s.get("gateway_engine_saturated"),
        "engine_metrics_age_s": s.get("gateway_engine_metrics_age_seconds"),
        "warmup_state": next(
            (
                k
                for k, v in s.by_label("gateway_warmup_state", "gateway_warmup_state").items()
                if v == 1
            ),
            None,
        ),
    }


def _gateway_period(now: Scrape, before: Scrape | None) -> dict[str, Any]:
    rej_now = now.by_label("gateway_rejections_total", "reason")
    rej_before = before.by_label("gateway_rejections_total", "reason") if before else {}
    out: dict[str, Any] = {
        "requests": increase(now, "gateway_requests_total", before),
        "rejections_by_reason": {k: v - rej_before.get(k, 0.0) for k, v in rej_now.items()},
        "streamed_tokens": increase(now, "gateway_streamed_tokens_total", before),
    }
    for key, name in GATEWAY_HISTOGRAMS.items():
        mean, count = histogram_mean(now, name, before)
        out[f"mean_{key}"] = _r(mean, 6)
        out[f"{key}_observations"] = count
    return out


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return None


def _error_text(text: str) -> str:
    try:
        err = json.loads(text).get("error") or {}
        return f"{err.get('code') or err.get('type') or ''}: {err.get('message') or ''}".strip(": ")
    except (ValueError, AttributeError):
        return text[:300]


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def _pct(model: float, reported: float | None) -> float | None:
    if not reported:
        return None
    return round(100.0 * (model - reported) / reported, 3)


def read_warmup_reports(path: Path) -> dict[str, Any]:
    """The warm-up's report at ``path``; with several replicas the warm-up writes one per replica
    beside it (``report-<host>-<port>.json``): then each, under ``replicas``, and the verdict is
    ``passed`` only if every one passed (else the first that did not)."""
    several = sorted(path.parent.glob(f"{path.stem}-*{path.suffix}"))
    if path.exists() or not several:
        return _one_report(path)
    reports = [_one_report(p) for p in several]
    failing = [r for r in reports if r.get("verdict") != "passed"]
    first = failing[0] if failing else reports[0]
    return {**first, "path": str(path.parent), "replicas": reports}


def _one_report(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except OSError:
        return {"path": str(path), "found": False}
    except ValueError as exc:
        return {"path": str(path), "found": True, "error": f"not JSON: {exc}"}
    return {
        "path": str(path),
        "found": True,
        "verdict": doc.get("outcome"),
        "failed_step": doc.get("failed_step"),
        "error": doc.get("error"),
        "started": doc.get("started"),
        "duration_s": doc.get("duration_s"),
        "stalls": doc.get("stalls", []),
        "engine_instance": (doc.get("engine") or {}).get("instance"),
    }
