"""Registers the console: its ``console:`` config section, its routes and its hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from annunciator import hookimpl

from .settings import ConsoleSettings

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from annunciator.core.config import Config
    from annunciator.core.gateway import Gateway
    from annunciator.core.notifications import Notification


def console_of(gateway: Gateway) -> Any:
    """The gateway's Console (created with its routes); None when disabled."""
    return gateway.extensions.get("console")


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
def annunciator_routes(gateway: Gateway) -> list[BaseRoute]:
    from .app import Console

    settings: ConsoleSettings = gateway.config.sections.get("console") or ConsoleSettings()
    if not settings.enabled:
        return []
    console = gateway.extensions["console"] = Console(gateway)
    return console.routes()


@hookimpl
def annunciator_notification_event(gateway: Gateway, notification: Notification, status: str) -> None:
    console = console_of(gateway)
    if console is not None:
        console.on_notification(notification, status)
