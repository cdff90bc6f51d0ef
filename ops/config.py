"""Where the ops server looks: one profile, the other roles' settings as fallbacks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from env.settings import (
    CacheSettings,
    EngineEnv,
    EngineSettings,
    GatewaySettings,
    OpsSettings,
    PriceSettings,
    WarmupSettings,
    profile_path,
)


@dataclass(frozen=True)
class OpsConfig:
    profile: Path
    engine: EngineSettings
    runtime: EngineEnv
    cache: CacheSettings
    ops: OpsSettings
    gateway_url: str
    engine_urls: tuple[str, ...]
    internal_token_file: Path
    api_key_file: Path | None
    engine_log: Path
    warmup_report: Path
    bench_dir: Path
    price_per_hour_usd: float | None

    @classmethod
    def load(cls, profile: str | os.PathLike[str] | None = None) -> OpsConfig:
        path = profile_path(profile)
        engine, cache = EngineSettings.load(path), CacheSettings.load(path)
        gateway, warmup, ops = (
            GatewaySettings.load(path),
            WarmupSettings.load(path),
            OpsSettings.load(path),
        )
        urls = tuple(u.strip().rstrip("/") for u in ops.engine_urls.split(",") if u.strip())
        return cls(
            profile=path,
            engine=engine,
            runtime=EngineEnv.load(path),
            cache=cache,
            ops=ops,
            gateway_url=(ops.gateway_url or gateway.url).rstrip("/"),
            engine_urls=urls or tuple(engine.replica_urls),  # every replica of this host
            internal_token_file=ops.internal_token_file or gateway.internal_token_file,
            api_key_file=ops.api_key_file,
            engine_log=ops.engine_log_path(cache),
            warmup_report=ops.warmup_report or warmup.report_path,
            bench_dir=ops.bench_dir,
            price_per_hour_usd=PriceSettings.load(path).price_per_hour_usd,
        )

    def internal_token(self) -> str | None:
        """The gateway's internal token, read at each call (the gateway writes it at start)."""
        try:
            return self.internal_token_file.read_text().strip() or None
        except OSError:
            return None

    def api_key(self) -> str | None:
        if self.api_key_file is None:
            return None
        try:
            lines = self.api_key_file.read_text().splitlines()
        except OSError:
            return None
        return lines[0].strip() if lines and lines[0].strip() else None
