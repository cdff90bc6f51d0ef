"""Pydantic's validation errors as the gateway's one 400: the parameter path and why.

``Rule`` is how a schema's cross-field validator names the parameter it is about (pydantic's
own location would be the whole model); ``error_from`` picks the most telling error of a
``ValidationError`` (a broken rule, else the deepest location, a range before a type mismatch
reported by another union arm) and words it for a person.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import ValidationError

from gateway.errors import OpenAIError


class Rule(ValueError):
    """A cross-field rule broken; carries the parameter to name (pydantic's loc is the model)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


_TYPE_WORDS = {
    "bool_type": "a boolean",
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


_RANGE_WORDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def error_from(exc: ValidationError) -> OpenAIError:
    """Pydantic's most specific error as the gateway's 400: the parameter path and why."""
    errors = exc.errors(include_url=False)
    for e in errors:  # a broken cross-field rule names its own parameter
        rule = (e.get("ctx") or {}).get("error")
        if isinstance(rule, Rule):
            return OpenAIError(400, f"'{rule.param}' {rule.message}", code="invalid_value",
                               param=rule.param)  # fmt: skip
    # Union arms each report an error; the deepest location is the most telling one.
    depth = max(len(_path(e["loc"])) for e in errors)
    deepest = [e for e in errors if len(_path(e["loc"])) == depth]
    # ...and a broken range beats a type mismatch reported by another arm.
    deepest.sort(key=lambda e: e["type"] in _TYPE_WORDS)
    err = deepest[0]
    param = _param(err["loc"])
    kind = err["type"]
    value = err.get("input")
    if kind == "missing":
        return OpenAIError(400, f"'{param}' is required", code="missing_field", param=param)
    if kind in _TYPE_WORDS:
        same = [e for e in deepest if _param(e["loc"]) == param]
        words = dict.fromkeys(_TYPE_WORDS.get(e["type"]) or "" for e in same)
        expected = " or ".join(w for w in words if w)
        if expected and all(e["type"] in _TYPE_WORDS for e in same):
            return OpenAIError(
                400, f"'{param}' must be {expected}, got {_json_type(value)}: {_short(value)}",
                code="invalid_type", param=param,
            )  # fmt: skip
    ctx = err.get("ctx") or {}
    msg = str(err["msg"])
    if kind in _RANGE_WORDS:
        op, key = _RANGE_WORDS[kind]
        msg = f"must be {op} {ctx.get(key)}"
    elif kind == "literal_error":
        msg = f"must be {ctx.get('expected')}"
    elif kind in ("string_too_short", "too_short"):
        msg = "must not be empty"
    elif isinstance(ctx.get("error"), ValueError):
        msg = str(ctx["error"])
    if isinstance(value, float) and not math.isfinite(value):
        msg = "must be a finite number"
    return OpenAIError(400, f"'{param}' {msg} (got {_short(value)})", code="invalid_value",
                       param=param)  # fmt: skip


def _path(loc: tuple[int | str, ...]) -> list[int | str]:
    return [p for p in loc if isinstance(p, int) or not _is_tag(p)]


def _is_tag(part: str) -> bool:
    """Pydantic's union-arm and validator labels in a location (``list[str]``, ``function-...``)."""
    return part in _UNION_TAGS or "[" in part or part.startswith(("function-", "constrained-"))


def _param(loc: tuple[int | str, ...]) -> str:
    """``("messages", 0, "role")`` -> ``messages[0].role``; union arm labels are dropped."""
    out = ""
    for part in _path(loc):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


_UNION_TAGS = frozenset(
    {"str", "int", "float", "bool", "list", "dict", "NamedToolChoice", "ImageURL"}
)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)  # fmt: skip


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
