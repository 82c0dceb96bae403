"""The ``annunciator`` command."""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
import httpx

from .core.config import Config, load_config
from .core.errors import AlreadyRunning, ConfigError
from .core.plugins import PluginManager, default_manager

EXIT_CONFIG = 2
DEFAULT_CONFIG = "annunciator.yaml"


def _config_path(config: str | None) -> Path:
    path = config or os.environ.get("ANNUNCIATOR_CONFIG") or DEFAULT_CONFIG
    return Path(path)


def _load(config: str | None, pm: PluginManager | None = None) -> tuple[Config, PluginManager]:
    pm = pm or default_manager()
    path = _config_path(config)
    if config is None and not path.exists():
        raise click.ClickException(
            f"no config file: {path} (give one with -c, set ANNUNCIATOR_CONFIG, or try `annunciator demo`)")
    try:
        return load_config(path, pm.block_types(), pm.profile_types()), pm
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    # their INFO lines (every migration step, every timer added) drown what an operator needs
    for noisy in ("alembic", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group()
@click.version_option(package_name="annunciator")
def main() -> None:
    """annunciator: alarm pipelines, on-call rosters and notifications."""


@main.command()
@click.option("-c", "--config", help=f"config file (default: $ANNUNCIATOR_CONFIG or {DEFAULT_CONFIG})")
@click.option("--log-level", default="info", show_default=True)
def run(config: str | None, log_level: str) -> None:
    """Run the gateway: HTTP API, pipelines, notifications."""
    _setup_logging(log_level)
    cfg, pm = _load(config)
    serve(cfg, pm)


def serve(cfg: Config, pm: PluginManager, extra_routes: list[Any] | None = None) -> None:
    import uvicorn

    from .core.gateway import Gateway
    from .core.web import build_app

    # The gateway keeps every open event, instance and notification in memory; with CPython's
    # default thresholds the collector re-walked them all often enough to add ~100 ms pauses to
    # time-to-notify (bench/pipeline_throughput.py: steady p99 114 ms -> 31 ms). Young objects
    # are still collected, just in larger steps.
    gc.set_threshold(50_000, 20, 100)
    gateway = Gateway(cfg, pm)
    try:
        gateway.store.lock()  # before serving anything: a second gateway must not even start
    except AlreadyRunning as exc:
        raise click.ClickException(str(exc))
    app = build_app(gateway)
    for route in extra_routes or []:
        app.router.routes.append(route)
    http = cfg.gateway.http
    if cfg.gateway.external_url is None and http.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("annunciator").warning("serving on %s without TLS in front: use a reverse proxy", http.host)
    # uvicorn's own "running on" line comes only once the port is bound (or says why not)
    server = uvicorn.Server(uvicorn.Config(app, host=http.host, port=http.port, lifespan="on",
                                           log_level="info", access_log=False))
    server.run()
    if not server.started:
        sys.exit(3)


@main.command()
@click.argument("config", required=False)
def check(config: str | None) -> None:
    """Validate a config file; exit 2 naming the file, key path and what was expected."""
    cfg, _ = _load(config)
    s = cfg.settings
    click.echo(f"{cfg.path}: OK: {len(s.pipelines)} pipeline(s), {len(s.profiles)} profile(s), "
               f"{len(s.users)} user(s), {len(s.rosters)} roster(s)")
    if not cfg.gateway.api_tokens:
        click.echo("warning: gateway.api_tokens is empty: the HTTP API will refuse every call", err=True)


@main.command()
@click.option("-c", "--config")
def pipelines(config: str | None) -> None:
    """List the configured pipelines and their blocks."""
    cfg, _ = _load(config)
    for p in cfg.pipelines.values():
        click.echo(f"{p.name}  (dropout: {', '.join(sorted(p.dropout)) or 'none'})"
                   + (f" - {p.description}" if p.description else ""))
        for b in p.blocks:
            click.echo(f"  {b.index + 1:>2}. {b.name:<24} {b.type_name}")


@main.command()
def plugins() -> None:
    """List plugins, with the profile and block types they provide."""
    pm = default_manager()
    for info in pm.info:
        line = f"{info.name:<14} {info.status:<8} {info.module}"
        if info.distribution and info.distribution != "annunciator":
            line += f"  [{info.distribution}]"
        if info.error:
            line += f"  ({info.error})"
        click.echo(line)
    click.echo("profile types: " + ", ".join(sorted(pm.profile_types())))
    click.echo("block types:   " + ", ".join(sorted(pm.block_types())))


# --- talking to a running gateway ------------------------------------------------------------

class Api:
    def __init__(self, url: str, token: str | None):
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            r = httpx.request(method, self.url + path, json=body, params=params, headers=headers, timeout=30)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach the gateway at {self.url}: {exc}")
        data = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code >= 400:
            raise click.ClickException(f"{r.status_code}: {data.get('error', r.text)}")
        return data


def _api_options(fn: Any) -> Any:
    """-c/--url/--token on every subcommand, so they may come anywhere on the line."""
    import functools

    @click.option("-c", "--config", help="read the URL and token from this config")
    @click.option("--url", envvar="ANNUNCIATOR_URL", help="gateway URL (default from the config)")
    @click.option("--token", envvar="ANNUNCIATOR_TOKEN", help="API token (default: the config's first)")
    @functools.wraps(fn)
    def wrapper(config: str | None, url: str | None, token: str | None, **kwargs: Any) -> Any:
        if url is None or token is None:
            path = _config_path(config)
            if path.exists():
                cfg, _ = _load(str(path))
                http = cfg.gateway.http
                url = url or f"http://{http.host}:{http.port}"
                token = token or (cfg.gateway.api_tokens[0] if cfg.gateway.api_tokens else None)
        return fn(Api(url or "http://127.0.0.1:8088", token), **kwargs)

    return wrapper


@main.group()
def alarm() -> None:
    """Raise, clear, acknowledge, list, shelve and trace alarms on a running gateway."""


def _print_events(events: list[dict[str, Any]]) -> None:
    for e in events:
        ack = f" by {e['ackUser']}" if e.get("ackUser") else ""
        click.echo(f"{e['id']}  {e['priority']:<10} {e['state']:<14} {e['displayPath']}  {e['name']}{ack}")


@alarm.command("raise")
@click.argument("source")
@click.option("--name")
@click.option("--priority", type=click.Choice(["Diagnostic", "Low", "Medium", "High", "Critical"],
                                               case_sensitive=False))
@click.option("--value", help="event value (JSON, or text)")
@click.option("--pipeline", help="pipeline to enter when active")
@click.option("--notes", default="")
@click.option("--property", "props", multiple=True, help="associated property KEY=VALUE (repeatable)")
@_api_options
def alarm_raise(api: Api, source: str, name: str | None, priority: str | None, value: str | None,
                pipeline: str | None, notes: str, props: tuple[str, ...]) -> None:
    """Make SOURCE's alarm active."""
    body: dict[str, Any] = {"source": source, "notes": notes}
    if name:
        body["name"] = name
    if priority:
        body["priority"] = priority
    if value is not None:
        try:
            body["eventValue"] = json.loads(value)
        except ValueError:
            body["eventValue"] = value
    if pipeline:
        body["pipelines"] = {"active": pipeline}
    properties = {}
    for p in props:
        key, sep, val = p.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {p!r}", param_hint="--property")
        properties[key] = val
    if properties:
        body["properties"] = properties
    _print_events(api.call("POST", "/api/alarms", body)["events"])


@alarm.command("clear")
@click.argument("sources", nargs=-1, required=True)
@click.option("--user")
@_api_options
def alarm_clear(api: Api, sources: tuple[str, ...], user: str | None) -> None:
    """Clear the active alarm of each SOURCE."""
    _print_events(api.call("POST", "/api/alarms/clear", {"sources": list(sources), "user": user})["events"])


@alarm.command("ack")
@click.argument("event_ids", nargs=-1, required=True)
@click.option("--user", required=True)
@click.option("--notes", default="")
@_api_options
def alarm_ack(api: Api, event_ids: tuple[str, ...], user: str, notes: str) -> None:
    """Acknowledge events by id: their pipelines stop at once."""
    body = {"eventIds": list(event_ids), "user": user, "notes": notes}
    _print_events(api.call("POST", "/api/alarms/acknowledge", body)["events"])


@alarm.command("list")
@click.option("--state")
@click.option("--priority", help="minimum priority")
@click.option("--source", help="glob")
@_api_options
def alarm_list(api: Api, state: str | None, priority: str | None, source: str | None) -> None:
    """List open alarms (active, or cleared but unacknowledged)."""
    params = {k: v for k, v in {"state": state, "priority": priority, "source": source}.items() if v}
    _print_events(api.call("GET", "/api/alarms", params=params)["events"])


@alarm.command("shelve")
@click.argument("sources", nargs=-1, required=True)
@click.option("--minutes", type=float, default=15, show_default=True)
@click.option("--user")
@_api_options
def alarm_shelve(api: Api, sources: tuple[str, ...], minutes: float, user: str | None) -> None:
    """Shelve sources: no notifications until the shelf expires."""
    data = api.call("POST", "/api/shelve", {"sources": list(sources), "minutes": minutes, "user": user})
    click.echo(f"shelved until {data['expiresAt']}: {', '.join(data['sources'])}")


@alarm.command("trace")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True)
@_api_options
def alarm_trace(api: Api, event_id: str, as_json: bool) -> None:
    """Everything that happened to one event."""
    story = api.call("GET", f"/api/alarms/{event_id}/trace")
    if as_json:
        click.echo(json.dumps(story, indent=2))
        return
    _print_events([story["event"]])
    click.echo("journal:")
    for j in story["journal"]:
        click.echo(f"  {j['ts']}  {j['action']:<13} {j['user'] or ''}  {j['notes'] or ''}")
    names = {i["id"]: i["pipeline"] for i in story["instances"]}
    click.echo("pipelines:")
    for t in story["trace"]:
        click.echo(f"  {t['ts']}  {names.get(t['instanceId'], '?')}/{t['block'] or '-'}"
                   f"  {t['action']:<13} {t['why']}")
    click.echo("notifications:")
    for n in story["notifications"]:
        click.echo(f"  {n['created']}  {n['user']} via {n['profile']}: {n['status']}"
                   f" (attempts {n['attempts']}){' ' + n['lastError'] if n['lastError'] else ''}")


