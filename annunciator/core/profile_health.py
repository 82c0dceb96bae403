"""Which notification profiles are failing, since when, and what waits for them.

The dispatcher reports every attempt's outcome here. A profile is *failing* from its first failed
attempt after a success until its next success. The gateway raises its own alarm for a profile
failing longer than ``gateway.profile_alarms.after`` (core.gateway), so an SMS provider outage at
3 a.m. pages somebody over another channel instead of being noticed at 8.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .alarms import utcnow


@dataclass(slots=True)
class ProfileState:
    failing_since: datetime | None = None
    failures: int = 0  # failed attempts since failing_since
    given_up: int = 0  # notifications given up since failing_since
    last_error: str | None = None
    last_success: datetime | None = None
    alarm_event: str | None = None  # the gateway's alarm about this profile, while it is raised


class ProfileHealth:
    def __init__(self) -> None:
        self.states: dict[str, ProfileState] = {}

    def state(self, profile: str) -> ProfileState:
        state = self.states.get(profile)
        if state is None:
            state = self.states[profile] = ProfileState()
        return state

    def success(self, profile: str) -> None:
        state = self.state(profile)
        state.failing_since, state.failures, state.given_up = None, 0, 0
        state.last_success = utcnow()

    def failure(self, profile: str, error: str | None) -> None:
        state = self.state(profile)
        if state.failing_since is None:
            state.failing_since = utcnow()
        state.failures += 1
        state.last_error = error

    def gave_up(self, profile: str) -> None:
        self.state(profile).given_up += 1

    def failing(self) -> dict[str, ProfileState]:
        return {p: s for p, s in self.states.items() if s.failing_since is not None}

    def to_dict(self, waiting: dict[str, int]) -> list[dict[str, Any]]:
        """Every profile that failed, waits, or has an alarm raised, for status and the console."""
        out = []
        for name in sorted(set(self.states) | set(waiting)):
            s = self.states.get(name, ProfileState())
            if s.failing_since is None and not waiting.get(name) and s.alarm_event is None:
                continue
            out.append({
                "profile": name, "failingSince": s.failing_since.isoformat() if s.failing_since else None,
                "failedAttempts": s.failures, "givenUp": s.given_up, "waiting": waiting.get(name, 0),
                "lastError": s.last_error, "lastSuccess": s.last_success.isoformat() if s.last_success else None,
                "alarmEventId": s.alarm_event})
        return out
