"""Preflight: each rule has a case that triggers it and one that passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint import preflight
from env.settings import ENV_DIR, read_profile


@pytest.fixture
def tpu_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write the real v6e4-26b profile with overrides; caches, token and chips made valid."""
    monkeypatch.delenv("TPU_VISIBLE_CHIPS", raising=False)
    for d in ("hot", "persist", "hf"):
        (tmp_path / d).mkdir()
    token = tmp_path / "hf_token"
    token.write_text("hf_x\n")
    chips = tmp_path / "dev"
    chips.mkdir()
    for i in range(4):
        (chips / f"accel{i}").touch()

    def write(base: str = "v6e4-gemma4-26b", **overrides: str | None) -> Path:
        values = {k: v for k, v in read_profile(ENV_DIR / f"{base}.env").items() if v is not None}
        values |= {
            "CACHE_HOT_DIR": str(tmp_path / "hot"),
            "CACHE_PERSIST_DIR": str(tmp_path / "persist"),
            "CACHE_HF_DIR": str(tmp_path / "hf"),
            "ENGINE_HF_TOKEN_FILE": str(token),
        }
        for k, v in overrides.items():
            if v is None:
                values.pop(k, None)
            else:
                values[k] = v
        path = tmp_path / "profile.env"
        path.write_text("".join(f"{k}='{v}'\n" for k, v in values.items()))
        return path

    write.tmp = tmp_path  # type: ignore[attr-defined]
    write.chips = chips  # type: ignore[attr-defined]
    return write


def keys(findings: list[preflight.Finding], level: str = "error") -> list[str]:
    return [f.key for f in findings if f.level == level]


def check(profile: Path, chip_dir: Path) -> list[preflight.Finding]:
    return preflight.run(profile, chip_dir=chip_dir)


def test_real_tpu_profile_passes(tpu_profile) -> None:
    """Container view, the rules alone (cache dirs and token made valid by the fixture)."""
    assert keys(check(tpu_profile(), tpu_profile.chips)) == []


