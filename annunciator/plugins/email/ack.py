"""``/ack/<token>``: the page an email's link opens, and the form that acknowledges.

GET only shows the alarms and the form: mail scanners and link previews fetch every link in a
message, so a GET that acknowledged would acknowledge alarms nobody has read. POST acknowledges,
and only with the page's CSRF token and cookie (see tokens.py). A token is single-use: its random
id is written to the audit log (code ``EmailAckLink``) in the same transaction as the
acknowledgement, so no schema change is needed and a restart does not forget it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from annunciator.core.alarms import AlarmEvent
from annunciator.core.errors import Conflict, Invalid, NotFound

from .render import event_values
from .tokens import AckClaim, TokenError, csrf_ok, new_csrf, read_token, unverified_profile

if TYPE_CHECKING:
    from annunciator.core.services import Services

    from .profile import EmailProfile

log = logging.getLogger(__name__)

LINK_USED = "EmailAckLink"
COOKIE = "annunciator_ack"
# the token is in the URL: never leak it in a Referer, never let a proxy cache the page, never frame it
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'",
}


class AckPages:
    """The GET page and POST action of ack links, for every email profile of the gateway."""

    def __init__(self, services: Services):
        self.services = services
        self._using: set[str] = set()  # token ids being acknowledged right now (double-click)
        self._used: set[str] = set()  # token ids used since start (the audit log has older ones)

    def routes(self) -> list[Route]:
        return [Route("/ack/{token}", self.page, methods=["GET", "HEAD"]),
                Route("/ack/{token}", self.post, methods=["POST"])]

    # --- helpers --------------------------------------------------------------------------

    def _profiles(self) -> dict[str, EmailProfile]:
        from .profile import EmailProfile

        return {n: p for n, p in self.services.profiles.items() if isinstance(p, EmailProfile)}

    def _any_profile(self) -> EmailProfile | None:
        return next(iter(self._profiles().values()), None)

    def _html(self, profile: EmailProfile | None, name: str, values: dict[str, Any], status: int = 200) -> Response:
        profile = profile or self._any_profile()
        assert profile is not None  # routes exist only with an email profile
        values.setdefault("gatewayName", self.services.config.gateway.name)
        body = profile.templates.get_template(name).render(values)
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)

    def _error(self, profile: EmailProfile | None, message: str, status: int) -> Response:
        return self._html(profile, "ack_error.html", {"error": message}, status)

    async def _claim(self, token: str) -> tuple[EmailProfile | None, AckClaim | Response]:
        gw = self.services
        name = unverified_profile(gw.secret, token)
        profile = self._profiles().get(name or "")
        if profile is None:
            return None, self._error(None, "This link is not valid.", 403)
        try:
            claim = read_token(gw.secret, token, profile.email.ack_link_expiry)
        except TokenError as exc:
            return profile, self._error(profile, str(exc), 403)
        if claim.user not in gw.users or not claim.event_ids:
            return profile, self._error(profile, "This link is not valid.", 403)
        if await self._was_used(claim):
            return profile, self._error(profile, "This link has already been used.", 410)
        return profile, claim

    async def _was_used(self, claim: AckClaim) -> bool:
        if claim.jti in self._used or claim.jti in self._using:
            return True
        entries = await self.services.audit.query(code=LINK_USED, event_id=claim.event_ids[0], limit=1000)
        return any((e.get("details") or {}).get("jti") == claim.jti for e in entries)

    async def _events(self, claim: AckClaim) -> list[AlarmEvent]:
        events = []
        for event_id in claim.event_ids:
            try:
                events.append(await self.services.history.find_event(event_id))
            except NotFound:
                continue  # purged by retention: nothing to show or do for it
        return events

    def _page(self, request: Request, profile: EmailProfile, claim: AckClaim, events: list[AlarmEvent], *,
              notes: str = "", error: str | None = None, status: int = 200) -> Response:
        token = request.path_params["token"]
        nonce, csrf = new_csrf(self.services.secret, token, request.cookies.get(COOKIE))
        open_ = [e for e in events if not e.acknowledged]
        user = self.services.users[claim.user]
        response = self._html(profile, "ack_page.html", {
            "events": [event_values(e) for e in events], "open": bool(open_), "csrf": csrf, "notes": notes,
            "notesRequired": any(e.ack_notes_required for e in open_), "error": error,
            "user": {"username": user.username, "name": user.display_name}}, status)
        response.set_cookie(COOKIE, nonce, httponly=True, samesite="strict", path="/ack/",
                            secure=profile.base_url().startswith("https://"),
                            max_age=int(profile.email.ack_link_expiry))
        return response

    # --- routes ---------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        token = request.path_params["token"]
        profile, claim = await self._claim(token)
        if isinstance(claim, Response):
            return claim
        assert profile is not None
        events = await self._events(claim)
        if not events:
            return self._error(profile, "These alarms no longer exist.", 404)
        return self._page(request, profile, claim, events)

    async def post(self, request: Request) -> Response:
        gw = self.services
        token = request.path_params["token"]
        profile, claim = await self._claim(token)
        if isinstance(claim, Response):
            return claim
        assert profile is not None
        form = await request.form()
        notes = str(form.get("notes") or "").strip()
        if not csrf_ok(gw.secret, token, request.cookies.get(COOKIE), str(form.get("csrf") or "")):
            log.warning("ack link POST for %s without a valid CSRF token from %s", claim.user,
                        request.client.host if request.client else "?")
            return self._error(profile, "This form has expired or did not come from this site; "
                                        "open the link from the email again.", 403)
        if claim.jti in self._using:
            return self._error(profile, "This link has already been used.", 410)
        self._using.add(claim.jti)
        try:
            return await self._acknowledge(request, profile, claim, notes)
        finally:
            self._using.discard(claim.jti)

    async def _acknowledge(self, request: Request, profile: EmailProfile, claim: AckClaim, notes: str) -> Response:
        gw = self.services
        events = await self._events(claim)
        todo = [e for e in events if not e.acknowledged and e.id in gw.events]
        if any(e.ack_notes_required for e in todo) and not notes:
            # the link stays unused: the person fills in the notes and sends again
            return self._page(request, profile, claim, events, notes=notes,
                              error="Notes are required to acknowledge this alarm.", status=400)
        already = [f"{e.display_path}: already acknowledged by {e.ack_user or 'someone'}"
                   for e in events if e.acknowledged]
        if todo:
            try:
                await gw.alarms.acknowledge([e.id for e in todo], claim.user, notes or "acknowledged by email link",
                                     via="email")
            except (Conflict, Invalid, NotFound) as exc:
                return self._error(profile, f"Not acknowledged: {exc}", 409)
        user = gw.users[claim.user]
        gw.audit.record(LINK_USED, user=claim.user, channel=profile.name, contact=None,
                        text=f"ack link used: {len(todo)} acknowledged, {len(already)} already",
                        event_ids=claim.event_ids, details={"jti": claim.jti})
        self._used.add(claim.jti)
        # answered only once the acknowledgement and the used mark are durable
        await gw.store.commit(timeout=gw.store.read_timeout)
        return self._html(profile, "ack_done.html", {
            "events": [event_values(e) for e in todo], "already": already,
            "user": {"username": user.username, "name": user.display_name}})
