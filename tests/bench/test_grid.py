"""Cell planning and the skip rules."""

from __future__ import annotations

from bench.grid import (
    DEFAULT_CONCURRENCY,
    DEFAULT_CONTEXT,
    FAILED,
    NOT_RUN,
    OK,
    PLANNED,
    SKIPPED_AFTER_FAILURE,
    SKIPPED_MAX_LEN,
    SKIPPED_MIN_CONTEXT,
    Grid,
    requests_for,
)


def test_defaults_reproduce_the_seed_matrix():
    assert DEFAULT_CONCURRENCY[0] == 1 and DEFAULT_CONCURRENCY[-1] == 2048
    assert DEFAULT_CONTEXT[0] == 4 and DEFAULT_CONTEXT[-1] == 16384
    assert len(DEFAULT_CONCURRENCY) * len(DEFAULT_CONTEXT) == 156


def test_requests_per_cell():
    assert requests_for(1) == 20  # the minimum wins at low concurrency
    assert requests_for(64) == 320  # 5 rounds per stream above it
    assert requests_for(64, multiplier=10, minimum=5) == 640


def test_static_skips_are_marked_with_a_reason():
    g = Grid.plan([4, 1024, 2048], [1, 8], output=128, max_model_len=2048, min_context=9)
    assert g.get(2048, 1).status == SKIPPED_MAX_LEN  # 2048 + 128 > 2048
    assert "max-model-len 2048" in g.get(2048, 8).reason
    assert g.get(4, 1).status == SKIPPED_MIN_CONTEXT  # below the chat template's size
    assert g.get(1024, 8).status == PLANNED
    # run order: by context, then ascending concurrency
    assert [c.key for c in g][:2] == [(4, 1), (4, 8)]


def test_a_failure_skips_higher_concurrency_at_that_context_only():
    g = Grid.plan([128, 256], [1, 2, 4, 8], output=16, max_model_len=None)
    g.record(g.get(128, 1), {"error_rate": 0.0}, max_error_rate=0.05)
    g.record(g.get(128, 2), {"error_rate": 0.5}, max_error_rate=0.05)
    assert g.get(128, 1).status == OK
    assert g.get(128, 2).status == FAILED and "50.0%" in g.get(128, 2).reason
    assert [g.get(128, c).status for c in (4, 8)] == [SKIPPED_AFTER_FAILURE] * 2
    assert all(g.get(256, c).status == PLANNED for c in (1, 2, 4, 8))
    g.finish()
    assert g.get(256, 8).status == NOT_RUN


def test_error_rate_at_the_threshold_passes():
    g = Grid.plan([16], [1], output=4, max_model_len=None)
    g.record(g.get(16, 1), {"error_rate": 0.05}, max_error_rate=0.05)
    assert g.get(16, 1).status == OK
