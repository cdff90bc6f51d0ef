"""The one typed settings model for the whole stack.

A deployment is described by one profile, ``env/<name>.env``. Every role (entrypoint, gateway,
warm-up, compose) reads the same file, but each reads only its *slice*: a pydantic-settings class
with its own prefix (``ENGINE_``, ``CACHE_``, ``GATEWAY_``, ``WARMUP_``) plus the few real
third-party variables the engine needs verbatim (``EngineEnv``). Process environment overrides
the file, so ``ENGINE_PORT=8001 python -m entrypoint serve`` works as expected.

Every key is defined once, here, and documented once, in ``env/README.md``;
``tests/env/test_settings.py`` checks the two agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Self

from dotenv import dotenv_values
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from env.net import loopback_url

ENV_DIR = Path(__file__).resolve().parent
DEFAULT_PROFILE = ENV_DIR / "cpu.env"

Platform = Literal["tpu", "gpu", "cpu"]


def profile_path(profile: str | os.PathLike[str] | None = None) -> Path:
    """Resolve a profile argument: a path, a bare name (``cpu``), ``$PROFILE``, or the default."""
    raw = str(profile) if profile else os.environ.get("PROFILE", "")
    if not raw:
        return DEFAULT_PROFILE
    path = Path(raw)
    if path.exists():
        return path
    named = ENV_DIR / (raw if raw.endswith(".env") else f"{raw}.env")
    return named if named.exists() else path


class _Slice(BaseSettings):
    """Base for a role's slice: unknown keys are ignored here and caught by ``unknown_keys``."""

    model_config = SettingsConfigDict(extra="ignore", env_file_encoding="utf-8")

    @classmethod
    def load(cls, profile: str | os.PathLike[str] | None = None) -> Self:
        """Read this slice from a profile file, with the process environment taking precedence."""
        return cls(_env_file=profile_path(profile))  # type: ignore[call-arg]

    @classmethod
    def env_keys(cls) -> set[str]:
        prefix = cls.model_config.get("env_prefix", "")
        return {f"{prefix}{name}".upper() for name in cls.model_fields}


class EngineSettings(_Slice):
    """What ``vllm serve`` is asked to do. Rendered into argv by ``entrypoint.render``."""

    model_config = SettingsConfigDict(env_prefix="ENGINE_")

    platform: Platform = "cpu"
    image: str = "gemma4-serving/engine-cpu:latest"
    model: str = ".cache/models/tiny-gemma4"
    served_model_name: str = "gemma-4-tiny"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    tensor_parallel_size: int = Field(1, ge=1)
    dtype: str | None = None
    max_model_len: int = Field(2048, ge=16)
    max_num_seqs: int = Field(64, ge=1)
    # Replicas on this host (env/replicas.py): replica i listens on port + i and, on TPU, owns
    # chips [i * chips_per_replica, (i + 1) * chips_per_replica).
    replicas: int = Field(1, ge=1)
    chips_per_replica: int | None = Field(None, ge=1)  # None: tensor_parallel_size
    # By hand, e.g. "0,1;2,3": replica i's TPU chips (the i-th ';' group); empty: the blocks above.
    chip_sets: str = ""
    shutdown_timeout_s: int = Field(0, ge=0)  # vLLM --shutdown-timeout: drain before exit
    max_num_batched_tokens: int | None = Field(None, ge=16)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    kv_cache_dtype: str | None = None
    block_size: int | None = Field(None, ge=1)
    enable_prefix_caching: bool | None = None
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    limit_mm_per_prompt: dict[str, int] | None = None
    disable_chunked_mm_input: bool = False
    speculative_config: dict[str, Any] | None = None
    async_scheduling: bool | None = None
    additional_config: dict[str, Any] | None = None
    enforce_eager: bool = False
    safetensors_load_strategy: str | None = None
    # KV-cache events (vLLM --kv-events-config, entrypoint/kvevents.py): "on" publishes every
    # stored/evicted block over ZMQ so the gateway's kv routing knows what each replica holds.
    # Replica I publishes on its port + the offset, replays missed batches on port + 2 x offset.
    kv_events: Literal["on", "off"] = "off"
    kv_events_port_offset: int = Field(1000, ge=1, le=30000)
    # vLLM --otlp-traces-endpoint (empty: the engine exports no spans); the protocol is
    # OTEL_EXPORTER_OTLP_TRACES_PROTOCOL (EngineEnv), vLLM's default gRPC.
    otlp_traces_endpoint: str = ""
    extra_args: str = ""
    # Client contract, enforced by the gateway and checked against max_model_len by the preflight.
    max_prompt_tokens: int | None = Field(None, ge=1)
    gen_buffer_tokens: int = Field(256, ge=1)
    hf_token_file: Path | None = None

    @property
    def prompt_limit(self) -> int:
        """Largest prompt the deployment accepts: explicit, else what leaves the gen buffer."""
        if self.max_prompt_tokens is not None:
            return self.max_prompt_tokens
        return max(1, self.max_model_len - self.gen_buffer_tokens)

    @property
    def multimodal(self) -> bool:
        return any(v > 0 for v in (self.limit_mm_per_prompt or {}).values())

    @property
    def url(self) -> str:
        return loopback_url(self.host, self.port)

    @property
    def chips_each(self) -> int:
        """Accelerator chips one replica uses (TPU: pinned through TPU_VISIBLE_CHIPS)."""
        return self.chips_per_replica or self.tensor_parallel_size

    def replica_port(self, index: int) -> int:
        return self.port + index

    @property
    def replica_urls(self) -> list[str]:
        """Where this host's replicas answer: ``ENGINE_PORT + i`` for each replica ``i``."""
        return [loopback_url(self.host, self.replica_port(i)) for i in range(self.replicas)]


