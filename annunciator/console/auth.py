"""Passwords, sessions, CSRF tokens and the sign-in rate limit of the console."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "annunciator_console"
_hasher = PasswordHasher()
# Verified against when the user name is unknown, so a wrong name costs as long as a wrong
# password and the answer's timing does not tell which names exist.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def hash_password(password: str) -> str:
    """An argon2id hash (argon2-cffi's recommended parameters) for ``console.users.NAME.password_hash``."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant work whether or not the user exists (``password_hash`` None)."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass
class Session:
    """What the signed cookie carries. The role is not in it: it is read from the config on every
    request, so a changed or removed console user takes effect at once."""

    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    user: str | None = None
    sid: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    issued: float = field(default_factory=time.time)
    changed: bool = False

    def dump(self) -> dict[str, Any]:
        return {"c": self.csrf, "u": self.user, "s": self.sid, "t": self.issued}

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token).encode(), self.csrf.encode())


class Sessions:
    """Signed (not encrypted) cookies: nothing secret goes in them, and tampering breaks the signature."""

    def __init__(self, secret: bytes, lifetime: float):
        # derived, so the console never signs with the very key that protects PINs
        key = hmac.new(secret, b"annunciator-console-session", hashlib.sha256).digest()
        self.serializer = URLSafeTimedSerializer(key, salt="console-session")
        self.lifetime = lifetime
        self.revoked: dict[str, float] = {}  # sid -> when it may be forgotten (after it expires anyway)

    def load(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        try:
            data = self.serializer.loads(cookie, max_age=int(self.lifetime))
        except BadSignature:  # includes SignatureExpired
            return None
        if not isinstance(data, dict) or data.get("s") in self.revoked:
            return None
        return Session(csrf=str(data.get("c")), user=data.get("u"), sid=str(data.get("s")),
                       issued=float(data.get("t") or 0))

    def dump(self, session: Session) -> str:
        return self.serializer.dumps(session.dump())

    def revoke(self, session: Session) -> None:
        now = time.time()
        self.revoked = {s: t for s, t in self.revoked.items() if t > now}
        self.revoked[session.sid] = session.issued + self.lifetime


class LoginLimiter:
    """Failures per key (client address, user name) in a sliding window. Names are counted whether
    or not they exist, so being limited says nothing about an account."""

    def __init__(self, attempts: int, window: float):
        self.attempts, self.window = attempts, window
        self.failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self.failures.setdefault(key, deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def retry_after(self, *keys: str) -> float:
        """Seconds until another attempt is allowed (0: allowed now)."""
        now = time.monotonic()
        waits = [q[0] + self.window - now for k in keys if len(q := self._recent(k, now)) >= self.attempts]
        return max(waits, default=0.0)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        for k in keys:
            self._recent(k, now).append(now)
        if len(self.failures) > 10000:  # a spray of names must not grow memory without bound
            self.failures = {k: q for k, q in self.failures.items() if q and q[-1] > now - self.window}

    def succeeded(self, *keys: str) -> None:
        for k in keys:
            self.failures.pop(k, None)
