"""The `cpu` overlay's pods, run for real as Docker containers, as a kubelet would run them.

From the rendered manifests (never a hand copy): each container's image, command, environment
(``$(VAR)`` and fieldRefs resolved as the kubelet does), volumes (configMap -> a read-only bind
of its files, emptyDir/PVC -> a fresh volume) and security context. The containers share one
network namespace with no interface but loopback (``--network none`` on a holder container,
``--network container:<holder>`` for the others), so the overlay's own ports are used unchanged
and nothing binds outside the namespace. The only substitution is what a cluster provides: the
headless Service's DNS name (no cluster DNS here) resolves to the engine pod's address, which
is loopback in the shared namespace, as does the state Service's name (``--add-host`` on the
holder, whose hosts file the pod's containers share). The Secret the operator creates
(docs/kubernetes.md: the state URL with a generated password) becomes a directory of its files,
owned as the kubelet projects them (root, the pod's fsGroup, the volume's defaultMode). The
probes the manifests declare are polled with ``docker exec`` from inside that namespace. The images are the ones `make docker-build` builds
(CI builds them before the tests; the compose smoke test uses the same ones).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.compose.docker import engine_problem, require
from tests.deploy.k8s_support import container, env_of, one, port_number, rendered, require_kubectl
from tests.support.process import REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]

READY_BOUND_S = 600  # engine start + warm-up on a loaded 2-core machine
BUILD_BOUND_S = 900  # a cold `make docker-build` when CI did not prebuild


def _docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def _ensure_images(images: set[str]) -> None:
    if _docker("image", "inspect", *images, check=False).returncode == 0:
        return
    done = subprocess.run(
        ["make", "--no-print-directory", "docker-build", "PROFILE=cpu"],
        capture_output=True, text=True, timeout=BUILD_BOUND_S, check=False, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def _size(quantity: str | None) -> str:
    m = re.fullmatch(r"([0-9]+)(Ki|Mi|Gi)?", quantity or "1Gi")
    assert m, quantity
    return m[1] + {"Ki": "k", "Mi": "m", "Gi": "g", None: ""}[m[2]]


class Pods:
    """The containers and volumes of one test run, removed by their ids at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tag = f"k8s-cpu-{uuid.uuid4().hex[:8]}"
        self.tmp = tmp
        self.containers: list[str] = []
        self.volumes: list[str] = []
        self.holder = ""
        # What the operator creates before `kubectl apply` (docs/kubernetes.md).
        self.secrets = {
            "gemma4-state": {"url": f"redis://:{uuid.uuid4().hex}@gemma4-state:6380/0\n"}
        }

    def volume(
        self, pod: str, spec: dict[str, Any], configmaps: dict[str, dict[str, str]],
        fs_group: int | None = None,
    ) -> str:  # fmt: skip
        """A docker mount source for a pod volume (a path for configMaps and Secrets, else a
        volume name)."""
        if "secret" in spec:  # files root:fsGroup, defaultMode (the kubelet's projection)
            d = self.tmp / f"{pod}-{spec['name']}"
            d.mkdir()
            d.chmod(0o755)
            for key, text in self.secrets[spec["secret"]["secretName"]].items():
                (d / key).write_text(text)
                mode = spec["secret"].get("defaultMode", 0o644)
                try:
                    os.chown(d / key, 0, fs_group if fs_group is not None else 0)
                except PermissionError:  # not root (CI is): readable to the pod's user anyway
                    mode |= 0o004
                (d / key).chmod(mode)
            return str(d)
        if "configMap" in spec:
            d = self.tmp / f"{pod}-{spec['name']}"
            d.mkdir()
            d.chmod(0o755)  # the kubelet's projection is readable by the pod's users
            for key, text in configmaps[spec["configMap"]["name"]].items():
                (d / key).write_text(text)
                (d / key).chmod(0o644)
            return str(d)
        name = f"{self.tag}-{pod}-{spec['name']}"
        opts = []
        if "emptyDir" in spec:  # node-local scratch: tmpfs, owned by the pods' uid like fsGroup
            size = _size(spec["emptyDir"].get("sizeLimit"))
            opts = ["--driver", "local", "--opt", "type=tmpfs", "--opt", "device=tmpfs", "--opt",
                    f"o=size={size},uid=10001,gid=10001,mode=0775"]  # fmt: skip
        _docker("volume", "create", *opts, name)
        self.volumes.append(name)
        return name

    def start(
        self, c: dict[str, Any], pod: dict[str, Any], mounts: dict[str, str], env: dict[str, str]
    ) -> str:
        argv = [
            "run",
            "-d",
            "--name",
            f"{self.tag}-{c['name']}",
            "--network",
            f"container:{self.holder}",
        ]
        for m in c.get("volumeMounts", []):
            source = mounts[m["name"]]
            ro = ",readonly" if m.get("readOnly") else ""
            kind = "bind" if source.startswith("/") else "volume"
            argv += ["--mount", f"type={kind},source={source},target={m['mountPath']}{ro}"]
        sec = c.get("securityContext", {})
        if "runAsUser" in sec:
            argv += ["--user", f"{sec['runAsUser']}:{sec.get('runAsGroup', sec['runAsUser'])}"]
        if sec.get("readOnlyRootFilesystem"):
            argv.append("--read-only")
        if sec.get("allowPrivilegeEscalation") is False:
            argv += ["--security-opt", "no-new-privileges:true"]
        if "ALL" in sec.get("capabilities", {}).get("drop", []):
            argv += ["--cap-drop", "ALL"]
        if "fsGroup" in pod.get("securityContext", {}):
            argv += ["--group-add", str(pod["securityContext"]["fsGroup"])]
        for key, value in env.items():
            argv += ["-e", f"{key}={value}"]
        argv += ["--entrypoint", c["command"][0], c["image"], *c["command"][1:], *c.get("args", [])]
        cid = _docker(*argv).stdout.strip()
        self.containers.append(cid)
        return cid

    def probe(self, probe: dict[str, Any], c: dict[str, Any]) -> tuple[int, str]:
        """The kubelet's httpGet, from inside the pod's network namespace: (status, body)."""
        get = probe["httpGet"]
        url = f"http://127.0.0.1:{port_number(c, get['port'])}{get['path']}"
        code = (
            "import urllib.request as u, urllib.error as e, sys\n"
            "try:\n r = u.urlopen(sys.argv[1], timeout=5); print(r.status); print(r.read().decode())\n"
            "except e.HTTPError as x: print(x.code); print(x.read().decode())\n"
            "except Exception as x: print(0); print(repr(x))\n"
        )
        done = _docker("exec", self.holder, "python", "-c", code, url, timeout=30, check=False)
        status, _, body = done.stdout.partition("\n")
        return (int(status) if status.strip().isdigit() else 0), body

    def logs(self) -> str:
        out = []
        for cid in self.containers:
            done = _docker("logs", "--tail", "40", cid, check=False)
            out.append(f"--- {cid[:12]}\n{(done.stdout + done.stderr)[-3000:]}")
        return "\n".join(out)

    def remove(self) -> None:
        if self.containers:
            _docker("rm", "-f", *self.containers, check=False)
        if self.volumes:
            _docker("volume", "rm", "-f", *self.volumes, check=False)


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[Pods]:
    require(engine_problem())
    require_kubectl()
    p = Pods(tmp_path)
    try:
        yield p
    finally:
        p.remove()


