"""Bearer API keys on a worker, as SGLang's --api-key: every route but the health probes needs
`Authorization: Bearer <key>` when a key is set; /flush_cache and /abort_request included."""

from __future__ import annotations

import hmac

from aiohttp import web

from common.errors import AuthenticationError
from common.http import bearer_token

OPEN_PATHS = frozenset({"/health", "/health_generate", "/ping", "/health/live", "/health/ready"})


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
