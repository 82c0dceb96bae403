"""Reading TwiML the way Twilio does, with lxml.

Why a hardened parser: the documents come from the code under test, and a test that feeds it
hostile alarm text must exercise the gateway's escaping, not the emulator's XML parser (no
entity expansion, no network, no DTDs).
"""

from __future__ import annotations

from lxml import etree

__all__ = ["TwimlError", "localname", "message_verbs", "parse_twiml", "text_of"]

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


class TwimlError(ValueError):
    """The answer is not a TwiML document (Twilio logs error 12100, Document parse failure)."""


def parse_twiml(text: str | bytes) -> etree._Element:
    """The ``<Response>`` root element of ``text``; TwimlError when it is not TwiML."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        root = etree.fromstring(data.strip(), _PARSER)
    except etree.XMLSyntaxError as exc:
        raise TwimlError(f"not XML: {exc}") from None
    if localname(root) != "Response":
        raise TwimlError(f"root element is <{localname(root)}>, not <Response>")
    return root


def localname(el: etree._Element) -> str:
    tag = el.tag
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def text_of(el: etree._Element) -> str:
    """All text inside ``el`` (Twilio reads ``<Say>Hello <emphasis>there</emphasis></Say>`` whole)."""
    return "".join(el.itertext()).strip()


def message_verbs(text: str | bytes) -> list[tuple[str, str | None, str | None]]:
    """``(body, to, from)`` for each ``<Message>`` in a messaging TwiML answer, in order."""
    out = []
    for el in parse_twiml(text):
        if localname(el) != "Message":
            continue
        bodies = [c for c in el if localname(c) == "Body"]
        if bodies:
            body = "".join(text_of(b) for b in bodies)
        else:
            # text directly in <Message>, without <Media> URLs
            body = (el.text or "") + "".join(
                ("" if localname(c) == "Media" else text_of(c)) + (c.tail or "") for c in el)
            body = body.strip()
        out.append((body, el.get("to"), el.get("from")))
    return out
