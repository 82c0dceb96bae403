"""Registers the ``twilio:`` config section and checks it against the rest of the config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from annunciator import hookimpl
from annunciator.core.config import Config

from .pin_sessions import pin_sessions
from .settings import TwilioSettings
from .stats import twilio_stats

if TYPE_CHECKING:
    from annunciator.core.services import Services


@hookimpl
def annunciator_config_sections() -> dict[str, Any]:
    return {"twilio": TwilioSettings}


def twilio_profiles(config: Config) -> dict[str, Any]:
    """Profiles of a Twilio type (their settings name an account)."""
    return {name: config.profiles[name] for name, raw in config.settings.profiles.items()
            if str(raw.get("type", "")).startswith("twilio-") and name in config.profiles}


@hookimpl
def annunciator_check_config(config: Config) -> list[tuple[str, str]]:
    twilio: TwilioSettings = config.sections.get("twilio") or TwilioSettings()
    problems = []
    profiles = twilio_profiles(config)
    for name, settings in profiles.items():
        account = getattr(settings, "account", None)
        if account is not None and account not in twilio.accounts:
            problems.append((f"profiles.{name}.account", f"unknown Twilio account {account!r}; defined: "
                             f"{', '.join(twilio.accounts) or '(none)'}"))
            continue
        pool = getattr(settings, "pool", None)
        acct = twilio.accounts.get(account or twilio.default_account or "")
        if pool is not None and (acct is None or pool not in acct.pools):
            problems.append((f"profiles.{name}.pool", f"unknown sender pool {pool!r}; defined: "
                             f"{', '.join(acct.pools) if acct else '(none)'}"))
    for name, settings in profiles.items():
        for key in ("pin_failures", "pin_lockout"):
            if getattr(settings, key, None) is not None:
                config.notices.append((f"profiles.{name}.{key}", "replaced by gateway.pins (one lockout policy for "
                                       "SMS, voice and email replies); ignored"))
    real = [a for a in twilio.accounts.values() if not a.emulated]
    if profiles and real and not config.gateway.external_url:
        config.notices.append(("gateway.external_url", "not set: Twilio cannot call this gateway back, so "
                               "delivery reports, SMS replies (acknowledgements) and voice calls will not work"))
    if profiles and not real:
        config.notices.append(("twilio.accounts", "no Twilio credentials: the gateway will use its built-in "
                               "Twilio emulator (messages reach no phone)"))
    return problems



@hookimpl
def annunciator_register_tags(services: Services, tags: Any) -> None:
    twilio_stats(services).define_tags()


@hookimpl
async def annunciator_startup(services: Services) -> None:
    await twilio_stats(services).load()
    await pin_sessions(services).load()
