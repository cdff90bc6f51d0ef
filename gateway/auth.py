"""API keys and the internal token.

Keys live in a file, one per line: either ``sha256:<hex>`` (preferred: the file then holds no
secret) or the raw key, which is hashed at load and never kept. An optional label after the key
names the caller in metrics; without one the caller is ``key-<first 8 hex of the hash>``, which
identifies a key without revealing it. Presented keys are hashed and compared against every
stored hash with ``hmac.compare_digest`` (no early exit), so timing reveals nothing.

The internal token authenticates the warm-up sidecar (and Prometheus, unless metrics are
public). The gateway creates it at start if absent: random, mode 0600, shared via the file named
by ``GATEWAY_INTERNAL_TOKEN_FILE``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import OpenAIError

ANONYMOUS = "anonymous"
_HASH_RE = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


def hash_key(key: str) -> str:
    """The at-rest form of a key: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any (ASGI raw headers)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


@dataclass(frozen=True)
class KeyStore:
    """Hashed API keys with caller labels. Empty means the gateway runs open (cpu only)."""

    entries: tuple[tuple[bytes, str], ...] = ()

    @property
    def open(self) -> bool:
        return not self.entries

    @classmethod
    def from_file(cls, path: Path) -> KeyStore:
        entries: list[tuple[bytes, str]] = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, _, label = line.partition(" ")
            m = _HASH_RE.match(key)
            digest = bytes.fromhex(m.group(1)) if m else hashlib.sha256(key.encode()).digest()
            if not m and len(key) < 16:
                raise ValueError(f"{path}:{lineno}: API keys must be at least 16 characters")
            entries.append((digest, label.strip() or f"key-{digest.hex()[:8]}"))
        if not entries:
            raise ValueError(f"{path}: no API keys in the file")
        return cls(tuple(entries))

    def identify(self, token: str | None) -> str | None:
        """The caller's label for a presented key, None if it matches no key."""
        if self.open:
            return ANONYMOUS
        if token is None:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        found: str | None = None
        for stored, label in self.entries:  # no early exit: constant time in the key count
            if hmac.compare_digest(stored, digest) and found is None:
                found = label
        return found


def ensure_token_file(path: Path) -> str:
    """Read the internal token, creating it (random, mode 0600) if absent."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race: use its token
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
    token = path.read_text().strip()
    if len(token) < 16:
        raise ValueError(f"{path}: the internal token is too short (at least 16 characters)")
    return token


def token_matches(presented: str | None, expected: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


@dataclass(frozen=True)
class Access:
    """Who may do what, decided from a request's headers alone."""

    keys: KeyStore
    internal_token: str
    metrics_public: bool = False

    def caller(self, headers: list[tuple[bytes, bytes]]) -> str:
        """The caller's label, or a 401. In open mode every caller is ``anonymous``."""
        token = bearer(headers)
        caller = self.keys.identify(token)
        if caller is None:
            msg = "missing API key" if token is None else "invalid API key"
            raise OpenAIError(
                401, f"{msg}: send 'Authorization: Bearer <key>'", code="invalid_api_key"
            )
        return caller

    def is_internal(self, headers: list[tuple[bytes, bytes]]) -> bool:
        return token_matches(bearer(headers), self.internal_token)

    def may_scrape(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """``/metrics``: public if configured, else an API key or the internal token.

        An open gateway (cpu profile, no keys file) lets anyone call ``/v1/*``, so its metrics
        are open too: refusing them to the callers it serves would protect nothing.
        """
        if self.metrics_public or self.keys.open or self.is_internal(headers):
            return True
        return self.keys.identify(bearer(headers)) is not None
