"""The HTTP API (Starlette). Everything under ``/api/`` but ``/api/health`` needs a bearer token
from ``gateway.api_tokens``; plugin routes elsewhere check their own callers (signatures).

Malformed input is a 4xx with a message, never a 500: bodies, URLs and JSON are bounded at the
edge (core.http_limits: 2 MiB for ``POST /api/alarms``, 64 KiB for every other route, 32 levels
of JSON), every field of a request model has a length limit, and a database that does not answer
is a 503 with ``Retry-After``. A 500 means a bug (or rows the database itself refused) and is
logged with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from . import cluster, http_limits, units
from .alarm_spec import AlarmSpec
from .alarms import utcnow
from .config import join_path
from .errors import Conflict, Invalid, NotFound, Refused, Unavailable
from .gateway import Gateway
from .oncall import OverrideInvalid, parse_when
from .schedules import zone
from .tag_types import TagError, TagNotFound, TagReadOnly

log = logging.getLogger(__name__)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


# Field limits: what a person types (notes), names (users, sources, paths) and lists of them.
# Without them a 10 MB note was stored and then travelled in every webhook body of its alarm.
NOTES = 4000
VALUE_JSON = 4000  # characters of JSON: an event value or one property value
PROPERTIES = 100
LIST = 1000
User = Annotated[str, Field(min_length=1, max_length=200)]
Source = Annotated[str, Field(min_length=1, max_length=500)]
EventId = Annotated[str, Field(min_length=1, max_length=100)]  # ours are 32 hex digits
Notes = Annotated[str, Field(max_length=NOTES)]


def _json_size(value: Any, what: str) -> Any:
    size = len(json.dumps(value, default=str))
    if size > VALUE_JSON:
        raise ValueError(f"{what} is {size} characters of JSON, at most {VALUE_JSON}")
    return value


class ApiAlarm(AlarmSpec):
    """An AlarmSpec as the HTTP API accepts it: AlarmSpec's fields with length limits (the CLI and
    scripts construct AlarmSpec themselves)."""

    notes: Notes = ""
    properties: dict[Annotated[str, Field(min_length=1, max_length=200)], Any] = Field({}, max_length=PROPERTIES)
    pipelines: dict[Annotated[str, Field(max_length=40)], Annotated[str, Field(min_length=1, max_length=200)]] = \
        Field({}, max_length=10)

    @field_validator("event_value")
    @classmethod
    def _event_value(cls, v: Any) -> Any:
        return _json_size(v, "the value")

    @field_validator("properties")
    @classmethod
    def _property_values(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            _json_size(value, f"property {key!r}")
        return v


class RaiseBody(_Body):
    alarms: list[ApiAlarm] = Field(min_length=1, max_length=10000)


class AckBody(_Body):
    user: User
    notes: Notes = ""
    via: str = Field("api", max_length=40)  # the channel, for the audit log (the CLI says "cli")


class AckManyBody(AckBody):
    event_ids: list[EventId] = Field(min_length=1, max_length=LIST)


class ClearBody(_Body):
    user: User | None = None
    notes: Notes = ""
    sources: list[Source] = Field([], max_length=LIST)
    event_ids: list[EventId] = Field([], max_length=LIST)


class ShelveBody(_Body):
    sources: list[Source] = Field(min_length=1, max_length=LIST)
    minutes: float = Field(gt=0, le=60 * 24 * 365)
    user: User | None = None
    notes: Notes = ""


class UnshelveBody(_Body):
    sources: list[Source] = Field(min_length=1, max_length=LIST)
    user: User | None = None


class CancelBody(_Body):
    user: User | None = None


class PinBody(_Body):
    pin: str = Field(min_length=4, max_length=12, pattern=r"^[0-9]+$")


class OverrideBody(_Body):
    user: str = Field(min_length=1, max_length=200)
    covers: str | None = Field(None, min_length=1, max_length=200)
    roster: str | None = Field(None, min_length=1, max_length=200)
    starts: str | None = Field(None, alias="from", max_length=100)  # default: now
    until: str = Field(max_length=100)
    timezone: str = Field("UTC", max_length=100)  # for times written without an offset
    notes: str = Field("", max_length=2000)
    created_by: str | None = Field(None, max_length=200)


class ApiError(Exception):
    def __init__(self, status: int, message: str, fields: list[dict[str, str]] | None = None):
        self.status, self.message, self.fields = status, message, fields or []


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(data, default=str, separators=(",", ":")), status, headers=headers,
                    media_type="application/json")


async def _parse(request: Request, model: type[BaseModel], wrap: str | None = None,
                 warnings: list[str] | None = None) -> Any:
    """The body validated as ``model``. NaN/Infinity, NUL and lone surrogates are normalised
    first (core.http_limits.normalise); what was changed is appended to ``warnings``."""
    raw = await request.body()  # at most the route's body limit (http_limits.RouteGuard)
    try:
        data = http_limits.loads(raw) if raw else {}
    except http_limits.BodyRefused as exc:
        raise ApiError(422, exc.message, [{"path": exc.path, "message": exc.message}])
    if wrap and isinstance(data, dict) and wrap not in data:
        data = {wrap: [data]}  # a single object is accepted where a list is expected
    elif wrap and isinstance(data, list):
        data = {wrap: data}
    # after wrapping, so the notes name the place as the error messages do ("alarms[0].name")
    data = http_limits.normalise(data, warnings if warnings is not None else [])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = []
        for err in exc.errors():
            path = ""
            for part in err["loc"]:
                path = join_path(path, part)
            msg = str(err["ctx"]["error"]) if err["type"] == "value_error" and "ctx" in err else err["msg"]
            fields.append({"path": path, "message": msg})
        summary = "; ".join(f"{f['path']}: {f['message']}" for f in fields)
        raise ApiError(422, f"invalid request: {summary}", fields)


class UnitPerRequest:
    """Each HTTP request (API, console, webhooks) is a unit of work of its own: if the database
    refuses one of its rows, only its rows are refused and only it is answered with the error."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with units.fresh(f"{scope.get('method', '')} {scope.get('path', '')}"):
            await self.app(scope, receive, send)


