"""``GET /api/sms/messages``: the stored SMS conversation history (newest last), by number or person."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from annunciator.core import schema

if TYPE_CHECKING:
    from annunciator.core.services import Services


def history_routes(services: Services) -> list[Route]:
    async def messages(request: Request) -> JSONResponse:
        q = request.query_params
        try:
            limit = max(1, min(int(q.get("limit", 200)), 5000))
        except ValueError:
            return JSONResponse({"error": "limit: expected a number"}, status_code=422)
        m = schema.messages

        def load(conn: sa.Connection) -> list[dict[str, Any]]:
            query = sa.select(m).where(m.c.channel == "sms", m.c.deleted.is_(False))
            query = schema.narrow(query.order_by(m.c.created.desc()).limit(limit), m, None, None,
                                  their_number=q.get("number"), username=q.get("user"), pool=q.get("pool"))
            return [{"id": r.id, "direction": r.direction, "ourNumber": r.our_number, "theirNumber": r.their_number,
                     "user": r.username, "body": r.body, "status": r.status, "error": r.error, "pool": r.pool,
                     "eventIds": r.event_ids or [], "created": r.created.isoformat()} for r in conn.execute(query)]

        rows = await services.store.read(load)
        return JSONResponse({"messages": list(reversed(rows))})

    return [Route("/api/sms/messages", messages, methods=["GET"])]
