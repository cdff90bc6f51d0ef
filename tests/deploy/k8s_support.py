"""Rendered overlays as parsed objects, shared by the Kubernetes manifest and pod tests."""

from __future__ import annotations

import functools
import re
import shutil
from typing import Any

from deploy.k8s import validate
from deploy.k8s.generate import OVERLAY_DIR
from tests.compose.docker import require


def require_kubectl() -> None:
    """kubectl renders the overlays (`kubectl kustomize`); CI machines have it like this one."""
    require(None if shutil.which("kubectl") else "no kubectl on PATH (renders the overlays)")


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(validate.objects(validate.build(OVERLAY_DIR / overlay)))


def one(objs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name}")


def env_of(c: dict[str, Any], namespace: str = "gemma4") -> dict[str, str]:
    """The container's environment as the kubelet resolves it ($(VAR) expanded, fieldRefs)."""
    out: dict[str, str] = {}
    for item in c.get("env", []):
        if "value" in item:
            value = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: out.get(m[1], m[0]), item["value"]
            )
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            value = namespace
        else:
            raise AssertionError(
                f"{c['name']}: env {item['name']} is neither a value nor a fieldRef"
            )
        out[item["name"]] = value
    return out


def port_number(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for p in c.get("ports", []):
        if p["name"] == port:
            return int(p["containerPort"])
    raise AssertionError(f"{c['name']}: no port named {port}")