async def _stored(gw: Gateway) -> None:
    """Wait until the request's changes are durable; 503 when the database does not answer in
    time. Nothing is dropped: the change stays queued and is written when the database returns,
    and repeating the request is safe (raising an active source again returns its event)."""
    try:
        # asyncio.timeout, not wait_for: commit() must run in this request's task, which is how
        # the store tells it that the database refused its rows (Refused)
        async with asyncio.timeout(gw.config.gateway.commit_timeout):
            await gw.store.commit()
    except TimeoutError:
        raise ApiError(503, "the database is not answering; the change is queued and will be stored "
                            "when it returns (repeating this request is safe)")


def _time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(422, f"{name}: expected an ISO 8601 time, got {value!r}",
                       [{"path": name, "message": "expected an ISO 8601 time"}])


Handler = Callable[[Request], Awaitable[Response]]


def _api(fn: Callable[[Gateway, Request], Awaitable[Response]], gw: Gateway) -> Handler:
    async def handler(request: Request) -> Response:
        try:
            return await fn(gw, request)
        except Unavailable as exc:
            return _json(http_limits.unavailable_body(exc), 503,
                         headers={"Retry-After": str(http_limits.RETRY_AFTER)})
        except ApiError as exc:
            retry = {"Retry-After": str(http_limits.RETRY_AFTER)} if exc.status == 503 else None
            return _json({"error": exc.message, "fields": exc.fields}, exc.status, headers=retry)
        except NotFound as exc:
            return _json({"error": str(exc)}, 404)
        except Conflict as exc:
            return _json({"error": str(exc)}, 409)
        except Invalid as exc:
            return _json({"error": str(exc)}, 422)
        except Refused as exc:
            log.error("%s %s: %s", request.method, request.url.path, exc)
            return _json({"error": str(exc)}, 500)
        except Exception:
            # a bug, not the caller's fault: a 500 (never dressed up as a 4xx), with the traceback
            # in the log and JSON for the client
            log.exception("%s %s failed", request.method, request.url.path)
            return _json({"error": "internal error in the gateway (a bug; the gateway log has the details)"},
                         500)
    return handler


