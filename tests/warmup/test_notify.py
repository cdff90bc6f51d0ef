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


def _profile(tmp_path: Path) -> Path:
    profile = tmp_path / "p.env"
    profile.write_text(f"CACHE_HOT_DIR={tmp_path / 'hot'}\nCACHE_PERSIST_DIR={tmp_path / 'keep'}\n")
    return profile


def test_cache_save_copies_the_engines_key_into_the_persistent_dir(tmp_path: Path) -> None:
    """The engine seeds under its key (recorded in the hot dir); the write-back must land the
    hot files under that same key in the persistent dir, whatever key this process computes."""
    engine_key = "tiny-gemma4-tp1-0123456789ab"  # as the engine's `cache seed` recorded it
    hot = tmp_path / "hot"
    (hot / engine_key / "vllm" / "torch_compile_cache").mkdir(parents=True)
    (hot / engine_key / "vllm" / "torch_compile_cache" / "graph.bin").write_bytes(b"compiled")
    (hot / ".active-key").write_text(engine_key + "\n")
    ok, message = cache_save(str(_profile(tmp_path)))
    assert ok, message
    keep = tmp_path / "keep"
    assert [p.name for p in keep.iterdir()] == [engine_key]
    saved = keep / engine_key / "vllm" / "torch_compile_cache" / "graph.bin"
    assert saved.read_bytes() == b"compiled"
    assert f"compile cache {engine_key}: saved 8 bytes" in message


def test_cache_save_with_an_empty_hot_dir_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "hot").mkdir()
    ok, message = cache_save(str(_profile(tmp_path)))
    assert ok, message
    assert "nothing saved" in message
    assert not (tmp_path / "keep").exists()


def test_cache_save_failure_is_reported_not_raised(tmp_path: Path) -> None:
    profile = tmp_path / "bad.env"
    profile.write_text("ENGINE_PORT=not-a-port\n")
    ok, message = cache_save(str(profile))
    assert not ok
    assert message.startswith("cache save exited 1")
