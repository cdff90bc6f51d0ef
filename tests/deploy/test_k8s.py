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
import tempfile
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


def _gateway_get_routes() -> set[str]:
    """The paths the gateway application really answers GET on (its route table, as built)."""
    from env.settings import EngineSettings, GatewaySettings
    from gateway.edge.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        settings = GatewaySettings(
            internal_token_file=Path(tmp) / "token", upstream_url="http://127.0.0.1:9"
        )
        app = create_app(engine=EngineSettings.load("cpu"), settings=settings)
    return {r.path for r in app.routes if "GET" in (getattr(r, "methods", None) or ())}


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
    routes = _gateway_get_routes()
    for probe, path in (("readinessProbe", "/health"), ("livenessProbe", "/livez")):
        get = gw[probe]["httpGet"]
        assert get["path"] == path and path in routes, sorted(routes)
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
        else:  # the cpu profile needs no token nor keys; its only Secret is the state URL
            shared = "shared-state" in spec.OVERLAYS[overlay].components and key == "gateway"
            assert secret_vols == ({"state-url"} if shared else set()), secret_vols


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
    if generate.STATE_COMPONENT in spec.OVERLAYS[overlay].components:
        pods.append(_pod(overlay, "gemma4-state"))
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
    # The warm-up sidecar's /metrics (the compile-cache save alert), a job of its own so that
    # up{job="gemma4-engine"} stays the engine's: on the status port, which serves the route.
    pm = one(objs, "PodMonitoring", "gemma4-warmup")["spec"]
    pod = one(objs, "Deployment", "gemma4-engine")["spec"]["template"]
    assert pm["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    [endpoint] = pm["endpoints"]
    warmup = container(pod["spec"], "warmup")
    assert port_number(warmup, endpoint["port"]) == spec.WARMUP_STATUS_PORT
    assert endpoint["path"] == "/metrics" and '"/metrics"' in _routes("warmup/status.py")


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


# --- Issue 26: what the first real GKE deployment would hit ------------------------------------

# GKE's Filestore CSI StorageClasses, the ones that provision ReadWriteMany (GKE docs, "Access
# Filestore instances with the Filestore CSI driver"). GKE's default class is Persistent Disk
# (standard-rwo), which cannot: an RWX claim without one of these stays Pending.
GKE_RWX_CLASSES = frozenset(
    {"standard-rwx", "premium-rwx", "enterprise-rwx", "enterprise-multishare-rwx", "zonal-rwx"}
)


def rwx_problems(objs: tuple[dict, ...] | list[dict]) -> list[str]:
    """Every ReadWriteMany claim that GKE could not provision, one line each."""
    return [
        f"PersistentVolumeClaim/{o['metadata']['name']}: ReadWriteMany with class "
        f"{o['spec'].get('storageClassName')!r}"
        for o in objs
        if o["kind"] == "PersistentVolumeClaim"
        and "ReadWriteMany" in o["spec"]["accessModes"]
        and o["spec"].get("storageClassName") not in GKE_RWX_CLASSES
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rwx_claims_name_an_rwx_capable_class(overlay: str) -> None:
    objs = rendered(overlay)
    assert rwx_problems(objs) == []
    planted = copy.deepcopy(list(objs))
    for o in planted:
        if o["kind"] == "PersistentVolumeClaim":
            o["spec"]["accessModes"] = ["ReadWriteMany"]
            o["spec"].pop("storageClassName", None)  # the default class: Persistent Disk
    assert rwx_problems(planted), "the check can fail"


def _volume_of_mount(pod: dict, c: dict, path: str) -> tuple[dict, dict]:
    m = next(m for m in c["volumeMounts"] if m["mountPath"] == path)
    return m, next(v for v in pod["volumes"] if v["name"] == m["name"])


def _kubelet_applies_fsgroup(volume: dict, claims: dict[str, dict]) -> bool:
    """Kubernetes applies fsGroup to emptyDir, secret, configMap and ReadWriteOnce volumes, not
    to ReadWriteMany CSI volumes (Filestore CSI driver docs/kubernetes/fsgroup.md, #786)."""
    if "persistentVolumeClaim" in volume:
        claim = claims[volume["persistentVolumeClaim"]["claimName"]]
        return "ReadWriteMany" not in claim["spec"]["accessModes"]
    return "csi" not in volume


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_sidecar_can_write_the_shared_compile_cache(overlay: str, tmp_path: Path) -> None:
    """The warm-up sidecar (non-root) writes the compile cache back. Where the kubelet does not
    apply fsGroup, a root init container that runs before it must hand it the directory; its
    command is run here for real (as root) against a stand-in for the volume."""
    objs = rendered(overlay)
    claims = {o["metadata"]["name"]: o for o in objs if o["kind"] == "PersistentVolumeClaim"}
    pod = _pod(overlay, "gemma4-engine")
    warmup = container(pod, "warmup")
    uid = warmup["securityContext"]["runAsUser"]
    assert uid != 0
    mount, volume = _volume_of_mount(pod, warmup, env_of(warmup)["CACHE_PERSIST_DIR"])
    assert not mount.get("readOnly")
    if _kubelet_applies_fsgroup(volume, claims):
        return
    order = [c["name"] for c in pod["initContainers"]]
    preparers = [
        c
        for c in pod["initContainers"][: order.index("warmup")]
        if c.get("restartPolicy") != "Always"  # a plain init container: done before the sidecar
        and c.get("securityContext", {}).get("runAsUser") == 0
        and any(m["name"] == mount["name"] for m in c.get("volumeMounts", []))
    ]
    assert preparers, f"{overlay}: nothing makes {volume['name']} writable for uid {uid}"
    prep = preparers[0]
    caps = set(prep["securityContext"]["capabilities"].get("add", []))
    assert "CHOWN" in caps and "ALL" in prep["securityContext"]["capabilities"]["drop"]
    if os.geteuid() != 0:
        pytest.skip("running the init container's command needs root (CHOWN)")
    root = next(m for m in prep["volumeMounts"] if m["name"] == mount["name"])["mountPath"]
    script = " ".join(prep["command"][2:]).replace(root, str(tmp_path))
    subprocess.run([*prep["command"][:2], script], check=True, timeout=30)
    made = tmp_path / mount.get("subPath", "")
    assert made.is_dir() and made.stat().st_uid == uid, made
    assert made.stat().st_mode & 0o2070 == 0o2070  # group-writable, setgid: group 10001 stays


@pytest.mark.parametrize("overlay", ACCELERATED)
def test_startup_budget_covers_a_cold_start_and_weights_outlive_the_pod(overlay: str) -> None:
    """A new pod downloads the weights and compiles every shape before /health answers: the
    startup probe must outlast that (PR #3408: ~30 min cold compile, 2400 s upstream), and the
    weights must sit where a replacement pod finds them (not an emptyDir, which dies with it)."""
    from entrypoint import capacity

    pod = _pod(overlay, "gemma4-engine")
    engine_c = container(pod, "engine")
    profile = REPO / "env" / f"{spec.OVERLAYS[overlay].profile}.env"
    engine = EngineSettings.load(profile)
    start = engine_c["startupProbe"]
    budget = start["periodSeconds"] * start["failureThreshold"]
    ready = int(env_of(engine_c)["VLLM_ENGINE_READY_TIMEOUT_S"])
    cold = capacity.cold_start_s(engine)
    if cold is not None:
        assert ready >= cold, (ready, cold)
    assert budget >= ready
    _, hf = _volume_of_mount(pod, engine_c, env_of(engine_c)["CACHE_HF_DIR"])
    assert not {"emptyDir", "ephemeral"} & hf.keys(), hf
    assert {"persistentVolumeClaim", "csi"} & hf.keys(), hf


# NetworkPolicy semantics (kubernetes.io/docs/concepts/services-networking/network-policies):
# a pod selected by a policy with Ingress admits a connection iff some rule admits it; a rule
# without `from` admits every source, without `ports` every port; peers are ORed; podSelector
# alone = pods of the policy's namespace, namespaceSelector alone = every pod of the matching
# namespaces, both = matching pods in matching namespaces; ipBlock = addresses in cidr minus
# except. Named ports resolve against the destination pod's container ports.


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_admits(peer: dict, src: dict, policy_ns: str) -> bool:
    import ipaddress

    if "ipBlock" in peer:
        ip = ipaddress.ip_address(src["ip"])
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if src.get("namespace") is None:  # an address outside the cluster's pods
        return False
    if "namespaceSelector" in peer:
        ns_ok = _selects(peer["namespaceSelector"], src["namespace_labels"])
    else:
        ns_ok = src["namespace"] == policy_ns
    pod_ok = _selects(peer["podSelector"], src["labels"]) if "podSelector" in peer else True
    return ns_ok and pod_ok


def admitted(
    objs: tuple[dict, ...], dst_labels: dict, dst_ports: dict, src: dict, port: int
) -> bool:
    policies = [
        o
        for o in objs
        if o["kind"] == "NetworkPolicy"
        and "Ingress" in o["spec"]["policyTypes"]
        and _selects(o["spec"]["podSelector"], dst_labels)
    ]
    if not policies:
        return True
    for pol in policies:
        for rule in pol["spec"].get("ingress", []):
            ports = [dst_ports.get(p["port"], p["port"]) for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if not peers or any(_peer_admits(p, src, pol["metadata"]["namespace"]) for p in peers):
                return True
    return False


def _src(ip: str, ns: str | None = "gemma4", **labels: str) -> dict:
    return {"ip": ip, "namespace": ns, "namespace_labels": {"kubernetes.io/metadata.name": ns},
            "labels": labels}  # fmt: skip


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_engine_network_policy_admits_only_the_listed_peers(overlay: str) -> None:
    objs = rendered(overlay)
    dep = one(objs, "Deployment", "gemma4-engine")["spec"]["template"]
    labels = dep["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for c in [*dep["spec"]["initContainers"],
             *dep["spec"]["containers"]] for p in c.get("ports", [])}  # fmt: skip
    http, warm = ports["http"], ports["warmup"]
    gw = _src(
        "10.8.0.7", **{"app.kubernetes.io/name": "gemma4", "app.kubernetes.io/component": "gateway"}
    )
    gmp = _src("10.8.1.2", "gmp-system", app="collector")
    epp = _src("10.8.0.9", app="gemma4-epp")
    proxy = _src("10.129.0.17", None)  # an Envoy of the region's proxy-only subnet
    pool = "inference-pool" in spec.OVERLAYS[overlay].components
    # the collectors scrape the engine's /metrics and the sidecar's (status port)
    allowed = {(id(gw), http), (id(gw), warm), (id(gmp), http), (id(gmp), warm)}
    if pool:
        allowed |= {(id(epp), http), (id(proxy), http)}
    others = [
        _src("10.0.0.5", None),  # any VM of the VPC
        _src("10.8.0.11", app="debug"),  # another pod of the namespace
        _src("10.8.2.3", "default", app="gemma4-epp"),  # an "EPP" of another namespace
        _src("10.8.0.12", **{"app.kubernetes.io/name": "gemma4", "app.kubernetes.io/component": "engine"}),
    ]  # fmt: skip
    for src in [gw, gmp, epp, proxy, *others]:
        for port in (http, warm):
            want = (id(src), port) in allowed
            assert admitted(objs, labels, ports, src, port) == want, (src, port)
    # The check can fail: the patch as it was (an ingress rule with no `from`) admits anyone.
    if pool:
        opened = copy.deepcopy(list(objs))
        for o in opened:
            if o["kind"] == "NetworkPolicy":
                o["spec"]["ingress"].append({"ports": [{"port": "http"}]})
        assert admitted(tuple(opened), labels, ports, others[0], http)


SHARED = [n for n, o in spec.OVERLAYS.items() if "shared-state" in o.components]


@pytest.mark.parametrize("overlay", SHARED)
def test_gateways_share_state_and_only_gateways_reach_redis(overlay: str) -> None:
    """The gateway pods read the state URL from the Secret as a file; the in-cluster Redis
    takes that same Secret, and its NetworkPolicy admits the gateway pods and nothing else."""
    objs = rendered(overlay)
    gw = container(_pod(overlay, "gemma4-gateway"), "gateway")
    url = env_of(gw)["GATEWAY_STATE_URL"]
    gw_vols = {v["name"]: v for v in _pod(overlay, "gemma4-gateway")["volumes"]}
    mount = next(m for m in gw["volumeMounts"] if url.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] and gw_vols[mount["name"]]["secret"]["secretName"] == "gemma4-state"
    if generate.STATE_COMPONENT not in spec.OVERLAYS[overlay].components:
        return  # a managed Redis: the Secret's URL names it
    dep = one(objs, "Deployment", "gemma4-state")["spec"]["template"]
    labels = dep["metadata"]["labels"]
    state = container(dep["spec"], "state")
    assert {v["secret"]["secretName"] for v in dep["spec"]["volumes"] if "secret" in v} == {
        "gemma4-state"
    }
    ports = {p["name"]: p["containerPort"] for p in state["ports"]}
    svc = one(objs, "Service", "gemma4-state")["spec"]
    assert svc["selector"] == labels and svc["ports"][0]["targetPort"] == "redis"
    redis_port = ports["redis"]
    gateway = _src(
        "10.8.0.7", **{"app.kubernetes.io/name": "gemma4", "app.kubernetes.io/component": "gateway"}
    )
    others = [
        _src("10.0.0.5", None),  # any VM of the VPC
        _src("10.8.0.11", app="debug"),  # another pod of the namespace
        _src("10.8.0.12", **{"app.kubernetes.io/name": "gemma4", "app.kubernetes.io/component": "engine"}),
        _src("10.8.1.2", "gmp-system", app="collector"),
        _src("10.8.2.3", "default", **{"app.kubernetes.io/name": "gemma4",
             "app.kubernetes.io/component": "gateway"}),  # a "gateway" of another namespace
    ]  # fmt: skip
    assert admitted(objs, labels, ports, gateway, redis_port)
    for src in others:
        assert not admitted(objs, labels, ports, src, redis_port), src
    # The check can fail: without the policy every source is admitted.
    open_objs = tuple(o for o in objs if o["metadata"]["name"] != "gemma4-state"
                      or o["kind"] != "NetworkPolicy")  # fmt: skip
    assert admitted(open_objs, labels, ports, others[0], redis_port)


# Pod Security Standards, baseline (kubernetes.io/docs/concepts/security/pod-security-standards):
# capabilities beyond this set are forbidden, as are privileged, host namespaces and hostPath.
PSS_BASELINE_CAPS = frozenset({"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL",
    "MKNOD", "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})  # fmt: skip


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_engine_pod_is_hardened(overlay: str) -> None:
    pod = _pod(overlay, "gemma4-engine")
    assert not {"hostNetwork", "hostPID", "hostIPC"} & pod.keys()
    assert not [v for v in pod["volumes"] if "hostPath" in v]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in [*pod["initContainers"], *pod["containers"]]:
        sec = c.get("securityContext", {})
        assert sec.get("privileged") is not True, c["name"]
        assert sec.get("allowPrivilegeEscalation") is False, c["name"]
        assert "ALL" in sec.get("capabilities", {}).get("drop", []), c["name"]
        assert set(sec["capabilities"].get("add", [])) <= PSS_BASELINE_CAPS, c["name"]
        assert not [p for p in c.get("ports", []) if "hostPort" in p]
    engine_sec = container(pod, "engine")["securityContext"]
    if spec.OVERLAYS[overlay].profile == "cpu":
        assert engine_sec["runAsNonRoot"] is True and engine_sec["runAsUser"] != 0
    assert container(pod, "warmup")["securityContext"]["runAsNonRoot"] is True


def test_gcs_fuse_component_replaces_filestore(tmp_path: Path) -> None:
    """The GCS FUSE alternative, rendered over a TPU overlay and validated like the overlays:
    no claim left, the shared volume is the gcsfuse CSI volume (annotation for the sidecar
    injector), no chown init container (FUSE cannot chown; ownership by mount options)."""
    base = generate.OVERLAY_DIR / "gke-v6e4-gemma4-26b"
    comp = generate.K8S_DIR / "components" / "gcs-fuse-cache"
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(base, tmp_path)],
        "components": [os.path.relpath(comp, tmp_path)],
    }))  # fmt: skip
    stream = validate.build(tmp_path)
    assert validate.check_stream(stream, validate.crd_schemas()) == []
    objs = tuple(validate.objects(stream))
    assert not [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    tmpl = one(objs, "Deployment", "gemma4-engine")["spec"]["template"]
    assert tmpl["metadata"]["annotations"]["gke-gcsfuse/volumes"] == "true"
    pod = tmpl["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["warmup"]
    vol = next(v for v in pod["volumes"] if v["name"] == "compile-persist")
    assert vol["csi"]["driver"] == "gcsfuse.csi.storage.gke.io"
    assert "uid=10001" in vol["csi"]["volumeAttributes"]["mountOptions"]
    assert "persistentVolumeClaim" not in vol
