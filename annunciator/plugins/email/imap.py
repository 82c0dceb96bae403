"""Reply-acknowledgement: poll an IMAP mailbox for answers to alarm emails.

A reply acknowledges when its first line starts with ``ACK`` (then the PIN when the profile requires
it, then optional notes), it comes from an email address of a known person, and its
``References``/``In-Reply-To`` name alarms (the ``<alarm.ID@domain>`` thread ids every alarm email
carries) that were emailed to that person through this profile. The From address alone is easy to
forge, which is why the PIN is required by default; alarms never emailed to the sender cannot be
acknowledged this way whatever the headers say.

The client is the standard library's ``imaplib`` on a worker thread: polling every half minute
needs no async client, and the loop never waits on the mailbox. Messages are fetched with
``BODY.PEEK[]`` and flagged ``\\Seen`` only once handled, so a crash in between re-reads them (an
acknowledgement is idempotent: an alarm already acknowledged is reported, not acknowledged twice).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import imaplib
import logging
import re
from email.message import EmailMessage
from email.utils import parseaddr
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from annunciator.core import schema, units
from annunciator.core.users import PinResult, User, mask_pins

from .profile import tls_context
from .settings import ImapSettings

if TYPE_CHECKING:
    from annunciator.core.services import Services

    from .profile import EmailProfile

log = logging.getLogger(__name__)

_THREAD = re.compile(r"<alarm\.([0-9a-f]{32})@[^>\s]+>")
_ACK = re.compile(r"^\s*ACK\b[\s:,.-]*(?P<pin>\d{4,12}\b)?\s*(?P<note>.*)$", re.IGNORECASE)
_TAGS = re.compile(r"<[^>]+>")


class _Pollers:
    """This plugin's IMAP pollers for one gateway, by profile name."""

    def __init__(self, by_profile: dict[str, ImapPoller]):
        self.by_profile = by_profile


def first_line(msg: EmailMessage) -> str:
    """The reply's first line of its own text: quoted lines ("> ...") and blank lines skipped."""
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    text = part.get_content()
    if part.get_content_type() == "text/html":
        text = _TAGS.sub("\n", text)
    for line in str(text).splitlines():
        line = line.strip()
        if line and not line.startswith(">"):
            return line
    return ""


def thread_events(msg: EmailMessage) -> list[str]:
    ids: list[str] = []
    for header in ("In-Reply-To", "References"):
        for event_id in _THREAD.findall(str(msg.get(header, ""))):
            if event_id not in ids:
                ids.append(event_id)
    return ids


