"""Run the plan against the engine: every step twice, every request bounded, the whole plan too.

The first hit of a shape pays any compile; the second shows the steady cost. A first hit much
slower than the second (both a ratio and an absolute gap, so that 3 ms vs 1 ms is not a
"stall") is reported as a compile stall: on TPU that is a shape start-up did not precompile,
which a live user would otherwise have paid for.

Failures are classified because the sidecar reacts differently:
``StepFailed`` (the engine answered, wrongly: a profile/engine mismatch, a broken parser) ends
the warm-up and is posted to the gateway; ``EngineLost`` (connection refused or reset mid-plan:
the engine restarted or died) means "wait and warm the new instance".
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from env.settings import WarmupSettings
from protocol.engine_errors import engine_message
from protocol.prometheus import metric_sum
from warmup.images import png_data_url
from warmup.plan import Plan, Step
from warmup.progress import Reporter
from warmup.prompts import PromptBuilder, PromptError

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


# Engine counters read around a step's hits: (metric, key in the step's info).
COUNTERS = {
    "tools": ("vllm:tool_call_parser_invocations_total", "tool_parser_runs"),
    "prefix": ("vllm:prefix_cache_hits_total", "prefix_cache_hit_tokens"),
}


class StepFailed(Exception):
    """The engine answered a warm-up step with an error (or a wrong answer)."""

    def __init__(self, step: str, http_status: int | None, message: str) -> None:
        self.step = step
        self.http_status = http_status
        self.message = message
        status = f"HTTP {http_status}" if http_status is not None else "no response"
        super().__init__(f"step {step} failed: {status}: {message}")


class EngineLost(Exception):
    """The engine went away mid-plan (restart, crash): the plan must run again on the new one."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        super().__init__(f"engine lost during step {step}: {message}")


@dataclass
class StepResult:
    """Timings and what was checked for one step."""

    step: Step
    first_s: float | None = None
    second_s: float | None = None
    stall: bool = False
    error: str | None = None
    http_status: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.first_s is None or not self.second_s:
            return None
        return self.first_s / self.second_s

    @property
    def passed(self) -> bool:
        return self.error is None and self.second_s is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.step.name,
            "kind": self.step.kind,
            "params": self.step.params(),
            "status": "passed" if self.passed else "failed",
            "first_s": _round(self.first_s),
            "second_s": _round(self.second_s),
            "ratio": _round(self.ratio, 2),
            "stall": self.stall,
            "http_status": self.http_status,
            "error": self.error,
            "info": self.info,
        }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def is_stall(first_s: float, second_s: float, ratio: float, min_s: float) -> bool:
    """A compile stall: first hit ``ratio`` times slower than the second AND ``min_s`` slower."""
    return first_s - second_s > min_s and first_s > ratio * max(second_s, 1e-9)


def engine_error(resp: httpx.Response) -> str:
    """The engine's own error message (OpenAI error JSON), else the start of the body."""
    return engine_message(resp.content) or resp.reason_phrase


