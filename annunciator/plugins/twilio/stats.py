"""Twilio statistics per person and in total, as the seed module keeps them: messages and calls
the gateway sent to a person, and received from them, with call minutes.

The stored messages and calls are the record, so the figures survive a restart (they are counted
from the ``messages`` table at start) and then move with every message; they are published as
``System/Gateway/Twilio/*`` tags within a second of a change.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from annunciator.core import schema

if TYPE_CHECKING:
    from annunciator.core.services import Services

PREFIX = "System/Gateway/Twilio"
TOTALS = ("MessagesSent", "MessagesReceived", "CallsSent", "CallsReceived", "CallMinutesSent",
          "CallMinutesReceived")
USER_COLUMNS = ("UserId", "Username", "PhoneNumber", *TOTALS)


@dataclass
class UserStats:
    """``sent``: from the gateway to the person; ``received``: from the person to the gateway."""

    messages_sent: int = 0
    messages_received: int = 0
    calls_sent: int = 0
    calls_received: int = 0
    # each call rounded up to whole minutes, as Twilio bills them
    call_minutes_sent: int = 0
    call_minutes_received: int = 0

    def values(self) -> tuple[int, ...]:
        return (self.messages_sent, self.messages_received, self.calls_sent, self.calls_received,
                self.call_minutes_sent, self.call_minutes_received)


class TwilioStats:
    def __init__(self, services: Services):
        self.services = services
        self.by_user: dict[str, UserStats] = {}  # username, "" for numbers that are nobody's
        self.loaded = False
        self._defined = False
        self._publish_pending = False

    async def load(self) -> None:
        if self.loaded:
            return
        m = schema.messages

        def read(conn: sa.Connection) -> Sequence[Any]:
            # (duration + 59) / 60 is integer division on SQLite and PostgreSQL alike: minutes per call
            minutes = sa.func.coalesce(sa.func.sum((m.c.duration + 59) / 60), 0)
            return conn.execute(sa.select(m.c.channel, m.c.direction, m.c.username, sa.func.count(), minutes)
                                .where(m.c.channel.in_(["sms", "voice"]))
                                .group_by(m.c.channel, m.c.direction, m.c.username)).all()

        for channel, direction, username, count, minutes in await self.services.store.read(read):
            self._add(channel, direction, username, int(count), int(minutes or 0))
        self.loaded = True
        self.publish_soon()

    def count(self, channel: str, direction: str, username: str | None, seconds: int = 0, calls: int = 1) -> None:
        """One message or call more (``calls=0`` adds only the minutes of a call already counted)."""
        self._add(channel, direction, username, calls, math.ceil(max(seconds, 0) / 60))
        self.publish_soon()

    def _add(self, channel: str, direction: str, username: str | None, count: int, minutes: int) -> None:
        s = self.by_user.setdefault(username or "", UserStats())
        out = direction == "out"
        if channel == "sms":
            if out:
                s.messages_sent += count
            else:
                s.messages_received += count
        elif out:
            s.calls_sent += count
            s.call_minutes_sent += minutes
        else:
            s.calls_received += count
            s.call_minutes_received += minutes

    def of(self, username: str) -> UserStats:
        return self.by_user.get(username, UserStats())

    def totals(self) -> UserStats:
        t = UserStats()
        for s in self.by_user.values():
            t.messages_sent += s.messages_sent
            t.messages_received += s.messages_received
            t.calls_sent += s.calls_sent
            t.calls_received += s.calls_received
            t.call_minutes_sent += s.call_minutes_sent
            t.call_minutes_received += s.call_minutes_received
        return t

    # --- tags -----------------------------------------------------------------------------

    def define_tags(self) -> None:
        tags = self.services.tags
        for name in TOTALS:
            tags.define(f"{PREFIX}/{name}", "Int4", 0)
        tags.define(f"{PREFIX}/UserStatistics", "Dataset", self.dataset())
        self._defined = True

    def dataset(self) -> dict[str, Any]:
        """One row per configured person (and none for unknown numbers), as the seed's dataset."""
        rows = []
        for user in sorted(self.services.users.values(), key=lambda u: u.id or 0):
            phone = (user.contacts.get("sms") or user.contacts.get("phone") or [""])[0]
            rows.append([user.id, user.username, phone, *self.of(user.username).values()])
        return {"columns": list(USER_COLUMNS), "rows": rows}

    def publish_soon(self) -> None:
        """Coalesce a burst of messages into one tag update, well within a second."""
        if self._publish_pending:
            return
        self._publish_pending = True
        try:
            asyncio.get_running_loop().call_later(0.2, self.publish)
        except RuntimeError:
            self.publish()

    def publish(self) -> None:
        self._publish_pending = False
        if not self._defined:
            return  # define_tags runs at start, and publishes then
        tags = self.services.tags
        for name, value in zip(TOTALS, self.totals().values(), strict=True):
            if tags.read(f"{PREFIX}/{name}").value != value:
                tags.write(f"{PREFIX}/{name}", value)
        tags.write(f"{PREFIX}/UserStatistics", self.dataset())


def twilio_stats(services: Services) -> TwilioStats:
    return services.state.setdefault(TwilioStats, lambda: TwilioStats(services))
