"""Tags: the provider (provider.py), value types and path rules (types.py), alarms from tag values
(alarms.py), and the exports: /api/tags (core.web), Prometheus (prometheus.py), MQTT (mqtt.py)."""

from .provider import Dataset, TagError, TagNotFound, TagProvider, TagReadOnly, TagValue

__all__ = ["Dataset", "TagError", "TagNotFound", "TagProvider", "TagReadOnly", "TagValue"]
