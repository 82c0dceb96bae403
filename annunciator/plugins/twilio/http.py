"""The official ``twilio`` client, sending to the configured API base.

Why a custom HTTP client: Twilio documents custom HTTP clients as the supported extension point of
twilio-python, and it is the one place that sees every request. It moves requests for
api.twilio.com to the configured base (the built-in emulator, or a proxy), refuses any other host,
and keeps the ``Retry-After`` of a 429 where the sender can read it (``TwilioRestException``
carries no headers).
"""

from __future__ import annotations

import contextvars
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from annunciator.core.profiles import parse_retry_after

_TWILIO_API = "https://api.twilio.com"

# per asyncio task, so concurrent sends never read each other's header
retry_after: contextvars.ContextVar[float | None] = contextvars.ContextVar("twilio_retry_after", default=None)


def rebase(url: str, api_base: str) -> str:
    """``url`` on api.twilio.com (any edge/region) moved to ``api_base``; ValueError for other hosts."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not (host == "api.twilio.com" or (host.startswith("api.") and host.endswith(".twilio.com"))):
        raise ValueError(f"refusing to send a Twilio request to {url!r}: only api.twilio.com is rebased")
    if api_base.rstrip("/") == _TWILIO_API:
        return url
    base = urlsplit(api_base)
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + parts.path, parts.query, parts.fragment))



class AsyncRebasedHttpClient(AsyncTwilioHttpClient):
    """``AsyncTwilioHttpClient`` that sends api.twilio.com requests to ``api_base``."""

    def __init__(self, api_base: str, **kwargs: Any) -> None:
        # max_retries stays None (no retries inside the library): the dispatcher retries with
        # backoff and records each attempt
        super().__init__(**kwargs)
        self.api_base = api_base

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        target = rebase(url, self.api_base)
        if kwargs.get("timeout") is None and self.timeout:
            kwargs["timeout"] = self.timeout  # the library passes only a per-call timeout to aiohttp
        response = await super().request(method, target, *args, **kwargs)
        headers = response.headers or {}
        retry_after.set(parse_retry_after(next((v for k, v in headers.items() if k.lower() == "retry-after"), None)))
        self.checked(method, target, response)
        return response

    def checked(self, method: str, url: str, response: Response) -> None:
        """Hook for subclasses (the contract check in tests); the response as it came."""


def async_client(api_base: str, account_sid: str, auth_token: str, timeout: float,
                 http_class: type[AsyncRebasedHttpClient] = AsyncRebasedHttpClient) -> Client:
    """An official client for ``account_sid`` whose requests go to ``api_base``; create it in the
    event loop that uses it, and ``await client.http_client.close()`` when done."""
    return Client(account_sid, auth_token, http_client=http_class(api_base, timeout=timeout))
