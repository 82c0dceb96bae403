"""Row mappers: an alarm event to and from its ``alarm_events`` row, an instance row as the API
shows one whose instance is no longer live."""

from __future__ import annotations

from typing import Any

from .alarms import AckMode, AlarmEvent, Priority


def event_row(e: AlarmEvent) -> dict[str, Any]:
    return {"id": e.id, "source": e.source, "display_path": e.display_path, "name": e.name,
            "label": e.label, "priority": int(e.priority), "event_value": e.event_value, "notes": e.notes,
            "ack_mode": str(e.ack_mode), "ack_notes_required": e.ack_notes_required,
            "properties": e.properties, "pipelines": e.pipelines, "active_time": e.active_time,
            "clear_time": e.clear_time, "ack_time": e.ack_time, "ack_user": e.ack_user,
            "ack_notes": e.ack_notes, "shelved": e.shelved, "done": e.done, "ack_code": e.ack_code}


def event_from_row(r: dict[str, Any]) -> AlarmEvent:
    return AlarmEvent(
        id=r["id"], source=r["source"], display_path=r["display_path"], name=r["name"], label=r["label"],
        priority=Priority(r["priority"]), event_value=r["event_value"], notes=r["notes"],
        ack_mode=AckMode(r["ack_mode"]), ack_notes_required=r["ack_notes_required"],
        properties=r["properties"] or {}, pipelines=r["pipelines"] or {}, active_time=r["active_time"],
        clear_time=r["clear_time"], ack_time=r["ack_time"], ack_user=r["ack_user"], ack_notes=r["ack_notes"],
        shelved=r["shelved"], ack_code=r["ack_code"])


def instance_summary(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "eventId": row["event_id"], "pipeline": row["pipeline"], "status": row["status"],
            "properties": row["properties"], "created": row["created"].isoformat(),
            "ended": row["ended"].isoformat() if row["ended"] else None, "endReason": row["end_reason"],
            "branches": []}
