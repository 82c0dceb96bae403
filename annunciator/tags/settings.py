"""The ``tags:`` and ``mqtt:`` sections of the config, registered by the tags plugin.

Memory tags with their alarms (docs/tags.md), and the MQTT export. The loader validates them as
any plugin's section (``config.sections["tags"]``, ``config.sections["mqtt"]``): core's config
knows nothing of tags.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, RootModel, field_validator, model_validator

from annunciator.core.alarms import AckMode, Priority
from annunciator.core.config import PriorityField, StrictModel, check_pipeline_keys
from annunciator.core.tag_types import check_path, check_type, coerce

TAG_ALARM_MODES = ("above", "below", "equal", "not_equal", "bad_quality")


class TagAlarmSettings(StrictModel):
    """An alarm carried by a tag: active while the condition holds, cleared when it stops.

    ``above``/``below``: value > / < setpoint (clears only once back past setpoint -/+ deadband);
    ``equal``/``not_equal``: value == / != setpoint; ``bad_quality``: quality is not Good.
    """

    name: str = Field(min_length=1, max_length=200, pattern=r"^[^/:]+$")
    mode: Literal["above", "below", "equal", "not_equal", "bad_quality"]
    setpoint: Any = None
    deadband: float = Field(0.0, ge=0)
    priority: PriorityField = Priority.MEDIUM
    display_path: str | None = None
    label: str | None = None
    notes: str = ""
    ack_mode: AckMode | None = None
    properties: dict[str, Any] = {}
    pipelines: dict[str, str] = {}
    enabled: bool = True

    @field_validator("pipelines")
    @classmethod
    def _transitions(cls, v: dict[str, str]) -> dict[str, str]:
        return check_pipeline_keys(v)

    @model_validator(mode="after")
    def _setpoint(self) -> TagAlarmSettings:
        if self.mode in ("above", "below") and (
                isinstance(self.setpoint, bool) or not isinstance(self.setpoint, int | float)):
            raise ValueError(f"mode {self.mode} needs a numeric setpoint, got {self.setpoint!r}")
        if self.mode in ("equal", "not_equal") and self.setpoint is None:
            raise ValueError(f"mode {self.mode} needs a setpoint")
        return self


class TagSettings(StrictModel):
    """A memory tag defined in the config (``tags: {Plant/Tank1/Level: {type: Float8, ...}}``)."""

    type: str
    value: Any = None
    # config tags are written by the outside world (API, scripts, MQTT) unless this is false
    writable: bool = True
    doc: str = ""
    alarms: list[TagAlarmSettings] = []

    @model_validator(mode="after")
    def _typed(self) -> TagSettings:
        check_type(self.type)
        self.value = coerce(self.type, self.value)
        names = [a.name for a in self.alarms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"alarm names must be unique per tag: {', '.join(dupes)}")
        for a in self.alarms:
            if a.mode in ("above", "below") and self.type not in ("Int4", "Int8", "Float8"):
                raise ValueError(f"alarm {a.name}: mode {a.mode} needs a numeric tag, not {self.type}")
            if a.mode in ("equal", "not_equal"):
                a.setpoint = coerce(self.type, a.setpoint)
        return self


def _tag_paths(v: dict[str, TagSettings]) -> dict[str, TagSettings]:
    for path in v:
        check_path(path)
        if path == "System" or path.startswith("System/"):
            raise ValueError(f"tag {path}: System/ is reserved for the gateway's own tags")
    return v


class MqttSettings(StrictModel):
    """Publish every tag as retained JSON to ``<prefix>/<tag path>``; off while ``host`` is unset."""

    host: str | None = None
    port: int = Field(1883, ge=1, le=65535)
    prefix: str = Field("annunciator", min_length=1, pattern=r"^[^+#]+$")
    retain: bool = True
    qos: int = Field(1, ge=0, le=2)
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    keepalive: int = Field(30, ge=5, le=3600)
    # export only tags under these paths (empty: every tag)
    paths: list[str] = []
    # accept writes to writable tags from <prefix>/<tag path>/set (JSON value)
    write: bool = False




class TagsSection(RootModel[Annotated[dict[str, TagSettings], AfterValidator(_tag_paths)]]):
    """``tags: {PATH: {type: ..., value: ..., alarms: [...]}}``."""

    root: Annotated[dict[str, TagSettings], AfterValidator(_tag_paths)] = {}

    def pipeline_references(self) -> list[tuple[str, str]]:
        """(where, pipeline) for every pipeline a tag alarm names: the loader checks they exist."""
        return [(f"{path}.alarms[{i}].pipelines.{transition}", pipeline)
                for path, tag in self.root.items() for i, tag_alarm in enumerate(tag.alarms)
                for transition, pipeline in tag_alarm.pipelines.items()]
