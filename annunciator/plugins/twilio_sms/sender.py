"""Sending one SMS through Twilio: opt-out, sender choice, footer, pacing, the official client, and
what Twilio's answer means. Used by the ``twilio-sms`` profile and by ``system.twilio.sendMessage``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException

from annunciator.core.profiles import DeliveryResult
from annunciator.plugins.twilio.http import retry_after
from annunciator.plugins.twilio.service import twilio_service
from annunciator.plugins.twilio.sms import MAX_BODY_CHARS

from .state import ALL_POOLS, SmsState, pool_key, sender_scopes, sms_state
from .text import smart_encode

if TYPE_CHECKING:
    from annunciator.core.services import Services

log = logging.getLogger(__name__)

# Twilio error codes that no retry can fix (https://www.twilio.com/docs/api/errors)
OPTED_OUT = 21610
PERMANENT = {21211: "invalid 'To' number", 21614: "not a mobile number", 21612: "cannot route to this number",
             21408: "no permission to send to this region", 21606: "'From' is not a number of this account",
             21617: "message too long", 21602: "message body is required", 30004: "message blocked"}


async def send_sms(services: Services, to: str, text: str, *, account: str | None = None, pool: str | None = None,
                   from_: str | None = None, messaging_service: bool = False, footer: str | None = None,
                   smart: bool = True, username: str | None = None, event_ids: list[str] | None = None,
                   notification_id: str | None = None,
                   sending: Callable[[str], Callable[[], None]] | None = None) -> DeliveryResult:
    """Send ``text`` to ``to``; the result says sent (with the Message SID) or why not, and whether a
    retry could help. ``sending(sender)`` is called just before the request and returns an undo
    for a failure (the profile notes what a reply will refer to before the phone can answer).

    Every SMS the gateway sends comes through here (alarms, ``system.twilio.sendMessage``, the
    console), so here the opt-outs are kept: never from a number the recipient sent STOP to
    (nor any number of its pool), never after STOPALL; and the first message from a pool to a
    number carries the footer (``footer``, else the account's) whoever sends it."""
    service = twilio_service(services)
    await service.start()
    state = sms_state(services)
    await state.load()
    acct = service.account(account)
    if footer is None:
        footer = acct.settings.footer

    def scopes(number: str) -> list[str]:
        """The opt-out scopes a sender number speaks for: the pools it is in (or none)."""
        return sender_scopes(acct.name, acct.settings.pools, number)

    def allowed(number: str) -> bool:
        return not any(state.opted_out(to, s) for s in scopes(number))

    def refused(why: str) -> DeliveryResult:
        # an alarm's refusal is its notification's (NotificationFailed); any other send is audited here
        if notification_id is None:
            services.audit.record("SMSRefused", user=username, channel="sms", contact=to, text=why,
                                  event_ids=event_ids)
        return DeliveryResult.failed(why, retryable=False)

    def footer_scope(number: str) -> str:
        """The footer is owed once per pool: the send's own pool, else the sender number's."""
        return pool_key(acct.name, pool) if pool and number in acct.pool(pool) else scopes(number)[0]

    # A timed-out request may have created the message all the same (Twilio has no idempotency
    # key for Messages): before sending again, ask Twilio whether it did, so nobody gets it twice.
    unsure = state.unsure
    key = notification_id or f"{to}|{text}"
    if key in unsure:
        sent_body, sender, since = unsure[key]
        checked, found = await _find_sent(acct, to, sent_body, sender, since)
        if not checked:
            return DeliveryResult.failed("the last attempt timed out and Twilio cannot tell yet whether it "
                                         "sent the message; not sending it again before it can")
        # a request that timed out here may still be on its way to Twilio: "not there" counts only
        # once it would have been answered for sure
        settled = since + timedelta(seconds=2 * acct.settings.timeout + 1)
        if found is None and datetime.now(UTC) < settled:
            return DeliveryResult.failed("the last attempt timed out and Twilio has no such message yet; "
                                         "waiting before sending it again",
                                         retry_after=(settled - datetime.now(UTC)).total_seconds())
        del unsure[key]
        if found is not None:
            state.greeted.add((footer_scope(found.from_ or sender or ""), to))
            if sending is not None:
                sending(found.from_ or sender or "")
            state.record("out", our=found.from_ or sender, their=to, body=sent_body, sid=found.sid,
                         username=username, status=found.status, account=acct.name, pool=pool,
                         event_ids=event_ids, notification_id=notification_id)
            return DeliveryResult.sent(found.sid)
    if state.opted_out(to, ALL_POOLS):
        return refused(f"{to} has opted out of all SMS (replied STOPALL)")
    if from_ is not None and from_ not in acct.numbers:
        return DeliveryResult.failed(f"{from_} is not a number of Twilio account {acct.name}", retryable=False)
    via_service = bool(messaging_service and acct.settings.messaging_service_sid and from_ is None)
    # through a Messaging Service Twilio picks the sender among its numbers: any opt-out counts
    if via_service and any(state.opted_out(to, s) for n in acct.numbers for s in scopes(n)):
        return refused(f"{to} has opted out of SMS from this account's numbers (replied STOP)")
    if from_ is not None:
        if not allowed(from_):
            return refused(f"{to} has opted out of SMS from {from_} (replied STOP)")
        our = from_
    else:
        picked = acct.pick(pool, sticky=state.last_sender.get(to), allowed=allowed)
        if picked is None:
            return refused(f"{to} has opted out of SMS from {'pool ' + pool if pool else 'every number'}"
                           " (replied STOP)")
        our = picked
    scope = footer_scope(our)
    first = (scope, to) not in state.greeted
    body = text + (f"\n{footer}" if footer and first else "")
    if smart:
        body = smart_encode(body)
    if not body.strip():
        return DeliveryResult.failed("the message is empty", retryable=False)
    if len(body) > MAX_BODY_CHARS:
        return DeliveryResult.failed(f"the message is {len(body)} characters; Twilio takes at most "
                                     f"{MAX_BODY_CHARS}", retryable=False)
    params: dict[str, Any] = {"to": to, "body": body, "status_callback": service.webhook_url("/twilio/sms/status")}
    if via_service:
        params["messaging_service_sid"] = acct.settings.messaging_service_sid
    else:
        params["from_"] = our
        state.last_sender[to] = our  # sticky from now: a message racing this one takes the same sender
    # the footer is claimed before any await (pacing, the request), so two messages racing to a
    # new number do not both carry it; a failed send gives it back
    state.greeted.add((scope, to))
    await acct.pace(our)
    assert acct.client is not None
    undo = sending(our) if sending is not None else None
    started = datetime.now(UTC)
    try:
        message = await acct.client.messages.create_async(**params)
    except Exception as exc:
        if isinstance(exc, TimeoutError | aiohttp.ClientError):
            unsure[key] = (body, params.get("from_"), started)
        if first:
            state.greeted.discard((scope, to))
        if undo is not None:
            undo()
        if isinstance(exc, TwilioRestException):
            # the sender Twilio refused: ours, or (a Messaging Service picks) any of the account's
            return _failure(exc, to, state, [params["from_"]] if "from_" in params else list(acct.numbers))
        if isinstance(exc, TimeoutError):
            return DeliveryResult.failed(f"Twilio did not answer within {acct.settings.timeout:g}s")
        if isinstance(exc, aiohttp.ClientError):
            return DeliveryResult.failed(f"cannot reach Twilio at {acct.api_base}: {exc}")
        raise
    # stamped with when it went out: the phone's answer may be recorded before Twilio's response
    state.record("out", our=message.from_ or our, their=to, body=body, sid=message.sid, username=username,
                 status=message.status, account=acct.name, pool=pool, event_ids=event_ids,
                 notification_id=notification_id, at=started)
    return DeliveryResult.sent(message.sid)


async def _find_sent(acct: Any, to: str, body: str, sender: str | None, since: datetime) -> tuple[bool, Any]:
    """(whether Twilio could be asked, the message it has for this attempt or None)."""
    filters: dict[str, Any] = {"to": to, "page_size": 20, "limit": 20}
    if sender:
        filters["from_"] = sender
    try:
        recent = await acct.client.messages.list_async(**filters)
    except (TwilioException, TimeoutError, aiohttp.ClientError) as exc:
        log.info("cannot ask Twilio about a timed-out message to %s: %s", to, exc)
        return False, None
    # Twilio's dates have whole seconds; the clocks of two machines differ a little too
    earliest = since - timedelta(seconds=5)
    return True, next((m for m in recent if m.body == body and m.date_created and m.date_created >= earliest), None)


def _failure(exc: TwilioRestException, to: str, state: SmsState, senders: list[str]) -> DeliveryResult:
    code, status = exc.code, exc.status
    what = f"Twilio {status} error {code}: {exc.msg}"
    if code == OPTED_OUT:
        # Twilio refuses: the person replied STOP to this sender at some point; remember it for
        # the pools the sender belongs to (Twilio's opt-out is per sender, not per account)
        for sender in senders:
            state.opt_out_of(to, sender, "provider")
        return DeliveryResult.failed(f"{to} has opted out of SMS (Twilio error 21610)", retryable=False)
    if code in PERMANENT:
        return DeliveryResult.failed(f"{what} ({PERMANENT[code]})", retryable=False)
    if status == 429 or (status or 0) >= 500:
        return DeliveryResult.failed(what, retry_after=retry_after.get())
    return DeliveryResult.failed(what, retryable=False)
