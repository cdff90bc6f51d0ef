"""Start-up policy: keys required off cpu, open cpu warns; the token file is created."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from env.settings import EngineSettings, GatewaySettings
from gateway.edge.app import ConfigError, create_app
from tests.support.process import REPO


def settings(tmp_path: Path, **kw: object) -> GatewaySettings:
    return GatewaySettings(internal_token_file=tmp_path / "tok", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("platform", ["tpu", "gpu"])
def test_accelerator_profiles_refuse_to_start_without_keys(platform: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="requires API keys"):
        create_app(engine=EngineSettings(platform=platform), settings=settings(tmp_path))


def test_cpu_runs_open_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "gateway")
    app = create_app(engine=EngineSettings(platform="cpu"), settings=settings(tmp_path))
    assert app.config.access.keys.open
    assert "OPEN" in caplog.text
    assert (tmp_path / "tok").stat().st_mode & 0o777 == 0o600


def test_missing_keys_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        create_app(
            engine=EngineSettings(platform="cpu"),
            settings=settings(tmp_path, api_keys_file=tmp_path / "absent"),
        )


def test_in_flight_cap_defaults_to_max_num_seqs(tmp_path: Path) -> None:
    app = create_app(engine=EngineSettings(max_num_seqs=7), settings=settings(tmp_path))
    assert app.config.max_inflight == 7
    app = create_app(
        engine=EngineSettings(max_num_seqs=7), settings=settings(tmp_path, max_inflight=3)
    )
    assert app.config.max_inflight == 3


def test_tpu_profile_process_exits_with_one_clear_line(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "--profile", "v6e4-gemma4-26b"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "GATEWAY_INTERNAL_TOKEN_FILE": str(tmp_path / "t")},
    )  # fmt: skip
    assert r.returncode == 2
    assert "refusing to start" in r.stderr and "GATEWAY_API_KEYS_FILE" in r.stderr


def test_hash_key_cli() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "hash-key"], input="sk-abc\n", cwd=REPO,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout.startswith("sha256:") and "sk-abc" not in r.stdout
