"""What the voice side remembers: live calls (where each caller is in the flow) and per-number call
slots.

Call records are rows of the ``messages`` table with channel ``voice`` (id: our call id, provider
id: Twilio's CallSid, body: what the call was about, duration in seconds once completed); each
completed call also writes a ``CallCompleted`` audit entry. Calls and minutes are counted by the
shared Twilio statistics (plugins/twilio/stats.py), rebuilt from those rows at start.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from annunciator.core import schema
from annunciator.core.alarms import utcnow
from annunciator.plugins.twilio.stats import twilio_stats

if TYPE_CHECKING:
    from annunciator.core.services import Services

CALL_COMPLETED = "CallCompleted"
FINAL = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})


@dataclass
class CallSession:
    """One call, outbound (an alarm notification) or inbound (a person calling the gateway)."""

    id: str
    profile: str
    username: str | None
    event_ids: list[str]
    their_number: str
    our_number: str = ""
    direction: str = "out"
    notification_id: str | None = None
    message: str = ""  # the notification's text: what a single-alarm call reads as the alarm message
    call_sid: str | None = None
    index: int = 0  # the alarm being read
    authenticated: bool = False
    pin_tries: int = 0
    no_input: int = 0
    heard: bool = False  # an alarm was read to an authenticated person (the call reached someone)
    left_message: bool = False  # an answering machine got the short message
    status: str = "queued"
    step: int = 0  # numbers each served document, so a replayed request is recognised
    answers: dict[str, str] = field(default_factory=dict)  # request key -> TwiML served for it
    pending: asyncio.Task[str] | None = None  # an answer still being worked on ("one moment")
    created: asyncio.Event = field(default_factory=asyncio.Event)  # the provider accepted the call
    released: bool = False
    counted: bool = False

    def next_step(self) -> int:
        self.step += 1
        return self.step


class CallSlots:
    """At most ``limit`` live calls per sender number; a call waits for a free number of its pool.

    Why: Twilio queues calls beyond an account's rate but a number that rings many people at once
    shows them all one caller ID and one callback number; the limit keeps that bounded.
    """

    def __init__(self) -> None:
        self.active: Counter[str] = Counter()
        self._cond = asyncio.Condition()

    async def acquire(self, numbers: list[str], limit: int, prefer: str | None = None) -> str:
        async with self._cond:
            while True:
                free = [n for n in numbers if self.active[n] < limit]
                if free:
                    number = prefer if prefer in free else min(free, key=lambda n: self.active[n])
                    self.active[number] += 1
                    return number
                await self._cond.wait()

    async def release(self, number: str) -> None:
        async with self._cond:
            if self.active[number] > 0:
                self.active[number] -= 1
            self._cond.notify_all()


class VoiceState:
    def __init__(self, services: Services):
        self.services = services
        self.sessions: dict[str, CallSession] = {}
        self.by_sid: dict[str, CallSession] = {}
        self.slots = CallSlots()
        self.script_errors = 0

    # --- call records ---------------------------------------------------------------------

    def record(self, session: CallSession, *, account: str | None, pool: str | None, status: str) -> None:
        """Store the call record and count the call (sent or received)."""
        now = utcnow()
        self.services.store.insert(schema.messages, {
            "id": session.id, "channel": "voice", "direction": session.direction, "provider_id": session.call_sid,
            "account": account, "pool": pool, "our_number": session.our_number,
            "their_number": session.their_number, "username": session.username,
            "body": session.message or "(call)", "status": status, "error": None,
            "event_ids": list(session.event_ids), "notification_id": session.notification_id,
            "created": now, "updated": now, "read": True, "deleted": False})
        twilio_stats(self.services).count("voice", session.direction, session.username)

    def update_status(self, session: CallSession, status: str, error: str | None = None) -> None:
        session.status = status
        self.services.store.update(schema.messages, session.id, {"status": status, "error": error,
                                                                "updated": utcnow()})

    def completed(self, session: CallSession, seconds: int) -> int:
        """Count a completed call's minutes (rounded up per call, as Twilio bills) once; returns them."""
        if session.counted:
            return 0
        session.counted = True
        minutes = math.ceil(max(seconds, 0) / 60)
        self.services.store.update(schema.messages, session.id, {"duration": seconds, "updated": utcnow()})
        twilio_stats(self.services).count("voice", session.direction, session.username, seconds=seconds, calls=0)
        self.services.audit.record(CALL_COMPLETED, user=session.username, channel=session.profile,
                                  contact=session.their_number, text=f"{seconds}s ({minutes} min)",
                                  event_ids=list(session.event_ids), notification_id=session.notification_id,
                                  details={"callSid": session.call_sid, "callId": session.id, "seconds": seconds,
                                           "minutes": minutes, "direction": session.direction})
        return minutes

    def forget_later(self, session: CallSession, after: float = 300.0) -> None:
        """Drop a finished call from memory after a while (late replays still find it meanwhile)."""
        def forget() -> None:
            self.sessions.pop(session.id, None)
            if session.call_sid:
                self.by_sid.pop(session.call_sid, None)

        asyncio.get_running_loop().call_later(after, forget)


def voice_state(services: Services) -> VoiceState:
    """The gateway's one VoiceState (created on first use)."""
    return services.state.setdefault(VoiceState, lambda: VoiceState(services))