def _resolved_env(c: dict[str, Any], engine_service: str) -> dict[str, str]:
    env = env_of(c)
    for key, value in env.items():  # the headless Service's name -> the engine pod (loopback)
        env[key] = re.sub(rf"{engine_service}\.[a-z0-9-]+\.svc\.cluster\.local", "127.0.0.1", value)
    return env


@pytest.mark.timeout(READY_BOUND_S + BUILD_BOUND_S + 300)
def test_cpu_overlay_pods_ready_only_after_warmup(pods: Pods) -> None:
    objs = rendered("cpu")
    engine_pod = one(objs, "Deployment", "gemma4-engine")["spec"]["template"]["spec"]
    gateway_pod = one(objs, "Deployment", "gemma4-gateway")["spec"]["template"]["spec"]
    state_pod = one(objs, "Deployment", "gemma4-state")["spec"]["template"]["spec"]
    configmaps = {o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "ConfigMap"}
    svc = one(objs, "Service", "gemma4-engine")["metadata"]["name"]
    state_svc = one(objs, "Service", "gemma4-state")["metadata"]["name"]
    images = {
        c["image"]
        for p in (engine_pod, gateway_pod, state_pod)
        for c in [*p.get("initContainers", []), *p["containers"]]
    }
    _ensure_images(images)

    warmup, engine = container(engine_pod, "warmup"), container(engine_pod, "engine")
    gateway, state = container(gateway_pod, "gateway"), container(state_pod, "state")
    # The pods' network namespace (what the pause container is to a pod); the state Service's
    # name resolves to the state pod's address, loopback here.
    pods.holder = _docker(
        "run", "-d", "--name", f"{pods.tag}-netns", "--network", "none", "--user", "10001:10001",
        "--add-host", f"{state_svc}:127.0.0.1",
        "--entrypoint", "python", warmup["image"], "-c", "import time; time.sleep(3600)",
    ).stdout.strip()  # fmt: skip
    pods.containers.append(pods.holder)

    def mounts(name: str, pod: dict[str, Any]) -> dict[str, str]:
        group = pod.get("securityContext", {}).get("fsGroup")
        return {v["name"]: pods.volume(name, v, configmaps, group) for v in pod["volumes"]}

    emounts, gmounts = mounts("engine", engine_pod), mounts("gateway", gateway_pod)
    pods.start(state, state_pod, mounts("state", state_pod), env_of(state))
    # Native sidecar first (the kubelet starts it before the main containers), then the engine.
    warmup_id = pods.start(warmup, engine_pod, emounts, _resolved_env(warmup, svc))
    pods.start(engine, engine_pod, emounts, _resolved_env(engine, svc))
    pods.start(gateway, gateway_pod, gmounts, _resolved_env(gateway, svc))

    # (engine /health, engine readiness, its state, its engine instance, wall clock after it)
    seen: list[tuple[int, int, str, str | None, float]] = []
    deadline = time.monotonic() + READY_BOUND_S
    while True:
        health, _ = pods.probe(engine["startupProbe"], engine)
        ready, body = pods.probe(engine["readinessProbe"], engine)
        doc = json.loads(body) if body.startswith("{") else {"state": body[:80]}
        seen.append((health, ready, doc.get("state", "?"), doc.get("engine_instance"), time.time()))
        if ready == 200:
            break
        assert time.monotonic() < deadline, f"engine pod never ready: {seen[-5:]}\n{pods.logs()}"
        time.sleep(1)

    # Not ready before the warm-up passed for this engine instance, ready once it did: the
    # sidecar's report (written before it turns ready) finished before the first 200 answered
    # (containers and this test read one kernel clock), for the instance the 200 names.
    assert seen[0][1] != 200, seen[:3]
    assert seen[-1][0] == 200 and seen[-1][2] == "passed", seen[-1]
    assert any(s[2] in ("engine_down", "waiting", "running") or s[1] == 0 for s in seen[:-1])
    report_path = _resolved_env(warmup, svc)["WARMUP_REPORT_PATH"]
    report = json.loads(_docker("exec", warmup_id, "cat", report_path).stdout)
    assert report["outcome"] == "passed"
    assert report["finished_at"] <= seen[-1][4], (report["finished_at"], seen[-2:])
    assert seen[-1][3] is not None and seen[-1][3] == report["engine"]["instance"], seen[-1]
    live, _ = pods.probe(warmup["livenessProbe"], warmup)
    assert live == 200

    # The gateway finds the warm engine through the (substituted) DNS upstream and pulls its
    # sidecar's /ready: its readiness turns green, its liveness is green.
    deadline = time.monotonic() + 120
    while (status := pods.probe(gateway["readinessProbe"], gateway))[0] != 200:
        assert time.monotonic() < deadline, f"gateway never ready: {status}\n{pods.logs()}"
        time.sleep(1)
    assert pods.probe(gateway["livenessProbe"], gateway)[0] == 200
    # ... with its limits in the state pod's Redis (the Secret's URL, the Service's name), not
    # in its local fallback.
    shared = json.loads(status[1])["shared_state"]  # its readiness probe is GET /health
    assert (shared["mode"], shared["gateways"]) == ("shared", 1), (status, pods.logs())
