"""Bearer auth on every gateway route but the health probes and the console's page and static files
(they hold no data: the page asks for a key and sends it with every API call), and the caller's
Principal per request."""

from __future__ import annotations

from aiohttp import web

from common.errors import AuthenticationError, NotFoundError, PermissionDeniedError
from common.http import bearer_token
from gateway.auth.keys import OPEN, KeyTable, Principal

PRINCIPAL = web.RequestKey("principal", Principal)
OPEN_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/ui", "/ui/"})
OPEN_PREFIXES = ("/ui/static/",)


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def auth_middleware(table: KeyTable | None):
    """Without a table every caller is the open principal (the loopback-only gateway)."""

    @web.middleware
    async def authenticate(request: web.Request, handler):
        if table is None:
            request[PRINCIPAL] = OPEN
        elif not is_open(request.path):
            token = bearer_token(request.headers)
            found = table.lookup(token) if token else None
            if found is None:
                raise AuthenticationError()
            request[PRINCIPAL] = found
        return await handler(request)

    return authenticate


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def tenant_of(request: web.Request) -> str | None:
    return request[PRINCIPAL].tenant


def require_admin(request: web.Request) -> Principal:
    who = request[PRINCIPAL]
    if not who.admin:
        raise PermissionDeniedError("this route needs a key with the admin scope", code="admin_only")
    return who


def check_owner(request: web.Request, owner: str | None, what: str, param: str, code: str) -> None:
    """Another tenant's resource is as absent as one that never existed: 404, never 403."""
    if not request[PRINCIPAL].sees(owner):
        raise NotFoundError(f"{what} does not exist", param=param, code=code)
