"""An alarm as a source raises it: the HTTP API, the CLI, scripts, tag alarms, the gateway itself."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from .alarms import AckMode, Priority
from .config import check_pipeline_keys


class AlarmSpec(BaseModel):
    """An alarm as a source raises it (HTTP API, CLI, scripts). Keys are camelCase as in
    Ignition (``displayPath``, ``eventValue``); snake_case is accepted too."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    source: str = Field(min_length=1, max_length=500)
    name: str | None = Field(None, max_length=500)
    display_path: str | None = Field(None, max_length=500)
    label: str | None = Field(None, max_length=500)
    priority: Priority | None = None
    event_value: Any = None
    notes: str = ""
    ack_mode: AckMode | None = None
    ack_notes_required: bool | None = None
    properties: dict[str, Any] = {}
    pipelines: dict[str, str] = {}

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, v: Any) -> Priority | None:
        return None if v is None else Priority.parse(v)

    @field_validator("pipelines")
    @classmethod
    def _transitions(cls, v: dict[str, str]) -> dict[str, str]:
        return check_pipeline_keys(v)
