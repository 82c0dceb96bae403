"""The Twilio SMS notification profile: alarm text with ack codes, through the official client."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from pydantic import Field

from annunciator.core.config import Duration, StrictModel
from annunciator.core.notifications import Notification
from annunciator.core.profiles import DeliveryResult, NotificationProfile
from annunciator.plugins.twilio.service import TwilioService, twilio_service

from .sender import send_sms
from .state import Latest, sms_state

log = logging.getLogger(__name__)

class SmsSettings(StrictModel):
    account: str | None = None  # a twilio.accounts name; the default account when omitted
    pool: str | None = None  # sender pool of that account; every number of the account when omitted
    messaging_service: bool = False  # send through the account's Messaging Service instead
    ack_codes: bool = True  # append "#12" per alarm, so a reply can name it
    # on the first message from a pool to a number; None: the account's (twilio.accounts.NAME.footer)
    footer: str | None = None
    smart_encoding: bool = True  # typographic quotes and dashes to plain ones: stays GSM-7, 160/segment
    pin_session: Duration = 900.0  # after a correct PIN, act without it for this long
    # replaced by gateway.pins (one lockout policy for SMS, voice and email): accepted, ignored
    pin_failures: int | None = Field(None, ge=1, le=100)
    pin_lockout: Duration | None = None
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
        await twilio_service(self.services).start()
        await sms_state(self.services).load()

    async def stop(self) -> None:
        service = self.services.state.get(TwilioService)
        if service is not None and service.accounts:
            await service.stop()

    def text_for(self, n: Notification) -> str:
        text = n.message
        if self.sms.ack_codes:
            codes = [f"#{e.ack_code}" for e in n.events if e.ack_code is not None and not e.acknowledged]
            if codes and not all(c in text for c in codes):
                shown = codes[:5] + ([f"+{len(codes) - 5}"] if len(codes) > 5 else [])
                text += f" [{' '.join(shown)}]"
        return text

    async def send(self, notification: Notification) -> DeliveryResult:
        state = sms_state(self.services)
        username = notification.user.username

        def sending(our: str) -> Callable[[], None]:
            # noted before the request: the phone may answer before Twilio's API response reaches us
            previous = state.latest.get(username)
            state.latest[username] = Latest(notification.event_ids, notification.id, notification.pipeline,
                                            notification.block, our)

            def undo() -> None:
                mine = state.latest.get(username)
                if mine is not None and mine.notification_id == notification.id:
                    if previous is None:
                        del state.latest[username]
                    else:
                        state.latest[username] = previous
            return undo

        result = await send_sms(
            self.services, notification.contact or "", self.text_for(notification), account=self.sms.account,
            pool=self.sms.pool, messaging_service=self.sms.messaging_service, footer=self.sms.footer,
            smart=self.sms.smart_encoding, username=username, event_ids=notification.event_ids,
            notification_id=notification.id, sending=sending)
        if result.ok:
            mine = state.notified.setdefault(username, set())
            mine.intersection_update(self.services.events)  # forget finished alarms as we go
            mine.update(notification.event_ids)
        return result
