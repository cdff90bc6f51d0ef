"""The engine's error answers, read in one place (the gateway, the warm-up, ``make up``).

vLLM has answered errors in more than one shape over its versions (OpenAI's
``{"error": {"message": ...}}``, its older ``{"message": ...}``, FastAPI's ``{"detail": ...}``);
whoever shows an engine's refusal to a person wants its message, whatever the shape.
"""

from __future__ import annotations

import json


def engine_message(body: bytes | str, limit: int = 500) -> str:
    """The message of an engine's error answer: OpenAI's ``{"error": {"message"}}``, vLLM's
    older ``{"message"}``, else the start of the body as text (the one reader of engine errors,
    shared by the gateway, the warm-up and ``make up``)."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return text[:limit]
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:limit]
        if isinstance(err, str) and err:
            return err[:limit]
        for key in ("message", "detail"):  # vLLM's older shape, FastAPI's
            if data.get(key):
                return str(data[key])[:limit]
    return text[:limit]
