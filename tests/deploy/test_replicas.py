"""The compose override for a profile's replicas (deploy/replicas.py) and what compose makes of it.

The model is checked here in pure Python; `docker compose config` (offline, no daemon) then
proves that compose merges it into N complete engine services.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from deploy.replicas import compose_model, main, render
from deploy.up import engine_services
from env.settings import ENV_DIR, EngineSettings, GatewaySettings
from tests.compose.docker import cli_problem, require
from tests.support.process import REPO

X2 = ENV_DIR / "v6e4-gemma4-12b-x2.env"
_PROFILE_PREFIXES = ("ENGINE_", "GATEWAY_", "STACK_", "VLLM_", "WARMUP_", "CACHE_", "COMPOSE_")


@pytest.fixture(autouse=True)
def _no_profile_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(_PROFILE_PREFIXES):
            monkeypatch.delenv(key)


def test_one_engine_adds_nothing() -> None:
    assert compose_model(EngineSettings(), GatewaySettings()) == {"services": {}}


def test_n_replicas_become_engine_1_to_n_minus_1() -> None:
    model = compose_model(EngineSettings.load(X2), GatewaySettings.load(X2))["services"]
    assert sorted(model) == ["engine", "engine-1", "gateway", "warmup"]
    for i in (1,):
        svc = model[f"engine-{i}"]
        assert svc["extends"] == {"file": "docker-compose.tpu.yml", "service": "engine"}
        assert svc["command"][-2:] == ["--replica", str(i)]
        assert f"+ {i})" in svc["healthcheck"]["test"][-1]
    for name in ("engine", "engine-1", "warmup"):  # what they resolve
        assert model[name]["environment"]["ENGINE_REPLICAS"] == "2"
    urls = "http://127.0.0.1:8000,http://127.0.0.1:8001"
    assert model["gateway"]["environment"]["GATEWAY_UPSTREAM_URLS"] == urls
    assert model["warmup"]["environment"]["GATEWAY_UPSTREAM_URLS"] == urls
    assert set(model["warmup"]["depends_on"]) == {"engine", "engine-1"}


def test_environment_overrides_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make up ENGINE_REPLICAS=3 ENGINE_PORT=9000`: the file follows the environment."""
    monkeypatch.setenv("ENGINE_REPLICAS", "3")
    monkeypatch.setenv("ENGINE_PORT", "9000")
    text = render(str(X2))
    assert "engine-2:" in text and "engine-3:" not in text
    assert "http://127.0.0.1:9000,http://127.0.0.1:9001,http://127.0.0.1:9002" in text
    # A container reads the profile (2 replicas), not make's environment: the file says 3.
    assert text.count('ENGINE_REPLICAS: "3"') == 4  # engine, engine-1, engine-2, warmup


def test_a_bad_upstream_list_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    profile = tmp_path / "bad.env"
    profile.write_text(X2.read_text() + "\nGATEWAY_UPSTREAM_URLS=http://a:1,http://a:1\n")
    assert main(["compose", "--profile", str(profile)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "listed twice" in err


def test_make_up_watches_every_replica(tmp_path: Path) -> None:
    from deploy.profile import Profile

    assert engine_services(Profile(X2, environ={})) == ["engine", "engine-1"]
    assert engine_services(Profile(ENV_DIR / "cpu.env", environ={})) == ["engine"]


def _config(profile: Path, *files: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PROFILE_PREFIXES)}
    platform = EngineSettings.load(profile).platform
    argv = ["docker", "compose", "-p", "replicas-test", "--env-file", str(profile),
            "-f", "docker-compose.yml", "-f", f"docker-compose.{platform}.yml"]  # fmt: skip
    for f in files:
        argv += ["-f", f]
    done = subprocess.run(
        [*argv, "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
        env={**env, "PROFILE_FILE": str(profile), "PROFILE_NAME": profile.stem},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.docker
def test_compose_merges_the_override_into_complete_engines(tmp_path: Path) -> None:
    require(cli_problem())
    override = tmp_path / "replicas.yml"
    override.write_text(render(str(X2)))
    model = _config(X2, str(override))
    services = model["services"]
    # the TPU stack runs several gateway workers sharing their state (the `state` service)
    assert set(services) == {"engine", "engine-1", "warmup", "gateway", "state"}
    base = services["engine"]
    for i in (1,):
        replica = services[f"engine-{i}"]
        differs = {k for k in base.keys() | replica.keys() if base.get(k) != replica.get(k)}
        assert differs == {"command", "healthcheck"}, (i, differs)
        assert replica["command"] == ["python3", "-m", "entrypoint", "serve", "--replica", str(i)]
        # the whole engine: TPU privileges, secrets, the shared cache volumes, restart policy
        assert replica["privileged"] is True and replica["restart"] == "unless-stopped"
        assert {s["source"] for s in replica["secrets"]} == {"hf_token"}
        assert {v.get("source") for v in replica["volumes"]} >= {"compile-hot", "compile-persist"}
        assert replica["healthcheck"]["start_period"] == base["healthcheck"]["start_period"]
    assert services["gateway"]["environment"]["GATEWAY_UPSTREAM_URLS"].count(",") == 1


SINGLE = [p for p in sorted(ENV_DIR.glob("*.env")) if EngineSettings.load(p).replicas == 1]


@pytest.mark.docker
@pytest.mark.parametrize("profile", SINGLE, ids=lambda p: p.stem)
def test_a_single_engine_stack_is_unchanged_by_the_extends(profile: Path, tmp_path: Path) -> None:
    """The platform files' engine extends the base one (so that replicas can extend it); merged
    over the base by `-f`, the stack must be exactly the one without that `extends`."""
    require(cli_problem())
    platform = EngineSettings.load(profile).platform
    name = f"docker-compose.{platform}.yml"
    text = (REPO / name).read_text()
    line = "    extends: {file: docker-compose.yml, service: engine}\n"
    assert line in text
    plain = tmp_path / name
    plain.write_text(text.replace(line, ""))
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PROFILE_PREFIXES)}
    argv = ["docker", "compose", "-p", "replicas-test", "--env-file", str(profile),
            "-f", "docker-compose.yml", "-f", str(plain), "config", "--format", "json"]  # fmt: skip
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
        env={**env, "PROFILE_FILE": str(profile), "PROFILE_NAME": profile.stem},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _config(profile) == json.loads(done.stdout)
