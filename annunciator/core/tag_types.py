"""Tag data types, the Dataset value, quality names and path rules.

Every value is checked (and, where it is lossless, converted) against its tag's data type before
it is stored, so a subscriber, an exporter or an alarm condition never sees a value of the wrong
type: writing ``"abc"`` into an Int4 tag is refused and the tag keeps its value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DATA_TYPES = ("Int4", "Int8", "Float8", "Boolean", "String", "DateTime", "Dataset")
GOOD, BAD, UNCERTAIN = "Good", "Bad", "Uncertain"
QUALITIES = (GOOD, BAD, UNCERTAIN)

_INT_RANGE = {"Int4": (-(2**31), 2**31 - 1), "Int8": (-(2**63), 2**63 - 1)}
# a segment may hold letters, digits, spaces and a few separators; "/" separates segments
_SEGMENT = re.compile(r"^[^/\x00-\x1f]+$")
MAX_PATH = 500


class TagError(ValueError):
    """A tag operation was refused (bad path, wrong type, unknown tag, read-only tag)."""


class TagNotFound(TagError, KeyError):
    """No tag at that path. Also a KeyError, so ``except KeyError`` callers keep working."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class TagReadOnly(TagError):
    """The tag belongs to the gateway or a plugin; only its owner writes it."""


def check_path(path: Any) -> str:
    """Return ``path`` if it is a valid tag path, else raise TagError saying why.

    Paths are ``/``-separated names (``Plant/Tank1/Level``). Empty segments (``a//b``, a leading
    or trailing ``/``) and ``.``/``..`` segments are refused: paths also become MQTT topics and URL
    paths, where such segments would address something else.
    """
    if not isinstance(path, str) or not path:
        raise TagError(f"tag path must be a non-empty string, got {path!r}")
    if len(path) > MAX_PATH:
        raise TagError(f"tag path is longer than {MAX_PATH} characters")
    for seg in path.split("/"):
        if seg == "":
            raise TagError(f"tag path {path!r} has an empty segment")
        if seg in (".", ".."):
            raise TagError(f"tag path {path!r} has a {seg!r} segment")
        if seg != seg.strip():
            raise TagError(f"tag path {path!r}: segment {seg!r} starts or ends with a space")
        if not _SEGMENT.match(seg) or any(c in seg for c in "+#"):
            # + and # are MQTT wildcards: a tag named with them could not be published
            raise TagError(f"tag path {path!r}: segment {seg!r} has a control character, '+' or '#'")
    return path


@dataclass
class Dataset:
    """A table value: column names and rows (each row a list, one value per column).

    ``Dataset(columns=["UserId", "Username"], rows=[[0, "maria"], [1, "li"]])``. Rows may also be
    given as dicts keyed by column name. Compared by content, so writing an equal Dataset is not
    a change.
    """

    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.columns = [str(c) for c in self.columns]
        if len(set(self.columns)) != len(self.columns):
            raise TagError(f"dataset has duplicate column names: {self.columns}")
        rows = []
        for i, row in enumerate(self.rows):
            if isinstance(row, dict):
                unknown = set(row) - set(self.columns)
                if unknown:
                    raise TagError(f"dataset row {i}: unknown columns {sorted(unknown)}")
                row = [row.get(c) for c in self.columns]
            row = list(row)
            if len(row) != len(self.columns):
                raise TagError(f"dataset row {i} has {len(row)} values for {len(self.columns)} columns")
            rows.append(row)
        self.rows = rows

    @classmethod
    def from_dicts(cls, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> Dataset:
        return cls(list(columns), [[r.get(c) for c in columns] for r in rows])

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "rows": [list(r) for r in self.rows]}

    def records(self) -> list[dict[str, Any]]:
        """Rows as dicts, for scripts."""
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]

    # Ignition's dataset API, so integrators' scripts read the same
    def getRowCount(self) -> int:
        return len(self.rows)

    def getColumnCount(self) -> int:
        return len(self.columns)

    def getColumnNames(self) -> list[str]:
        return list(self.columns)

    def getValueAt(self, row: int, column: int | str) -> Any:
        col = self.columns.index(column) if isinstance(column, str) else column
        return self.rows[row][col]


def coerce(data_type: str, value: Any, path: str = "") -> Any:
    """``value`` as ``data_type`` stores it; TagError when it is not one (None is allowed: no value).

    Conversions are only the lossless ones an integrator expects: an int into Float8, a whole
    float (3.0) into Int4, an ISO 8601 text into DateTime, a {columns, rows} mapping into Dataset.
    Text is never parsed into a number or a boolean: "12" into an Int4 tag is a mistake to report.
    """
    where = f"tag {path}: " if path else ""
    if value is None:
        return None
    if data_type in _INT_RANGE:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TagError(f"{where}{data_type} expects an integer, got {type(value).__name__} {value!r}")
        lo, hi = _INT_RANGE[data_type]
        if not lo <= value <= hi:
            raise TagError(f"{where}{value} is out of range for {data_type}")
        return value
    if data_type == "Float8":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TagError(f"{where}Float8 expects a number, got {type(value).__name__} {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise TagError(f"{where}Float8 expects a finite number, got {value!r}")
        return value
    if data_type == "Boolean":
        if not isinstance(value, bool):
            raise TagError(f"{where}Boolean expects true or false, got {type(value).__name__} {value!r}")
        return value
    if data_type == "String":
        if not isinstance(value, str):
            raise TagError(f"{where}String expects text, got {type(value).__name__} {value!r}")
        return value
    if data_type == "DateTime":
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise TagError(f"{where}DateTime expects an ISO 8601 time, got {value!r}")
        if not isinstance(value, datetime):
            raise TagError(f"{where}DateTime expects a time, got {type(value).__name__} {value!r}")
        # a time without an offset is taken as UTC, as everywhere in the gateway
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if data_type == "Dataset":
        if isinstance(value, dict) and set(value) <= {"columns", "rows"} and "columns" in value:
            value = Dataset(list(value["columns"]), list(value.get("rows") or []))
        if not isinstance(value, Dataset):
            raise TagError(f"{where}Dataset expects a Dataset (columns and rows), got {type(value).__name__}")
        return value
    raise TagError(f"{where}unknown data type {data_type!r}; expected one of {', '.join(DATA_TYPES)}")


def check_type(data_type: Any, path: str = "") -> str:
    if data_type not in DATA_TYPES:
        where = f"tag {path}: " if path else ""
        raise TagError(f"{where}unknown data type {data_type!r}; expected one of {', '.join(DATA_TYPES)}")
    return str(data_type)


def check_quality(quality: Any) -> str:
    if quality not in QUALITIES:
        raise TagError(f"unknown quality {quality!r}; expected one of {', '.join(QUALITIES)}")
    return str(quality)


def to_json(value: Any) -> Any:
    """A tag value as JSON data: datasets as {columns, rows}, times as ISO 8601 text."""
    if isinstance(value, Dataset):
        return {"columns": value.columns, "rows": [[to_json(v) for v in r] for r in value.rows]}
    if isinstance(value, datetime):
        return value.isoformat()
    return value
