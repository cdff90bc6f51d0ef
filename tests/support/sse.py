"""Reading SSE lines in tests: which ``data:`` events are the gateway's terminal errors."""

from __future__ import annotations

import json


def error_events(lines: list[str]) -> list[str]:
    """The ``data: {"error": ...}`` events among ``lines``.

    Parsed, not substring-matched: the tiny model's random output can contain the token
    ``error`` (e.g. ``"delta":{"reasoning":"error"}``)."""
    found = []
    for line in lines:
        if not line.startswith("data: {"):
            continue
        try:
            event = json.loads(line[6:])
        except ValueError:
            continue
        if isinstance(event, dict) and "error" in event:
            found.append(line)
    return found
