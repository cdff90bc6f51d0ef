"""The Kubernetes overlays, rendered (`kubectl kustomize`) and checked as parsed objects.

No cluster: what a cluster would reject (schema, CRD schema) and what would silently misbehave
(an engine command that drifted from its profile, probes on the wrong port, too few TPU chips,
a grace period shorter than the drain, a secret in an env var, an image compose never built)
is caught here.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.k8s import generate, spec, validate
from env.settings import EngineSettings, read_profile
from tests.deploy.k8s_support import container, env_of, one, port_number, rendered, require_kubectl
from tests.support.process import REPO

OVERLAYS = list(spec.OVERLAYS)
ACCELERATED = [n for n, o in spec.OVERLAYS.items() if o.profile != "cpu"]


@pytest.fixture(autouse=True)
def _kubectl() -> None:
    require_kubectl()


def _pod(overlay: str, name: str) -> dict:
    return one(rendered(overlay), "Deployment", name)["spec"]["template"]["spec"]


def test_overlays_are_generated_from_the_current_profiles() -> None:
    assert generate.stale(list(spec.OVERLAYS.values())) == []


def test_every_overlay_renders_and_validates() -> None:
    problems = validate.check_overlays(OVERLAYS)
    assert problems == {name: [] for name in OVERLAYS}
    kinds = {o["kind"] for name in OVERLAYS for o in rendered(name)}
    assert {
        "PodMonitoring",
        "HTTPRoute",
        "Gateway",
        "InferencePool",
        "HorizontalPodAutoscaler",
    } <= kinds


def test_validation_rejects_what_a_cluster_would() -> None:
    objs = copy.deepcopy(list(rendered("gke-v6e4-gemma4-26b-inference-pool")))
    for o in objs:
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "gemma4-engine":
            o["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # typo'd field
        if o["kind"] == "InferencePool":
            o["spec"]["targetPorts"] = [{"port": 8000}]
        if o["kind"] == "HTTPRoute":
            o["spec"]["rules"][0]["backendRefs"][0]["weight"] = "heavy"
    problems = validate.check_stream(yaml.safe_dump_all(objs), validate.crd_schemas())
    text = "\n".join(problems)
    assert "Deployment/gemma4-engine (k8s" in text and "readinesProbe" in text
    assert "InferencePool/gemma4-engine" in text and "inference-extension/blob/v1.6.0" in text
    assert "HTTPRoute/" in text


def test_crd_schemas_name_their_source_version() -> None:
    schemas = validate.crd_schemas()
    assert {k[1] for k in schemas} >= {"PodMonitoring", "HTTPRoute", "Gateway", "InferencePool"}
    for crd in schemas.values():
        assert re.match(r"https://github\.com/[^/]+/[^/]+/blob/v[0-9.]+/", crd.source), crd.source


def _cli_render(profile_file: Path, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """`python -m entrypoint render --profile X` with exactly ``env``: (argv, environment)."""
    done = subprocess.run(
        [sys.executable, "-m", "entrypoint", "render", "--profile", str(profile_file)],
        capture_output=True, text=True, timeout=60, check=True, cwd=REPO,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), **env},
    )  # fmt: skip
    words = shlex.split(done.stdout.replace("\\\n", " "))
    assert words[0] == "env"
    cut = next(i for i, w in enumerate(words[1:], 1) if "=" not in w)
    return words[cut:], dict(w.split("=", 1) for w in words[1:cut])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_engine_command_and_env_are_what_entrypoint_renders(overlay: str, tmp_path: Path) -> None:
    objs = rendered(overlay)
    pod = _pod(overlay, "gemma4-engine")
    engine = container(pod, "engine")
    env = env_of(engine)
    profile = spec.OVERLAYS[overlay].profile
    # The profile file the command names is the ConfigMap generated from env/<profile>.env.
    mount = next(m for m in engine["volumeMounts"] if m["name"] == "profile")
    assert engine["command"] == [
        "python3", "-m", "entrypoint", "serve", "--profile", f"{mount['mountPath']}/{profile}.env"
    ]  # fmt: skip
    volume = next(v for v in pod["volumes"] if v["name"] == "profile")
    cm = one(objs, "ConfigMap", volume["configMap"]["name"])  # the generated (hashed) name
    assert cm["metadata"]["name"].startswith("gemma4-profile-")
    assert cm["data"] == {f"{profile}.env": (REPO / "env" / f"{profile}.env").read_text()}
    assert env["PROFILE"] == engine["command"][-1]

    # What serve will run, rendered by the real CLI from the pod's view (its file, its env).
    pod_file = tmp_path / f"{profile}.env"
    pod_file.write_text(cm["data"][f"{profile}.env"])
    argv, renv = _cli_render(pod_file, {k: v for k, v in env.items() if k != "PROFILE"})
    annotation = one(objs, "Deployment", "gemma4-engine")["spec"]["template"]["metadata"]
    assert shlex.split(annotation["annotations"][generate.VLLM_COMMAND_ANNOTATION]) == argv
    for key, value in renv.items():
        if key not in generate.KEY_DERIVED_ENV:
            assert env.get(key) == value, key
    # ... and it is the profile's own command: only what the pod overrides differs (the listen
    # address; the drain bound when the profile leaves it off).
    raw_argv, _ = _cli_render(REPO / "env" / f"{profile}.env", {})
    overridden = {"--host": "0.0.0.0", "--shutdown-timeout": env["ENGINE_SHUTDOWN_TIMEOUT_S"]}
    assert _without(argv, overridden) == _without(raw_argv, overridden)
    for flag, value in overridden.items():
        assert argv[argv.index(flag) + 1] == value


def _without(argv: list[str], flags: dict[str, str]) -> list[str]:
    out, skip = [], False
    for i, word in enumerate(argv):
        if skip:
            skip = False
        elif word in flags and i + 1 < len(argv):
            skip = True
        else:
            out.append(word)
    return out


def test_render_comparison_can_fail(tmp_path: Path) -> None:
    """A manifest env that disagrees with the profile shows in the CLI's rendering."""
    f = tmp_path / "p.env"
    f.write_text((REPO / "env" / "v6e4-gemma4-26b.env").read_text())
    argv, _ = _cli_render(f, {"ENGINE_MAX_NUM_SEQS": "7"})
    raw, _ = _cli_render(f, {})
    assert argv != raw and "7" in argv


