"""Derive the warm-up plan from the profile: pure functions, no I/O.

The plan is computed, never hand-written, so that it follows the profile: change
``ENGINE_MAX_NUM_BATCHED_TOKENS`` or ``ENGINE_MAX_NUM_SEQS`` and the buckets move with it. The
bucket ladders mirror ``tpu_inference/runner/utils.py`` (``get_token_paddings`` and
``get_req_paddings``: token buckets 16, 32, ... doubling up to the first >=
``--max-num-batched-tokens``, request buckets 8, 16, ... capped at ``--max-num-seqs``) because
those are the shapes the TPU compiles; on CPU and GPU the same steps are simply cheap end-to-end
checks.

What a warm-up genuinely adds on TPU (start-up already precompiles the backbone buckets): the
chat template and parsers, image shapes, logprobs / prompt_logprobs, long prompts and prefix-cache
priming. The bucket steps are still run so that a request-path compile (a missed bucket) shows up
as a *stall* in the report instead of in a user's latency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from env.settings import EngineEnv, EngineSettings, WarmupSettings

StepKind = Literal[
    "chat",
    "chat_stream",
    "tools",
    "reasoning",
    "prompt",
    "concurrency",
    "image",
    "logprobs",
    "prompt_logprobs",
    "prefix",
]

MIN_TOKEN_BUCKET = 16  # tpu-inference's smallest token padding
MIN_REQUEST_BUCKET = 8  # tpu-inference's MIN_NUM_SEQS
# vision_warmup_config shape used when the profile is multimodal but names no shape: Gemma's
# native square tile, so the commonest client image size is compiled before traffic arrives.
DEFAULT_IMAGE_SHAPE = (896, 896)
# prompt_logprobs has its own compiled path for prompts above 1024 tokens, which tpu-inference's
# start-up precompilation (runner/compilation_manager.py, capture_model) does not cover.
PROMPT_LOGPROBS_TOKENS = 2048


@dataclass(frozen=True)
class Step:
    """One warm-up request shape. The runner sends it twice (first hit, second hit)."""

    name: str
    kind: StepKind
    why: str
    prompt_tokens: int | None = None  # exact prompt length (prompt steps), else a short prompt
    concurrency: int = 1
    max_tokens: int = 1
    image_shape: tuple[int, int] | None = None
    logprobs: int | None = None
    # The prefix step's second hit is *meant* to be faster (cache hit): never a stall.
    stall_check: bool = True

    def params(self) -> dict[str, Any]:
        """The request parameters (what distinguishes this shape), without the labels."""
        skip = ("name", "kind", "why")
        return {k: v for k, v in asdict(self).items() if v is not None and k not in skip}

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Plan:
    """The ordered steps plus the derived ladders they came from (shown in the report)."""

    token_buckets: list[int]
    request_buckets: list[int]
    long_prompts: list[int]
    image_shapes: list[tuple[int, int]]
    prompt_limit: int
    max_num_batched_tokens: int
    steps: list[Step] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def summary(self) -> dict[str, Any]:
        return {
            "token_buckets": self.token_buckets,
            "request_buckets": self.request_buckets,
            "long_prompts": self.long_prompts,
            "image_shapes": [list(s) for s in self.image_shapes],
            "prompt_limit": self.prompt_limit,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "steps": self.names,
        }


def token_buckets(
    max_tokens: int, padding_gap: int = 0, minimum: int = MIN_TOKEN_BUCKET
) -> list[int]:
    """Token paddings as tpu-inference computes them.

    Gap 0: 16, 32, ... doubling up to the first value >= ``max_tokens``. Gap > 0: double while
    <= gap, then step linearly by the gap until ``max_tokens`` is covered.
    """
    paddings: list[int] = []
    num = minimum
    if not padding_gap:
        while True:
            paddings.append(num)
            if num >= max_tokens:
                return paddings
            num *= 2
    while num <= padding_gap:
        paddings.append(num)
        num *= 2
    num //= 2
    while num < max_tokens:
        num += padding_gap
        paddings.append(num)
    return paddings


def request_buckets(max_num_seqs: int, minimum: int = MIN_REQUEST_BUCKET) -> list[int]:
    """Request paddings: 8, 16, 32 ... powers of two, the last one capped at ``max_num_seqs``."""
    buckets: list[int] = []
    num = minimum
    while True:
        capped = min(num, max_num_seqs)
        if not buckets or buckets[-1] != capped:
            buckets.append(capped)
        if num >= max_num_seqs:
            return buckets
        num *= 2


def effective_batched_tokens(engine: EngineSettings) -> int:
    """``--max-num-batched-tokens`` as the engine will resolve it when the profile leaves it unset.

    vLLM 0.32 defaults (engine/arg_utils.py ``get_batch_defaults``, API server context): CPU
    2048 x world size, TPU v6e 1024, other accelerators 2048 (8192 on 70 GB+ GPUs, which we
    cannot see from here: 2048 only adds buckets, it never skips one that the engine uses).
    """
    if engine.max_num_batched_tokens:
        return engine.max_num_batched_tokens
    if engine.platform == "cpu":
        return 2048 * engine.tensor_parallel_size
    if engine.platform == "tpu":
        return 1024
    return 2048


def long_prompts(prompt_limit: int, batched_tokens: int, largest_bucket_prompt: int) -> list[int]:
    """Prompts beyond one scheduler step (chunked prefill), doubling up to the prompt limit.

    The last one is exactly the prompt limit: the "exact boundary" a client is allowed to hit.
    """
    out: list[int] = []
    num = batched_tokens * 2
    while num < prompt_limit:
        out.append(num)
        num *= 2
    out.append(prompt_limit)
    return sorted({n for n in out if n > largest_bucket_prompt})


def image_shapes(engine: EngineSettings, warmup: WarmupSettings) -> list[tuple[int, int]]:
    """Shapes to send when the profile allows images: explicit, else the vision warm-up config."""
    if (engine.limit_mm_per_prompt or {}).get("image", 0) <= 0:
        return []
    if warmup.image_shapes:
        return [tuple(s) for s in warmup.image_shapes]  # type: ignore[misc]
    vision = (engine.additional_config or {}).get("vision_warmup_config") or {}
    shapes = vision.get("image_shapes") or []
    if shapes:
        return [(int(h), int(w)) for h, w in shapes]
    return [DEFAULT_IMAGE_SHAPE]


def build_plan(engine: EngineSettings, engine_env: EngineEnv, warmup: WarmupSettings) -> Plan:
    """The ordered steps for a profile. Cheap, end-to-end checks first; the heavy ones after."""
    limit = engine.prompt_limit
    batched = effective_batched_tokens(engine)
    tokens = token_buckets(batched, engine_env.vllm_tpu_bucket_padding_gap or 0)
    requests = request_buckets(engine.max_num_seqs)
    bucket_prompts = [b for b in tokens if b <= limit]
    longs = long_prompts(limit, batched, max(bucket_prompts, default=0))
    shapes = image_shapes(engine, warmup)
    gen = warmup.max_tokens

    steps: list[Step] = [
        Step("chat", "chat", "chat template end to end, non-streamed", max_tokens=gen),
        Step("chat_stream", "chat_stream", "chat template, SSE framing and [DONE]", max_tokens=gen),
    ]
    if engine.enable_auto_tool_choice:
        steps.append(
            Step(
                "tools",
                "tools",
                f"tool_choice auto, parser {engine.tool_call_parser}",
                max_tokens=gen,
            )
        )
    if engine.reasoning_parser:
        steps.append(
            Step(
                "reasoning",
                "reasoning",
                f"enable_thinking, parser {engine.reasoning_parser}",
                max_tokens=gen,
            )
        )
    steps += [
        Step(
            f"prompt_{n}",
            "prompt",
            f"token bucket {n}: prefill of exactly {n} tokens",
            prompt_tokens=n,
        )
        for n in bucket_prompts
    ]
    steps += [
        Step(f"long_{n}", "prompt", f"long prompt of {n} tokens (chunked prefill)", prompt_tokens=n)
        for n in longs
    ]
    steps += [
        Step(
            f"concurrency_{r}",
            "concurrency",
            f"request bucket {r}: {r} requests at once",
            concurrency=r,
            max_tokens=gen,
        )
        for r in requests
    ]
    steps += [
        Step(
            f"image_{h}x{w}",
            "image",
            f"vision encoder at {h}x{w}",
            image_shape=(h, w),
            max_tokens=gen,
        )
        for h, w in shapes
    ]
    if warmup.logprobs > 0:
        n = min(limit, PROMPT_LOGPROBS_TOKENS)
        steps += [
            Step(
                "logprobs",
                "logprobs",
                f"sampled top-{warmup.logprobs} logprobs",
                logprobs=warmup.logprobs,
                max_tokens=gen,
            ),
            Step(
                f"prompt_logprobs_{n}",
                "prompt_logprobs",
                f"prompt_logprobs on {n} tokens",
                prompt_tokens=n,
                logprobs=1,
            ),
        ]
    if warmup.system_prompt:
        steps.append(
            Step(
                "prefix",
                "prefix",
                "prime the prefix cache with the shared system prompt",
                max_tokens=gen,
                stall_check=False,
            )
        )
    return Plan(
        token_buckets=tokens,
        request_buckets=requests,
        long_prompts=longs,
        image_shapes=shapes,
        prompt_limit=limit,
        max_num_batched_tokens=batched,
        steps=steps,
    )
