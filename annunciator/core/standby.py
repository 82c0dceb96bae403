"""What a node that is not the active one serves: its own health, the cluster's nodes, and every
other request forwarded to the active node (the address in the lease row).

Forwarding, rather than writing through the database for the active to pick up, keeps one path
for every write — the API, the console, Twilio and email webhooks — with the same answer the
active would give: an SMS acknowledgement posted to a standby acknowledges the alarm on the
active, whose pipelines drop out at once. The Host header is kept, so a Twilio signature made for
this node's URL is checked against it; the active accepts signatures for any node of its cluster.
While no node is active (between a crash and a takeover) the answer is 503 with Retry-After: the
request was not applied, and repeating it is safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from . import cluster, http_limits
from .cluster import Lease

log = logging.getLogger(__name__)

FORWARDED = "x-annunciator-forwarded-by"
# hop-by-hop headers (RFC 9110 7.6.1) are the connection's own, never forwarded
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "content-length"}
_BODY_LIMIT = http_limits.ALARMS_BODY_LIMIT + 1024


def unavailable(message: str, retry_after: int = 2) -> Response:
    return JSONResponse({"error": message}, 503, headers={"Retry-After": str(retry_after)})


def health_status(lease: Lease, name: str, starting: bool) -> tuple[dict[str, Any], int]:
    """A standby (or a node becoming active) about itself: 503 while it cannot reach the database."""
    status = "degraded" if lease.db_error is not None else "starting" if starting else "ok"
    body = {"status": status, "name": name, **lease.status(), "database": lease.db_error or "ok"}
    return body, 503 if lease.db_error is not None else 200


def metrics_text(lease: Lease) -> str:
    """A standby's own metrics (the active node's come from its tags exporter)."""
    label = lease.name.replace("\\", "\\\\").replace('"', '\\"')
    active = 1 if lease.valid() else 0
    return (f"# HELP annunciator_cluster_active 1 on the active node of the cluster\n"
            f"# TYPE annunciator_cluster_active gauge\nannunciator_cluster_active{{node=\"{label}\"}} {active}\n"
            f"# HELP annunciator_cluster_epoch the lease epoch this node last saw\n"
            f"# TYPE annunciator_cluster_epoch gauge\nannunciator_cluster_epoch{{node=\"{label}\"}} "
            f"{lease.epoch if active else lease.view.epoch}\n"
            f"# HELP annunciator_cluster_failovers_total terms this node took over from another node\n"
            f"# TYPE annunciator_cluster_failovers_total counter\n"
            f"annunciator_cluster_failovers_total{{node=\"{label}\"}} {lease.failovers}\n")


def build_standby_app(lease: Lease, name: str, starting: Callable[[], bool],
                      read_nodes: Callable[[], Awaitable[list[dict[str, Any]]]],
                      commit_timeout: float = 10.0) -> Starlette:
    # an active that hangs (paused, its machine gone) must cost a caller no more than the active
    # itself would take to answer 503: its commit timeout, and a little for the way there
    client = httpx.AsyncClient(timeout=httpx.Timeout(commit_timeout + 2.0, connect=2.0), follow_redirects=False)

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(metrics_text(lease), media_type="text/plain; version=0.0.4")

    async def health(request: Request) -> Response:
        body, status = health_status(lease, name, starting())
        if request.query_params.get("role") == "active":
            status = 503  # for load balancers: only the active node answers 200
        return JSONResponse(body, status, headers={"Retry-After": "2"} if status == 503 else None)

    async def nodes(request: Request) -> Response:
        try:
            found = await asyncio.wait_for(read_nodes(), lease.lease)
        except Exception as exc:
            return unavailable(f"the database is not answering: {str(exc)[:200]}")
        return JSONResponse({"nodes": found, "lease": lease.status()})

    async def forward(request: Request) -> Response:
        if request.headers.get(FORWARDED):
            return unavailable(f"node {lease.name} is not the active one either (forwarded by "
                               f"{request.headers[FORWARDED]}); try again")
        target = lease.active_address()
        if target is None:
            if lease.role == cluster.ACTIVE:
                return unavailable(f"node {lease.name} is becoming the active one; try again in a moment")
            return unavailable("no gateway of the cluster is active right now (a standby takes over within "
                               f"{lease.lease:g}s); the request was not applied, and repeating it is safe")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _BODY_LIMIT:
                return JSONResponse({"error": f"body over {_BODY_LIMIT} bytes"}, 413)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        client_host = request.client.host if request.client else ""
        prior = request.headers.get("x-forwarded-for")
        headers.append(("x-forwarded-for", f"{prior}, {client_host}" if prior else client_host))
        headers.append((FORWARDED, lease.name))
        url = target.rstrip("/") + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            r = await client.request(request.method, url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("forwarding %s %s to the active node at %s failed: %s",
                        request.method, request.url.path, target, exc)
            return unavailable(f"the active node ({target}) did not answer: {type(exc).__name__}; "
                               "try again")
        out = Response(r.content, r.status_code)
        for k, v in r.headers.multi_items():
            if k.lower() not in _HOP and k.lower() != "content-encoding":
                out.headers.append(k, v)
        out.headers["x-annunciator-served-by"] = lease.view.holder_name or ""
        return out

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[
        Route("/api/health", health, methods=["GET"]),
        Route("/api/cluster", nodes, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/{path:path}", forward, methods=methods),
    ])
