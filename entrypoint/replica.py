"""One engine replica of a profile: its port, its hot compile-cache dir, and on TPU its chips.

A profile with ``ENGINE_REPLICAS=N`` runs N independent ``vllm serve`` processes on one host
(``python -m entrypoint serve --replica I``). What differs per replica is derived here, from the
index alone, so the entrypoint, the preflight, compose (``deploy/replicas.py``) and the warm-up's
``cache save --replica I`` agree without being told twice:

- port: ``ENGINE_PORT + I`` (``EngineSettings.replica_port``);
- hot compile cache: ``<CACHE_HOT_DIR>/replica-<I>`` when N > 1 (each engine writes its own
  JAX/XLA and torch.compile files and records its own ``.active-key``); the persistent copy is
  shared: the cache key (model, TP size, image, vLLM version) is the same for every replica, so
  whichever replica is warmed first seeds the next cold start of all of them;
- CPU cores (the CPU build): replica I's OpenMP threads on its own slice of the host's cores
  (``cpu_environ``);
- TPU chips: replica I owns chips ``[I*C, I*C+C)`` (``C`` = ``ENGINE_CHIPS_PER_REPLICA``), or the
  I-th group of ``ENGINE_CHIP_SETS`` when a profile pins them by hand.

The libtpu variables that confine one process to some chips of a host (env/README.md,
"Replicas", has the sources) are the ones current tpu-inference sets for each process of its own
multi-process data parallelism (``tpu_worker._setup_dp_chip_isolation``): ``TPU_VISIBLE_CHIPS``
(the chip indices), ``TPU_CHIPS_PER_PROCESS_BOUNDS`` (the process's chip grid: ``1,C,1``),
``TPU_PROCESS_BOUNDS=1,1,1`` (every replica is a one-process world: they never talk to each
other), and a distinct ``TPU_PROCESS_PORT`` with ``TPU_PROCESS_ADDRESSES=localhost:<port>`` and
``CLOUD_TPU_TASK_ID=0`` ("unique libtpu port per rank so the runtimes can coexist on a host").
The older ``TPU_VISIBLE_DEVICES`` / ``TPU_MESH_CONTROLLER_*`` names are no longer set: no source
for the libtpu in vllm-tpu 0.32 reads them. ``ALLOW_MULTIPLE_LIBTPU_LOAD=1`` stays (JAX's own
multi-process test harness sets it so that several processes on one host may load libtpu).

Starting them: tpu-inference's launcher for independent servers
(``examples/external_lb/run_dp_external_lb.sh``) removes a stale ``/tmp/libtpu_lockfile`` (left
by a process that died holding the chips: the next libtpu refuses to open them) and starts the
ranks ``STAGGER_S`` (20 s) apart; ``prestart`` does both for replica I (a delay of I x 20 s).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from env.settings import CacheSettings, EngineSettings, OpsSettings

# TPU_PROCESS_PORT of replica I is this + I (the ports pytorch/xla's tests of these variables
# use, 8476..8479, PR #4724; tpu-inference numbers its own ranks from BASE_JAX_PORT the same way).
PROCESS_BASE_PORT = 8476
# tpu-inference examples/external_lb/run_dp_external_lb.sh: STAGGER_S=20 between rank starts.
STAGGER_S = 20.0
LIBTPU_LOCKFILE = Path("/tmp/libtpu_lockfile")
# TPU_CHIPS_PER_PROCESS_BOUNDS for a replica of C chips (tpu-inference examples/external_lb:
# "1,${CHIPS_PER_RANK},1"; the JAX recipe: 1,1,1 and 1,2,1).
CHIP_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "1,4,1"}


class ReplicaError(ValueError):
    """A replica index or chip layout that cannot be served; the message is one line."""


def check_index(engine: EngineSettings, index: int) -> None:
    """Raise ``ReplicaError`` unless ``0 <= index < ENGINE_REPLICAS``."""
    if not 0 <= index < engine.replicas:
        last = engine.replicas - 1
        raise ReplicaError(
            f"--replica {index} is out of range: ENGINE_REPLICAS={engine.replicas} "
            f"(replicas 0..{last})"
        )


def hot_dir(cache: CacheSettings, engine: EngineSettings, index: int) -> Path:
    """The replica's hot compile-cache dir: ``CACHE_HOT_DIR`` for a single engine (unchanged),
    ``<CACHE_HOT_DIR>/replica-<I>`` for every replica of a multi-replica profile."""
    return cache.hot_dir if engine.replicas == 1 else cache.hot_dir / f"replica-{index}"


def for_replica(
    engine: EngineSettings, cache: CacheSettings, index: int
) -> tuple[EngineSettings, CacheSettings]:
    """The engine and cache settings of replica ``index`` (port and hot dir replaced)."""
    check_index(engine, index)
    return (
        engine.model_copy(update={"port": engine.replica_port(index)}),
        cache.model_copy(update={"hot_dir": hot_dir(cache, engine, index)}),
    )


def engine_log_path(
    ops: OpsSettings, cache: CacheSettings, engine: EngineSettings, index: int
) -> Path:
    """Where replica ``index`` keeps its log: in its own hot dir, or ``OPS_ENGINE_LOG_FILE`` with
    ``.replica-<I>`` before the suffix when several replicas would share that one file."""
    if ops.engine_log_file is None or engine.replicas == 1:
        return ops.engine_log_path(cache)
    path = ops.engine_log_file
    return path.with_name(f"{path.stem}.replica-{index}{path.suffix}")


def parse_chip_sets(raw: str) -> tuple[list[tuple[int, ...]], list[str]]:
    """``"0,1;2,3"`` -> ``[(0, 1), (2, 3)]``; problems (one line each) instead of raising."""
    sets: list[tuple[int, ...]] = []
    problems: list[str] = []
    for n, group in enumerate(raw.split(";")):
        items = [c.strip() for c in group.split(",") if c.strip()]
        if not items:
            problems.append(f"ENGINE_CHIP_SETS: group {n} is empty (in {raw!r})")
            continue
        if not all(c.isdigit() for c in items):
            problems.append(f"ENGINE_CHIP_SETS: group {n} ({group.strip()!r}) is not chip numbers")
            continue
        sets.append(tuple(int(c) for c in items))
    return sets, problems


def chip_sets(engine: EngineSettings) -> list[tuple[int, ...]]:
    """Each replica's TPU chip indices. Raises ``ReplicaError`` for a malformed hand-made list
    (``chip_set_problems`` reports the same problems as lines)."""
    if engine.chip_sets.strip():
        sets, problems = parse_chip_sets(engine.chip_sets)
        if problems:
            raise ReplicaError(problems[0])
        return sets
    c = engine.chips_each
    return [tuple(range(i * c, (i + 1) * c)) for i in range(engine.replicas)]


def chip_set_problems(engine: EngineSettings) -> list[str]:
    """What is wrong with the chip layout, one line each: a malformed or mis-sized hand-made
    list, or two replicas sharing a chip (only one process can open a TPU chip)."""
    if not engine.chip_sets.strip():
        return []
    sets, problems = parse_chip_sets(engine.chip_sets)
    if problems:
        return problems
    if len(sets) != engine.replicas:
        problems.append(
            f"ENGINE_CHIP_SETS: {len(sets)} group(s) for ENGINE_REPLICAS={engine.replicas}; "
            "give one ';'-separated group per replica"
        )
    owner: dict[int, int] = {}
    for i, chips in enumerate(sets):
        if len(chips) != engine.chips_each:
            problems.append(
                f"ENGINE_CHIP_SETS: replica {i} has {len(chips)} chip(s) {list(chips)}, "
                f"ENGINE_CHIPS_PER_REPLICA is {engine.chips_each}"
            )
        for chip in chips:
            if chip in owner:
                other = owner[chip]
                where = f"replicas {other} and {i}" if other != i else f"replica {i} twice"
                problems.append(f"ENGINE_CHIP_SETS: chip {chip} is given to {where}")
            else:
                owner[chip] = i
    return problems


def pinned(engine: EngineSettings) -> bool:
    """Whether each replica process must be confined to its own chips: TPU, and several
    replicas on the host or chips chosen by hand."""
    return engine.platform == "tpu" and (engine.replicas > 1 or bool(engine.chip_sets.strip()))


def cpu_environ(
    engine: EngineSettings, bind: str | None, index: int, cores: list[int] | None = None
) -> dict[str, str]:
    """The CPU build's core binding of replica ``index`` when several share a host.

    vLLM's CPU worker pins its OpenMP threads (``VLLM_CPU_OMP_THREADS_BIND=auto``: the host's
    cores but one, the same ones for every process that asks). Two replicas would then spin on
    the same cores: measured on 2 cores, a replica restarted next to a busy one did not finish
    starting in 10 minutes (its ``import torch`` stalled moving onto the busy core: the launcher
    now also confines each pinned engine to its own cores, ``bound_cores``). So,
    unless the profile binds by hand (``bind``), each replica gets its own slice of the host's
    cores (``os.sched_getaffinity``), or ``nobind`` (the OS schedules) when there are fewer
    cores than replicas."""
    if engine.platform != "cpu" or engine.replicas < 2 or bind is not None:
        return {}
    check_index(engine, index)
    cores = sorted(os.sched_getaffinity(0)) if cores is None else cores
    each = len(cores) // engine.replicas
    if each < 1:
        return {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    mine = cores[index * each : (index + 1) * each]
    return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(str(c) for c in mine)}


def bound_cores(bind: str | None) -> set[int] | None:
    """The cores a ``VLLM_CPU_OMP_THREADS_BIND`` value pins the engine to, None when it pins
    none (unset, ``auto``, ``nobind``, or not a core list). vLLM's format: comma-separated cores
    or ``a-b`` ranges, one group per tensor-parallel rank separated by ``|``.

    The launcher confines the whole engine (API server, engine core, workers) to these cores
    before it starts vLLM. A fresh process's ``import torch`` counts physical cores through MKL
    (``MKL_Read_ThreadENV_Count_Cores``, from ``at::init_num_threads``), which moves the thread
    onto every core it may run on, one after the other (seen with strace). Moving onto a core
    where another engine's pinned OpenMP worker is busy stalled in the kernel
    (``affine_move_task``, no CPU time gained) for as long as that worker stayed busy: a replica
    restarted next to a loaded one printed nothing for 10 minutes (caught by
    ``entrypoint.procdiag`` in a CI run). Confined to its own cores, the probe never leaves them.
    """
    if not bind or bind.strip() in ("auto", "nobind"):
        return None
    cores: set[int] = set()
    for group in bind.split("|"):
        for item in group.split(","):
            lo, sep, hi = item.strip().partition("-")
            if not lo.isdigit() or (sep and not hi.isdigit()):
                return None
            cores.update(range(int(lo), int(hi if sep else lo) + 1))
    return cores or None


def process_port(index: int) -> int:
    """Replica ``index``'s ``TPU_PROCESS_PORT`` (one libtpu runtime port per process)."""
    return PROCESS_BASE_PORT + index


