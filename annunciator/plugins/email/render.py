"""Templates and MIME: the multipart text + HTML email of a notification, and the ack pages.

Templates are Jinja2 in a sandbox, HTML autoescaped (alarm text is data from field devices and
integrators, never markup). Headers are set through ``email.policy.SMTP``, which refuses a header
value with a line break; subjects and display names are folded to one line before that, so an alarm
name like ``"x\\r\\nBcc: y"`` ends up as text in the subject, never as a header.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from annunciator.core.alarms import AlarmEvent, utcnow

from .settings import EmailSettings

PACKAGE_TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE_NAMES = ("alarm.txt", "alarm.html", "alarms.txt", "alarms.html", "ack_page.html", "ack_done.html",
                  "ack_error.html")
_BREAKS = re.compile(r"[\s\x00-\x1f\x7f\u2028\u2029\x85]+")


def one_line(text: str, limit: int = 200) -> str:
    """Any run of whitespace or control characters (CR, LF, NUL, U+2028...) becomes one space."""
    flat = _BREAKS.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def environment(folder: Path | None) -> jinja2.Environment:
    """Templates from ``folder`` first, then the shipped ones: a site overrides only what it needs."""
    paths = ([str(folder)] if folder is not None else []) + [str(PACKAGE_TEMPLATES)]
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(paths),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "htm"), default_for_string=False),
        undefined=jinja2.ChainableUndefined,  # a property one alarm lacks renders empty, not an error
        trim_blocks=False, keep_trailing_newline=True)
    return env


def subject_environment() -> jinja2.Environment:
    # subjects are plain text: escaping would show "&amp;" in every mail client
    return ImmutableSandboxedEnvironment(autoescape=False, undefined=jinja2.ChainableUndefined)


def event_values(event: AlarmEvent, ack_url: str | None = None) -> dict[str, Any]:
    """What a template sees of one alarm: its message-template names, plus its properties alone."""
    values = event.template_values()
    values["priority"] = event.priority.label
    values["properties"] = dict(event.properties)
    values["ackUrl"] = ack_url
    values["needsNotes"] = event.ack_notes_required
    return values


def domain_of(address: str) -> str:
    return address.rsplit("@", 1)[-1]


def thread_id(event_id: str, domain: str) -> str:
    """The stable Message-ID of an alarm's (virtual) first message: every email about the alarm
    names it in References, so mail clients keep them in one thread and a reply names the alarm."""
    return f"<alarm.{event_id}@{domain}>"


def message_id(notification_id: str, domain: str) -> str:
    # stable across retries of one notification, so a server that saw a retry's twin can dedupe it
    return f"<notification.{notification_id}@{domain}>"


def build_message(settings: EmailSettings, *, to: str, to_name: str, subject: str, text: str, html: str,
                  notification_id: str, event_ids: list[str], when: datetime | None = None) -> EmailMessage:
    """A multipart/alternative message; every header goes through the SMTP policy's checks."""
    domain = domain_of(settings.sender)
    msg = EmailMessage(policy=SMTP)
    msg["Subject"] = one_line(subject, 250)
    msg["From"] = Address(display_name=one_line(settings.sender_name), addr_spec=settings.sender)
    msg["To"] = Address(display_name=one_line(to_name), addr_spec=to)
    if settings.reply_to:
        msg["Reply-To"] = settings.reply_to
    msg["Date"] = format_datetime(when or utcnow())
    msg["Message-ID"] = message_id(notification_id, domain)
    threads = [thread_id(e, domain) for e in event_ids]
    if threads:
        msg["In-Reply-To"] = threads[0]
        msg["References"] = " ".join(threads)
    # RFC 3834: vacation responders must not answer (and so cannot loop with the IMAP poller)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg
