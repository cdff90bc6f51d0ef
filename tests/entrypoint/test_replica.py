"""Replicas: what `serve --replica I` derives (port, hot cache dir, TPU chips) and the drain flag."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint import replica
from entrypoint.cache import CacheLayout, cache_key, save, seed
from entrypoint.process import STOP_GRACE_S, stop_grace_s
from entrypoint.render import render
from env.settings import ENV_DIR, CacheSettings, EngineEnv, EngineSettings
from tests.entrypoint.test_render import vllm_parse

X2 = ENV_DIR / "v6e4-gemma4-12b-x2.env"


def tpu(**kw: object) -> EngineSettings:
    return EngineSettings(platform="tpu", model="google/gemma-4-12B-it", **kw)  # type: ignore[arg-type]


def x2_render(index: int):
    return render(
        EngineSettings.load(X2), EngineEnv.load(X2), CacheSettings.load(X2), replica=index
    )


def test_the_x2_profile_pins_each_replica_to_its_own_chips_and_port() -> None:
    """Per process, what current tpu-inference sets so that several runtimes coexist on one host
    (``tpu_worker._setup_dp_chip_isolation``: TPU_VISIBLE_CHIPS, bounds 1,C,1 and 1,1,1, a
    distinct TPU_PROCESS_PORT with TPU_PROCESS_ADDRESSES=localhost:<port>, CLOUD_TPU_TASK_ID=0),
    and none of the older names no cited source for the libtpu of vllm-tpu 0.32 reads."""
    seen_chips, seen_mesh, seen_ports = set(), set(), set()
    for i in range(2):
        r = x2_render(i)
        args = vllm_parse(r.argv[1:])
        assert args.port == 8000 + i
        assert args.tensor_parallel_size == 2
        assert r.env["TPU_VISIBLE_CHIPS"] == f"{2 * i},{2 * i + 1}"
        assert r.env["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "1,2,1"
        assert r.env["TPU_PROCESS_BOUNDS"] == "1,1,1"
        assert r.env["TPU_PROCESS_PORT"] == str(8476 + i)
        assert r.env["TPU_PROCESS_ADDRESSES"] == f"localhost:{8476 + i}"
        assert r.env["CLOUD_TPU_TASK_ID"] == "0"
        assert not {"TPU_VISIBLE_DEVICES", "TPU_MESH_CONTROLLER_ADDRESS"} & r.env.keys()
        # its own hot compile cache, the shared key (so the persistent copy is shared)
        assert r.env["VLLM_XLA_CACHE_PATH"].startswith(f"/cache/compile-hot/replica-{i}/")
        seen_chips.add(r.env["TPU_VISIBLE_CHIPS"])
        seen_mesh.add(r.env["TPU_PROCESS_PORT"])
        seen_ports.add(args.port)
    assert len(seen_chips) == len(seen_mesh) == len(seen_ports) == 2
    key = {Path(x2_render(i).env["VLLM_XLA_CACHE_PATH"]).parent.name for i in range(2)}
    assert len(key) == 1


def test_two_chips_per_replica_use_the_1_2_1_grid() -> None:
    e = tpu(replicas=2, tensor_parallel_size=2)
    assert replica.tpu_environ(e, 1)["TPU_VISIBLE_CHIPS"] == "2,3"
    assert replica.tpu_environ(e, 1)["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "1,2,1"
    by_hand = e.model_copy(update={"chip_sets": "4,5;6,7"})
    assert replica.tpu_environ(by_hand, 0)["TPU_VISIBLE_CHIPS"] == "4,5"


def test_a_single_engine_is_rendered_as_before() -> None:
    profile = ENV_DIR / "v6e4-gemma4-26b.env"
    r = render(EngineSettings.load(profile), EngineEnv.load(profile), CacheSettings.load(profile))
    assert not any(k.startswith("TPU_") for k in r.env)
    assert "/replica-" not in r.env["VLLM_XLA_CACHE_PATH"]
    assert "--shutdown-timeout" not in r.argv


def test_out_of_range_replica_is_one_clear_error() -> None:
    with pytest.raises(
        replica.ReplicaError, match=r"--replica 2 is out of range: ENGINE_REPLICAS=2"
    ):
        x2_render(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    for argv in (["render", "--profile", "cpu", "--replica", "1"],
                 ["serve", "--profile", str(X2), "--replica", "-1"]):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "entrypoint", *argv],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2
        assert done.stderr.strip().count("\n") == 0, done.stderr
        assert "out of range" in done.stderr


def test_shutdown_timeout_is_rendered_and_accepted_by_vllm() -> None:
    e = EngineSettings(shutdown_timeout_s=45)
    r = render(e, EngineEnv(), CacheSettings())
    assert r.argv[r.argv.index("--shutdown-timeout") + 1] == "45"
    assert vllm_parse(r.argv[1:]).shutdown_timeout == 45
    assert "--shutdown-timeout" not in render(EngineSettings(), EngineEnv(), CacheSettings()).argv


def test_launcher_waits_the_drain_plus_its_margin_before_sigkill() -> None:
    assert stop_grace_s(0) == STOP_GRACE_S  # today's behaviour for profiles without a drain
    assert stop_grace_s(30) == 30 + STOP_GRACE_S


def test_chip_set_problems_one_line_each() -> None:
    overlap = tpu(replicas=2, tensor_parallel_size=2, chip_sets="0,1;1,2")
    assert replica.chip_set_problems(overlap) == [
        "ENGINE_CHIP_SETS: chip 1 is given to replicas 0 and 1"
    ]
    sized = tpu(replicas=2, chip_sets="0,1;2")
    assert replica.chip_set_problems(sized) == [
        "ENGINE_CHIP_SETS: replica 0 has 2 chip(s) [0, 1], ENGINE_CHIPS_PER_REPLICA is 1"
    ]
    counted = tpu(replicas=3, chip_sets="0;1")
    assert replica.chip_set_problems(counted) == [
        "ENGINE_CHIP_SETS: 2 group(s) for ENGINE_REPLICAS=3; give one ';'-separated group per replica"
    ]
    assert replica.chip_set_problems(tpu(replicas=2, chip_sets="0;x")) == [
        "ENGINE_CHIP_SETS: group 1 ('x') is not chip numbers"
    ]
    assert replica.chip_set_problems(tpu(replicas=2, chip_sets="3;2")) == []


def test_replicas_share_the_persistent_cache_but_not_the_hot_dir(tmp_path: Path) -> None:
    """Replica 1 warmed and saved; replica 3's cold start is seeded from that copy."""
    e = EngineSettings(replicas=4, model="m")
    cache = CacheSettings(hot_dir=tmp_path / "hot", persist_dir=tmp_path / "persist")
    _, c1 = replica.for_replica(e, cache, 1)
    _, c3 = replica.for_replica(e, cache, 3)
    l1, l3 = CacheLayout.for_settings(e, c1, "v"), CacheLayout.for_settings(e, c3, "v")
    assert l1.key == l3.key == cache_key(e, "v")
    assert l1.hot != l3.hot and l1.persist == l3.persist
    seed(l1)
    (l1.hot / "xla").mkdir()
    (l1.hot / "xla" / "entry").write_text("compiled")
    assert "saved" in save(CacheLayout.active(e, c1))
    assert "seeded" in seed(l3)
    assert (l3.hot / "xla" / "entry").read_text() == "compiled"


