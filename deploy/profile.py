"""Read a profile file with the standard library only.

``deploy/up.py`` runs on the host of a TPU VM, where the project's venv (pydantic-settings) may
not exist; it only needs a handful of plain ``KEY=VALUE`` lines (ports, timeouts, secret paths),
with the process environment taking precedence exactly as in ``env/settings.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from env.net import loopback_url


def read(path: str | os.PathLike[str]) -> dict[str, str]:
    """``KEY=VALUE`` lines of a dotenv file: comments, blanks and ``export`` ignored, quotes
    stripped. Enough for the keys compose tooling needs (the roles use python-dotenv)."""
    values: dict[str, str] = {}
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


class Profile:
    """A profile file seen through the environment: ``get`` prefers the process environment."""

    def __init__(self, path: str | os.PathLike[str], environ: Mapping[str, str] | None = None):
        self.path = Path(path)
        self.values = read(self.path)
        self.environ = os.environ if environ is None else environ

    def get(self, key: str, default: str = "") -> str:
        return self.environ.get(key) or self.values.get(key) or default

    def number(self, key: str, default: float) -> float:
        try:
            return float(self.get(key, str(default)))
        except ValueError:
            return default

    @property
    def platform(self) -> str:
        return self.get("ENGINE_PLATFORM", "cpu")

    @property
    def gateway_url(self) -> str:
        """Where the stack's gateway answers from this host (loopback for a wildcard bind)."""
        return loopback_url(
            self.get("STACK_GATEWAY_HOST", "0.0.0.0"), self.get("GATEWAY_PORT", "8080")
        )

    def up_timeout_s(self) -> float:
        """Bound for `make up`: engine ready timeout + warm-up budget + image start slack."""
        ready = self.number("VLLM_ENGINE_READY_TIMEOUT_S", 600)
        warm = self.number("WARMUP_BUDGET_S", 900)
        return ready + warm + 120

    def secret_files(self) -> dict[str, Path]:
        """Host files the TPU/GPU compose files mount as secrets (the CPU stack needs none)."""
        if self.platform == "cpu":
            return {}
        return {
            "hf_token (ENGINE_HF_TOKEN_FILE)": Path(
                self.get("ENGINE_HF_TOKEN_FILE", "secrets/hf_token")
            ),
            "api_keys (GATEWAY_API_KEYS_FILE)": Path(
                self.get("GATEWAY_API_KEYS_FILE", "secrets/api_keys")
            ),
        }