class EngineEnv(_Slice):
    """Third-party variables passed verbatim into the engine's environment.

    These keep their real names (vLLM, tpu-inference, JAX, HF) so that the profile reads like the
    upstream docs. Compile-cache and HF cache paths are *not* here: ``entrypoint.cache`` derives
    them from ``CacheSettings`` so that the cache key cannot drift from the paths.
    """

    vllm_engine_ready_timeout_s: int = Field(600, ge=1)
    vllm_tpu_bucket_padding_gap: int | None = Field(None, ge=0)
    vllm_xla_check_recompilation: bool | None = None
    use_batched_rpa_kernel: bool | None = None
    model_impl_type: str | None = None
    skip_jax_precompile: bool | None = None
    num_precompile_workers: int | None = None
    vllm_cpu_kvcache_space: int | None = None
    vllm_cpu_omp_threads_bind: str | None = None
    vllm_logging_level: str | None = None
    vllm_no_usage_stats: bool = True
    hf_hub_offline: bool | None = None
    otel_exporter_otlp_traces_protocol: Literal["grpc", "http/protobuf"] | None = None

    def as_environ(self) -> dict[str, str]:
        """The set fields as environment strings (booleans as 1/0, unset fields omitted)."""
        out: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            out[name.upper()] = str(int(value)) if isinstance(value, bool) else str(value)
        return out


class CacheSettings(_Slice):
    """Compile cache (hot tmpfs dir + persistent copy) and HF cache locations."""

    model_config = SettingsConfigDict(env_prefix="CACHE_")

    hot_dir: Path = Path(".cache/compile-hot")
    persist_dir: Path | None = Path(".cache/compile-persist")
    hf_dir: Path = Path(".cache/hf")
    tiny_model_dir: Path = Path(".cache/models/tiny-gemma4")