# --- handlers -----------------------------------------------------------------------------

async def health(gw: Gateway, request: Request) -> Response:
    """``ok`` only while the database answers: a gateway that cannot store alarms is not healthy.
    It names the node's role (a single node is always the active one), its epoch and lease age;
    ``?role=active`` answers 200 only on the active node, for load balancers."""
    name = gw.config.gateway.name
    node: dict[str, Any] = gw.term.lease.status() if gw.term is not None else {"role": "active", "epoch": None}
    retry = {"Retry-After": str(http_limits.RETRY_AFTER)}
    if not gw.started:
        return _json({"status": "starting", "name": name, **node}, 503 if request.query_params.get("role") else 200,
                     headers=retry)
    problem = await gw.store.ping(timeout=2.0)
    if problem is not None:
        return _json({"status": "degraded", "database": problem, "name": name, **node}, 503, headers=retry)
    if request.query_params.get("role") == "active" and node["role"] != "active":
        return _json({"status": "ok", "name": name, **node, "database": "ok"}, 503, headers=retry)
    return _json({"status": "ok", "name": name, **node, "database": "ok"})


async def cluster_nodes(gw: Gateway, request: Request) -> Response:
    """The nodes of the cluster (PostgreSQL), or this single node."""
    if gw.term is None:
        return _json({"nodes": [], "lease": {"role": "active", "node": gw.config.gateway.name, "epoch": None},
                      "single": True})
    lease = gw.term.lease
    found = await gw.store.read(lambda conn: cluster.nodes(conn, lease.lease), fresh=False)
    return _json({"nodes": found, "lease": lease.status()})


async def raise_alarms(gw: Gateway, request: Request) -> Response:
    warnings: list[str] = []
    body = await _parse(request, RaiseBody, wrap="alarms", warnings=warnings)
    try:
        # answer only once the events are durable; an event the database refused is forgotten
        # again, so a retry of this request raises it anew
        results = await gw.alarms.raise_alarms_stored(body.alarms)
    except TimeoutError:
        raise ApiError(503, "the database is not answering; the alarms are queued and will be stored "
                            "when it returns (repeating this request is safe)")
    created = any(c for _, c in results)
    answer: dict[str, Any] = {"events": [e.to_dict() for e, _ in results], "created": [c for _, c in results]}
    if warnings:
        answer["warnings"] = warnings  # what was normalised to be storable (NaN, NUL, surrogates)
    return _json(answer, 201 if created else 200)


async def list_alarms(gw: Gateway, request: Request) -> Response:
    q = request.query_params
    try:
        events = gw.alarms.query_status(state=q.get("state"), priority=q.get("priority"),
                                 source=q.get("source"), display_path=q.get("displayPath"))
    except ValueError as exc:
        raise ApiError(422, f"priority: {exc}", [{"path": "priority", "message": str(exc)}])
    return _json({"events": [e.to_dict() for e in events]})


async def get_alarm(gw: Gateway, request: Request) -> Response:
    event = await gw.history.find_event(request.path_params["id"])
    return _json(event.to_dict())


async def alarm_trace(gw: Gateway, request: Request) -> Response:
    return _json(await gw.history.story(request.path_params["id"]))


async def ack_one(gw: Gateway, request: Request) -> Response:
    body = await _parse(request, AckBody)
    events = await gw.alarms.acknowledge([request.path_params["id"]], body.user, body.notes, via=body.via)
    await _stored(gw)
    return _json({"events": [e.to_dict() for e in events]})


async def ack_many(gw: Gateway, request: Request) -> Response:
    body = await _parse(request, AckManyBody)
    events = await gw.alarms.acknowledge(body.event_ids, body.user, body.notes, via=body.via)
    await _stored(gw)
    return _json({"events": [e.to_dict() for e in events]})


async def clear_one(gw: Gateway, request: Request) -> Response:
    body = await _parse(request, ClearBody)
    events = await gw.alarms.clear([request.path_params["id"]], body.user, body.notes)
    await _stored(gw)
    return _json({"events": [e.to_dict() for e in events]})