def prestart(
    engine: EngineSettings,
    index: int,
    lockfile: Path = LIBTPU_LOCKFILE,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Before replica ``index`` of a pinned TPU profile starts: remove a stale libtpu lockfile
    and wait ``index x STAGGER_S`` so that the replicas' runtimes do not initialise at once (both
    as tpu-inference's own launcher does). Returns what was done, one line each (for the log)."""
    if not pinned(engine):
        return []
    check_index(engine, index)
    done: list[str] = []
    try:
        lockfile.unlink()
        done.append(f"removed a stale {lockfile}")
    except FileNotFoundError:
        pass
    delay = index * STAGGER_S
    if delay:
        done.append(f"replica {index}: start staggered by {delay:.0f} s")
        sleep(delay)
    return done


def tpu_environ(engine: EngineSettings, index: int) -> dict[str, str]:
    """The libtpu variables of replica ``index`` (empty when the profile needs no pinning)."""
    if not pinned(engine):
        return {}
    check_index(engine, index)
    chips = chip_sets(engine)[index]
    bounds = CHIP_BOUNDS.get(len(chips))
    if bounds is None:
        raise ReplicaError(
            f"{len(chips)} TPU chips per replica: only {sorted(CHIP_BOUNDS)} have a known "
            "TPU_CHIPS_PER_PROCESS_BOUNDS"
        )
    port = process_port(index)
    return {
        "TPU_VISIBLE_CHIPS": ",".join(str(c) for c in chips),
        "TPU_CHIPS_PER_PROCESS_BOUNDS": bounds,
        "TPU_PROCESS_BOUNDS": "1,1,1",
        "TPU_PROCESS_PORT": str(port),
        "TPU_PROCESS_ADDRESSES": f"localhost:{port}",
        "CLOUD_TPU_TASK_ID": "0",
        "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
    }
