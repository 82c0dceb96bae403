"""Loading a config: read the file, validate every section (core's and the plugins'), build the
pipelines and run the checks of on-call and of the plugins; ``ConfigError`` lists every problem.

Apart from config.py (the schema), so that the schema imports nothing that itself needs the
schema (on-call, pipelines): the loader sits above them all.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .config import (
    MAX_PROBLEMS,
    Config,
    FileSettings,
    expand_env,
    installed,
    pydantic_problems,
    read_yaml,
)
from .errors import ConfigError
from .oncall import check_oncall
from .pipeline import build_pipelines


def load_config(
    source: Path | str | Mapping[str, Any],
    block_types: Mapping[str, Any],
    profile_types: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    plugins: Any = None,
) -> Config:
    """Read and fully validate a config; raise ConfigError listing every problem found.
    ``plugins`` (a PluginManager) adds plugin-owned sections and whole-config checks."""
    env = os.environ if env is None else env
    path: Path | None = None
    lines: dict[str, int] = {}
    if isinstance(source, Mapping):
        raw: Any = dict(source)
    else:
        path = Path(source)
        raw, lines = read_yaml(path)
    file = str(path) if path else ""
    if not isinstance(raw, dict):
        raise ConfigError([("", "expected a mapping of sections at the top of the file")], file)
    try:
        return _validate(raw, path, lines, block_types, profile_types, env, plugins)
    except ConfigError as exc:
        if len(exc.problems) <= MAX_PROBLEMS:
            raise
        more = len(exc.problems) - MAX_PROBLEMS
        raise ConfigError([*exc.problems[:MAX_PROBLEMS], ("", f"... and {more:,} more problems")],
                          exc.file, exc.lines) from exc.__cause__
    except (RecursionError, MemoryError):
        # a plugin's own parser on a text nested deeply: Jinja recursing on an expression like
        # "((((...))))", Python's compiler out of parser stack on a script (`x = ----...1` is a
        # MemoryError); the YAML around it is within MAX_CONFIG_DEPTH
        raise ConfigError([("", "a value is nested too deeply to check (an expression or a script?)")],
                          file, lines) from None


def _validate(raw: dict[str, Any], path: Path | None, lines: dict[str, int], block_types: Mapping[str, Any],
              profile_types: Mapping[str, Any], env: Mapping[str, str], plugins: Any) -> Config:
    """load_config after reading: every check; ConfigError lists what they found."""
    file = str(path) if path else ""
    # a section written with nothing under it (`pipelines:`) means an empty one
    raw = {k: ({} if v is None and k != "alarms" else [] if v is None else v) for k, v in raw.items()}
    data, problems = expand_env(raw, env)
    section_types = plugins.config_sections() if plugins is not None else {}
    sections: dict[str, Any] = {}
    for name, model in section_types.items():
        body = data.pop(name, None)
        try:
            sections[name] = model.model_validate(body if body is not None else {})
        except ValidationError as exc:
            problems += pydantic_problems(exc, name)
    try:
        settings = FileSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(problems + pydantic_problems(exc), file, lines) from exc
    config = Config(path=path, settings=settings, sections=sections)

    problems += _check_profiles(config, profile_types)
    problems += _check_references(config)
    pa = settings.gateway.profile_alarms
    # with one profile there is no other channel to tell anyone over; the console and log still show it
    if pa.enabled and pa.pipeline is None and len(settings.profiles) > 1 and not any(
            fnmatch.fnmatchcase("annunciator/profiles/x", d.source) and d.pipelines for d in settings.alarms):
        config.notices.append(("gateway.profile_alarms.pipeline", "not set: when a profile keeps failing its "
                               "alarm is listed and logged but pages nobody; name a pipeline that reaches "
                               "the admins over another channel"))
    problems += check_oncall(config)
    # pipelines are checked even when other sections have problems: report everything at once
    pipelines, pipeline_problems = build_pipelines(settings.pipelines, block_types, config)
    problems += pipeline_problems
    config.pipelines = pipelines
    if plugins is not None and not problems:
        problems += plugins.check_config(config)
    if problems:
        raise ConfigError(problems, file, lines)
    return config


def _check_profiles(config: Config, profile_types: Mapping[str, Any]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for name, raw in config.settings.profiles.items():
        where = f"profiles.{name}"
        kind = raw.get("type")
        if kind is None:
            what = "required" if "type" not in raw else "empty (YAML reads null/~ as nothing)"
            problems.append((f"{where}.type", f"{what}; installed profile types: {installed(profile_types)}"))
            continue
        if not isinstance(kind, str) or kind not in profile_types:
            problems.append((f"{where}.type", f"unknown profile type {kind!r}; installed: "
                             f"{installed(profile_types)}"))
            continue
        body = {k: v for k, v in raw.items() if k != "type"}
        try:
            config.profiles[name] = profile_types[kind].Settings.model_validate(body)
        except ValidationError as exc:
            problems += pydantic_problems(exc, where)
    return problems


def _check_references(config: Config) -> list[tuple[str, str]]:
    s = config.settings
    problems: list[tuple[str, str]] = []
    pa = s.gateway.profile_alarms.pipeline
    if pa is not None and pa not in s.pipelines:
        problems.append(("gateway.profile_alarms.pipeline",
                         f"unknown pipeline {pa!r}; defined: {installed(s.pipelines)}"))
    for roster in s.rosters:
        for i, user in enumerate(config.roster_users(roster)):
            if user not in s.users:
                suffix = f"[{i}]" if isinstance(s.rosters[roster], list) else f".users[{i}]"
                problems.append((f"rosters.{roster}{suffix}",
                                 f"unknown user {user!r}; known users: {installed(s.users)}"))
    ids: dict[int, str] = {}
    for name, settings in s.users.items():
        if settings.id is not None:
            if settings.id in ids:
                problems.append((f"users.{name}.id", f"id {settings.id} is already used by {ids[settings.id]!r}"))
            ids[settings.id] = name
    references = [(f"alarms[{i}].pipelines.{transition}", pipeline)
                  for i, alarm in enumerate(s.alarms) for transition, pipeline in alarm.pipelines.items()]
    # a plugin's section that names pipelines (tag alarms) says so: checked here with the rest, so
    # a bad name is reported beside every other problem, not only once the config is otherwise valid
    for name, section in config.sections.items():
        named = getattr(section, "pipeline_references", None)
        if callable(named):
            references += [(f"{name}.{where}", pipeline) for where, pipeline in named()]
    for where, pipeline in references:
        if pipeline not in s.pipelines:
            problems.append((where, f"unknown pipeline {pipeline!r}; defined: {installed(s.pipelines)}"))
    return problems
