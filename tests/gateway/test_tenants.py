"""The keys file: both formats, the YAML schema, one line per problem, reload keeping the old."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from env.settings import EngineSettings, GatewaySettings
from gateway.edge.app import ConfigError, create_app
from gateway.tenancy.auth import KeyStore, KeysWatcher, hash_key
from gateway.tenancy.tenants import KeysFileError, Tenant, parse
from tests.support.gateway import PROFILE

A = "sk-alice-0123456789abcdef"
B = "sk-bob-0123456789abcdef00"

GOOD = f"""
version: 1
defaults: {{rpm: 600}}
classes:
  bulk: {{priority: -5, queue_timeout_s: 900, inflight_share: 0.25}}
keys:
  - key: {hash_key(A)}
    label: chat
    tpm: 20000
    max_tokens: 256
    models: [gemma-4-tiny]
  - key: [{B}, {hash_key("sk-bob-rotated-0123456789")}]
    label: nightly
    priority: batch
    weight: 2
    max_concurrency: 4
  - key: sk-carol-0123456789abcdef
    priority: -5
    rpm: 5
"""


def label(tenant: Tenant | None) -> str | None:
    return None if tenant is None else tenant.label


def test_yaml_keys_with_defaults_classes_and_rotation() -> None:
    keys = parse(GOOD)
    store = KeyStore(keys)
    chat = store.identify(A)
    assert (chat.label, chat.rpm, chat.tpm, chat.max_tokens) == ("chat", 600, 20000, 256)
    assert chat.models == frozenset({"gemma-4-tiny"}) and chat.sched.name == "interactive"
    nightly = store.identify("sk-bob-rotated-0123456789")
    assert label(store.identify(B)) == "nightly" and nightly.label == "nightly"  # both keys
    assert (nightly.sched.name, nightly.sched.priority, nightly.sched.weight) == ("batch", 0, 2)
    assert nightly.sched.inflight_share == 0.5 and nightly.sched.max_concurrency == 4
    carol = store.identify("sk-carol-0123456789abcdef")
    assert carol.label.startswith("key-") and carol.rpm == 5  # own value beats the default
    assert (carol.sched.name, carol.sched.queue_timeout_s) == ("bulk", 900)
    assert store.identify("sk-nobody-0123456789abcdef") is None


def test_plain_format_still_works() -> None:
    store = KeyStore(parse(f"# comment\n{A} alice\n{hash_key(B)}\n"))
    alice = store.identify(A)
    assert alice is not None and alice.label == "alice"
    assert not alice.limited and alice.sched.name == "interactive"


BAD = f"""
keys:
  - key: {A}
    label: one
    colour: red
  - key: {hash_key(A)}
    rpm: -5
  - key: {B}
    priority: urgent
    label: one
"""


def test_bad_file_one_line_per_problem() -> None:
    with pytest.raises(KeysFileError) as info:
        parse(BAD, "keys.yaml")
    assert sorted(info.value.problems) == sorted([
        "keys.yaml: keys[0].colour: unknown field",
        "keys.yaml: keys[1].rpm: Input should be greater than or equal to 1 (got -5)",
        "keys.yaml: keys[1].key: the same key as keys[0]",
        "keys.yaml: keys[2].priority: unknown class 'urgent' (one of batch, interactive, or an "
        "integer)",
        "keys.yaml: keys[2].label: 'one' is also keys[0]",
    ])  # fmt: skip
    with pytest.raises(KeysFileError, match=r"keys\.yaml:3: the same key as line 1"):
        parse(f"{A}\n# x\n{hash_key(A)} again\n", "keys.yaml")


def test_gateway_refuses_to_start_with_a_bad_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(BAD)
    settings = GatewaySettings.load(PROFILE).model_copy(
        update={"api_keys_file": keys, "internal_token_file": tmp_path / "token"}
    )
    with pytest.raises(ConfigError) as info:
        create_app(PROFILE, engine=EngineSettings.load(PROFILE), settings=settings)
    lines = str(info.value).splitlines()
    assert len(lines) == 5 and all(line.startswith(f"{keys}: keys[") for line in lines)


def test_reload_swaps_keys_and_a_broken_file_keeps_the_previous(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{A} alice\n")
    store = KeyStore.from_file(path)
    watcher = KeysWatcher(store, path, poll_s=0.01)

    async def go() -> None:
        watcher.start()
        try:
            path.write_text(GOOD)
            for _ in range(500):  # the poller notices the change (bounded, not a timing claim)
                if label(store.identify(A)) == "chat":
                    break
                await asyncio.sleep(0.01)
            assert label(store.identify(A)) == "chat"
            caplog.clear()
            path.write_text(BAD + "\n")  # a different size: noticed as a change
            assert not watcher.reload("test")
        finally:
            await watcher.stop()

    with caplog.at_level(logging.INFO, logger="gateway"):
        asyncio.run(go())
    chat = store.identify(A)
    assert chat is not None and (chat.label, chat.tpm) == ("chat", 20000)  # kept
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 5 and all("keeping the previous 4 keys" in e for e in errors)
