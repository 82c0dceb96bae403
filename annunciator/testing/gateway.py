"""Gateways for tests: in-process (uvicorn in a thread) or as a real ``annunciator run`` process.

Both serve real HTTP on 127.0.0.1 and talk to a real database; tests drive them through the
HTTP API exactly as a user's alarm source would.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

T = TypeVar("T")
TOKEN = "test-token"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free port for a server the test starts later, chosen *below* the ephemeral range: a port
    the OS hands out for ``bind(0)`` (receivers, emulators, client sockets) in the meantime can
    then never be the one this server is about to take."""
    low, _ = _ephemeral_range()
    top = max(low - 1, 2048)
    for _ in range(200):
        port = random.randint(max(1024, top - 12000), top)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a crowded machine: fall back to what the OS offers
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    return path


def api_client(url: str, token: str = TOKEN) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


class RunningGateway:
    """A gateway served by uvicorn on its own loop in a background thread."""

    def __init__(self, config_path: Path, plugins: list[Any] | None = None,
                 env: Mapping[str, str] | None = None):
        self.config_path = config_path
        self.extra_plugins = plugins or []
        self.env = env
        self.gateway: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.url = ""
        self.client: httpx.Client | None = None

    def start(self, timeout: float = 30.0) -> RunningGateway:
        import uvicorn

        from annunciator.core.gateway import Gateway
        from annunciator.core.loader import load_config
        from annunciator.core.plugins import default_manager
        from annunciator.core.web import build_app

        pm = default_manager(self.env)
        for p in self.extra_plugins:
            pm.register(p)
        config = load_config(self.config_path, pm.block_types(), pm.profile_types(), env=self.env, plugins=pm)
        self.gateway = Gateway(config, pm)
        http = config.gateway.http
        self.url = f"http://{http.host}:{http.port}"
        app = build_app(self.gateway)
        self._server = uvicorn.Server(uvicorn.Config(app, host=http.host, port=http.port, lifespan="on",
                                                     log_level="warning", access_log=False))

        def main() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            try:
                loop.run_until_complete(self._server.serve())
            except BaseException as exc:
                self._error = exc
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="annunciator-test-gateway", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._error or not self._thread.is_alive():
                raise RuntimeError(f"gateway failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("gateway did not start in time")
            time.sleep(0.02)
        token = config.gateway.api_tokens[0] if config.gateway.api_tokens else ""
        self.client = api_client(self.url, token)
        return self

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
        """Run a coroutine on the gateway's loop (for state a test reads directly)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
        if self.client is not None:
            self.client.close()

    def __enter__(self) -> RunningGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GatewayProcess:
    """``python -m annunciator run -c CONFIG`` as a child process (for crash tests)."""

    def __init__(self, config_path: Path, env: Mapping[str, str] | None = None):
        self.config_path = config_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        data = yaml.safe_load(config_path.read_text())
        http = data.get("gateway", {}).get("http", {})
        self.url = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8088)}"
        self.log = config_path.with_suffix(".log")

    def start(self, timeout: float = 30.0, role: str = "active") -> GatewayProcess:
        """Start and wait until it answers as ``role``: "active" (a single node always is), or
        "standby"/"any" for a node of a cluster that another node leads."""
        health = "/api/health?role=active" if role == "active" else "/api/health"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "annunciator", "run", "-c", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                body = httpx.get(self.url + health, timeout=1).json()
                if body.get("status") == "ok" and role in ("any", body.get("role")):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"gateway did not answer in time:\n{self.log.read_text()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pause(self) -> None:
        """SIGSTOP: a stalled VM, a process the scheduler forgot; it wakes with SIGCONT."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def health(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/api/health", timeout=5).json())

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut of the process."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
