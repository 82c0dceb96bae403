"""The call flow: TwiML answers at ``/twilio/voice/<action>/<call id>``.

``start`` greets and asks for the PIN, ``pin`` checks it, ``alarm`` reads alarm N of M with its
menu, ``ack`` takes the menu choice (1 acknowledge, 2 next, 3 repeat, 9 acknowledge all, or the
spoken words), ``wait`` continues an answer that was slow, ``fallback`` is the call's FallbackUrl,
``status`` takes Twilio's status callbacks. Inbound calls to a gateway number come to
``/twilio/voice/incoming``.

Every request must carry a valid ``X-Twilio-Signature`` (403 otherwise, nothing changed). Every
answer is ``text/xml`` TwiML or an empty 204. Each served document numbers the next request
(``?s=N``), so a request Twilio repeats is answered with the same TwiML and acts only once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from twilio.twiml.voice_response import VoiceResponse

from annunciator.core.alarms import AlarmEvent, new_id
from annunciator.core.users import PinResult, User
from annunciator.plugins.twilio.pin_sessions import pin_sessions
from annunciator.plugins.twilio.service import twilio_service
from annunciator.plugins.twilio.webhooks import verified_form

from .scripts import CallScript
from .state import FINAL, CallSession, voice_state
from .twiml import clean, to_xml

if TYPE_CHECKING:
    from annunciator.core.services import Services

    from .profile import TwilioVoiceProfile, VoiceSettings

log = logging.getLogger(__name__)
TEXT_XML = "text/xml"
INCOMING_ALARMS = 20  # an inbound caller hears at most this many unacknowledged alarms

PROMPTS: dict[str, str] = {
    "greeting": "This is {gateway} with {count} {alarms} for {name}.",
    "greeting_incoming": "This is {gateway}. Hello {name}.",
    "unknown_caller": "This number is not registered with the alarm system. Goodbye.",
    "enter_pin": "Please enter your PIN, then press pound.",
    "wrong_pin": "That PIN is not correct.",
    "locked": "Too many wrong PINs. You are locked out until {until}. Goodbye.",
    "no_pin": "No PIN is set for you. Please ask an administrator. Goodbye.",
    "pin_expired": "Your PIN has expired. Please ask {ask} for a new one. Goodbye.",
    "pin_ok": "Thank you.",
    "alarm": "Alarm {n} of {count}. {priority} priority. {displayPath}. {message}. At {time}.",
    "menu": "Press 1 to acknowledge, 2 for the next alarm, 3 to repeat, 9 to acknowledge all.",
    "menu_speech": "Or say acknowledge.",
    "acknowledged": "Alarm acknowledged.",
    "acknowledged_all": "All alarms acknowledged.",
    "already": "This alarm was already acknowledged by {user}.",
    "needs_note": "This alarm needs a note. Please acknowledge it in the app or by text message.",
    "invalid": "That is not a valid choice.",
    "no_input": "Sorry, I did not hear anything.",
    "no_alarms": "There are no unacknowledged alarms.",
    "no_more": "There are no more unacknowledged alarms.",
    "goodbye": "Goodbye.",
    "one_moment": "One moment please.",
    "machine": "This is {gateway} with {count} {alarms} for {name}. {message}. Please call back to acknowledge.",
    "error": "Sorry, the alarm system cannot continue this call. Goodbye.",
    "unknown_call": "This call is no longer active. Goodbye.",
}
# spoken menu answers (speech: true); checked longest first, so "acknowledge all" is not "acknowledge"
SPEECH = [("acknowledge all", "9"), ("all", "9"), ("acknowledge", "1"), ("acknowledged", "1"), ("ack", "1"),
          ("yes", "1"), ("next", "2"), ("repeat", "3"), ("again", "3")]


class Speaker:
    """Prompts, voice and language for one person: the profile's, overridden by their language's."""

    def __init__(self, settings: VoiceSettings, user: User | None, gateway_name: str):
        lang = settings.languages.get(user.language) if user is not None else None
        self.language = (lang.language if lang and lang.language else
                         user.language if lang and user is not None else settings.language)
        self.voice = lang.voice if lang and lang.voice else settings.voice
        self.prompts = {**PROMPTS, **settings.prompts, **(lang.prompts if lang else {})}
        self.services_name = gateway_name

    def text(self, key: str, **values: Any) -> str:
        template = self.prompts.get(key, PROMPTS.get(key, key))
        values.setdefault("gateway", self.services_name)
        try:
            return template.format(**values)
        except (KeyError, IndexError, ValueError):
            return template  # an integrator's prompt with a typo is read as written, not a 500

    def say(self, target: Any, key: str, **values: Any) -> None:
        """``<Say>`` a prompt; values are cleaned, and VoiceResponse escapes the rest."""
        self.say_text(target, self.text(key, **{k: clean(v) for k, v in values.items()}))

    def say_text(self, target: Any, text: str) -> None:
        attrs = {"language": self.language}
        if self.voice:
            attrs["voice"] = self.voice
        target.say(clean(text), **attrs)


def spoken_path(path: str) -> str:
    """``Plant/Pump 1`` reads better as ``Plant, Pump 1``."""
    return ", ".join(p for p in path.replace("\\", "/").split("/") if p.strip()) or path


class VoiceFlow:
    def __init__(self, services: Services):
        self.services = services
        self._scripts: dict[str, CallScript] = {}
        self._background: set[asyncio.Task[None]] = set()  # reports that outlive the request

    def routes(self) -> list[Route]:
        return [Route("/twilio/voice/incoming", self.incoming, methods=["POST"]),
                Route("/twilio/voice/status", self.number_status, methods=["POST"]),
                Route("/twilio/voice/{action}/{call_id}", self.handle, methods=["POST"])]

    # --- plumbing -------------------------------------------------------------------------

    async def _verified_form(self, request: Request) -> dict[str, str] | Response:
        return await verified_form(self.services, request)

    def _profile(self, name: str) -> TwilioVoiceProfile | None:
        from .profile import TwilioVoiceProfile

        p = self.services.profiles.get(name)
        return p if isinstance(p, TwilioVoiceProfile) else None

    def _first_profile(self) -> TwilioVoiceProfile | None:
        from .profile import TwilioVoiceProfile

        return next((p for p in self.services.profiles.values() if isinstance(p, TwilioVoiceProfile)), None)

    def _url(self, action: str, session: CallSession, **query: Any) -> str:
        """An absolute URL of the flow: Twilio signs what it was given, so it must be the public one."""
        q = "&".join(f"{k}={v}" for k, v in {"s": session.next_step(), **query}.items())
        return twilio_service(self.services).webhook_url(f"/twilio/voice/{action}/{session.id}?{q}")

    @staticmethod
    def _xml(text: str) -> Response:
        return Response(text, media_type=TEXT_XML)

    def _goodbye(self, speaker: Speaker | None, key: str) -> str:
        r = VoiceResponse()
        if speaker is None:
            r.say(PROMPTS[key])
        else:
            speaker.say(r, key)
        r.hangup()
        return to_xml(r)

    # --- the routes -----------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        params = await self._verified_form(request)
        if isinstance(params, Response):
            return params
        action, call_id = request.path_params["action"], request.path_params["call_id"]
        state = voice_state(self.services)
        session = state.sessions.get(call_id)
        if action == "status":
            if session is not None:
                await self._status(session, params)
            return Response(status_code=204)
        if session is None:
            # e.g. a call that outlived a restart: a polite end, never a 500
            return self._xml(self._goodbye(None, "unknown_call" if action != "fallback" else "error"))
        profile = self._profile(session.profile) or self._first_profile()
        if profile is None:
            return self._xml(self._goodbye(None, "error"))
        speaker = Speaker(profile.voice, self.services.users.get(session.username or ""),
                          self.services.config.gateway.name)
        if action == "fallback":
            log.warning("call %s (%s) reached its FallbackUrl: Twilio error %s at %s", session.id, session.call_sid,
                        params.get("ErrorCode"), params.get("ErrorUrl"))
            return self._xml(self._goodbye(speaker, "error"))
        key = "|".join((action, request.query_params.get("s", ""), params.get("Digits", ""),
                        params.get("SpeechResult", "")))
        if key in session.answers:
            return self._xml(session.answers[key])  # Twilio repeated a request: same answer, no second act
        if action == "wait" and session.pending is not None:
            task = session.pending
        else:
            task = asyncio.ensure_future(self._answer(profile, speaker, session, action, params))
        done, _ = await asyncio.wait({task}, timeout=profile.voice.answer_within)
        if not done:
            # well inside Twilio's 15 s: keep the caller company and come back for the answer
            session.pending = task
            r = VoiceResponse()
            speaker.say(r, "one_moment")
            r.pause(length=1)
            r.redirect(self._url("wait", session), method="POST")
            xml = to_xml(r)
        else:
            session.pending = None
            try:
                xml = task.result()
            except Exception:
                log.exception("voice flow %s failed for call %s", action, session.id)
                xml = self._goodbye(speaker, "error")
        session.answers[key] = xml
        return self._xml(xml)

    async def number_status(self, request: Request) -> Response:
        """Status callbacks configured on a number (inbound calls): the call is found by its CallSid."""
        params = await self._verified_form(request)
        if isinstance(params, Response):
            return params
        session = voice_state(self.services).by_sid.get(params.get("CallSid", ""))
        if session is not None:
            await self._status(session, params)
        return Response(status_code=204)

    async def incoming(self, request: Request) -> Response:
        """A person calls a gateway number: identified by caller ID, they hear their open alarms after the PIN."""
        params = await self._verified_form(request)
        if isinstance(params, Response):
            return params
        state = voice_state(self.services)
        sid, their, our = params.get("CallSid", ""), params.get("From", ""), params.get("To", "")
        existing = state.by_sid.get(sid)
        if existing is not None and existing.answers:
            return self._xml(next(iter(existing.answers.values())))  # a repeated request
        profile = self._first_profile()
        user = next((u for u in self.services.users.values() if their in u.contacts.get("phone", [])
                     or their in u.contacts.get("sms", [])), None)
        if profile is None or user is None:
            self.services.audit.record("VoiceUnknownCaller", contact=their, channel="voice", details={"callSid": sid})
            return self._xml(self._goodbye(None, "unknown_caller"))
        events = self.services.alarms.query_status(state="unacked")[:INCOMING_ALARMS]
        session = CallSession(id=new_id(), profile=profile.name, username=user.username,
                              event_ids=[e.id for e in events], their_number=their, our_number=our,
                              direction="in", call_sid=sid, message="(incoming call)", status="in-progress")
        state.sessions[session.id] = session
        state.by_sid[sid] = session
        service = twilio_service(self.services)
        account = service.owner_of(our)
        state.record(session, account=account.name if account else None, pool=None, status="in-progress")
        speaker = Speaker(profile.voice, user, self.services.config.gateway.name)
        xml = await self._apply_script(profile, session, "incoming", params,
                                       await self._start(profile, speaker, session, params, incoming=True))
        session.answers["incoming"] = xml
        await self.services.store.commit(timeout=self.services.store.read_timeout)
        return self._xml(xml)

    # --- answers --------------------------------------------------------------------------

    async def _answer(self, profile: TwilioVoiceProfile, speaker: Speaker, session: CallSession, action: str,
                      params: dict[str, str]) -> str:
        steps: dict[str, Callable[..., Awaitable[str]]] = {
            "start": self._start, "pin": self._pin, "alarm": self._alarm_again, "ack": self._ack, "wait": self._gone}
        step = steps.get(action)
        if step is None:
            return self._goodbye(speaker, "error")
        if action in ("alarm", "ack") and not session.authenticated:
            return self._goodbye(speaker, "error")  # no way round the PIN, whatever URL is called
        xml = await step(profile, speaker, session, params)
        xml = await self._apply_script(profile, session, action, params, xml)
        await self.services.store.commit()  # what the caller is told (acknowledged) is stored first
        return xml

    async def _gone(self, profile: TwilioVoiceProfile, speaker: Speaker, session: CallSession,
                    params: dict[str, str]) -> str:
        return self._goodbye(speaker, "error")  # a "wait" whose work is lost (restart): end politely

    def _events(self, session: CallSession) -> list[AlarmEvent]:
        return [e for i in session.event_ids if (e := self.services.events.get(i)) is not None]

    def _open(self, session: CallSession) -> list[AlarmEvent]:
        return [e for e in self._events(session) if not e.acknowledged]

    async def _start(self, profile: TwilioVoiceProfile, speaker: Speaker, session: CallSession,
                     params: dict[str, str], incoming: bool = False) -> str:
        s = profile.voice
        user = self.services.users.get(session.username or "")
        r = VoiceResponse()
        open_ = self._open(session)
        name = user.display_name if user else (session.username or "")
        count = len(open_)
        alarms = "alarm" if count == 1 else "alarms"
        answered_by = params.get("AnsweredBy", "")
        if answered_by.startswith("machine") or answered_by == "fax":
            return await self._machine(profile, speaker, session, open_, name)
        self._set_status(session, "in-progress")
        if incoming:
            speaker.say(r, "greeting_incoming", name=name, count=count, alarms=alarms)
        else:
            if not open_:
                speaker.say(r, "no_alarms")
                speaker.say(r, "goodbye")
                r.hangup()
                return to_xml(r)
            speaker.say(r, "greeting", name=name, count=count, alarms=alarms)
        # A call *we* placed reached the number we chose, so a PIN session (or no PIN) may do; an
        # incoming call's caller ID can be forged, so it always takes the PIN
        trusted_line = session.direction == "out"
        if trusted_line and (not s.pin_required or (user is not None and s.reuse_pin_session
                                                    and self._in_pin_session(profile, user.username))):
            session.authenticated = True
            self._read_alarm(r, profile, speaker, session)
            return to_xml(r)
        self._ask_pin(r, profile, speaker, session)
        return to_xml(r)

    async def _machine(self, profile: TwilioVoiceProfile, speaker: Speaker, session: CallSession,
                       open_: list[AlarmEvent], name: str) -> str:
        r = VoiceResponse()
        if profile.voice.answering_machine == "leave-message" and open_:
            first = open_[0]
            speaker.say(r, "machine", name=name, count=len(open_), alarms="alarm" if len(open_) == 1 else "alarms",
                        message=f"{spoken_path(first.display_path)}, {first.label}")
            session.left_message = True
        else:
            # nobody heard it: tell the pipeline now, so the next channel need not wait for the hang-up
            task = asyncio.ensure_future(self._report(session, "no-answer", "an answering machine took the call"))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        r.hangup()
        self.services.audit.record("VoiceMachine", user=session.username, channel=session.profile,
                                  contact=session.their_number, event_ids=list(session.event_ids),
                                  notification_id=session.notification_id,
                                  text="left a message" if session.left_message else "hung up on the machine")
        return to_xml(r)

    def _ask_pin(self, r: VoiceResponse, profile: TwilioVoiceProfile, speaker: Speaker,
                 session: CallSession) -> None:
        url = self._url("pin", session)
        g = r.gather(input="dtmf", action=url, method="POST", timeout=profile.voice.pin_timeout,
                     finish_on_key="#", language=speaker.language)
        speaker.say(g, "enter_pin")
        r.redirect(url, method="POST")  # no input: the same action, without Digits

    def _no_input(self, r: VoiceResponse, speaker: Speaker, session: CallSession) -> bool:
        """Count a request without input; True when that was the second one in a row (goodbye)."""
        session.no_input += 1
        speaker.say(r, "no_input")
        if session.no_input >= 2:
            speaker.say(r, "goodbye")
            r.hangup()
            return True
        return False

    def _in_pin_session(self, profile: TwilioVoiceProfile, username: str) -> bool:
        if profile.voice.pin_session <= 0:
            return False
        return pin_sessions(self.services).active(username)

    def _open_pin_session(self, profile: TwilioVoiceProfile, username: str) -> None:
        if profile.voice.pin_session <= 0:
            return
        pin_sessions(self.services).open(username, profile.voice.pin_session)

    async def _pin(self, profile: TwilioVoiceProfile, speaker: Speaker, session: CallSession,
                   params: dict[str, str]) -> str:
        s = profile.voice
        r = VoiceResponse()
        user = self.services.users.get(session.username or "")
        digits = params.get("Digits", "")
        if session.authenticated:
            self._read_alarm(r, profile, speaker, session)
            return to_xml(r)
        if user is None:
            return self._goodbye(speaker, "error")
        if not digits:
            if not self._no_input(r, speaker, session):
                self._ask_pin(r, profile, speaker, session)
            return to_xml(r)
        session.no_input = 0
        session.pin_tries += 1
        outcome = self.services.replies.check_pin(
            user, digits, channel=session.profile, contact=session.their_number, event_ids=list(session.event_ids),
            notification_id=session.notification_id, via="voice")
        result = outcome.result
        if result == PinResult.OK:
            session.authenticated = True
            self._open_pin_session(profile, user.username)
            speaker.say(r, "pin_ok")
            self._read_alarm(r, profile, speaker, session)
            return to_xml(r)
        if result == PinResult.LOCKED:
            until = f"{user.locked_until:%H:%M} UTC" if user.locked_until else "later"
            speaker.say(r, "locked", until=until)
            r.hangup()
            return to_xml(r)
        if result == PinResult.NO_PIN:
            speaker.say(r, "no_pin")
            r.hangup()
            return to_xml(r)
        if result == PinResult.EXPIRED:
            speaker.say(r, "pin_expired", ask=outcome.ask)
            r.hangup()
            return to_xml(r)
        speaker.say(r, "wrong_pin")
        if session.pin_tries >= s.pin_tries:
            speaker.say(r, "goodbye")  # this call's tries are used up even if the lockout counts differ
            r.hangup()
        else:
            self._ask_pin(r, profile, speaker, session)
        return to_xml(r)

    def alarm_text(self, speaker: Speaker, session: CallSession, event: AlarmEvent, n: int, count: int) -> str:
        """What is read for one alarm; one alarm in a call is read with the notification's own message."""
        single = len(session.event_ids) == 1 and session.direction == "out" and session.message
        return speaker.text("alarm", n=n, count=count, priority=clean(event.priority.label),
                            displayPath=clean(spoken_path(event.display_path)),
                            message=clean(session.message if single else event.label),
                            time=f"{event.active_time:%H:%M} UTC", name=clean(event.name),
                            source=clean(event.source), ackCode=event.ack_code or "")

    def _read_alarm(self, r: VoiceResponse, profile: TwilioVoiceProfile, speaker: Speaker,
                    session: CallSession) -> None:
        """Alarm N of M and the menu; goodbye when nothing is left to acknowledge."""
        events = self._events(session)
        open_ids = [e.id for e in events if not e.acknowledged]
        if not open_ids:
            speaker.say(r, "no_more" if session.heard else "no_alarms")
            speaker.say(r, "goodbye")
            r.hangup()
            return
        if session.index >= len(events) or events[session.index].acknowledged:
            # the next open alarm after the current one, wrapping round
            order = events[session.index:] + events[:session.index]
            session.index = events.index(next(e for e in order if not e.acknowledged))
        event = events[session.index]
        session.heard = True
        text = self.alarm_text(speaker, session, event, session.index + 1, len(events))
        url = self._url("ack", session)
        s = profile.voice
        g = r.gather(input="dtmf speech" if s.speech else "dtmf", action=url, method="POST",
                     timeout=s.menu_timeout, num_digits=1, language=speaker.language,
                     **({"hints": "acknowledge, acknowledge all, next, repeat", "speech_timeout": "auto"}
                        if s.speech else {}))
        for _ in range(s.repeat):
            speaker.say_text(g, text)
        speaker.say(g, "menu")
        if s.speech:
            speaker.say(g, "menu_speech")
        r.redirect(url, method="POST")

    async def _alarm_again(self, profile: TwilioVoiceProfile, speaker: Speaker, session: CallSession,
                           params: dict[str, str]) -> str:
        r = VoiceResponse()
        self._read_alarm(r, profile, speaker, session)
        return to_xml(r)

    @staticmethod
    def _choice(params: dict[str, str]) -> str:
        digits = params.get("Digits", "").strip()
        if digits:
            return digits[:1]
        speech = params.get("SpeechResult", "").strip().lower().strip(".!?")
        for words, choice in SPEECH:
            if speech == words or speech.startswith(words + " "):
                return choice
        return "?" if speech else ""

    async def _ack(self, profile: TwilioVoiceProfile, speaker: Speaker, session: CallSession,
                   params: dict[str, str]) -> str:
        r = VoiceResponse()
        choice = self._choice(params)
        events = self._events(session)
        if not choice:
            if not self._no_input(r, speaker, session):
                self._read_alarm(r, profile, speaker, session)
            return to_xml(r)
        session.no_input = 0
        if choice == "1" and session.index < len(events):
            self._say_ack(r, speaker, await self._acknowledge(session, [events[session.index]]))
        elif choice == "9":
            results = await self._acknowledge(session, [e for e in events if not e.acknowledged])
            if results and all(v == "ok" for v in results.values()):
                speaker.say(r, "acknowledged_all")
            else:
                self._say_ack(r, speaker, results)
        elif choice == "2":
            session.index = (session.index + 1) % max(len(events), 1)
        elif choice == "3":
            pass
        else:
            speaker.say(r, "invalid")
        self._read_alarm(r, profile, speaker, session)
        return to_xml(r)

    def _say_ack(self, r: VoiceResponse, speaker: Speaker, results: dict[str, str]) -> None:
        for event_id, outcome in results.items():
            if outcome == "ok":
                speaker.say(r, "acknowledged")
            elif outcome == "note":
                speaker.say(r, "needs_note")
            else:
                e = self.services.events.get(event_id)
                speaker.say(r, "already", user=(e.ack_user if e else None) or "someone")

    async def _acknowledge(self, session: CallSession, events: list[AlarmEvent]) -> dict[str, str]:
        """Acknowledge each event for the caller (journal: the user, channel voice); outcome per event."""
        results: dict[str, str] = {}
        for e in events:
            if e.acknowledged:
                results[e.id] = "already"
                continue
            if e.ack_notes_required:
                results[e.id] = "note"  # a keypad cannot give a note
                continue
            user = self.services.users.get(session.username or "")
            if user is None:
                results[e.id] = "already"
                continue
            outcome = await self.services.replies.acknowledge(user, [e], "", via="voice",
                                                              default_note="acknowledged by voice")
            results[e.id] = "ok" if outcome.acknowledged else "already"
        return results

    async def _apply_script(self, profile: TwilioVoiceProfile, session: CallSession, action: str,
                            params: dict[str, str], xml: str) -> str:
        script = self._script(profile)
        if script is None:
            return xml
        events = self._events(session)
        current = events[session.index] if session.index < len(events) else None
        alarm = None
        if current is not None:
            alarm = {**current.to_dict(), "index": session.index + 1, "count": len(events),
                     "user": session.username, "callId": session.id, "message": session.message}
        extra: dict[str, Any] = {"logger": logging.getLogger(f"annunciator.scripts.voice.{profile.name}")}
        try:
            from annunciator.scripting.runner import scripting_system

            extra["system"] = scripting_system(self.services)
        except Exception:  # pragma: no cover - scripting disabled: the script still runs without system
            pass
        out, why = await script.apply(self.services, action, params, alarm, xml, extra)
        if why is not None:
            voice_state(self.services).script_errors += 1
        return out

    def _script(self, profile: TwilioVoiceProfile) -> CallScript | None:
        name = profile.voice.script
        if not name:
            return None
        script = self._scripts.get(profile.name)
        if script is None:
            cfg = self.services.config
            path = cfg.resolve(cfg.gateway.scripts_dir) / name
            script = self._scripts[profile.name] = CallScript(path, profile.voice.script_timeout)
        return script

    # --- status callbacks -----------------------------------------------------------------

    def _set_status(self, session: CallSession, status: str) -> None:
        if session.status != status:
            voice_state(self.services).update_status(session, status)

    async def _status(self, session: CallSession, params: dict[str, str]) -> None:
        status = (params.get("CallStatus") or "").lower()
        if not status or (status == session.status and status not in FINAL):
            return
        state = voice_state(self.services)
        code = params.get("ErrorCode") or None
        error = f"Twilio error {code}" if code else None
        if status in FINAL:
            if session.status in FINAL:
                return  # a replayed final callback
            state.update_status(session, status, error)
            if status == "completed":
                seconds = int(params.get("CallDuration") or 0)
                state.completed(session, seconds)
                if not session.heard and not session.left_message and session.direction == "out":
                    # answered, but nobody got past the PIN: for the pipeline the alarm was not delivered
                    status, error = "no-answer", "the call was answered but no alarm was heard (no PIN entered)"
            profile = self._profile(session.profile)
            if profile is not None:
                await profile.release(session)
            state.forget_later(session)
        elif _RANK.get(status, 0) > _RANK.get(session.status, 0):
            state.update_status(session, status)
        if session.direction == "out":
            await self._report(session, status, error)
        await self.services.store.commit(timeout=self.services.store.read_timeout)

    async def _report(self, session: CallSession, status: str, error: str | None) -> None:
        """Tell the delivery layer (fallback on busy/no-answer/failed/canceled)."""
        try:
            await asyncio.wait_for(session.created.wait(), 10)
        except TimeoutError:
            return
        assert session.call_sid is not None
        # the dispatcher stores the CallSid on the notification just after the API answered;
        # a callback (busy) can come first, so give that row a moment to be written
        for _ in range(40):
            if await self.services.delivery.delivery_status(session.call_sid, status, error):
                return
            await asyncio.sleep(0.05)
        log.warning("call %s: no notification with CallSid %s for status %s", session.id, session.call_sid, status)


_RANK = {"queued": 0, "initiated": 1, "ringing": 2, "in-progress": 3, "answered": 3}
