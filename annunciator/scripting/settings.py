"""The ``scripts:`` section of the config (start-up and timer scripts, the run API), registered
by the scripting plugin (``config.sections["scripts"]``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, model_validator

from annunciator.core.config import Duration, StrictModel


def one_source(script: str | None, code: str | None) -> None:
    """A script is a file or inline code, never both or neither (gateway scripts, Script blocks)."""
    if bool(script) == bool(code):
        raise ValueError("give either script: FILE (in the scripts folder) or code: TEXT")


class ScriptSettings(StrictModel):
    """One script: a file in ``gateway.scripts_dir`` or inline code."""

    name: str | None = None
    script: str | None = None
    code: str | None = None
    timeout: Duration = 30.0

    @model_validator(mode="after")
    def _one(self) -> ScriptSettings:
        one_source(self.script, self.code)
        return self

    @property
    def label(self) -> str:
        return self.name or self.script or "inline"


def _script_or_file(v: Any) -> Any:
    return {"script": v} if isinstance(v, str) else v


class TimerScriptSettings(ScriptSettings):
    """A script run on an APScheduler trigger: ``interval: 30s`` or ``cron: "*/5 * * * *"``."""

    interval: Duration | None = None
    cron: str | None = None
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _trigger(self) -> TimerScriptSettings:
        if (self.interval is None) == (self.cron is None):
            raise ValueError("give either interval: DURATION or cron: EXPRESSION")
        if self.interval is not None and self.interval < 0.1:
            raise ValueError("interval must be at least 100ms")
        if self.cron is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(self.cron, timezone=self.timezone)
            except Exception as exc:  # APScheduler raises ValueError or a tz error
                raise ValueError(f"cron {self.cron!r}: {exc}")
        return self


class ScriptsSettings(StrictModel):
    """Gateway scripts: run once at start, and on timers."""

    startup: list[Annotated[ScriptSettings, BeforeValidator(_script_or_file)]] = []
    timers: list[Annotated[TimerScriptSettings, BeforeValidator(_script_or_file)]] = []
    # POST /api/scripts/run (and `annunciator script run`): code execution for API token holders
    api_run: bool = False  # any API token could run code in the gateway: opt in
    api_timeout: Duration = 60.0
