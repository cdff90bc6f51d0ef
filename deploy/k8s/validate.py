"""Render the overlays with ``kubectl kustomize`` and validate every object offline.

Built-in kinds are checked by ``kubernetes-validate`` (strict: unknown fields are errors, as
``kubectl apply``'s server-side field validation would make them) against the OpenAPI schemas of
the Kubernetes versions in ``K8S_VERSIONS``. Custom resources (PodMonitoring, Gateway,
HTTPRoute, InferencePool) are checked by ``check-jsonschema`` against JSON Schemas built from
the CRDs kept verbatim in ``deploy/k8s/crds/`` (each file's header names its source and version),
with unknown fields forbidden for the same reason. No cluster is needed.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deploy.k8s.generate import K8S_DIR, OVERLAY_DIR

# The oldest and newest minor GKE offers in its release channels at the time of writing
# (native sidecars and the preStop sleep action are GA from 1.33).
K8S_VERSIONS = ("1.33.0", "1.35.0")
CRD_DIR = K8S_DIR / "crds"


class KustomizeError(RuntimeError):
    """``kubectl kustomize`` is missing or failed (its message)."""


def kubectl() -> str | None:
    return shutil.which("kubectl")


def build(overlay_dir: Path) -> str:
    """``kubectl kustomize <overlay_dir>``: the manifests as one YAML stream."""
    exe = kubectl()
    if exe is None:
        raise KustomizeError("kubectl not on PATH (it bundles kustomize: `kubectl kustomize`)")
    done = subprocess.run(
        [exe, "kustomize", str(overlay_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise KustomizeError(f"{overlay_dir.name}: {done.stderr.strip()}")
    return done.stdout


def objects(stream: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(stream) if d]


@dataclass(frozen=True)
class CrdSchema:
    api_version: str
    kind: str
    source: str  # the CRD file's header line naming its origin
    schema: dict[str, Any]


def _forbid_unknown(node: Any) -> None:
    """additionalProperties: false on every object schema that lists its properties."""
    if isinstance(node, dict):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for value in node.values():
            _forbid_unknown(value)
    elif isinstance(node, list):
        for value in node:
            _forbid_unknown(value)


def crd_schemas(crd_dir: Path = CRD_DIR) -> dict[tuple[str, str], CrdSchema]:
    """(apiVersion, kind) -> JSON Schema, for every served version of every CRD kept here."""
    out: dict[tuple[str, str], CrdSchema] = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        text = path.read_text()
        source = text.splitlines()[0].removeprefix("# Source: ").strip()
        crd = yaml.safe_load(text)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            _forbid_unknown(schema)
            api_version = f"{group}/{version['name']}"
            schema["properties"]["apiVersion"] = {"const": api_version}
            schema["properties"]["kind"] = {"const": kind}
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
            schema["$schema"] = "http://json-schema.org/draft-07/schema#"
            out[(api_version, kind)] = CrdSchema(api_version, kind, source, schema)
    return out


def _name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def validate_builtin(obj: dict[str, Any], versions: Iterable[str] = K8S_VERSIONS) -> list[str]:
    import kubernetes_validate

    problems: list[str] = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            problems.append(f"{_name(obj)} (k8s {version}): {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            # A custom resource without a CRD in crds/, or a kind this version does not have.
            problems.append(
                f"{_name(obj)}: no schema for {obj.get('apiVersion')} in k8s {version} "
                f"nor a CRD in deploy/k8s/crds/"
            )
    return problems


def validate_custom(
    objs: list[dict[str, Any]], schemas: dict[tuple[str, str], CrdSchema]
) -> list[str]:
    """check-jsonschema, one run per kind, on the objects as files."""
    problems: list[str] = []
    by_kind: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for obj in objs:
        by_kind.setdefault((obj["apiVersion"], obj["kind"]), []).append(obj)
    with tempfile.TemporaryDirectory(prefix="k8s-check-") as tmp:
        for key, group in sorted(by_kind.items()):
            crd = schemas[key]
            schema_file = Path(tmp) / f"{key[1]}.schema.json"
            schema_file.write_text(json.dumps(crd.schema))
            files = []
            for i, obj in enumerate(group):
                f = Path(tmp) / f"{key[1]}-{i}.json"
                f.write_text(json.dumps(obj))
                files.append(str(f))
            done = subprocess.run(
                [sys.executable, "-m", "check_jsonschema", "--schemafile", str(schema_file), *files],
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                names = ", ".join(_name(o) for o in group)
                detail = " ".join((done.stdout + done.stderr).split())
                problems.append(f"{names} vs {crd.source}: {detail}")
    return problems


def check_stream(stream: str, schemas: dict[tuple[str, str], CrdSchema]) -> list[str]:
    """Every problem in one rendered overlay, one line each."""
    problems: list[str] = []
    custom: list[dict[str, Any]] = []
    for obj in objects(stream):
        if (obj.get("apiVersion"), obj.get("kind")) in schemas:
            custom.append(obj)
        else:
            problems.extend(validate_builtin(obj))
    problems.extend(validate_custom(custom, schemas))
    return problems


def check_overlays(names: Iterable[str], root: Path = OVERLAY_DIR) -> dict[str, list[str]]:
    """overlay -> its problems (empty: renders and validates)."""
    schemas = crd_schemas()
    out: dict[str, list[str]] = {}
    for name in names:
        try:
            out[name] = check_stream(build(root / name), schemas)
        except KustomizeError as exc:
            out[name] = [str(exc)]
    return out
