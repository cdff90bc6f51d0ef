"""Session-wide fixtures: ONE real vLLM CPU engine shared by every test that needs it.

Starting the engine costs ~40 s and ~3 GB, so it is started lazily the first time a test asks
for it and stopped (by process group) when the session ends. Tests that need an engine of their
own (restarts, kills) use ``tests.support.engine.start_engine`` directly and stop it themselves.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from entrypoint import tinymodel
from env.settings import CacheSettings
from tests.support.engine import PROFILE, Engine, start_engine


@pytest.fixture(scope="session")
def tiny_model() -> None:
    """Build the tiny model once up front, so parallel engines never race to build it."""
    tinymodel.build(CacheSettings.load(PROFILE).tiny_model_dir)


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_model: None) -> Iterator[Engine]:
    eng = start_engine(tmp_path_factory.mktemp("engine"))
    try:
        yield eng
    finally:
        eng.stop()
