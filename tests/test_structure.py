"""The tree's shape, checked: no import cycles, product code never imports ``tests``, request
path modules stay small. Parsed with ``ast`` (nothing is imported), so it runs in milliseconds.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.process import REPO

PRODUCT = ("protocol", "entrypoint", "env", "gateway", "warmup", "bench", "deploy", "ops")
# Roles that run beside the gateway and must not import it (bench measures the gateway, so it may).
BESIDE_THE_GATEWAY = ("entrypoint", "env", "warmup", "deploy", "ops")
PACKAGES = (*PRODUCT, "tests")
# Where a completion request enters: the request path is every gateway module these import,
# at any depth (derived from the imports, so a module added to the path is covered by itself).
REQUEST_ENTRY = ("gateway.edge.app", "gateway.routes.openai")
MAX_LINES = 400


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (root / pkg).rglob("*.py"):
            if ".venv" not in path.parts:
                out[module_name(path, root)] = path
    return out


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules that ``path`` imports (any depth: in functions, under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:  # ``from pkg import name``: the module is pkg
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph(root: Path) -> dict[str, set[str]]:
    mods = project_modules(root)
    known = set(mods)
    return {name: imports_of(path, name, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def package_of(module: str) -> str:
    return module.split(".")[0]


def test_no_import_cycles() -> None:
    assert cycles(graph(REPO)) == []


def test_product_code_never_imports_tests() -> None:
    bad = sorted(
        f"{m} -> {t}"
        for m, targets in graph(REPO).items()
        if package_of(m) in PRODUCT
        for t in targets
        if package_of(t) == "tests"
    )
    assert bad == []


def crossings(g: dict[str, set[str]], sources: tuple[str, ...], targets: set[str]) -> list[str]:
    """Imports from a module of ``sources`` packages into one of ``targets`` packages."""
    return sorted(
        f"{m} -> {t}"
        for m, found in g.items()
        if package_of(m) in sources
        for t in found
        if package_of(t) in targets
    )


def test_the_roles_beside_the_gateway_import_the_ground_floor_not_the_gateway() -> None:
    """What the warm-up, ops and deploy share with the gateway (Prometheus text, the engine's
    identity, the warm-up handshake, engine error messages) is in ``protocol``; importing it
    from inside ``gateway`` would pull the gateway's web stack into each of them."""
    assert crossings(graph(REPO), BESIDE_THE_GATEWAY, {"gateway"}) == []


def test_the_ground_floor_imports_no_role() -> None:
    assert crossings(graph(REPO), ("protocol",), set(PACKAGES) - {"protocol"}) == []


def request_path(g: dict[str, set[str]]) -> set[str]:
    """The gateway modules reachable by import from ``REQUEST_ENTRY``."""
    seen: set[str] = set()
    todo = list(REQUEST_ENTRY)
    while todo:
        m = todo.pop()
        if m in seen or package_of(m) != "gateway":
            continue
        seen.add(m)
        todo.extend(g.get(m, ()))
    return seen


def test_request_path_modules_stay_small() -> None:
    path = request_path(graph(REPO))
    # The modules gateway/README.md names on the way of one request are all on it.
    named = {"service", "request.validation", "request.schema", "admission.core",
             "request.tokens", "upstream.relay", "upstream.wire", "edge.asgi", "replicas.health",
             "errors", "edge.web"}  # fmt: skip
    assert {f"gateway.{m}" for m in named} <= path
    mods = project_modules(REPO)
    sizes = {m: len(mods[m].read_text().splitlines()) for m in path}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """A planted cycle and a planted tests import are found (the checks are not vacuous)."""
    (tmp_path / "gateway").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "gateway" / "__init__.py").write_text("")
    (tmp_path / "tests" / "__init__.py").write_text("")
    (tmp_path / "tests" / "helper.py").write_text("X = 1\n")
    (tmp_path / "gateway" / "a.py").write_text("from gateway import b\n")
    (tmp_path / "gateway" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gateway.a import A\n"
    )
    (tmp_path / "gateway" / "c.py").write_text("def f():\n    from tests.helper import X\n")
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
    (tmp_path / "warmup" / "d.py").write_text("from gateway.a import A\n")
    (tmp_path / "protocol" / "e.py").write_text("import gateway.b\n")
    g = graph(tmp_path)
    assert cycles(g) == [["gateway.a", "gateway.b"]]
    assert g["gateway.c"] == {"tests.helper"}
    assert crossings(g, BESIDE_THE_GATEWAY, {"gateway"}) == ["warmup.d -> gateway.a"]
    assert crossings(g, ("protocol",), set(PACKAGES) - {"protocol"}) == ["protocol.e -> gateway.b"]


# gateway/'s top floor: the service and what every part shares; everything else lives in a
# folder named for its concern (gateway/README.md, "Layout").
GATEWAY_TOP = {"__init__", "__main__", "call", "components", "errors", "metrics", "service"}


def test_the_gateway_keeps_its_modules_in_concern_folders() -> None:
    top = {p.stem for p in (REPO / "gateway").glob("*.py")}
    assert top == GATEWAY_TOP, "a new gateway module goes in a concern folder (README: Layout)"
    folders = {p.name for p in (REPO / "gateway").iterdir() if (p / "__init__.py").is_file()}
    readme = (REPO / "gateway" / "README.md").read_text()
    layout = readme[readme.index("## Layout") : readme.index("## The path of one request")]
    assert {f for f in folders if f"\n{f}/" not in layout} == set()  # every folder is mapped
