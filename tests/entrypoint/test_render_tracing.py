"""Engine tracing is rendered only when asked for, as a flag vLLM's own parser accepts."""

from __future__ import annotations

import pytest

from entrypoint.render import render
from env.settings import ENV_DIR, CacheSettings, EngineEnv, EngineSettings
from tests.entrypoint.test_render import vllm_parse

CPU = ENV_DIR / "cpu.env"


def _render(monkeypatch: pytest.MonkeyPatch, **env: str):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return render(EngineSettings.load(CPU), EngineEnv.load(CPU), CacheSettings.load(CPU))


def test_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    r = _render(monkeypatch)
    assert "--otlp-traces-endpoint" not in r.argv
    assert "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" not in r.env


def test_on_renders_vllms_flag_and_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "http://127.0.0.1:4318/v1/traces"
    r = _render(monkeypatch, ENGINE_OTLP_TRACES_ENDPOINT=url,
                OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http/protobuf")  # fmt: skip
    assert r.argv[r.argv.index("--otlp-traces-endpoint") + 1] == url
    assert r.env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
    assert vllm_parse(r.argv[1:]).otlp_traces_endpoint == url
