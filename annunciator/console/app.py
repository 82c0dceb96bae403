"""The console's pages: one ``Console`` per gateway, its routes mounted under ``/console/``.

Every page calls the gateway in-process (the same calls the JSON API makes), so the console adds
no second path to the alarm state. Live parts of a page (the alarm table, sandbox inboxes) are
server-rendered fragments fetched by ``static/console.js``: escaping stays in one place (Jinja's
autoescape) and the browser never builds HTML from data.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import sqlalchemy as sa
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from annunciator.core import cluster, schema
from annunciator.core.alarms import AlarmEvent, Priority, utcnow
from annunciator.core.errors import Conflict, Invalid, NotFound, Unavailable
from annunciator.core.errors import Refused as StoreRefused
from annunciator.plugins.twilio.service import TwilioService

from .auth import COOKIE, LoginLimiter, Session, Sessions, stored_revocations, verify_password
from .conversations import Conversations
from .settings import ROLE_RANK, ConsoleSettings
from .web import Ctx, Handler, Refused

if TYPE_CHECKING:
    from annunciator.core.notifications import Notification
    from annunciator.core.services import Services

log = logging.getLogger(__name__)

PREFIX = "/console"
STATIC = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    # no inline script or style anywhere: an injected <script> in an alarm name could not run even
    # if escaping were ever missed
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Console:
    def __init__(self, services: Services):
        self.gw = services
        self.settings: ConsoleSettings = services.config.sections.get("console") or ConsoleSettings()
        self.env = Environment(loader=PackageLoader("annunciator.console", "templates"),
                               autoescape=select_autoescape(default=True, default_for_string=True))
        self.env.filters.update(age=age, when=when, secs=secs)
        self.env.globals.update(P=PREFIX, priority_class=priority_class, Priority=Priority)
        limit = self.settings.login_limit
        self.limiter = LoginLimiter(limit.attempts, limit.window)
        self._sessions: Sessions | None = None
        # sign-outs stored before this console started (a restart, a failover): loaded once
        self._revocations_restored = False
        # who was last notified of each open alarm (from the notification hook): "being notified now"
        self.notified: dict[str, dict[str, Any]] = {}
        self.conversations = Conversations(self)

    @property
    def sessions(self) -> Sessions:
        if self._sessions is None:
            if not self.gw.secret:
                raise Refused(503, "the gateway is starting")
            self._sessions = Sessions(self.gw.secret, self.settings.session_lifetime, self.gw.store)
        return self._sessions

    async def restore_revocations(self) -> None:
        """Refuse the cookies of sessions signed out before this console started: at startup
        (plugin.annunciator_startup), else before the first request's session is read (a cluster
        node builds its routes after its gateway started). Until it succeeds every page answers
        503: a signed-out cookie must not work again because the database was slow."""
        if self._revocations_restored:
            return
        sessions = self.sessions
        sessions.restore(await self.gw.store.read(stored_revocations, fresh=False))
        self._revocations_restored = True

    @property
    def secure(self) -> bool:
        if self.settings.secure_cookies is not None:
            return self.settings.secure_cookies
        return (self.gw.config.gateway.external_url or "").startswith("https://")

    def render(self, template: str, **values: Any) -> str:
        return self.env.get_template(template).render(sandbox=bool(self.emulators()), **values)

    # --- plumbing -------------------------------------------------------------------------

    def view(self, fn: Handler, role: str = "viewer", public: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a page: session, role, CSRF on every POST, security headers, the cookie refreshed."""

        async def handler(request: Request) -> Response:
            session: Session | None = None
            try:
                await self.restore_revocations()
                session = self.sessions.load(request.cookies.get(COOKIE))
                username = session.user if session else None
                user = self.settings.users.get(username) if username else None
                if username and user is None:  # removed from the config since: signed out
                    session, username = None, None
                if not public and user is None:
                    if request.method == "GET" and "x-console-fragment" not in request.headers:
                        nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                        return self._headers(RedirectResponse(f"{PREFIX}/login?{urlencode({'next': nxt})}", 303))
                    raise Refused(401 if request.method == "GET" else 403, "sign in first")
                if user is not None and ROLE_RANK[user.role] < ROLE_RANK[role]:
                    raise Refused(403, f"this needs the {role} role; you are {user.role}")
                form = None
                if request.method == "POST":
                    form = await request.form(max_files=0, max_fields=50)
                    token = form.get("csrf") or request.headers.get("x-csrf-token")
                    if session is None or not session.csrf_ok(token if isinstance(token, str) else None):
                        raise Refused(403, "missing or wrong form token (CSRF); reload the page and try again")
                if session is None:
                    session = Session(changed=True)  # anonymous: carries the sign-in form's CSRF token
                ctx = Ctx(self, request, session, username, user, form)
                if user is not None and request.method == "GET" and "x-console-fragment" not in request.headers:
                    ctx.nav = await self.conversations.nav(ctx)
                response = await fn(ctx)
            except (Refused, Unavailable, StoreRefused) as exc:
                # a database that does not answer is a page saying so (503), not a traceback
                if isinstance(exc, Refused):
                    status, message = exc.status, exc.message
                elif isinstance(exc, StoreRefused):
                    status, message = 500, str(exc)
                else:
                    status, message = 503, f"{exc} (nothing was lost; reload the page shortly)"
                ctx = Ctx(self, request, session or Session(), None, None, None)
                if "x-console-fragment" in request.headers:
                    response = HTMLResponse(message, status)
                else:
                    response = HTMLResponse(self.render("error.html", ctx=ctx, status=status,
                                                        message=message), status)
                if status == 503:
                    response.headers["Retry-After"] = "5"
                return self._headers(response)
            if session.changed:
                self.set_cookie(response, session)
            return self._headers(response)

        return handler

    def set_cookie(self, response: Response, session: Session) -> None:
        response.set_cookie(COOKIE, self.sessions.dump(session), max_age=int(self.settings.session_lifetime),
                            path=PREFIX, httponly=True, samesite="strict", secure=self.secure)

    @staticmethod
    def _headers(response: Response) -> Response:
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    def routes(self) -> list[BaseRoute]:
        v = self.view
        return [
            Route(f"{PREFIX}", lambda r: RedirectResponse(f"{PREFIX}/alarms", 303)),
            Route(f"{PREFIX}/", lambda r: RedirectResponse(f"{PREFIX}/alarms", 303)),
            Route(f"{PREFIX}/login", v(self.login_page, public=True), methods=["GET"]),
            Route(f"{PREFIX}/login", v(self.login, public=True), methods=["POST"]),
            Route(f"{PREFIX}/logout", v(self.logout), methods=["POST"]),
            Route(f"{PREFIX}/alarms", v(self.alarms), methods=["GET"]),
            Route(f"{PREFIX}/alarms/rows", v(self.alarm_rows), methods=["GET"]),
            Route(f"{PREFIX}/alarms/{{id}}", v(self.alarm), methods=["GET"]),
            Route(f"{PREFIX}/alarms/{{id}}/ack", v(self.ack, "operator"), methods=["POST"]),
            Route(f"{PREFIX}/alarms/{{id}}/shelve", v(self.shelve, "operator"), methods=["POST"]),
            Route(f"{PREFIX}/alarms/{{id}}/trace", v(self.trace), methods=["GET"]),
            Route(f"{PREFIX}/pipelines", v(self.pipelines), methods=["GET"]),
            Route(f"{PREFIX}/instances/{{id}}/cancel", v(self.cancel, "admin"), methods=["POST"]),
            Route(f"{PREFIX}/unshelve", v(self.unshelve, "operator"), methods=["POST"]),
            Route(f"{PREFIX}/sandbox", v(self.sandbox), methods=["GET"]),
            Route(f"{PREFIX}/sandbox/phones", v(self.sandbox_phones), methods=["GET"]),
            Route(f"{PREFIX}/sandbox/sms", v(self.sandbox_sms, "operator"), methods=["POST"]),
            Route(f"{PREFIX}/sandbox/calls/{{sid}}", v(self.sandbox_call, "operator"), methods=["POST"]),
            Route(f"{PREFIX}/stats", v(self.stats), methods=["GET"]),
            Route(f"{PREFIX}/admin", v(self.admin, "admin"), methods=["GET"]),
            *self.conversations.routes(),
            Mount(f"{PREFIX}/static", app=StaticFiles(directory=STATIC), name="console-static"),
        ]

    async def commit(self) -> None:
        """Answer only once the change is durable, like the JSON API (503 if the database stalls)."""
        try:
            async with asyncio.timeout(self.gw.config.gateway.commit_timeout):  # in this request's task
                await self.gw.store.commit()
        except TimeoutError:
            raise Refused(503, "the database is not answering; the change is queued and will be stored "
                               "when it returns")

    # --- sign-in --------------------------------------------------------------------------

    async def login_page(self, ctx: Ctx) -> Response:
        if ctx.user is not None:
            return RedirectResponse(f"{PREFIX}/alarms", 303)
        return ctx.render("login.html", next=_safe_next(ctx.request.query_params.get("next")))

    async def login(self, ctx: Ctx) -> Response:
        name = ctx.field("username", limit=200).strip()
        password = ctx.field("password", limit=1000)
        nxt = _safe_next(ctx.field("next"))
        address = ctx.request.client.host if ctx.request.client else "?"
        keys = (f"addr:{address}", f"name:{name.lower()}")
        wait = self.limiter.retry_after(*keys)
        if wait > 0:
            # the same answer for every name, existing or not: being limited reveals nothing
            return ctx.render("login.html", 429, next=nxt, username=name,
                              error=f"Too many sign-in attempts. Try again in {math.ceil(wait)} s.")
        user = self.settings.users.get(name)
        # argon2 takes tens of milliseconds on purpose: off the event loop
        ok = await asyncio.to_thread(verify_password, user.password_hash if user else None, password)
        if not ok or user is None:
            self.limiter.failed(*keys)
            self.gw.audit.record("ConsoleSignInFailed", channel="console", contact=address,
                                 details={"name": name[:200]})
            return ctx.render("login.html", 401, next=nxt, username=name, error="Wrong user name or password.")
        self.limiter.succeeded(keys[1])  # not the address: one good account must not reset guessing others
        # a new session id and CSRF token at sign-in (no session fixation)
        ctx.session = Session(user=name, changed=True)
        self.gw.audit.record("ConsoleSignIn", user=name, channel="console", contact=address)
        response = RedirectResponse(nxt or f"{PREFIX}/alarms", 303)
        self.set_cookie(response, ctx.session)
        return response

    async def logout(self, ctx: Ctx) -> Response:
        self.sessions.revoke(ctx.session)
        try:
            await self.commit()  # stored before the answer: a restart right after still refuses it
        except (Refused, StoreRefused) as exc:
            # refused in memory already; signing out must not fail because the database stalls
            log.warning("console: the sign-out of %s is not stored yet: %s", ctx.username,
                        exc.message if isinstance(exc, Refused) else exc)
        response = RedirectResponse(f"{PREFIX}/login", 303)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    # --- alarms ---------------------------------------------------------------------------

    def _filtered(self, ctx: Ctx) -> tuple[list[AlarmEvent], dict[str, str]]:
        q = ctx.request.query_params
        f = {"priority": q.get("priority", ""), "path": q.get("path", "")[:500], "state": q.get("state", "")}
        try:
            min_priority = Priority.parse(f["priority"]) if f["priority"] else None
        except ValueError:
            min_priority, f["priority"] = None, ""
        path = f["path"].strip()
        glob = any(c in path for c in "*?[")
        needle = path.lower()
        out = []
        # one pass over the open events, no copies: stays fast with tens of thousands open
        for e in self.gw.events.values():
            if min_priority is not None and e.priority < min_priority:
                continue
            if (f["state"] == "unacked" and e.acknowledged) or (f["state"] == "active" and not e.active):
                continue
            if f["state"] == "shelved" and not e.shelved:
                continue
            if path:
                if glob:
                    if not (fnmatch.fnmatchcase(e.display_path, path) or fnmatch.fnmatchcase(e.source, path)):
                        continue
                elif needle not in e.display_path.lower() and needle not in e.source.lower():
                    continue
            out.append(e)
        # unacknowledged first, then by priority, newest first: what needs someone is on top
        out.sort(key=lambda e: (e.acknowledged, -int(e.priority), -e.active_time.timestamp()))
        return out, f

    def _page(self, ctx: Ctx) -> dict[str, Any]:
        events, f = self._filtered(ctx)
        size = self.settings.page_size
        pages = max(1, math.ceil(len(events) / size))
        try:
            page = min(max(1, int(ctx.request.query_params.get("page", "1"))), pages)
        except ValueError:
            page = 1
        rows = events[(page - 1) * size: page * size]
        now = utcnow()
        shown = {e.id for e in rows}
        running: dict[str, list[str]] = {}
        for inst in self.gw.engine.live.values():
            if inst.event.id in shown:
                running.setdefault(inst.event.id, []).append(inst.pipeline.name)
        return {"rows": rows, "filters": f, "page": page, "pages": pages, "total": len(events),
                "now": now, "running": running, "notified": self.notified,
                "query": urlencode({k: v for k, v in f.items() if v}),
                "priorities": [p.label for p in Priority]}

    async def alarms(self, ctx: Ctx) -> Response:
        return ctx.render("alarms.html", refresh=self.settings.refresh, **self._page(ctx))

    async def alarm_rows(self, ctx: Ctx) -> Response:
        return ctx.render("alarm_rows.html", **self._page(ctx))

    async def _event(self, event_id: str) -> AlarmEvent:
        try:
            return await self.gw.history.find_event(event_id[:100])
        except NotFound as exc:
            raise Refused(404, str(exc))

    async def alarm(self, ctx: Ctx, error: str = "", status: int = 200) -> Response:
        event = await self._event(ctx.request.path_params["id"])
        journal = await self.gw.history.journal(event_id=event.id, limit=200)
        sms_replies = await self.gw.audit.query(code="SMSReply", event_id=event.id, limit=200)
        shelf = self.gw.alarms.shelves.get(event.source)
        shelved_until = shelf["expires_at"] if shelf and shelf["expires_at"] > utcnow() else None
        return ctx.render("alarm.html", status, event=event, journal=journal, replies=sms_replies,
                          error=error, done=ctx.request.query_params.get("done", ""),
                          notified=self.notified.get(event.id), shelved_until=shelved_until,
                          live=[i for i in self.gw.engine.live.values() if i.event is event], now=utcnow(),
                          dispatch=await self.conversations.dispatch_form(ctx, event),
                          dispatched=ctx.request.query_params.get("dispatched", "")[:10])

    async def ack(self, ctx: Ctx) -> Response:
        event_id = ctx.request.path_params["id"]
        notes = ctx.field("notes", limit=2000)
        try:
            await self.gw.alarms.acknowledge([event_id[:100]], ctx.username or "", notes, via="console")
        except NotFound as exc:
            raise Refused(404, str(exc))
        except (Conflict, Invalid) as exc:
            return await self.alarm(ctx, error=str(exc), status=409 if isinstance(exc, Conflict) else 422)
        await self.commit()
        return RedirectResponse(f"{PREFIX}/alarms/{event_id}?done=acknowledged", 303)

    async def shelve(self, ctx: Ctx) -> Response:
        event = await self._event(ctx.request.path_params["id"])
        try:
            minutes = float(ctx.field("minutes", "15"))
            if not 0 < minutes <= 60 * 24 * 365 or not math.isfinite(minutes):
                raise ValueError
        except ValueError:
            return await self.alarm(ctx, error="Shelve for: expected a number of minutes (up to a year)", status=422)
        await self.gw.alarms.shelve([event.source], minutes, ctx.username, ctx.field("notes"))
        await self.commit()
        return RedirectResponse(f"{PREFIX}/alarms/{event.id}?done=shelved", 303)

    async def unshelve(self, ctx: Ctx) -> Response:
        source = ctx.field("source", limit=500)
        try:
            await self.gw.alarms.unshelve([source], ctx.username)
        except NotFound as exc:
            raise Refused(404, str(exc))
        await self.commit()
        return RedirectResponse(f"{PREFIX}/pipelines", 303)

    async def trace(self, ctx: Ctx) -> Response:
        event_id = ctx.request.path_params["id"][:100]
        try:
            story = await self.gw.history.story(event_id)
        except NotFound as exc:
            raise Refused(404, str(exc))
        event = await self._event(event_id)
        return ctx.render("trace.html", story=story, event=event)

    # --- pipeline status ------------------------------------------------------------------

    async def pipelines(self, ctx: Ctx) -> Response:
        now = utcnow()
        live = sorted(self.gw.engine.live.values(), key=lambda i: i.created)
        size = self.settings.page_size
        pages = max(1, math.ceil(len(live) / size))
        try:
            page = min(max(1, int(ctx.request.query_params.get("page", "1"))), pages)
        except ValueError:
            page = 1
        rows = []
        for inst in live[(page - 1) * size: page * size]:
            branches: list[Any] = list(inst.branches) or [None]
            for b in branches:
                block = inst.pipeline.blocks[b.block] if b is not None else None
                rows.append({"inst": inst, "block": block.name if block else "",
                             "type": block.type_name if block else "",
                             "in_block": (now - b.entered).total_seconds() if b else 0.0,
                             "wake": b.wake_at if b else None, "why": b.why if b else ""})
        return ctx.render("pipelines.html", rows=rows, total=len(live), page=page, pages=pages,
                          held=self.gw.delivery.batches.held(), shelved=self.gw.alarms.shelved_sources(),
                          waiting=self.gw.dispatcher.waiting_report(),
                          pipelines=list(self.gw.pipelines.values()),
                          counts=_count_by(live, lambda i: i.pipeline.name))

    async def cancel(self, ctx: Ctx) -> Response:
        try:
            self.gw.engine.cancel_running(ctx.request.path_params["id"][:100], ctx.username)
        except NotFound as exc:
            raise Refused(404, str(exc))
        await self.commit()
        return RedirectResponse(f"{PREFIX}/pipelines", 303)

    # --- sandbox phones (the Twilio emulator) ------------------------------------------------

    def emulators(self) -> list[Any]:
        service = self.gw.state.get(TwilioService)
        accounts = list(service.accounts.values()) if service is not None else []
        return [a.emulator for a in accounts if a.emulator is not None]

    def _phones(self) -> list[dict[str, Any]]:
        """Every emulated handset worth showing: each person's numbers, then any other number seen."""
        ours = {n for em in self.emulators() for n in em.numbers}
        phones: dict[str, dict[str, Any]] = {}
        for u in sorted(self.gw.users.values(), key=lambda u: u.username):
            for kind in ("sms", "voice", "phone"):
                for number in u.contacts.get(kind, []):
                    phones.setdefault(number, {"number": number, "who": u.name or u.username})
        for em in self.emulators():
            for m in em.messages:
                for n in (m.to, m.from_):
                    if n and n not in ours:
                        phones.setdefault(n, {"number": n, "who": ""})
            for c in em.calls:
                if c.to not in ours:
                    phones.setdefault(c.to, {"number": c.to, "who": ""})
        for p in phones.values():
            n = p["number"]
            p["messages"] = [m for em in self.emulators() for m in em.messages
                             if (m.to == n and m.direction != "inbound" and m.reaches_handset)
                             or (m.from_ == n and m.direction == "inbound")][-50:]
            p["calls"] = [c for em in self.emulators() for c in em.calls if c.to == n][-5:]
        return list(phones.values())

    async def sandbox(self, ctx: Ctx) -> Response:
        if not self.emulators():
            raise Refused(404, "no Twilio account runs on the built-in emulator, so there are no sandbox phones")
        return ctx.render("sandbox.html", phones=self._phones(), refresh=self.settings.refresh)

    async def sandbox_phones(self, ctx: Ctx) -> Response:
        return ctx.render("sandbox_phones.html", phones=self._phones())

    async def sandbox_sms(self, ctx: Ctx) -> Response:
        number, text = ctx.field("number", limit=40), ctx.field("text", limit=1600).strip()
        if not text:
            raise Refused(422, "type a message to send")
        emulators = self.emulators()
        if not emulators:
            raise Refused(404, "no emulated Twilio account")
        # the emulator whose messages reached this phone last, so the reply goes back to that account
        em = next((e for e in reversed(emulators) if any(m.to == number for m in e.messages)), emulators[0])
        phone = em.phone(number)
        try:
            last = phone.messages[-1].from_ if phone.messages else None
            await phone.send_async(text, to=last)
        except Exception as exc:  # the emulator says why (unknown number, gateway not answering)
            raise Refused(422, f"could not send: {exc}")
        return RedirectResponse(f"{PREFIX}/sandbox#phone-{number}", 303)

    async def sandbox_call(self, ctx: Ctx) -> Response:
        sid = ctx.request.path_params["sid"]
        call = next((c for em in self.emulators() for c in em.calls if c.sid == sid), None)
        if call is None:
            raise Refused(404, f"no emulated call {sid!r}")
        digits = "".join(c for c in ctx.field("digits", limit=40) if c in "0123456789*#")
        # the emulator counts each time a call settles (waits for input again, or ends)
        generation = call._generation
        if ctx.field("action") == "hangup" and not call.ended:
            call.command(("end", "completed"))
        elif call.gathering and digits:
            call.command(("digits", digits))
        else:
            raise Refused(409, "the call is not waiting for keys" if not call.gathering else "press some keys")
        # wait (without blocking the loop) for the gateway's answer, so the page shows what follows
        for _ in range(60):
            if call._generation > generation:
                break
            await asyncio.sleep(0.05)
        return RedirectResponse(f"{PREFIX}/sandbox#phone-{call.to}", 303)

    # --- statistics -----------------------------------------------------------------------

    async def stats(self, ctx: Ctx) -> Response:
        tags = self.gw.tags.browse("System/Gateway/Twilio") if _has(self.gw.tags, "System/Gateway/Twilio") else []
        scalars = [t for t in tags if t.data_type != "Dataset"]
        datasets = [t for t in tags if t.data_type == "Dataset"]
        days = 14
        since = utcnow() - timedelta(days=days - 1)
        m = schema.messages

        def load(conn: sa.Connection) -> tuple[Sequence[Any], Sequence[Any]]:
            recent = conn.execute(sa.select(m.c.created, m.c.channel, m.c.direction, m.c.duration)
                                  .where(m.c.created >= since.replace(hour=0, minute=0, second=0, microsecond=0))
                                  .limit(500_000)).all()
            pools = conn.execute(sa.select(m.c.account, m.c.pool, m.c.direction, sa.func.count())
                                 .where(m.c.channel == "sms")
                                 .group_by(m.c.account, m.c.pool, m.c.direction)).all()
            return recent, pools

        recent, pools = await self.gw.store.read(load)
        labels = [(since + timedelta(days=i)).date() for i in range(days)]
        per_day = {d: [0, 0] for d in labels}  # messages, call minutes
        for created, channel, _direction, duration in recent:
            d = created.date()
            if d in per_day:
                if channel == "sms":
                    per_day[d][0] += 1
                elif channel == "voice":
                    per_day[d][1] += math.ceil((duration or 0) / 60)
        usage: dict[tuple[str, str], dict[str, int]] = {}
        for account, pool, direction, count in pools:
            usage.setdefault((account or "", pool or "(no pool)"), {"in": 0, "out": 0})[direction] = int(count)
        return ctx.render("stats.html", scalars=scalars, datasets=datasets,
                          chart=bar_chart([(d.strftime("%m-%d"), v[0], v[1]) for d, v in per_day.items()]),
                          per_day=per_day, usage=sorted(usage.items()))

    # --- admin ----------------------------------------------------------------------------

    async def admin(self, ctx: Ctx) -> Response:
        people = [u.status() for u in sorted(self.gw.users.values(), key=lambda u: u.username)]
        return ctx.render("admin.html", users=sorted(self.settings.users.items()), settings=self.settings,
                          people=people, cluster=await self._cluster(),
                          plugins=self.gw.plugins.info, notices=self.gw.config.notices,
                          profiles=sorted(self.gw.config.profiles), pipelines=sorted(self.gw.pipelines))

    async def _cluster(self) -> dict[str, Any] | None:
        """This node and the cluster's nodes (PostgreSQL); None on a single node."""
        term = self.gw.term
        if term is None:
            return None
        lease = term.lease
        error = ""
        try:
            nodes = await self.gw.store.read(lambda conn: cluster.nodes(conn, lease.lease), fresh=False)
        except Unavailable as exc:  # the rest of the page is still worth showing
            nodes, error = [], str(exc)
        return {"status": lease.status(), "epoch": term.epoch, "nodes": nodes, "error": error}

    # --- hooks ----------------------------------------------------------------------------

    def on_notification(self, notification: Notification, status: str) -> None:
        if status != "sent":
            return
        entry = {"user": notification.user.username, "profile": notification.profile,
                 "contact": notification.contact, "at": utcnow()}
        for e in notification.events:
            self.notified[e.id] = entry
        if len(self.notified) > 2 * max(len(self.gw.events), 1000):  # forget closed alarms now and then
            self.notified = {k: v for k, v in self.notified.items() if k in self.gw.events}