class Runner:
    """Sends the plan's requests. One instance per plan run (it owns the budget deadline)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        model: str,
        settings: WarmupSettings,
        reporter: Reporter,
        salt: int = 0,
    ) -> None:
        self.client = client
        self.model = model
        self.settings = settings
        self.reporter = reporter
        self.prompts = PromptBuilder(client, model, timeout_s=settings.request_timeout_s, salt=salt)
        self.results: list[StepResult] = []
        self._deadline = time.monotonic() + settings.budget_s
        self._variant = 0

    # -- plumbing ---------------------------------------------------------------------------

    def _timeout(self, step: Step) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise StepFailed(
                step.name, None, f"warm-up budget of {self.settings.budget_s:g} s spent"
            )
        return min(self.settings.request_timeout_s, left)

    async def _guard(self, step: Step, call: Awaitable[Any]) -> Any:
        """Map transport errors to EngineLost / StepFailed with the step's name."""
        timeout = self._timeout(step)
        try:
            return await asyncio.wait_for(call, timeout)
        except (TimeoutError, httpx.TimeoutException):
            raise StepFailed(step.name, None, f"no answer within {timeout:.0f} s") from None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise EngineLost(step.name, f"{type(exc).__name__}: {exc}") from None
        except httpx.HTTPStatusError as exc:  # from the tokenizer endpoints
            raise StepFailed(
                step.name, exc.response.status_code, engine_error(exc.response)
            ) from None
        except PromptError as exc:
            raise StepFailed(step.name, None, str(exc)) from None

    async def _post(self, step: Step, path: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = await self.client.post(path, json={"model": self.model, **body})
        if resp.status_code != 200:
            raise StepFailed(step.name, resp.status_code, engine_error(resp))
        return resp.json()

    async def _stream(self, step: Step, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A streamed request: every SSE data line must parse and the stream must end in [DONE]."""
        payload = {"model": self.model, "stream": True, **body}
        chunks, done, text = 0, False, []
        async with self.client.stream("POST", path, json=payload) as resp:
            if resp.status_code != 200:
                await resp.aread()
                raise StepFailed(step.name, resp.status_code, engine_error(resp))
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    raise StepFailed(step.name, 200, str(event["error"]))
                for choice in event.get("choices") or []:
                    chunks += 1
                    text.append((choice.get("delta") or {}).get("content") or "")
        if not done or not chunks:
            raise StepFailed(step.name, 200, f"stream ended without [DONE] ({chunks} chunks)")
        return {"chunks": chunks, "chars": len("".join(text))}

    def _next_variant(self) -> int:
        self._variant += 1
        return self._variant

    # -- the request shapes -----------------------------------------------------------------

    def _chat_body(self, step: Step, content: Any, **extra: Any) -> dict[str, Any]:
        return {
            "messages": [{"role": "user", "content": content}],
            "max_tokens": step.max_tokens,
            "temperature": 0,
            **extra,
        }

    async def _hit(self, step: Step) -> Callable[[], Awaitable[dict[str, Any]]]:
        """Prepare one hit: returns the timed coroutine factory (prompt building is not timed)."""
        kind = step.kind
        variant = self._next_variant()
        hello = f"Request {variant}: say hello in one word."
        if kind == "chat":
            body = self._chat_body(step, hello)
            return lambda: self._chat(step, body)
        if kind == "chat_stream":
            body = self._chat_body(step, hello, stream_options={"include_usage": True})
            return lambda: self._stream(step, "/v1/chat/completions", body)
        if kind == "tools":
            body = self._chat_body(
                step,
                f"Request {variant}: what is the weather in Paris?",
                tools=[WEATHER_TOOL],
                tool_choice="auto",
            )
            return lambda: self._chat(step, body)
        if kind == "reasoning":
            body = self._chat_body(
                step,
                f"Request {variant}: is 17 prime? Think first.",
                chat_template_kwargs={"enable_thinking": True},
            )
            return lambda: self._chat(step, body)
        if kind == "image":
            h, w = step.image_shape or (0, 0)
            content = [
                {"type": "text", "text": f"Request {variant}: describe the image."},
                {"type": "image_url", "image_url": {"url": png_data_url(h, w)}},
            ]
            body = self._chat_body(step, content)
            return lambda: self._chat(step, body)
        if kind == "logprobs":
            body = self._chat_body(step, hello, logprobs=True, top_logprobs=step.logprobs)
            return lambda: self._chat(step, body)
        if kind == "prefix":
            body = self._chat_body(step, hello)
            body["messages"].insert(0, {"role": "system", "content": self.settings.system_prompt})
            return lambda: self._chat(step, body)
        if kind in ("prompt", "prompt_logprobs"):
            n = step.prompt_tokens or 1
            prompt = await self._guard(step, self.prompts.exact(n, variant))
            body: dict[str, Any] = {
                "prompt": prompt,
                "max_tokens": step.max_tokens,
                "temperature": 0,
            }
            if kind == "prompt_logprobs":
                body["prompt_logprobs"] = step.logprobs or 1
            return lambda: self._completion(step, body, n)
        if kind == "concurrency":
            return lambda: self._concurrent(step, variant)
        raise ValueError(f"unknown step kind {kind}")

    async def _chat(self, step: Step, body: dict[str, Any]) -> dict[str, Any]:
        data = await self._post(step, "/v1/chat/completions", body)
        choices = data.get("choices") or []
        if not choices or "message" not in choices[0]:
            raise StepFailed(step.name, 200, "response has no choices[0].message")
        message, usage = choices[0]["message"], data.get("usage") or {}
        info: dict[str, Any] = {
            "completion_tokens": usage.get("completion_tokens"),
            "finish_reason": choices[0].get("finish_reason"),
        }
        if step.kind == "tools":
            info["tool_calls"] = len(message.get("tool_calls") or [])
        if step.kind == "reasoning":
            reasoning = message.get("reasoning") or message.get("reasoning_content") or ""
            info["reasoning_chars"] = len(reasoning)
        if step.kind == "logprobs":
            content = (choices[0].get("logprobs") or {}).get("content") or []
            if not content:
                raise StepFailed(step.name, 200, "logprobs requested but none returned")
            info["logprob_tokens"] = len(content)
        return info

    async def _completion(self, step: Step, body: dict[str, Any], n: int) -> dict[str, Any]:
        data = await self._post(step, "/v1/completions", body)
        counted = (data.get("usage") or {}).get("prompt_tokens")
        if counted != n:
            raise StepFailed(step.name, 200, f"engine counted {counted} prompt tokens, not {n}")
        info: dict[str, Any] = {"prompt_tokens": counted}
        if step.kind == "prompt_logprobs":
            plp = (data.get("choices") or [{}])[0].get("prompt_logprobs") or []
            if len(plp) != n:
                raise StepFailed(step.name, 200, f"{len(plp)} prompt_logprobs for {n} tokens")
            info["prompt_logprobs"] = len(plp)
        return info

    async def _concurrent(self, step: Step, variant: int) -> dict[str, Any]:
        async def one(i: int) -> int:
            body = {
                "prompt": f"Request {variant}.{i}: count from one to ten.",
                "max_tokens": step.max_tokens,
                "temperature": 0,
                "ignore_eos": True,
            }
            data = await self._post(step, "/v1/completions", body)
            return int((data.get("usage") or {}).get("completion_tokens") or 0)

        tokens = await asyncio.gather(*(one(i) for i in range(step.concurrency)))
        return {"requests": len(tokens), "completion_tokens": sum(tokens)}

    async def _metric(self, name: str, before: float | None = None) -> float | None:
        """A counter's value; with ``before``, wait up to 1 s for it to move (engine-core stats
        such as prefix-cache hits reach the API server's /metrics shortly after the response)."""
        for _ in range(10):
            resp = await self.client.get("/metrics")
            value = metric_sum(resp.text, name) if resp.status_code == 200 else None
            if before is None or value is None or value != before:
                return value
            await asyncio.sleep(0.1)
        return value

    # -- the plan -----------------------------------------------------------------------------

    async def _timed(self, step: Step) -> tuple[float, dict[str, Any]]:
        """One hit: prepare (untimed), send (timed), and read the step's engine counter around it.

        Counters prove what the output cannot: a random-weight model rarely emits a tool call,
        but the engine's parser counter shows the tool-call parser ran.
        """
        call = await self._hit(step)
        counter = COUNTERS.get(step.kind)
        before = await self._guard(step, self._metric(counter[0])) if counter else None
        start = time.perf_counter()
        info = await self._guard(step, call())
        elapsed = time.perf_counter() - start
        if counter:
            after = await self._guard(step, self._metric(counter[0], before))
            if before is not None and after is not None:
                info[counter[1]] = int(after - before)
        if step.kind == "tools" and info.get("tool_parser_runs") == 0:
            raise StepFailed(step.name, 200, "tools were sent but the tool-call parser never ran")
        return elapsed, info

    async def run_step(self, step: Step) -> StepResult:
        result = StepResult(step)
        self.results.append(result)
        try:
            result.first_s, result.info = await self._timed(step)
            result.second_s, result.info = await self._timed(step)
        except StepFailed as exc:
            result.error, result.http_status = exc.message, exc.http_status
            raise
        except EngineLost as exc:
            result.error = str(exc)
            raise
        s = self.settings
        if step.stall_check and result.first_s is not None and result.second_s is not None:
            result.stall = is_stall(result.first_s, result.second_s, s.stall_ratio, s.stall_min_s)
        return result

    async def run(self, plan: Plan) -> list[StepResult]:
        """Every step in order; raises StepFailed / EngineLost at the first failure.

        ``self.results`` keeps what ran (including the failing step) for the report either way.
        """
        self.reporter.plan_started(len(plan.steps))
        try:
            for index, step in enumerate(plan.steps):
                self.reporter.step_started(index, step.name, step.why)
                result = await self.run_step(step)
                line = f"first {result.first_s:.3f} s, second {result.second_s:.3f} s"
                if result.stall:
                    line += f"  STALL (x{result.ratio:.1f})"
                self.reporter.step_done(step.name, line)
        finally:
            self.reporter.plan_done()
        return self.results
