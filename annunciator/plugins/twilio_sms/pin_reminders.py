"""A text some time before a person's PIN expires (``gateway.pins.remind_before``), through the
first ``twilio-sms`` profile's account and pool, once per expiry (stored, so a restart does not
send it again). Audited as PinExpiryReminder; a refused send (an opt-out) is audited too."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from annunciator.core.alarms import utcnow

from .sender import send_sms

if TYPE_CHECKING:
    from annunciator.core.services import Services

    from .profile import TwilioSmsProfile

log = logging.getLogger(__name__)

TEXT = "Your alarm system PIN expires on {date} UTC. Ask {ask} for a new one."


class PinReminders:
    def __init__(self, services: Services, profile: TwilioSmsProfile, before: float):
        self.services = services
        self.profile = profile
        self.before = before
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        # often enough that a reminder is never late by more than a quarter of its lead time
        every = max(0.5, min(self.before / 4, 3600.0))
        while True:
            try:
                await self.remind_due()
            except Exception:  # a failed round must not end the reminders for good
                log.exception("PIN expiry reminders failed; trying again in %.0fs", every)
            await asyncio.sleep(every)

    async def remind_due(self) -> None:
        now = utcnow()
        pins = self.services.config.gateway.pins
        for user in list(self.services.users.values()):
            expires = user.pin_expires
            if not user.pin_hash or expires is None or user.pin_reminded == expires:
                continue
            if not expires - timedelta(seconds=self.before) <= now < expires:
                continue
            numbers = user.contacts.get("sms") or []
            if not numbers:
                continue
            text = TEXT.format(date=f"{expires:%Y-%m-%d %H:%M}", ask=pins.contact)
            s = self.profile.sms
            result = await send_sms(self.services, numbers[0], text, account=s.account, pool=s.pool,
                                    username=user.username)
            user.pin_reminded = expires  # once per expiry, sent or refused: no reminder storm
            self.services.directory.save(user)
            self.services.audit.record("PinExpiryReminder", user=user.username, channel=self.profile.name,
                                       contact=numbers[0], text=text if result.ok else f"not sent: {result.error}")
            await self.services.store.commit()
