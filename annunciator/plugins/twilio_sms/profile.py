"""The Twilio SMS notification profile: alarm text with ack codes, through the official client."""

from __future__ import annotations

import logging
from typing import Any, Literal

import aiohttp
from pydantic import Field
from twilio.base.exceptions import TwilioRestException

from annunciator.core.config import Duration, StrictModel
from annunciator.core.notifications import Notification
from annunciator.core.profiles import DeliveryResult, NotificationProfile
from annunciator.plugins.twilio.http import retry_after
from annunciator.plugins.twilio.service import twilio_service

from .state import ALL_POOLS, Latest, pool_key, sms_state
from .text import smart_encode

log = logging.getLogger(__name__)

FOOTER = "Reply HELP for help, STOP to opt out"
# Twilio error codes that no retry can fix (https://www.twilio.com/docs/api/errors)
OPTED_OUT = 21610
PERMANENT = {21211: "invalid 'To' number", 21614: "not a mobile number", 21612: "cannot route to this number",
             21408: "no permission to send to this region", 21606: "'From' is not a number of this account",
             21617: "message too long", 21602: "message body is required", 30004: "message blocked"}


class SmsSettings(StrictModel):
    account: str | None = None  # a twilio.accounts name; the default account when omitted
    pool: str | None = None  # sender pool of that account; every number of the account when omitted
    messaging_service: bool = False  # send through the account's Messaging Service instead
    ack_codes: bool = True  # append "#12" per alarm, so a reply can name it
    footer: str = FOOTER  # on the first message from a pool to a number
    smart_encoding: bool = True  # typographic quotes and dashes to plain ones: stays GSM-7, 160/segment
    pin_session: Duration = 900.0  # after a correct PIN, act without it for this long
    pin_failures: int = Field(5, ge=1, le=100)  # wrong PINs before a lockout
    pin_lockout: Duration = 900.0
    unknown_senders: Literal["reply-once", "ignore"] = "reply-once"
    max_error_replies: int = Field(5, ge=0, le=100)  # help/error replies to a number until it does something valid
    status_limit: int = Field(5, ge=1, le=50)  # alarms listed by STATUS


class TwilioSmsProfile(NotificationProfile):
    type_name = "twilio-sms"
    Settings = SmsSettings
    contact_types = ("sms",)
    description = "SMS through Twilio; people acknowledge by replying with their PIN"

    @property
    def sms(self) -> SmsSettings:
        return self.settings  # type: ignore[return-value]

    async def start(self) -> None:
        await twilio_service(self.gateway).start()
        await sms_state(self.gateway).load()

    async def stop(self) -> None:
        service = self.gateway.extensions.get("twilio")
        if service is not None and service.accounts:
            await service.stop()

    def text_for(self, n: Notification, first: bool) -> str:
        text = n.message
        if self.sms.ack_codes:
            codes = [f"#{e.ack_code}" for e in n.events if e.ack_code is not None and not e.acknowledged]
            if codes and not all(c in text for c in codes):
                shown = codes[:5] + ([f"+{len(codes) - 5}"] if len(codes) > 5 else [])
                text += f" [{' '.join(shown)}]"
        if first and self.sms.footer:
            text += f"\n{self.sms.footer}"
        return smart_encode(text) if self.sms.smart_encoding else text

    async def send(self, notification: Notification) -> DeliveryResult:
        service = twilio_service(self.gateway)
        state = sms_state(self.gateway)
        account = service.account(self.sms.account)
        to = notification.contact or ""
        scope = pool_key(account.name, self.sms.pool)
        if state.opted_out(to, scope):
            return DeliveryResult.failed(f"{to} has opted out of SMS from this sender (replied STOP)",
                                         retryable=False)
        our = account.pick(self.sms.pool, sticky=state.last_sender.get(to))
        body = self.text_for(notification, (scope, to) not in state.greeted)
        params: dict[str, Any] = {"to": to, "body": body,
                                  "status_callback": service.webhook_url("/twilio/sms/status")}
        if self.sms.messaging_service and account.settings.messaging_service_sid:
            params["messaging_service_sid"] = account.settings.messaging_service_sid
        else:
            params["from_"] = our
        await account.pace(our)
        assert account.client is not None
        username = notification.user.username
        # set before the call: the phone may answer before Twilio's API response reaches us
        previous = state.latest.get(username)
        state.latest[username] = Latest(notification.event_ids, notification.id, notification.pipeline,
                                        notification.block, our)
        try:
            message = await account.client.messages.create_async(**params)
        except Exception as exc:
            if state.latest.get(username) is not None and state.latest[username].notification_id == notification.id:
                state.latest[username] = previous  # type: ignore[assignment]
            if isinstance(exc, TwilioRestException):
                return self._failure(exc, to, state)
            if isinstance(exc, TimeoutError):
                return DeliveryResult.failed(f"Twilio did not answer within {account.settings.timeout:g}s")
            if isinstance(exc, aiohttp.ClientError):
                return DeliveryResult.failed(f"cannot reach Twilio at {account.api_base}: {exc}")
            raise
        sender = message.from_ or our
        state.greeted.add((scope, to))
        state.record("out", our=sender, their=to, body=body, sid=message.sid, username=username,
                     status=message.status, account=account.name, pool=self.sms.pool,
                     event_ids=notification.event_ids, notification_id=notification.id)
        mine = state.notified.setdefault(notification.user.username, set())
        mine.intersection_update(self.gateway.events)  # forget finished alarms as we go
        mine.update(notification.event_ids)
        return DeliveryResult.sent(message.sid)

    def _failure(self, exc: TwilioRestException, to: str, state: Any) -> DeliveryResult:
        code, status = exc.code, exc.status
        what = f"Twilio {status} error {code}: {exc.msg}"
        if code == OPTED_OUT:
            # Twilio refuses: the person replied STOP to this sender at some point; remember it
            state.set_opt_out(to, ALL_POOLS, True, "provider")
            return DeliveryResult.failed(f"{to} has opted out of SMS (Twilio error 21610)", retryable=False)
        if code in PERMANENT:
            return DeliveryResult.failed(f"{what} ({PERMANENT[code]})", retryable=False)
        if status == 429 or (status or 0) >= 500:
            return DeliveryResult.failed(what, retry_after=retry_after.get())
        return DeliveryResult.failed(what, retryable=False)
