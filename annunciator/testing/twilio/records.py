"""What the emulator keeps: messages, requests, callbacks, and Twilio-shaped errors.

The JSON shapes follow Twilio's OpenAPI description (``api.v2010.account.message`` etc.): the
Prism contract pass checks every response the emulator gives against it, so a field drifting from
the spec fails CI rather than misleading the code under test.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

API_VERSION = "2010-04-01"

# Human text Twilio gives with each error code the emulator produces.
ERROR_MESSAGES: dict[int, str] = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    20503: "Service Unavailable",
    21201: "No 'To' number is specified",
    21205: "Url parameter is required.",
    21210: "'From' phone number not verified",
    21211: "Invalid 'To' Phone Number",
    21213: "No 'From' number is specified",
    21266: "'To' and 'From' number cannot be the same",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21606: "The 'From' phone number is not a valid, SMS-capable inbound phone number or short code for your account.",
    21609: "Invalid StatusCallback url",
    21610: "Attempt to send to unsubscribed recipient",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    21701: "The Messaging Service Sid is invalid.",
    30003: "Unreachable destination handset",
    30004: "Message blocked",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
}


class TwilioApiError(Exception):
    """An error the emulator answers in Twilio's JSON shape (``code``/``message``/``more_info``/``status``)."""

    def __init__(self, status: int, code: int, message: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message or ERROR_MESSAGES.get(code, "Error")
        self.headers = headers or {}
        super().__init__(f"{status} {code}: {self.message}")

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message,
                "more_info": f"https://www.twilio.com/docs/errors/{self.code}", "status": self.status}


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two-letter prefix and 32 lowercase hex digits."""
    return prefix + secrets.token_hex(16)


def now() -> datetime:
    return datetime.now(UTC)


def rfc2822(dt: datetime | None) -> str | None:
    """Twilio's date format, e.g. ``Thu, 24 Aug 2023 05:01:45 +0000``."""
    return None if dt is None else format_datetime(dt.replace(microsecond=0))


@dataclass(slots=True)
class Message:
    """One SMS, in either direction, as Twilio's Message resource plus what a test wants to know.

    ``reaches_handset`` is decided at creation (a number marked with ``fail_number`` never gets
    it), so ``phone.messages`` does not depend on how far the status progression has come.
    """

    sid: str
    account_sid: str
    to: str
    from_: str | None
    body: str
    status: str
    direction: str  # inbound | outbound-api | outbound-reply
    num_segments: int
    encoding: str
    messaging_service_sid: str | None = None
    status_callback: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    date_created: datetime = field(default_factory=now)
    date_sent: datetime | None = None
    date_updated: datetime = field(default_factory=now)
    reaches_handset: bool = True
    statuses: list[str] = field(default_factory=list)  # every status it went through, in order

    @property
    def uri(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}.json"

    def to_json(self) -> dict[str, Any]:
        base = self.uri[: -len(".json")]
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": rfc2822(self.date_created),
            "date_sent": rfc2822(self.date_sent),
            "date_updated": rfc2822(self.date_updated),
            "direction": self.direction,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": "0",
            "num_segments": str(self.num_segments),
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {"media": f"{base}/Media.json", "feedback": f"{base}/Feedback.json"},
            "to": self.to,
            "uri": self.uri,
        }


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One REST request the emulator answered, with its outcome.

    ``fault`` names the injected fault (``"429"``, ``"500"``, ``"timeout"``) or is None; ``sid`` is
    the resource created or touched, so "exactly as many sent as records say" is checkable.
    """

    method: str
    path: str
    params: dict[str, list[str]]
    status: int
    error_code: int | None = None
    fault: str | None = None
    sid: str | None = None
    at: datetime = field(default_factory=now)

    def param(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class Callback:
    """A signed POST the emulator made to the code under test (status callback, webhook, TwiML fetch)."""

    kind: str  # message-status | sms | voice | call-status
    url: str  # the public URL the signature covers
    posted_to: str  # where it actually went (after route())
    params: dict[str, str]
    signature: str
    status: int | None  # HTTP status answered, None when the request failed
    error: str | None = None
    body: str = ""
