"""The tag services of the gateway, as hook implementations: config tags, tag alarms, MQTT export.

Registered by the PluginManager itself (as ``core.tags``, like the core blocks), so it cannot be
blocked: a config's ``tags:`` must not silently stop raising alarms because of a plugin list.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from annunciator import hookimpl
from annunciator.core.config import Config
from annunciator.core.tag_provider import TagProvider

from .alarms import TagAlarms
from .settings import MqttSettings, TagSettings, TagsSection

if TYPE_CHECKING:
    from ..core.services import Services

log = logging.getLogger(__name__)


class _TagServices:
    """What this plugin runs for one gateway: the tag alarms and, when configured, MQTT export."""

    def __init__(self, alarms: TagAlarms):
        self.alarms = alarms
        self.mqtt: Any = None


@hookimpl
def annunciator_config_sections() -> dict[str, type[BaseModel]]:
    return {"tags": TagsSection, "mqtt": MqttSettings}


def config_tags(config: Config) -> dict[str, TagSettings]:
    section = config.sections.get("tags")
    return section.root if section is not None else {}


@hookimpl
def annunciator_routes(services: Services) -> list[BaseRoute]:
    """``GET /metrics``: every tag in Prometheus' text format, and this node's place in the
    cluster (bearer token unless ``gateway.public_metrics``)."""
    from . import prometheus

    async def metrics(request: Request) -> Response:
        cluster = prometheus.cluster_families(services.term, services.config.gateway.name)
        return Response(prometheus.render(services.tags, cluster), media_type=prometheus.CONTENT_TYPE)

    return [Route("/metrics", metrics, methods=["GET"])]


@hookimpl
def annunciator_register_tags(services: Services, tags: TagProvider) -> None:
    """The config's memory tags, before any startup script can write them."""
    for path, t in config_tags(services.config).items():
        tags.define(path, t.type, t.value, writable=t.writable, doc=t.doc, alarms=list(t.alarms))


@hookimpl
def annunciator_startup(services: Services) -> None:
    loop = asyncio.get_running_loop()
    alarms = TagAlarms(services, loop)
    for path, t in config_tags(services.config).items():
        alarms.add(path, list(t.alarms))
    alarms.start()
    state = services.state.put(_TagServices(alarms))
    settings: MqttSettings = services.config.sections.get("mqtt") or MqttSettings()
    if settings.host:
        from .mqtt import MqttExporter

        exporter = MqttExporter(settings, services.tags, loop, services.config.gateway.name)
        exporter.start()
        state.mqtt = exporter


@hookimpl
async def annunciator_shutdown(services: Services) -> None:
    state = services.state.pop(_TagServices)
    if state is None:
        return
    if state.mqtt is not None:
        # paho's disconnect and thread join block briefly: keep them off the loop
        await asyncio.to_thread(state.mqtt.stop)
    await state.alarms.stop()
