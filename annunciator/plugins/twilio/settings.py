"""The ``twilio:`` config section: accounts, their numbers and sender pools."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from annunciator.core.config import Duration, StrictModel, normalize_phone

PhoneNumber = Annotated[str, AfterValidator(normalize_phone)]
TWILIO_API = "https://api.twilio.com"
# on the first message from a sender pool to a number, whatever sends it (carriers require that
# people are told how to stop the texts)
DEFAULT_FOOTER = "Reply HELP for help, STOP to opt out of this number, STOPALL to opt out of all"


class TwilioAccountSettings(StrictModel):
    """One Twilio account. Without an ``account_sid`` the gateway runs the built-in Twilio
    emulator on 127.0.0.1 instead: messages go nowhere, and a newcomer can watch them and reply."""

    account_sid: str = ""
    auth_token: str = ""
    # where the REST API is: Twilio itself, or an emulator / proxy in tests and air-gapped sites
    api_base: str = TWILIO_API
    numbers: list[PhoneNumber] = []
    messaging_service_sid: str | None = None
    # named groups of sender numbers; a profile or a script sends "from" a pool
    pools: dict[str, list[PhoneNumber]] = {}
    # messages per second per sender number (a US long code is 1/s); 0: no limit of ours
    rate_limit: float = Field(1.0, ge=0)
    timeout: Duration = 10.0
    # appended to the first message from a pool (or from a number outside any pool) to a number;
    # a profile's own ``footer`` replaces it for its alarms; "" sends none
    footer: str = DEFAULT_FOOTER
    # None: the emulator exactly when there is no account_sid; false: an empty account_sid (an
    # unset environment variable) is a config error instead, for production configs
    emulator: bool | None = None

    @model_validator(mode="after")
    def _credentials(self) -> TwilioAccountSettings:
        if self.account_sid and not self.account_sid.startswith("AC"):
            raise ValueError(f"account_sid: expected a Twilio Account SID starting with AC, got {self.account_sid!r}")
        if self.account_sid and not self.auth_token:
            raise ValueError("auth_token: required with an account_sid")
        if not self.account_sid and self.emulator is False:
            raise ValueError("account_sid: required (emulator: false); is its environment variable set?")
        if not self.account_sid and self.auth_token and self.emulator is None:
            # half a credential is a broken deployment, not a wish to run on the emulator
            raise ValueError("account_sid: empty while auth_token is set; is its environment variable set?")
        for name, pool in self.pools.items():
            missing = [n for n in pool if n not in self.numbers]
            if missing:
                raise ValueError(f"pools.{name}: {', '.join(missing)} not among the account's numbers")
        return self

    @property
    def emulated(self) -> bool:
        return bool(self.emulator) or (self.emulator is None and not self.account_sid)


class TwilioSettings(StrictModel):
    accounts: dict[str, TwilioAccountSettings] = {}
    default_account: str | None = None

    @model_validator(mode="after")
    def _default(self) -> TwilioSettings:
        if self.default_account is None and self.accounts:
            self.default_account = next(iter(self.accounts))
        if self.default_account is not None and self.default_account not in self.accounts:
            raise ValueError(f"default_account: unknown account {self.default_account!r}; "
                             f"defined: {', '.join(self.accounts) or '(none)'}")
        return self
