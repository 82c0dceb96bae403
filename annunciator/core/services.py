"""What plugins, profiles and blocks are given: the services the composition root
(core.gateway) built, each under its own type. It holds no logic of its own.

A plugin takes what it needs from here at startup (``annunciator_startup(services)``) or when
its routes are built, and keeps its own per-gateway state in ``state``, keyed by its own class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .alarm_lifecycle import Alarms
from .alarms import AlarmEvent
from .audit import AuditLog
from .cluster import Term
from .config import Config
from .delivery import Delivery
from .engine import Engine
from .history import History
from .notifications import Dispatcher
from .oncall import OnCall
from .pin_check import PinCheck
from .profiles import NotificationProfile
from .replies import Replies
from .roster_resolution import RosterResolver
from .store import Store
from .tag_provider import TagProvider
from .timers import Timers
from .traces import Traces
from .user_directory import UserDirectory
from .users import User

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .plugins import PluginManager

T = TypeVar("T")


class PluginState:
    """Per-gateway state of plugins, one object per class: ``state.get(TwilioService)``.

    Keyed by the plugin's own class, so each lookup is typed and no two plugins can collide on
    a name. Only the owning plugin (and those that import it on purpose, like the SMS and voice
    plugins sharing the Twilio accounts) can name the key."""

    def __init__(self) -> None:
        self._items: dict[type, Any] = {}

    def get(self, kind: type[T]) -> T | None:
        return self._items.get(kind)

    def setdefault(self, kind: type[T], make: Callable[[], T]) -> T:
        item = self._items.get(kind)
        if item is None:
            item = self._items[kind] = make()
        return item

    def put(self, item: T) -> T:
        self._items[type(item)] = item
        return item

    def pop(self, kind: type[T]) -> T | None:
        return self._items.pop(kind, None)


@dataclass(slots=True)
class Secret:
    """The server secret (keys PIN hashes, email ack links); loaded when the gateway starts."""

    value: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    config: Config
    plugins: PluginManager
    store: Store
    audit: AuditLog
    timers: Timers
    tags: TagProvider
    traces: Traces
    alarms: Alarms
    engine: Engine
    delivery: Delivery
    dispatcher: Dispatcher
    directory: UserDirectory
    pins: PinCheck
    oncall: OnCall
    resolve_roster: RosterResolver
    history: History
    replies: Replies
    profiles: Mapping[str, NotificationProfile]
    secret_holder: Secret
    state: PluginState = field(default_factory=PluginState)
    # this gateway's term as the active node of a cluster (PostgreSQL); None: a single node
    term: Term | None = None

    # read-only views plugins use often
    @property
    def users(self) -> Mapping[str, User]:
        return self.directory.users

    @property
    def pipelines(self) -> Mapping[str, Pipeline]:
        return self.config.pipelines

    @property
    def events(self) -> Mapping[str, AlarmEvent]:
        return self.alarms.events

    @property
    def secret(self) -> bytes:
        return self.secret_holder.value

    def public_urls(self) -> list[str]:
        """The URLs webhooks to this cluster may be signed for: this node's, and while it is
        active every node's, since a standby forwards the webhooks it is sent."""
        return list(self.term.lease.peers) if self.term is not None else []

    def refresh_public_urls(self) -> bool:
        """Read the cluster's nodes again (one may have joined since); True when that changed them."""
        return self.term.lease.refresh_peers() if self.term is not None else False
