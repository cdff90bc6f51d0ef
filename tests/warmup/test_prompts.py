"""Exact-length prompts, checked against the real engine's tokenizer."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support.engine import Engine
from warmup.prompts import PromptBuilder, filler


def test_filler_is_deterministic_and_variants_differ_from_the_start() -> None:
    assert filler(50, 3, salt=7) == filler(50, 3, salt=7)
    starts = {tuple(filler(10, v, salt=7).split()[:3]) for v in range(40)}
    assert len(starts) == 40, "no two variants share their first three words"
    assert filler(10, 3, salt=1) != filler(10, 3, salt=2)


@pytest.mark.engine
def test_prompts_have_exactly_the_requested_token_count(engine: Engine) -> None:
    model = engine.settings.served_model_name
    sizes = [1, 2, 16, 100, 1024, engine.settings.prompt_limit]

    async def build() -> list[tuple[int, int, int]]:
        out = []
        async with httpx.AsyncClient(base_url=engine.url, timeout=60) as client:
            builder = PromptBuilder(client, model, salt=11)
            for n in sizes:
                for variant in (0, 1):
                    text = await builder.exact(n, variant)
                    resp = await client.post(
                        "/v1/completions", json={"model": model, "prompt": text, "max_tokens": 1}
                    )
                    out.append(
                        (
                            n,
                            len(await builder.tokenize(text)),
                            resp.json()["usage"]["prompt_tokens"],
                        )
                    )
        return out

    for n, tokenized, served in asyncio.run(build()):
        assert tokenized == n, f"/tokenize counts {tokenized} for a {n}-token prompt"
        assert served == n, f"/v1/completions counted {served} for a {n}-token prompt"
