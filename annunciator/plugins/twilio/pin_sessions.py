"""PIN sessions: after a correct PIN (typed by SMS or keyed on a call), a person acts without it
for a while. One record for both channels, so a PIN given by SMS also spares the next call's
prompt; it lives here, in the shared Twilio account code, because both plugins use it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from annunciator.core import schema
from annunciator.core.alarms import utcnow

if TYPE_CHECKING:
    from annunciator.core.services import Services
    from annunciator.core.store import Store


class PinSessions:
    """Who is in a PIN session until when; stored, so a restart keeps them."""

    def __init__(self, store: Store):
        self.store = store
        self.ends: dict[str, datetime] = {}  # username -> session end
        self.loaded = False

    async def load(self) -> None:
        if self.loaded:
            return
        ps = schema.pin_sessions
        rows = await self.store.read(lambda conn: conn.execute(sa.select(ps.c.username, ps.c.expires)).all())
        self.ends = {username: end for username, end in rows}
        self.loaded = True

    def active(self, username: str) -> bool:
        end = self.ends.get(username)
        return end is not None and end > utcnow()

    def open(self, username: str, length: float) -> None:
        end = utcnow() + timedelta(seconds=length)
        if username in self.ends:
            self.store.update(schema.pin_sessions, username, {"expires": end})
        else:
            self.store.insert(schema.pin_sessions, {"username": username, "expires": end})
        self.ends[username] = end


def pin_sessions(services: Services) -> PinSessions:
    return services.state.setdefault(PinSessions, lambda: PinSessions(services.store))
