"""An emulated handset: what a person on call sees, and what they send back.

Tests speak in phones rather than in API records because that is what the product promises:
"Maria's phone shows Tank 3 with an ack code, she replies 1234, she gets a confirmation".
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .records import Callback, Message

if TYPE_CHECKING:
    from .calls import Call
    from .emulator import TwilioEmulator

__all__ = ["InboundSms", "Phone"]

# How many messages an AssertionError lists: enough to see what did arrive, short enough to read.
_SHOW = 10


@dataclass(frozen=True, slots=True)
class InboundSms:
    """What happened when a phone sent an SMS: the message, the gateway's webhook answer, the replies."""

    message: Message
    webhook: Callback
    replies: list[Message] = field(default_factory=list)

    @property
    def sid(self) -> str:
        return self.message.sid


class Phone:
    """One emulated handset, obtained from ``tw.phone("+12223334444")``.

    ``expect_sms`` consumes messages in order: each call returns the oldest message not returned
    before that matches, so a test reads a conversation top to bottom. ``call_behavior`` says how
    the phone answers calls: ``"human"`` (default), ``"machine"``, ``"busy"``, ``"no-answer"``,
    ``"failed"``.
    """

    def __init__(self, emulator: TwilioEmulator, number: str) -> None:
        self.emulator = emulator
        self.number = number
        self.call_behavior = "human"
        self._seen: set[str] = set()
        self._seen_calls: set[str] = set()

    def __repr__(self) -> str:
        return f"<Phone {self.number} messages={len(self.messages)}>"

    # ------------------------------------------------------------------ sending
    def send(self, body: str, *, to: str | None = None, timeout: float = 20.0) -> InboundSms:
        """Send ``body`` to our number ``to`` (default: the account's first number), as Twilio delivers it.

        Blocks until the gateway answered the signed webhook and any TwiML ``<Message>`` replies are
        recorded. From async code use :meth:`send_async` so the caller's loop keeps running.
        """
        target = self._target(to)
        return self.emulator._run(self.emulator.inbound_sms(self.number, target, body), timeout)

    async def send_async(self, body: str, *, to: str | None = None, timeout: float = 20.0) -> InboundSms:
        """:meth:`send` for async callers (never blocks the caller's loop)."""
        target = self._target(to)
        fut = self.emulator._submit(self.emulator.inbound_sms(self.number, target, body))
        return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)

    def reply(self, body: str, *, timeout: float = 20.0) -> InboundSms:
        """Answer the number that messaged this phone last."""
        return self.send(body, to=self._last_sender(), timeout=timeout)

    async def reply_async(self, body: str, *, timeout: float = 20.0) -> InboundSms:
        return await self.send_async(body, to=self._last_sender(), timeout=timeout)

    def _target(self, to: str | None) -> str:
        if to is not None:
            return self.emulator._norm(to, "to")
        numbers = self.emulator.numbers
        if not numbers:
            raise RuntimeError("the emulated account owns no number to send to")
        return numbers[0]

    def _last_sender(self) -> str:
        received = self.messages
        if not received or received[-1].from_ is None:
            raise AssertionError(f"{self.number} has received no SMS, so there is nobody to reply to")
        return received[-1].from_

    # ------------------------------------------------------------------ receiving
    @property
    def messages(self) -> list[Message]:
        """SMS that reached this handset, oldest first (failed/undelivered ones never do)."""
        return [m for m in self.emulator.messages
                if m.to == self.number and m.direction != "inbound" and m.reaches_handset]

    @property
    def sent(self) -> list[Message]:
        """SMS this phone sent, oldest first."""
        return [m for m in self.emulator.messages if m.from_ == self.number and m.direction == "inbound"]

    def expect_sms(self, contains: str | re.Pattern[str] | None = None, *, from_: str | None = None,
                   timeout: float = 5.0) -> Message:
        """The oldest not-yet-expected SMS matching ``contains`` (text or regex) and ``from_``.

        Raises AssertionError listing every SMS that did arrive when none matches in ``timeout``.
        """
        deadline = time.monotonic() + timeout
        with self.emulator._cond:
            while True:
                for m in self.messages:
                    if m.sid not in self._seen and _matches(m, contains, from_):
                        self._seen.add(m.sid)
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(self._report(f"no SMS {_describe(contains, from_)} within {timeout:g}s"))
                self.emulator._cond.wait(remaining)

    async def expect_sms_async(self, contains: str | re.Pattern[str] | None = None, *, from_: str | None = None,
                               timeout: float = 5.0) -> Message:
        return await asyncio.to_thread(self.expect_sms, contains, from_=from_, timeout=timeout)

    def expect_no_sms(self, within: float = 0.5) -> None:
        """Fail if any SMS not returned by :meth:`expect_sms` is on this phone, or arrives ``within`` seconds."""
        deadline = time.monotonic() + within
        with self.emulator._cond:
            while True:
                unexpected = [m for m in self.messages if m.sid not in self._seen]
                if unexpected:
                    raise AssertionError(self._report(f"unexpected SMS: {unexpected[0].body!r}"))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self.emulator._cond.wait(remaining)

    def _report(self, headline: str) -> str:
        lines = [f"Phone {self.number}: {headline}"]
        received = self.messages
        if not received:
            lines.append("  (no SMS arrived at all)")
        for m in received[-_SHOW:]:
            mark = "  " if m.sid not in self._seen else "x "
            lines.append(f"  {mark}{m.sid} from {m.from_} [{m.status}]: {m.body!r}")
        if len(received) > _SHOW:
            lines.append(f"  ... and {len(received) - _SHOW} earlier")
        lines.append("  (x = already returned by expect_sms)")
        return "\n".join(lines)

    # ------------------------------------------------------------------ calls
    @property
    def calls(self) -> list[Call]:
        """Calls placed to this phone, oldest first."""
        return self.emulator.find_calls(to=self.number)

    def reject_calls(self) -> None:
        """Decline every call from now on (Twilio reports ``busy``); ``call_behavior = "human"`` undoes it."""
        self.call_behavior = "busy"

    def expect_call(self, *, contains: str | None = None, timeout: float = 5.0) -> Call:
        """The oldest call to this phone not returned before, once it waits for input or has ended
        (and, with ``contains``, once something said so far contains it)."""
        deadline = time.monotonic() + timeout
        with self.emulator._cond:
            while True:
                for call in self.calls:
                    if (call.sid not in self._seen_calls and call.settled
                            and (contains is None or any(contains in s for s in call.says))):
                        self._seen_calls.add(call.sid)
                        return call
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    placed = [f"{c.sid} {c.status}" for c in self.calls]
                    raise AssertionError(f"Phone {self.number}: no call within {timeout:g}s (calls: {placed})")
                self.emulator._cond.wait(remaining)


def _matches(m: Message, contains: str | re.Pattern[str] | None, from_: str | None) -> bool:
    if from_ is not None and m.from_ != from_:
        return False
    if contains is None:
        return True
    if isinstance(contains, re.Pattern):
        return contains.search(m.body) is not None
    return contains in m.body


def _describe(contains: str | re.Pattern[str] | None, from_: str | None) -> str:
    parts = []
    if contains is not None:
        parts.append(f"containing {contains.pattern if isinstance(contains, re.Pattern) else contains!r}")
    if from_ is not None:
        parts.append(f"from {from_}")
    return " ".join(parts) or "at all"
