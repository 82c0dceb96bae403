"""`annunciator demo`: the gateway on its embedded example config and SQLite, sending SMS through
the built-in Twilio emulator (no credentials needed). It raises one alarm; the console shows each
SMS as the phone would get it and lets you type replies as Maria's phone: reply 1234 (her PIN) to
acknowledge, exactly as over real SMS (a signed webhook into the gateway)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

import click

from . import hookimpl
from .core.alarm_spec import AlarmSpec
from .core.plugins import default_manager
from .core.services import Services
from .launch import load, serve, setup_logging
from .plugins.twilio.service import TwilioService

DEMO_SOURCE = "plant/pump-1/fault"


class DemoPlugin:
    def __init__(self) -> None:
        self.services: Services | None = None
        self.stopping = threading.Event()

    @hookimpl
    def annunciator_startup(self, services: Services) -> None:
        self.services = services
        asyncio.get_running_loop().call_later(1.0, lambda: asyncio.ensure_future(self._raise()))

    @hookimpl
    def annunciator_shutdown(self, services: Services) -> None:
        self.stopping.set()

    def _emulator(self) -> Any:
        service = self.services.state.get(TwilioService) if self.services else None
        accounts = list(service.accounts.values()) if service else []
        return accounts[0].emulator if accounts else None

    async def _raise(self) -> None:
        gw = self.services
        assert gw is not None
        event = gw.alarms.current.get(DEMO_SOURCE)
        if event is None:
            spec = AlarmSpec(source=DEMO_SOURCE, name="Pump 1 fault", priority="High",
                             display_path="Plant/Pump 1", event_value=0.0)
            [(event, _)] = await gw.alarms.raise_alarms([spec])
            await gw.store.commit()
        port = gw.config.gateway.http.port
        api = f"--url http://127.0.0.1:{port} --token demo-token"
        click.secho(f"Raised demo alarm {event.id} ({event.display_path}, {event.priority}, ack code "
                    f"#{event.ack_code}).", fg="cyan")
        click.echo("Maria is texted now; without an acknowledgement Li is texted after 30 s.")
        click.echo(f"Its whole story:  annunciator alarm trace {event.id} {api}")
        console = gw.config.sections.get("console")
        if console is not None and console.enabled and "demo" in console.users:
            click.secho(f"In a browser:     http://127.0.0.1:{port}/console/sandbox (sign in as demo / demo): "
                        "Maria's phone is there; reply 1234 to acknowledge.", fg="green", bold=True)
        emulator = self._emulator()
        if emulator is None:
            click.echo(f"Acknowledge it:   annunciator alarm ack {event.id} --user maria {api}")
            return
        maria = gw.users["maria"].contacts["sms"][0]
        threading.Thread(target=self._show_messages, args=(emulator,), daemon=True).start()
        click.secho(f"Type a reply as Maria's phone ({maria}) and press Enter: her PIN is 1234 "
                    "(try HELP, STATUS 1234, or a wrong PIN). Ctrl-C stops the gateway.", bold=True)
        # lines typed here (or piped in) are texted from Maria's phone into the gateway
        threading.Thread(target=self._keyboard, args=(emulator, maria), daemon=True).start()

    def _show_messages(self, emulator: Any) -> None:
        """Print every SMS the emulated phones receive, as they arrive."""
        shown: set[str] = set()
        while not self.stopping.is_set():
            for m in emulator.messages:
                if m.sid in shown or m.direction == "inbound":
                    continue
                shown.add(m.sid)
                who = next((u.name or u.username for u in self.services.users.values()  # type: ignore[union-attr]
                            if m.to in u.contacts.get("sms", [])), m.to)
                click.secho(f"\n  >>> SMS to {who} ({m.to}) from {m.from_}:\n      "
                            + m.body.replace("\n", "\n      ") + "\n", fg="yellow", bold=True)
            time.sleep(0.2)

    def _keyboard(self, emulator: Any, number: str) -> None:
        phone = emulator.phone(number)
        while not self.stopping.is_set():
            try:
                line = sys.stdin.readline()
            except (OSError, ValueError):
                return
            if not line:
                return
            if line.strip():
                try:
                    phone.reply(line.strip())
                except Exception as exc:  # the demo must not die on a typo or a stopped gateway
                    click.secho(f"could not send: {exc}", fg="red")


def run_demo(data_dir: Path, port: int) -> None:
    setup_logging("info")
    logging.getLogger("annunciator.twilio_emulator").setLevel(logging.WARNING)  # the console shows each SMS
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "annunciator.yaml"
    if not config.exists():
        with resources.as_file(resources.files("annunciator") / "examples" / "demo.yaml") as src:
            shutil.copyfile(src, config)
    os.environ.setdefault("ANNUNCIATOR_DEMO_PORT", str(port))
    pm = default_manager()
    pm.register(DemoPlugin(), name="demo")
    cfg, pm = load(str(config), pm)
    click.secho(f"annunciator demo: config {config}, database {cfg.database_url}", fg="cyan")
    serve(cfg, pm)
