"""``/api/sms/opt-outs``: who has opted out of which senders, and (for an administrator, audited)
clearing an opt-out — as ``annunciator sms opt-outs`` and ``... clear`` do from the shell.

A scope is ``<account>/<pool>`` (a STOP to a number of that pool; ``<account>/`` for numbers in
no pool) or ``*`` (STOPALL: every sender). Clearing is for a person who asked to be texted again
by other means than START (e.g. by phone); carriers and Twilio may still refuse until they send
START themselves, which the list's ``source`` helps to tell apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from annunciator.core.config import normalize_phone

from .state import ALL_POOLS, sms_state

if TYPE_CHECKING:
    from annunciator.core.services import Services


def _entry(number: str, scope: str, row: dict[str, Any] | None) -> dict[str, Any]:
    account, _, pool = scope.partition("/")
    return {"number": number, "scope": scope, "all": scope == ALL_POOLS,
            "account": None if scope == ALL_POOLS else account, "pool": pool or None,
            "source": row["source"] if row else None,
            "since": row["updated"].isoformat() if row else None}


def opt_out_routes(services: Services) -> list[Route]:
    async def listing(request: Request) -> JSONResponse:
        state = sms_state(services)
        await state.load()
        number = request.query_params.get("number")
        if number:
            try:
                number = normalize_phone(number)
            except ValueError as exc:
                return JSONResponse({"error": f"number: {exc}"}, status_code=422)
        rows = {(r["number"], r["scope"]): r for r in await state.opt_out_rows()}
        out = [_entry(n, scope, rows.get((n, scope))) for (n, scope), active in sorted(state.opted.items())
               if active and (number is None or n == number)]
        return JSONResponse({"optOuts": out})

    async def clear(request: Request) -> JSONResponse:
        state = sms_state(services)
        await state.load()
        try:
            number = normalize_phone(request.path_params["number"])
        except ValueError as exc:
            return JSONResponse({"error": f"number: {exc}"}, status_code=422)
        scope = request.query_params.get("scope")
        who = request.query_params.get("user") or "api"
        cleared = [s for (n, s), active in list(state.opted.items())
                   if n == number and active and (scope is None or s == scope)]
        if not cleared:
            return JSONResponse({"error": f"{number} has not opted out" + (f" of {scope}" if scope else "")},
                                status_code=404)
        for s in cleared:
            state.set_opt_out(number, s, False, "admin")
        services.audit.record("OptOutCleared", user=who, contact=number,
                              text=f"opt-out cleared by an administrator: {', '.join(cleared)}",
                              details={"scopes": cleared})
        await services.store.commit(timeout=services.store.read_timeout)
        return JSONResponse({"cleared": [_entry(number, s, None) for s in cleared]})

    return [Route("/api/sms/opt-outs", listing, methods=["GET"]),
            Route("/api/sms/opt-outs/{number}", clear, methods=["DELETE"])]