def _routes(path: str) -> str:
    return (REPO / path).read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_point_at_routes_that_exist_on_the_right_ports(overlay: str) -> None:
    objs = rendered(overlay)
    pod = _pod(overlay, "gemma4-engine")
    engine, warmup = container(pod, "engine"), container(pod, "warmup")
    env, wenv = env_of(engine), env_of(warmup)
    assert warmup["restartPolicy"] == "Always"  # a native sidecar
    assert warmup["command"] == ["python", "-m", "warmup", "--watch", "--no-notify"]
    assert wenv["WARMUP_STATUS_HOST"] == "0.0.0.0"
    # vLLM's /health on the engine's port; the sidecar's /ready (this instance warm) on its port.
    for probe in ("startupProbe", "livenessProbe"):
        get = engine[probe]["httpGet"]
        assert get["path"] == "/health"
        assert port_number(engine, get["port"]) == int(env["ENGINE_PORT"]) == spec.ENGINE_PORT
    ready = engine["readinessProbe"]["httpGet"]
    assert ready["path"] == "/ready"
    # Resolved as the kubelet does: a named port among the probing container's own ports.
    assert port_number(engine, ready["port"]) == int(wenv["WARMUP_STATUS_PORT"])
    assert warmup["livenessProbe"]["httpGet"]["path"] == "/livez"
    status_src = _routes("warmup/status.py")
    assert '"/ready"' in status_src and '"/livez"' in status_src
    # The startup probe outlasts the profile's own ready timeout.
    timeout = int(read_profile(REPO / "env" / f"{spec.OVERLAYS[overlay].profile}.env").get(
        "VLLM_ENGINE_READY_TIMEOUT_S") or 600)  # fmt: skip
    start = engine["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= timeout

    # The gateway: /health readiness, /livez liveness, both on its listen port.
    gw = container(_pod(overlay, "gemma4-gateway"), "gateway")
    genv = env_of(gw)
    routes = _routes("gateway/routes/__init__.py")
    for probe, path in (("readinessProbe", "/health"), ("livenessProbe", "/livez")):
        get = gw[probe]["httpGet"]
        assert get["path"] == path and f'"{path}"' in routes
        assert port_number(gw, get["port"]) == int(genv["GATEWAY_PORT"])
    assert genv["GATEWAY_HOST"] == "0.0.0.0"
    # It finds the engine pods through the headless Service, and their sidecars' /ready.
    svc = one(objs, "Service", "gemma4-engine")
    assert svc["spec"]["clusterIP"] == "None"
    labels = one(objs, "Deployment", "gemma4-engine")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    ns = svc["metadata"]["namespace"]
    assert genv["GATEWAY_UPSTREAM_DNS"] == (
        f"http://{svc['metadata']['name']}.{ns}.svc.cluster.local:{env['ENGINE_PORT']}"
    )
    assert genv["GATEWAY_WARMUP_STATUS_PORT"] == wenv["WARMUP_STATUS_PORT"]
    svc_ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert svc_ports == {"http": spec.ENGINE_PORT, "warmup": spec.WARMUP_STATUS_PORT}


@pytest.mark.parametrize("overlay", ACCELERATED)
def test_accelerator_requests_equal_the_profile(overlay: str) -> None:
    pod = _pod(overlay, "gemma4-engine")
    res = container(pod, "engine")["resources"]
    engine = EngineSettings.load(REPO / "env" / f"{spec.OVERLAYS[overlay].profile}.env")
    if engine.platform == "tpu":
        assert res["requests"]["google.com/tpu"] == res["limits"]["google.com/tpu"]
        assert int(res["limits"]["google.com/tpu"]) == engine.chips_each
        sel = pod["nodeSelector"]
        assert sel["cloud.google.com/gke-tpu-accelerator"] == "tpu-v6e-slice"
        x, y = (int(n) for n in sel["cloud.google.com/gke-tpu-topology"].split("x"))
        assert x * y == engine.chips_each
    else:
        assert int(res["limits"]["nvidia.com/gpu"]) == engine.tensor_parallel_size
        assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"]


def test_multi_host_slices_are_refused() -> None:
    engine = EngineSettings(platform="tpu", image="vllm/vllm-tpu:v0.32.0", tensor_parallel_size=16)
    from env.settings import EngineEnv, GatewaySettings, StackSettings, WarmupSettings

    with pytest.raises(spec.SpecError, match="LeaderWorkerSet"):
        spec.plan(
            spec.Overlay("x", "x"), engine, EngineEnv(), GatewaySettings(), WarmupSettings(),
            StackSettings(), set(), "0.1.0",
        )  # fmt: skip


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_periods_exceed_the_drains(overlay: str) -> None:
    pod = _pod(overlay, "gemma4-engine")
    engine = container(pod, "engine")
    drain = int(env_of(engine)["ENGINE_SHUTDOWN_TIMEOUT_S"])
    assert drain > 0
    assert f"--shutdown-timeout {drain}" in one(rendered(overlay), "Deployment", "gemma4-engine")[
        "spec"]["template"]["metadata"]["annotations"][generate.VLLM_COMMAND_ANNOTATION]  # fmt: skip
    prestop = engine["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > prestop + drain + spec.LAUNCHER_KILL_SLACK_S
    gpod = _pod(overlay, "gemma4-gateway")
    gw = container(gpod, "gateway")
    gdrain = float(env_of(gw)["GATEWAY_DRAIN_TIMEOUT_S"])
    gprestop = gw["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert gpod["terminationGracePeriodSeconds"] > gprestop + gdrain


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_only_as_files(overlay: str) -> None:
    objs = rendered(overlay)
    assert not [o for o in objs if o["kind"] == "Secret"], "no secret material in the manifests"
    for name, key, var in (
        ("gemma4-engine", "engine", "ENGINE_HF_TOKEN_FILE"),
        ("gemma4-gateway", "gateway", "GATEWAY_API_KEYS_FILE"),
    ):
        pod = _pod(overlay, name)
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            assert "envFrom" not in c
            assert all("secretKeyRef" not in e.get("valueFrom", {}) for e in c.get("env", []))
        secret_vols = {v["name"] for v in pod["volumes"] if "secret" in v}
        c = container(pod, key)
        mounts = [m for m in c.get("volumeMounts", []) if m["name"] in secret_vols]
        assert all(m.get("readOnly") for m in mounts)
        if overlay in ACCELERATED:
            path = env_of(c)[var]
            assert any(path.startswith(m["mountPath"] + "/") for m in mounts), (var, path)
        else:
            assert not secret_vols


def _compose_images() -> set[str]:
    text = "".join(
        (REPO / f).read_text() for f in os.listdir(REPO) if f.startswith("docker-compose")
    )
    return set(re.findall(r"gemma4-serving/[a-z-]+:[a-z0-9.-]+", text))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_the_compose_images_with_pinned_tags(overlay: str) -> None:
    compose = _compose_images()
    names = {i.split(":")[0] for i in compose}
    pods = [_pod(overlay, "gemma4-engine"), _pod(overlay, "gemma4-gateway")]
    images = {c["image"] for p in pods for c in [*p.get("initContainers", []), *p["containers"]]}
    built = generate.image_tags(spec.OVERLAYS[overlay])
    assert {b for b, _ in built} <= compose  # what `make k8s-images` tags is what compose builds
    assert images == {f"{n}:{t}" for _, (n, t) in built}
    for image in images:
        name, _, tag = image.partition(":")
        assert name in names and tag, image
        if overlay in ACCELERATED:
            assert tag != "latest", image
    if overlay == "cpu":
        assert images <= compose  # the local cluster runs exactly what `make docker-build` made


@pytest.mark.parametrize("overlay", [n for n, o in spec.OVERLAYS.items() if o.max_replicas])
def test_autoscaler_waits_out_a_cold_start(overlay: str) -> None:
    objs = rendered(overlay)
    hpa = one(objs, "HorizontalPodAutoscaler", "gemma4-engine")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gemma4-engine",
    }
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == (
        "prometheus.googleapis.com|vllm:num_requests_waiting|gauge"
    )
    ready = int(read_profile(REPO / "env" / f"{spec.OVERLAYS[overlay].profile}.env")[
        "VLLM_ENGINE_READY_TIMEOUT_S"])  # fmt: skip
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= min(3600, ready)
    assert hpa["minReplicas"] == one(objs, "Deployment", "gemma4-engine")["spec"]["replicas"]
    pm = one(objs, "PodMonitoring", "gemma4-engine")["spec"]
    assert pm["endpoints"][0]["port"] == "http" and pm["endpoints"][0]["path"] == "/metrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve_within_the_namespace(overlay: str) -> None:
    """ConfigMaps, claims and service accounts a pod names exist, in the pod's namespace."""
    objs = rendered(overlay)
    have = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs}
    for dep in (o for o in objs if o["kind"] == "Deployment"):
        ns, pod = dep["metadata"]["namespace"], dep["spec"]["template"]["spec"]
        assert ("ServiceAccount", ns, pod["serviceAccountName"]) in have
        for v in pod["volumes"]:
            if "configMap" in v:
                assert ("ConfigMap", ns, v["configMap"]["name"]) in have, v
            if "persistentVolumeClaim" in v:
                assert (
                    "PersistentVolumeClaim",
                    ns,
                    v["persistentVolumeClaim"]["claimName"],
                ) in have
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {"gemma4"}
