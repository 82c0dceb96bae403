"""Passwords, sessions, CSRF tokens and the sign-in rate limit of the console."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from itsdangerous import BadSignature, URLSafeTimedSerializer

from annunciator.core import schema

if TYPE_CHECKING:
    from annunciator.core.store import Store

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
    """Signed (not encrypted) cookies: nothing secret goes in them, and tampering breaks the signature.

    A signed-out session's id is kept until its cookie would have expired anyway: in memory, and
    (with a ``store``) in ``console_revocations``, so the cookie stays refused after a restart or a
    failover to another node (``restore`` loads the rows when the console starts).
    """

    # a revocation outlives the cookie's own expiry by this much: the signature's timestamp is
    # whole seconds, so a cookie may verify a moment after issued + lifetime
    GRACE = 60.0

    def __init__(self, secret: bytes, lifetime: float, store: Store | None = None):
        # derived, so the console never signs with the very key that protects PINs
        key = hmac.new(secret, b"annunciator-console-session", hashlib.sha256).digest()
        self.serializer = URLSafeTimedSerializer(key, salt="console-session")
        self.lifetime = lifetime
        self.store = store
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
        """Refuse the session's cookie from now on. A sid is stored once: revoking it again (two
        sign-outs racing) queues no second row for the same primary key."""
        now = time.time()
        self.revoked = {s: t for s, t in self.revoked.items() if t > now}
        if session.sid in self.revoked:
            return
        until = session.issued + self.lifetime + self.GRACE
        self.revoked[session.sid] = until
        if self.store is not None:
            self.store.insert(schema.console_revocations,
                              {"sid": session.sid, "until": datetime.fromtimestamp(until, UTC)})

    def restore(self, revoked: Mapping[str, float]) -> None:
        """Add revocations stored earlier (sid -> until, epoch seconds); expired ones are skipped."""
        now = time.time()
        for sid, until in revoked.items():
            if until > now:
                self.revoked[sid] = max(until, self.revoked.get(sid, 0.0))


def stored_revocations(conn: sa.Connection) -> dict[str, float]:
    """The revocations in ``console_revocations`` that have not expired (for ``Sessions.restore``).
    Expired rows are left: a random sid never comes back, and they cost one indexed range each."""
    t = schema.console_revocations
    rows = conn.execute(sa.select(t.c.sid, t.c.until).where(t.c.until > datetime.now(UTC))).all()
    return {sid: until.timestamp() for sid, until in rows}


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