async def clear_many(gw: Gateway, request: Request) -> Response:
    body = await _parse(request, ClearBody)
    if not body.sources and not body.event_ids:
        raise ApiError(422, "give sources or eventIds", [{"path": "sources", "message": "required"}])
    events = []
    if body.sources:
        events += await gw.alarms.clear_sources(body.sources, body.user, body.notes)
    if body.event_ids:
        events += await gw.alarms.clear(body.event_ids, body.user, body.notes)
    await _stored(gw)
    return _json({"events": [e.to_dict() for e in events]})


async def shelve(gw: Gateway, request: Request) -> Response:
    body = await _parse(request, ShelveBody)
    expires = await gw.alarms.shelve(body.sources, body.minutes, body.user, body.notes)
    await _stored(gw)
    return _json({"sources": body.sources, "expiresAt": expires.isoformat()})


async def unshelve(gw: Gateway, request: Request) -> Response:
    body = await _parse(request, UnshelveBody)
    await gw.alarms.unshelve(body.sources, body.user)
    await _stored(gw)
    return _json({"sources": body.sources})


async def shelved(gw: Gateway, request: Request) -> Response:
    return _json({"shelved": gw.alarms.shelved_sources()})


def _limit(q: Any) -> int:
    try:
        limit = int(q.get("limit", 500))
    except ValueError:
        limit = -1
    if limit < 1:
        raise ApiError(422, "limit: expected a number of 1 or more",
                       [{"path": "limit", "message": "expected a number of 1 or more"}])
    return min(limit, 10000)


async def journal(gw: Gateway, request: Request) -> Response:
    q = request.query_params
    rows = await gw.history.journal(event_id=q.get("eventId"), source=q.get("source"),
                            since=_time(q.get("since"), "since"), until=_time(q.get("until"), "until"),
                            limit=_limit(q))
    return _json({"journal": rows})


async def audit(gw: Gateway, request: Request) -> Response:
    q = request.query_params
    rows = await gw.audit.query(user=q.get("user"), code=q.get("code"), event_id=q.get("eventId"),
                                since=_time(q.get("since"), "since"), until=_time(q.get("until"), "until"),
                                limit=_limit(q))
    return _json({"audit": rows})


async def held(gw: Gateway, request: Request) -> Response:
    return _json({"held": gw.delivery.batches.held()})


async def waiting(gw: Gateway, request: Request) -> Response:
    return _json(gw.dispatcher.waiting_report())


async def pipelines(gw: Gateway, request: Request) -> Response:
    return _json({"pipelines": [{
        "name": p.name, "description": p.description, "dropout": sorted(p.dropout),
        "blocks": [{"name": b.name, "type": b.type_name} for b in p.blocks],
        "running": sum(1 for i in gw.engine.live.values() if i.pipeline is p),
        "held": [h for h in gw.delivery.batches.held() if h["pipeline"] == p.name],
    } for p in gw.pipelines.values()]})


async def instances(gw: Gateway, request: Request) -> Response:
    q = request.query_params
    event_id = q.get("eventId")
    if event_id:
        return _json({"instances": await gw.history.instances_of(event_id)})
    items = [i.to_dict() for i in gw.engine.live.values()
             if not q.get("pipeline") or i.pipeline.name == q.get("pipeline")]
    return _json({"instances": items})


async def instance(gw: Gateway, request: Request) -> Response:
    return _json(await gw.history.instance(request.path_params["id"]))


async def cancel_instance(gw: Gateway, request: Request) -> Response:
    body = await _parse(request, CancelBody)
    inst = gw.engine.cancel_running(request.path_params["id"], body.user)
    await _stored(gw)
    return _json(inst.to_dict())


async def plugins(gw: Gateway, request: Request) -> Response:
    return _json({
        "plugins": [vars(p) for p in gw.plugins.info],
        "profileTypes": sorted(gw.plugins.profile_types()),
        "blockTypes": sorted(gw.plugins.block_types()),
    })


async def users(gw: Gateway, request: Request) -> Response:
    return _json({"users": [u.status() for u in gw.directory.users.values()]})


async def user_pin(gw: Gateway, request: Request) -> Response:
    body = await _parse(request, PinBody)
    user = gw.directory.set_pin(request.path_params["username"], body.pin)
    await _stored(gw)
    return _json(user.status())