class GatewaySettings(_Slice):
    """The public door: listen address, upstream, admission, validation and auth policy."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    upstream_url: str = ""  # empty: the engine slice's host:port
    # Replicas (env/replicas.py): an explicit list, or a DNS name resolved to all its addresses
    # (a Kubernetes headless Service); neither: ENGINE_REPLICAS ports on ENGINE_HOST.
    upstream_urls: str = ""  # comma-separated engine base URLs
    upstream_dns: str = ""  # e.g. http://engine.default.svc.cluster.local:8000
    dns_refresh_s: float = Field(5.0, gt=0)
    routing: Literal["prefix", "least_loaded", "round_robin", "kv"] = "prefix"
    min_ready_replicas: int = Field(1, ge=1)
    drain_timeout_s: float = Field(30.0, gt=0)
    # A stream whose replica dies after the first byte goes on on another one (gateway/resume/):
    # on (acts with >= 2 replicas) or off; continuations per request; an SSE comment at each.
    resume: Literal["on", "off"] = "on"
    resume_max: int = Field(1, ge=0, le=8)
    resume_comment: bool = False
    # Worker processes on the port (gateway/workers: a supervisor, SO_REUSEPORT); > 1 requires
    # GATEWAY_STATE_URL, which the workers share their limits, warm-up and drains through.
    workers: int = Field(1, ge=1, le=64)
    # >0: also pull each replica's warm-up state from its sidecar (http://<replica host>:<port>
    # /ready), for gateways nobody pushes reports to (several gateway pods on Kubernetes).
    warmup_status_port: int = Field(0, ge=0, le=65535)
    # Auth: keys file (one key or "sha256:<hex>" per line); internal token shared with warm-up.
    api_keys_file: Path | None = None
    internal_token_file: Path = Path(".cache/gateway/internal-token")
    metrics_public: bool = False
    # /docs and /openapi.json (the API's description): on for cpu, off on TPU/GPU profiles.
    docs: bool = False
    # Admission: in-flight cap per replica (0 = ENGINE_MAX_NUM_SEQS), the queue, per-key cap (0 = none).
    max_inflight: int = Field(0, ge=0)
    queue_depth: int = Field(256, ge=0)
    queue_timeout_s: float = Field(30.0, gt=0)
    queue_keepalive_s: float = Field(5.0, ge=0)
    per_key_concurrency: int = Field(0, ge=0)
    max_retry_after_s: int = Field(120, ge=1)
    # Tenants (gateway/tenancy/tenants.py): queue order (fair: priority classes + weighted fair queuing
    # between keys; fifo: arrival order), whether cached prompt tokens count against a key's tpm,
    # how often the keys file is checked for changes (0: SIGHUP only).
    scheduling: Literal["fair", "fifo"] = "fair"
    tpm_cached_tokens: Literal["count", "exclude"] = "count"
    keys_reload_s: float = Field(5.0, ge=0)
    # Engine saturation and health, from the engine's /metrics and /health.
    engine_waiting_threshold: int = Field(4, ge=0)
    kv_usage_threshold: float = Field(0.95, gt=0, le=1)
    metrics_poll_s: float = Field(0.25, gt=0)
    metrics_max_age_s: float = Field(2.0, gt=0)
    health_poll_s: float = Field(1.0, gt=0)
    # Validation policy.
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    default_max_tokens: int = Field(512, ge=1)
    stream_required_prompt_tokens: int = Field(4096, ge=1)
    stream_required_max_tokens: int = Field(1024, ge=1)
    unsupported_sampling: Literal["reject", "strip"] = "reject"
    # HTTP limits per connection (gateway/edge/httpproto.py): request head size, time to receive a
    # head, silence allowed while a body is due.
    max_head_bytes: int = Field(32 * 1024, ge=1024)
    head_timeout_s: float = Field(30.0, gt=0)
    body_timeout_s: float = Field(60.0, gt=0)
    # One access-log line per request (json for log pipelines, text for a terminal, off).
    log_format: Literal["json", "text", "off"] = "json"
    # Upstream timeouts: streams time out on silence, not on total duration.
    connect_timeout_s: float = Field(5.0, gt=0)
    stream_idle_timeout_s: float = Field(120.0, gt=0)
    request_timeout_s: float = Field(600.0, gt=0)
    tokenize_timeout_s: float = Field(10.0, gt=0)
    # Shared state for several gateways (gateway/state/): a Redis URL, or a file holding one
    # (with a password); empty: everything in this process. When it fails: local shares or 503.
    state_url: str = ""
    state_failure: Literal["local", "closed"] = "local"
    state_lease_ttl_s: float = Field(10.0, gt=0)
    state_timeout_s: float = Field(0.25, gt=0)
    # Tracing (gateway/tracing/): an OTLP endpoint (empty: off, the SDK is not loaded), its
    # protocol, and the share of requests without a caller's sampling decision that are traced.
    otel_endpoint: str = ""
    otel_protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    otel_sample_ratio: float = Field(1.0, ge=0, le=1)

    @property
    def url(self) -> str:
        """Where this gateway answers from the same host (loopback for a wildcard bind)."""
        return loopback_url(self.host, self.port)


class WarmupSettings(_Slice):
    """The warm-up sidecar: where it sends traffic, its budget and its stall thresholds."""

    model_config = SettingsConfigDict(env_prefix="WARMUP_")

    budget_s: float = Field(900, gt=0)
    request_timeout_s: float = Field(120, gt=0)
    engine_url: str = ""  # empty: EngineSettings.url
    gateway_url: str = ""  # empty: http://{GATEWAY_HOST or 127.0.0.1}:{GATEWAY_PORT}
    gateway_timeout_s: float = Field(60, gt=0)
    stall_ratio: float = Field(3.0, gt=1)
    stall_min_s: float = Field(2.0, ge=0)
    max_tokens: int = Field(2, ge=1)
    logprobs: int = Field(5, ge=0)  # 0: skip the logprobs and prompt_logprobs steps
    image_shapes: list[tuple[int, int]] | None = None  # None: vision_warmup_config, else default
    system_prompt: str = ""  # empty: no prefix-cache priming step
    report_path: Path = Path(".cache/warmup/report.json")
    cache_save: bool = True
    watch_interval_s: float = Field(5, gt=0)
    # >0: serve the warm-up state on this port (GET /ready: 200 once the engine's current
    # instance passed; GET /livez), for a Kubernetes readinessProbe and pulling gateways.
    status_port: int = Field(0, ge=0, le=65535)
    status_host: str = "127.0.0.1"


class StackSettings(_Slice):
    """Compose-only knobs: what the containers get from Docker, not from the roles.

    Compose reads these from the profile (``--env-file``) to size the tmpfs cache volumes,
    ``/dev/shm`` and the GPU reservation, and to pick the gateway's listen address inside the
    stack. No role reads them at run time; the slice exists so profiles can carry them without
    tripping the unknown-key check, and so a typo'd size fails ``make config``.
    """

    model_config = SettingsConfigDict(env_prefix="STACK_")

    gateway_host: str = "0.0.0.0"
    compile_cache_size: str = Field("2g", pattern=r"^[0-9]+[kmgKMG]?$")
    hf_cache_size: str = Field("1g", pattern=r"^[0-9]+[kmgKMG]?$")
    shm_size: str = Field("1g", pattern=r"^[0-9]+[kmgKMG]?$")
    gpu_count: str = Field("all", pattern=r"^(all|[0-9]+)$")


class OpsSettings(_Slice):
    """The devops MCP server (``python -m ops``): what it reads and whether it may act.

    Empty URLs and paths fall back to the other slices (the gateway's URL and internal token, the
    engine's URL, the warm-up's report), so a profile needs none of these keys. The engine log is
    also read by the entrypoint, which keeps a copy of vLLM's output there.
    """

    model_config = SettingsConfigDict(env_prefix="OPS_")

    host: str = "127.0.0.1"
    port: int = Field(8090, ge=1, le=65535)
    gateway_url: str = ""  # empty: GatewaySettings.url
    engine_urls: str = ""  # comma-separated; empty: EngineSettings.replica_urls
    internal_token_file: Path | None = None  # None: GATEWAY_INTERNAL_TOKEN_FILE
    api_key_file: Path | None = None  # a client key for the gateway's /v1 routes (first line)
    engine_log_file: Path | None = None  # None: <CACHE_HOT_DIR>/engine.log
    bench_dir: Path = Path("results/bench")
    warmup_report: Path | None = None  # None: WARMUP_REPORT_PATH
    allow_actions: bool = False
    request_timeout_s: float = Field(60.0, gt=0)
    window_s: float = Field(300.0, gt=0)  # get_metrics' recent window when none is given

    def engine_log_path(self, cache: CacheSettings) -> Path:
        """Where the entrypoint keeps the engine's output and the ops server reads it."""
        return self.engine_log_file or cache.hot_dir / "engine.log"


