"""The pipeline engine, delivery and the dispatcher, each built from its collaborators alone:
no Gateway, a real database file, real timers, the webhook profile posting to a real HTTP
receiver. What is asserted is what reaches the receiver and what the tables hold."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from annunciator.core import schema
from annunciator.core.alarms import AlarmEvent, Priority, utcnow
from annunciator.core.audit import AuditLog
from annunciator.core.config import RetrySettings
from annunciator.core.delivery import Delivery, Origin
from annunciator.core.engine import Engine
from annunciator.core.notifications import Dispatcher, Notification
from annunciator.core.oncall import Resolution
from annunciator.core.plugins import PluginManager, build_pipeline
from annunciator.core.rows import event_row
from annunciator.core.store import Store
from annunciator.core.timers import Timers
from annunciator.core.traces import Traces
from annunciator.core.user_directory import UserDirectory
from annunciator.core.users import User
from annunciator.plugins.webhook.plugin import WebhookProfile, WebhookSettings
from annunciator.testing.receiver import WebhookReceiver

MARIA = User("maria", id=0, name="Maria Lopez", contacts={"sms": ["+15550100001"]})
LI = User("li", id=1, name="Li Wei", contacts={"sms": ["+15550100002"]})
USERS = {u.username: u for u in (MARIA, LI)}
RETRY = RetrySettings(attempts=2, backoff=0.05, max_backoff=0.2, max_age=1.5)


async def _until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _rows(store: Store, table: sa.Table) -> Awaitable[list[dict[str, Any]]]:
    return store.read(lambda c: [dict(r._mapping) for r in c.execute(sa.select(table))])


class Parts:
    """The collaborators the composition root would wire, wired by hand."""

    def __init__(self, url: str, receiver: WebhookReceiver, rosters: dict[str, list[str]]):
        self.store = Store(url)
        self.audit = AuditLog(self.store)
        self.timers = Timers()
        self.traces = Traces(self.store)
        self.statuses: list[tuple[str, str]] = []
        profile = WebhookProfile("hook", WebhookSettings(url=receiver.url, timeout=2.0), None)  # type: ignore[arg-type]
        self.profiles = {"hook": profile}
        self.dispatcher = Dispatcher(store=self.store, profiles=self.profiles, audit=self.audit, retry=RETRY,
                                     max_concurrent=4,
                                     on_status=lambda n, s: self.statuses.append((n.user.username, s)))
        self.rosters = rosters
        self.pipelines: dict[str, Any] = {}
        self.events: dict[str, AlarmEvent] = {}
        directory = UserDirectory(self.store, {}, lambda: b"")
        self.delivery = Delivery(store=self.store, audit=self.audit, timers=self.timers, traces=self.traces,
                                 users=USERS, profiles=self.profiles, pipelines=self.pipelines, resolve=self.resolve,
                                 retry=RETRY, preferences=directory.channel_preferences, outbox=self.dispatcher,
                                 known_events=self.events)
        self.dispatcher.reports = self.delivery
        self.finished: list[str] = []
        self.engine = Engine(store=self.store, timers=self.timers, audit=self.audit, pipelines=self.pipelines,
                             traces=self.traces, routing=self.delivery, outbox=self.dispatcher,
                             on_finished=lambda e: self.finished.append(e.id))

    def resolve(self, roster: str, event: AlarmEvent, at: Any = None, values: Any = None) -> Resolution:
        names = self.rosters.get(roster, [])
        return Resolution(roster, utcnow(), list(names), "parallel", None,
                          [f"roster {roster}: {', '.join(names) or 'nobody'}"])

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.store.open, loop)
        self.timers.start()
        await self.profiles["hook"].start()

    async def close(self) -> None:
        self.timers.stop()
        await self.dispatcher.drain()
        await self.profiles["hook"].stop()
        await self.store.close()

    def event(self, source: str, priority: Priority = Priority.HIGH) -> AlarmEvent:
        event = AlarmEvent(source=source, name=source.rsplit("/", 1)[-1], priority=priority)
        self.events[event.id] = event
        self.store.insert(schema.alarm_events, event_row(event))
        return event


def _run(url: str, receiver: WebhookReceiver, body: Callable[[Parts], Awaitable[Any]],
         rosters: dict[str, list[str]] | None = None) -> Any:
    async def main() -> Any:
        parts = Parts(url, receiver, rosters or {"operators": ["maria"]})
        await parts.open()
        try:
            return await body(parts)
        finally:
            await parts.close()

    return asyncio.run(main())


def test_the_dispatcher_alone_sends_a_committed_notification_once(annunciator_database_url, webhook_receiver):
    async def body(p: Parts) -> list[dict[str, Any]]:
        event = p.event("plant/pump1")
        n = Notification(profile="hook", user=MARIA, message="Pump 1 tripped", events=[event])
        p.store.insert(schema.notifications, n.row())
        p.dispatcher.submit(n)
        assert webhook_receiver.count == 0  # nothing leaves before the row is committed
        await p.store.commit()
        await _until(lambda: p.statuses)
        return await _rows(p.store, schema.notifications)

    [row] = _run(annunciator_database_url, webhook_receiver, body)
    [request] = webhook_receiver.requests
    assert request.json["message"] == "Pump 1 tripped" and request.json["user"]["username"] == "maria"
    assert request.headers["idempotency-key"] == row["idempotency_key"]
    assert row["status"] == "sent" and row["attempts"] == 1


def test_the_dispatcher_alone_retries_then_gives_up_at_max_age(annunciator_database_url, webhook_receiver):
    webhook_receiver.status = 503

    async def body(p: Parts) -> list[dict[str, Any]]:
        event = p.event("plant/pump2")
        n = Notification(profile="hook", user=MARIA, message="Pump 2 tripped", events=[event],
                         expires_at=utcnow() + timedelta(seconds=RETRY.max_age))
        p.store.insert(schema.notifications, n.row())
        p.dispatcher.submit(n)
        await p.store.commit()
        await _until(lambda: ("maria", "failed") in p.statuses)
        return await _rows(p.store, schema.notifications)

    [row] = _run(annunciator_database_url, webhook_receiver, body)
    assert row["status"] == "failed" and "given up after" in row["last_error"]
    assert row["attempts"] >= 3 and webhook_receiver.count == row["attempts"]


def test_delivery_alone_plans_queues_and_traces(annunciator_database_url, webhook_receiver):
    async def body(p: Parts) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        event = p.event("plant/boiler")
        origin = Origin("inst-1", event.id, "page", "notify",
                        lambda a, w: p.traces.line("inst-1", event.id, "notify", a, w))
        team = p.delivery.on_call(origin, event, "operators")
        queued = p.delivery.send(origin, event, team.users, ["hook"], "{displayPath} {name} is {state}")
        assert queued == 1
        nobody = p.delivery.on_call(origin, event, "night-shift")  # an empty roster, no fallback
        assert nobody.users == []
        await p.store.commit()
        await _until(lambda: webhook_receiver.count)
        journal = await _rows(p.store, schema.journal)
        traces = await _rows(p.store, schema.trace_runs)
        return await _rows(p.store, schema.notifications), journal, traces

    notifications, journal, traces = _run(annunciator_database_url, webhook_receiver, body)
    assert [r["username"] for r in notifications] == ["maria"]
    assert webhook_receiver.requests[0].json["message"] == "plant/boiler boiler is ActiveUnacked"
    assert [(j["action"], j["notes"]) for j in journal] == [("notify-failed", "nobody on call in roster night-shift")]
    lines = [line[3] for run in traces for line in run["lines"]]
    assert lines[:2] == ["on-call", "notify"] and "notify-failed" in lines


def test_the_engine_alone_drops_out_on_acknowledge_and_cancels_its_wait(annunciator_database_url,
                                                                     webhook_receiver):
    block_types = PluginManager().block_types()

    async def body(p: Parts) -> tuple[list[dict[str, Any]], list[str]]:
        p.pipelines["page"] = build_pipeline("page", [
            {"type": "notification", "profile": "hook", "roster": "operators", "message": "{name} tripped"},
            {"type": "delay", "delay": "1h"},
            {"type": "notification", "profile": "hook", "roster": "supervisors"}],
            block_types=block_types)
        event = p.event("plant/pump3")
        inst = await p.engine.enter(event, "page", "event active")
        assert inst is not None
        await p.store.commit()
        await _until(lambda: webhook_receiver.count)
        assert p.engine.live  # parked in the delay
        event.ack_time, event.ack_user = utcnow(), "maria"
        await p.engine.on_transition(event, "acknowledged", "acknowledged by maria")
        await p.store.commit()
        rows = await _rows(p.store, schema.pipeline_instances)
        return rows, [f"{line[3]}" for run in await _rows(p.store, schema.trace_runs) for line in run["lines"]]

    rows, actions = _run(annunciator_database_url, webhook_receiver, body,
                         rosters={"operators": ["maria"], "supervisors": ["li"]})
    [row] = rows
    assert row["status"] == "dropped" and row["end_reason"] == "acknowledged by maria"
    assert [r.json["user"]["username"] for r in webhook_receiver.requests] == ["maria"]  # li never paged
    assert webhook_receiver.requests[0].json["message"] == "pump3 tripped"
    assert actions[-1] == "dropped"
