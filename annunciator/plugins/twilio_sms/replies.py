"""What a person texted back, parsed: a PIN, an acknowledgement, a command, an opt-out keyword,
or free text.

The grammar is forgiving (any case, extra spaces, ``#`` before codes) and total: any text at all
parses to a :class:`Reply`, so an inbound webhook can never fail on what a phone sent.

* ``1234`` — a bare PIN: acknowledge the alarms of the latest notification sent to this person.
  ``1234 on my way`` — the same, with the words as the acknowledgement note.
* ``ACK 12 1234``, ``ACK #12 #13 1234 on my way``, ``ACK ALL 1234`` — acknowledge those alarms;
  words after the codes and PIN are the acknowledgement note. The PIN is the last bare number
  of four or more digits; ``#1234`` is always a code. Within a PIN session the PIN may be left
  out (``ACK 12``).
* ``STATUS``, ``HELP``/``INFO``, ``TEST plant/pump1 30 [PIN]``, ``UNTEST plant/pump1 [PIN]``.
* ``STOP`` and Twilio's other opt-out words, ``STOPALL``, ``START``/``YES``/``UNSTOP`` — only as
  the whole message, as carriers match them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPT_OUT = frozenset({"STOP", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_OUT_ALL = frozenset({"STOPALL"})
OPT_IN = frozenset({"START", "YES", "UNSTOP"})
HELP = frozenset({"HELP", "INFO"})

_PIN = re.compile(r"\d{4,12}", re.ASCII)
_CODE = re.compile(r"#?(\d{1,12})", re.ASCII)


@dataclass(frozen=True, slots=True)
class Reply:
    kind: str  # pin | ack | status | help | test | untest | stop | stopall | start | text
    codes: tuple[int, ...] = ()
    all: bool = False
    pin: str | None = None
    note: str = ""
    source: str | None = None
    minutes: float | None = None
    text: str = ""


def parse_reply(text: str) -> Reply:
    """Parse one inbound message; never raises."""
    raw = text if isinstance(text, str) else ""
    words = raw.split()
    if not words:
        return Reply("text", text=raw)
    head = words[0].upper().rstrip(".!")
    if len(words) == 1:
        if head in OPT_OUT:
            return Reply("stop", text=raw)
        if head in OPT_OUT_ALL:
            return Reply("stopall", text=raw)
        if head in OPT_IN:
            return Reply("start", text=raw)
        if head in HELP:
            return Reply("help", text=raw)
        if head == "STATUS":
            return Reply("status", text=raw)
        if _PIN.fullmatch(words[0]):
            return Reply("pin", pin=words[0], text=raw)
    if _PIN.fullmatch(words[0]):
        # "8642 on my way": a PIN reply whose words are the acknowledgement note
        return Reply("pin", pin=words[0], note=" ".join(words[1:])[:1000], text=raw)
    if head in ("ACK", "ACKNOWLEDGE", "OK"):
        return _ack(words[1:], raw)
    if head == "STATUS":
        return Reply("status", pin=_trailing_pin(words[1:]), text=raw)
    if head in ("TEST", "UNTEST") and len(words) >= 2:
        return _test(head.lower(), words[1:], raw)
    return Reply("text", text=raw)


def _ack(rest: list[str], raw: str) -> Reply:
    numbers: list[str] = []
    everything = False
    i = 0
    while i < len(rest):
        word = rest[i]
        if word.upper() == "ALL" and not numbers and not everything:
            everything = True
        elif _CODE.fullmatch(word):
            numbers.append(word)
        else:
            break
        i += 1
    note = " ".join(rest[i:])
    pin = None
    if numbers and not numbers[-1].startswith("#") and _PIN.fullmatch(numbers[-1]):
        pin = numbers.pop()
    codes = tuple(int(_CODE.fullmatch(n).group(1)) for n in numbers)  # type: ignore[union-attr]
    return Reply("ack", codes=codes, all=everything, pin=pin, note=note[:1000], text=raw)


def _test(kind: str, rest: list[str], raw: str) -> Reply:
    source = rest[0]
    minutes: float | None = None
    pin: str | None = None
    # TEST takes minutes first, then the PIN; UNTEST only the PIN
    for word in rest[1:3]:
        if kind == "test" and minutes is None and re.fullmatch(r"\d{1,5}(\.\d+)?", word):
            minutes = float(word)
        elif _PIN.fullmatch(word):
            pin = word
    return Reply(kind, source=source, minutes=minutes, pin=pin, text=raw)


def _trailing_pin(rest: list[str]) -> str | None:
    return rest[-1] if rest and _PIN.fullmatch(rest[-1]) else None
