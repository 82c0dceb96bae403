"""``system.twilio`` for scripts, with the seed module's names and semantics.

Scripts run on a worker thread; every call that touches the gateway goes through the scripting
bridge onto the gateway's loop. ``sendMessage`` never raises for a provider failure: it returns
False and keeps the reason for ``lastError()``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from annunciator.core.config import normalize_phone
from annunciator.plugins.twilio.service import twilio_service
from annunciator.plugins.twilio.stats import twilio_stats

from .sender import send_sms

if TYPE_CHECKING:
    from annunciator.core.services import Services
    from annunciator.core.users import User

log = logging.getLogger("annunciator.scripts.twilio")


class TwilioUser:
    """A person and their Twilio statistics, as the seed's ``getUser`` returns them."""

    def __init__(self, user: User, stats: Any):
        self._user, self._stats = user, stats

    def getUsername(self) -> str:
        return self._user.username

    def getUserId(self) -> int | None:
        return self._user.id

    def getPhoneNumber(self) -> str | None:
        numbers = self._user.contacts.get("sms") or self._user.contacts.get("phone") or []
        return numbers[0] if numbers else None

    def getMessagesSent(self) -> int:
        return self._stats.messages_sent

    def getMessagesReceived(self) -> int:
        return self._stats.messages_received

    def getCallsSent(self) -> int:
        return self._stats.calls_sent

    def getCallsReceived(self) -> int:
        return self._stats.calls_received

    def getCallMinutesSent(self) -> int:
        return self._stats.call_minutes_sent

    def getCallMinutesReceived(self) -> int:
        return self._stats.call_minutes_received

    username = property(getUsername)
    user_id = property(getUserId)
    phone_number = property(getPhoneNumber)
    messages_sent = property(getMessagesSent)
    messages_received = property(getMessagesReceived)
    calls_sent = property(getCallsSent)
    calls_received = property(getCallsReceived)
    call_minutes_sent = property(getCallMinutesSent)
    call_minutes_received = property(getCallMinutesReceived)

    def __repr__(self) -> str:
        return f"<TwilioUser {self.username} sent={self.messages_sent} received={self.messages_received}>"


class TwilioFunctions:
    """``system.twilio``."""

    def __init__(self, services: Services, bridge: Any):
        self._gw, self._bridge = services, bridge
        self._last_error: str | None = None

    def sendMessage(self, number: str, message: str, account: str | None = None, fromNumber: str | None = None,
                    pool: str | None = None) -> bool:
        """Text ``message`` to ``number`` from the default account and number (or the given
        account, sender number or pool). True when Twilio accepted it; False with the reason in
        ``lastError()`` otherwise."""
        self._last_error = None
        try:
            to = normalize_phone(str(number))
        except ValueError:
            return self._fail(f"not an E.164 number: {number!r}")
        if not isinstance(message, str) or not message.strip():
            return self._fail("the message is empty")
        sender = None
        if fromNumber:
            try:
                sender = normalize_phone(str(fromNumber))
            except ValueError:
                return self._fail(f"fromNumber is not an E.164 number: {fromNumber!r}")
        username = self._username_of(to)
        try:
            result = self._bridge.call(send_sms(self._gw, to, message, account=account, pool=pool, from_=sender,
                                                username=username))
        except Exception as exc:  # a script must never see a provider failure as an exception
            return self._fail(f"{type(exc).__name__}: {exc}")
        if not result.ok:
            return self._fail(result.error or "not sent")
        return True

    def _fail(self, why: str) -> bool:
        self._last_error = why
        log.warning("sendMessage not sent: %s", why)
        return False

    def lastError(self) -> str | None:
        """Why the last ``sendMessage`` returned False (None after a success)."""
        return self._last_error

    def getUser(self, id: int | str) -> TwilioUser:
        """By numeric user id (as in the seed) or by username; LookupError when there is none."""
        users = self._gw.users
        user = None
        if isinstance(id, int) and not isinstance(id, bool):
            user = self._gw.directory.by_id.get(id)
        elif isinstance(id, str):
            user = users.get(id) or (self._gw.directory.by_id.get(int(id)) if id.isdigit() else None)
        if user is None:
            known = ", ".join(f"{u.id} ({u.username})" for u in sorted(users.values(), key=lambda u: u.id or 0))
            raise LookupError(f"no user {id!r}; known: {known or '(none)'}")
        return TwilioUser(user, twilio_stats(self._gw).of(user.username))

    def getAccounts(self) -> list[str]:
        service = twilio_service(self._gw)
        return list(service.accounts) or list(service.settings.accounts)

    def getPhoneNumbers(self, account: str | None = None) -> list[str]:
        service = twilio_service(self._gw)
        try:
            return list(service.account(account).numbers)
        except LookupError:
            settings = service.settings.accounts.get(account or service.settings.default_account or "")
            if settings is None:
                raise
            return list(settings.numbers)

    def _username_of(self, number: str) -> str | None:
        for user in self._gw.users.values():
            if number in user.contacts.get("sms", []) or number in user.contacts.get("phone", []):
                return user.username
        return None
