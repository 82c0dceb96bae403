"""The notification profile contract that channel plugins (webhook, SMS, voice, email) implement."""

from __future__ import annotations

import email.utils
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel

from .config import StrictModel

if TYPE_CHECKING:
    from .notifications import Notification
    from .services import Services


@dataclass(slots=True)
class DeliveryResult:
    """What a profile says about one attempt to send.

    ``retryable`` failures are tried again with backoff (``retry_after`` seconds, when the provider
    said so, e.g. HTTP 429); others fail the notification at once (an invalid number).
    """

    ok: bool
    provider_id: str | None = None
    error: str | None = None
    retryable: bool = True
    retry_after: float | None = None

    @classmethod
    def sent(cls, provider_id: str | None = None) -> DeliveryResult:
        return cls(True, provider_id)

    @classmethod
    def failed(cls, error: str, *, retryable: bool = True, retry_after: float | None = None) -> DeliveryResult:
        return cls(False, None, error, retryable, retry_after)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` header, for ``DeliveryResult.retry_after``: either
    form RFC 9110 allows, a delay in seconds (``120``) or an HTTP date
    (``Wed, 02 Dec 2026 05:30:00 GMT``, read with ``email.utils``); a date in the past is 0.
    None when the header is absent or neither form."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # RFC 850 and asctime forms carry no zone: HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class NotificationProfile:
    """Base class of notification profile types.

    ``contact_types`` names the user contact entries the profile sends to (e.g. ``("sms",)``);
    a profile with none (a webhook to a chat room) is sent once per user without a contact.
    """

    type_name: ClassVar[str] = ""
    Settings: ClassVar[type[BaseModel]] = StrictModel
    contact_types: tuple[str, ...] = ()  # a profile may set its own from its settings
    description: ClassVar[str] = ""

    def __init__(self, name: str, settings: BaseModel, services: Services):
        self.name = name
        self.settings = settings
        self.services = services  # the gateway's services (core.services), for what the profile needs

    async def start(self) -> None:
        """Open connections; called once at gateway start."""

    async def stop(self) -> None:
        """Close connections; called once at gateway stop."""

    async def send(self, notification: Notification) -> DeliveryResult:
        raise NotImplementedError
