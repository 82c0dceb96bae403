"""One way to check a PIN, for every channel that takes one (SMS, voice, email replies).

Verify it, count a failure toward the person's lockout (one counter for all channels), store the
counters, and write the outcome to the audit log with the same codes everywhere: ReplyWithPIN,
PinRejected, PinLockout. The channels only decide what to answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from .audit import AuditLog, Code
from .users import LOCKOUT, MAX_PIN_FAILURES, PinResult, User, check_pin


@dataclass(frozen=True, slots=True)
class PinPolicy:
    """Wrong PINs (counted within ``lockout``) before a person is locked out for ``lockout``."""

    failures: int = MAX_PIN_FAILURES
    lockout: timedelta = LOCKOUT


class PinCheck:
    def __init__(self, secret: Callable[[], bytes], save_user: Callable[[User], None], audit: AuditLog):
        self._secret = secret
        self._save_user = save_user
        self._audit = audit

    def check(self, user: User, pin: str, *, channel: str | None, contact: str | None,
              policy: PinPolicy | None = None, event_ids: list[str] | None = None,
              notification_id: str | None = None, via: str = "") -> str:
        """A PinResult value; the user's counters are stored and the outcome audited. ``via``
        ("voice", "email") is added to the audit text."""
        policy = policy or PinPolicy()
        result = check_pin(user, self._secret(), pin, max_failures=policy.failures, lockout=policy.lockout)
        self._save_user(user)
        suffix = f" ({via})" if via else ""
        if result == PinResult.OK:
            code, text = Code.REPLY_WITH_PIN, "PIN accepted"
        elif result == PinResult.LOCKED:
            code = Code.PIN_LOCKOUT
            text = f"locked until {user.locked_until:%H:%M} UTC" if user.locked_until else "locked"
        elif result == PinResult.NO_PIN:
            code, text = Code.PIN_REJECTED, "no PIN is set"
        elif result == PinResult.EXPIRED:
            code = Code.PIN_EXPIRED
            text = f"PIN expired on {user.pin_expires:%Y-%m-%d %H:%M} UTC" if user.pin_expires else "PIN expired"
        else:
            code, text = Code.PIN_REJECTED, "wrong PIN"
        self._audit.record(code, user=user.username, channel=channel, contact=contact, text=text + suffix,
                           event_ids=event_ids, notification_id=notification_id)
        return result