def test_cache_save_cli_names_the_replica(tmp_path: Path) -> None:
    env = {
        "CACHE_HOT_DIR": str(tmp_path / "hot"),
        "CACHE_PERSIST_DIR": str(tmp_path / "persist"),
        "ENGINE_REPLICAS": "2",
        "PATH": "/usr/bin:/bin",
    }
    hot = tmp_path / "hot" / "replica-1"
    e = EngineSettings(replicas=2)
    layout = CacheLayout.for_settings(e, CacheSettings(hot_dir=hot, persist_dir=tmp_path / "p"))
    (hot / layout.key).mkdir(parents=True)
    (hot / layout.key / "f").write_text("x")
    argv = [sys.executable, "-m", "entrypoint", "cache", "save", "--profile", "cpu"]
    done = subprocess.run([*argv, "--replica", "1"], capture_output=True, text=True, env=env,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "saved" in done.stdout
    assert (tmp_path / "persist" / layout.key / "f").read_text() == "x"
    other = subprocess.run([*argv, "--replica", "0"], capture_output=True, text=True, env=env,
                           timeout=60, check=False)  # fmt: skip
    assert "hot dir empty, nothing saved" in other.stdout


def test_an_explicit_engine_log_file_is_split_per_replica(tmp_path: Path) -> None:
    from env.settings import OpsSettings

    e = EngineSettings(replicas=2)
    ops = OpsSettings(engine_log_file=tmp_path / "engine.log")
    assert replica.engine_log_path(ops, CacheSettings(), e, 1) == tmp_path / "engine.replica-1.log"
    _, c1 = replica.for_replica(e, CacheSettings(hot_dir=tmp_path / "hot"), 1)
    assert replica.engine_log_path(OpsSettings(), c1, e, 1) == tmp_path / "hot/replica-1/engine.log"


def test_a_concurrent_save_of_the_same_key_keeps_one_whole_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas' warm-ups save the shared key at once: the second rename finds the first's
    copy in place; it keeps that one instead of failing or mixing the two."""
    from entrypoint import cache as cache_mod

    src = tmp_path / "hot"
    src.mkdir()
    (src / "f").write_text("mine")
    dst = tmp_path / "persist" / "key"
    real_rename = Path.rename

    def racing_rename(self: Path, target: Path) -> Path:
        if target == dst and self.name.startswith(".key.tmp-"):
            dst.mkdir(parents=True)  # the other replica's save lands first
            (dst / "f").write_text("theirs")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", racing_rename)
    cache_mod._copy_atomically(src, dst)
    assert (dst / "f").read_text() == "theirs"
    assert [p.name for p in dst.parent.iterdir()] == ["key"]  # no temp dir left behind


def test_cpu_replicas_get_their_own_cores_unless_the_profile_binds() -> None:
    two = EngineSettings(_env_file=None, platform="cpu", replicas=2)  # type: ignore[call-arg]
    assert replica.cpu_environ(two, None, 0, cores=[0, 1, 2, 3]) == {
        "VLLM_CPU_OMP_THREADS_BIND": "0,1"
    }
    assert replica.cpu_environ(two, None, 1, cores=[0, 1, 2, 3]) == {
        "VLLM_CPU_OMP_THREADS_BIND": "2,3"
    }
    four = EngineSettings(_env_file=None, platform="cpu", replicas=4)  # type: ignore[call-arg]
    assert replica.cpu_environ(four, None, 3, cores=[0, 1]) == {
        "VLLM_CPU_OMP_THREADS_BIND": "nobind"
    }
    assert replica.cpu_environ(two, "0-1", 1, cores=[0, 1, 2, 3]) == {}  # the profile's own
    one = EngineSettings(_env_file=None, platform="cpu")  # type: ignore[call-arg]
    assert replica.cpu_environ(one, None, 0) == {}  # one engine: vLLM's auto binding, as before


def test_prestart_clears_the_libtpu_lockfile_and_staggers(tmp_path: Path) -> None:
    """As tpu-inference's launcher (examples/external_lb/run_dp_external_lb.sh): a stale
    /tmp/libtpu_lockfile is removed and rank I starts I x STAGGER_S (20 s) after rank 0."""
    lock = tmp_path / "libtpu_lockfile"
    lock.write_text("")
    slept: list[float] = []
    e = EngineSettings.load(X2)
    done = replica.prestart(e, 1, lockfile=lock, sleep=slept.append)
    assert not lock.exists() and slept == [replica.STAGGER_S] == [20.0]
    assert done == [f"removed a stale {lock}", "replica 1: start staggered by 20 s"]
    assert replica.prestart(e, 0, lockfile=lock, sleep=slept.append) == []  # no lock, no wait
    single = ENV_DIR / "v6e4-gemma4-26b.env"
    lock.write_text("")
    assert replica.prestart(EngineSettings.load(single), 0, lockfile=lock) == []
    assert lock.exists()  # an unpinned engine owns the whole host: nothing else to clear for


def test_compose_tpu_engine_keeps_no_lockfile_across_restarts() -> None:
    """Docker mounts a fresh tmpfs at each container start: a crashed engine's
    /tmp/libtpu_lockfile cannot survive into its restart (docker-compose.tpu.yml)."""
    import yaml

    compose = yaml.safe_load((ENV_DIR.parent / "docker-compose.tpu.yml").read_text())
    assert "/tmp" in compose["services"]["engine"]["tmpfs"]


def test_bound_cores_reads_vllms_bind_format() -> None:
    """The cores the launcher confines a pinned engine to (see ``bound_cores``: MKL's core
    probe at ``import torch`` must not move the process onto another engine's busy core)."""
    from entrypoint.replica import bound_cores

    assert bound_cores("1") == {1}
    assert bound_cores("0,2") == {0, 2}
    assert bound_cores("0-3") == {0, 1, 2, 3}
    assert bound_cores("0-1|4-5") == {0, 1, 4, 5}  # one group per tensor-parallel rank
    for unpinned in (None, "", "auto", "nobind", " auto ", "cores", "1-x", "-1"):
        assert bound_cores(unpinned) is None, unpinned
