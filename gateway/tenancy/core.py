"""Per-key enforcement on the request path: allowed models, ``max_tokens`` cap, rate limits,
scheduling class, and the token accounting that settles each request from the engine's usage.

Accounting, the way the counts stay right for streams (LiteLLM's most filed bugs are here:
cached tokens counted against TPM, TPM never enforced for streaming):

* before admission the prompt is known: the engine's count when the gateway tokenized, else the
  conservative upper bound that let it skip counting (bytes of the body + template slack);
* the reservation is ``prompt + max_tokens x choices`` tokens and one request, charged at once
  (a refusal is a 429 with ``Retry-After`` from the limiter's window);
* the engine's final usage settles it: streams always ask the engine for usage
  (``stream_options.include_usage`` is forced upstream and the usage chunk is stripped again if
  the client did not ask for it), the prompt is then the engine's own count;
* a client disconnect settles what was generated (the relay's count of streamed token events;
  the engine aborts the rest); a request refused or dropped before the engine saw it costs
  nothing (its request and tokens are refunded);
* cached prompt tokens (``prompt_tokens_details.cached_tokens``) count as prompt tokens unless
  ``GATEWAY_TPM_CACHED_TOKENS=exclude``.

Buckets are per tenant label (keys sharing a label, for rotation, share the budget).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.apis import APIS
from gateway.errors import OpenAIError, rate_limited
from gateway.metrics import GatewayMetrics, rejection_reason
from gateway.request.policy import Policy
from gateway.tenancy.ratelimit import Charge, LimitStore, MemoryStore, Verdict, Window
from gateway.tenancy.tenants import Tenant

_OWN_CODES = ("rpm_limit", "tpm_limit", "request_exceeds_tpm")  # carry their own headers


class AdmissionHeaders(Protocol):
    """The in-flight cap's ``x-ratelimit-*-requests`` (``admission.Admission``)."""

    def rate_headers(self) -> list[tuple[bytes, bytes]]: ...


@dataclass(frozen=True, slots=True)
class Used:
    """What a request the engine answered used, from the engine's own usage (the service works
    it out once, for settlement here and for the chip-time ledger)."""

    prompt: int
    cached: int  # of the prompt, served from the engine's prefix cache
    completion: int


def usage_of(kind: str, data: bytes) -> tuple[int | None, int]:
    """(prompt tokens, cached prompt tokens) from the engine's usage, if it reported any."""
    api = APIS[kind]
    found = api.prompt_usage.findall(data) if data else []
    cached = api.cached_usage.findall(data) if found else []
    return (int(found[-1]) if found else None), (int(cached[-1]) if cached else 0)


def _duration(seconds: float) -> bytes:
    if seconds <= 0:
        return b"0s"
    if seconds < 1:
        return b"%dms" % math.ceil(seconds * 1000)
    return b"%ds" % math.ceil(seconds)


@dataclass(eq=False)
class Reservation:
    """What one request charged; settled exactly once."""

    tenant: Tenant
    tokens: int  # reserved: prompt estimate + max_tokens x choices
    windows: tuple[Window, ...]
    requests: Charge | None
    token_charge: Charge | None
    settled: bool = False


