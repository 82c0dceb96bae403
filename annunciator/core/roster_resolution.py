"""Who to notify in a roster for one alarm: a plugin's ``annunciator_resolve_roster`` decides
first (calculated rosters, an external on-call system); otherwise the configured schedules,
plans and overrides (core.oncall) do."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pluggy import HookCaller

from .alarms import AlarmEvent, utcnow
from .oncall import OnCall, Resolution
from .users import User


class RosterResolver:
    def __init__(self, oncall: OnCall, users: Mapping[str, User], hook: HookCaller):
        self._oncall = oncall
        self._users = users
        self._hook = hook  # annunciator_resolve_roster

    def __call__(self, roster: str, event: AlarmEvent, at: datetime | None = None,
                 values: dict[str, Any] | None = None) -> Resolution:
        """Who to notify in ``roster`` for ``event``, in order, and why; ``values`` (default: the
        event's) feed calculated rosters."""
        at = at or utcnow()
        kwargs = {"roster": roster, "event": event, "at": at, "users": self._users}
        # call the implementations as pluggy would (firstresult, last registered first), to know
        # which plugin chose: "chosen by plugin X" is what the trace must say
        for impl in reversed(self._hook.get_hookimpls()):
            if impl.hookwrapper or impl.wrapper:
                continue
            chosen: Any = impl.function(*[kwargs[a] for a in impl.argnames])
            if chosen is None:
                continue
            names = [u.username if isinstance(u, User) else str(u) for u in chosen]
            users = list(dict.fromkeys(n for n in names if n in self._users))
            why = [f"chosen by plugin {impl.plugin_name}"]
            why += [f"{n}: named by plugin {impl.plugin_name}, but there is no such user"
                    for n in names if n not in self._users]
            r = self._oncall.roster_settings(roster)
            return Resolution(roster, at.astimezone(UTC), users, r.order if r else "parallel",
                              r.ack_wait if r else None, why)
        res = self._oncall.resolve(roster, at, event.template_values() if values is None else values)
        res.users = [u for u in res.users if u in self._users]
        return res
