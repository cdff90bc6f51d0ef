"""The gateway's own metrics: names and labels as documented, gauges read at scrape time, the
reason label of a refusal."""

from __future__ import annotations

import pytest

from gateway.errors import OpenAIError
from gateway.metrics import GatewayMetrics, rejection_reason
from protocol.prometheus import metric_sum


def test_counters_and_a_live_gauge_render_as_prometheus_text() -> None:
    m = GatewayMetrics()
    depth = [0]
    m.gauge("gateway_queue_depth", "Requests waiting for a slot", lambda: depth[0])
    m.request("chat", 200)
    m.request("chat", 200)
    m.request("chat", 429)
    m.reject("queue_full")
    depth[0] = 3  # read when scraped, not when registered
    text = m.render().decode()
    assert metric_sum(text, "gateway_requests_total", route="chat", status="200") == 2
    assert metric_sum(text, "gateway_requests_total", route="chat", status="429") == 1
    assert metric_sum(text, "gateway_rejections_total", reason="queue_full") == 1
    assert metric_sum(text, "gateway_queue_depth") == 3


def test_the_process_is_described_for_uptime() -> None:
    text = GatewayMetrics().render().decode()
    start = metric_sum(text, "process_start_time_seconds")
    assert start is not None and start > 1.7e9  # an epoch time, this process's start


def test_each_instance_has_its_own_registry() -> None:
    a, b = GatewayMetrics(), GatewayMetrics()
    a.request("chat", 200)
    assert metric_sum(b.render().decode(), "gateway_requests_total") is None


@pytest.mark.parametrize(
    "status,code,reason",
    [
        (429, "queue_full", "queue_full"),
        (429, "wait_timeout", "wait_timeout"),
        (503, "warming_up", "warming"),
        (503, "warmup_failed", "warming"),
        (401, "invalid_api_key", "auth"),
        (400, "context_length_exceeded", "validation"),
        (413, "request_too_large", "validation"),
        (503, "engine_down", "engine_down"),
        (504, "upstream_timeout", "upstream_timeout"),
        (500, None, "upstream"),
    ],
)
def test_rejection_reason(status: int, code: str | None, reason: str) -> None:
    assert rejection_reason(OpenAIError(status, "x", code=code)) == reason
