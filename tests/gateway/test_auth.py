"""API keys (hashed at rest, constant-time match) and the internal token file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gateway.tenancy.auth import KeyStore, bearer, ensure_token_file, hash_key, token_matches
from gateway.tenancy.tenants import OPEN_TENANT, Tenant

KEY = "sk-test-0123456789abcdef"


def label(tenant: Tenant | None) -> str | None:
    return None if tenant is None else tenant.label


def test_keys_file_plain_and_hashed(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    other = "sk-other-0123456789abcdef"
    f.write_text(f"# comment\n{KEY} alice\n\n{hash_key(other)}\n")
    store = KeyStore.from_file(f)
    assert not store.open
    assert label(store.identify(KEY)) == "alice"
    assert label(store.identify(other)) == "key-" + hash_key(other)[7:15]
    assert store.identify("sk-wrong-0123456789abcdef") is None
    assert store.identify(None) is None
    assert all(KEY not in repr(e) for e in store.entries)  # the raw key is not kept


def test_short_keys_and_empty_files_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("short\n")
    with pytest.raises(ValueError, match="16 characters"):
        KeyStore.from_file(f)
    f.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no API keys"):
        KeyStore.from_file(f)


def test_open_store_lets_everyone_in_as_anonymous() -> None:
    assert KeyStore().identify(None) is OPEN_TENANT  # label anonymous, no limits


def test_bearer_header_parsing() -> None:
    assert bearer([(b"authorization", b"Bearer abc")]) == "abc"
    assert bearer([(b"authorization", b"bearer  abc ")]) == "abc"
    assert bearer([(b"authorization", b"Basic abc")]) is None
    assert bearer([]) is None


def test_token_file_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "token"
    token = ensure_token_file(path)
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token_file(path) == token
    assert token_matches(token, token) and not token_matches("x" * 43, token)
    assert not token_matches(None, token)
