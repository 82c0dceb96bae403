"""The Twilio voice notification profile: places calls with the official client; the call itself is
the TwiML flow served by ``flow.py``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

import aiohttp
from pydantic import Field
from twilio.base.exceptions import TwilioRestException

from annunciator.core.alarms import new_id
from annunciator.core.config import Duration, StrictModel
from annunciator.core.notifications import Notification
from annunciator.core.profiles import DeliveryResult, NotificationProfile
from annunciator.plugins.twilio.http import retry_after
from annunciator.plugins.twilio.service import TwilioService, twilio_service

from .state import CallSession, voice_state

log = logging.getLogger(__name__)

# Twilio errors no retry can fix (https://www.twilio.com/docs/api/errors)
PERMANENT = {21211: "invalid 'To' number", 21210: "'From' is not a number of this account",
             21215: "no permission to call this region", 21216: "cannot call this number",
             21217: "invalid number", 13224: "invalid number", 21201: "no 'To' number", 21213: "no 'From' number"}


class LanguageSettings(StrictModel):
    """What changes for people whose ``language`` is this one: Twilio voice and language, prompts."""

    language: str | None = None  # <Say language>; default: the user's language itself
    voice: str | None = None  # <Say voice>, e.g. Polly.Marlene
    prompts: dict[str, str] = {}


class VoiceSettings(StrictModel):
    account: str | None = None  # a twilio.accounts name; the default account when omitted
    pool: str | None = None  # caller-ID numbers of that account; every number when omitted
    language: str = "en-US"  # Twilio <Say language>
    voice: str | None = None  # Twilio <Say voice>, e.g. Polly.Joanna; Twilio's default when omitted
    languages: dict[str, LanguageSettings] = {}  # by user language ("de-DE"): voice, language, prompts
    prompts: dict[str, str] = {}  # replace the built-in English prompts (see docs/voice.md)
    script: str | None = None  # a call script in gateway.scripts_dir (see docs/voice.md)
    script_timeout: Duration = 3.0  # a script slower than this is ignored for that answer
    pin_required: bool = True
    pin_tries: int = Field(3, ge=1, le=20)  # wrong PINs in one call before it says goodbye
    # replaced by gateway.pins (one lockout policy for SMS, voice and email): accepted, ignored
    pin_failures: int | None = Field(None, ge=1, le=100)
    pin_lockout: Duration | None = None
    # whoever answers may not be the person: every call asks for the PIN unless this is true, and
    # then a call we placed skips it within a PIN session (a correct PIN by SMS or voice)
    reuse_pin_session: bool = False
    pin_session: Duration = 900.0  # how long a correct PIN by voice opens a session for
    pin_timeout: int = Field(10, ge=1, le=60)  # seconds to wait for the PIN
    menu_timeout: int = Field(8, ge=1, le=60)  # seconds to wait for a menu choice
    repeat: int = Field(1, ge=1, le=5)  # times each alarm's text is read
    speech: bool = False  # the menu also takes spoken "acknowledge", "next", "repeat", "acknowledge all"
    answering_machine: Literal["leave-message", "hang-up"] = "leave-message"
    machine_detection: bool = True  # ask Twilio whether a person or a machine answered
    ring_timeout: int = Field(30, ge=5, le=600)  # seconds to ring before Twilio reports no-answer
    concurrent_calls: int = Field(10, ge=1, le=1000)  # live calls per caller-ID number
    answer_within: Duration = 2.0  # a slower answer (slow database) says "one moment" and redirects
    max_call: Duration = 1800.0  # a call slot is freed after this even if no final status arrives


class TwilioVoiceProfile(NotificationProfile):
    type_name = "twilio-voice"
    Settings = VoiceSettings
    contact_types = ("phone",)
    description = "phone calls through Twilio; people acknowledge with their PIN and the keypad"

    @property
    def voice(self) -> VoiceSettings:
        return self.settings  # type: ignore[return-value]

    async def start(self) -> None:
        await twilio_service(self.services).start()

    async def stop(self) -> None:
        service = self.services.state.get(TwilioService)
        if service is not None and service.accounts:
            await service.stop()

    async def send(self, notification: Notification) -> DeliveryResult:
        """Place one call to the notification's phone number; the flow answers when it is picked up."""
        s = self.voice
        service = twilio_service(self.services)
        state = voice_state(self.services)
        account = service.account(s.account)
        open_events = [e for e in notification.events if not e.acknowledged]
        if not open_events:
            return DeliveryResult.failed("nothing to call about: every alarm is already acknowledged",
                                         retryable=False)
        numbers = account.pool(s.pool)
        if not numbers:
            return DeliveryResult.failed(f"Twilio account {account.name} has no caller-ID numbers", retryable=False)
        to = notification.contact or ""
        session = CallSession(id=new_id(), profile=self.name, username=notification.user.username,
                              event_ids=[e.id for e in open_events], their_number=to,
                              notification_id=notification.id, message=notification.message)
        # registered before the call is placed: the phone may ask for TwiML before the API answers
        state.sessions[session.id] = session
        our = await state.slots.acquire(numbers, s.concurrent_calls)
        session.our_number = our
        hook = service.webhook_url
        params: dict[str, Any] = {
            "to": to, "from_": our, "url": hook(f"/twilio/voice/start/{session.id}"), "method": "POST",
            "status_callback": hook(f"/twilio/voice/status/{session.id}"), "status_callback_method": "POST",
            "status_callback_event": ["initiated", "ringing", "answered", "completed"],
            "fallback_url": hook(f"/twilio/voice/fallback/{session.id}"), "fallback_method": "POST",
            "timeout": s.ring_timeout,
        }
        if s.machine_detection:
            # waiting for the beep is what lets a left message be heard from its start
            params["machine_detection"] = "DetectMessageEnd" if s.answering_machine == "leave-message" else "Enable"
        try:
            await account.pace(our)
            assert account.client is not None
            call = await account.client.calls.create_async(**params)
        except Exception as exc:
            state.sessions.pop(session.id, None)
            await state.slots.release(our)
            if isinstance(exc, TwilioRestException):
                return self._failure(exc)
            if isinstance(exc, TimeoutError):
                return DeliveryResult.failed(f"Twilio did not answer within {account.settings.timeout:g}s")
            if isinstance(exc, aiohttp.ClientError):
                return DeliveryResult.failed(f"cannot reach Twilio at {account.api_base}: {exc}")
            raise
        session.call_sid = call.sid
        state.by_sid[call.sid] = session
        state.record(session, account=account.name, pool=s.pool, status=call.status or "queued")
        session.created.set()
        # a call whose final status never arrives must not hold its number's slot for ever
        asyncio.get_running_loop().call_later(s.max_call, lambda: asyncio.ensure_future(self.release(session)))
        return DeliveryResult.sent(call.sid)

    async def release(self, session: CallSession) -> None:
        """Free the call's slot on its number (once)."""
        if not session.released:
            session.released = True
            await voice_state(self.services).slots.release(session.our_number)

    def _failure(self, exc: TwilioRestException) -> DeliveryResult:
        code, status = exc.code, exc.status
        what = f"Twilio {status} error {code}: {exc.msg}"
        if code in PERMANENT:
            return DeliveryResult.failed(f"{what} ({PERMANENT[code]})", retryable=False)
        if status == 429 or (status or 0) >= 500:
            return DeliveryResult.failed(what, retry_after=retry_after.get())
        return DeliveryResult.failed(what, retryable=False)
