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
from .config import Config
from .errors import ConfigError
from .pipeline import Block, Pipeline, build_pipelines
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


# built-in plugins that cannot be blocked (ANNUNCIATOR_PLUGINS / _DISABLE_PLUGINS do not apply)
REQUIRED_PLUGINS = {"core.tags": "annunciator.tags.plugin"}


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus what annunciator needs to know about what loaded."""

    def __init__(self) -> None:
        super().__init__("annunciator")
        self.add_hookspecs(hookspecs)
        # Core blocks are part of the engine, not an optional plugin: they cannot be blocked.
        self.register(blocks, name="core.blocks")
        # So are the tag services (config tags, tag alarms, MQTT export): tags are core, like
        # /api/tags. Loaded by name, as an entry point is: core does not import the rooms above it.
        for name, dotted in REQUIRED_PLUGINS.items():
            self.register(importlib.import_module(dotted), name=name)
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


def build_pipeline(
    name: str,
    blocks: list[dict[str, Any]],
    *,
    dropout: list[str] | None = None,
    description: str = "",
    block_types: Mapping[str, type[Block]] | None = None,
    config: Config | None = None,
) -> Pipeline:
    """Build one pipeline in Python, with the checks a config file gets (ConfigError on a problem).

    ``blocks`` are the same mappings as in YAML, e.g. ``{"type": "delay", "delay": "30s"}``;
    ``block_types`` defaults to those of the installed plugins. Add the result to
    ``Gateway.pipelines`` (or ``Config.pipelines``) before the gateway starts.
    """
    if block_types is None:
        block_types = default_manager().block_types()
    raw: dict[str, Any] = {"blocks": blocks, "description": description}
    if dropout is not None:
        raw["dropout"] = dropout
    pipelines, problems = build_pipelines({name: raw}, block_types, config)
    if problems:
        raise ConfigError(problems)
    return pipelines[name]
