"""The Twilio emulator: a loopback Twilio for tests, integrators and newcomers.

See ``docs/twilio-emulator.md``. The pieces:

* :class:`TwilioEmulator` — the REST API subset (Messages, Calls, IncomingPhoneNumbers), status
  progression with signed callbacks, opt-out, fault injection, every request recorded.
* :class:`Phone` — an emulated handset: ``send``/``reply`` SMS into the gateway, ``expect_sms``.
* :class:`Call` — an emulated call walking the gateway's TwiML: ``press``, ``expect_say``, ``hang_up``.
* :func:`make_client` — the official ``twilio.rest.Client`` pointed at the emulator or Prism.
"""

from annunciator.plugins.twilio.sms import encoding_of, normalize_number, segments

from .calls import Call
from .client import AsyncRebasedHttpClient, ContractViolation, RebasedHttpClient, make_async_client, make_client
from .emulator import DEFAULT_NUMBER, TwilioEmulator
from .faults import Fault, Faults
from .phone import InboundSms, Phone
from .records import Callback, Message, RecordedRequest, TwilioApiError

__all__ = [
    "DEFAULT_NUMBER",
    "AsyncRebasedHttpClient",
    "Call",
    "Callback",
    "ContractViolation",
    "Fault",
    "Faults",
    "InboundSms",
    "Message",
    "Phone",
    "RebasedHttpClient",
    "RecordedRequest",
    "TwilioApiError",
    "TwilioEmulator",
    "encoding_of",
    "make_async_client",
    "make_client",
    "normalize_number",
    "segments",
]
