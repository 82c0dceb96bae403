"""Two-way SMS conversations per sender pool, and dispatch SMS from an alarm.

A *pool* here is one sender pool of a Twilio account (``twilio.accounts.A.pools.P``), or the
account's numbers outside any pool (id ``@A``: what a profile without ``pool:`` sends from). A
conversation is every stored SMS (``messages`` rows) between one pool and one of their numbers.

Access, per console user and pool:

* console role ``admin``: pool admin of every pool;
* ``pools: {P: admin}``: pool admin of P: every message of the pool, soft-deleted conversations
  too, CSV export, and clearing the gateway's opt-out record;
* ``pools: {P: user}``: reads the pool's (not deleted) conversations;
* writing (reply, new conversation, delete, dispatch, opt-out override) also needs the console
  role ``operator`` or higher: a viewer with a grant reads only.

Pools without a grant are invisible: not listed, and their URLs answer 403.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from annunciator.core import schema
from annunciator.core.alarms import render_message
from annunciator.core.config import normalize_phone
from annunciator.core.errors import NotFound
from annunciator.plugins.twilio.service import TwilioService

from .web import Ctx, Refused

if TYPE_CHECKING:
    from annunciator.core.alarms import AlarmEvent

    from .app import Console

PREFIX = "/console"
_NUMBER = re.compile(r"^\+?[0-9]{2,20}$")
LIST_LIMIT = 500  # conversations shown per pool
THREAD_LIMIT = 1000  # messages shown in one conversation (the newest)


@dataclass(frozen=True)
class Pool:
    id: str  # URL segment: the pool's name, or "@account" for an account's numbers outside any pool
    account: str
    name: str | None
    numbers: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.name if self.name is not None else f"{self.account} (numbers outside any pool)"

    @property
    def scope(self) -> str:
        from annunciator.plugins.twilio_sms.state import pool_key

        return pool_key(self.account, self.name)

    def where(self, m: sa.Table) -> Any:
        pool = m.c.pool.is_(None) if self.name is None else m.c.pool == self.name
        return sa.and_(m.c.channel == "sms", m.c.account == self.account, pool)


def _twilio_ready(console: Console) -> bool:
    twilio = console.gw.config.sections.get("twilio")
    return console.gw.state.get(TwilioService) is not None or bool(getattr(twilio, "accounts", None))


def csv_cell(value: Any) -> str:
    """A cell a spreadsheet will not run as a formula (=, +, -, @ at the start of a message body)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class Conversations:
    def __init__(self, console: Console):
        self.console = console
        self.gw = console.gw

    # --- pools and access -------------------------------------------------------------------

    async def pools(self) -> list[Pool]:
        if not _twilio_ready(self.console):
            return []
        from annunciator.plugins.twilio.service import twilio_service

        service = twilio_service(self.gw)
        await service.start()
        out: list[Pool] = []
        seen: set[str] = set()
        for account in service.accounts.values():
            for name, numbers in account.settings.pools.items():
                if name not in seen:  # a name used by two accounts: the first account's pool
                    seen.add(name)
                    out.append(Pool(name, account.name, name, tuple(numbers)))
            pooled = {n for nums in account.settings.pools.values() for n in nums}
            out.append(Pool(f"@{account.name}", account.name, None,
                            tuple(n for n in account.numbers if n not in pooled) or tuple(account.numbers)))
        return out

    @staticmethod
    def access(ctx: Ctx, pool: Pool) -> str | None:
        """"admin", "user" or None (no access) for the signed-in console user."""
        if ctx.user is None:
            return None
        if ctx.user.role == "admin":
            return "admin"
        if pool.name is None:
            return None
        return ctx.user.pools.get(pool.name)

    async def visible(self, ctx: Ctx) -> list[tuple[Pool, str]]:
        return [(p, a) for p in await self.pools() if (a := self.access(ctx, p)) is not None]

    async def pool_for(self, ctx: Ctx, pool_id: str, *, write: bool = False, admin: bool = False) -> tuple[Pool, str]:
        pool = next((p for p in await self.pools() if p.id == pool_id), None)
        if pool is None:
            raise Refused(404, f"no sender pool {pool_id[:100]!r}")
        access = self.access(ctx, pool)
        if access is None:
            raise Refused(403, f"you have no access to sender pool {pool.label}")
        if admin and access != "admin":
            raise Refused(403, f"this needs the admin grant of sender pool {pool.label}")
        if write and not ctx.can("operator"):
            raise Refused(403, "sending and changing conversations needs the operator role; "
                               f"you are {ctx.user.role if ctx.user else 'signed out'}")
        return pool, access

    @staticmethod
    def _number(raw: str) -> str:
        if not _NUMBER.match(raw):
            raise Refused(404, "not a phone number")
        return raw

    # --- the nav indicator ----------------------------------------------------------------

    async def nav(self, ctx: Ctx) -> dict[str, Any] | None:
        """Whether to show "Conversations" in the nav, and the unread count of the user's pools."""
        if ctx.user is None or not _twilio_ready(self.console):
            return None
        visible = await self.visible(ctx)
        if not visible:
            return None
        m = schema.messages
        keys = {(p.account, p.name) for p, _ in visible}

        def load(conn: sa.Connection) -> Sequence[Any]:
            return conn.execute(sa.select(m.c.account, m.c.pool, sa.func.count())
                                .where(m.c.channel == "sms", m.c.direction == "in", m.c.read.is_(False),
                                       m.c.deleted.is_(False))
                                .group_by(m.c.account, m.c.pool)).all()

        rows = await self.gw.store.read(load)
        return {"unread": sum(int(n) for a, p, n in rows if (a, p) in keys)}

    async def unread(self, ctx: Ctx) -> Response:
        nav = await self.nav(ctx)
        return ctx.render("conversations_badge.html", nav=nav)

    # --- the list ---------------------------------------------------------------------------

    async def _list(self, ctx: Ctx) -> dict[str, Any]:
        visible = await self.visible(ctx)
        wanted = ctx.request.query_params.get("pool", "")
        shown = [(p, a) for p, a in visible if not wanted or p.id == wanted]
        with_deleted = ctx.request.query_params.get("deleted") == "1"
        m = schema.messages

        def load(conn: sa.Connection) -> list[dict[str, Any]]:
            groups = []
            for pool, access in shown:
                cond = pool.where(m)
                if not (with_deleted and access == "admin"):
                    cond = sa.and_(cond, m.c.deleted.is_(False))
                unread = sa.func.sum(sa.case((sa.and_(m.c.direction == "in", m.c.read.is_(False),
                                                      m.c.deleted.is_(False)), 1), else_=0))
                rows = conn.execute(sa.select(m.c.their_number, sa.func.max(m.c.created), unread,
                                              sa.func.count(), sa.func.min(sa.case((m.c.deleted.is_(False), 0),
                                                                                   else_=1)))
                                    .where(cond).group_by(m.c.their_number)
                                    .order_by(sa.func.max(m.c.created).desc()).limit(LIST_LIMIT)).all()
                last: dict[str, Any] = {}
                numbers = [r[0] for r in rows]
                for i in range(0, len(numbers), 200):
                    chunk = numbers[i:i + 200]
                    for r in conn.execute(sa.select(m.c.their_number, m.c.body, m.c.direction, m.c.created)
                                          .where(cond, m.c.their_number.in_(chunk))
                                          .order_by(m.c.created.desc())):
                        last.setdefault(r.their_number, r)
                groups.append({"pool": pool, "access": access, "conversations": [
                    {"number": num, "at": at, "unread": int(unr or 0), "count": int(count), "deleted": bool(gone),
                     "last": last.get(num), "who": self.who(num)}
                    for num, at, unr, count, gone in rows]})
            return groups

        groups = await self.gw.store.read(load)
        return {"groups": groups, "pools": visible, "wanted": wanted, "with_deleted": with_deleted,
                "any_admin": any(a == "admin" for _, a in visible)}

    def who(self, number: str) -> str:
        for u in self.gw.users.values():
            if number in u.contacts.get("sms", []) or number in u.contacts.get("phone", []):
                return u.display_name
        return ""

    async def index(self, ctx: Ctx) -> Response:
        data = await self._list(ctx)
        q = ctx.request.query_params
        return ctx.render("conversations.html", **data, refresh=self.console.settings.refresh,
                          query=q.get("q", "")[:100], number=q.get("number", "")[:40],
                          matches=self._search(q.get("q", "")), writable=self._writable(ctx, data["pools"]),
                          error="", live_query=str(ctx.request.query_params))

    async def rows(self, ctx: Ctx) -> Response:
        return ctx.render("conversation_list.html", **await self._list(ctx))

    @staticmethod
    def _writable(ctx: Ctx, visible: list[tuple[Pool, str]]) -> list[Pool]:
        return [p for p, _ in visible] if ctx.can("operator") else []

    # --- starting a conversation ------------------------------------------------------------

    def _search(self, query: str) -> list[dict[str, Any]]:
        """Gateway users with an SMS number whose first or last name (or user name) starts with
        ``query``, or whose full name contains it; case-insensitive."""
        q = query.strip().casefold()
        if not q:
            return []
        out = []
        for u in sorted(self.gw.users.values(), key=lambda u: (u.display_name.casefold(), u.username)):
            parts = [w.casefold() for w in (u.name or "").split()] + [u.username.casefold()]
            if not (any(w.startswith(q) for w in parts) or q in (u.name or "").casefold()):
                continue
            numbers = list(dict.fromkeys(u.contacts.get("sms", []) + u.contacts.get("phone", [])))
            if numbers:
                out.append({"user": u, "numbers": numbers})
            if len(out) >= 50:
                break
        return out

    async def start(self, ctx: Ctx) -> Response:
        """The "new conversation" form: a typed number (validated, E.164) opens its conversation."""
        pool, _ = await self.pool_for(ctx, ctx.request.query_params.get("pool", "")[:200], write=True)
        raw = ctx.request.query_params.get("number", "")[:40]
        try:
            number = normalize_phone(raw)
        except ValueError as exc:
            raise Refused(422, str(exc))
        return RedirectResponse(f"{PREFIX}/conversations/{pool.id}/{number}", 303)

    # --- one conversation -------------------------------------------------------------------

    async def _thread(self, ctx: Ctx, pool: Pool, access: str, number: str, mark_read: bool) -> dict[str, Any]:
        from annunciator.plugins.twilio_sms.state import ALL_POOLS, sms_state

        m = schema.messages
        cond = sa.and_(pool.where(m), m.c.their_number == number)
        if access != "admin":
            cond = sa.and_(cond, m.c.deleted.is_(False))

        def load(conn: sa.Connection) -> list[Any]:
            rows = conn.execute(sa.select(m).where(cond).order_by(m.c.created.desc()).limit(THREAD_LIMIT)).all()
            return list(reversed(rows))

        messages = await self.gw.store.read(load)
        if mark_read:
            unread = [r.id for r in messages if r.direction == "in" and not r.read and not r.deleted]
            for row_id in unread:
                self.gw.store.update(schema.messages, row_id, {"read": True})
            if unread:
                await self.console.commit()
        state = sms_state(self.gw)
        await state.load()
        return {"pool": pool, "access": access, "number": number, "messages": messages, "who": self.who(number),
                "opted_out": state.opted_out(number, pool.scope),
                "opted_out_everywhere": state.opted.get((number, ALL_POOLS), False),
                "deleted": bool(messages) and all(r.deleted for r in messages)}

    async def thread(self, ctx: Ctx, error: str = "", status: int = 200, text: str = "") -> Response:
        pool, access = await self.pool_for(ctx, ctx.request.path_params["pool"])
        number = self._number(ctx.request.path_params["number"])
        data = await self._thread(ctx, pool, access, number, mark_read=True)
        return ctx.render("conversation.html", status, **data, error=error, text=text,
                          done=ctx.request.query_params.get("done", "")[:40],
                          refresh=self.console.settings.refresh)

    async def thread_messages(self, ctx: Ctx) -> Response:
        pool, access = await self.pool_for(ctx, ctx.request.path_params["pool"])
        number = self._number(ctx.request.path_params["number"])
        data = await self._thread(ctx, pool, access, number, mark_read=True)
        return ctx.render("conversation_messages.html", **data)

    async def send(self, ctx: Ctx) -> Response:
        from annunciator.plugins.twilio_sms.sender import send_sms
        from annunciator.plugins.twilio_sms.state import sms_state

        pool, _ = await self.pool_for(ctx, ctx.request.path_params["pool"], write=True)
        number = self._number(ctx.request.path_params["number"])
        text = ctx.field("text", limit=1600).strip()
        if not text:
            return await self.thread(ctx, error="Type a message to send.", status=422)
        state = sms_state(self.gw)
        await state.load()
        if state.opted_out(number, pool.scope):
            self.gw.audit.record("SMSRefused", user=ctx.username, channel="console", contact=number,
                                 text=f"opted out of SMS from {pool.label}", details={"pool": pool.id})
            await self.console.commit()
            return await self.thread(ctx, status=409, text=text, error=(
                f"{number} has opted out of SMS from {pool.label} (replied STOP): nothing was sent. "
                "They can opt in again by sending START."))
        who = self._user_of(number)
        try:
            result = await send_sms(self.gw, number, text, account=pool.account, pool=pool.name,
                                    username=who.username if who else None)
        except LookupError as exc:  # no sender numbers in the pool
            return await self.thread(ctx, status=409, text=text, error=f"Not sent: {exc}")
        if not result.ok:
            await self.console.commit()
            return await self.thread(ctx, status=502 if result.retryable else 409, text=text,
                                     error=f"Not sent: {result.error}")
        self.gw.audit.record("ConsoleSMSSent", user=ctx.username, channel="console", contact=number, text=text,
                             details={"pool": pool.id, "messageSid": result.provider_id})
        await self.console.commit()
        return RedirectResponse(f"{PREFIX}/conversations/{pool.id}/{number}?done=sent", 303)

    def _user_of(self, number: str) -> Any:
        return next((u for u in self.gw.users.values()
                     if number in u.contacts.get("sms", []) or number in u.contacts.get("phone", [])), None)

    async def delete(self, ctx: Ctx) -> Response:
        pool, _ = await self.pool_for(ctx, ctx.request.path_params["pool"], write=True)
        number = self._number(ctx.request.path_params["number"])
        m = schema.messages

        def load(conn: sa.Connection) -> list[str]:
            return list(conn.execute(sa.select(m.c.id).where(pool.where(m), m.c.their_number == number,
                                                             m.c.deleted.is_(False))).scalars())

        ids = await self.gw.store.read(load)
        for row_id in ids:
            self.gw.store.update(schema.messages, row_id, {"deleted": True})
        self.gw.audit.record("ConversationDeleted", user=ctx.username, channel="console", contact=number,
                             text=f"{len(ids)} messages of sender pool {pool.label}",
                             details={"pool": pool.id, "account": pool.account, "messages": len(ids)})
        await self.console.commit()
        return RedirectResponse(f"{PREFIX}/conversations?done=deleted", 303)

    async def export(self, ctx: Ctx) -> Response:
        pool, access = await self.pool_for(ctx, ctx.request.path_params["pool"], admin=True)
        number = self._number(ctx.request.path_params["number"])
        data = await self._thread(ctx, pool, access, number, mark_read=False)
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["created", "direction", "our_number", "their_number", "user", "body", "status", "error",
                    "event_ids", "deleted", "message_sid"])
        for r in data["messages"]:
            created = r.created.isoformat() if isinstance(r.created, datetime) else r.created
            w.writerow([created, r.direction, r.our_number, r.their_number, r.username or "", csv_cell(r.body),
                        r.status or "", csv_cell(r.error), " ".join(r.event_ids or []), r.deleted,
                        r.provider_id or ""])
        self.gw.audit.record("ConversationExported", user=ctx.username, channel="console", contact=number,
                             details={"pool": pool.id, "messages": len(data["messages"])})
        await self.console.commit()
        name = f"conversation-{pool.id.lstrip('@')}-{number.lstrip('+')}.csv"
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    async def clear_opt_out(self, ctx: Ctx) -> Response:
        """Clears the gateway's own opt-out record. Twilio keeps refusing messages from a sender
        the number sent STOP to until it sends START; the page says so."""
        from annunciator.plugins.twilio_sms.state import ALL_POOLS, sms_state

        pool, _ = await self.pool_for(ctx, ctx.request.path_params["pool"], write=True, admin=True)
        number = self._number(ctx.request.path_params["number"])
        reason = ctx.field("reason", limit=500).strip()
        if not reason:
            return await self.thread(ctx, status=422, error="Say why the opt-out is overridden (it is audited).")
        state = sms_state(self.gw)
        await state.load()
        cleared = []
        if state.opted.get((number, pool.scope)):
            state.set_opt_out(number, pool.scope, False, "console override")
            cleared.append(pool.scope)
        kept = ""
        if state.opted.get((number, ALL_POOLS)):
            if ctx.user is not None and ctx.user.role == "admin":  # STOPALL covers pools this user may not admin
                state.set_opt_out(number, ALL_POOLS, False, "console override")
                cleared.append(ALL_POOLS)
            else:
                kept = " The opt-out of all pools (STOPALL) stays: only a console admin can clear it."
        if not cleared:
            return await self.thread(ctx, status=409, error="There is no opt-out of this pool to clear." + kept)
        self.gw.audit.record("OptOutOverride", user=ctx.username, channel="console", contact=number, text=reason,
                             details={"pool": pool.id, "scopes": cleared,
                                      "note": "gateway record only; Twilio blocks the sender until START"})
        await self.console.commit()
        return RedirectResponse(f"{PREFIX}/conversations/{pool.id}/{number}?done=optout-cleared", 303)

    # --- dispatch SMS from an alarm ---------------------------------------------------------

    async def dispatch_form(self, ctx: Ctx, event: AlarmEvent) -> dict[str, Any] | None:
        if not ctx.can("operator") or not _twilio_ready(self.console):
            return None
        pools = [p for p, _ in await self.visible(ctx)]
        if not pools:
            return None
        people = [u for u in sorted(self.gw.users.values(), key=lambda u: u.display_name.casefold())
                  if u.contacts.get("sms") or u.contacts.get("phone")]
        rosters = sorted(self.gw.config.settings.rosters)
        return {"pools": pools, "people": people, "rosters": rosters,
                "text": render_message(self.console.settings.dispatch_template, event.template_values())}

    async def dispatch(self, ctx: Ctx) -> Response:
        from annunciator.plugins.twilio_sms.sender import send_sms
        from annunciator.plugins.twilio_sms.state import sms_state


        try:
            event = await self.gw.history.find_event(ctx.request.path_params["id"][:100])
        except NotFound as exc:
            raise Refused(404, str(exc))
        pool, _ = await self.pool_for(ctx, ctx.field("pool", limit=200), write=True)
        text = ctx.field("text", limit=1600).strip()
        to = ctx.field("to", limit=300)
        if not text:
            return await self.console.alarm(ctx, error="Dispatch SMS: type a message.", status=422)
        kind, _, name = to.partition(":")
        if kind == "user" and name in self.gw.users:
            usernames = [name]
        elif kind == "roster" and name in self.gw.config.settings.rosters:
            usernames = self.gw.resolve_roster(name, event).users
        else:
            return await self.console.alarm(ctx, error="Dispatch SMS: choose a person or a roster.", status=422)
        state = sms_state(self.gw)
        await state.load()
        sent, problems = [], []
        for username in usernames:
            user = self.gw.users[username]
            number = next(iter(user.contacts.get("sms", []) + user.contacts.get("phone", [])), None)
            if number is None:
                problems.append(f"{user.display_name}: no SMS number")
                continue
            if state.opted_out(number, pool.scope):
                problems.append(f"{user.display_name} ({number}) has opted out of SMS from {pool.label}; not sent")
                continue
            try:
                result = await send_sms(self.gw, number, text, account=pool.account, pool=pool.name,
                                        username=username, event_ids=[event.id])
            except LookupError as exc:
                problems.append(f"{user.display_name}: {exc}")
                continue
            if result.ok:
                sent.append(number)
            else:
                problems.append(f"{user.display_name} ({number}): {result.error}")
        self.gw.audit.record("SMSDispatched", user=ctx.username, channel="console", contact=" ".join(sent)[:500],
                             text=text, event_ids=[event.id],
                             details={"pool": pool.id, "to": to, "sent": sent, "problems": problems})
        await self.console.commit()
        if problems:
            what = f"Dispatch SMS sent to {len(sent)} of {len(sent) + len(problems)}. " + "; ".join(problems)
            return await self.console.alarm(ctx, error=what, status=200 if sent else 409)
        return RedirectResponse(f"{PREFIX}/alarms/{event.id}?dispatched={len(sent)}", 303)

    # --- routes -----------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        v = self.console.view
        base = f"{PREFIX}/conversations"
        one = f"{base}/{{pool}}/{{number}}"
        return [
            Route(base, v(self.index), methods=["GET"]),
            Route(f"{base}/rows", v(self.rows), methods=["GET"]),
            Route(f"{base}/unread", v(self.unread), methods=["GET"]),
            Route(f"{base}/new", v(self.start), methods=["GET"]),
            Route(one, v(self.thread), methods=["GET"]),
            Route(f"{one}/messages", v(self.thread_messages), methods=["GET"]),
            Route(f"{one}/export.csv", v(self.export), methods=["GET"]),
            Route(f"{one}/send", v(self.send, "operator"), methods=["POST"]),
            Route(f"{one}/delete", v(self.delete, "operator"), methods=["POST"]),
            Route(f"{one}/opt-out/clear", v(self.clear_opt_out, "operator"), methods=["POST"]),
            Route(f"{PREFIX}/alarms/{{id}}/dispatch", v(self.dispatch, "operator"), methods=["POST"]),
        ]
