"""The plugin contract: every extension point of annunciator, one hook each.

A plugin is a module or object with functions named like the hooks below, decorated with
``annunciator.hookimpl``; it is found through the ``annunciator`` entry-point group. The built-in
profiles and blocks are registered the same way.

No hook receives the gateway. Hooks that extend the running gateway (routes, scripting
namespaces, tags, start and stop) receive ``services`` (core.services.Services): the services it
built, each by its own type, and ``services.state`` for the plugin's own per-gateway state.
Observers receive only what they observe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pydantic import BaseModel
    from starlette.routing import BaseRoute

    from .alarms import AlarmEvent
    from .config import Config
    from .notifications import Notification
    from .pipeline import Block
    from .profiles import NotificationProfile
    from .services import Services
    from .tag_provider import TagProvider
    from .users import User

hookspec = pluggy.HookspecMarker("annunciator")
hookimpl = pluggy.HookimplMarker("annunciator")


@hookspec
def annunciator_profile_types() -> Sequence[type[NotificationProfile]]:
    """Called once when plugins load, before the config is read.

    Return the notification profile classes the plugin provides. Each class has a unique
    ``type_name`` (what ``profiles.NAME.type`` names in the config), a pydantic ``Settings`` model
    for its config keys, and an async ``send(notification) -> DeliveryResult``.
    """


@hookspec
def annunciator_block_types() -> Sequence[type[Block]]:
    """Called once when plugins load, before the config is read.

    Return the pipeline block classes the plugin provides, each with a unique ``type_name`` (what
    ``blocks[i].type`` names) and a pydantic ``Settings`` model.
    """


@hookspec
def annunciator_config_sections() -> dict[str, type[BaseModel]]:
    """Called once when the config is read, before it is validated.

    Return ``{section: pydantic model}`` for top-level config sections the plugin owns (e.g.
    ``twilio``). The loader validates each section present in the file against its model,
    reporting problems with the section's key paths, and keeps the result in
    ``config.sections[section]`` (the model's defaults when the file has no such section).
    A model with a ``pipeline_references()`` method returning ``[(key path, pipeline)]`` has
    those names checked with the core's own references (the tags section's alarms do).
    """


@hookspec
def annunciator_check_config(config: Config) -> Sequence[tuple[str, str]] | None:
    """Called once per config load, after every section, profile and pipeline is validated.

    Return ``(key path, message)`` problems that need the whole config to see (a profile naming an
    account that does not exist). The loader refuses the config if any are returned. To warn
    without refusing (a missing external URL), append to ``config.notices`` instead.
    """


@hookspec
def annunciator_routes(services: Services) -> Sequence[BaseRoute]:
    """Called once when the HTTP app is built, after the gateway is configured.

    Return Starlette routes to mount (webhooks, pages). Routes under ``/api/`` require the API
    bearer token; other routes must check their own callers (e.g. a webhook signature).
    """


@hookspec
def annunciator_scripting_namespaces(services: Services) -> dict[str, Any]:
    """Called when the ``system`` object for scripts is built (once per gateway start).

    Return a mapping of attribute name to namespace object, e.g. ``{"twilio": TwilioFunctions()}``
    so scripts can call ``system.twilio.sendMessage(...)``.
    """


@hookspec
def annunciator_register_tags(services: Services, tags: TagProvider) -> None:
    """Called once at gateway start, after the store is open.

    Create the plugin's tags on ``tags`` (``tags.define(path, data_type, value)``) and keep the
    provider to write their values later. Returns nothing.
    """


@hookspec(firstresult=True)
def annunciator_resolve_roster(
    roster: str, event: AlarmEvent, at: datetime, users: Mapping[str, User]
) -> Sequence[User | str] | None:
    """Called each time a block notifies a roster.

    Return the users (or user names) to notify, in order, for ``roster`` at time ``at``; ``users``
    are the gateway's people by name. The first plugin that returns a list decides (schedules,
    rotations, overrides, calculated rosters), and the trace says which plugin chose. Return None
    to leave the decision to others; the default is the configured schedules and rosters.
    """


@hookspec
def annunciator_alarm_event(event: AlarmEvent, transition: str) -> None:
    """Called after an alarm event changed state and the change was queued for storage.

    ``transition`` is "active", "cleared", "acknowledged", "shelved" or "unshelved", or
    "discarded" when the database refused the row of an event reported "active" a moment before:
    it was never stored, is no longer listed, and pages nobody. Observers must not block: schedule
    any I/O as a task. Returns nothing.
    """


@hookspec
def annunciator_notification_event(notification: Notification, status: str) -> None:
    """Called when a notification changes status: "sent", "failed", "cancelled", "retrying".

    Observers (statistics, audit) must not block. Returns nothing.
    """


@hookspec
def annunciator_startup(services: Services) -> None:
    """Called when the gateway has started (store open, timers running), before HTTP serves.

    May return an awaitable, which is awaited. Returns nothing.
    """


@hookspec
def annunciator_shutdown(services: Services) -> None:
    """Called when the gateway stops, before the store closes. May return an awaitable."""