# --- helpers (also template filters) ---------------------------------------------------------

def _has(tags: Any, prefix: str) -> bool:
    try:
        return bool(tags.browse(prefix))
    except Exception:
        return False


def _count_by(items: Any, key: Callable[[Any], str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[key(i)] = out.get(key(i), 0) + 1
    return out


def _safe_next(value: str | None) -> str:
    """Only a console path: a sign-in link must not send anyone to another site."""
    if value and value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return ""


def priority_class(priority: Any) -> str:
    return "p-" + Priority.parse(priority).label.lower()


def secs(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def age(t: datetime | str | None) -> str:
    if t is None:
        return ""
    if isinstance(t, str):
        t = datetime.fromisoformat(t)
    return secs((utcnow() - t).total_seconds())


def when(t: datetime | str | None) -> str:
    if not t:
        return ""
    if isinstance(t, str):
        try:
            parsed = datetime.fromisoformat(t)
        except ValueError:
            return t
    else:
        parsed = t
    offset = parsed.utcoffset()
    return parsed.strftime("%Y-%m-%d %H:%M:%S") + ("Z" if offset is not None and not offset else "")


def bar_chart(points: list[tuple[str, int, int]], width: int = 640, height: int = 180) -> dict[str, Any]:
    """Geometry for a small grouped bar chart drawn as SVG by the template (no script needed):
    messages and call minutes per day, each series scaled to its own maximum."""
    left, bottom, top = 8, 22, 16
    slot = (width - left * 2) / max(len(points), 1)
    bw = max(slot / 2 - 3, 2)
    peak_m = max((p[1] for p in points), default=0) or 1
    peak_c = max((p[2] for p in points), default=0) or 1
    plot = height - bottom - top
    bars = []
    for i, (label, msgs, minutes) in enumerate(points):
        x = left + i * slot
        hm, hc = plot * msgs / peak_m, plot * minutes / peak_c
        bars.append({"label": label, "x": round(x + 2, 1), "lx": round(x + slot / 2, 1), "w": round(bw, 1),
                     "mh": round(hm, 1), "my": round(top + plot - hm, 1), "msgs": msgs,
                     "cx": round(x + 2 + bw + 2, 1), "ch": round(hc, 1), "cy": round(top + plot - hc, 1),
                     "minutes": minutes})
    return {"width": width, "height": height, "bars": bars, "base": top + plot, "peak_m": peak_m if peak_m > 1 else
            max((p[1] for p in points), default=0), "peak_c": max((p[2] for p in points), default=0)}