async def user_unlock(gw: Gateway, request: Request) -> Response:
    user = gw.directory.unlock(request.path_params["username"])
    await _stored(gw)
    return _json(user.status())


async def tags(gw: Gateway, request: Request) -> Response:
    try:
        found = gw.tags.browse(request.query_params.get("path", ""))
    except TagError as exc:
        raise ApiError(422, str(exc), [{"path": "path", "message": str(exc)}])
    return _json({"tags": [t.to_dict() for t in found]})


async def get_tag(gw: Gateway, request: Request) -> Response:
    """One tag; a folder path answers with the tags under it (as ``/api/tags?path=``). A path no
    tag can have (``/api/tags/%20``, over 500 characters) is a 404 that says why."""
    path = request.path_params["path"]
    try:
        return _json(gw.tags.get(path).to_dict())
    except TagNotFound:
        pass
    except TagError as exc:
        raise NotFound(f"no tag {path[:100]!r}: {exc}")
    try:
        under = gw.tags.browse(path)
    except TagError as exc:
        raise NotFound(f"no tag {path[:100]!r}: {exc}")
    if not under:
        raise NotFound(f"no tag {path!r}")
    return _json({"tags": [t.to_dict() for t in under]})


class TagWriteBody(_Body):
    value: Any = None  # bounded by the body limit; the tag's data type checks the rest
    quality: str = Field("Good", max_length=40)


async def write_tag(gw: Gateway, request: Request) -> Response:
    """Write a writable tag (``{"value": ..., "quality": "Good"}``); its alarms follow the value."""
    body = await _parse(request, TagWriteBody)
    path = request.path_params["path"]
    try:
        gw.tags.write(path, body.value, body.quality, external=True)
    except TagNotFound as exc:
        raise NotFound(str(exc))
    except TagReadOnly as exc:
        raise ApiError(403, str(exc))
    except TagError as exc:
        raise ApiError(422, str(exc), [{"path": "value", "message": str(exc)}])
    return _json(gw.tags.get(path).to_dict())


def _zone(name: str, field: str) -> Any:
    try:
        return zone(name)
    except ValueError as exc:
        raise ApiError(422, f"{field}: {exc}", [{"path": field, "message": str(exc)}])


def _when(value: str, tz: Any, field: str) -> datetime:
    try:
        return parse_when(value, tz)
    except ValueError as exc:
        raise ApiError(422, f"{field}: {exc}", [{"path": field, "message": str(exc)}])


async def oncall(gw: Gateway, request: Request) -> Response:
    """Who is on call at ``at`` (default now; without an offset, wall time in ``tz``, default
    UTC), in every roster or in ``roster``, with the reasons."""
    q = request.query_params
    at = _when(q["at"], _zone(q.get("tz", "UTC"), "tz"), "at") if q.get("at") else utcnow()
    resolutions = [gw.oncall.resolve(q["roster"], at)] if q.get("roster") else gw.oncall.who(at)
    return _json({"at": at.isoformat(), "rosters": [r.to_dict() for r in resolutions]})


async def list_overrides(gw: Gateway, request: Request) -> Response:
    return _json({"overrides": [o.to_dict() for o in gw.oncall.overrides()]})


async def add_override(gw: Gateway, request: Request) -> Response:
    body = await _parse(request, OverrideBody)
    tz = _zone(body.timezone, "timezone")
    until = _when(body.until, tz, "until")
    starts = _when(body.starts, tz, "from") if body.starts else None
    try:
        o = gw.oncall.add_override(body.user, until, covers=body.covers, roster=body.roster, starts=starts,
                                   notes=body.notes, created_by=body.created_by)
    except OverrideInvalid as exc:
        raise ApiError(422, f"invalid override: {exc}",
                       [{"path": p or "body", "message": m} for p, m in exc.problems])
    await _stored(gw)
    return _json(o.to_dict(), 201)


async def remove_override(gw: Gateway, request: Request) -> Response:
    o = gw.oncall.remove_override(request.path_params["id"])
    await _stored(gw)
    return _json(o.to_dict())


