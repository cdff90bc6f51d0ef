"""API keys and the internal token.

Keys live in a file (``gateway/tenancy/tenants.py``: one per line, or YAML with per-key limits): either
``sha256:<hex>`` (preferred: the file then holds no secret) or the raw key, which is hashed at
load and never kept. A label names the caller in metrics; without one the caller is
``key-<first 8 hex of the hash>``, which identifies a key without revealing it. Presented keys are hashed and compared against every
stored hash with ``hmac.compare_digest`` (no early exit), so timing reveals nothing.

The internal token authenticates the warm-up sidecar (and Prometheus, unless metrics are
public). The gateway creates it at start if absent: random, mode 0600, shared via the file named
by ``GATEWAY_INTERNAL_TOKEN_FILE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import OpenAIError
from gateway.tenancy import tenants
from gateway.tenancy.tenants import OPEN_TENANT, Keys, Tenant

log = logging.getLogger("gateway")


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


class KeyStore:
    """The live keys (``gateway.tenancy.tenants``): hashed keys -> tenants. Empty means the gateway
    runs open (cpu only). ``reload`` swaps the whole set at once; a request keeps the tenant it
    was identified as, so a reload never touches a stream in flight."""

    def __init__(self, keys: Keys | None = None) -> None:
        self._keys = keys or Keys()
        self._tenants = len(self._keys.by_label())  # read on admission (headroom): counted once

    @property
    def entries(self) -> tuple[tuple[bytes, Tenant], ...]:
        return self._keys.entries

    @property
    def open(self) -> bool:
        return self._keys.open

    @property
    def tenants(self) -> int:
        """Distinct tenants (labels) the keys name: 0 when the gateway runs open."""
        return self._tenants

    @classmethod
    def from_file(cls, path: Path) -> KeyStore:
        """Raises ``tenants.KeysFileError`` (a ``ValueError``, one line per problem)."""
        return cls(tenants.load(path))

    def replace(self, keys: Keys) -> None:
        self._keys = keys
        self._tenants = len(keys.by_label())

    def reload(self, path: Path) -> list[str]:
        """Re-read the keys file; on any problem keep the current keys. Returns the problems."""
        try:
            keys = tenants.load(path)
        except tenants.KeysFileError as exc:
            return exc.problems
        self.replace(keys)
        return []

    def identify(self, token: str | None) -> Tenant | None:
        """The tenant of a presented key (the open tenant when the gateway runs open), None if
        it matches no key."""
        entries = self._keys.entries
        if not entries:
            return OPEN_TENANT
        if token is None:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        found: Tenant | None = None
        for stored, tenant in entries:  # no early exit: constant time in the key count
            if hmac.compare_digest(stored, digest) and found is None:
                found = tenant
        return found


class KeysWatcher:
    """Reloads the keys file on SIGHUP and when it changes on disk (polled every ``poll_s``;
    0: SIGHUP only). A broken file keeps the previous keys and logs one line per problem."""

    def __init__(self, store: KeyStore, path: Path, poll_s: float) -> None:
        self.store = store
        self.path = path
        self.poll_s = poll_s
        self._seen = self._signature()
        self._task: asyncio.Task[None] | None = None
        self._hup = False

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self, why: str) -> bool:
        self._seen = self._signature()
        problems = self.store.reload(self.path)
        for problem in problems:
            log.error(
                "keys file not reloaded (%s), keeping the previous %d keys: %s",
                why, len(self.store.entries), problem,
            )  # fmt: skip
        if not problems:
            labels = {t.label for _, t in self.store.entries}
            log.info(
                "keys file reloaded (%s): %d keys, %d tenants",
                why, len(self.store.entries), len(labels),
            )  # fmt: skip
        return not problems

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, lambda: self.reload("SIGHUP"))
            self._hup = True
        if self.poll_s > 0:
            self._task = loop.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            if self._signature() != self._seen:
                self.reload("file changed")

    async def stop(self) -> None:
        if self._hup:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


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

    def authenticate(self, headers: list[tuple[bytes, bytes]]) -> Tenant:
        """The caller's tenant, or a 401. In open mode every caller is the open tenant
        (``anonymous``, no limits)."""
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
