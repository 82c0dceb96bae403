"""Registers the console: its ``console:`` config section, its routes and its hooks."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from annunciator import hookimpl
from annunciator.core.errors import Unavailable

from .settings import ConsoleSettings

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from annunciator.core.config import Config
    from annunciator.core.notifications import Notification
    from annunciator.core.services import Services

    from .app import Console

log = logging.getLogger(__name__)


def console_of(services: Services) -> Console | None:
    """The gateway's Console (created with its routes); None when disabled."""
    from .app import Console

    return services.state.get(Console)


@hookimpl
def annunciator_config_sections() -> dict[str, Any]:
    return {"console": ConsoleSettings}


@hookimpl
def annunciator_check_config(config: Config) -> list[tuple[str, str]]:
    settings: ConsoleSettings = config.sections.get("console") or ConsoleSettings()
    problems = []
    for name, user in settings.users.items():
        for pool in user.pools:
            if not _pool_exists(config, pool):
                problems.append((f"console.users.{name}.pools.{pool}", f"unknown sender pool {pool!r}"))
    return problems


def _pool_exists(config: Config, pool: str) -> bool:
    twilio = config.sections.get("twilio")
    accounts = getattr(twilio, "accounts", {}) or {}
    return any(pool in getattr(a, "pools", {}) for a in accounts.values())


@hookimpl
def annunciator_routes(services: Services) -> list[BaseRoute]:
    from .app import Console

    settings: ConsoleSettings = services.config.sections.get("console") or ConsoleSettings()
    if not settings.enabled:
        return []
    console = services.state.get(Console)
    if console is None:
        console = services.state.put(Console(services))
        # the console of this gateway hears of notifications as a plugin object of its own
        services.plugins.register(_NotificationListener(console))
    return console.routes()


@hookimpl
async def annunciator_startup(services: Services) -> None:
    """Sign-outs stored earlier (before a restart or a failover) are refused from the first
    request. A node of a cluster builds its routes only after this: its console loads them before
    its first request instead (Console.restore_revocations)."""
    console = console_of(services)
    if console is None:
        return
    try:
        await console.restore_revocations()
    except Unavailable as exc:  # the first console request tries again (and answers 503 until then)
        log.warning("console: could not load the stored sign-outs yet: %s", exc)


class _NotificationListener:
    def __init__(self, console: Console):
        self.console = console

    @hookimpl
    def annunciator_notification_event(self, notification: Notification, status: str) -> None:
        self.console.on_notification(notification, status)
