"""What the SMS side remembers: conversations, opt-outs, PIN sessions, who was last notified of
what, and message counts. Everything that must survive a restart is stored; the rest is rebuilt
from the stored rows at start."""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from annunciator.core import schema
from annunciator.core.alarms import new_id, utcnow
from annunciator.plugins.twilio.pin_sessions import pin_sessions
from annunciator.plugins.twilio.stats import twilio_stats

if TYPE_CHECKING:
    from annunciator.core.services import Services

ALL_POOLS = "*"
_SEEN_SIDS = 10_000  # replayed webhooks come within minutes; older ones are found in the table


@dataclass
class Latest:
    """The last alarm notification sent to a person by SMS: a bare PIN acknowledges these."""

    event_ids: list[str]
    notification_id: str | None
    pipeline: str | None
    block: str | None
    our_number: str


class SmsState:
    def __init__(self, services: Services):
        self.services = services
        self.pins = pin_sessions(services)  # shared with voice calls
        self.opted: dict[tuple[str, str], bool] = {}  # (number, scope) -> opted out now
        self.greeted: set[tuple[str, str]] = set()  # (pool key, number) that had a first message
        self.last_sender: dict[str, str] = {}  # their number -> our number it last heard from
        self.latest: dict[str, Latest] = {}
        # sends that timed out: Twilio may have created them all the same (see sender.send_sms)
        self.unsure: dict[str, tuple[str, str | None, datetime]] = {}
        self.notified: dict[str, set[str]] = {}  # username -> events sent to them (ACK ALL)
        self.error_replies: Counter[str] = Counter()  # their number -> help/error replies since a valid one
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.loaded = False

    async def load(self) -> None:
        if self.loaded:
            return
        await self.pins.load()
        m, o, n = schema.messages, schema.opt_outs, schema.notifications

        newest = (sa.select(m.c.username, sa.func.max(m.c.created).label("created"))
                  .where(m.c.direction == "out", m.c.channel == "sms", m.c.notification_id.is_not(None))
                  .group_by(m.c.username).subquery())

        def read(conn: sa.Connection) -> dict[str, Any]:
            return {
                "opt": conn.execute(sa.select(o.c.number, o.c.scope, o.c.active)).all(),
                "pairs": conn.execute(sa.select(m.c.pool, m.c.account, m.c.their_number, m.c.our_number,
                                                sa.func.max(m.c.created))
                                      # TwiML answers ("Wrong PIN.") are no first message of a pool
                                      .where(m.c.direction == "out", m.c.channel == "sms",
                                             sa.or_(m.c.status.is_(None), m.c.status != "twiml"))
                                      .group_by(m.c.pool, m.c.account, m.c.their_number, m.c.our_number)).all(),
                # Twilio retries a webhook within minutes: a day of inbound ids recognises any replay
                "recent": conn.execute(sa.select(m.c.id).where(
                    m.c.direction == "in", m.c.channel == "sms",
                    m.c.created >= utcnow() - timedelta(days=1)).order_by(m.c.created)).scalars().all(),
                # only each person's newest alarm SMS: start-up must not read the whole history
                "latest": conn.execute(sa.select(m.c.username, m.c.event_ids, m.c.notification_id, m.c.our_number,
                                                 n.c.pipeline, n.c.block, m.c.created)
                                       .join(n, n.c.id == m.c.notification_id)
                                       .join(newest, sa.and_(newest.c.username == m.c.username,
                                                             newest.c.created == m.c.created))
                                       .where(m.c.direction == "out", m.c.channel == "sms")
                                       .order_by(m.c.created)).all(),
            }

        data = await self.services.store.read(read)
        self.opted = {(num, scope): active for num, scope, active in data["opt"]}
        for pool, account, their, our, _ in sorted(data["pairs"], key=lambda r: r[4]):
            # as the sender keys it: the send's pool when it named one, else the number's own
            self.greeted.add((pool_key(account, pool) if pool else self.scopes_of(our or "")[0], their))
            self.last_sender[their] = our
        for sid in data["recent"][-_SEEN_SIDS:]:
            self.seen[sid] = None
        for username, event_ids, nid, our, pipeline, block, _ in data["latest"]:
            if username:
                self.latest[username] = Latest(list(event_ids or []), nid, pipeline, block, our)
        self.loaded = True

    # --- opt-out --------------------------------------------------------------------------

    def opted_out(self, number: str, scope: str) -> bool:
        return self.opted.get((number, ALL_POOLS), False) or self.opted.get((number, scope), False)

    def set_opt_out(self, number: str, scope: str, active: bool, source: str) -> None:
        key = (number, scope)
        now = utcnow()
        row_id = f"{number}|{scope}"
        if key in self.opted:
            self.services.store.update(schema.opt_outs, row_id, {"active": active, "source": source, "updated": now})
        else:
            self.services.store.insert(schema.opt_outs, {"id": row_id, "number": number, "scope": scope,
                                                        "active": active, "source": source, "created": now,
                                                        "updated": now})
        self.opted[key] = active

    async def opt_out_rows(self) -> list[dict[str, Any]]:
        """The stored opt-out rows (number, scope, source, when), for listing them."""
        o = schema.opt_outs
        return await self.services.store.read(
            lambda conn: [dict(r._mapping) for r in conn.execute(sa.select(o).where(o.c.active.is_(True)))])

    def scopes_of(self, our: str) -> list[str]:
        """The opt-out scopes of our number ``our`` (see sender_scopes)."""
        from annunciator.plugins.twilio.service import twilio_service

        service = twilio_service(self.services)
        account = service.owner_of(our)
        if account is not None:
            return sender_scopes(account.name, account.settings.pools, our)
        settings = service.settings.accounts  # not started yet: the configured numbers
        name = next((n for n, a in settings.items() if our in a.numbers), None)
        return sender_scopes(name, settings[name].pools if name else {}, our)

    def opt_out_of(self, their: str, our: str, source: str) -> list[str]:
        """``their`` sent STOP to ``our`` (or Twilio refused a send from it): every scope of ``our``."""
        scopes = self.scopes_of(our)
        for scope in scopes:
            self.set_opt_out(their, scope, True, source)
        return scopes

    def opted_out_of(self, their: str, our: str) -> bool:
        return any(self.opted_out(their, s) for s in self.scopes_of(our))

    def opt_in(self, their: str, our: str) -> None:
        """START to ``our``: back in for its scopes, and out of STOPALL; other pools stay stopped."""
        for scope in [*self.scopes_of(our), ALL_POOLS]:
            if self.opted.get((their, scope)):
                self.set_opt_out(their, scope, False, "keyword")

    # --- PIN sessions ---------------------------------------------------------------------

    def in_session(self, username: str) -> bool:
        return self.pins.active(username)

    def open_session(self, username: str, length: float) -> None:
        self.pins.open(username, length)

    # --- conversations --------------------------------------------------------------------

    def seen_before(self, sid: str) -> bool:
        if sid in self.seen:
            return True
        self.seen[sid] = None
        if len(self.seen) > _SEEN_SIDS:
            self.seen.popitem(last=False)
        return False

    def record(self, direction: str, *, our: str | None, their: str, body: str, sid: str | None = None,
               username: str | None = None, status: str | None = None, account: str | None = None,
               pool: str | None = None, event_ids: list[str] | None = None,
               notification_id: str | None = None, error: str | None = None, at: datetime | None = None) -> str:
        now = at or utcnow()
        row_id = sid or new_id()
        self.services.store.insert(schema.messages, {
            "id": row_id, "channel": "sms", "direction": direction, "provider_id": sid, "account": account,
            "pool": pool, "our_number": our, "their_number": their, "username": username, "body": body,
            "status": status, "error": error, "event_ids": event_ids or [], "notification_id": notification_id,
            "created": now, "updated": now, "read": direction == "out", "deleted": False})
        twilio_stats(self.services).count("sms", direction, username)
        if direction == "out" and our:
            self.last_sender[their] = our
        return row_id

    def update_status(self, sid: str, status: str, error: str | None) -> None:
        self.services.store.update(schema.messages, sid, {"status": status, "error": error, "updated": utcnow()})


def pool_key(account: str | None, pool: str | None) -> str:
    return f"{account or ''}/{pool or ''}"


def sender_scopes(account: str | None, pools: Mapping[str, list[str]], number: str) -> list[str]:
    """The opt-out scopes a sending number speaks for: every pool it is in, else the numbers of its
    account in no pool; a number no account owns, every sender (a STOP to it must still count)."""
    if account is None:
        return [ALL_POOLS]
    return [pool_key(account, p) for p, nums in pools.items() if number in nums] or [pool_key(account, None)]


def sms_state(services: Services) -> SmsState:
    return services.state.setdefault(SmsState, lambda: SmsState(services))
