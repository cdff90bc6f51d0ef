"""One place per API: what differs between the four generation APIs lives in ``gateway/apis/``.

The guard reads the gateway's source: outside ``gateway/apis/`` no module compares anything to
an API's name (``kind == "chat"``, ``kind in ("chat", ...)``): it asks ``APIS[kind]`` instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

from gateway.apis import APIS
from gateway.apis import completions as completions_api

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
NAMES = set(APIS)


def _api_names(node: ast.AST) -> set[str]:
    """API names among a comparison operand's string constants (a tuple/list/set of them too)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value} & NAMES
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return set().union(*(_api_names(e) for e in node.elts)) if node.elts else set()
    return set()


def branches_on_api_names(source: str) -> list[int]:
    """Lines where a comparison tests something against an API's name."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(
            _api_names(side) for side in (node.left, *node.comparators)
        ):
            lines.append(node.lineno)
    return lines


def test_the_guard_sees_a_branch_on_an_api_name() -> None:
    assert branches_on_api_names('if parsed.kind == "chat":\n    pass\n') == [1]
    assert branches_on_api_names('ok = kind in ("chat", "completions")\n') == [1]
    assert branches_on_api_names('if role == "user":\n    pass\n') == []


def test_no_module_outside_apis_branches_on_an_api_name() -> None:
    found = {}
    for path in GATEWAY.rglob("*.py"):
        if "apis" in path.relative_to(GATEWAY).parts[:1]:
            continue
        lines = branches_on_api_names(path.read_text())
        if lines:
            found[str(path.relative_to(GATEWAY))] = lines
    assert not found, f"ask gateway.apis.APIS[kind] instead: {found}"


def test_each_api_is_its_own_module_and_path() -> None:
    for kind, api in APIS.items():
        assert api.kind == kind and (GATEWAY / "apis" / f"{kind}.py").is_file()
    assert len({api.path for api in APIS.values()}) == len(APIS)


def test_tokenize_bodies_render_the_same_prompt_or_none() -> None:
    chat = APIS["chat"].tokenize_bodies(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0.3,
         "tools": [{"type": "function", "function": {"name": "f"}}], "max_tokens": 9}
    )  # fmt: skip
    assert chat == [
        {"model": "m", "messages": [{"role": "user", "content": "x"}],
         "tools": [{"type": "function", "function": {"name": "f"}}]}
    ]  # fmt: skip
    batch = completions_api.tokenize_bodies({"model": "m", "prompt": ["a", "b"]})
    assert batch == [{"model": "m", "prompt": "a"}, {"model": "m", "prompt": "b"}]
    assert completions_api.tokenize_bodies({"model": "m", "prompt": [1, 2]}) is None
    image = {"type": "image", "source": {"type": "url", "url": "http://x"}}
    assert APIS["messages"].tokenize_bodies(
        {"model": "m", "messages": [{"role": "user", "content": [image]}]}
    ) is None  # fmt: skip
    assert APIS["messages"].tokenize_bodies(
        {"model": "m", "system": "S", "messages": [{"role": "user", "content": "q"}]}
    ) == [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}],
           "model": "m"}]  # fmt: skip
    call = {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c"}
    assert APIS["responses"].tokenize_bodies({"model": "m", "input": [call]}) is None


def test_max_tokens_param_names_what_the_client_set() -> None:
    chat = APIS["chat"]
    assert chat.max_tokens_param({"max_completion_tokens": 5}) == "max_completion_tokens"
    assert chat.max_tokens_param({"max_tokens": 5}) == "max_tokens"
    assert APIS["responses"].max_tokens_param({}) == "max_output_tokens"
