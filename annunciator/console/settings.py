"""The ``console:`` config section: who may sign in, with which role, and how sessions behave."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from annunciator.core.config import Duration, StrictModel

Role = Literal["viewer", "operator", "admin"]
# viewer < operator < admin: a page needs at least its role
ROLE_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}


class ConsoleUser(StrictModel):
    """A console sign-in. ``password_hash`` is an argon2 hash from ``annunciator console-user add``;
    the password itself never appears in the config."""

    password_hash: str
    role: Role = "viewer"
    name: str = ""
    # sender pools of two-way SMS this user may use: "admin" sees everything of the pool, "user" converses
    pools: dict[str, Literal["admin", "user"]] = {}

    @field_validator("password_hash")
    @classmethod
    def _argon2(cls, v: str) -> str:
        if not v.startswith("$argon2"):
            raise ValueError("expected an argon2 hash (\"$argon2id$...\"); make one with "
                             "`annunciator console-user add NAME`")
        return v


class LoginLimit(StrictModel):
    """Failed sign-ins allowed per client address and per user name within ``window``."""

    attempts: int = Field(5, ge=1, le=1000)
    window: Duration = 300.0


class ConsoleSettings(StrictModel):
    enabled: bool = True
    users: dict[str, ConsoleUser] = {}
    session_lifetime: Duration = 8 * 3600.0
    # mark the session cookie Secure (HTTPS only); on by default when gateway.external_url is https
    secure_cookies: bool | None = None
    login_limit: LoginLimit = LoginLimit()
    page_size: int = Field(50, ge=5, le=500)
    # how often open pages ask for fresh rows (live alarm table, sandbox inboxes)
    refresh: Duration = 2.0
    # the text "Dispatch SMS" on an alarm's page starts from (the alarm's properties; edited before sending)
    dispatch_template: str = "{priority} alarm {displayPath}: {name} (value {eventValue}). Please reply here."
