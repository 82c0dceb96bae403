"""What every console page shares: the request context a handler gets, and the error it raises.

Pages (``app.py``, ``conversations.py``) import this module, never each other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from .auth import Session
from .settings import ROLE_RANK, ConsoleUser

if TYPE_CHECKING:
    from annunciator.core.services import Services

    from .app import Console


class Refused(Exception):
    """A request the console answers with an error page (status, message)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Ctx:
    """One request as a page handler sees it."""

    console: Console
    request: Request
    session: Session
    username: str | None
    user: ConsoleUser | None
    form: FormData | None
    nav: dict[str, Any] | None = None  # the Conversations link and its unread count (full pages only)

    @property
    def gw(self) -> Services:
        return self.console.gw

    def field(self, name: str, default: str = "", limit: int = 2000) -> str:
        value = self.form.get(name, default) if self.form is not None else default
        return str(value)[:limit] if isinstance(value, str) else default

    def can(self, role: str) -> bool:
        return self.user is not None and ROLE_RANK[self.user.role] >= ROLE_RANK[role]

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        return HTMLResponse(self.console.render(template, ctx=self, **values), status)


Handler = Callable[[Ctx], Awaitable[Response]]
