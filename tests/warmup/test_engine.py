"""Reading the engine's identity and counters from its Prometheus page."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from protocol.prometheus import metric_labels, metric_sum
from tests.support.engine import Engine
from warmup.engine import EngineInfo, describe

PAGE = """\
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.79560425903e+09
python_info{implementation="CPython",major="3",minor="11",patchlevel="7",version="3.11.7"} 1.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 3392.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 8.0
vllm:prefix_cache_hits_total_created{engine="0",model_name="m"} 1.7e+09
vllm:cache_config_info{block_size="32",cache_dtype="auto",enable_prefix_caching="True"} 1.0
"""


def test_metric_sum_adds_every_label_set_and_ignores_longer_names() -> None:
    assert metric_sum(PAGE, "vllm:prefix_cache_hits_total") == 3400.0
    assert metric_sum(PAGE, "process_start_time_seconds") == 1.79560425903e09
    assert metric_sum(PAGE, "vllm:absent_total") is None


def test_metric_labels_reads_info_metrics() -> None:
    labels = metric_labels(PAGE, "vllm:cache_config_info")
    assert labels == {"block_size": "32", "cache_dtype": "auto", "enable_prefix_caching": "True"}
    assert metric_labels(PAGE, "python_info")["version"] == "3.11.7"
    assert metric_labels(PAGE, "nope") == {}


@pytest.mark.engine
def test_describe_reads_the_real_engine(engine: Engine) -> None:
    async def read() -> EngineInfo:
        async with httpx.AsyncClient(base_url=engine.url) as client:
            return await describe(client)

    info = asyncio.run(read())
    assert info.instance is not None and float(info.instance) > 1e9
    assert info.model == engine.settings.served_model_name
    assert info.version and info.version.startswith("0.")
    assert info.max_model_len == engine.settings.max_model_len
    assert info.cache.get("enable_prefix_caching") == "True"
