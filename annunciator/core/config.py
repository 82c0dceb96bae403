"""The project config file: YAML, ``${ENV}`` secrets, validated with pydantic.

Block and profile settings come from plugins, so validation runs in two steps: the fixed shape of
the file first, then each block and profile against the settings model of its type. Every
problem is reported at once with the file, the key path (``pipelines.night.blocks[2].delay``), the
line, and what was expected.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import phonenumbers
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)

from .alarms import AckMode, Priority
from .errors import ConfigError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = 100 * 365 * 86400.0


def parse_duration(value: Any) -> float:
    """Seconds from ``30s``, ``5m``, ``1h30m``, ``250ms`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "30s", got {_shown(value)}')
    if isinstance(value, int | float):
        return _seconds(float(value), value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text and _DURATION.sub("", text) == "" and _DURATION.match(text):
            return _seconds(sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(text)), value)
        try:
            seconds = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(seconds) and seconds >= 0:
                return _seconds(seconds, value)
    raise ValueError(f'expected a duration like "30s", got {_shown(value)}')


def _shown(value: Any) -> str:
    """A value as the user wrote it: text in double quotes, as in the YAML file."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _seconds(seconds: float, value: Any) -> float:
    if not math.isfinite(seconds):
        raise ValueError(f'expected a duration like "30s", got {_shown(value)}')
    if seconds < 0:
        raise ValueError(f"expected a duration of zero or more, got {value!r}")
    if seconds > MAX_DURATION:  # no timer can be armed that far ahead
        raise ValueError(f"expected a duration of at most 100 years, got {value!r}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
PriorityField = Annotated[Priority, BeforeValidator(Priority.parse)]


def normalize_phone(value: str) -> str:
    """E.164 form of a phone number; "+1 (222) 333-4444" becomes "+12223334444"."""
    try:
        number = phonenumbers.parse(str(value), None)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_possible_number(number):
        raise ValueError(
            f'expected a phone number in international form like "+15551234567", got {value!r}'
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class HttpSettings(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(8088, ge=0, le=65535)


class RetrySettings(StrictModel):
    """How a failed provider call is retried.

    A channel gets ``attempts`` tries before the person's next channel (channel policy) is tried;
    the last channel keeps trying, with backoff up to ``max_backoff``, while its alarm still needs
    someone, until the notification is ``max_age`` old. Each wait is stored, so a restart goes on.
    """

    attempts: int = Field(4, ge=1, le=100)
    backoff: Duration = 1.0
    # a waiting page is tried at least this often, so it goes out soon after its provider recovers
    max_backoff: Duration = 60.0
    max_age: Duration = 3600.0


class PinSettings(StrictModel):
    """PINs, the same on every channel that takes one (SMS, voice, email replies).

    ``failures`` wrong PINs within ``lockout`` lock the person out for ``lockout``: one counter
    and one policy, whichever channel the wrong PINs came through. With ``expire_after``, a PIN
    set from now on expires that long after it was set; an expired PIN is refused (and audited as
    PinExpired) until an administrator sets a new one (``annunciator user pin``)."""

    failures: int = Field(5, ge=1, le=100)
    lockout: Duration = 900.0
    expire_after: Duration | None = None
    # an SMS reminder this long before a PIN expires (through the person's SMS profile); None: none
    remind_before: Duration | None = None
    # whom an expired PIN's answer tells the person to ask
    contact: str = "your administrator"


class ClusterSettings(StrictModel):
    """Several gateways on one PostgreSQL database: one active, the others standby (docs/ha.md).

    The active renews a lease row every ``lease``/5; a node that cannot renew within ``lease``
    stops sending and steps down, and a standby takes over once the lease has run out in the
    database's clock. ``address`` is how the other nodes reach this one (they forward writes
    to the active); ``node`` names it in ``annunciator cluster`` and the audit log."""

    lease: Duration = Field(10.0, ge=1.0, le=300.0)
    address: str | None = None  # default: http://{http.host}:{http.port}
    node: str | None = None  # default: hostname:port


class ProfileAlarmSettings(StrictModel):
    """The gateway's own alarm when a profile keeps failing (source ``annunciator/profiles/NAME``).

    Raised once the profile has failed for ``after`` with no success in between while
    notifications wait for it (or were given up); cleared when it sends again. It enters
    ``pipeline`` (say, one that emails the admins), else the pipelines of the ``alarms:``
    definition matching its source; with neither it is still listed, logged and counted.
    """

    enabled: bool = True
    after: Duration = 60.0
    priority: str = "High"
    pipeline: str | None = None

    @field_validator("priority")
    @classmethod
    def _priority(cls, v: str) -> str:
        from .alarms import Priority

        Priority.parse(v)
        return v


class GatewaySettings(StrictModel):
    name: str = "annunciator"
    http: HttpSettings = HttpSettings()
    database: str = "sqlite:///annunciator.db"
    api_tokens: list[str] = []
    secret_file: str = "secret.key"
    scripts_dir: str = "scripts"
    external_url: str | None = None
    retry: RetrySettings = RetrySettings()
    profile_alarms: ProfileAlarmSettings = ProfileAlarmSettings()
    pins: PinSettings = PinSettings()
    cluster: ClusterSettings = ClusterSettings()
    max_concurrent_sends: int = Field(256, ge=1)
    # how long an API call waits for its change to be stored before answering 503
    commit_timeout: Duration = 10.0
    # /metrics (Prometheus) asks for an API bearer token unless this is true (a trusted network)
    public_metrics: bool = False


Contacts = dict[str, list[str]]


CHANNEL_POLICIES = ("first-available", "fallback", "all")


def _channel_policy(v: str | None) -> str | None:
    if v is not None and v not in CHANNEL_POLICIES:
        raise ValueError(f"unknown channel policy {v!r}; expected one of: {', '.join(CHANNEL_POLICIES)}")
    return v


ChannelPolicy = Annotated[str | None, AfterValidator(_channel_policy)]


class ChannelSettings(StrictModel):
    """A person's channel policy: which profiles, in which order, and how they are used.

    ``first-available``: the first profile for which the person has contact info;
    ``fallback``: that one, and the next when a send fails or is reported undelivered;
    ``all``: every profile at once.
    """

    policy: ChannelPolicy = None
    order: list[str] = []


class UserSettings(StrictModel):
    name: str = ""
    id: int | None = Field(None, ge=0)
    pin: str | None = None
    language: str = "en-US"
    contacts: dict[str, list[str] | str] = {}
    # name of a schedule (see core.schedules); None: always on call
    schedule: str | None = None
    # how this person is reached when a block names several profiles (see ChannelSettings)
    channels: ChannelSettings | None = None
    # extra rights beyond acknowledging: "shelve" (put sources on test by SMS)
    permissions: list[Literal["shelve"]] = []

    @field_validator("pin")
    @classmethod
    def _pin_digits(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\d{4,12}", str(v)):
            raise ValueError("expected a PIN of 4 to 12 digits")
        return None if v is None else str(v)

    @field_validator("contacts")
    @classmethod
    def _contacts(cls, v: dict[str, Any]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for kind, raw in v.items():
            values = [raw] if isinstance(raw, str) else list(raw)
            if kind in ("sms", "phone"):
                values = [normalize_phone(x) for x in values]
            elif kind == "email":
                for x in values:
                    if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+", x):
                        raise ValueError(f"expected an email address, got {x!r}")
            out[kind] = values
        return out


class RosterSettings(StrictModel):
    """A roster (see core.oncall and docs/oncall.md): members, or an ``expression`` naming them;
    ``rotation`` is checked by core.oncall.RotationSettings."""

    users: list[str] = []
    description: str = ""
    order: Literal["parallel", "sequential"] = "parallel"
    # sequential: how long each person has to acknowledge before the next one is notified
    ack_wait: Duration | None = None
    rotation: dict[str, Any] | None = None
    expression: str | None = None


def _roster_kind(value: Any) -> str:
    return "RosterSettings" if isinstance(value, Mapping | RosterSettings) else "list[str]"


# A plain list of usernames, or a mapping. The discriminator checks a mapping only as a mapping:
# without it pydantic also reports "input should be a valid list" for every mistake in one.
RosterField = Annotated[
    Annotated[list[str], Tag("list[str]")] | Annotated[RosterSettings, Tag("RosterSettings")],
    Discriminator(_roster_kind),
]


class AlarmDefinition(StrictModel):
    """Defaults for alarms whose source matches ``source`` (a glob, e.g. ``plant/pump*``)."""

    source: str
    name: str | None = None
    display_path: str | None = None
    priority: PriorityField | None = None
    ack_mode: AckMode | None = None
    ack_notes_required: bool | None = None
    properties: dict[str, Any] = {}
    pipelines: dict[str, str] = {}

    @field_validator("pipelines")
    @classmethod
    def _transitions(cls, v: dict[str, str]) -> dict[str, str]:
        return check_pipeline_keys(v)


PIPELINE_TRANSITIONS = ("active", "cleared", "acknowledged")


def check_pipeline_keys(v: dict[str, str]) -> dict[str, str]:
    for key in v:
        if key not in PIPELINE_TRANSITIONS:
            raise ValueError(f"unknown transition {key!r}; expected one of: active, cleared, acknowledged")
    return v


class PipelineSettings(StrictModel):
    description: str = ""
    dropout: list[str] = ["acknowledged", "cleared", "shelved"]
    blocks: list[dict[str, Any]] = []
    # notified when a Notification block's roster has nobody on call
    fallback_roster: str | None = None

    @field_validator("dropout")
    @classmethod
    def _dropout(cls, v: list[str]) -> list[str]:
        for cond in v:
            if cond not in ("acknowledged", "cleared", "shelved"):
                raise ValueError(
                    f"unknown dropout condition {cond!r}; expected acknowledged, cleared, shelved"
                )
        return v


class FileSettings(StrictModel):
    """The shape of the whole file before plugin-specific parts are checked."""

    gateway: GatewaySettings = GatewaySettings()
    profiles: dict[str, dict[str, Any]] = {}
    users: dict[str, UserSettings] = {}
    schedules: dict[str, Any] = {}
    holidays: dict[str, Any] = {}
    rosters: dict[str, RosterField] = {}
    overrides: list[Any] = []
    alarms: list[AlarmDefinition] = []
    pipelines: dict[str, PipelineSettings] = {}


@dataclass
class Config:
    """A validated configuration, with relative paths resolved against the file's folder."""

    path: Path | None
    settings: FileSettings
    # parts the gateway runs without but `annunciator check` refuses (an expired override)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    # things to say loudly at start and in `annunciator check`, without refusing the config
    notices: list[tuple[str, str]] = field(default_factory=list)
    # plugin-owned top-level sections (annunciator_config_sections), validated
    sections: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, BaseModel] = field(default_factory=dict)
    pipelines: dict[str, Any] = field(default_factory=dict)
    # schedules, holidays, rosters and config overrides, built by core.oncall.check_oncall
    oncall: Any = None

    @property
    def gateway(self) -> GatewaySettings:
        return self.settings.gateway

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @property
    def database_url(self) -> str:
        url = self.gateway.database
        prefix = "sqlite:///"
        if url.startswith(prefix) and url != "sqlite:///:memory:":
            return prefix + str(self.resolve(url[len(prefix):]))
        return url

    def roster_users(self, roster: str) -> list[str]:
        r = self.settings.rosters[roster]
        return list(r) if isinstance(r, list) else list(r.users)


# --- loading -------------------------------------------------------------------------------

# Limits on a config file (issue 12): any file, however hostile, is refused with a message within
# seconds and in bounded memory, never a traceback or a hang. Each is far above a real config (the
# demo config is 3 KB and ~250 values); PyYAML's pure-Python parser reads about 1 MB, or 30,000 to
# 50,000 values, a second, so a file at a limit is still read in a few seconds.
MAX_CONFIG_BYTES = 2 * 1024 * 1024
# Keys, values and list items, each alias counted as a full copy of what it names, as safe YAML
# loaders elsewhere do: otherwise a 1 KB "billion laughs" file (9 aliases of 9 aliases of ..., 9
# levels) is 387 million values to every walk over it: ${ENV} expansion, validation, the line map.
# What aliases add is held to MAX_ALIAS_VALUES (no real config repeats 100,000 values through
# aliases); written-out values only to MAX_CONFIG_NODES, which the 2 MiB bound mostly sets anyway:
# a plant with 20,000 tags in its config must load.
MAX_CONFIG_NODES = 1_000_000
MAX_ALIAS_VALUES = 100_000
# Lists and mappings inside each other. PyYAML composes recursively: ~330 levels is a RecursionError.
MAX_CONFIG_DEPTH = 100
# A key is a name. YAML ends an implicit key at 1024 characters; only an explicit `? key` (or an
# alias used as a key) goes past, and every message repeats its key path: long keys times many
# problems would be a huge message.
MAX_KEY_CHARS = 1024
# Problems listed at most; past it one line says how many more (a list of 100,000 wrong values
# would otherwise be 100,000 lines).
MAX_PROBLEMS = 1000
# Characters of key paths kept for the line map: a path 100 levels deep, repeated for every value
# under it, can be large even within the limits above. Past it a message names no line.
MAX_LINE_PATH_CHARS = 10_000_000

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(data: Any, env: Mapping[str, str], path: str = "") -> tuple[Any, list[tuple[str, str]]]:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; unset variables are problems.

    A file's data is already bounded by the loader (aliases counted as copies, nesting depth); a
    mapping passed in by a caller gets the same limits here: at most MAX_CONFIG_NODES values
    visited (shared objects are visited once per place they appear, as copies), MAX_CONFIG_DEPTH
    levels, and a list or dict that contains itself is a problem, not endless recursion."""
    problems: list[tuple[str, str]] = []
    budget = MAX_CONFIG_NODES
    inside: set[int] = set()  # ids of the lists and dicts being walked, to find one inside itself

    def walk(node: Any, where: str, depth: int) -> Any:
        nonlocal budget
        budget -= 1
        if budget < 0:
            raise ConfigError([("", f"more than {MAX_CONFIG_NODES:,} values: a config may hold at most "
                                    f"{MAX_CONFIG_NODES:,}")])
        if isinstance(node, str):
            def sub(m: re.Match[str]) -> str:
                name, default = m.group(1), m.group(2)
                if name in env:
                    return env[name]
                if default is not None:
                    return default
                problems.append((where, f"environment variable {name} is not set"))
                return ""

            return _ENV.sub(sub, node)
        if not isinstance(node, dict | list):
            return node
        if depth >= MAX_CONFIG_DEPTH:
            problems.append((where, f"nested more than {MAX_CONFIG_DEPTH} levels deep"))
            return None
        if id(node) in inside:
            problems.append((where, "contains itself"))
            return None
        inside.add(id(node))
        try:
            if isinstance(node, dict):
                return {k: walk(v, join_path(where, k), depth + 1) for k, v in node.items()}
            return [walk(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(node)]
        finally:
            inside.discard(id(node))

    return walk(data, path, 0), problems


def join_path(base: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    return f"{base}.{key}" if base else str(key)


def yaml_lines(text: str) -> dict[str, int]:
    """Key path -> 1-based line, so an error can point at the line to fix."""
    try:
        loader = _ConfigLoader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except (yaml.YAMLError, RecursionError):
        return {}
    return _node_lines(root) if root is not None else {}


def _node_lines(root: yaml.Node) -> dict[str, int]:
    """yaml_lines of a composed document. An alias is walked again where it is used, so the values
    under each use have the lines where they are written; the composer has refused a file whose
    aliases expand past MAX_CONFIG_NODES, so this walk is bounded (and MAX_CONFIG_DEPTH deep)."""
    lines: dict[str, int] = {}
    budget = MAX_LINE_PATH_CHARS

    def walk(node: Any, where: str) -> None:
        nonlocal budget
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    continue  # a list or mapping as a key: refused when the data is built
                p = join_path(where, key.value)
                budget -= len(p)
                if budget < 0:
                    return
                lines[p] = key.start_mark.line + 1
                walk(value, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                p = f"{where}[{i}]"
                budget -= len(p)
                if budget < 0:
                    return
                lines[p] = value.start_mark.line + 1
                walk(value, p)

    walk(root, "")
    return lines


def pydantic_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Turn pydantic's errors into (key path, plain message) pairs."""
    out = []
    for err in exc.errors():
        path = prefix
        loc = [part for part in err["loc"] if not _is_union_tag(part)]
        for part in loc:
            path = join_path(path, part)
        kind = err["type"]
        if kind == "missing":
            msg = "required"
        elif kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "value_error":
            msg = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
        else:
            msg = f"{err['msg'][0].lower()}{err['msg'][1:]}, got {_brief(err.get('input'))}"
        out.append((path, msg))
    return out


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the tried union member in the location ("list[str]", "RosterSettings");
    # a user never wrote those words, so they only confuse the path.
    # (a tag path such as "Plant/Tank1" is a key the user wrote: the "/" tells it apart)
    return isinstance(part, str) and ((part[:1].isupper() and "/" not in part) or "[" in part)


def _brief(value: Any, limit: int = 300) -> str:
    """repr(value), short: pydantic hands back the whole input, which may be a 2 MB text or a
    list of thousands of values (and appear in many problems)."""
    if isinstance(value, str | bytes) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value):,} {'characters' if isinstance(value, str) else 'bytes'})"
    if isinstance(value, dict | list | tuple | set | frozenset) and not _small(value, limit):
        kind = {dict: "a mapping", list: "a list"}.get(type(value), f"a {type(value).__name__}")
        return f"{kind} of {len(value):,} {'keys' if isinstance(value, dict) else 'items'}"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _small(value: Any, limit: int) -> bool:
    """Whether repr(value) is about ``limit`` characters or fewer, found without building it: the
    value may be huge or (from a caller's dict) contain itself."""
    stack, size = [value], 0
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack += v.keys()
            stack += v.values()
            size += 2 + 4 * len(v)
        elif isinstance(v, list | tuple | set | frozenset):
            stack += v
            size += 2 + 2 * len(v)
        else:
            size += len(v) + 2 if isinstance(v, str | bytes) else 8
        if size > limit:
            return False
    return True


class _Refused(yaml.YAMLError):
    """YAML the loader will not build: past one of the limits above (an alias bomb, say)."""

    def __init__(self, problem: str, mark: Any):
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


_TAG_PREFIX = "tag:yaml.org,2002:"


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that keeps a plain mapping key as the text written: YAML 1.1 would read the
    expression block's ``true:``/``false:`` keys as booleans and a switch's ``1:`` case as an int,
    and every key in the config is a name.

    It also refuses, while composing, what would exhaust time or memory later (see the limits
    above): values past MAX_CONFIG_NODES counting each alias as a copy of what it names, an alias
    inside the value it names (PyYAML would build a list that contains itself), nesting past
    MAX_CONFIG_DEPTH, and keys longer than MAX_KEY_CHARS."""

    _TEXT_KEYS = frozenset(f"{_TAG_PREFIX}{t}" for t in ("bool", "int", "float", "null"))

    def __init__(self, stream: str):
        super().__init__(stream)
        self._values = 0  # values composed so far, each alias counted as a copy of what it names
        self._aliased = 0  # of those, the values aliases added
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(anchored node) -> its values, aliases in it expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # (an undefined alias is PyYAML's own error)
                size = self._sizes.get(id(target))
                if size is None:  # anchored, not finished: the alias is inside what it names
                    raise _Refused(f"alias *{event.anchor} is inside the value it names (&{event.anchor}), "
                                   "which would contain itself without end", event.start_mark)
                self._count(size, event.start_mark, f"alias *{event.anchor}")
            node = super().compose_node(parent, index)
        else:
            if self._depth >= MAX_CONFIG_DEPTH and not isinstance(event, yaml.ScalarEvent):
                raise _Refused(f"nested more than {MAX_CONFIG_DEPTH} levels deep: a config may nest lists "
                               f"and mappings at most {MAX_CONFIG_DEPTH} levels", event.start_mark)
            self._count(1, event.start_mark)
            before = self._values - 1
            self._depth += 1
            node = super().compose_node(parent, index)
            self._depth -= 1
            if event.anchor is not None:
                self._sizes[id(node)] = self._values - before
        # compose_mapping_node composes a key with index None (a value's index is its key node)
        if (index is None and isinstance(parent, yaml.MappingNode) and isinstance(node, yaml.ScalarNode)
                and len(node.value) > MAX_KEY_CHARS):
            raise _Refused(f"a key of {len(node.value):,} characters: a config key may be at most "
                           f"{MAX_KEY_CHARS:,}", event.start_mark)
        return node

    def _count(self, values: int, mark: Any, alias: str = "") -> None:
        self._values += values
        if alias:
            self._aliased += values
            if self._aliased > MAX_ALIAS_VALUES:
                raise _Refused(f"{alias} takes the file past {MAX_ALIAS_VALUES:,} values repeated through "
                               "aliases, each alias counted as a copy of what it names (an alias bomb?)", mark)
        if self._values > MAX_CONFIG_NODES:
            raise _Refused(f"more than {MAX_CONFIG_NODES:,} values (keys, values and list items): a config "
                           f"may hold at most {MAX_CONFIG_NODES:,}", mark)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            # SafeConstructor lets these out for a scalar it cannot convert: `!!int abc`, a date
            # that does not exist (2024-02-30), an integer of more than 4,300 digits
            tag = node.tag.replace(_TAG_PREFIX, "!!")
            what = _brief(node.value, 80) if isinstance(node, yaml.ScalarNode) else "this value"
            raise yaml.constructor.ConstructorError(None, None, f"cannot read {what} as {tag} ({exc})",
                                                    node.start_mark) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):  # `!!set 1`, `!!map [a]`: before flatten_mapping fails on it
            tag = node.tag.replace(_TAG_PREFIX, "!!")
            raise yaml.constructor.ConstructorError(None, None, f"expected a mapping for {tag}, found a {node.id}",
                                                    node.start_mark)
        self.flatten_mapping(node)
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag in self._TEXT_KEYS and not key.style:
                key.tag = "tag:yaml.org,2002:str"
        return super().construct_mapping(node, deep)


# (byte order mark, codec): YAML's encodings, as PyYAML tells them apart when it reads bytes;
# UTF-32 first, as its little-endian mark starts like UTF-16's
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"), (codecs.BOM_UTF8, "utf-8-sig"))


def _read_text(path: Path) -> str:
    """The file's text: UTF-8 (with or without a byte order mark), or UTF-16/32 with one."""
    file = str(path)
    try:
        with path.open("rb") as f:
            # no more than the limit is read: a 50 GB file (or /dev/zero) is refused, not loaded
            data = f.read(MAX_CONFIG_BYTES + 1)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise ConfigError([("", f"cannot read config: {exc.strerror or exc}")], file=file) from exc
    if len(data) > MAX_CONFIG_BYTES:
        mb = 1024 * 1024
        shown = f"{size / mb:,.1f} MB" if size > MAX_CONFIG_BYTES else f"more than {MAX_CONFIG_BYTES // mb} MB"
        raise ConfigError([("", f"the file is {shown}: a config file may be at most "
                                f"{MAX_CONFIG_BYTES // mb} MB")], file=file)
    codec = next((c for bom, c in _BOMS if data.startswith(bom)), "utf-8")
    try:
        # newlines as Path.read_text gave them before (universal newlines), so lines count the same
        return data.decode(codec).replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        before = data[:exc.start].decode(codec, errors="replace")
        line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        name = codec.upper().replace("-SIG", "")
        raise ConfigError([("", f"line {line}, column {column}: not {name} text (byte 0x{data[exc.start]:02x}); "
                                "save the file as UTF-8")], file=file) from None


def read_yaml(path: Path) -> tuple[Any, dict[str, int]]:
    """The file's data and its line map (yaml_lines), or ConfigError saying what is wrong where:
    never a traceback or a hang, whatever the file holds (see the limits above)."""
    file = str(path)
    text = _read_text(path)
    try:
        loader = _ConfigLoader(text)
        try:
            root = loader.get_single_node()
            # the line map first: building the data flattens `<<` merges into the nodes
            lines = _node_lines(root) if root is not None else {}
            try:
                data = loader.construct_document(root) if root is not None else None
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
                # what construct_object does not see: the rest of a list or mapping is built later,
                # by construct_document (none known; the line is not known either)
                raise yaml.constructor.ConstructorError(None, None, f"cannot build the data ({exc})") from None
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as exc:
        # a character YAML does not allow, NUL above all (a binary file); PyYAML gives no line
        before = text[:exc.position]
        line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character or "\0")
        hint = " (a binary file?)" if char == 0 else ""
        raise ConfigError([("", f"line {line}, column {column}: not valid YAML: unacceptable character "
                                f"#x{char:04x}{hint}: {exc.reason}")], file=file) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = exc.problem if isinstance(exc, _Refused) else f"not valid YAML: {getattr(exc, 'problem', exc)}"
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if isinstance(exc, yaml.composer.ComposerError) and context and context_mark:
            # alone, its problem is "second occurrence" (of an anchor) or "but found another document"
            what = f"not valid YAML: {context} (line {context_mark.line + 1}), {exc.problem}"
        raise ConfigError([("", f"{where}{what}")], file=file) from exc
    except RecursionError:
        # not expected within MAX_CONFIG_DEPTH; PyYAML's `<<` merges also recurse, one level a merge
        raise ConfigError([("", "nested too deeply to read")], file=file) from None
    return (data if data is not None else {}), lines


def installed(names: Any) -> str:
    return ", ".join(sorted(names)) or "(none)"
