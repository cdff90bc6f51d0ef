"""``GATEWAY_STATE_URL``: a Redis URL, or the path of a file holding one (to keep a password out
of the environment, like ``GATEWAY_API_KEYS_FILE``). Checked before start-up so that a typo is one
clear line, not a stream of connection errors; a password is never printed."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

SCHEMES = ("redis", "rediss", "unix")
_EXPECTED = "expected redis://[:password@]host:port/db, rediss://..., or a file holding one"
# rediss:// verifies the server against the system's CAs, or only the CA in this file (redis-py's
# name for it): a managed Redis with its own server CA (Memorystore's in-transit encryption).
CA_PARAM = "ssl_ca_certs"


class StateUrlError(ValueError):
    """The state URL cannot be used (one line, no secret in it)."""


def resolve(raw: str) -> str:
    """The URL to connect to: ``raw`` itself, or the first non-empty line of the file it names."""
    raw = raw.strip()
    if "://" not in raw:
        path = Path(raw)
        try:
            lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        except OSError as exc:
            raise StateUrlError(
                f"GATEWAY_STATE_URL={raw}: not a URL and not a readable file "
                f"({exc.strerror or exc}); {_EXPECTED}"
            ) from None
        if not lines:
            raise StateUrlError(f"GATEWAY_STATE_URL={raw}: the file is empty; {_EXPECTED}")
        return check(lines[0], where=f"GATEWAY_STATE_URL (from {raw})")
    return check(raw)


def check(url: str, where: str = "GATEWAY_STATE_URL") -> str:
    """``url`` if it is a usable Redis URL, else ``StateUrlError``."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise StateUrlError(f"{where}={redact(url)}: {exc}; {_EXPECTED}") from None
    if parts.scheme not in SCHEMES:
        raise StateUrlError(f"{where}={redact(url)}: scheme {parts.scheme!r}; {_EXPECTED}")
    if parts.scheme == "unix":
        if not parts.path:
            raise StateUrlError(f"{where}={redact(url)}: no socket path; {_EXPECTED}")
        return url
    if not parts.hostname:
        raise StateUrlError(f"{where}={redact(url)}: no host; {_EXPECTED}")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise StateUrlError(f"{where}={redact(url)}: database {db!r} is not a number; {_EXPECTED}")
    ca = parse_qs(parts.query).get(CA_PARAM)
    if ca and parts.scheme != "rediss":
        raise StateUrlError(f"{where}={redact(url)}: {CA_PARAM} needs rediss:// (TLS)")
    if ca and not os.access(ca[0], os.R_OK):
        raise StateUrlError(f"{where}={redact(url)}: {CA_PARAM}={ca[0]} is not a readable file")
    del port
    return url


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable>"
    if parts.password is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@{parts.hostname or ''}"
    try:
        if parts.port is not None:
            netloc += f":{parts.port}"
    except ValueError:
        pass
    return parts._replace(netloc=netloc).geturl()
