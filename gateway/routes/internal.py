"""Internal endpoints (internal token): the warm-up handshake and the replicas' drain controls.

``/internal/warmup`` (``protocol/handshake.py`` is the contract both sides import): GET returns
the serving state (``?instance=ID``: that engine instance's replica); POST reports a warm-up
result for a named engine instance, applied to the replica running it, and is refused with 409
``stale_engine_instance`` when no replica runs it any more (it restarted since the warm-up began:
the new process has not been warmed).

``/internal/replicas``: GET lists every replica (state, instance, drain flag, in-flight, served);
``POST /internal/replicas/{name}/drain`` takes one out of rotation (its requests finish; poll GET
until its ``inflight`` is 0, then it is safe to stop), ``.../undrain`` puts it back.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import unquote

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from gateway.edge.asgi import read_body
from gateway.edge.web import ORIGINAL_PATH, Parts, internal_token, json_answer
from gateway.errors import OpenAIError, bad_request
from gateway.replicas.core import ReplicaNotFound
from gateway.replicas.health import StaleInstance
from protocol import handshake

REPLICAS_PATH = "/internal/replicas"
ACTIONS = ("drain", "undrain")

router = APIRouter(tags=["internal"], dependencies=[Depends(internal_token)])


@router.get(handshake.PATH, summary="Serving state (of one engine instance with ?instance=)")
async def warmup_state(
    c: Parts,
    instance: Annotated[str | None, Query(description="an engine instance id")] = None,
) -> Response:
    if instance is None:
        snap = c.replicas.health()
        if len(c.replicas.replicas) == 1:
            snap = c.replicas.replicas[0].health.snapshot()
        return json_answer(200, {**snap.as_dict(), **c.replicas.describe()})
    found = c.replicas.instance_state(instance)
    if found is None:
        raise OpenAIError(404, f"no replica runs engine instance {instance}",
                          code="unknown_engine_instance", param="instance")  # fmt: skip
    return json_answer(200, found.as_dict())


@router.post(handshake.PATH, summary="Report a warm-up result for an engine instance")
async def warmup_report(request: Request, c: Parts) -> Response:
    raw = await read_body(request.scope, request.receive, handshake.BODY_MAX)
    try:
        report = handshake.parse_report(raw)
    except handshake.BadReport as exc:
        raise bad_request(exc.message, exc.param, exc.code) from None
    try:
        snap = c.replicas.report_warmup(report.instance, report.status, report.step, report.detail)
    except StaleInstance as exc:
        raise OpenAIError(409, str(exc), code="stale_engine_instance",
                          param="engine_instance") from None  # fmt: skip
    return json_answer(200, snap.as_dict())


@router.get(REPLICAS_PATH, summary="Every replica: state, instance, drain flag, in flight")
async def replicas_list(c: Parts) -> Response:
    return json_answer(200, c.replicas.describe())


@router.post(REPLICAS_PATH + "/{name:path}/{action}", summary="Drain or undrain one replica")
async def replica_action(
    request: Request,
    name: Annotated[str, Path(description="the replica's name (host:port)")],
    action: Annotated[str, Path(description="drain or undrain")],
    c: Parts,
) -> Response:
    if action not in ACTIONS or not name:
        raise _no_action(request)
    try:
        r = c.replicas.set_draining(unquote(name), action == "drain")
    except ReplicaNotFound:
        known = ", ".join(r.name for r in c.replicas.replicas)
        raise OpenAIError(404, f"no replica {unquote(name)!r} (replicas: {known})",
                          code="unknown_replica", param="name") from None  # fmt: skip
    return json_answer(200, r.as_dict())


@router.post(REPLICAS_PATH + "/{rest:path}", include_in_schema=False)
async def replica_no_action(request: Request) -> Response:
    """``POST /internal/replicas/x`` (no action): a 404 that says what exists."""
    raise _no_action(request)


def _no_action(request: Request) -> OpenAIError:
    path = request.scope.get(ORIGINAL_PATH, request.scope["path"])
    return OpenAIError(404, f"no route {path} (POST .../{{name}}/drain or undrain)",
                       code="not_found")  # fmt: skip
