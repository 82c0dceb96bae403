"""The scripting plugin: the pipeline Script block and the core ``system`` namespaces
(``system.alarm``, ``system.tag``, ``system.util``)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, model_validator

from annunciator import hookimpl
from annunciator.core.config import Config, Duration
from annunciator.core.pipeline import END, Block, BlockSettings, Next

from .gateway_scripts import GatewayScripts, check_scripts, script_routes
from .namespaces import AlarmFunctions, TagFunctions, UtilFunctions
from .runner import ERRORS_TAG, LAST_ERROR_TAG, Bridge, Script, run_script, scripting_system
from .settings import ScriptsSettings, one_source

if TYPE_CHECKING:
    from annunciator.core.services import Services

log = logging.getLogger("annunciator.scripts")


class ScriptBlock(Block):
    """Run a Python script with ``system``, ``event`` (the event's values, read-only copy) and
    ``state`` (the instance's runtime properties, writable) in scope. On an error the branch
    goes to ``error`` (default: end) and the trace names the script's file and line."""

    type_name = "script"
    description = "run a Python script"

    settings: Settings

    class Settings(BlockSettings):
        script: str | None = None
        code: str | None = None
        error: str | None = END
        timeout: Duration = 30.0

        @model_validator(mode="after")
        def _one(self) -> ScriptBlock.Settings:
            one_source(self.script, self.code)
            return self

    _compiled: Script | None = None

    def check(self, config: Config | None) -> list[tuple[str, str]]:
        s = self.settings
        try:
            if s.code:
                self._compiled = Script.compile(s.code, f"<{self.pipeline}.{self.name}>")
            elif config is not None and s.script is not None:
                path = config.resolve(config.gateway.scripts_dir) / s.script
                if not path.is_file():
                    return [("script", f"no such script file: {path}")]
                self._compiled = Script.load(path)
        except SyntaxError as exc:
            return [("code" if s.code else "script", f"syntax error at line {exc.lineno}: {exc.msg}")]
        return []

    def targets(self) -> list[str | None]:
        return [self.settings.next, self.settings.error]

    async def enter(self, ctx: Any) -> Next:
        gw: Services = ctx.services
        if self._compiled is None:
            problems = self.check(gw.config)
            if problems:
                return Next(self.settings.error, why=problems[0][1])
        script = self._compiled
        assert script is not None
        scope = {"system": scripting_system(gw), "event": ctx.values(), "state": ctx.properties,
                 "logger": logging.getLogger(f"annunciator.scripts.{self.pipeline}.{self.name}")}
        # run_script logs a failure with file and line and counts it (System/Gateway/Scripts/Errors)
        result = await run_script(gw, script, scope, self.settings.timeout, f"{self.pipeline}.{self.name}")
        if result.ok:
            return Next(why="script ran")
        if result.error and result.error.startswith("timed out"):
            return Next(self.settings.error, why=f"script {result.error}")
        return Next(self.settings.error, why=f"script error: {result.where}: {result.error}")


@hookimpl
def annunciator_block_types() -> list[type[Block]]:
    return [ScriptBlock]


@hookimpl
def annunciator_register_tags(services: Services, tags: Any) -> None:
    tags.define(ERRORS_TAG, "Int8", 0, doc="script failures since the gateway started (every kind of script)")
    tags.define(LAST_ERROR_TAG, "String", "", doc="the last script failure, file:line: error")


@hookimpl
def annunciator_config_sections() -> dict[str, type[BaseModel]]:
    return {"scripts": ScriptsSettings}


@hookimpl
def annunciator_check_config(config: Config) -> list[tuple[str, str]]:
    return check_scripts(config)


@hookimpl
def annunciator_startup(services: Services) -> None:
    scripts = GatewayScripts(services, scripting_system(services))
    services.state.put(scripts)
    scripts.start()


@hookimpl
async def annunciator_shutdown(services: Services) -> None:
    scripts = services.state.pop(GatewayScripts)
    if scripts is not None:
        await scripts.stop()


@hookimpl
def annunciator_routes(services: Services) -> list[Any]:
    return script_routes(services)


@hookimpl
def annunciator_scripting_namespaces(services: Services) -> dict[str, Any]:
    bridge = Bridge(asyncio.get_running_loop())
    return {"alarm": AlarmFunctions(services, bridge), "tag": TagFunctions(services),
            "util": UtilFunctions()}

