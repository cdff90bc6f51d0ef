"""``/health`` (enough replicas up AND warmed for their instance), ``/livez`` (process),
``/metrics`` (whoever ``Access.may_scrape`` lets in)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.responses import Response

from gateway.edge.web import Answer, Parts, json_answer, scraper
from gateway.metrics import CONTENT_TYPE
from gateway.replicas.health import unavailable

router = APIRouter(tags=["operations"])


@router.get("/health", summary="Serving state: 200 while enough replicas are up and warm")
async def health(c: Parts) -> Response:
    snap = c.replicas.health()
    body = {"status": snap.status_text, **snap.as_dict(), **c.replicas.describe()}
    if c.state is not None:  # GATEWAY_STATE_URL: shared, or the fallback and its reason
        body["shared_state"] = c.state.describe()
    if snap.ready:
        c.metrics.request("health", 200)
        return json_answer(200, body)
    retry = unavailable(snap).retry_after
    c.metrics.request("health", 503)
    return json_answer(503, body, [(b"retry-after", str(retry).encode())])


@router.get("/livez", summary="The gateway process alone")
async def livez() -> Response:
    return json_answer(200, {"status": "ok"})


@router.get("/metrics", summary="Prometheus text", dependencies=[Depends(scraper)])
async def metrics(c: Parts) -> Response:
    page = c.metrics.render()
    if c.metrics.gather is not None:  # GATEWAY_WORKERS > 1: every worker's page, labelled
        page = await c.metrics.gather(page)
    return Answer(200, page, CONTENT_TYPE)
