"""Inbound SMS webhooks: replies that acknowledge by PIN, commands, opt-out, and delivery reports.

Every request must carry a valid ``X-Twilio-Signature`` for the gateway's public URL, or it is
answered 403 and changes nothing. A replayed ``MessageSid`` is answered and changes nothing twice.
Replies are TwiML ``<Response><Message>``; the number of help/error replies a number gets is
bounded, so two robots cannot text each other forever.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from twilio.twiml.messaging_response import MessagingResponse

from annunciator.core import schema
from annunciator.core.alarms import AlarmEvent
from annunciator.core.audit import Code
from annunciator.core.errors import Invalid, NotFound
from annunciator.core.users import PinResult, User, mask_pins, pin_matches
from annunciator.plugins.twilio.service import twilio_service
from annunciator.plugins.twilio.webhooks import verified_form

from .replies import Reply, parse_reply
from .state import ALL_POOLS, SmsState, sms_state

if TYPE_CHECKING:
    from annunciator.core.services import Services

    from .profile import TwilioSmsProfile

log = logging.getLogger(__name__)

HELP_TEXT = ("Reply with your PIN to acknowledge the last alarm; ACK 12 PIN for alarm #12; ACK ALL PIN; "
             "STATUS. STOP to opt out of this number, STOPALL of all, START to opt back in.")
# for a number that is not a registered user's (sendMessage reaches anyone): what the texts are
# and how to stop them, as carriers require
GENERIC_HELP = ("Alarm notifications from {name}. Reply STOP to opt out of this number, STOPALL to opt out "
                "of all, START to opt back in.")
HELP_SHELVE = " TEST source minutes / UNTEST source to put a source on test."
UNKNOWN_SENDER = "This number is not registered with the alarm system."


# characters XML 1.0 cannot carry even escaped (C0 controls but tab/newline/CR, lone surrogates,
# U+FFFE/U+FFFF): an answer echoing one (e.g. "TEST a\x01b") would not be TwiML at all
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _twiml(text: str | None) -> Response:
    r = MessagingResponse()
    if text:
        r.message(_NOT_XML.sub("\ufffd", text))
    return Response(str(r), media_type="text/xml")


class InboundSms:
    def __init__(self, services: Services):
        self.services = services

    def routes(self) -> list[Route]:
        return [Route("/twilio/sms", self.inbound, methods=["POST"]),
                Route("/twilio/sms/status", self.status, methods=["POST"])]

    async def _verified_form(self, request: Request) -> dict[str, str] | Response:
        return await verified_form(self.services, request)

    # --- delivery reports -----------------------------------------------------------------

    async def status(self, request: Request) -> Response:
        params = await self._verified_form(request)
        if isinstance(params, Response):
            return params
        sid, status = params.get("MessageSid"), params.get("MessageStatus") or params.get("SmsStatus")
        if not sid or not status:
            return Response("MessageSid and MessageStatus are required\n", status_code=400)
        code = params.get("ErrorCode") or None
        error = f"Twilio error {code}" if code else None
        state = sms_state(self.services)
        state.update_status(sid, status, error)
        if code == "21610" and params.get("To"):
            # Twilio's opt-out is per sender: the pools of the number that tried, not every pool
            if params.get("From"):
                state.opt_out_of(params["To"], params["From"], "provider")
            else:
                state.set_opt_out(params["To"], ALL_POOLS, True, "provider")
        await self.services.delivery.delivery_status(sid, status, error)
        await self.services.store.commit(timeout=self.services.store.read_timeout)
        return Response(status_code=204)

    # --- inbound messages -----------------------------------------------------------------

    async def inbound(self, request: Request) -> Response:
        params = await self._verified_form(request)
        if isinstance(params, Response):
            return params
        missing = [k for k in ("MessageSid", "From", "To") if not params.get(k)]
        if missing or "Body" not in params:
            return Response(f"missing {', '.join(missing or ['Body'])}\n", status_code=400)
        gw = self.services
        state = sms_state(gw)
        await state.load()
        sid, their, our, body = params["MessageSid"], params["From"], params["To"], params["Body"]
        # PostgreSQL text cannot hold NUL: one in a stored body would fail the whole group commit
        body = body.replace("\x00", "")
        if state.seen_before(sid) or await self._stored_long_ago(sid):
            return _twiml(None)  # a replay: answered, nothing done twice
        profile = self._profile_for(our)
        service = twilio_service(gw)
        account = service.owner_of(our)
        pool = service.pool_of(account, our) if account else None
        reply = parse_reply(body)
        user = self._sender(their, reply, state)
        # a PIN is a secret: it is never stored, in the conversation or in the audit log
        kept = mask_pins(body)
        state.record("in", our=our, their=their, body=kept, sid=sid, username=user.username if user else None,
                     status="received", account=account.name if account else None, pool=pool)
        conversation = Conversation(gw, state, profile, user, their, our)
        if conversation.keyword(reply) is None:  # a keyword is logged once, under its own code
            # a reply is logged against the alarms the conversation's latest message was about
            # (an alarm notification, or an SMS dispatched from an alarm in the console)
            gw.audit.record(Code.SMS_REPLY, user=user.username if user else None,
                            channel=profile.name if profile else "sms", contact=their, text=kept[:1600],
                            details={"messageSid": sid, "to": our}, event_ids=await self._about(their, our))
        text = await conversation.answer(reply)
        if text and reply.kind not in ("help", "start") and state.opted_out_of(their, our):
            # Twilio refuses any message to an opted-out number (error 21610) but these two
            log.info("not answering %s: opted out of %s", their, our)
            text = None
        if text:
            state.record("out", our=our, their=their, body=text, username=user.username if user else None,
                         status="twiml", account=account.name if account else None, pool=pool)
        await gw.store.commit(timeout=gw.store.read_timeout)
        return _twiml(text)

    async def _about(self, their: str, our: str) -> list[str]:
        """Event ids of the latest message we sent to ``their`` from ``our`` (TwiML answers aside)."""
        m = schema.messages
        query = (sa.select(m.c.event_ids)
                 .where(m.c.channel == "sms", m.c.direction == "out", m.c.their_number == their,
                        m.c.our_number == our, sa.or_(m.c.status.is_(None), m.c.status != "twiml"))
                 .order_by(m.c.created.desc()).limit(1))
        ids = await self.services.store.read(lambda conn: conn.execute(query).scalar())
        return list(ids or [])

    async def _stored_long_ago(self, sid: str) -> bool:
        """Twilio's signatures never expire: a webhook replayed after the last day's ids (kept in
        memory) is looked up in the table. Without waiting for a commit: the original, if any,
        was stored long before."""
        m = schema.messages
        found = await self.services.store.read(
            lambda c: c.execute(sa.select(m.c.id).where(m.c.id == sid)).first(), fresh=False)
        return found is not None

    def _profile_for(self, our: str) -> TwilioSmsProfile | None:
        from .profile import TwilioSmsProfile

        service = twilio_service(self.services)
        owner = service.owner_of(our)
        candidates = [p for p in self.services.profiles.values() if isinstance(p, TwilioSmsProfile)]
        for p in candidates:
            if owner is not None and service.account(p.sms.account) is owner:
                return p
        return candidates[0] if candidates else None

    def _sender(self, number: str, reply: Reply, state: SmsState) -> User | None:
        """Who texted. A handset shared by several people (a control-room phone) is resolved by
        the PIN in the reply, else to the one it last texted about an alarm, else the first."""
        users = [u for u in self.services.users.values()
                 if number in u.contacts.get("sms", []) or number in u.contacts.get("phone", [])]
        if len(users) <= 1:
            return users[0] if users else None
        if reply.pin:
            for u in users:
                if pin_matches(u, self.services.secret, reply.pin):
                    return u
        return next((u for u in users if u.username in state.latest), users[0])


class Conversation:
    """One inbound message from one number, and what to answer."""

    def __init__(self, services: Services, state: SmsState, profile: TwilioSmsProfile | None, user: User | None,
                 their: str, our: str):
        self.gw, self.state, self.profile, self.user = services, state, profile, user
        self.their, self.our = their, our
        self.settings: Any = profile.sms if profile is not None else None

    def _bounded(self, text: str) -> str | None:
        """A help or error answer, unless this number has had its share since it last did something valid."""
        limit = self.settings.max_error_replies if self.settings is not None else 5
        if self.state.error_replies[self.their] >= limit:
            return None
        self.state.error_replies[self.their] += 1
        return text

    def _valid(self, text: str) -> str:
        self.state.error_replies.pop(self.their, None)
        return text

    async def answer(self, reply: Reply) -> str | None:
        if reply.kind in ("stop", "stopall"):
            if reply.kind == "stopall":
                self.state.set_opt_out(self.their, ALL_POOLS, True, "keyword")
                scopes = [ALL_POOLS]
            else:  # every pool of the number it was sent to
                scopes = self.state.opt_out_of(self.their, self.our, "keyword")
            self.gw.audit.record("OptOut", user=self._name, contact=self.their, text=reply.text,
                                 details={"scope": ", ".join(scopes), "scopes": scopes})
            return None  # Twilio itself confirms opt-out and opt-in keywords
        if reply.kind == "start":
            self.state.opt_in(self.their, self.our)
            self.gw.audit.record("OptIn", user=self._name, contact=self.their, text=reply.text)
            return None
        if reply.kind == "help" and self.user is None:
            # HELP from anyone gets what the texts are and how to stop them (never bounded)
            return GENERIC_HELP.format(name=self.gw.config.gateway.name)
        if self.user is None:
            self.gw.audit.record("SMSUnknownSender", contact=self.their, text=reply.text)
            if self.settings is None or self.settings.unknown_senders == "ignore":
                return None
            if self.state.error_replies[self.their] >= 1:
                return None
            self.state.error_replies[self.their] += 1
            return UNKNOWN_SENDER
        if reply.kind == "help":
            # never silenced by the error-reply limit: a person asking for help must get it
            return HELP_TEXT + (HELP_SHELVE if self._may_shelve else "")
        if reply.kind == "pin":
            latest = self._latest_events()
            return await self._with_pin(reply.pin, lambda: self._ack(latest, reply.note), events=latest)
        if reply.kind == "ack":
            events = self._events_for(reply)
            return await self._with_pin(reply.pin, lambda: self._ack(events, reply.note), reply, events)
        if reply.kind == "status":
            return await self._with_pin(reply.pin, self._status, reply)
        if reply.kind in ("test", "untest"):
            if not self._may_shelve:
                return self._bounded(f"{reply.kind.upper()} needs the shelve permission.")
            return await self._with_pin(reply.pin, lambda: self._shelve(reply), reply)
        return await self._keyword(reply)

    @property
    def _name(self) -> str | None:
        return self.user.username if self.user else None

    @property
    def _may_shelve(self) -> bool:
        us = self.gw.config.settings.users.get(self._name or "")
        return us is not None and "shelve" in us.permissions

    async def _with_pin(self, pin: str | None, action: Any, reply: Reply | None = None,
                        events: list[AlarmEvent] | str | None = None) -> str | None:
        """Run ``action`` once the PIN (or an open PIN session) says who this is; ``events`` are
        the alarms the reply is about, for the audit entry of the PIN."""
        assert self.user is not None
        if pin is None:
            if self.state.in_session(self.user.username):
                return self._valid(await action())
            return self._bounded("Send your PIN with it, e.g. " + (
                f"{reply.text.strip().split()[0].upper()} ... PIN" if reply else "1234") + ".")
        event_ids = [e.id for e in events] if isinstance(events, list) else None
        outcome = self.gw.replies.check_pin(self.user, pin, channel=self.profile.name if self.profile else "sms",
                                            contact=self.their, event_ids=event_ids)
        if outcome.ok:
            if self.settings is not None:
                self.state.open_session(self.user.username, self.settings.pin_session)
            return self._valid(await action())
        if outcome.result == PinResult.LOCKED:
            until = f" until {outcome.locked_until:%H:%M} UTC" if outcome.locked_until else ""
            return self._bounded(f"Too many wrong PINs: locked{until}.")
        if outcome.result == PinResult.EXPIRED:
            when = f" on {outcome.expired_on:%Y-%m-%d}" if outcome.expired_on else ""
            return f"Your PIN expired{when}; ask {outcome.ask} for a new one."
        if outcome.result == PinResult.NO_PIN:
            return self._bounded("No PIN is set for you; ask an administrator.")
        return self._bounded("Wrong PIN.")

    # --- actions --------------------------------------------------------------------------

    def _latest_events(self) -> list[AlarmEvent]:
        latest = self.state.latest.get(self._name or "")
        if latest is None:
            return []
        return [e for i in latest.event_ids if (e := self.gw.events.get(i)) is not None]

    def _events_for(self, reply: Reply) -> list[AlarmEvent] | str:
        if reply.all or not reply.codes:
            return self._latest_events() if not reply.all else self._all_notified()
        events: list[AlarmEvent] = []
        unknown = []
        for code in reply.codes:
            event = self.gw.alarms.event_by_code(code)
            if event is None:
                unknown.append(f"#{code}")
            else:
                events.append(event)
        if unknown:
            return f"No open alarm {' '.join(unknown)}."
        return events

    def _all_notified(self) -> list[AlarmEvent]:
        """ACK ALL: every open, unacknowledged alarm this person has been sent by SMS."""
        ids = set(self.state.notified.get(self._name or "", ()))
        ids.update(e.id for e in self._latest_events())
        return [e for i in ids if (e := self.gw.events.get(i)) is not None and not e.acknowledged]

    async def _ack(self, events: list[AlarmEvent] | str, note: str) -> str:
        assert self.user is not None
        if isinstance(events, str):
            return events
        if not events:
            return "Nothing to acknowledge."
        outcome = await self.gw.replies.acknowledge(self.user, events, note, via="sms",
                                                    default_note="acknowledged by SMS")
        if outcome.needs_note:
            codes = " ".join(f"#{e.ack_code}" for e in outcome.needs_note)
            return f"{codes} needs a note: ACK {outcome.needs_note[0].ack_code} PIN your note."
        if outcome.error:
            return f"Not acknowledged: {outcome.error}"
        parts = []
        if outcome.acknowledged:
            parts.append("Acknowledged " + ", ".join(_short(e) for e in outcome.acknowledged) + ".")
        for e in outcome.already:
            when = f" at {e.ack_time:%H:%M} UTC" if e.ack_time else ""
            parts.append(f"#{e.ack_code} already acknowledged by {e.ack_user or 'someone'}{when}.")
        return " ".join(parts)

    async def _status(self) -> str:
        limit = self.settings.status_limit if self.settings is not None else 5
        open_ = self.gw.alarms.query_status(state="unacked")
        if not open_:
            return "No unacknowledged alarms."
        listed = "; ".join(_short(e) for e in open_[:limit])
        more = f" (+{len(open_) - limit} more)" if len(open_) > limit else ""
        return f"{len(open_)} unacknowledged: {listed}{more}"

    async def _shelve(self, reply: Reply) -> str:
        assert self.user is not None and reply.source is not None
        if len(reply.source) > 500:  # the shelves table's limit; longer is no source name anyway
            return "No such source: names are at most 500 characters."
        if reply.kind == "test":
            minutes = reply.minutes or 60
            try:
                expires = await self.gw.alarms.shelve([reply.source], minutes, self.user.username, "on test (SMS)")
            except Invalid as exc:
                return str(exc)
            return f"{reply.source} on test until {expires:%H:%M} UTC."
        try:
            await self.gw.alarms.unshelve([reply.source], self.user.username, "test ended (SMS)")
        except NotFound as exc:
            return str(exc)
        return f"{reply.source} is back in service."

    def keyword(self, reply: Reply) -> Any:
        """The keyword (of the block that sent the person's latest alarm) this reply is, or None."""
        if reply.kind != "text" or self.user is None:
            return None
        latest = self.state.latest.get(self._name or "")
        keywords = self._keywords(latest.pipeline, latest.block) if latest else {}
        word = reply.text.strip().split()[0].upper() if reply.text.strip() else ""
        return keywords.get(word)

    async def _keyword(self, reply: Reply) -> str | None:
        """Keywords of the block that sent the person's latest alarm; other text is only logged."""
        latest = self.state.latest.get(self._name or "")
        word = reply.text.strip().split()[0].upper() if reply.text.strip() else ""
        k = self.keyword(reply)
        if k is None:
            # free text is a message for people (the console's conversations), logged as SMSReply;
            # answering it with "not understood" would talk over the operator who reads it
            return None
        self.gw.audit.record(k.code, user=self._name, contact=self.their, text=reply.text,
                             event_ids=latest.event_ids if latest else None)
        if k.action in ("ack", "shelve") and not self.state.in_session(self._name or ""):
            return self._bounded(f"Send your PIN first, then {word}.")
        if k.action == "ack":
            # acknowledge first: the keyword's reply text replaces the summary, not the action
            done = await self._ack(self._latest_events(), reply.text)
            return self._valid(k.reply or done)
        if k.action == "shelve":
            for e in self._latest_events():
                await self.gw.alarms.shelve([e.source], k.minutes, self._name, f"keyword {word} (SMS)")
        self._valid("")
        return k.reply or None

    def _keywords(self, pipeline: str | None, block: str | None) -> dict[str, Any]:
        p = self.gw.pipelines.get(pipeline or "")
        if p is None or block not in p._by_name:
            return {}
        settings = p.blocks[p.index_of(block)].settings
        return {k.upper(): v for k, v in (getattr(settings, "keywords", None) or {}).items()}


def _short(e: AlarmEvent) -> str:
    return f"#{e.ack_code} {e.display_path or e.source}"