@main.command()
@click.option("--data-dir", default="annunciator-data", show_default=True,
              help="where the demo keeps its config, database and secret")
@click.option("--port", default=8088, show_default=True)
def demo(data_dir: str, port: int) -> None:
    """Run the gateway on its embedded example config and raise a demo alarm."""
    from .demo import run_demo

    run_demo(Path(data_dir), port)


@main.group()
def user() -> None:
    """On-call users on a running gateway: list them, set PINs, clear lockouts."""


@user.command("list")
@_api_options
def user_list(api: Api) -> None:
    """Users, whether each has a PIN, and any lockout."""
    for u in api.call("GET", "/api/users")["users"]:
        lock = f"  LOCKED until {u['lockedUntil']}" if u["lockedUntil"] else ""
        contacts = ", ".join(f"{k}: {' '.join(v)}" for k, v in u["contacts"].items())
        click.echo(f"{u['id']:>4}  {u['username']:<16} {'PIN' if u['hasPin'] else 'no PIN':<7} {contacts}{lock}")


@user.command("pin")
@click.argument("username")
@click.option("--pin-stdin", is_flag=True, help="read the PIN from standard input (for scripts)")
@_api_options
def user_pin(api: Api, username: str, pin_stdin: bool) -> None:
    """Set USERNAME's PIN (asked twice, not echoed). A `pin:` in the config wins at restart."""
    if pin_stdin:
        pin = sys.stdin.readline().strip()
    else:
        pin = click.prompt("New PIN", hide_input=True, confirmation_prompt=True)
    api.call("POST", f"/api/users/{username}/pin", {"pin": pin})
    click.echo(f"PIN set for {username}")


@user.command("unlock")
@click.argument("username")
@_api_options
def user_unlock(api: Api, username: str) -> None:
    """Clear a lockout after too many wrong PINs."""
    api.call("POST", f"/api/users/{username}/unlock", {})
    click.echo(f"{username} unlocked")
