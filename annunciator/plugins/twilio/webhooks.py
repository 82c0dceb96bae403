"""Verifying a Twilio webhook: the one check the SMS and voice routes share.

A request is answered 413 when its body is larger than any Twilio webhook (before it is read),
415 when it is not form-encoded, and 403 unless ``X-Twilio-Signature`` is valid for the public
URL and the parameters; only then does anything else look at it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from .service import twilio_service

if TYPE_CHECKING:
    from annunciator.core.services import Services

log = logging.getLogger(__name__)

FORM = "application/x-www-form-urlencoded"
MAX_BODY = 64 * 1024  # a 1,600-character SMS with every Twilio field is far below this


async def verified_form(services: Services, request: Request) -> dict[str, str] | Response:
    """The webhook's parameters, or the response that refuses it."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM:
        return Response("expected a form-encoded Twilio webhook\n", status_code=415)
    try:
        declared = int(request.headers.get("content-length", "0"))
    except ValueError:
        declared = MAX_BODY + 1
    if declared > MAX_BODY:
        return Response("request body too large\n", status_code=413)
    body = b""
    async for chunk in request.stream():  # also bounded when no Content-Length was sent
        body += chunk
        if len(body) > MAX_BODY:
            return Response("request body too large\n", status_code=413)
    request._body = body  # let request.form() parse what was read
    form = await request.form()
    params = {k: str(v) for k, v in form.items()}
    service = twilio_service(services)
    await service.start()
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if not service.signature_ok(path, params, request.headers.get("x-twilio-signature")):
        log.warning("refused %s from %s: missing or wrong X-Twilio-Signature", request.url.path,
                    request.client.host if request.client else "?")
        return Response("invalid signature\n", status_code=403)
    return params
