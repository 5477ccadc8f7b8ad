"""Who may call the service: loopback by default; any other address needs an API key.

The key travels in the ``X-API-Key`` header (or ``Authorization: Bearer <key>``) and is compared in
constant time (:func:`hmac.compare_digest`). Request bodies are capped at ``max_upload_bytes``
(fresnet.limits) while they stream in, whatever their ``Content-Length`` claims.
"""
from __future__ import annotations

import hmac
import ipaddress

from fresnet.errors import FresnetError
from fresnet.service.errors import envelope

KEY_HEADER = "x-api-key"
MIN_KEY_LENGTH = 16


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without an API key (or with a guessable one)."""
    if api_key is not None and len(api_key) < MIN_KEY_LENGTH:
        raise FresnetError(f"the API key is {len(api_key)} characters; use at least {MIN_KEY_LENGTH} random ones, "
                           "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if not is_loopback(host) and api_key is None:
        raise FresnetError(f"--host {host} listens beyond this machine: it needs an API key. Put one in an "
                           "environment variable and name it: --api-key-env FRESNET_API_KEY")


def key_matches(headers, api_key: str) -> bool:
    given = headers.get(KEY_HEADER)
    if given is None:
        auth = headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), api_key.encode())


class Guard:
    """ASGI middleware: the API key on ``/v1/*`` (health excepted) and the body size cap."""

    def __init__(self, app, api_key: str | None, max_body: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers

        headers = Headers(scope=scope)
        path = scope.get("path", "")
        if self.api_key is not None and path.startswith("/v1/") and path != "/v1/health" \
                and not key_matches(headers, self.api_key):
            response = envelope(401, "unauthorized", "this service needs an API key: send it in the X-API-Key header",
                                {"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return await self._too_large(scope, receive, send)
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await self._too_large(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        response = envelope(413, "too_large", f"the request body is above {self.max_body:,} bytes "
                            "(max_upload_bytes); send smaller photos")
        await response(scope, receive, send)


class _BodyTooLarge(Exception):
    pass
