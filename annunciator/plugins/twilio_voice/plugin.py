"""The Twilio voice plugin: the ``twilio-voice`` profile, the TwiML call flow and call statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from annunciator import hookimpl
from annunciator.core.config import Config
from annunciator.plugins.twilio.stats import twilio_stats

from .flow import VoiceFlow
from .profile import TwilioVoiceProfile
from .state import voice_state

if TYPE_CHECKING:
    from annunciator.core.services import Services


@hookimpl
def annunciator_profile_types() -> list[type[TwilioVoiceProfile]]:
    return [TwilioVoiceProfile]


def stats_routes(services: Services) -> list[Route]:
    """``GET /api/voice/stats``: calls and minutes, sent and received, per person and in total."""

    async def stats(request: Request) -> JSONResponse:
        state = voice_state(services)
        stats = twilio_stats(services)
        await stats.load()

        def calls(s: Any) -> dict[str, int]:
            return {"callsSent": s.calls_sent, "callsReceived": s.calls_received,
                    "minutesSent": s.call_minutes_sent, "minutesReceived": s.call_minutes_received}

        return JSONResponse({"total": calls(stats.totals()),
                             "users": {u or "(unknown)": calls(s) for u, s in sorted(stats.by_user.items())},
                             "liveCalls": sum(1 for s in state.sessions.values() if s.status not in
                                              ("completed", "busy", "no-answer", "failed", "canceled")),
                             "scriptErrors": state.script_errors})

    return [Route("/api/voice/stats", stats, methods=["GET"])]


@hookimpl
def annunciator_routes(services: Services) -> list[Any]:
    return VoiceFlow(services).routes() + stats_routes(services)


@hookimpl
def annunciator_check_config(config: Config) -> list[tuple[str, str]]:
    """A call script named by a voice profile must exist and compile (else every call would log errors)."""
    problems = []
    for name, raw in config.settings.profiles.items():
        if raw.get("type") != TwilioVoiceProfile.type_name or not raw.get("script"):
            continue
        path = config.resolve(config.gateway.scripts_dir) / str(raw["script"])
        if not path.is_file():
            problems.append((f"profiles.{name}.script", f"no such call script: {path}"))
            continue
        try:
            compile(path.read_text(encoding="utf-8"), str(path), "exec")
        except SyntaxError as exc:
            problems.append((f"profiles.{name}.script", f"syntax error at line {exc.lineno}: {exc.msg}"))
    return problems
