"""The generation APIs the gateway serves, one module each (vLLM's ``entrypoints/openai/<api>/``
layout): Chat Completions, legacy Completions, OpenAI's Responses and Anthropic's Messages.

They all go the same way through the gateway (validate, count, admit, forward, relay the
engine's bytes). What differs is declared in the API's own module, once: the request schema,
where ``max_tokens`` lives (and so where the default is written and which parameter a context
error names), how the stream ends (``data: [DONE]`` vs a final named event) and frames a terminal
error, where the usage is, what leads the prompt (the routing key) and what ``/tokenize`` must
get to count it. The service, validation, tenancy, routing and the token counter ask ``APIS``.
"""

from __future__ import annotations

from gateway.apis import chat, completions, messages, responses
from gateway.apis.base import OPENAI_STREAM, Api, Kind, StreamFormat

APIS: dict[Kind, Api] = {
    a.kind: a for a in (chat.API, completions.API, responses.API, messages.API)
}

__all__ = ["APIS", "OPENAI_STREAM", "Api", "Kind", "StreamFormat"]
