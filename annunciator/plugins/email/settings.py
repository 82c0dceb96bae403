"""Config of the ``email`` profile type: the SMTP server, the sender, templates, ack links and the
optional IMAP mailbox polled for reply-acknowledgements."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from annunciator.core.config import Duration, StrictModel

# the same shape the core accepts for users' email contacts; anything with a space, angle bracket
# or line break is refused, so an address can never smuggle a second header or recipient
_ADDRESS = re.compile(r"[^@\s<>\"(),;:\\\[\]]+@[^@\s<>\"(),;:\\\[\]]+\.[^@\s<>\"(),;:\\\[\]]+")

Security = Literal["starttls", "tls", "none"]
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
IMAP_PORTS = {"starttls": 143, "tls": 993, "none": 143}


def _address(value: str) -> str:
    if not _ADDRESS.fullmatch(value):
        raise ValueError(f"expected an email address like alarms@plant.example, got {value!r}")
    return value


def _one_line(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("must be one line (no line breaks)")
    return value


Address = Annotated[str, AfterValidator(_address)]
OneLine = Annotated[str, AfterValidator(_one_line)]


class ImapSettings(StrictModel):
    """A mailbox polled for replies: ``ACK`` (and the PIN when required) acknowledges the thread's
    alarms. Replies must come from the person's own address."""

    host: str
    port: int | None = Field(None, ge=1, le=65535)
    security: Security = "tls"
    username: str
    password: str
    mailbox: str = "INBOX"
    interval: Duration = 30.0
    require_pin: bool = True
    verify: bool = True
    ca_file: str | None = None
    timeout: Duration = 30.0

    @property
    def effective_port(self) -> int:
        return self.port or IMAP_PORTS[self.security]


class EmailSettings(StrictModel):
    """One SMTP server and sender; define several profiles for several sites or control centres."""

    host: str
    port: int | None = Field(None, ge=1, le=65535)  # default by security: 587, 465 or 25
    security: Security = "starttls"  # starttls (587), tls = implicit TLS (465), none = plain (25)
    username: str | None = None
    password: str | None = None  # write "${SMTP_PASSWORD}" in the config
    sender: Address
    sender_name: OneLine = "Alarm Notification"
    reply_to: Address | None = None  # where replies go; the IMAP mailbox when reply-acks are on
    verify: bool = True  # verify the server's certificate and name
    ca_file: str | None = None  # PEM bundle to trust instead of the system store (a site CA)
    timeout: Duration = 30.0
    # Jinja2 subject templates (one line; alarm properties by name); body templates are files
    subject: OneLine = "[{{ priority }}] {{ displayPath }}: {{ name }}"
    consolidated_subject: OneLine = "{{ count }} alarms, highest priority {{ highestPriority }}"
    # a folder whose alarm.txt, alarm.html, alarms.txt, alarms.html, ack_*.html replace the shipped ones
    templates: str | None = None
    ack_links: bool = True
    ack_link_expiry: Duration = 86400.0
    imap: ImapSettings | None = None

    @model_validator(mode="after")
    def _credentials_together(self) -> EmailSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together: set both or neither")
        if self.imap is not None and self.reply_to is None:
            # replies would go to the sender address, which is rarely the polled mailbox
            raise ValueError("imap needs reply_to: the address of the polled mailbox")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.security]

    @property
    def server(self) -> str:
        return f"{self.host}:{self.effective_port}"
