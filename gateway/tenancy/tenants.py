"""The keys file: who may call the gateway, and each key's limits, class and models.

Two formats, told apart by content:

* plain (the original): one key per line, the raw key (>= 16 characters, hashed at load and never
  kept) or ``sha256:<hex>``, an optional label after a space; ``#`` comments. Every key is
  ``interactive`` with no limits of its own.
* YAML (a mapping with ``keys:``), declared by the pydantic models below (unknown fields are
  errors)::

    version: 1
    defaults: {rpm: 600, priority: interactive}     # any per-key field but key/label
    classes:                                        # optional; merged over the built-ins
      batch: {priority: 0, queue_timeout_s: 600, inflight_share: 0.5}
    keys:
      - key: sha256:4f1c...                         # or a list (rotation: both work)
        label: chat-product                         # metrics, logs; unique
        rpm: 600                                    # requests per minute
        tpm: 200000                                 # prompt + completion tokens per minute
        max_concurrency: 32                         # in flight + queued
        priority: interactive                       # a class name, or an integer
        weight: 2                                   # share against keys of the same class
        models: [gemma-4-26b]                       # allowed models (default: all)
        max_tokens: 2048                            # cap on max_tokens (and its default)

Built-in classes: ``interactive`` (priority 10, the queue timeout of the settings, the whole
in-flight cap) and ``batch`` (priority 0, 300 s queue timeout, half the in-flight cap). An
integer priority names the class of that priority, else a class of its own (settings' timeout,
whole cap). Bad files are refused with one line per problem (``KeysFileError``): at start the
gateway does not start, on a reload the previous keys stay (``KeyStore.reload`` in auth.py).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from gateway.admission.core import Sched

_HASH_RE = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
MIN_RAW_KEY = 16


class ClassSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: StrictInt
    queue_timeout_s: float | None = Field(None, gt=0)  # None: GATEWAY_QUEUE_TIMEOUT_S
    inflight_share: float = Field(1.0, gt=0, le=1)


BUILTIN_CLASSES = {
    "interactive": ClassSpec(priority=10),
    "batch": ClassSpec(priority=0, queue_timeout_s=300.0, inflight_share=0.5),
}


class LimitsSpec(BaseModel):
    """Per-key fields that ``defaults:`` may also set. Absent: no limit."""

    model_config = ConfigDict(extra="forbid")

    rpm: StrictInt | None = Field(None, ge=1)
    tpm: StrictInt | None = Field(None, ge=1)
    max_concurrency: StrictInt | None = Field(None, ge=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    priority: StrictInt | str | None = None
    weight: float | None = Field(None, gt=0)
    models: list[str] | None = Field(None, min_length=1)


class KeySpec(LimitsSpec):
    key: str | list[str] = Field(min_length=1)
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:@/-]{1,64}$")


class KeysFileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    defaults: LimitsSpec = LimitsSpec()
    classes: dict[str, ClassSpec] = {}
    keys: list[KeySpec] = Field(min_length=1)


INTERACTIVE = Sched(priority=10, name="interactive")


@dataclass(frozen=True)
class Tenant:
    """One caller as the gateway enforces it (several keys may share one: rotation)."""

    label: str
    rpm: int | None = None
    tpm: int | None = None
    max_tokens: int | None = None
    models: frozenset[str] | None = None
    sched: Sched = INTERACTIVE

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None


OPEN_TENANT = Tenant("anonymous")


@dataclass(frozen=True)
class Keys:
    """A loaded keys file: hashed keys -> tenants. Empty means the gateway runs open."""

    entries: tuple[tuple[bytes, Tenant], ...] = ()

    @property
    def open(self) -> bool:
        return not self.entries

    def by_label(self) -> dict[str, Tenant]:
        return {t.label: t for _, t in self.entries}


class KeysFileError(ValueError):
    """A keys file refused: one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def load(path: Path) -> Keys:
    """Read and check a keys file (either format). Raises ``KeysFileError``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise KeysFileError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    return parse(text, str(path))


def parse(text: str, where: str = "keys file") -> Keys:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        doc = None  # not YAML: the plain format (raw keys may hold any character)
    if isinstance(doc, dict):
        return _parse_yaml(doc, where)
    return _parse_plain(text, where)


def digest_of(key: str) -> bytes:
    m = _HASH_RE.match(key)
    return bytes.fromhex(m.group(1)) if m else hashlib.sha256(key.encode()).digest()


def _parse_plain(text: str, where: str) -> Keys:
    entries: list[tuple[bytes, Tenant]] = []
    problems: list[str] = []
    seen: dict[bytes, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, label = line.partition(" ")
        if not _HASH_RE.match(key) and len(key) < MIN_RAW_KEY:
            problems.append(f"{where}:{lineno}: API keys must be at least 16 characters")
            continue
        digest = digest_of(key)
        if digest in seen:
            problems.append(f"{where}:{lineno}: the same key as line {seen[digest]}")
            continue
        seen[digest] = lineno
        entries.append((digest, Tenant(label.strip() or f"key-{digest.hex()[:8]}")))
    if not entries and not problems:
        problems.append(f"{where}: no API keys in the file")
    if problems:
        raise KeysFileError(problems)
    return Keys(tuple(entries))


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _parse_yaml(doc: dict[str, Any], where: str) -> Keys:
    problems: list[str] = []
    spec: KeysFileSpec | None = None
    try:
        spec = KeysFileSpec.model_validate(doc)
    except ValidationError as exc:
        for e in exc.errors():
            loc = tuple(p for p in e["loc"] if p not in ("str", "list[str]", "int", "float"))
            what = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
            got = "" if e["type"] in ("extra_forbidden", "missing") else f" (got {e['input']!r})"
            problems.append(f"{where}: {_loc(loc)}: {what}{got}")
    problems += _cross_problems(doc, where)
    if problems or spec is None:
        raise KeysFileError(problems or [f"{where}: invalid keys file"])
    classes = {**BUILTIN_CLASSES, **spec.classes}
    entries: list[tuple[bytes, Tenant]] = []
    for k in spec.keys:
        keys = [k.key] if isinstance(k.key, str) else k.key
        digests = [digest_of(x) for x in keys]
        tenant = _tenant(k, spec.defaults, classes, digests[0])
        entries += [(d, tenant) for d in digests]
    return Keys(tuple(entries))


def _tenant(
    k: KeySpec, defaults: LimitsSpec, classes: dict[str, ClassSpec], first: bytes
) -> Tenant:
    def pick(name: str) -> Any:
        value = getattr(k, name)
        return getattr(defaults, name) if value is None else value

    prio = pick("priority")
    prio = "interactive" if prio is None else prio
    if isinstance(prio, str):
        name, cls = prio, classes[prio]
    else:
        named = [(n, c) for n, c in classes.items() if c.priority == prio]
        name, cls = named[0] if named else (f"p{prio}", ClassSpec(priority=prio))
    models = pick("models")
    sched = Sched(
        priority=cls.priority,
        weight=pick("weight") or 1.0,
        queue_timeout_s=cls.queue_timeout_s,
        max_concurrency=pick("max_concurrency") or 0,
        inflight_share=cls.inflight_share,
        name=name,
    )
    return Tenant(
        label=k.label or f"key-{first.hex()[:8]}",
        rpm=pick("rpm"),
        tpm=pick("tpm"),
        max_tokens=pick("max_tokens"),
        models=frozenset(models) if models else None,
        sched=sched,
    )


def _cross_problems(doc: dict[str, Any], where: str) -> list[str]:
    """What no single field can tell: duplicate keys and labels, unknown class names, short raw
    keys, two classes on one priority. Read from the raw document, so these are reported
    together with the field errors."""
    problems: list[str] = []
    classes = dict(BUILTIN_CLASSES)
    raw_classes = doc.get("classes")
    if isinstance(raw_classes, dict):
        by_prio: dict[object, str] = {}
        for name, c in raw_classes.items():
            prio = c.get("priority") if isinstance(c, dict) else None
            if prio in by_prio and by_prio[prio] != name:
                problems.append(
                    f"{where}: classes.{name}: priority {prio} is also class {by_prio[prio]}"
                )
            by_prio[prio] = name
        classes.update({str(n): BUILTIN_CLASSES["interactive"] for n in raw_classes})
    defaults = doc.get("defaults")
    if isinstance(defaults, dict):
        problems += _priority_problem(defaults.get("priority"), classes, f"{where}: defaults")
    keys = doc.get("keys")
    if not isinstance(keys, list):
        return problems
    seen_keys: dict[bytes, int] = {}
    seen_labels: dict[str, int] = {}
    for i, entry in enumerate(keys):
        if not isinstance(entry, dict):
            continue
        at = f"{where}: keys[{i}]"
        problems += _priority_problem(entry.get("priority"), classes, at)
        raw = entry.get("key")
        for key in [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []:
            if not isinstance(key, str):
                continue
            if not _HASH_RE.match(key) and len(key) < MIN_RAW_KEY:
                problems.append(f"{at}.key: API keys must be at least 16 characters")
                continue
            d = digest_of(key)
            if d in seen_keys:
                problems.append(f"{at}.key: the same key as keys[{seen_keys[d]}]")
            seen_keys.setdefault(d, i)
        label = entry.get("label")
        if isinstance(label, str):
            if label in seen_labels:
                problems.append(f"{at}.label: {label!r} is also keys[{seen_labels[label]}]")
            seen_labels.setdefault(label, i)
    return problems


def _priority_problem(prio: object, classes: dict[str, ClassSpec], at: str) -> list[str]:
    if isinstance(prio, str) and prio not in classes:
        names = ", ".join(sorted(classes))
        return [f"{at}.priority: unknown class {prio!r} (one of {names}, or an integer)"]
    return []
