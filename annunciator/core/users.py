"""Users who get notified, and their PINs.

A PIN is stored only as HMAC-SHA256(server secret, per-user salt + PIN). A slow password hash
would add little against offline guessing of 10^4 four-digit PINs yet would cost every inbound
SMS dearly; the defence is the secret (kept outside the database) plus lockout after wrong tries,
and comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from .alarms import utcnow

MAX_PIN_FAILURES = 3
LOCKOUT = timedelta(minutes=15)


@dataclass(slots=True)
class User:
    username: str
    id: int = 0
    name: str = ""
    language: str = "en-US"
    contacts: dict[str, list[str]] = field(default_factory=dict)
    pin_hash: str | None = None
    pin_salt: str | None = None
    pin_failures: int = 0
    locked_until: datetime | None = None
    pin_failed_at: datetime | None = None  # first wrong PIN of the current window
    pin_expires: datetime | None = None  # None: the PIN does not expire
    pin_reminded: datetime | None = None  # the expiry the person was reminded of

    @property
    def display_name(self) -> str:
        return self.name or self.username

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "username": self.username, "name": self.display_name,
                "language": self.language, "contacts": self.contacts}

    def status(self) -> dict[str, object]:
        """For administrators: never the hash, only whether a PIN is set and any lockout."""
        locked = self.locked_until if self.locked_until and self.locked_until > utcnow() else None
        return {**self.to_dict(), "hasPin": bool(self.pin_hash),
                "lockedUntil": locked.isoformat() if locked else None,
                "pinExpires": self.pin_expires.isoformat() if self.pin_hash and self.pin_expires else None,
                "pinExpired": bool(self.pin_hash and self.pin_expires and self.pin_expires <= utcnow())}


def load_secret(path: Path) -> bytes:
    """The server secret used to key PIN hashes; created (mode 0600) on first start."""
    if path.exists():
        data = path.read_bytes().strip()
        if len(data) < 32:
            raise ValueError(f"{path}: secret is too short (need at least 32 bytes)")
        return data
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data + b"\n")
    return data


def hash_pin(secret: bytes, salt: str, pin: str) -> str:
    return hmac.new(secret, (salt + ":" + pin).encode(), hashlib.sha256).hexdigest()


def set_pin(user: User, secret: bytes, pin: str, expires: datetime | None = None) -> None:
    user.pin_salt = secrets.token_hex(16)
    user.pin_hash = hash_pin(secret, user.pin_salt, pin)
    user.pin_failures = 0
    user.locked_until = None
    user.pin_failed_at = None
    user.pin_expires = expires
    user.pin_reminded = None


def pin_matches(user: User, secret: bytes, pin: str) -> bool:
    """Constant-time comparison against the stored keyed hash; no counters touched."""
    if not user.pin_hash or not user.pin_salt:
        return False
    return hmac.compare_digest(hash_pin(secret, user.pin_salt, pin), user.pin_hash)


class PinResult:
    OK = "ok"
    WRONG = "wrong"
    LOCKED = "locked"
    NO_PIN = "no-pin"
    EXPIRED = "expired"  # the right PIN, past its expiry: refused, not counted as wrong


def check_pin(user: User, secret: bytes, pin: str, now: datetime | None = None, *,
              max_failures: int | None = None, lockout: timedelta | None = None) -> str:
    """Verify a PIN, counting failures; returns a PinResult value. Mutates the user's counters:
    the caller persists them. ``max_failures``/``lockout`` default to the gateway's own."""
    now = now or utcnow()
    if user.locked_until and user.locked_until > now:
        return PinResult.LOCKED
    if not user.pin_hash or not user.pin_salt:
        return PinResult.NO_PIN
    if pin_matches(user, secret, pin):
        user.pin_failures = 0
        user.locked_until = None
        user.pin_failed_at = None
        if user.pin_expires is not None and user.pin_expires <= now:
            return PinResult.EXPIRED
        return PinResult.OK
    # wrong PINs count within a window (as long as the lockout): a typo last week is forgotten
    window = lockout or LOCKOUT
    if user.pin_failed_at is None or now - user.pin_failed_at > window:
        user.pin_failures, user.pin_failed_at = 0, now
    user.pin_failures += 1
    if user.pin_failures >= (max_failures or MAX_PIN_FAILURES):
        user.locked_until = now + (lockout or LOCKOUT)
        user.pin_failures = 0
        return PinResult.LOCKED
    return PinResult.WRONG


_PIN_LIKE = re.compile(r"(?<![#\d])\d{4,12}(?!\d)", re.ASCII)


def mask_pins(text: str) -> str:
    """Every run of 4 to 12 digits not written as a #code: whatever a reply looks like ("1234 thx",
    "pin 1234", "Ack1234"), a PIN in it is never stored or logged."""
    return _PIN_LIKE.sub(lambda m: "*" * len(m.group()), text)