class PriceSettings(_Slice):
    """The deployment's on-demand price (USD per hour, whole deployment), for cost estimates."""

    price_per_hour_usd: float | None = Field(None, ge=0)


SLICES: tuple[type[_Slice], ...] = (
    EngineSettings,
    EngineEnv,
    CacheSettings,
    GatewaySettings,
    WarmupSettings,
    StackSettings,
    OpsSettings,
    PriceSettings,
)

# Keys a profile may carry that no slice reads: PROFILE names the file itself (compose reads it).
META_KEYS = frozenset({"PROFILE", "COMPOSE_PROFILES"})


def known_keys() -> set[str]:
    """Every key any role reads."""
    keys: set[str] = set(META_KEYS)
    for cls in SLICES:
        keys |= cls.env_keys()
    return keys


def read_profile(profile: str | os.PathLike[str] | None = None) -> dict[str, str | None]:
    """The raw key/values of a profile file (no environment, no validation)."""
    path = profile_path(profile)
    if not path.is_file():
        raise FileNotFoundError(f"profile not found: {path}")
    return dict(dotenv_values(path))


def unknown_keys(profile: str | os.PathLike[str] | None = None) -> list[str]:
    """Keys in the profile file that no slice reads: almost always a typo."""
    known = known_keys()
    return sorted(k for k in read_profile(profile) if k.upper() not in known)


def validation_problems(profile: str | os.PathLike[str] | None = None) -> list[str]:
    """Type errors of every slice, one line each (``KEY: message``), instead of raising."""
    problems: list[str] = []
    for cls in SLICES:
        try:
            cls.load(profile)
        except ValidationError as exc:
            prefix = cls.model_config.get("env_prefix", "")
            for err in exc.errors():
                field = str(err["loc"][0]) if err["loc"] else "?"
                problems.append(f"{(prefix + field).upper()}: {err['msg']} (got {err['input']!r})")
    return problems
