"""pytest fixtures for integrators and for annunciator's own tests (registered via ``pytest11``).

* ``annunciator_database_url``: a SQLite file in the test's tmp dir, or, when
  ``ANNUNCIATOR_TEST_DATABASE_URL`` names a PostgreSQL server, a fresh schema there per test.
* ``webhook_receiver``: a real HTTP receiver on 127.0.0.1 that records what arrives.
* ``gateway_config``: a minimal config dict (webhook profile to the receiver, users, rosters)
  for a test to add pipelines to.
* ``start_gateway(config)``: writes the config and serves a gateway on real HTTP; stopped after.
* ``twilio_emulator``: a loopback Twilio (``annunciator.testing.twilio``); with
  ``ANNUNCIATOR_TWILIO_CONTRACT=1`` Prism sits in front and ``tw.api_base`` is Prism's URL.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .gateway import TOKEN, RunningGateway, free_port, write_config
from .receiver import WebhookReceiver

DB_ENV = "ANNUNCIATOR_TEST_DATABASE_URL"


def pytest_report_header(config: pytest.Config) -> str:
    url = os.environ.get(DB_ENV)
    if url:
        return f"annunciator: database tests on {url.split('@')[-1]} (PostgreSQL)"
    return f"annunciator: database tests on SQLite only; PostgreSQL pass skipped ({DB_ENV} not set)"


@contextlib.contextmanager
def database_url(tmp: Path, name: str = "annunciator.db") -> Iterator[str]:
    """A SQLite file in ``tmp``, or a fresh schema on ANNUNCIATOR_TEST_DATABASE_URL, dropped after
    (for a gateway that lives longer than one test, e.g. a module's)."""
    url = os.environ.get(DB_ENV)
    if not url:
        yield f"sqlite:///{tmp / name}"
        return
    import sqlalchemy as sa

    from annunciator.core.store import normalize_url

    url = normalize_url(url)
    schema = "t_" + uuid.uuid4().hex[:12]
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def annunciator_database_url(tmp_path: Path) -> Iterator[str]:
    with database_url(tmp_path) as url:
        yield url


@pytest.fixture(scope="session")
def _twilio_contract_stack() -> Iterator[Any]:
    """One emulator behind one Prism for the whole session (Prism takes seconds to start)."""
    from .prism import PrismProxy, contract_enabled
    from .twilio import TwilioEmulator

    if not contract_enabled():
        yield None
        return
    with TwilioEmulator() as tw, PrismProxy(tw.base_url) as prism:
        tw.api_base = prism.url
        yield tw, prism


@pytest.fixture
def twilio_emulator(_twilio_contract_stack: Any) -> Iterator[Any]:
    """A running TwilioEmulator; build clients with ``tw.client()`` so they honour ``tw.api_base``.

    In the contract pass the shared emulator is reset before each test, and a test fails if Prism
    logged a violation during it (even one the code under test caught). ``tw.prism`` is the
    PrismProxy then, None otherwise.
    """
    from .twilio import TwilioEmulator

    if _twilio_contract_stack is None:
        with TwilioEmulator() as tw:
            tw.prism = None
            yield tw
        return
    tw, prism = _twilio_contract_stack
    tw.reset()
    prism.take_violations(settle=0)
    tw.prism = prism
    try:
        yield tw
    finally:
        tw.reset()
    problems = prism.take_violations()
    if problems:
        pytest.fail("Twilio contract violations reported by Prism:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as rx:
        yield rx


@pytest.fixture
def gateway_config(tmp_path: Path, annunciator_database_url: str, webhook_receiver: WebhookReceiver) -> dict[str, Any]:
    return {
        "gateway": {
            "http": {"host": "127.0.0.1", "port": free_port()},
            "database": annunciator_database_url,
            "api_tokens": [TOKEN],
            "secret_file": str(tmp_path / "secret.key"),
            "scripts_dir": str(tmp_path / "scripts"),
            "retry": {"attempts": 3, "backoff": "50ms", "max_backoff": "200ms"},
        },
        "profiles": {"hook": {"type": "webhook", "url": webhook_receiver.url, "timeout": "5s"}},
        "users": {
            "maria": {"name": "Maria Lopez", "pin": "1234", "contacts": {"sms": "+15550100001"}},
            "li": {"name": "Li Wei", "contacts": {"sms": "+15550100002"}},
            "sam": {"name": "Sam Okafor", "contacts": {"email": "sam@example.com"}},
        },
        "rosters": {"operators": ["maria"], "supervisors": ["li"], "managers": ["sam"]},
        "pipelines": {},
    }


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., RunningGateway]]:
    started: list[RunningGateway] = []

    def start(config: dict[str, Any], plugins: list[Any] | None = None, name: str = "annunciator.yaml",
              env: dict[str, str] | None = None) -> RunningGateway:
        path = write_config(tmp_path / name, config)
        gw = RunningGateway(path, plugins=plugins, env=env).start()
        started.append(gw)
        return gw

    yield start
    for gw in reversed(started):
        gw.stop()
