"""A person's reply, whatever the channel (an SMS, a key pressed in a call, an email): the PIN
check with one lockout policy for every channel, and the acknowledgement it leads to.

The channels decide who is speaking (the number or address the reply came from) and which alarms
a reply names, and they word the answer; this decides the outcome, counts wrong PINs toward one
lockout, writes the audit entries (ReplyWithPIN, PinRejected, PinLockout, with the alarms the
reply acted on), and acknowledges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .alarm_lifecycle import Alarms
from .alarms import AlarmEvent
from .errors import Conflict, Invalid, NotFound
from .pin_check import PinCheck, PinPolicy
from .users import PinResult, User


@dataclass(frozen=True, slots=True)
class PinOutcome:
    result: str  # a PinResult value
    locked_until: datetime | None = None
    expired_on: datetime | None = None  # PinResult.EXPIRED: when the PIN expired
    ask: str = ""  # PinResult.EXPIRED: whom to ask for a new one (gateway.pins.contact)

    @property
    def ok(self) -> bool:
        return self.result == PinResult.OK


@dataclass(slots=True)
class AckOutcome:
    """What an acknowledgement by reply did: the alarms acknowledged now, those someone had
    acknowledged already, those that need a note first, and an error that stopped it."""

    acknowledged: list[AlarmEvent] = field(default_factory=list)
    already: list[AlarmEvent] = field(default_factory=list)
    needs_note: list[AlarmEvent] = field(default_factory=list)
    error: str | None = None


class Replies:
    def __init__(self, pins: PinCheck, alarms: Alarms, policy: PinPolicy, ask: str = "your administrator"):
        self._pins = pins
        self._alarms = alarms
        self.policy = policy  # one count and window for SMS, voice and email
        self._ask = ask

    def check_pin(self, user: User, pin: str, *, channel: str | None, contact: str | None,
                  event_ids: list[str] | None = None, notification_id: str | None = None,
                  via: str = "") -> PinOutcome:
        """Check a PIN a person sent; wrong ones count toward the lockout on every channel."""
        result = self._pins.check(user, pin, channel=channel, contact=contact, policy=self.policy,
                                  event_ids=event_ids, notification_id=notification_id, via=via)
        if result == PinResult.EXPIRED:
            return PinOutcome(result, expired_on=user.pin_expires, ask=self._ask)
        return PinOutcome(result, user.locked_until if result == PinResult.LOCKED else None)

    async def acknowledge(self, user: User, events: list[AlarmEvent], note: str, *, via: str,
                          default_note: str) -> AckOutcome:
        """Acknowledge the open ones of ``events`` for ``user``; alarms that require a note get
        none without it (and nothing is acknowledged then, so the person can send it again)."""
        out = AckOutcome(already=[e for e in events if e.acknowledged])
        todo = [e for e in events if not e.acknowledged]
        out.needs_note = [e for e in todo if e.ack_notes_required and not note.strip()]
        if out.needs_note or not todo:
            return out
        try:
            await self._alarms.acknowledge([e.id for e in todo], user.username, note.strip() or default_note, via=via)
        except (Conflict, Invalid, NotFound) as exc:
            out.error = str(exc)
            return out
        out.acknowledged = todo
        return out


def pin_policy(failures: int, lockout: float) -> PinPolicy:
    return PinPolicy(failures, timedelta(seconds=lockout))
