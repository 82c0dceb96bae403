"""The email plugin: the ``email`` profile type, ack-link pages, statistics, config checks and the
IMAP reply poller."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import jinja2
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from annunciator import hookimpl
from annunciator.core import schema
from annunciator.core.config import Config

from .ack import AckPages
from .profile import EmailProfile
from .render import TEMPLATE_NAMES, environment

if TYPE_CHECKING:
    from annunciator.core.services import Services

log = logging.getLogger(__name__)


def _email_profiles(config: Config) -> dict[str, Any]:
    return {name: config.profiles[name] for name, raw in config.settings.profiles.items()
            if raw.get("type") == EmailProfile.type_name and name in config.profiles}


def _gateway_email_profiles(services: Services) -> list[EmailProfile]:
    return [p for p in services.profiles.values() if isinstance(p, EmailProfile)]


@hookimpl
def annunciator_profile_types() -> list[type[EmailProfile]]:
    return [EmailProfile]


@hookimpl
def annunciator_check_config(config: Config) -> list[tuple[str, str]]:
    """Refuse what cannot work (missing CA file, broken template); warn about what is unsafe."""
    problems: list[tuple[str, str]] = []
    profiles = _email_profiles(config)
    for name, s in profiles.items():
        where = f"profiles.{name}"
        if s.security == "none":
            config.notices.append((f"{where}.security", f"plain SMTP to {s.server}: alarm text "
                                   + ("and the SMTP password travel" if s.password else "travels")
                                   + " unencrypted; use starttls (587) or tls (465)"))
        if s.security != "none" and not s.verify:
            config.notices.append((f"{where}.verify", f"certificate of {s.host} not verified: anyone on the path "
                                   "can read the mail and the password; use ca_file for a site CA instead"))
        if s.imap is not None and s.imap.security == "none":
            config.notices.append((f"{where}.imap.security", "plain IMAP: the mailbox password travels unencrypted"))
        for key, path in (("ca_file", s.ca_file), ("imap.ca_file", s.imap.ca_file if s.imap else None)):
            if path and not config.resolve(path).is_file():
                problems.append((f"{where}.{key}", f"no such file: {config.resolve(path)}"))
        if s.templates:
            folder = config.resolve(s.templates)
            if not folder.is_dir():
                problems.append((f"{where}.templates", f"no such folder: {folder}"))
                continue
            env = environment(folder)
            for template in TEMPLATE_NAMES:
                try:
                    env.get_template(template)
                except jinja2.TemplateError as exc:
                    problems.append((f"{where}.templates", f"{template}: {exc}"))
        if s.ack_links and not config.gateway.external_url:
            config.notices.append(("gateway.external_url", f"not set: the ack links of profile {name!r} point at "
                                   f"http://{config.gateway.http.host}:{config.gateway.http.port}, which "
                                   "people's phones cannot open"))
    return problems


@hookimpl
def annunciator_routes(services: Services) -> list[BaseRoute]:
    if not _gateway_email_profiles(services):
        return []
    return [*AckPages(services).routes(), Route("/api/email/stats", _stats(services), methods=["GET"])]


def _stats(services: Services) -> Any:
    async def stats(request: Request) -> JSONResponse:
        """Emails sent per person and per profile, from the notification records (survives restarts)."""
        names = [p.name for p in _gateway_email_profiles(services)]
        n = schema.notifications

        def load(conn: sa.Connection) -> list[Any]:
            q = (sa.select(n.c.username, n.c.profile, n.c.status, sa.func.count())
                 .where(n.c.profile.in_(names), n.c.status.in_(("sent", "failed")))
                 .group_by(n.c.username, n.c.profile, n.c.status))
            user = request.query_params.get("user")
            if user:
                q = q.where(n.c.username == user)
            return list(conn.execute(q))

        users: dict[str, dict[str, Any]] = {}
        for username, profile, status, count in await services.store.read(load):
            u = users.setdefault(username, {"sent": 0, "failed": 0, "byProfile": {}})
            u[status] += count
            u["byProfile"].setdefault(profile, {"sent": 0, "failed": 0})[status] += count
        return JSONResponse({"users": users})

    return stats


@hookimpl
def annunciator_startup(services: Services) -> Any:
    from .imap import start_pollers

    return start_pollers(services, _gateway_email_profiles(services))


@hookimpl
def annunciator_shutdown(services: Services) -> Any:
    from .imap import stop_pollers

    return stop_pollers(services)
