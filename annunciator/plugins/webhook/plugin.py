"""Webhook notification profile: POSTs a JSON notification to a URL (Slack/Teams relays, or the
integrator's own system). A 2xx answer is delivery; 429 and 5xx are retried (honouring
Retry-After); other 4xx fail at once, since sending the same body again cannot fix them."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from pydantic import AnyHttpUrl, field_validator

from annunciator import hookimpl
from annunciator.core.config import Duration, StrictModel
from annunciator.core.notifications import Notification
from annunciator.core.profiles import DeliveryResult, NotificationProfile, parse_retry_after


class WebhookSettings(StrictModel):
    url: AnyHttpUrl
    headers: dict[str, str] = {}
    timeout: Duration = 10.0
    verify_tls: bool = True
    # send per contact of this kind (e.g. "sms" for an SMS appliance's HTTP API); the contact is
    # in the body, and a person without one cannot be reached through this profile
    contact: str | None = None

    @field_validator("headers")
    @classmethod
    def _no_newlines(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if any(c in k + val for c in "\r\n"):
                raise ValueError(f"header {k!r} contains a line break")
        return v



class WebhookProfile(NotificationProfile):
    type_name = "webhook"
    Settings = WebhookSettings
    description = "POST a JSON notification to a URL"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._session: aiohttp.ClientSession | None = None
        kind = self.settings.contact  # type: ignore[attr-defined]
        self.contact_types = (kind,) if kind else ()

    async def start(self) -> None:
        s: WebhookSettings = self.settings  # type: ignore[assignment]
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=s.timeout),
            connector=aiohttp.TCPConnector(limit=100, ssl=bool(s.verify_tls)),
            json_serialize=json.dumps,
        )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, notification: Notification) -> DeliveryResult:
        s: WebhookSettings = self.settings  # type: ignore[assignment]
        if self._session is None:
            await self.start()
        assert self._session is not None
        body = notification.to_dict()
        headers = {"Idempotency-Key": notification.idempotency_key, **s.headers}
        try:
            async with self._session.post(str(s.url), json=body, headers=headers) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return DeliveryResult.sent(resp.headers.get("X-Request-Id"))
                error = f"HTTP {resp.status} from {s.url}"
                if resp.status == 429 or resp.status >= 500:
                    return DeliveryResult.failed(error, retry_after=parse_retry_after(resp.headers.get("Retry-After")))
                return DeliveryResult.failed(error, retryable=False)
        except TimeoutError:
            return DeliveryResult.failed(f"no answer from {s.url} within {s.timeout:g}s")
        except aiohttp.ClientError as exc:
            return DeliveryResult.failed(f"cannot reach {s.url}: {exc}")


@hookimpl
def annunciator_profile_types() -> list[type[NotificationProfile]]:
    return [WebhookProfile]
