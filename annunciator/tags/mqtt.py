"""MQTT export of the tags, with paho-mqtt: each tag as retained JSON at ``<prefix>/<tag path>``.

The payload is the tag as ``/api/tags/<path>`` returns it: ``{"path", "dataType", "value",
"quality", "timestamp", "writable"}`` (a Dataset value is ``{"columns", "rows"}``). Messages are
retained, so a client that subscribes later gets the current value at once.

paho runs its network loop on its own thread and reconnects by itself; on every (re)connect every
tag is published again, so the broker holds current values even after it restarted empty.

With ``mqtt.write: true`` the gateway also takes values from ``<prefix>/<tag path>/set`` for the
tags that are writable (config tags): the payload is a JSON value, or ``{"value": ..., "quality":
...}``. A refused write (wrong type, read-only) is logged and the tag keeps its value. This is
how an MQTT-fed process value drives tag alarms and so the whole pipeline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from annunciator.core.tag_provider import GOOD, TagProvider, TagValue
from annunciator.core.tag_types import TagError

if TYPE_CHECKING:
    from .settings import MqttSettings

log = logging.getLogger(__name__)


class MqttExporter:
    def __init__(self, settings: MqttSettings, tags: TagProvider, loop: asyncio.AbstractEventLoop,
                 gateway_name: str = "annunciator"):
        self.settings = settings
        self.tags = tags
        self.loop = loop
        self.prefix = settings.prefix.rstrip("/")
        self.connected = False
        self._lock = threading.Lock()
        self._unsubscribe: Any = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=settings.client_id or f"{gateway_name}-tags")
        if settings.username:
            self.client.username_pw_set(settings.username, settings.password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 30)

    def topic(self, path: str) -> str:
        return f"{self.prefix}/{path}"

    def start(self) -> None:
        """Connect in the background: an unreachable broker is retried and never stops the gateway."""
        s = self.settings
        self._unsubscribe = self.tags.subscribe(self._changed)
        self.client.connect_async(s.host or "127.0.0.1", s.port, keepalive=s.keepalive)
        self.client.loop_start()
        log.info("MQTT: publishing tags to %s:%d under %s/", s.host, s.port, self.prefix)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.connected = False  # so the disconnect below is not reported as a lost broker
        self.client.disconnect()
        self.client.loop_stop()

    def _exported(self, path: str) -> bool:
        paths = self.settings.paths
        return not paths or any(path == p.strip("/") or path.startswith(p.strip("/") + "/") for p in paths)

    def _publish(self, tag: TagValue) -> None:
        # Writers on several threads (and the reconnect) may race: read the tag's current value
        # under a lock, so whatever is published last is the newest value and the broker keeps it.
        with self._lock:
            current = self.tags.read(tag.path)
            payload = json.dumps(current.to_dict(), default=str, separators=(",", ":"))
            self.client.publish(self.topic(tag.path), payload, qos=self.settings.qos, retain=self.settings.retain)

    def _changed(self, tag: TagValue) -> None:
        # paho's publish is thread-safe; while disconnected the reconnect republishes everything
        if self.connected and self._exported(tag.path):
            self._publish(tag)

    # --- paho callbacks (paho's thread) ---------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if reason.is_failure:
            log.warning("MQTT: broker refused the connection: %s", reason)
            return
        self.connected = True
        for tag in self.tags.browse():
            if self._exported(tag.path):
                self._publish(tag)
                if self.settings.write and tag.writable:
                    client.subscribe(self.topic(tag.path) + "/set", qos=self.settings.qos)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if self.connected:
            log.warning("MQTT: disconnected (%s); reconnecting", reason)
        self.connected = False

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.topic.endswith("/set") or not msg.topic.startswith(self.prefix + "/"):
            return
        if msg.retain:
            # a retained write is replayed on every (re)connect: obeying it would undo later
            # writes and raise tag alarms again after each restart
            log.warning("MQTT: ignored retained write on %s (publish writes without retain)", msg.topic)
            return
        path = msg.topic[len(self.prefix) + 1:-len("/set")]
        try:
            data = json.loads(msg.payload)
        except ValueError:
            log.warning("MQTT: %s: payload is not JSON: %r", msg.topic, msg.payload[:100])
            return
        value, quality = data, GOOD
        if isinstance(data, dict) and "value" in data:
            value, quality = data["value"], data.get("quality", GOOD)
        # tag writes (and the alarm work they start) belong to the gateway's loop
        self.loop.call_soon_threadsafe(self._write, path, value, quality)

    def _write(self, path: str, value: Any, quality: str) -> None:
        try:
            self.tags.write(path, value, quality, external=True)
        except TagError as exc:
            log.warning("MQTT: write to %s refused: %s", path, exc)
