"""SMS text facts: GSM-7 or UCS-2, segments, and the characters that needlessly flip a message
to UCS-2 (which more than halves what fits in one segment)."""

from __future__ import annotations

from annunciator.plugins.twilio.sms import GSM7_BASIC, GSM7_EXTENDED, encoding_of, segments

__all__ = ["SMART", "encoding_of", "non_gsm", "segments", "smart_encode"]

# what Twilio's Smart Encoding replaces: typographic punctuation with its plain equivalent
SMART = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "\u2026": "...", "\u00a0": " ", "\u2002": " ", "\u2003": " ", "\u2009": " ", "\u200b": "",
    "\u2022": "-", "\u00b7": "-", "\u02c6": "^", "\u02dc": "~",
}


def smart_encode(text: str) -> str:
    return "".join(SMART.get(c, c) for c in text)


def non_gsm(text: str) -> list[str]:
    """Characters of ``text`` outside GSM-7, in order of first appearance."""
    out: list[str] = []
    for c in text:
        if c not in GSM7_BASIC and c not in GSM7_EXTENDED and c not in out:
            out.append(c)
    return out
