"""Not collected by default (no test_ prefix): run by tests/ci/test_skips_under_ci.py."""

import pytest


def test_passes() -> None:
    pass


def test_skips() -> None:
    pytest.skip("sample skip")
