"""Twilio accounts at run time: the official async client per account, the built-in emulator when
no credentials are configured, webhook URLs and signatures, and per-number send pacing.

One ``TwilioService`` per gateway, shared by the SMS and voice plugins (``twilio_service(gw)``).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from twilio.request_validator import RequestValidator
from twilio.rest import Client

from .http import async_client
from .settings import TwilioAccountSettings, TwilioSettings

if TYPE_CHECKING:
    from annunciator.core.services import Services

log = logging.getLogger(__name__)

EMULATED_NUMBER = "+15005550006"  # Twilio's "always succeeds" test number: a familiar default

EMULATOR_ENTRY_POINTS = "annunciator.twilio_emulator"
BUILTIN_EMULATOR = ("annunciator.testing.twilio", "TwilioEmulator")


def emulator_class() -> Any:
    """The Twilio emulator an account without credentials runs on (the demo, a first try).

    Found through the ``annunciator.twilio_emulator`` entry point group, so production code never
    imports the test harness that ships it; another package can offer its own. The built-in one is
    ``annunciator.testing.twilio:TwilioEmulator``."""
    found = sorted(entry_points(group=EMULATOR_ENTRY_POINTS), key=lambda ep: (ep.name != "builtin", ep.name))
    if found:
        return found[0].load()
    # installed without its metadata (an old editable install, a vendored copy): the built-in one,
    # by name, as the entry point would have named it
    try:
        return getattr(importlib.import_module(BUILTIN_EMULATOR[0]), BUILTIN_EMULATOR[1])
    except ImportError as exc:
        raise RuntimeError("a Twilio account has no credentials and no Twilio emulator is installed "
                           f"(entry point group {EMULATOR_ENTRY_POINTS}); set account_sid and auth_token"
                           ) from exc


@dataclass
class TwilioAccount:
    name: str
    settings: TwilioAccountSettings
    account_sid: str = ""
    auth_token: str = ""
    api_base: str = ""
    numbers: list[str] = field(default_factory=list)
    client: Client | None = None
    validator: RequestValidator | None = None
    emulator: Any = None  # the emulator (see emulator_class) when emulated
    _next_free: dict[str, float] = field(default_factory=dict)
    _rr: int = 0

    def pool(self, name: str | None) -> list[str]:
        """The sender numbers of a pool (every number of the account when None)."""
        if name is None:
            return list(self.numbers)
        return list(self.settings.pools.get(name, []))

    def pick(self, pool: str | None, sticky: str | None = None,
             allowed: Callable[[str], bool] | None = None) -> str | None:
        """A sender from the pool: the one this contact last heard from (so replies come back to the
        same conversation), else the next in turn; only numbers ``allowed`` (the recipient has not
        opted out of them). None when the pool has numbers but none is allowed."""
        numbers = self.pool(pool)
        if not numbers:
            raise LookupError(f"Twilio account {self.name} has no sender numbers"
                              + (f" in pool {pool}" if pool else ""))
        if allowed is not None:
            numbers = [n for n in numbers if allowed(n)]
            if not numbers:
                return None
        if sticky in numbers:
            return sticky
        self._rr += 1
        return numbers[self._rr % len(numbers)]

    async def pace(self, number: str) -> None:
        """Wait for the number's next send slot (``rate_limit`` per second); never drops a message."""
        rate = self.settings.rate_limit
        if rate <= 0:
            return
        now = time.monotonic()
        slot = max(now, self._next_free.get(number, now))
        self._next_free[number] = slot + 1.0 / rate
        if slot > now:
            await asyncio.sleep(slot - now)


