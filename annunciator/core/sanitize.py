"""Values that no database stores alike, made storable the same way everywhere.

A failed sensor reports NaN (``json.dumps(float("nan"))`` writes it), a PLC pads its strings with
NUL. SQLite stores both; PostgreSQL refuses both (``jsonb`` has no NaN, ``text`` no NUL), and a
refused row used to take the rows committed beside it down too. Rejecting the alarm would lose
the page of a real fault, so the value is normalised instead, identically on every database, and
the caller is told what was changed:

* NaN, Infinity and -Infinity become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
  (what the sensor said, still readable in a message; comparisons in expressions do not crash on
  a float NaN either, but a string survives JSON and every database unchanged);
* NUL characters are removed from every string, keys included (``"Pump 1\\0\\0\\0"`` is
  ``"Pump 1"``).
"""

from __future__ import annotations

import json
import math
from typing import Any

NUL = "\x00"


def _float(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def clean(value: Any, path: str = "", notes: list[str] | None = None) -> Any:
    """``value`` with non-finite floats spelled as strings and NULs removed; each change is
    appended to ``notes`` as ``"path: what was done"``. Containers are copied only if changed."""
    if isinstance(value, str):
        if NUL in value:
            if notes is not None:
                notes.append(f"{path or 'value'}: NUL characters removed")
            return value.replace(NUL, "")
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if notes is not None:
            notes.append(f"{path or 'value'}: {_float(value)} stored as the string {_float(value)!r}")
        return _float(value)
    if isinstance(value, dict):
        out: dict[Any, Any] | None = None
        for i, (k, v) in enumerate(value.items()):
            ck = clean(k, f"{path}.{k}" if path else str(k), notes) if isinstance(k, str) else k
            cv = clean(v, f"{path}.{ck}" if path else str(ck), notes)
            if out is None and (ck is not k or cv is not v):
                out = dict(list(value.items())[:i])
            if out is not None:
                out[ck] = cv
        return value if out is None else out
    if isinstance(value, list | tuple):
        items = [clean(v, f"{path}[{i}]", notes) for i, v in enumerate(value)]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return items if isinstance(value, list) else tuple(items)
    return value


def clean_text(value: str) -> str:
    """A string without NUL characters."""
    return value.replace(NUL, "") if NUL in value else value


def dumps(value: Any) -> str:
    """JSON for a database column: valid JSON (no NaN) and no ``\\u0000``, on every database."""
    try:
        text = json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(clean(value), allow_nan=False)
    if "\\u0000" in text:
        return json.dumps(clean(value), allow_nan=False)
    return text
