"""The alarm model: priorities, events, their state, and the message template language."""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SYSTEM_USER = "system"  # who the gateway itself acts as (journal, audit)


class Priority(enum.IntEnum):
    """Alarm priority, ordered. Compares with ints and with names ("High" > "Low") so that
    pipeline expressions can say ``priority >= "High"`` as integrators do in Ignition."""

    DIAGNOSTIC = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, value: Any) -> Priority:
        if isinstance(value, Priority):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value in cls._value2member_map_:
            return cls(value)
        if isinstance(value, str):
            key = value.strip().upper()
            if key in cls.__members__:
                return cls[key]
            if key.isascii() and key.isdigit() and int(key) in cls._value2member_map_:
                return cls(int(key))
        names = ", ".join(p.label for p in cls)
        raise ValueError(f"expected a priority ({names} or 0-4), got {value!r}")

    @property
    def label(self) -> str:
        return self.name.capitalize()

    def __str__(self) -> str:
        return self.label

    def _other(self, other: Any) -> int | None:
        try:
            return int(Priority.parse(other))
        except ValueError:
            return None

    def __eq__(self, other: object) -> bool:
        o = self._other(other)
        return o is not None and int(self) == o

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __lt__(self, other: Any) -> bool:
        return int(self) < self._require(other)

    def __le__(self, other: Any) -> bool:
        return int(self) <= self._require(other)

    def __gt__(self, other: Any) -> bool:
        return int(self) > self._require(other)

    def __ge__(self, other: Any) -> bool:
        return int(self) >= self._require(other)

    def _require(self, other: Any) -> int:
        o = self._other(other)
        if o is None:
            raise TypeError(f"cannot compare priority with {other!r}")
        return o

    __hash__ = enum.IntEnum.__hash__


class AckMode(enum.StrEnum):
    """How an event gets acknowledged: by a person, automatically when it clears, or never needed."""

    MANUAL = "manual"
    AUTO = "auto"
    UNUSED = "unused"


class Transition(enum.StrEnum):
    """What happened to an event; journal actions and dropout conditions use these names."""

    ACTIVE = "active"
    CLEARED = "cleared"
    ACKNOWLEDGED = "acknowledged"
    SHELVED = "shelved"
    UNSHELVED = "unshelved"


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(slots=True)
class AlarmEvent:
    """One occurrence of an alarm: goes active once, may clear, may be acknowledged.

    ``pipelines`` maps a transition ("active", "cleared", "acknowledged") to the pipeline the event
    enters on it.
    """

    source: str
    name: str
    priority: Priority = Priority.MEDIUM
    display_path: str = ""
    label: str = ""
    event_value: Any = None
    notes: str = ""
    ack_mode: AckMode = AckMode.MANUAL
    ack_notes_required: bool = False
    properties: dict[str, Any] = field(default_factory=dict)
    pipelines: dict[str, str] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    active_time: datetime = field(default_factory=utcnow)
    clear_time: datetime | None = None
    ack_time: datetime | None = None
    ack_user: str | None = None
    ack_notes: str | None = None
    shelved: bool = False
    # a short number people type to acknowledge it ("ACK 12 1234"), unique among open events
    ack_code: int | None = None

    def __post_init__(self) -> None:
        if not self.display_path:
            self.display_path = self.source
        if not self.label:
            self.label = self.name

    @property
    def active(self) -> bool:
        return self.clear_time is None

    @property
    def acknowledged(self) -> bool:
        return self.ack_time is not None

    @property
    def state(self) -> str:
        """Ignition's four states, e.g. "ActiveUnacked", "ClearAcked"."""
        return ("Active" if self.active else "Clear") + ("Acked" if self.acknowledged else "Unacked")

    @property
    def done(self) -> bool:
        """Cleared and acknowledged: nothing more can happen to it."""
        return not self.active and self.acknowledged

    def template_values(self) -> dict[str, Any]:
        """The names a message template or pipeline expression can use for this event.

        Associated properties come first so a built-in name always wins over a property that
        happens to share it.
        """
        values: dict[str, Any] = dict(self.properties)
        values.update(
            eventId=self.id,
            source=self.source,
            displayPath=self.display_path,
            name=self.name,
            label=self.label,
            priority=self.priority,
            eventValue=self.event_value,
            eventTime=self.active_time.isoformat(timespec="seconds"),
            activeTime=self.active_time.isoformat(timespec="seconds"),
            clearTime=self.clear_time.isoformat(timespec="seconds") if self.clear_time else "",
            ackTime=self.ack_time.isoformat(timespec="seconds") if self.ack_time else "",
            ackUser=self.ack_user or "",
            notes=self.notes,
            state=self.state,
            isActive=self.active,
            isAcked=self.acknowledged,
            isShelved=self.shelved,
            ackCode=self.ack_code if self.ack_code is not None else "",
        )
        return values

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape used by the HTTP API and the webhook profile."""

        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {
            "id": self.id,
            "source": self.source,
            "displayPath": self.display_path,
            "name": self.name,
            "label": self.label,
            "priority": self.priority.label,
            "eventValue": self.event_value,
            "notes": self.notes,
            "state": self.state,
            "active": self.active,
            "acknowledged": self.acknowledged,
            "shelved": self.shelved,
            "ackMode": str(self.ack_mode),
            "ackNotesRequired": self.ack_notes_required,
            "properties": self.properties,
            "pipelines": self.pipelines,
            "activeTime": iso(self.active_time),
            "clearTime": iso(self.clear_time),
            "ackTime": iso(self.ack_time),
            "ackUser": self.ack_user,
            "ackNotes": self.ack_notes,
            "ackCode": self.ack_code,
        }


DEFAULT_MESSAGE = "{priority} alarm {displayPath}: {name} ({state}, value {eventValue})"

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def render_message(template: str, values: dict[str, Any]) -> str:
    """Fill ``{name}`` placeholders from ``values``.

    Only bare names are allowed (no ``{a.b}`` or ``{a[0]}``), so a template written by an
    integrator cannot reach into objects; ``{{`` and ``}}`` are literal braces; an unknown
    name is left as written so a typo is visible in the message rather than silently blank.
    """

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        key = match.group(1)
        if key not in values:
            return token
        value = values[key]
        return "" if value is None else str(value)

    return _PLACEHOLDER.sub(replace, template)
