"""Bearer API keys on a worker, as SGLang's --api-key: every route but the health probes needs
`Authorization: Bearer <key>` when a key is set; /flush_cache and /abort_request included."""

from __future__ import annotations

import hmac

from aiohttp import web

from engine.errors import AuthenticationError

OPEN_PATHS = frozenset({"/health", "/health_generate", "/ping", "/health/live", "/health/ready"})


def bearer_token(headers) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    scheme, _, token = (headers.get("Authorization") or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def key_middleware(api_key: str):
    expected = api_key.encode()

    @web.middleware
    async def require_key(request: web.Request, handler):
        if request.path not in OPEN_PATHS:
            token = bearer_token(request.headers)
            if token is None or not hmac.compare_digest(token.encode(), expected):
                raise AuthenticationError()
        return await handler(request)

    return require_key
