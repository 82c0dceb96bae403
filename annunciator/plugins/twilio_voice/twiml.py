"""TwiML for the voice flow: built with the ``twilio`` library's ``VoiceResponse`` (never by hand),
and checked with lxml against the package's RELAX NG schema (``twiml.rng``).

Why both: ``VoiceResponse`` escapes text, so an alarm named ``<Hangup/>`` is read out, not obeyed;
the schema is what a call script's TwiML (a plain string) must pass before a caller hears it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from lxml import etree
from twilio.twiml.voice_response import VoiceResponse

__all__ = ["InvalidTwiml", "clean", "parse_and_validate", "schema", "validate"]

# characters XML 1.0 cannot carry even escaped (C0 controls but tab/newline/CR, lone surrogates,
# U+FFFE/U+FFFF): an alarm text holding one would make the whole answer unparseable for Twilio
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# Twilio refuses a <Say> longer than 4,096 characters; a spoken alarm should be far shorter anyway
MAX_SAY = 1000
# no entities, no DTDs, no network: the text comes from integrator scripts
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


class InvalidTwiml(ValueError):
    """A TwiML document the gateway will not serve; ``line`` is the document line, when known."""

    def __init__(self, reason: str, line: int | None = None):
        super().__init__(reason if line is None else f"line {line}: {reason}")
        self.reason = reason
        self.line = line


def clean(text: object, limit: int = MAX_SAY) -> str:
    """Text that is safe to put in a ``<Say>``: XML-legal characters, bounded length.

    Escaping ``<`` and ``&`` is left to ``VoiceResponse``; this removes what no escaping can carry.
    """
    s = _NOT_XML.sub(" ", "" if text is None else str(text))
    return s if len(s) <= limit else s[: limit - 1] + "…"


@lru_cache(maxsize=1)
def schema() -> etree.RelaxNG:
    """The RELAX NG schema of the TwiML the gateway allows (loaded once)."""
    data = resources.files(__package__).joinpath("twiml.rng").read_bytes()
    return etree.RelaxNG(etree.fromstring(data, _PARSER))


def validate(root: etree._Element) -> None:
    """InvalidTwiml naming the first rule ``root`` breaks; nothing when it is allowed."""
    rng = schema()
    if not rng.validate(root):
        err = rng.error_log.last_error
        raise InvalidTwiml(err.message if err is not None else "not allowed by the TwiML schema",
                           err.line if err is not None and err.line else None)


def parse_and_validate(text: str | bytes) -> etree._Element:
    """Parse ``text`` with lxml and check it against the schema; InvalidTwiml when it fails either."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        root = etree.fromstring(data.strip(), _PARSER)
    except etree.XMLSyntaxError as exc:
        raise InvalidTwiml(f"not XML: {exc.msg}", exc.lineno) from None
    validate(root)
    return root


def to_xml(response: VoiceResponse) -> str:
    """The document Twilio receives (``VoiceResponse`` adds the XML declaration)."""
    return str(response)
