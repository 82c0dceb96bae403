"""The people the gateway pages: built from the config's ``users:`` (names, contacts: the config
is their source of truth) and the database (numeric ids, PIN hashes, lockout counters)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from . import schema
from .alarms import utcnow
from .config import ChannelSettings, UserSettings
from .errors import Invalid, NotFound
from .store import Store
from .users import User, pin_matches
from .users import set_pin as hash_pin

_NO_PREFERENCES = ChannelSettings()


class UserDirectory:
    def __init__(self, store: Store, settings: Mapping[str, UserSettings], secret: Callable[[], bytes],
                 pin_lifetime: float | None = None):
        self._store = store
        self._settings = settings
        self._pin_lifetime = pin_lifetime  # gateway.pins.expire_after: a PIN set now expires then
        self._secret = secret  # loaded at start, after this is built
        self.users: dict[str, User] = {}
        self.by_id: dict[int, User] = {}

    async def sync(self) -> None:
        """Config users are the source of truth for names and contacts; PIN hashes, lockout
        counters and numeric ids live in the database."""
        configured = self._settings

        def load(conn: sa.Connection) -> list[dict[str, Any]]:
            return [dict(r._mapping) for r in conn.execute(sa.select(schema.users))]

        stored = {r["username"]: r for r in await self._store.read(load)}
        # ids start at 0, as in the seed module (scripts call system.twilio.getUser(0))
        next_id = max([r["id"] for r in stored.values()] + [u.id for u in configured.values() if u.id is not None],
                      default=-1) + 1
        for username, us in configured.items():
            row = stored.get(username)
            user = User(username=username, name=us.name, language=us.language,
                        contacts=dict(us.contacts))  # type: ignore[arg-type]
            if row is not None:
                user.id = row["id"]
                user.pin_hash, user.pin_salt = row["pin_hash"], row["pin_salt"]
                user.pin_failures, user.locked_until = row["pin_failures"], row["locked_until"]
                user.pin_failed_at = row["pin_failed_at"]
                user.pin_expires, user.pin_reminded = row.get("pin_expires"), row.get("pin_reminded")
            else:
                user.id = us.id if us.id is not None else next_id
                next_id = max(next_id, user.id) + 1
            if us.pin is not None and not pin_matches(user, self._secret(), us.pin):
                hash_pin(user, self._secret(), us.pin, self._expiry())
            values = {"username": username, "name": user.name, "language": user.language,
                      "contacts": user.contacts, **self._pin_row(user)}
            if row is None:
                self._store.insert(schema.users, {"id": user.id, **values})
            else:
                self._store.update(schema.users, user.id, values)
            self.users[username] = user
            self.by_id[user.id] = user
        await self._store.commit()

    def get(self, username: str) -> User:
        user = self.users.get(username)
        if user is None:
            raise NotFound(f"no user {username!r}; known: {', '.join(sorted(self.users)) or '(none)'}")
        return user

    def set_pin(self, username: str, pin: str) -> User:
        """Set a PIN (stored only as its keyed hash); clears any lockout."""
        if not pin.isascii() or not pin.isdigit() or not 4 <= len(pin) <= 12:
            raise Invalid("expected a PIN of 4 to 12 digits")
        user = self.get(username)
        hash_pin(user, self._secret(), pin, self._expiry())
        self.save(user)
        return user

    def _expiry(self) -> datetime | None:
        return utcnow() + timedelta(seconds=self._pin_lifetime) if self._pin_lifetime else None

    def unlock(self, username: str) -> User:
        user = self.get(username)
        user.pin_failures, user.locked_until, user.pin_failed_at = 0, None, None
        self.save(user)
        return user

    def save(self, user: User) -> None:
        """Persist PIN and lockout state after a check."""
        self._store.update(schema.users, user.id, self._pin_row(user))

    @staticmethod
    def _pin_row(user: User) -> dict[str, Any]:
        return {"pin_hash": user.pin_hash, "pin_salt": user.pin_salt, "pin_failures": user.pin_failures,
                "locked_until": user.locked_until, "pin_failed_at": user.pin_failed_at,
                "pin_expires": user.pin_expires, "pin_reminded": user.pin_reminded}

    def channel_preferences(self, username: str) -> ChannelSettings:
        """The person's own channel policy and order (``users.<name>.channels``)."""
        us = self._settings.get(username)
        return (us.channels if us is not None else None) or _NO_PREFERENCES
