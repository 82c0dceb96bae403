"""Emulated outbound calls: fetch TwiML, say, gather digits, redirect, hang up.

Why an interpreter driven by lxml rather than canned answers: the voice profile's whole flow is
TwiML served by the gateway, and only walking it verb by verb, as Twilio does, shows whether a
person pressing keys would actually reach "alarm acknowledged".
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from annunciator.plugins.twilio.sms import country_of

from .records import API_VERSION, now, rfc2822
from .twiml import TwimlError, localname, parse_twiml, text_of

if TYPE_CHECKING:
    from lxml import etree

    from .emulator import TwilioEmulator

__all__ = ["Call"]

# A call left waiting for input this long is hung up, so a forgotten call never outlives a test.
CALL_IDLE_TIMEOUT = 60.0
APPLICATION_ERROR = "We are sorry, an application error has occurred. Goodbye."
_Action = tuple[Any, ...]


class Call:
    """One outbound call, from ``calls.create`` to ``completed``.

    A test drives it like a person holding the phone: :meth:`press` sends digits to the current
    ``<Gather>``, :meth:`no_input` lets it time out, :meth:`hang_up` ends the call. ``says`` holds
    every ``<Say>`` text heard so far; ``events`` every verb, in order.
    """

    def __init__(self, emulator: TwilioEmulator, *, sid: str, to: str, from_: str, url: str | None,
                 twiml: str | None, method: str, fallback_url: str | None, fallback_method: str,
                 status_callback: str | None, status_callback_events: list[str], status_callback_method: str,
                 machine_detection: str | None, timeout: int) -> None:
        self.emulator = emulator
        self.sid = sid
        self.to = to
        self.from_ = from_
        self.url = url
        self.twiml = twiml
        self.method = method
        self.fallback_url = fallback_url
        self.fallback_method = fallback_method
        self.status_callback = status_callback
        self.status_callback_events = status_callback_events
        self.status_callback_method = status_callback_method
        self.machine_detection = machine_detection
        self.timeout = timeout
        self.status = "queued"
        self.answered_by: str | None = None
        self.date_created = now()
        self.date_updated = self.date_created
        self.start_time: datetime | None = None
        self.end_time: datetime | None = None
        self.duration: int | None = None
        self.extra_seconds = 0.0
        self.says: list[str] = []
        self.events: list[tuple[str, dict[str, str]]] = []
        self.errors: list[str] = []
        self.gathering = False
        self._answered_at: float | None = None
        self._generation = 0
        self._sequence = 0
        self._inputs: asyncio.Queue[_Action] = asyncio.Queue()

    def __repr__(self) -> str:
        return f"<Call {self.sid} {self.from_} -> {self.to} {self.status}>"

    # ------------------------------------------------------------------ what a test sees
    @property
    def ended(self) -> bool:
        return self.status in ("completed", "busy", "no-answer", "failed", "canceled")

    @property
    def settled(self) -> bool:
        """True while the call waits for input, and once it has ended."""
        return self.gathering or self.ended

    def to_json(self) -> dict[str, Any]:
        uri = f"/{API_VERSION}/Accounts/{self.emulator.account_sid}/Calls/{self.sid}"
        return {
            "sid": self.sid, "date_created": rfc2822(self.date_created), "date_updated": rfc2822(self.date_updated),
            "parent_call_sid": None, "account_sid": self.emulator.account_sid, "to": self.to,
            "to_formatted": self.to, "from": self.from_, "from_formatted": self.from_,
            "phone_number_sid": self.emulator._numbers.get(self.from_), "status": self.status,
            "start_time": rfc2822(self.start_time), "end_time": rfc2822(self.end_time),
            "duration": None if self.duration is None else str(self.duration), "price": None, "price_unit": "USD",
            "direction": "outbound-api", "answered_by": self.answered_by, "api_version": API_VERSION,
            "forwarded_from": None, "group_sid": None, "caller_name": None, "queue_time": "0", "trunk_sid": None,
            "uri": f"{uri}.json",
            "subresource_uris": {k: f"{uri}/{v}.json" for k, v in (
                ("notifications", "Notifications"), ("recordings", "Recordings"), ("payments", "Payments"),
                ("events", "Events"), ("siprec", "Siprec"), ("streams", "Streams"),
                ("user_defined_message_subscriptions", "UserDefinedMessageSubscriptions"),
                ("user_defined_messages", "UserDefinedMessages"))},
        }

    def wait(self, *, timeout: float = 5.0) -> Call:
        """Block until the call waits for input or has ended; return self."""
        self.emulator.wait_until(lambda: self.settled, timeout, f"call {self.sid} waiting for input or ended")
        return self

    def wait_ended(self, *, timeout: float = 5.0) -> Call:
        self.emulator.wait_until(lambda: self.ended, timeout, f"call {self.sid} ended")
        return self

    def expect_say(self, contains: str, *, timeout: float = 5.0) -> str:
        """The first ``<Say>`` text heard that contains ``contains``; AssertionError listing what was said."""
        try:
            said: str = self.emulator.wait_until(
                lambda: next((s for s in self.says if contains in s), ""), timeout, "say")
            return said
        except AssertionError:
            raise AssertionError(f"call {self.sid} never said {contains!r} within {timeout:g}s; "
                                 f"it said {self.says!r} (status {self.status})") from None

    # ------------------------------------------------------------------ driving it
    def press(self, digits: str, *, timeout: float = 5.0) -> Call:
        """Key ``digits`` into the current ``<Gather>`` (``"1234#"`` ends on the finish key); wait for what follows."""
        return self._drive(("digits", digits), timeout)

    def speak(self, words: str, *, timeout: float = 5.0) -> Call:
        """Say ``words`` to the current ``<Gather>`` (it must take ``input="speech"``); wait for what follows."""
        return self._drive(("speech", words), timeout)

    def no_input(self, *, timeout: float = 5.0) -> Call:
        """Let the current ``<Gather>`` time out without input."""
        return self._drive(("none",), timeout)

    def hang_up(self, *, timeout: float = 5.0) -> Call:
        """The callee hangs up."""
        self.command(("end", "completed"))
        return self.wait_ended(timeout=timeout)

    def elapse(self, seconds: float) -> None:
        """Add ``seconds`` to the call's billed duration (tests need minutes without waiting them)."""
        self.extra_seconds += seconds

    def _drive(self, action: _Action, timeout: float) -> Call:
        self.wait(timeout=timeout)
        if self.ended:
            raise AssertionError(f"call {self.sid} has ended ({self.status}); said {self.says!r}")
        generation = self._generation
        self.command(action)
        self.emulator.wait_until(lambda: self._generation > generation, timeout,
                                 f"call {self.sid} to wait for input again or end")
        return self

    def command(self, action: _Action) -> None:
        """Queue an action for the call (thread-safe): digits, no input, a redirect, the end."""
        loop = self.emulator._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("TwilioEmulator not running")
        loop.call_soon_threadsafe(self._inputs.put_nowait, action)

    # ------------------------------------------------------------------ the call itself (emulator loop)
    def _settle(self, *, gathering: bool) -> None:
        with self.emulator._cond:
            self.gathering = gathering
            self._generation += 1
            self.emulator._cond.notify_all()

    def _set_status(self, status: str) -> None:
        with self.emulator._cond:
            self.status = status
            self.date_updated = now()
            self.emulator._cond.notify_all()

    def _params(self) -> dict[str, str]:
        params = {"AccountSid": self.emulator.account_sid, "ApiVersion": API_VERSION, "CallSid": self.sid,
                  "CallStatus": self.status, "Called": self.to, "CalledCountry": country_of(self.to),
                  "Caller": self.from_, "CallerCountry": country_of(self.from_), "Direction": "outbound-api",
                  "From": self.from_, "FromCountry": country_of(self.from_), "To": self.to,
                  "ToCountry": country_of(self.to)}
        if self.answered_by:
            params["AnsweredBy"] = self.answered_by
        return params

    async def _status_event(self, event: str) -> None:
        if not self.status_callback or event not in self.status_callback_events:
            return
        params = self._params()
        if event in ("initiated", "ringing"):
            params["CallStatus"] = event
        params.update({"CallbackSource": "call-progress-events", "SequenceNumber": str(self._sequence),
                       "Timestamp": rfc2822(now()) or ""})
        self._sequence += 1
        if event == "completed":
            params["CallDuration"] = str(self.duration or 0)
            params["Duration"] = str(math.ceil((self.duration or 0) / 60))
        await self.emulator.post_signed("call-status", self.status_callback, params, self.status_callback_method)

    async def run(self) -> None:
        """The whole call: ring, answer (or not), walk the TwiML, complete. Runs on the emulator loop."""
        try:
            await self._status_event("initiated")
            self._set_status("ringing")
            await self._status_event("ringing")
            behavior = self.emulator.phone(self.to).call_behavior
            if behavior in ("busy", "no-answer", "failed"):
                await self._finish(behavior)
                return
            if self.machine_detection:
                machine = behavior == "machine"
                self.answered_by = ("machine_end_beep" if self.machine_detection == "DetectMessageEnd"
                                    else "machine_start") if machine else "human"
            self.start_time = now()
            self._answered_at = time.monotonic()
            self._set_status("in-progress")
            await self._status_event("answered")
            action: _Action = ("twiml", self.twiml) if self.twiml else ("fetch", self.url, self.method, {})
            reason = "completed"
            while True:
                if action[0] == "end":
                    reason = action[1] if len(action) > 1 else "completed"
                    break
                if action[0] == "twiml":
                    doc, doc_url = self._parse_inline(action[1]), self.url or ""
                else:
                    doc, doc_url = await self._fetch(action[1], action[2], action[3]), action[1]
                if doc is None:
                    self._say(APPLICATION_ERROR, {})
                    break
                action = await self._execute(doc, doc_url)
            await self._finish("canceled" if reason == "canceled" and self.status != "in-progress" else "completed")
        except asyncio.CancelledError:
            if not self.ended:
                self._set_status("completed")
                self._settle(gathering=False)
            raise

    async def _finish(self, status: str) -> None:
        self.end_time = now()
        if self._answered_at is not None:
            self.duration = math.ceil(time.monotonic() - self._answered_at + self.extra_seconds)
        else:
            self.duration = 0
        self._set_status(status)
        self._settle(gathering=False)
        await self._status_event("completed")

    def _parse_inline(self, twiml: str) -> etree._Element | None:
        try:
            return parse_twiml(twiml)
        except TwimlError as exc:
            self.errors.append(f"12100 Twiml parameter: {exc}")
            return None

    async def _fetch(self, url: str, method: str, extra: dict[str, str]) -> etree._Element | None:
        """GET/POST the TwiML at ``url``; on failure try FallbackUrl with ErrorCode/ErrorUrl, as Twilio does."""
        cb = await self.emulator.post_signed("voice", url, {**self._params(), **extra}, method)
        doc, code = self._document(cb.status, cb.body, cb.error)
        if doc is not None:
            return doc
        self.errors.append(f"{code} {url}: {cb.error or cb.status}")
        if not self.fallback_url:
            return None
        params = {**self._params(), **extra, "ErrorCode": str(code), "ErrorUrl": url}
        fb = await self.emulator.post_signed("voice-fallback", self.fallback_url, params, self.fallback_method)
        doc, code = self._document(fb.status, fb.body, fb.error)
        if doc is None:
            self.errors.append(f"{code} {self.fallback_url}: {fb.error or fb.status}")
        return doc

    @staticmethod
    def _document(status: int | None, body: str, error: str | None) -> tuple[etree._Element | None, int]:
        if error or status is None or not 200 <= status < 300:
            return None, 11200  # HTTP retrieval failure
        try:
            return parse_twiml(body), 0
        except TwimlError:
            return None, 12100  # document parse failure

    def _say(self, text: str, attrs: dict[str, str]) -> None:
        with self.emulator._cond:
            self.says.append(text)
            self.events.append(("Say", {**attrs, "text": text}))
            self.emulator._cond.notify_all()

    def _pending_interrupt(self) -> _Action | None:
        """An API update or hang-up that arrived while TwiML was being played (digits are ignored then)."""
        while not self._inputs.empty():
            action = self._inputs.get_nowait()
            if action[0] in ("end", "fetch", "twiml"):
                return action
        return None

    async def _execute(self, root: etree._Element, doc_url: str) -> _Action:
        for verb in root:
            interrupt = self._pending_interrupt()
            if interrupt is not None:
                return interrupt
            name = localname(verb)
            attrs = {k: v for k, v in verb.attrib.items() if isinstance(k, str)}
            if name in ("Say", "Play", "Pause"):
                self._play(verb)
            elif name == "Gather":
                for child in verb:
                    self._play(child)
                action = await self._gather(verb, doc_url)
                if action is not None:
                    return action
            elif name == "Redirect":
                self.events.append(("Redirect", attrs))
                return ("fetch", urljoin(doc_url, text_of(verb)), attrs.get("method", "POST"), {})
            elif name in ("Hangup", "Reject"):
                self.events.append((name, attrs))
                return ("end", "completed")
            elif name:
                self.events.append((name, attrs))  # not emulated (Dial, Record, ...): noted and skipped
        return ("end", "completed")

    def _play(self, el: etree._Element) -> None:
        name = localname(el)
        attrs = {k: v for k, v in el.attrib.items() if isinstance(k, str)}
        if name == "Say":
            self._say(text_of(el), attrs)
        elif name:
            self.events.append((name, {**attrs, "text": text_of(el)}))

    async def _gather(self, verb: etree._Element, doc_url: str) -> _Action | None:
        """Wait for the callee; the action to take next, or None to go on after the Gather."""
        action_url = urljoin(doc_url, verb.get("action") or doc_url)
        method = verb.get("method", "POST")
        finish = verb.get("finishOnKey", "#")
        num_digits = int(verb.get("numDigits", "0") or 0)
        self._settle(gathering=True)
        try:
            while True:
                try:
                    cmd = await asyncio.wait_for(self._inputs.get(), CALL_IDLE_TIMEOUT)
                except TimeoutError:
                    self.errors.append("call idle: nobody pressed anything")
                    return ("end", "completed")
                if cmd[0] == "digits":
                    digits, finished = _collect(cmd[1], finish, num_digits)
                    extra = {"Digits": digits, "msg": "Gather End"}
                    if finished:
                        extra["FinishedOnKey"] = finished
                    return ("fetch", action_url, method, extra)
                if cmd[0] == "speech":
                    if "speech" not in (verb.get("input") or "dtmf").split():
                        return None  # a keypad-only Gather hears nothing: it times out, as on a real call
                    return ("fetch", action_url, method, {"SpeechResult": cmd[1], "Confidence": "0.92",
                                                          "msg": "Gather End"})
                if cmd[0] == "none":
                    if verb.get("actionOnEmptyResult") == "true":
                        return ("fetch", action_url, method, {"Digits": "", "msg": "Gather End"})
                    return None
                return cmd
        finally:
            with self.emulator._cond:
                self.gathering = False


def _collect(keys: str, finish: str, num_digits: int) -> tuple[str, str]:
    """What Twilio reports for ``keys``: digits before the finish key, at most ``num_digits`` of them."""
    digits = ""
    for key in keys:
        if finish and key in finish:
            return digits, key
        digits += key
        if num_digits and len(digits) >= num_digits:
            break
    return digits, ""

