"""SMS facts shared by the SMS profile and the Twilio emulator: encodings, segments, keywords,
numbers.

Why one module for both: the emulator must compute ``num_segments`` exactly as Twilio does, and
the profile must predict the same figure before sending. One implementation, tested against the
rules in ``tests/testing/test_twilio_emulator.py``, keeps the two from drifting apart.
"""

from __future__ import annotations

import phonenumbers

__all__ = [
    "GSM7_BASIC",
    "GSM7_EXTENDED",
    "HELP_KEYWORDS",
    "MAX_BODY_CHARS",
    "OPT_IN_KEYWORDS",
    "OPT_OUT_KEYWORDS",
    "country_of",
    "encoding_of",
    "normalize_number",
    "segments",
]

# GSM 03.38 default alphabet (without ESC, which only introduces the extension table).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Extension table: each costs two septets (ESC + char).
GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")

# Twilio refuses longer bodies with error 21617.
MAX_BODY_CHARS = 1600

# Twilio's default Advanced Opt-Out keywords (matched against the whole trimmed body, any case).
OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN_KEYWORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})

_GSM_SINGLE, _GSM_MULTI = 160, 153
_UCS_SINGLE, _UCS_MULTI = 70, 67


def encoding_of(body: str) -> str:
    """``"GSM-7"`` when every character is in the GSM 03.38 tables, else ``"UCS-2"``.

    One typographic quote or emoji flips the whole message to UCS-2, which more than halves the
    characters per segment; that is why the profile wants to know before it sends.
    """
    if all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in body):
        return "GSM-7"
    return "UCS-2"


def segments(body: str) -> int:
    """Number of SMS segments Twilio bills for ``body`` (1 for an empty body).

    GSM-7: 160 septets fit one segment; concatenated segments carry 153 because of the UDH, and
    an escape pair is never split across two segments. UCS-2: 70 UTF-16 units, 67 when
    concatenated, and a surrogate pair (an emoji) is never split either.
    """
    if encoding_of(body) == "GSM-7":
        costs = [2 if c in GSM7_EXTENDED else 1 for c in body]
        single, multi = _GSM_SINGLE, _GSM_MULTI
    else:
        costs = [2 if ord(c) > 0xFFFF else 1 for c in body]
        single, multi = _UCS_SINGLE, _UCS_MULTI
    total = sum(costs)
    if total <= single:
        return 1
    count, used = 1, 0
    for cost in costs:
        if used + cost > multi:
            count += 1
            used = 0
        used += cost
    return count


def normalize_number(raw: str, *, strict: bool = False) -> str | None:
    """E.164 form of ``raw``, or None when Twilio would answer 21211 (invalid number).

    ``strict=False`` (the emulator's default) accepts any number of a plausible length for its
    country code, because the fictional numbers tests and docs use (+1 555 01xx, +1 222 333 4444)
    are not *assigned* numbers in libphonenumber's metadata; ``strict=True`` requires that too.
    """
    try:
        parsed = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        return None
    ok = phonenumbers.is_valid_number(parsed) if strict else phonenumbers.is_possible_number(parsed)
    if not ok:
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def country_of(number: str) -> str:
    """ISO country code Twilio puts in FromCountry/ToCountry (``US`` for fictional NANP numbers)."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return ""
    region = phonenumbers.region_code_for_number(parsed)
    if region and region != "ZZ":
        return region
    # fictional numbers have no region; report the country code's main region as Twilio would
    return phonenumbers.region_code_for_country_code(parsed.country_code or 0) or ""

