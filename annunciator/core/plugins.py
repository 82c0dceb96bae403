"""Loading plugins: the built-in ones and third-party ones, all from the ``annunciator``
entry-point group, filtered by ``ANNUNCIATOR_PLUGINS`` (allow-list) and
``ANNUNCIATOR_DISABLE_PLUGINS`` (block-list), both comma-separated entry-point names.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import blocks, hookspecs
from .pipeline import Block
from .profiles import NotificationProfile

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "annunciator"


@dataclass
class PluginInfo:
    name: str
    module: str
    status: str  # "loaded", "blocked", "failed"
    error: str = ""
    distribution: str = ""


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus what annunciator needs to know about what loaded."""

    def __init__(self) -> None:
        super().__init__("annunciator")
        self.add_hookspecs(hookspecs)
        # Core blocks are part of the engine, not an optional plugin: they cannot be blocked.
        self.register(blocks, name="core.blocks")
        # So are the tag services (config tags, tag alarms, MQTT export): tags are core, like /api/tags.
        from ..tags import plugin as tags_plugin

        self.register(tags_plugin, name="core.tags")
        self.info: list[PluginInfo] = []

    def load_entry_points(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        allow = _names(env.get("ANNUNCIATOR_PLUGINS"))
        deny = _names(env.get("ANNUNCIATOR_DISABLE_PLUGINS")) or set()
        seen: set[str] = set()
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in seen:
                continue
            seen.add(ep.name)
            dist = ep.dist.name if ep.dist else ""
            if (allow is not None and ep.name not in allow) or ep.name in deny:
                self.info.append(PluginInfo(ep.name, ep.value, "blocked", distribution=dist))
                continue
            try:
                self.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken plugin must not stop the gateway from paging
                log.error("plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)
                self.info.append(PluginInfo(ep.name, ep.value, "failed", f"{type(exc).__name__}: {exc}", dist))
                continue
            self.info.append(PluginInfo(ep.name, ep.value, "loaded", distribution=dist))

    def register_module(self, dotted: str, name: str | None = None) -> None:
        """Register a plugin by module path (for tests and embedding)."""
        self.register(importlib.import_module(dotted), name=name or dotted)
        self.info.append(PluginInfo(name or dotted, dotted, "loaded"))

    def profile_types(self) -> dict[str, type[NotificationProfile]]:
        return _collect(self.hook.annunciator_profile_types(), "profile")

    def block_types(self) -> dict[str, type[Block]]:
        return _collect(self.hook.annunciator_block_types(), "block")

    def config_sections(self) -> dict[str, Any]:
        sections: dict[str, Any] = {}
        for group in self.hook.annunciator_config_sections():
            sections.update(group or {})
        return sections

    def check_config(self, config: Any) -> list[tuple[str, str]]:
        return [p for group in self.hook.annunciator_check_config(config=config) for p in group or ()]


def _names(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


def _collect(results: list[Any], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for group in results:
        for cls in group or ():
            if cls.type_name in out and out[cls.type_name] is not cls:
                log.warning("two plugins provide %s type %r; using %s", what, cls.type_name, cls.__module__)
            out[cls.type_name] = cls
    return out


def default_manager(env: Mapping[str, str] | None = None) -> PluginManager:
    pm = PluginManager()
    pm.load_entry_points(env)
    return pm