class TwilioService:
    def __init__(self, services: Services, settings: TwilioSettings):
        self.services = services
        self.settings = settings
        self.accounts: dict[str, TwilioAccount] = {}
        self._started = False
        self._lock = asyncio.Lock()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Create clients (and emulators); idempotent, as each Twilio profile calls it."""
        async with self._lock:
            if self._started:
                return
            configured = dict(self.settings.accounts) or {"default": TwilioAccountSettings()}
            for name, s in configured.items():
                account = TwilioAccount(name, s, s.account_sid, s.auth_token, s.api_base, list(s.numbers))
                if s.emulated:
                    self._start_emulator(account)
                account.client = async_client(account.api_base, account.account_sid, account.auth_token,
                                              s.timeout)
                account.validator = RequestValidator(account.auth_token)
                self.accounts[name] = account
            if not self.services.config.gateway.external_url and not all(a.emulator for a in self.accounts.values()):
                log.warning("gateway.external_url is not set: Twilio cannot reach this gateway, so delivery "
                            "reports, SMS replies and voice calls will not work")
            self._started = True

    def _start_emulator(self, account: TwilioAccount) -> None:
        numbers = account.numbers or [EMULATED_NUMBER]
        emulator = emulator_class()(numbers=numbers, sms_url=self.webhook_url("/twilio/sms"))
        emulator.start()
        account.emulator = emulator
        account.numbers = list(numbers)
        account.account_sid, account.auth_token, account.api_base = (
            emulator.account_sid, emulator.auth_token, emulator.api_base)
        log.warning("Twilio account %r has no credentials: using the built-in Twilio emulator at %s "
                    "(messages reach no phone; `annunciator sms` or the emulator's phones can reply)",
                    account.name, emulator.api_base)

    async def stop(self) -> None:
        for account in self.accounts.values():
            if account.client is not None:
                await account.client.http_client.close()
            if account.emulator is not None:
                account.emulator.stop()
        self.accounts.clear()
        self._started = False

    # --- lookups --------------------------------------------------------------------------

    def account(self, name: str | None = None) -> TwilioAccount:
        name = name or self.settings.default_account or next(iter(self.accounts), None)
        if name is None or name not in self.accounts:
            raise LookupError(f"no Twilio account {name!r}; configured: {', '.join(self.accounts) or '(none)'}")
        return self.accounts[name]

    def owner_of(self, number: str) -> TwilioAccount | None:
        return next((a for a in self.accounts.values() if number in a.numbers), None)

    def pool_of(self, account: TwilioAccount, number: str) -> str | None:
        return next((p for p, nums in account.settings.pools.items() if number in nums), None)

    # --- webhooks -------------------------------------------------------------------------

    @property
    def webhook_base(self) -> str:
        g = self.services.config.gateway
        if g.external_url:
            return g.external_url.rstrip("/")
        return f"http://{g.http.host}:{g.http.port}"

    def webhook_url(self, path: str) -> str:
        return self.webhook_base + path

    def signature_ok(self, path_and_query: str, params: dict[str, str], signature: str | None) -> bool:
        """Twilio signs the public URL it was given and the POST parameters; any account's token
        may have signed it (several accounts share the routes)."""
        if not signature:
            return False
        if self._signed(path_and_query, params, signature):
            return True
        # a node that joined the cluster since the last lease round forwarded it: look again
        return self.services.refresh_public_urls() and self._signed(path_and_query, params, signature)

    def _signed(self, path_and_query: str, params: dict[str, str], signature: str) -> bool:
        # a standby forwards the webhooks it is sent to the active node: Twilio signed them for
        # the standby's URL, so the public URL of any node of the cluster is accepted
        urls = [self.webhook_url(path_and_query)]
        urls += [u + path_and_query for u in self.services.public_urls() if u + path_and_query not in urls]
        sid = params.get("AccountSid")
        candidates = [a for a in self.accounts.values() if a.account_sid == sid] or list(self.accounts.values())
        return any(a.validator is not None and a.validator.validate(url, params, signature)
                   for a in candidates for url in urls)


def twilio_service(services: Services) -> TwilioService:
    """The gateway's one TwilioService (created on first use)."""
    return services.state.setdefault(TwilioService, lambda: TwilioService(
        services, services.config.sections.get("twilio") or TwilioSettings()))
