"""What each Kubernetes overlay is, and the pod settings a profile implies (pure, no I/O).

An overlay is a profile (``env/<name>.env``) plus the few choices that only exist on a cluster
(replica counts, autoscaling bounds, how the gateway is exposed, the GPU type). Everything the
profile already decides (the engine command and environment, chips, timeouts, cache sizes) is
derived from it here and written into the overlay by ``deploy.k8s.generate``: a changed profile
changes the manifests at the next ``make k8s-generate``, and a stale overlay fails
``make k8s-check`` and the tests.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from entrypoint import capacity
from env.settings import EngineEnv, EngineSettings, GatewaySettings, StackSettings, WarmupSettings

# Fixed in-pod ports and paths (the base manifests name them; the tests check they agree).
ENGINE_PORT = 8000
WARMUP_STATUS_PORT = 8100
GATEWAY_PORT = 8080
PROFILE_DIR = "/etc/gemma4"
HF_TOKEN_DIR = "/var/run/secrets/gemma4/hf-token"
API_KEYS_DIR = "/var/run/secrets/gemma4/api-keys"
HF_TOKEN_SECRET = "gemma4-hf-token"  # key: hf_token
API_KEYS_SECRET = "gemma4-api-keys"  # key: api_keys
ENGINE_SERVICE = "gemma4-engine"

# GKE single-host TPU v6e slices: chips -> cloud.google.com/gke-tpu-topology (and machine type).
# Multi-host slices (v6e-16 and up) need LeaderWorkerSet + Ray: not shipped (docs/kubernetes.md).
V6E_TOPOLOGY = {1: "1x1", 4: "2x2", 8: "2x4"}
V6E_MACHINE = {1: "ct6e-standard-1t", 4: "ct6e-standard-4t", 8: "ct6e-standard-8t"}

# Seconds. The engine's preStop pause covers the gateways' next DNS refresh (the pod leaves the
# headless Service's answers when it starts terminating); the gateway's covers the load
# balancer noticing its /health went 503.
PRESTOP_SLACK_S = 5
GATEWAY_PRESTOP_S = 10
LAUNCHER_KILL_SLACK_S = 10  # entrypoint/process.py: SIGKILL this long after the drain bound
GRACE_MARGIN_S = 15
STARTUP_PERIOD_S = 10
STARTUP_SLACK_S = 300  # preflight, cache seed, process start before vLLM's own ready timeout
DEFAULT_SHUTDOWN_TIMEOUT_S = 60  # when the profile leaves vLLM's drain off (0)

# Engine container requests per platform and chip count (memory includes the tmpfs caches).
_RESOURCES: dict[tuple[str, int], tuple[str, str]] = {
    ("tpu", 1): ("16", "128Gi"),
    ("tpu", 4): ("64", "512Gi"),
    ("tpu", 8): ("64", "1024Gi"),
    ("gpu", 1): ("12", "160Gi"),
    ("cpu", 1): ("2", "8Gi"),
}
# Compose's defaults for the tmpfs sizes when the profile does not set STACK_* (docker-compose*.yml).
_COMPOSE_SIZES = {
    "tpu": ("16g", "96g", "16g"),
    "gpu": ("8g", "96g", "16g"),
    "cpu": ("2g", "1g", "1g"),
}


class SpecError(ValueError):
    """A profile an overlay cannot be generated from (one line per problem)."""


@dataclass(frozen=True)
class Overlay:
    """One generated overlay: a profile and the cluster-only choices."""

    name: str
    profile: str
    engine_replicas: int = 1
    max_replicas: int = 0  # 0: no HorizontalPodAutoscaler
    gateway_replicas: int = 2
    components: tuple[str, ...] = ()
    gpu_accelerator: str | None = None  # cloud.google.com/gke-accelerator
    pull_policy: str | None = None  # None: Kubernetes' default for the tag


OVERLAYS: dict[str, Overlay] = {
    o.name: o
    for o in (
        # What a local cluster (kind, minikube) runs: the tiny CPU engine, images loaded locally,
        # and the same shared state as the GKE overlays (the in-cluster Redis).
        Overlay(
            "cpu",
            "cpu",
            gateway_replicas=1,
            pull_policy="IfNotPresent",
            components=("shared-state", "redis"),
        ),
        Overlay(
            "gke-v6e4-gemma4-26b",
            "v6e4-gemma4-26b",
            max_replicas=4,
            components=("autoscaling", "loadbalancer", "shared-state", "redis"),
        ),
        Overlay(
            "gke-gpu-gemma4-26b",
            "gpu-gemma4-26b",
            max_replicas=4,
            components=("autoscaling", "loadbalancer", "shared-state", "redis"),
            gpu_accelerator="nvidia-h100-80gb",
        ),
        # Optional: Gateway API front door + an InferencePool for the Inference Extension.
        Overlay(
            "gke-v6e4-gemma4-26b-inference-pool",
            "v6e4-gemma4-26b",
            max_replicas=4,
            components=("autoscaling", "httproute", "inference-pool", "shared-state", "redis"),
        ),
    )
}


def k8s_quantity(size: str) -> str:
    """A compose size (``16g``, ``512m``, ``1024``) as a Kubernetes binary quantity."""
    m = re.fullmatch(r"([0-9]+)([kmgKMG]?)", size)
    if not m:
        raise SpecError(f"not a size: {size!r}")
    unit = {"": "", "k": "Ki", "m": "Mi", "g": "Gi"}[m.group(2).lower()]
    return f"{m.group(1)}{unit}"


def image_tag(image: str) -> str:
    """The tag of ``repo/name:tag`` (``latest`` when none)."""
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


@dataclass(frozen=True)
class PodPlan:
    """Everything the overlay needs from the profile, derived once."""

    platform: str
    chips: int  # accelerator chips (TPU) or GPUs per pod; 0 on CPU
    topology: str | None
    cpu: str
    memory: str
    compile_hot_size: str
    hf_cache_size: str
    shm_size: str
    shutdown_timeout_s: int
    engine_grace_s: int
    engine_prestop_s: int
    startup_failure_threshold: int
    gateway_drain_s: int
    gateway_grace_s: int
    hpa_target_waiting: int
    hpa_scale_down_window_s: int
    engine_image: tuple[str, str]  # (name, tag) of the image compose builds for this profile
    app_image: tuple[str, str]
    needs_secrets: bool


def plan(
    overlay: Overlay,
    engine: EngineSettings,
    runtime: EngineEnv,
    gateway: GatewaySettings,
    warmup: WarmupSettings,
    stack: StackSettings,
    stack_keys: set[str],
    app_version: str,
) -> PodPlan:
    """The pod settings for ``overlay`` (raises SpecError with every problem at once)."""
    problems: list[str] = []
    platform = engine.platform
    chips = engine.chips_each if platform != "cpu" else 0
    topology = None
    if platform == "tpu":
        topology = V6E_TOPOLOGY.get(chips)
        if topology is None:
            problems.append(
                f"{overlay.name}: {chips} TPU chips per replica is not a single-host v6e slice "
                f"({sorted(V6E_TOPOLOGY)}); multi-host needs LeaderWorkerSet (docs/kubernetes.md)"
            )
    budget = capacity.chip_budget(engine, runtime) if platform == "tpu" else None
    if budget is not None and budget.problem is not None:
        # The engine's preflight would refuse it: every pod would restart forever (issue 26).
        problems.append(f"{overlay.name}: the profile does not fit its chips: {budget.problem}")
    if platform == "gpu" and not overlay.gpu_accelerator:
        problems.append(f"{overlay.name}: a GPU overlay needs gpu_accelerator")
    cpu, memory = _RESOURCES.get((platform, max(chips, 1)), ("", ""))
    if not cpu:
        problems.append(f"{overlay.name}: no resource sizes for {platform} x{chips}")
    if platform != "cpu" and image_tag(engine.image) in ("", "latest"):
        problems.append(f"{overlay.name}: ENGINE_IMAGE {engine.image!r} has no pinned tag")
    if problems:
        raise SpecError("\n".join(problems))

    hot, hf, shm = _COMPOSE_SIZES[platform]
    sizes = {
        "compile_hot_size": stack.compile_cache_size
        if "STACK_COMPILE_CACHE_SIZE" in stack_keys
        else hot,
        "hf_cache_size": stack.hf_cache_size if "STACK_HF_CACHE_SIZE" in stack_keys else hf,
        "shm_size": stack.shm_size if "STACK_SHM_SIZE" in stack_keys else shm,
    }
    shutdown = engine.shutdown_timeout_s or DEFAULT_SHUTDOWN_TIMEOUT_S
    engine_prestop = math.ceil(gateway.dns_refresh_s) + PRESTOP_SLACK_S
    drain = math.ceil(gateway.drain_timeout_s)
    ready = runtime.vllm_engine_ready_timeout_s
    if platform == "cpu":
        engine_image = ("gemma4-serving/engine-cpu", image_tag(engine.image))
        app_image = ("gemma4-serving/app", "latest")
    else:
        # The compose image (entrypoint/Dockerfile.upstream over ENGINE_IMAGE), tagged with the
        # upstream tag it was built from: `make k8s-images` applies these tags.
        engine_image = ("gemma4-serving/engine-upstream", f"{image_tag(engine.image)}-{platform}")
        app_image = ("gemma4-serving/app", app_version)
    return PodPlan(
        platform=platform,
        chips=chips,
        topology=topology,
        cpu=cpu,
        memory=memory,
        **{k: k8s_quantity(v) for k, v in sizes.items()},
        shutdown_timeout_s=shutdown,
        engine_grace_s=engine_prestop + shutdown + LAUNCHER_KILL_SLACK_S + GRACE_MARGIN_S,
        engine_prestop_s=engine_prestop,
        startup_failure_threshold=math.ceil((ready + STARTUP_SLACK_S) / STARTUP_PERIOD_S),
        gateway_drain_s=drain,
        gateway_grace_s=GATEWAY_PRESTOP_S + drain + GRACE_MARGIN_S,
        # Scale out before the gateway starts queueing in front of a saturated engine.
        hpa_target_waiting=max(1, gateway.engine_waiting_threshold - 1),
        # A new pod is useless until it has compiled and warmed: never scale it away sooner.
        hpa_scale_down_window_s=min(3600, ready + math.ceil(warmup.budget_s)),
        engine_image=engine_image,
        app_image=app_image,
        needs_secrets=platform != "cpu",
    )
