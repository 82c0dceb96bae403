"""Pointing the official ``twilio`` client at the emulator (or at Prism in front of it).

Why a custom HTTP client rather than patching ``client.api.base_url``: Twilio documents custom
HTTP clients as *the* supported extension point of twilio-python
(https://www.twilio.com/docs/libraries/python/custom-http-clients-python), and it works for every
domain, for paging (``next_page_uri`` is made absolute against api.twilio.com) and for the async
client alike. The rebasing client also refuses any URL it does not know how to rebase, so a request
can never leave for the real Twilio from a test.

It also turns a Prism contract violation (``sl-violations`` header with an error, or Prism's own
problem+json answer) into :class:`ContractViolation`, an AssertionError naming the violation,
instead of a puzzling ``TwilioRestException`` with status 422 or 500.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

__all__ = ["AsyncRebasedHttpClient", "ContractViolation", "RebasedHttpClient", "make_async_client", "make_client"]

_TWILIO_HOSTS = ("api.twilio.com",)
_PRISM_ERRORS = "https://stoplight.io/prism/errors#"


class ContractViolation(AssertionError):
    """A request or response broke Twilio's OpenAPI description (reported by Prism)."""


def rebase(url: str, api_base: str) -> str:
    """``url`` on api.twilio.com (any edge/region) moved to ``api_base``; ValueError for other hosts."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not (host in _TWILIO_HOSTS or (host.startswith("api.") and host.endswith(".twilio.com"))):
        raise ValueError(f"refusing to send a Twilio request to {url!r}: only api.twilio.com is rebased")
    base = urlsplit(api_base)
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + parts.path, parts.query, parts.fragment))


def check_contract(method: str, url: str, response: Response) -> None:
    """Raise ContractViolation when Prism reported an error-level violation for this exchange."""
    problems: list[dict[str, Any]] = []
    header = _header(response, "sl-violations")
    if header:
        try:
            problems = [v for v in json.loads(header) if str(v.get("severity", "")).lower() == "error"]
        except ValueError:
            problems = [{"message": header}]
    body: dict[str, Any] = {}
    if response.status_code >= 400 and response.text and _PRISM_ERRORS in response.text:
        try:
            body = json.loads(response.text)
        except ValueError:
            body = {}
        if str(body.get("type", "")).startswith(_PRISM_ERRORS) and not problems:
            problems = body.get("validation") or [{"message": f"{body.get('title')}: {body.get('detail')}"}]
    if problems:
        lines = [f"Twilio contract violation (Prism) on {method} {urlsplit(url).path}:"]
        for p in problems:
            where = ".".join(str(x) for x in p.get("location", []))
            lines.append(f"  - {where}: {p.get('message')}" if where else f"  - {p.get('message')}")
        raise ContractViolation("\n".join(lines))


def _header(response: Response, name: str) -> str | None:
    headers = response.headers or {}
    for k, v in headers.items():
        if k.lower() == name:
            return str(v)
    return None


class RebasedHttpClient(TwilioHttpClient):
    """``TwilioHttpClient`` that sends api.twilio.com requests to ``api_base`` instead."""

    def __init__(self, api_base: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.api_base = api_base
        self.last_response: Response | None = None

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        target = rebase(url, self.api_base)
        response = super().request(method, target, *args, **kwargs)
        # TwilioRestException carries no headers; Retry-After of a 429 is read from here
        self.last_response = response
        check_contract(method, target, response)
        return response


class AsyncRebasedHttpClient(AsyncTwilioHttpClient):
    """``AsyncTwilioHttpClient`` that sends api.twilio.com requests to ``api_base`` instead."""

    def __init__(self, api_base: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.api_base = api_base
        self.last_response: Response | None = None

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        target = rebase(url, self.api_base)
        if kwargs.get("timeout") is None and self.timeout:
            # the async client hands only the per-call timeout to aiohttp (a number is fine there)
            kwargs["timeout"] = self.timeout
        response = await super().request(method, target, *args, **kwargs)
        self.last_response = response
        check_contract(method, target, response)
        return response


def make_client(api_base: str, account_sid: str, auth_token: str, *, timeout: float = 5.0,
                username: str | None = None, password: str | None = None) -> Client:
    """An official ``twilio.rest.Client`` for ``account_sid`` whose requests all go to ``api_base``.

    ``username``/``password`` authenticate with an API key (``SK…``/secret) instead of the auth token.
    ``timeout`` bounds every request: twilio-python's default is no timeout at all.
    """
    http = RebasedHttpClient(api_base, timeout=timeout)
    return Client(username or account_sid, password or auth_token, account_sid=account_sid, http_client=http)


def make_async_client(api_base: str, account_sid: str, auth_token: str, *, timeout: float = 5.0) -> Client:
    """Like :func:`make_client`, for the ``*_async`` methods; close ``client.http_client`` when done.

    Create it inside the event loop that will use it (aiohttp sessions belong to one loop).
    """
    http = AsyncRebasedHttpClient(api_base, timeout=timeout)
    return Client(account_sid, auth_token, http_client=http)
