"""Handshake addressing and the compile-cache write-back (a real subprocess each time)."""

from __future__ import annotations

from pathlib import Path

from env.settings import GatewaySettings, WarmupSettings
from warmup.notify import cache_save, gateway_url


def test_gateway_url_defaults_to_the_gateways_listen_address() -> None:
    assert gateway_url(WarmupSettings(), GatewaySettings(port=9090)) == "http://127.0.0.1:9090"
    assert gateway_url(WarmupSettings(), GatewaySettings(host="0.0.0.0")) == "http://127.0.0.1:8080"
    assert gateway_url(WarmupSettings(), GatewaySettings(host="10.0.0.5")) == "http://10.0.0.5:8080"
    explicit = WarmupSettings(gateway_url="http://gw:1234/")
    assert gateway_url(explicit, GatewaySettings()) == "http://gw:1234"


def test_cache_save_runs_the_entrypoint_command(tmp_path: Path) -> None:
    (tmp_path / "hot").mkdir()
    profile = tmp_path / "p.env"
    profile.write_text(f"CACHE_HOT_DIR={tmp_path / 'hot'}\nCACHE_PERSIST_DIR={tmp_path / 'keep'}\n")
    ok, message = cache_save(str(profile))
    assert ok, message
    assert "compile cache" in message


def test_cache_save_failure_is_reported_not_raised(tmp_path: Path) -> None:
    profile = tmp_path / "bad.env"
    profile.write_text("ENGINE_PORT=not-a-port\n")
    ok, message = cache_save(str(profile))
    assert not ok
    assert message.startswith("cache save exited 1")
