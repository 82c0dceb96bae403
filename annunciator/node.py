"""One node of a cluster: ``annunciator run`` on a PostgreSQL database.

The node always serves HTTP. While it holds the lease (core.cluster) it runs a gateway — the
engine, timers, consolidation, the outbox — built for that term and started exactly as after a
crash (core.recovery loads everything from the database). While it does not, it is a standby:
health, the cluster's nodes, and every other request forwarded to the active node
(core.standby). Losing the lease abandons the term's gateway at once — nothing more is committed
or sent — and the next term, if this node wins the lease again, starts from the database with a
fresh gateway: a node's memory never outlives its term.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from . import __version__
from .core import cluster as cluster_state
from .core.cluster import Lease
from .core.config import Config
from .core.gateway import Gateway
from .core.loader import load_config
from .core.plugins import PluginManager, default_manager
from .core.standby import build_standby_app
from .core.store import create_engine, migrate
from .core.web import BearerAuth, build_app

log = logging.getLogger("annunciator.cluster")


class Node:
    def __init__(self, config_path: Path, config: Config, plugins: PluginManager):
        self.config_path = config_path
        self._next: tuple[Config, PluginManager] | None = (config, plugins)
        g = config.gateway
        address = (g.cluster.address or f"http://{g.http.host}:{g.http.port}").rstrip("/")
        self.lease = Lease(config.database_url, name=g.cluster.node or f"{socket.gethostname()}:{g.http.port}",
                           address=address, public_url=(g.external_url or address).rstrip("/"),
                           lease=g.cluster.lease, version=__version__, changed=self._changed)
        self.database_url = config.database_url
        self.gateway: Gateway | None = None
        self.active_app: ASGIApp | None = None
        self._becoming = False
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        standby = build_standby_app(self.lease, g.name, lambda: self._becoming, self._read_nodes,
                                    commit_timeout=g.commit_timeout)
        self.standby_app: ASGIApp = BearerAuth(standby, tokens=g.api_tokens, public_metrics=g.public_metrics)

    def prepare(self) -> None:
        """Before serving: migrate (one node at a time) and take part in a first lease round, so
        a node alone, or restarted after a crash, answers as the active one from the start."""
        engine = create_engine(self.database_url)
        try:
            migrate(engine)
        finally:
            engine.dispose()
        self.lease.join()

    async def _read_nodes(self) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            with self.lease.engine.connect() as conn:
                return cluster_state.nodes(conn, self.lease.lease)

        return await asyncio.get_running_loop().run_in_executor(None, read)

    # --- roles ----------------------------------------------------------------------------------

    def _changed(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _supervise(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            gw = self.gateway
            if gw is not None and gw.term is not None and gw.term.over():
                self.gateway, self.active_app = None, None
                log.critical("cluster: abandoning the gateway of epoch %d (%s)", gw.term.epoch,
                             self.lease.lost_reason or "the lease is gone")
                try:
                    await gw.abandon()
                except Exception:
                    log.exception("stepping down failed; the node stays standby")
            if self.gateway is None and self.lease.valid():
                await self._become_active()
                if self.gateway is not None and self.gateway.term is not None and self.gateway.term.over():
                    self._changed()

    async def _become_active(self) -> None:
        term = self.lease.term()
        self._becoming = True
        try:
            config, plugins = self._next or self._reload()
            self._next = None
            gw = Gateway(config, plugins, term)
            try:
                await gw.start()
            except Exception:
                log.exception("cluster: the gateway of epoch %d did not start; stepping down", term.epoch)
                await gw.abandon()
                self.lease.step_down("the gateway did not start")
                return
            if term.over():  # lost while recovering
                await gw.abandon()
                self._changed()
                return
            self.gateway = gw
            self.active_app = build_app(gw, manage_lifecycle=False)
            log.warning("cluster: node %s serves as the active gateway (epoch %d)", self.lease.name, term.epoch)
        finally:
            self._becoming = False

    def _reload(self) -> tuple[Config, PluginManager]:
        """A later term reads the config again (a node may have stepped down hours ago)."""
        pm = default_manager()
        return load_config(self.config_path, pm.block_types(), pm.profile_types(), plugins=pm), pm

    # --- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        gw, app = self.gateway, self.active_app
        # the term's gateway answers until the term is over, also while its lease has lapsed (a
        # database outage): reads from memory, writes queued and answered 503 after commit_timeout
        if gw is not None and app is not None and gw.started and gw.term is not None and not gw.term.over():
            await app(scope, receive, send)
        else:
            await self.standby_app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._start()
                except Exception as exc:
                    log.exception("node failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start(self) -> None:
        self._wake = asyncio.Event()
        self.lease.loop = asyncio.get_running_loop()
        if self.lease.valid():
            await self._become_active()  # before the first request is answered
        self._tasks = [asyncio.ensure_future(self.lease.run()), asyncio.ensure_future(self._supervise())]
        role = "active" if self.gateway is not None else "standby"
        v = self.lease.view
        log.warning("cluster: node %s started as %s (epoch %d%s)", self.lease.name, role, v.epoch,
                    f", active: {v.holder_name} at {v.address}" if role == "standby" and v.holder else "")

    async def _stop(self) -> None:
        """A clean stop: finish the term (store what is queued), then release the lease, so a
        standby takes over at once."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        gw, self.gateway, self.active_app = self.gateway, None, None
        if gw is not None:
            if gw.term is not None and not gw.term.over():
                await gw.stop()
            else:
                await gw.abandon()
        await self.lease.leave()