class BearerAuth:
    """Require a configured bearer token on /api/ (health excepted), and on /metrics unless
    ``gateway.public_metrics`` (Prometheus sends one with ``authorization: {credentials: ...}``)."""

    def __init__(self, app: ASGIApp, tokens: list[str], public_metrics: bool = False):
        self.app = app
        self.tokens = [t.encode() for t in tokens if t]
        self.public_metrics = public_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = get_route_path(scope)  # what routing will match, also under a root path
            guarded = (path.startswith("/api/") and path != "/api/health") or (
                path == "/metrics" and not self.public_metrics)
            if guarded and not self._ok(scope):
                message = ("no API token configured (gateway.api_tokens)" if not self.tokens
                           else "missing or wrong bearer token")
                response = JSONResponse({"error": message}, 401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _ok(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    # compare against every token so timing says nothing about which matched
                    return any([hmac.compare_digest(token.strip(), t) for t in self.tokens])
        return False


def build_app(gw: Gateway, manage_lifecycle: bool = True) -> Starlette:
    def r(path: str, fn: Callable[[Gateway, Request], Awaitable[Response]], methods: list[str],
          body_limit: int = http_limits.BODY_LIMIT) -> Route:
        return http_limits.limit_body(Route(path, _api(fn, gw), methods=methods), body_limit)

    routes: list[BaseRoute] = [
        r("/api/health", health, ["GET"]),
        r("/api/cluster", cluster_nodes, ["GET"]),
        # batches of up to 10,000 alarms: 2 MiB, where every other route takes 64 KiB
        r("/api/alarms", raise_alarms, ["POST"], http_limits.ALARMS_BODY_LIMIT),
        r("/api/alarms", list_alarms, ["GET"]),
        r("/api/alarms/acknowledge", ack_many, ["POST"]),
        r("/api/alarms/clear", clear_many, ["POST"]),
        r("/api/alarms/{id}", get_alarm, ["GET"]),
        r("/api/alarms/{id}/trace", alarm_trace, ["GET"]),
        r("/api/alarms/{id}/acknowledge", ack_one, ["POST"]),
        r("/api/alarms/{id}/clear", clear_one, ["POST"]),
        r("/api/shelve", shelve, ["POST"]),
        r("/api/unshelve", unshelve, ["POST"]),
        r("/api/shelved", shelved, ["GET"]),
        r("/api/journal", journal, ["GET"]),
        r("/api/audit", audit, ["GET"]),
        r("/api/held", held, ["GET"]),
        r("/api/waiting", waiting, ["GET"]),
        r("/api/pipelines", pipelines, ["GET"]),
        r("/api/instances", instances, ["GET"]),
        r("/api/instances/{id}", instance, ["GET"]),
        r("/api/instances/{id}/cancel", cancel_instance, ["POST"]),
        r("/api/plugins", plugins, ["GET"]),
        r("/api/tags", tags, ["GET"]),
        r("/api/tags/{path:path}", get_tag, ["GET"]),
        r("/api/tags/{path:path}", write_tag, ["POST"]),
        r("/api/users", users, ["GET"]),
        r("/api/oncall", oncall, ["GET"]),
        r("/api/overrides", list_overrides, ["GET"]),
        r("/api/overrides", add_override, ["POST"]),
        r("/api/overrides/{id}", remove_override, ["DELETE"]),
        r("/api/users/{username}/pin", user_pin, ["POST"]),
        r("/api/users/{username}/unlock", user_unlock, ["POST"]),
    ]
    for group in gw.hook.annunciator_routes(services=gw.services):
        routes.extend(group or ())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_lifecycle:
            await gw.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await gw.stop()

    # plugin routes get the 64 KiB body limit too, unless they declared their own (limit_body)
    http_limits.guard_routes(routes, http_limits.BODY_LIMIT)
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(UnitPerRequest)
    # added before BearerAuth, so it runs inside it: a caller without a token learns nothing more
    app.add_middleware(http_limits.UrlGuard)
    app.add_middleware(BearerAuth, tokens=gw.config.gateway.api_tokens,
                       public_metrics=gw.config.gateway.public_metrics)
    return app
