"""Signed acknowledgement links and the CSRF tokens of the page they open.

An ack token is an itsdangerous signature (HMAC-SHA1 over a key derived from the gateway secret,
with its own salt so it cannot be confused with any other signed value) over
``{"u": user, "e": [event ids], "p": profile, "j": random id}`` plus the time it was made. It is
bound to one person and the alarms of one email; the expiry is checked against the issuing
profile's ``ack_link_expiry``; the random id makes it single-use (see ``AckLinks.used``).

The page's CSRF token is bound to the ack token and to a random nonce kept in a SameSite=Strict
cookie: a POST from another site carries neither, and a token copied from one browser's page does
not work with another browser's cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

SALT = "annunciator.email.ack-link"


@dataclass(frozen=True, slots=True)
class AckClaim:
    """What a valid ack token says."""

    user: str
    event_ids: list[str]
    profile: str
    jti: str
    issued: datetime


class TokenError(Exception):
    """A token that is forged, malformed or expired; the message is safe to show."""


def _serializer(secret: bytes) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt=SALT)


def make_token(secret: bytes, user: str, event_ids: list[str], profile: str) -> str:
    """A new signed token for ``user`` to acknowledge ``event_ids``."""
    return _serializer(secret).dumps({"u": user, "e": list(event_ids), "p": profile, "j": secrets.token_hex(8)})


def read_token(secret: bytes, token: str, max_age: float) -> AckClaim:
    """Verify signature and age; raise TokenError saying which failed."""
    try:
        data, ts = _serializer(secret).loads(token, max_age=int(max_age), return_timestamp=True)
    except SignatureExpired as exc:
        raise TokenError("This link has expired.") from exc
    except BadSignature as exc:
        raise TokenError("This link is not valid.") from exc
    if not (isinstance(data, dict) and isinstance(data.get("u"), str) and isinstance(data.get("e"), list)
            and isinstance(data.get("j"), str) and isinstance(data.get("p"), str)):
        raise TokenError("This link is not valid.")  # signed by us, so only a format change gets here
    issued = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    return AckClaim(data["u"], [str(e) for e in data["e"]], data["p"], data["j"], issued)


def unverified_profile(secret: bytes, token: str) -> str | None:
    """The profile a correctly signed token names, ignoring age: its expiry is that profile's."""
    try:
        data = _serializer(secret).loads(token)
    except BadSignature:
        return None
    return data.get("p") if isinstance(data, dict) and isinstance(data.get("p"), str) else None


def _mac(secret: bytes, token: str, nonce: str) -> str:
    key = hashlib.sha256(b"annunciator.email.csrf:" + secret).digest()
    return hmac.new(key, f"{token}\0{nonce}".encode(), hashlib.sha256).hexdigest()


def new_csrf(secret: bytes, token: str, nonce: str | None = None) -> tuple[str, str]:
    """(nonce for the cookie, value for the form's hidden field). The browser's nonce is kept when
    it has one, so the link opened in two tabs gives two forms that both work."""
    if not nonce or len(nonce) > 64:
        nonce = secrets.token_urlsafe(16)
    return nonce, _mac(secret, token, nonce)


def csrf_ok(secret: bytes, token: str, nonce: str | None, value: str | None) -> bool:
    if not nonce or not value:
        return False
    return hmac.compare_digest(_mac(secret, token, nonce), value)
