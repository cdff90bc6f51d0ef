"""The light gateway/warm-up image can import everything its code imports.

That image (deploy/Dockerfile.app) installs only the base dependencies and the ``gateway`` and
``warmup`` extras of pyproject.toml, without vLLM. A development venv has vLLM and everything it
drags in (FastAPI, Starlette, ...), so a module the gateway imports but pyproject does not name
works in every local run and fails only in the image: the gateway container exits at import and
the compose tests see a warm-up that cannot reach it. This test reads every import of the code
the image copies and checks each third-party one against the distributions those extras bring,
their own requirements included (markers evaluated for this interpreter).
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
IMAGE_DIRS = ["protocol", "env", "entrypoint", "gateway", "warmup"]  # what Dockerfile.app copies
# The image runs the gateway and the warm-up (every import counts, lazy ones too) and, of the
# engine launcher, only ``cache save``: there only module-level imports count (tinymodel imports
# torch inside the functions that build the model, which run in the engine image alone).
MODULE_LEVEL_ONLY = {"entrypoint"}
IMAGE_EXTRAS = ["gateway", "warmup"]


def _imports(path: Path, module_level: bool = False) -> set[str]:
    """Top-level module names of the absolute imports in the file: every one, or only those
    that run at import time (``module_level``: not inside a function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = list(ast.walk(tree))
    if module_level:
        nested = {
            id(n)
            for f in nodes
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            for n in ast.walk(f)
        }
        nodes = [n for n in nodes if id(n) not in nested]
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _optional(path: Path, module: str) -> bool:
    """An import guarded by ``except ImportError`` / ``ModuleNotFoundError`` is optional."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        guarded = {
            (a.name if isinstance(n, ast.Import) else (n.module or "")).split(".")[0]
            for n in ast.walk(ast.Module(body=node.body, type_ignores=[]))
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in (n.names if isinstance(n, ast.Import) else [n])  # type: ignore[attr-defined]
        }
        catches = {getattr(h.type, "id", None) for h in node.handlers if h.type is not None} | {
            getattr(e, "id", None)
            for h in node.handlers
            if isinstance(h.type, ast.Tuple)
            for e in h.type.elts
        }
        if module in guarded and catches & {"ImportError", "ModuleNotFoundError"}:
            return True
    return False


def _dist_closure(requirements: list[str]) -> set[str]:
    """Normalized names of the distributions ``requirements`` install, transitively."""
    env = {"extra": ""}
    todo = [Requirement(r) for r in requirements]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = _norm(req.name)
        if name in seen:
            continue
        seen.add(name)
        # named but not installed here: it provides nothing this test can see
        with contextlib.suppress(md.PackageNotFoundError):
            todo += [Requirement(r) for r in md.requires(req.name) or []]
    return seen


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _image_requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in IMAGE_EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return reqs


def test_every_third_party_import_of_the_app_image_is_installed_by_its_extras() -> None:
    provided = _dist_closure(_image_requirements())
    by_module = md.packages_distributions()
    own = set(IMAGE_DIRS)
    missing: list[str] = []
    for folder in IMAGE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            for module in sorted(_imports(path, module_level=folder in MODULE_LEVEL_ONLY)):
                if module in sys.stdlib_module_names or module in own or module == "__future__":
                    continue
                dists = {_norm(d) for d in by_module.get(module, [])}
                if dists & provided or _optional(path, module):
                    continue
                rel = path.relative_to(REPO)
                missing.append(f"{rel}: {module} (from {sorted(dists) or 'nothing installed'})")
    assert missing == [], "imported but not installed by the image's extras:\n" + "\n".join(missing)


def test_the_check_sees_a_module_the_extras_do_not_bring(tmp_path: Path) -> None:
    """The negative control: vLLM is installed here, but no image extra brings it."""
    provided = _dist_closure(_image_requirements())
    assert "vllm" not in provided and "fastapi" in provided and "starlette" in provided
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import vllm\ntry:\n    import uvloop\nexcept ImportError:\n    pass\n"
        "def build():\n    import torch\n"
    )
    assert _imports(probe) == {"vllm", "uvloop", "torch"}
    assert _imports(probe, module_level=True) == {"vllm", "uvloop"}
    assert _optional(probe, "uvloop") and not _optional(probe, "vllm")


def test_image_dirs_are_what_the_dockerfile_copies_and_the_build_context_sends() -> None:
    """``IMAGE_DIRS`` is Dockerfile.app's ``COPY <dir>/`` list, and .dockerignore (which
    ignores everything else) lets each one into the build context: a directory missing there
    fails the image build with '"/<dir>" not found' (protocol/ did, in a CI run)."""
    dockerfile = (REPO / "deploy" / "Dockerfile.app").read_text()
    copied = re.findall(r"^COPY (\w+)/ \1/$", dockerfile, re.MULTILINE)
    assert sorted(copied) == sorted(IMAGE_DIRS)
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert set(IMAGE_DIRS) <= allowed, set(IMAGE_DIRS) - allowed
