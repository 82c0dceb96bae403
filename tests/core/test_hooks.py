"""Hooks a plugin uses at run time: routes, observers, roster resolution, tags."""

from __future__ import annotations

import time

import httpx
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from annunciator import hookimpl

from conftest import ack, raise_alarm


class Recorder:
    def __init__(self):
        self.transitions: list[tuple[str, str]] = []
        self.statuses: list[str] = []

    @hookimpl
    def annunciator_alarm_event(self, event, transition):
        self.transitions.append((event.source, transition))

    @hookimpl
    def annunciator_notification_event(self, notification, status):
        self.statuses.append(status)

    @hookimpl
    def annunciator_routes(self, services):
        async def hello(request):
            return PlainTextResponse(f"{len(services.events)} open")
        return [Route("/plugin/hello", hello)]

    @hookimpl
    def annunciator_resolve_roster(self, roster, event, at, users):
        # a calculated roster: Critical alarms also reach the supervisors
        if roster == "operators" and event.priority >= "Critical":
            return [users["maria"], users["li"]]
        return None

    @hookimpl
    def annunciator_register_tags(self, services, tags):
        tags.define("Plugin/Ready", "Boolean", True)


def test_plugin_hooks_see_and_shape_the_flow(pipeline_gateway, webhook_receiver):
    rec = Recorder()
    gateway = _start(pipeline_gateway, rec)
    low = raise_alarm(gateway, "plant/low", "page", priority="Low")
    webhook_receiver.wait_for(1)
    raise_alarm(gateway, "plant/crit", "page", priority="Critical")
    reqs = webhook_receiver.wait_for(3)
    assert sorted(r.json["user"]["username"] for r in reqs[1:]) == ["li", "maria"]
    ack(gateway, low["id"])
    assert ("plant/low", "active") in rec.transitions and ("plant/low", "acknowledged") in rec.transitions
    deadline = time.monotonic() + 5
    while rec.statuses.count("sent") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rec.statuses.count("sent") == 3
    assert httpx.get(gateway.url + "/plugin/hello").text == "2 open"
    def tags():
        return {t["path"]: t["value"] for t in gateway.client.get("/api/tags").json()["tags"]}

    deadline = time.monotonic() + 5  # count tags refresh at most once a second
    while (tags()["System/Gateway/Alarms/ActiveAcked"], tags()["System/Gateway/Notifications/Sent"]) != (1, 3) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    tags = tags()
    assert tags["Plugin/Ready"] is True
    assert tags["System/Gateway/Alarms/ActiveUnacked"] == 1
    assert tags["System/Gateway/Alarms/ActiveAcked"] == 1
    assert tags["System/Gateway/Notifications/Sent"] == 3


def _start(pipeline_gateway_factory, plugin):
    # the conftest factory passes plugins through to start_gateway
    return pipeline_gateway_factory(
        {"page": {"blocks": [{"type": "notification", "profile": "hook", "roster": "operators"}]}},
        _plugins=[plugin])
