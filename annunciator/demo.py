"""`annunciator demo`: the gateway on its embedded example config, with a pager page that prints
what arrives, and one alarm raised so a newcomer watches it go out and acknowledges it."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import click
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import hookimpl
from .core.gateway import AlarmSpec, Gateway
from .core.plugins import default_manager

DEMO_SOURCE = "plant/pump-1/fault"


class DemoPlugin:
    def __init__(self) -> None:
        self.gateway: Gateway | None = None

    @hookimpl
    def annunciator_routes(self, gateway: Gateway) -> list[Route]:
        async def pager(request: Request) -> Response:
            body = await request.json()
            who = body["user"]["name"]
            click.secho(f"\n  >>> PAGER {who}: {body['message']}\n", fg="yellow", bold=True)
            return Response(status_code=204)

        return [Route("/demo/pager", pager, methods=["POST"])]

    @hookimpl
    def annunciator_startup(self, gateway: Gateway) -> None:
        self.gateway = gateway
        asyncio.get_running_loop().call_later(1.0, lambda: asyncio.ensure_future(self._raise()))

    async def _raise(self) -> None:
        gw = self.gateway
        assert gw is not None
        event = gw.current.get(DEMO_SOURCE)
        if event is None:
            spec = AlarmSpec(source=DEMO_SOURCE, name="Pump 1 fault", priority="High",
                             display_path="Plant/Pump 1", event_value=0.0)
            [(event, _)] = await gw.raise_alarms([spec])
            await gw.store.commit()
        port = gw.config.gateway.http.port
        click.secho(f"Raised demo alarm {event.id} ({event.display_path}, {event.priority}).", fg="cyan")
        click.echo("Maria is paged now; without an acknowledgement Li is paged after 30 s.")
        click.echo("Acknowledge it from another terminal with:")
        click.secho(f"  annunciator alarm ack {event.id} --user maria --url http://127.0.0.1:{port} "
                    f"--token demo-token", bold=True)
        click.echo(f"See its whole story:  annunciator alarm trace {event.id} --url "
                   f"http://127.0.0.1:{port} --token demo-token")
        if sys.stdin.isatty():
            click.echo("Or press Enter here to acknowledge it as maria. Ctrl-C stops the gateway.")
            loop = asyncio.get_running_loop()
            threading.Thread(target=self._keyboard, args=(loop, event.id), daemon=True).start()

    def _keyboard(self, loop: asyncio.AbstractEventLoop, event_id: str) -> None:
        try:
            sys.stdin.readline()
        except (OSError, ValueError):
            return
        gw = self.gateway
        assert gw is not None

        async def ack() -> Any:
            event = gw.events.get(event_id)
            if event is None or event.acknowledged:
                click.echo("Already acknowledged.")
                return
            await gw.acknowledge([event_id], "maria", "acknowledged from the demo console")
            await gw.store.commit()
            click.secho("Acknowledged by maria: every pipeline carrying the alarm stopped.", fg="green")

        asyncio.run_coroutine_threadsafe(ack(), loop)


def run_demo(data_dir: Path, port: int) -> None:
    from .cli import _load, _setup_logging, serve

    _setup_logging("info")
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "annunciator.yaml"
    if not config.exists():
        with resources.as_file(resources.files("annunciator") / "examples" / "demo.yaml") as src:
            shutil.copyfile(src, config)
    os.environ.setdefault("ANNUNCIATOR_DEMO_PORT", str(port))
    pm = default_manager()
    pm.register(DemoPlugin(), name="demo")
    cfg, pm = _load(str(config), pm)
    click.secho(f"annunciator demo: config {config}, database {cfg.database_url}", fg="cyan")
    serve(cfg, pm)
