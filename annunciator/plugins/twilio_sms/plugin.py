"""The Twilio SMS plugin: the ``twilio-sms`` profile and the inbound SMS webhooks."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from annunciator import hookimpl
from annunciator.core.config import Config

from .history import history_routes
from .inbound import InboundSms
from .opt_outs import opt_out_routes
from .pin_reminders import PinReminders
from .profile import TwilioSmsProfile
from .scripting import TwilioFunctions
from .text import non_gsm

if TYPE_CHECKING:
    from annunciator.core.services import Services


@hookimpl
def annunciator_profile_types() -> list[type[TwilioSmsProfile]]:
    return [TwilioSmsProfile]


@hookimpl
def annunciator_scripting_namespaces(services: Services) -> dict[str, Any]:
    from annunciator.scripting.runner import Bridge

    return {"twilio": TwilioFunctions(services, Bridge(asyncio.get_running_loop()))}


@hookimpl
def annunciator_routes(services: Services) -> list[Any]:
    return InboundSms(services).routes() + history_routes(services) + opt_out_routes(services)


@hookimpl
def annunciator_startup(services: Services) -> None:
    before = services.config.gateway.pins.remind_before
    profile = next((p for p in services.profiles.values() if isinstance(p, TwilioSmsProfile)), None)
    if before and profile is not None:
        services.state.put(PinReminders(services, profile, before)).start()


@hookimpl
async def annunciator_shutdown(services: Services) -> None:
    reminders = services.state.pop(PinReminders)
    if reminders is not None:
        await reminders.stop()


@hookimpl
def annunciator_check_config(config: Config) -> list[tuple[str, str]]:
    """Warn about message templates that would go out as UCS-2 (70 characters a segment, not 160),
    and about a number several people share (their replies are told apart by PIN)."""
    owners: dict[str, list[str]] = {}
    for name, us in config.settings.users.items():
        for number in {*us.contacts.get("sms", []), *us.contacts.get("phone", [])}:
            owners.setdefault(number, []).append(name)
    for number, names in owners.items():
        if len(names) > 1:
            config.notices.append((f"users.{names[1]}.contacts", f"{number} is also {names[0]}'s number: "
                                   "replies from it are told apart by PIN"))
    sms = {name for name, raw in config.settings.profiles.items() if raw.get("type") == TwilioSmsProfile.type_name}
    smart = {name for name in sms if getattr(config.profiles.get(name), "smart_encoding", False)}
    for pname, pipeline in config.pipelines.items():
        for block in pipeline.blocks:
            profiles = getattr(block.settings, "profiles", [])
            used = [p for p in profiles if p in sms]
            if not used:
                continue
            from .text import smart_encode

            message = block.settings.message
            chars = non_gsm(smart_encode(message) if all(p in smart for p in used) else message)
            if chars:
                shown = " ".join(repr(c) for c in chars[:5])
                config.notices.append((f"pipelines.{pname}.blocks[{block.index}].message",
                                       f"characters {shown} make SMS UCS-2: 70 characters a segment instead of "
                                       "160"))
    return []
