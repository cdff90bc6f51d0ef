"""Every profile yields a valid compose model with the right platform shape.

`docker compose config` validates offline (no daemon): schema, interpolation, undefined
services in depends_on, undefined volumes and secrets.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from deploy.profile import Profile
from env.settings import ENV_DIR
from tests.compose.docker import cli_problem, require
from tests.support.process import REPO

pytestmark = pytest.mark.docker

PROFILES = sorted(ENV_DIR.glob("*.env"))


# Profile-shaped variables in the caller's environment would override the file under test.
_PROFILE_PREFIXES = ("ENGINE_", "GATEWAY_", "STACK_", "VLLM_", "WARMUP_", "CACHE_", "COMPOSE_")


def compose_config(profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    platform = Profile(profile, environ={}).platform
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PROFILE_PREFIXES)}
    return subprocess.run(
        [
            "docker", "compose", "-p", "config-test", "--env-file", str(profile),
            "-f", "docker-compose.yml", "-f", f"docker-compose.{platform}.yml",
            "config", *extra,
        ],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
        env={**env, "PROFILE_FILE": str(profile), "PROFILE_NAME": profile.stem},
    )  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _compose_cli() -> None:
    require(cli_problem())


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_config_quiet_passes(profile: Path) -> None:
    done = compose_config(profile, "-q")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_rendered_stack_shape(profile: Path) -> None:
    done = compose_config(profile, "--format", "json")
    assert done.returncode == 0, done.stderr
    model = json.loads(done.stdout)
    services = model["services"]
    values = Profile(profile, environ={})
    tpu = values.platform == "tpu"  # the multi-worker gateway and its shared state
    assert set(services) == {"engine", "warmup", "gateway", *(["state"] if tpu else [])}
    for name, svc in services.items():
        assert svc["network_mode"] == "host", name
        assert svc["init"] is True, name
        assert svc["restart"] == "unless-stopped", name
        assert svc["logging"]["options"]["max-size"], name
        if name == "state":
            continue  # reads no profile
        assert svc["environment"]["PROFILE"] == f"/etc/gemma4/{profile.stem}.env", name
        mounts = {v["target"]: v for v in svc["volumes"]}
        assert mounts[f"/etc/gemma4/{profile.stem}.env"]["read_only"] is True, name
    for name in ("gateway", "warmup"):
        assert services[name]["user"] == "10001:10001"
        assert services[name]["read_only"] is True
        assert services[name]["image"] == "gemma4-serving/app:latest"
    assert services["gateway"]["command"] == ["python", "-m", "gateway"]
    assert services["warmup"]["command"] == ["python", "-m", "warmup", "--watch"]
    # `cache save` runs in the warm-up container: it needs both compile-cache volumes.
    warm_mounts = {v.get("source"): v for v in services["warmup"]["volumes"]}
    assert (
        warm_mounts["compile-hot"]["target"] == services["warmup"]["environment"]["CACHE_HOT_DIR"]
    )
    assert "read_only" not in warm_mounts["compile-persist"]
    waits_for = set(services["gateway"].get("depends_on", {}))
    assert waits_for == ({"state"} if tpu else set()), "the gateway must not wait for warm-up"
    if tpu:  # several workers, sharing limits through `state`: loopback, nothing persisted
        gw_env, state = services["gateway"]["environment"], services["state"]
        assert int(gw_env["GATEWAY_WORKERS"]) > 1
        assert gw_env["GATEWAY_STATE_URL"] == "/run/state/url"
        assert state["build"]["dockerfile"] == "deploy/Dockerfile.state"
        assert state["user"] == "10001:10001" and state["read_only"] is True
        assert model["volumes"]["state-run"]["driver_opts"]["type"] == "tmpfs"
    assert services["warmup"]["depends_on"]["engine"]["condition"] == "service_healthy"

    engine = services["engine"]
    ready = int(values.get("VLLM_ENGINE_READY_TIMEOUT_S", "600"))
    start_period = engine["healthcheck"]["start_period"]
    assert _seconds(start_period) >= ready, "start period must cover the ready timeout"
    assert engine["environment"]["ENGINE_IMAGE"] == values.get("ENGINE_IMAGE")
    assert model["volumes"]["compile-hot"]["driver_opts"]["type"] == "tmpfs"
    assert model["volumes"]["hf-cache"]["driver_opts"]["type"] == "tmpfs"
    assert "driver_opts" not in model["volumes"]["compile-persist"]

    platform = values.platform
    if platform == "tpu":
        assert engine["privileged"] is True
        assert int(engine["shm_size"]) >= 16 * 2**30
    if platform == "gpu":
        devices = engine["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    if platform in ("tpu", "gpu"):
        assert engine["environment"]["ENGINE_HF_TOKEN_FILE"] == "/run/secrets/hf_token"
        assert {s["source"] for s in engine["secrets"]} == {"hf_token"}
        assert services["gateway"]["environment"]["GATEWAY_API_KEYS_FILE"].startswith("/run/")
        assert engine["image"] == f"gemma4-serving/engine-upstream:{platform}"
    else:
        assert engine["image"] == values.get("ENGINE_IMAGE")
        assert engine["build"]["dockerfile"] == "entrypoint/Dockerfile.cpu"
        assert "secrets" not in engine


def _seconds(duration: str) -> float:
    """Compose renders durations like '30m0s', '10s', '1h0m0s'."""
    total, number = 0.0, ""
    for ch in duration:
        if ch.isdigit() or ch == ".":
            number += ch
            continue
        total += float(number) * {"h": 3600, "m": 60, "s": 1}[ch]
        number = ""
    return total
