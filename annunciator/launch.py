"""Starting the gateway from a config file: shared by ``annunciator run`` and ``annunciator demo``.

Loading the config (with the message an operator sees when it is wrong), logging, and serving
the HTTP API with the gateway behind it. The command modules import this; this imports none of
them.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from .core.config import Config
from .core.errors import AlreadyRunning, ConfigError
from .core.loader import load_config
from .core.plugins import PluginManager, default_manager

EXIT_CONFIG = 2
DEFAULT_CONFIG = "annunciator.yaml"


def config_path(config: str | None) -> Path:
    path = config or os.environ.get("ANNUNCIATOR_CONFIG") or DEFAULT_CONFIG
    return Path(path)


def load(config: str | None, pm: PluginManager | None = None) -> tuple[Config, PluginManager]:
    pm = pm or default_manager()
    path = config_path(config)
    if config is None and not path.exists():
        raise click.ClickException(
            f"no config file: {path} (give one with -c, set ANNUNCIATOR_CONFIG, or try `annunciator demo`)")
    try:
        return load_config(path, pm.block_types(), pm.profile_types(), plugins=pm), pm
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    except Exception as exc:
        # load_config turns every problem it knows of into a ConfigError; anything else is a bug in
        # a check, and still a message naming the file (exit 2, the config was not accepted), not a
        # traceback in `check`, `run` or `demo`
        what = f"{type(exc).__name__}: {exc}"
        click.echo(f"{path}: internal error while loading the config: {what[:500]} "
                   "(please report it, with the file if you can)", err=True)
        sys.exit(EXIT_CONFIG)


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    # their INFO lines (every migration step, every timer added) drown what an operator needs
    # (twilio logs every request and its headers at INFO)
    for noisy in ("alembic", "apscheduler", "twilio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def serve(cfg: Config, pm: PluginManager, extra_routes: list[Any] | None = None) -> None:
    import uvicorn

    from .core.gateway import Gateway
    from .core.web import build_app

    # The gateway keeps every open event, instance and notification in memory; with CPython's
    # default thresholds the collector re-walked them all often enough to add ~100 ms pauses to
    # time-to-notify (bench/pipeline_throughput.py: steady p99 114 ms -> 31 ms). Young objects
    # are still collected, just in larger steps.
    gc.set_threshold(50_000, 20, 100)
    app: Any
    if cfg.database_url.startswith(("postgresql", "postgres")):
        # PostgreSQL: a node of a cluster, active or standby (docs/ha.md)
        from .node import Node

        node = Node(cfg.path or config_path(None), cfg, pm)
        node.prepare()
        app = node
    else:
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
