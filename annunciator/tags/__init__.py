"""Tags, the built-in plugin: alarms from tag values (alarms.py), the config sections (settings.py)
and the exports, Prometheus at /metrics (prometheus.py) and MQTT (mqtt.py). The tag provider
itself, its value types and path rules are core's (core/tag_provider.py, core/tag_types.py): the
gateway's own System/ tags and /api/tags need them; they are re-exported here."""

from annunciator.core.tag_provider import Dataset, TagError, TagNotFound, TagProvider, TagReadOnly, TagValue

__all__ = ["Dataset", "TagError", "TagNotFound", "TagProvider", "TagReadOnly", "TagValue"]