# --- host view (`make check`): the REAL profile files, unmodified --------------------------------


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A TPU host as `make check` sees it: no /cache (container paths), the compose project dir
    holding secrets/hf_token and secrets/api_keys as the README's steps write them."""
    for key in ("TPU_VISIBLE_CHIPS", "ENGINE_HF_TOKEN_FILE", "GATEWAY_API_KEYS_FILE",
                "CACHE_HOT_DIR", "CACHE_PERSIST_DIR", "CACHE_HF_DIR"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    project = tmp_path / "project"
    (project / "secrets").mkdir(parents=True)
    (project / "secrets" / "hf_token").write_text("hf_x")
    (project / "secrets" / "api_keys").write_text("sha256:" + "0" * 64 + "\n")

    def chips(n: int) -> Path:
        d = tmp_path / f"dev{n}"
        d.mkdir(exist_ok=True)
        for i in range(n):
            (d / f"accel{i}").touch()
        return d

    return project, chips


def run_host(profile: str, project: Path, chip_dir: Path) -> list[preflight.Finding]:
    return preflight.run(profile, chip_dir=chip_dir, where="host", project_dir=project)


def host_chips(name: str) -> int:
    """The chips a profile uses on its host: replicas x TP size."""
    values = read_profile(ENV_DIR / f"{name}.env")
    return int(values.get("ENGINE_REPLICAS") or 1) * int(
        values.get("ENGINE_TENSOR_PARALLEL_SIZE") or 1
    )


# Shipped accelerator profiles the preflight refuses on purpose (kept to record why; env/README.md
# "Per-chip HBM budget"): Gemma 4 12B does not fit one v6e chip on its torchax path.
REFUSED = {"v6e1-gemma4-12b"}
# Every accelerator profile in env/ (not a hand-kept list: a new profile is checked at once).
ACCELERATED = sorted(p.stem for p in ENV_DIR.glob("*.env") if p.stem != "cpu")
TPU_PROFILES = [n for n in ACCELERATED if n.startswith("v6e")]


def test_the_profile_lists_cover_the_shipped_profiles() -> None:
    assert {"v6e4-gemma4-31b", "v6e8-gemma4-31b", "v6e4-gemma4-12b-x2"} <= set(TPU_PROFILES)
    assert "gpu-gemma4-26b" in ACCELERATED and set(TPU_PROFILES) >= REFUSED


@pytest.mark.parametrize("name", [n for n in ACCELERATED if n not in REFUSED])
def test_real_profiles_pass_on_their_host(host, name: str) -> None:
    project, chips = host
    values = read_profile(ENV_DIR / f"{name}.env")
    assert str(values["CACHE_HOT_DIR"]).startswith("/cache/"), "a container path, absent here"
    assert not Path(str(values["CACHE_HOT_DIR"])).exists()
    assert keys(run_host(name, project, chips(host_chips(name)))) == []


def test_host_view_still_runs_the_rules(host) -> None:
    project, chips = host
    assert keys(run_host("v6e4-gemma4-26b", project, chips(8))) == ["ENGINE_TENSOR_PARALLEL_SIZE"]


def test_host_view_reports_missing_compose_secrets(host) -> None:
    project, chips = host
    (project / "secrets" / "api_keys").unlink()
    (project / "secrets" / "hf_token").write_text("")
    findings = run_host("v6e4-gemma4-26b", project, chips(4))
    assert keys(findings) == ["ENGINE_HF_TOKEN_FILE", "GATEWAY_API_KEYS_FILE"]
    text = " ".join(map(str, findings))
    assert f"{project}/secrets/hf_token is empty" in text
    assert f"{project}/secrets/api_keys does not exist" in text


def test_host_view_follows_the_profiles_secret_paths(host, tmp_path: Path) -> None:
    """An absolute ENGINE_HF_TOKEN_FILE in the profile is what compose mounts: checked there."""
    project, chips = host
    profile = tmp_path / "custom.env"
    token = tmp_path / "elsewhere" / "token"
    profile.write_text(
        (ENV_DIR / "v6e4-gemma4-26b.env").read_text() + f"\nENGINE_HF_TOKEN_FILE={token}\n"
    )
    assert keys(run_host(str(profile), project, chips(4))) == ["ENGINE_HF_TOKEN_FILE"]
    token.parent.mkdir()
    token.write_text("hf_y")
    assert keys(run_host(str(profile), project, chips(4))) == []


def test_container_view_of_the_real_profile_checks_the_volumes(host) -> None:
    """The same profile inside the engine container: its /cache volumes must be mounted."""
    project, chips = host
    findings = preflight.run("v6e4-gemma4-26b", chip_dir=chips(4), project_dir=project)
    assert {"CACHE_HOT_DIR", "CACHE_HF_DIR", "CACHE_PERSIST_DIR"} <= set(keys(findings))


def test_check_cli_host_mode_on_the_real_profile(host) -> None:
    """`make check PROFILE=v6e4-gemma4-26b` on a TPU host: `check --host` on the real profile."""
    project, _chips = host
    env = {**os.environ, "TPU_VISIBLE_CHIPS": "0,1,2,3"}
    argv = [sys.executable, "-m", "entrypoint", "check", "--host", "--profile", "v6e4-gemma4-26b",
            "--project-dir", str(project)]  # fmt: skip
    ok = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "v6e4-gemma4-26b.env OK" in ok.stdout
    (project / "secrets" / "hf_token").unlink()
    bad = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1
    assert "ERROR ENGINE_HF_TOKEN_FILE" in bad.stderr


def test_make_check_uses_the_host_view() -> None:
    dry = subprocess.run(
        ["make", "-n", "check", "PROFILE=v6e4-gemma4-26b"],
        cwd=ENV_DIR.parent, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "-m entrypoint check --host --profile v6e4-gemma4-26b" in dry.stdout, dry.stdout


@pytest.mark.parametrize("base", [n for n in TPU_PROFILES if n not in REFUSED])
def test_other_tpu_profiles_pass(tpu_profile, base: str, tmp_path: Path) -> None:
    chips = tmp_path / f"dev-{base}"
    chips.mkdir()
    for i in range(host_chips(base)):
        (chips / f"accel{i}").touch()
    assert keys(check(tpu_profile(base), chips)) == []


def test_unknown_key(tpu_profile) -> None:
    f = check(tpu_profile(ENGINE_MAX_MODEL_LENN="4096"), tpu_profile.chips)
    assert keys(f) == ["ENGINE_MAX_MODEL_LENN"]


def test_all_problems_reported_at_once(tpu_profile) -> None:
    profile = tpu_profile(
        ENGINE_GPU_MEMORY_UTILIZATION="0.98",
        ENGINE_ASYNC_SCHEDULING=None,
        ENGINE_LIMIT_MM_PER_PROMPT='{"image":4,"audio":1}',
    )
    assert set(keys(check(profile, tpu_profile.chips))) == {
        "ENGINE_GPU_MEMORY_UTILIZATION",
        "ENGINE_ASYNC_SCHEDULING",
        "ENGINE_LIMIT_MM_PER_PROMPT",
    }


def test_generation_buffer_trap(tpu_profile) -> None:
    bad = tpu_profile(ENGINE_MAX_PROMPT_TOKENS="16384")
    assert keys(check(bad, tpu_profile.chips)) == ["ENGINE_MAX_PROMPT_TOKENS"]
    ok = tpu_profile(ENGINE_MAX_PROMPT_TOKENS="15360")
    assert keys(check(ok, tpu_profile.chips)) == []


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_tpu_audio_video(tpu_profile, modality: str) -> None:
    bad = tpu_profile(ENGINE_LIMIT_MM_PER_PROMPT=f'{{"image":4,"{modality}":1}}')
    assert keys(check(bad, tpu_profile.chips)) == ["ENGINE_LIMIT_MM_PER_PROMPT"]


def test_audio_allowed_off_tpu(tpu_profile) -> None:
    gpu = tpu_profile("gpu-gemma4-26b", ENGINE_LIMIT_MM_PER_PROMPT='{"image":4,"audio":1}')
    assert "ENGINE_LIMIT_MM_PER_PROMPT" not in keys(check(gpu, tpu_profile.chips))


def test_ngram_needs_no_async_scheduling(tpu_profile) -> None:
    assert keys(check(tpu_profile(ENGINE_ASYNC_SCHEDULING="true"), tpu_profile.chips)) == [
        "ENGINE_ASYNC_SCHEDULING"
    ]
    assert (
        keys(
            check(
                tpu_profile(ENGINE_SPECULATIVE_CONFIG=None, ENGINE_ASYNC_SCHEDULING="true"),
                tpu_profile.chips,
            )
        )
        == []
    )


def test_chunked_mm_input_missing(tpu_profile) -> None:
    bad = tpu_profile(ENGINE_DISABLE_CHUNKED_MM_INPUT="false")
    assert keys(check(bad, tpu_profile.chips)) == ["ENGINE_DISABLE_CHUNKED_MM_INPUT"]
    text_only = tpu_profile(
        ENGINE_DISABLE_CHUNKED_MM_INPUT="false", ENGINE_LIMIT_MM_PER_PROMPT='{"image":0}'
    )
    assert keys(check(text_only, tpu_profile.chips)) == []


def test_chunked_mm_input_needs_2496_batched_tokens(tpu_profile) -> None:
    bad = tpu_profile(ENGINE_MAX_NUM_BATCHED_TOKENS="2048")
    assert keys(check(bad, tpu_profile.chips)) == ["ENGINE_MAX_NUM_BATCHED_TOKENS"]
    assert keys(check(tpu_profile(ENGINE_MAX_NUM_BATCHED_TOKENS="2496"), tpu_profile.chips)) == []


def test_tpu_memory_utilization(tpu_profile) -> None:
    # Both the 0.95 ceiling and the per-chip budget (no room for the compiled programs) refuse it.
    assert set(
        keys(check(tpu_profile(ENGINE_GPU_MEMORY_UTILIZATION="0.98"), tpu_profile.chips))
    ) == {"ENGINE_GPU_MEMORY_UTILIZATION"}
    assert keys(check(tpu_profile(ENGINE_GPU_MEMORY_UTILIZATION="0.95"), tpu_profile.chips)) == []


def test_tensor_parallel_vs_chips(tpu_profile, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tpu_profile(ENGINE_TENSOR_PARALLEL_SIZE="8")
    assert keys(check(bad, tpu_profile.chips)) == ["ENGINE_TENSOR_PARALLEL_SIZE"]
    monkeypatch.setenv("TPU_VISIBLE_CHIPS", "0,1,2,3,4,5,6,7")
    assert "ENGINE_TENSOR_PARALLEL_SIZE" not in keys(check(bad, tpu_profile.chips))


def test_unknown_chip_count_is_not_an_error(tpu_profile) -> None:
    empty = tpu_profile.tmp / "nochips"
    empty.mkdir()
    assert keys(check(tpu_profile(ENGINE_TENSOR_PARALLEL_SIZE="8"), empty)) == []


def test_cache_dir_missing_and_unwritable(tpu_profile) -> None:
    missing = tpu_profile(CACHE_HOT_DIR=str(tpu_profile.tmp / "nope"))
    assert keys(check(missing, tpu_profile.chips)) == ["CACHE_HOT_DIR"]
    if os.geteuid() != 0:  # root writes anywhere
        ro = tpu_profile.tmp / "ro"
        ro.mkdir(mode=0o555)
        assert keys(check(tpu_profile(CACHE_HF_DIR=str(ro)), tpu_profile.chips)) == ["CACHE_HF_DIR"]
    not_a_dir = tpu_profile.tmp / "file"
    not_a_dir.write_text("x")
    assert keys(check(tpu_profile(CACHE_HF_DIR=str(not_a_dir)), tpu_profile.chips)) == [
        "CACHE_HF_DIR"
    ]


def test_hf_token_file_absent(tpu_profile) -> None:
    bad = tpu_profile(ENGINE_HF_TOKEN_FILE=str(tpu_profile.tmp / "missing_token"))
    findings = check(bad, tpu_profile.chips)
    assert keys(findings) == ["ENGINE_HF_TOKEN_FILE"]
    assert "hf_x" not in " ".join(map(str, findings))


def test_cpu_block_size(tpu_profile, tmp_path: Path) -> None:
    bad = tpu_profile("cpu", ENGINE_BLOCK_SIZE="16", ENGINE_HF_TOKEN_FILE=None)
    assert keys(check(bad, tmp_path)) == ["ENGINE_BLOCK_SIZE"]
    assert (
        keys(check(tpu_profile("cpu", ENGINE_BLOCK_SIZE="64", ENGINE_HF_TOKEN_FILE=None), tmp_path))
        == []
    )


def test_cpu_head_size(tpu_profile, tmp_path: Path) -> None:
    model = tmp_path / "model16"
    model.mkdir()
    (model / "config.json").write_text(
        '{"layer_types": ["sliding_attention", "full_attention"], "head_dim": 16, "global_head_dim": 64, "num_key_value_heads": 2}'
    )
    bad = tpu_profile("cpu", ENGINE_MODEL=str(model), ENGINE_HF_TOKEN_FILE=None)
    findings = check(bad, tmp_path)
    assert keys(findings) == ["ENGINE_MODEL"]
    assert "head_dim=16" in str(findings[0])


def test_warning_forced_block_size_32_on_tpu(tpu_profile) -> None:
    f = check(tpu_profile(ENGINE_BLOCK_SIZE="32"), tpu_profile.chips)
    assert keys(f) == [] and "ENGINE_BLOCK_SIZE" in keys(f, "warning")
    assert "ENGINE_BLOCK_SIZE" not in keys(check(tpu_profile(), tpu_profile.chips), "warning")


def test_warning_batched_tokens_not_power_of_two(tpu_profile) -> None:
    f = check(tpu_profile(ENGINE_MAX_NUM_BATCHED_TOKENS="3000"), tpu_profile.chips)
    assert keys(f) == [] and "ENGINE_MAX_NUM_BATCHED_TOKENS" in keys(f, "warning")


def test_warning_more_seqs_than_kv_cache_holds(tpu_profile) -> None:
    f = check(tpu_profile(ENGINE_MAX_NUM_SEQS="1024"), tpu_profile.chips)
    assert keys(f) == [] and "ENGINE_MAX_NUM_SEQS" in keys(f, "warning")
    assert "ENGINE_MAX_NUM_SEQS" not in keys(check(tpu_profile(), tpu_profile.chips), "warning")


def test_check_cli_exit_codes(tpu_profile) -> None:
    bad = tpu_profile(ENGINE_GPU_MEMORY_UTILIZATION="0.99", ENGINE_BLOCK_SIZE="32")
    env = {**os.environ, "TPU_VISIBLE_CHIPS": "0,1,2,3"}
    r = subprocess.run(
        [sys.executable, "-m", "entrypoint", "check", "--profile", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 1
    assert (
        "ERROR ENGINE_GPU_MEMORY_UTILIZATION" in r.stderr
        and "WARNING ENGINE_BLOCK_SIZE" in r.stderr
    )
    ok = subprocess.run(
        [sys.executable, "-m", "entrypoint", "check", "--profile", str(tpu_profile())],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr


# --- replicas (ENGINE_REPLICAS): chips, ports, upstreams; one clear line each ------------------


def x4(tpu_profile, **overrides: str | None) -> Path:
    """Four one-chip replicas on a v6e-4, the layout the replica rules are written against: the
    x2 profile's replica settings with E4B, which fits one chip (12B does not: REFUSED)."""
    four = {"ENGINE_MODEL": "google/gemma-4-E4B-it", "MODEL_IMPL_TYPE": "flax_nnx",
            "ENGINE_REPLICAS": "4", "ENGINE_CHIPS_PER_REPLICA": "1",
            "ENGINE_TENSOR_PARALLEL_SIZE": "1"}  # fmt: skip
    return tpu_profile("v6e4-gemma4-12b-x2", **(four | overrides))


def only(findings: list[preflight.Finding], key: str) -> list[str]:
    return [f.message for f in findings if f.key == key and f.level == "error"]


def test_replicas_times_chips_must_fit_the_host(tpu_profile) -> None:
    assert keys(check(x4(tpu_profile), tpu_profile.chips)) == []  # 4 x 1 on 4 chips
    two = x4(tpu_profile, ENGINE_TENSOR_PARALLEL_SIZE="2", ENGINE_CHIPS_PER_REPLICA="2")
    bad = check(two, tpu_profile.chips)
    assert only(bad, "ENGINE_REPLICAS") == [
        "4 replicas x 2 chip(s) = 8 chips, but there are 4 TPU chips visible on this host"
    ]


def test_the_profile_name_declares_the_host_when_no_chip_is_visible(tpu_profile) -> None:
    """`make check` anywhere: a v6e4-* profile is a v6e-4, 4 chips."""
    values = read_profile(x4(tpu_profile, ENGINE_REPLICAS="8"))
    named = tpu_profile.tmp / "v6e4-gemma4-12b-x8.env"
    named.write_text("".join(f"{k}='{v}'\n" for k, v in values.items()))
    nochips = tpu_profile.tmp / "nochips"
    nochips.mkdir()
    assert only(check(named, nochips), "ENGINE_REPLICAS") == [
        "8 replicas x 1 chip(s) = 8 chips, but there are 4 TPU chips of a v6e-4 (the profile's name)"
    ]
    assert preflight.declared_tpu_chips(Path("v6e8-gemma4-31b.env")) == ("v6e-8", 8)
    assert preflight.declared_tpu_chips(Path("profile.env")) is None


def test_overlapping_chips_by_hand_are_refused(tpu_profile) -> None:
    findings = check(x4(tpu_profile, ENGINE_CHIP_SETS="0;1;1;3"), tpu_profile.chips)
    assert only(findings, "ENGINE_CHIP_SETS") == ["chip 1 is given to replicas 1 and 2"]
    beyond = check(x4(tpu_profile, ENGINE_CHIP_SETS="0;1;2;7"), tpu_profile.chips)
    assert only(beyond, "ENGINE_CHIP_SETS") == [
        "chip(s) [7] do not exist: there are 4 TPU chips visible on this host (0..3)"
    ]
    assert keys(check(x4(tpu_profile, ENGINE_CHIP_SETS="3;2;1;0"), tpu_profile.chips)) == []


def test_tensor_parallel_must_equal_chips_per_replica(tpu_profile) -> None:
    findings = check(x4(tpu_profile, ENGINE_CHIPS_PER_REPLICA="2"), tpu_profile.chips)
    assert only(findings, "ENGINE_CHIPS_PER_REPLICA") == [
        "2 chips per replica, but tensor-parallel size 1: each replica shards the model over "
        "exactly its own chips"
    ]


def test_replica_ports_must_not_hit_the_gateway_or_the_libtpu_ports(tpu_profile) -> None:
    gateway = check(x4(tpu_profile, GATEWAY_PORT="8002"), tpu_profile.chips)
    assert only(gateway, "ENGINE_REPLICAS") == [
        "replica 2 listens on port 8002, which is also GATEWAY_PORT: move ENGINE_PORT "
        "(replica i listens on ENGINE_PORT + i)"
    ]
    mesh = check(x4(tpu_profile, ENGINE_PORT="8474"), tpu_profile.chips)
    assert only(mesh, "ENGINE_REPLICAS") == [
        "replica 2 listens on port 8476, which is also the libtpu TPU_PROCESS_PORT of "
        "replica 0: move ENGINE_PORT (replica i listens on ENGINE_PORT + i)",
        "replica 3 listens on port 8477, which is also the libtpu TPU_PROCESS_PORT of "
        "replica 1: move ENGINE_PORT (replica i listens on ENGINE_PORT + i)",
    ]


@pytest.mark.parametrize(
    ("urls", "line"),
    [
        ("http://10.0.0.5:8000,10.0.0.6:8000", "'10.0.0.6:8000' must start with http:// or https://"),
        ("http://10.0.0.5:8000,http://10.0.0.5:8000/",
         "replica 10.0.0.5:8000 is listed twice (http://10.0.0.5:8000, http://10.0.0.5:8000)"),
        (",", "an empty entry (two commas, or a trailing one)"),
    ],
)  # fmt: skip
def test_upstream_problems_refuse_the_start(tpu_profile, urls: str, line: str) -> None:
    findings = check(x4(tpu_profile, GATEWAY_UPSTREAM_URLS=urls), tpu_profile.chips)
    assert line in only(findings, "GATEWAY_UPSTREAM_URLS"), findings


def test_zero_replicas_is_one_line(tpu_profile) -> None:
    findings = check(x4(tpu_profile, ENGINE_REPLICAS="0"), tpu_profile.chips)
    assert keys(findings) == ["ENGINE_REPLICAS"]
    assert "greater than or equal to 1" in findings[0].message


def test_a_drain_longer_than_compose_allows_is_a_warning(tpu_profile) -> None:
    findings = check(x4(tpu_profile, ENGINE_SHUTDOWN_TIMEOUT_S="300"), tpu_profile.chips)
    assert keys(findings) == []
    assert "ENGINE_SHUTDOWN_TIMEOUT_S" in keys(findings, "warning")


# --- cold start, block size, the refused 12B layout (issue 26) ----------------------------------


def test_ready_timeout_must_cover_a_cold_start(tpu_profile) -> None:
    """26B: ~50.4 GB of bf16 weights at 100 MB/s (504 s) + ~30 min compiling every shape on an
    empty JAX cache (tpu-inference PR #3408: "cold-JAX-cache startup takes ~30min") = 2304 s.
    A shorter vLLM ready timeout kills every new engine before it serves: one error line."""
    short = check(tpu_profile(VLLM_ENGINE_READY_TIMEOUT_S="1800"), tpu_profile.chips)
    assert only(short, "VLLM_ENGINE_READY_TIMEOUT_S") == [
        "1800 s is shorter than a cold start of google/gemma-4-26B-A4B-it (~2304 s: weights at "
        "100 MB/s + compiling every shape); use at least 2304"
    ]
    assert keys(check(tpu_profile(VLLM_ENGINE_READY_TIMEOUT_S="2304"), tpu_profile.chips)) == []
    assert keys(check(tpu_profile(VLLM_ENGINE_READY_TIMEOUT_S="2303"), tpu_profile.chips)) == [
        "VLLM_ENGINE_READY_TIMEOUT_S"
    ]
    # 31B needs more (~61.4 GB of weights): the 26B figure is not enough for it.
    big = tpu_profile(
        "v6e4-gemma4-31b", VLLM_ENGINE_READY_TIMEOUT_S="2304", ENGINE_MODEL="google/gemma-4-31B-it"
    )
    assert only(check(big, tpu_profile.chips), "VLLM_ENGINE_READY_TIMEOUT_S") == [
        "2304 s is shorter than a cold start of google/gemma-4-31B-it (~2414 s: weights at "
        "100 MB/s + compiling every shape); use at least 2414"
    ]


@pytest.mark.parametrize("name", TPU_PROFILES)
def test_every_tpu_profile_ready_timeout_covers_its_cold_start(name: str) -> None:
    from entrypoint import capacity
    from env.settings import EngineEnv, EngineSettings

    path = ENV_DIR / f"{name}.env"
    need = capacity.cold_start_s(EngineSettings.load(path))
    assert need is not None and need >= 900
    assert EngineEnv.load(path).vllm_engine_ready_timeout_s >= need


def test_an_unset_tpu_block_size_is_a_warning_not_an_error(tpu_profile) -> None:
    """Every upstream Gemma 4 TPU command sets --block-size (256: tpu-inference CI, #2333); the
    automatic choice would be 16 at 16K context (tpu-inference flash_attn.py)."""
    unset = check(tpu_profile(ENGINE_BLOCK_SIZE=None), tpu_profile.chips)
    assert keys(unset) == []
    assert [f.message for f in unset if f.key == "ENGINE_BLOCK_SIZE"] == [
        "unset: the automatic block size is 16 above 8192 tokens of context; the upstream "
        "Gemma 4 TPU recipes set 256 (or 64)"
    ]
    assert "ENGINE_BLOCK_SIZE" not in keys(check(tpu_profile(), tpu_profile.chips), "warning")
    # CPU and GPU keep their own defaults: no TPU recipe to follow there.
    gpu = check(tpu_profile("gpu-gemma4-26b", ENGINE_BLOCK_SIZE=None), tpu_profile.chips)
    assert "ENGINE_BLOCK_SIZE" not in keys(gpu, "warning")


def test_the_one_chip_12b_profile_is_refused_in_one_line(host) -> None:
    """22.17 GiB of bf16 weights + the ~9.5 GiB of compiled programs upstream's passing torchax
    run freed (PR #3408) exceed a 31.25 GiB v6e chip at any utilization."""
    project, chips = host
    findings = run_host("v6e1-gemma4-12b", project, chips(1))
    assert [str(f) for f in findings if f.level == "error"] == [
        "ERROR ENGINE_GPU_MEMORY_UTILIZATION: 22.17 GiB of weights per chip plus the ~9.5 GiB of "
        "compiled programs the vllm path needs exceed a 31.25 GiB v6e chip at any utilization: "
        "shard google/gemma-4-12B-it over more chips (TP)"
    ]
