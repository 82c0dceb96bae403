"""The ``email`` notification profile: multipart text + HTML over SMTP, with ack links.

SMTP goes through ``aiosmtplib``: it runs on the gateway's own loop (no thread per send, so a slow
mail server never holds a worker thread while hundreds of alarms queue), and it reports each SMTP
reply as its own exception with the code, which is what retry-or-fail needs.

How failures map onto the dispatcher's retry policy (docs/delivery.md):

* cannot connect, timeout, disconnect, any 4xx reply: retried with backoff;
* wrong credentials (535 and other AUTH refusals): retried (an administrator may be fixing the
  password), with one clear message naming the server and its reply, never a traceback;
* any other 5xx (recipient unknown, message refused), no STARTTLS offered, certificate refused:
  failed at once, so the person's fallback channel is tried without waiting.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

import aiosmtplib

from annunciator.core.consolidation import summary_values
from annunciator.core.notifications import Notification
from annunciator.core.profiles import DeliveryResult, NotificationProfile

from .render import build_message, environment, event_values, subject_environment
from .settings import EmailSettings
from .tokens import make_token

log = logging.getLogger(__name__)


def tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """Verification on unless switched off; a site CA file replaces the system store."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {' '.join(str(exc.message).split())}"


class EmailProfile(NotificationProfile):
    type_name = "email"
    Settings = EmailSettings
    contact_types = ("email",)
    description = "Email over SMTP (STARTTLS/TLS), with signed acknowledgement links and optional IMAP reply-acks"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        s = self.email
        folder = self.services.config.resolve(s.templates) if s.templates else None
        self.templates = environment(folder)
        subjects = subject_environment()
        self._subject = subjects.from_string(s.subject)
        self._consolidated_subject = subjects.from_string(s.consolidated_subject)
        self._tls: ssl.SSLContext | None = None
        # a test (or an integrator) may route sends elsewhere; None: SMTP as configured
        self.transport: Callable[..., Any] | None = None

    @property
    def email(self) -> EmailSettings:
        return self.settings  # type: ignore[return-value]

    async def start(self) -> None:
        s = self.email
        if s.security != "none":
            ca = str(self.services.config.resolve(s.ca_file)) if s.ca_file else None
            self._tls = tls_context(s.verify, ca)

    # --- composing ------------------------------------------------------------------------

    def base_url(self) -> str:
        g = self.services.config.gateway
        if g.external_url:
            return g.external_url.rstrip("/")
        return f"http://{g.http.host}:{g.http.port}"

    def ack_url(self, username: str, event_ids: list[str]) -> str:
        return f"{self.base_url()}/ack/{make_token(self.services.secret, username, event_ids, self.name)}"

    def context(self, n: Notification) -> dict[str, Any]:
        """Everything the body templates see."""
        s = self.email
        open_ = [e for e in n.events if not e.acknowledged]
        links = s.ack_links and bool(self.services.secret)
        events = [event_values(e, self.ack_url(n.user.username, [e.id]) if links and not e.acknowledged else None)
                  for e in n.events]
        values: dict[str, Any] = {
            "message": n.message, "events": events, "count": len(n.events),
            "user": {"username": n.user.username, "name": n.user.display_name},
            "gatewayName": self.services.config.gateway.name,
            "replyAck": s.imap is not None, "replyPin": s.imap is not None and s.imap.require_pin,
            "allAckUrl": self.ack_url(n.user.username, [e.id for e in open_]) if links and len(open_) > 1 else None,
        }
        if n.events:
            summary = summary_values(n.events, 3)
            values["highestPriority"] = summary["highestPriority"].label
        return values

    def compose(self, n: Notification) -> Any:
        """The EmailMessage for one notification (one alarm, or a consolidated batch of N)."""
        values = self.context(n)
        many = len(n.events) > 1
        base = "alarms" if many else "alarm"
        text = self.templates.get_template(f"{base}.txt").render(values)
        html = self.templates.get_template(f"{base}.html").render(values)
        if many:
            subject_values = {**summary_values(n.events, 3), "count": len(n.events),
                              "highestPriority": values["highestPriority"], "message": n.message}
            subject = self._consolidated_subject.render(subject_values)
        elif n.events:
            subject = self._subject.render({**event_values(n.events[0]), "message": n.message})
        else:
            subject = n.message
        return build_message(self.email, to=n.contact or "", to_name=n.user.display_name, subject=subject,
                             text=text, html=html, notification_id=n.id, event_ids=n.event_ids)

    # --- sending --------------------------------------------------------------------------

    async def send(self, notification: Notification) -> DeliveryResult:
        s = self.email
        to = notification.contact
        if not to:
            return DeliveryResult.failed(f"{notification.user.username} has no email address", retryable=False)
        message = self.compose(notification)
        if self.transport is not None:
            return await self.transport(message, s.sender, [to])
        return await self.deliver(message, s.sender, [to])

    async def deliver(self, message: Any, sender: str, recipients: list[str]) -> DeliveryResult:
        s = self.email
        where = f"SMTP server {s.server}"
        client = aiosmtplib.SMTP(
            hostname=s.host, port=s.effective_port, timeout=s.timeout,
            use_tls=s.security == "tls",
            # True: STARTTLS or nothing; a server that does not offer it is refused, never plain text
            start_tls=s.security == "starttls",
            tls_context=self._tls, validate_certs=s.verify)
        try:
            await client.connect()
            if s.username is not None:
                await client.login(s.username, s.password or "")
            # explicit envelope: recipients never come from headers, whatever an alarm's text holds
            await client.send_message(message, sender=sender, recipients=recipients)
        except aiosmtplib.SMTPAuthenticationError as exc:
            return DeliveryResult.failed(f"{where} refused login as {s.username!r}: {_reply(exc)}")
        except aiosmtplib.SMTPRecipientsRefused as exc:
            worst = max(exc.recipients, key=lambda r: r.code)
            return self._reply_failure(where, f"refused recipient {worst.recipient}", worst)
        except aiosmtplib.SMTPNotSupported as exc:
            return DeliveryResult.failed(f"{where}: {exc} (security: {s.security})", retryable=False)
        except aiosmtplib.SMTPResponseException as exc:
            return self._reply_failure(where, "refused the message", exc)
        except (aiosmtplib.SMTPTimeoutError, TimeoutError):
            return DeliveryResult.failed(f"{where} did not answer within {s.timeout:g}s")
        except ssl.SSLCertVerificationError as exc:
            return DeliveryResult.failed(f"{where}: certificate not trusted: {exc.verify_message}", retryable=False)
        except aiosmtplib.SMTPConnectError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ssl.SSLCertVerificationError):
                return DeliveryResult.failed(f"{where}: certificate not trusted: {cause.verify_message}",
                                             retryable=False)
            return DeliveryResult.failed(f"cannot reach {where}: {exc}")
        except (aiosmtplib.SMTPException, OSError) as exc:
            return DeliveryResult.failed(f"{where}: {type(exc).__name__}: {exc}")
        finally:
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError):
                    client.close()
        return DeliveryResult.sent(str(message["Message-ID"]))

    @staticmethod
    def _reply_failure(where: str, what: str, exc: aiosmtplib.SMTPResponseException) -> DeliveryResult:
        # 4xx: the server says try later (greylisting, mailbox busy); 5xx: it never will
        return DeliveryResult.failed(f"{where} {what}: {_reply(exc)}", retryable=400 <= exc.code < 500)