class Tenancy:
    def __init__(
        self,
        store: LimitStore,
        metrics: GatewayMetrics,
        cached_tokens: Literal["count", "exclude"] = "count",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.count_cached = cached_tokens == "count"
        self._clock = clock
        self._policies: dict[tuple[int, int], Policy] = {}

    @classmethod
    def open(cls, metrics: GatewayMetrics) -> Tenancy:
        """No keys, no limits: every caller is the anonymous tenant."""
        return cls(MemoryStore(), metrics)

    # -- before admission -------------------------------------------------------------------

    def policy_for(self, tenant: Tenant, policy: Policy) -> Policy:
        """The deployment policy with the key's ``max_tokens`` cap as the default's ceiling."""
        cap = tenant.max_tokens
        if cap is None or cap >= policy.default_max_tokens:
            return policy
        found = self._policies.get((id(policy), cap))
        if found is None:
            found = dataclasses.replace(policy, default_max_tokens=cap)
            self._policies = {**self._policies, (id(policy), cap): found}
        return found

    def check(self, tenant: Tenant, model: object, max_tokens: int | None, param: str) -> None:
        """The key's allowed models and ``max_tokens`` cap (403 / 400)."""
        if tenant.models is not None and model not in tenant.models:
            raise OpenAIError(
                403, f"this API key may not use the model {model!r} (allowed: "
                f"{', '.join(sorted(tenant.models))})", code="model_not_allowed", param="model",
            )  # fmt: skip
        cap = tenant.max_tokens
        if cap is not None and max_tokens is not None and max_tokens > cap:
            raise OpenAIError(
                400, f"{param} is {max_tokens}; this API key allows at most {cap}",
                code="max_tokens_limit", param=param,
            )  # fmt: skip

    async def reserve(self, tenant: Tenant, prompt: int, completion: int) -> Reservation:
        """Charge one request and ``prompt + completion`` tokens, or raise the 429."""
        tokens = prompt + completion
        if not tenant.limited:
            return Reservation(tenant, tokens, (), None, None)
        charges: list[Charge] = []
        req = tok = None
        if tenant.rpm is not None:
            req = Charge(f"{tenant.label}/requests", tenant.rpm, 1)
            charges.append(req)
        if tenant.tpm is not None:
            tok = Charge(f"{tenant.label}/tokens", tenant.tpm, tokens)
            charges.append(tok)
        verdict = await self.store.charge(charges, self._clock())
        if not verdict.allowed:
            raise self._refusal(tenant, verdict, charges, tokens)
        return Reservation(tenant, tokens, verdict.windows, req, tok)

    def _refusal(
        self, tenant: Tenant, verdict: Verdict, charges: list[Charge], tokens: int
    ) -> OpenAIError:
        headers = _header_dict(verdict.windows, charges)
        for w, c in zip(verdict.windows, charges, strict=True):
            if w.too_large:
                return rate_limited(
                    f"the request needs {tokens} tokens (prompt + max_tokens) and this key "
                    f"allows {c.limit} per minute: lower max_tokens", "request_exceeds_tpm",
                    retry_after=None, limits=headers,
                )  # fmt: skip
        retry = max(1, math.ceil(verdict.retry_after_s))
        worst = max(zip(verdict.windows, charges, strict=True), key=lambda wc: wc[0].retry_after_s)
        what = "requests" if worst[1].bucket.endswith("/requests") else "tokens"
        return rate_limited(
            f"rate limit reached for this API key: {worst[1].limit} {what} per minute; "
            f"retry in {retry} s", "rpm_limit" if what == "requests" else "tpm_limit",
            retry_after=retry, limits=headers,
        )  # fmt: skip

    def headers(self, res: Reservation, admission: AdmissionHeaders) -> list[tuple[bytes, bytes]]:
        """``x-ratelimit-*`` for an admitted request: the key's windows after its charge; the
        requests ones from the in-flight cap when the key has no rpm."""
        charges = [c for c in (res.requests, res.token_charge) if c is not None]
        out = [] if res.requests is not None else admission.rate_headers()
        out += [(k.encode(), v.encode()) for k, v in _header_dict(res.windows, charges).items()]
        return out

    def peek_headers(self, tenant: Tenant) -> dict[str, str]:
        """The key's windows as they stand (for answers that charged nothing)."""
        now = self._clock()
        charges = []
        if tenant.rpm is not None:
            charges.append(Charge(f"{tenant.label}/requests", tenant.rpm, 1))
        if tenant.tpm is not None:
            charges.append(Charge(f"{tenant.label}/tokens", tenant.tpm, 0))
        windows = tuple(self.store.peek(c, now) for c in charges)
        return _header_dict(windows, charges)

    # -- after ------------------------------------------------------------------------------

    def settle(self, res: Reservation, reached_engine: bool, used: Used | None) -> None:
        """Correct the reservation to what the request used (idempotent): a request the engine
        never saw is refunded its request; its tokens are what ``used`` says (none without)."""
        if res.settled:
            return
        res.settled = True
        now = self._clock()
        tokens = 0
        if used is not None:
            label = res.tenant.label
            counted = used.prompt if self.count_cached else max(0, used.prompt - used.cached)
            tokens = counted + used.completion
            self.metrics.key_tokens(label, "prompt", used.prompt)
            self.metrics.key_tokens(label, "completion", used.completion)
            if used.cached:
                self.metrics.key_tokens(label, "cached", used.cached)
        if res.requests is not None and not reached_engine:
            self.store.adjust(res.requests, -1, now)
        if res.token_charge is not None:
            self.store.adjust(res.token_charge, tokens - res.tokens, now)

    def rejected(self, tenant: Tenant, err: OpenAIError) -> OpenAIError:
        """A refusal of this key's request: counted; returns the refusal to answer with (a
        copy carrying the key's windows, for a limited key refused by someone else)."""
        self.metrics.key_reject(tenant.label, rejection_reason(err))
        if tenant.limited and err.code not in _OWN_CODES:
            return err.with_headers(self.peek_headers(tenant))
        return err


def _header_dict(windows: tuple[Window, ...], charges: list[Charge]) -> dict[str, str]:
    out: dict[str, str] = {}
    for w, c in zip(windows, charges, strict=True):
        what = "requests" if c.bucket.endswith("/requests") else "tokens"
        out[f"x-ratelimit-limit-{what}"] = str(w.limit)
        out[f"x-ratelimit-remaining-{what}"] = str(w.remaining)
        out[f"x-ratelimit-reset-{what}"] = _duration(w.reset_s).decode()
    return out