class ImapPoller:
    """One mailbox for one email profile, polled every ``interval``."""

    def __init__(self, services: Services, profile: EmailProfile, settings: ImapSettings):
        self.services, self.profile, self.settings = services, profile, settings
        self._task: asyncio.Task[None] | None = None
        self._last_error: str | None = None
        self.polls = 0  # completed polls, for tests and status

    # --- mailbox (worker thread) ------------------------------------------------------------

    def _connect(self) -> imaplib.IMAP4:
        s = self.settings
        ca = str(self.services.config.resolve(s.ca_file)) if s.ca_file else None
        if s.security == "tls":
            conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(s.host, s.effective_port, ssl_context=tls_context(s.verify, ca),
                                                    timeout=s.timeout)
        else:
            conn = imaplib.IMAP4(s.host, s.effective_port, timeout=s.timeout)
            if s.security == "starttls":
                conn.starttls(ssl_context=tls_context(s.verify, ca))
        if conn.state != "AUTH":  # a PREAUTH greeting needs no login
            conn.login(s.username, s.password)
        return conn

    def _fetch(self) -> list[tuple[bytes, bytes]]:
        conn = self._connect()
        try:
            typ, _ = conn.select(_quote(self.settings.mailbox))
            if typ != "OK":
                raise imaplib.IMAP4.error(f"cannot open mailbox {self.settings.mailbox!r}")
            _, data = conn.uid("SEARCH", "UNSEEN")
            out = []
            for uid in (data[0] or b"").split():
                _, parts = conn.uid("FETCH", uid.decode(), "(BODY.PEEK[])")
                raw = next((p[1] for p in parts if isinstance(p, tuple)), None)
                if raw is not None:
                    out.append((uid, raw))
            return out
        finally:
            _logout(conn)

    def _mark_seen(self, uids: list[bytes]) -> None:
        conn = self._connect()
        try:
            conn.select(_quote(self.settings.mailbox))
            conn.uid("STORE", b",".join(uids).decode(), "+FLAGS", "(\\Seen)")
        finally:
            _logout(conn)

    # --- loop -------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"imap-{self.profile.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # one surprise must not end reply-acks for good
                log.exception("email profile %s: IMAP poll failed", self.profile.name)
            await asyncio.sleep(self.settings.interval)

    async def poll(self) -> int:
        """Fetch and handle unseen messages once; returns how many were handled."""
        loop = asyncio.get_running_loop()
        s = self.settings
        try:
            messages = await loop.run_in_executor(None, self._fetch)
            handled = []
            for uid, raw in messages:
                try:
                    with units.fresh(f"IMAP message {uid!r}"):
                        await self.handle(raw)
                except Exception:
                    # a message that cannot be read (an unknown charset, say) is logged and marked
                    # seen, so it does not fail again on every poll and block the ones after it
                    log.exception("email profile %s: cannot handle IMAP message %s", self.profile.name, uid)
                handled.append(uid)
            if handled:
                await loop.run_in_executor(None, self._mark_seen, handled)
        except (OSError, imaplib.IMAP4.error) as exc:
            error = f"IMAP {s.host}:{s.effective_port} as {s.username!r}: {exc}"
            if error != self._last_error:  # one line per distinct problem, not one per poll
                log.warning("email profile %s: %s; retrying every %gs", self.profile.name, error, s.interval)
            self._last_error = error
            return 0
        finally:
            self.polls += 1
        if self._last_error is not None:
            log.info("email profile %s: IMAP polling works again", self.profile.name)
            self._last_error = None
        return len(messages)

    # --- one reply --------------------------------------------------------------------------

    async def handle(self, raw: bytes) -> str:
        """Act on one reply; returns what happened (also written to the audit log)."""
        gw = self.services
        msg: EmailMessage = email.message_from_bytes(raw, policy=email.policy.default)
        sender = parseaddr(str(msg.get("From", "")))[1].lower()
        auto = str(msg.get("Auto-Submitted", "no")).strip().lower()
        line = first_line(msg)
        user = self._user_by_address(sender)
        match = _ACK.match(line)
        pin = match.group("pin") if match else None
        shown = mask_pins(line)  # a PIN is never stored, whatever shape the reply has
        base: dict[str, Any] = {"user": user.username if user else None, "channel": self.profile.name,
                                "contact": sender}
        if auto != "no":
            return self._outcome("EmailReplyIgnored", base, f"automatic reply ({auto}) ignored")
        if user is None:
            return self._outcome("EmailUnknownSender", base, f"reply from an unknown address: {shown[:200]}")
        gw.audit.record("EmailReply", text=shown[:1000], **base)
        if match is None:
            return self._outcome("EmailReplyIgnored", base, "does not start with ACK")
        wanted = thread_events(msg)
        mine = await self._emailed_to(user.username, wanted)
        if not mine:
            return self._outcome("EmailReplyIgnored", base, "names no alarm that was emailed to this person")
        if self.settings.require_pin:
            result = gw.replies.check_pin(user, pin or "", channel=base["channel"], contact=sender,
                                          event_ids=mine, via="email").result
            if result != PinResult.OK:
                why = {PinResult.LOCKED: "locked out after wrong PINs", PinResult.NO_PIN: "no PIN is set",
                       PinResult.EXPIRED: "the PIN has expired",
                       PinResult.WRONG: "wrong or missing PIN"}.get(result, result)
                log.info("email reply from %s not acted on: %s", sender, why)
                return f"reply not acted on: {why}"
        note = match.group("note").strip()
        return await self._ack(user, mine, note, base)

    async def _ack(self, user: User, event_ids: list[str], note: str, base: dict[str, Any]) -> str:
        gw = self.services
        events = [e for i in event_ids if (e := gw.events.get(i)) is not None]
        todo = [e.id for e in events if not e.acknowledged]  # before: what this reply was to act on
        outcome = await gw.replies.acknowledge(user, events, note, via="email",
                                               default_note="acknowledged by email reply")
        if outcome.needs_note:
            return self._outcome("EmailReplyIgnored", base, "notes are required: reply ACK PIN your notes",
                                 [e.id for e in outcome.needs_note])
        if outcome.error:
            return self._outcome("EmailReplyIgnored", base, f"not acknowledged: {outcome.error}", todo)
        if not outcome.acknowledged:
            return self._outcome("EmailReplyIgnored", base, "every alarm of the thread is already acknowledged",
                                 event_ids)
        await gw.store.commit()
        return f"acknowledged {len(outcome.acknowledged)}"

    def _outcome(self, code: str, base: dict[str, Any], text: str, event_ids: list[str] | None = None) -> str:
        self.services.audit.record(code, text=text, event_ids=event_ids, **base)
        log.info("email reply from %s: %s", base.get("contact"), text)
        return text

    def _user_by_address(self, address: str) -> User | None:
        if not address:
            return None
        for user in self.services.users.values():
            if address in (a.lower() for a in user.contacts.get("email", [])):
                return user
        return None

    async def _emailed_to(self, username: str, event_ids: list[str]) -> list[str]:
        """Those of ``event_ids`` that this profile emailed to ``username`` (sent, not just tried)."""
        if not event_ids:
            return []
        n = schema.notifications

        def load(conn: sa.Connection) -> list[Any]:
            q = sa.select(n.c.event_ids).where(n.c.username == username, n.c.profile == self.profile.name,
                                               n.c.status.in_(("sent", "consolidated")))
            return [r.event_ids for r in conn.execute(q)]

        sent: set[str] = set()
        for ids in await self.services.store.read(load):
            sent.update(ids or [])
        return [i for i in event_ids if i in sent]


def _quote(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _logout(conn: imaplib.IMAP4) -> None:
    try:
        conn.logout()
    except (OSError, imaplib.IMAP4.error):
        pass


async def start_pollers(services: Services, profiles: list[EmailProfile]) -> None:
    pollers = {p.name: ImapPoller(services, p, p.email.imap) for p in profiles if p.email.imap is not None}
    services.state.put(_Pollers(pollers))
    for poller in pollers.values():
        poller.start()


async def stop_pollers(services: Services) -> None:
    state = services.state.pop(_Pollers)
    for poller in state.by_profile.values() if state is not None else []:
        await poller.stop()


__all__ = ["ImapPoller", "first_line", "thread_events"]
