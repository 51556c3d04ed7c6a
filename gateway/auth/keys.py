"""API keys and the tenants they carry.

A key table lists keys by their SHA-256 (hex): the gateway never holds a key itself. Each entry
names a tenant and scopes: `user` (its own workflows, templates and calls) and `admin` (worker
management, cache flush, every tenant's data). The table comes from `--api-keys-file` or the
AGENTGATE_API_KEYS environment variable, both JSON:

    [{"sha256": "<hex of sha256(key)>", "tenant": "acme", "scopes": ["user"]}, ...]

(or {"keys": [...]}). `python -m gateway.auth.keys KEY` prints a key's hash.

Without a table the gateway is open (one anonymous tenant with every scope) and serves on
loopback only (gateway/main.py).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import sys
from dataclasses import dataclass

import orjson

SCOPES = ("user", "admin")
TENANT_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
ENV = "AGENTGATE_API_KEYS"


class KeyFileError(ValueError):
    """The key table cannot be read: the message says which entry and why."""


@dataclass(frozen=True)
class Principal:
    tenant: str | None  # None: no keys configured (the open, single-tenant gateway)
    scopes: frozenset[str]

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def sees(self, owner: str | None) -> bool:
        """May this caller see a resource owned by tenant `owner` ("" / None: made without keys)?"""
        return self.admin or (owner or None) == self.tenant


OPEN = Principal(tenant=None, scopes=frozenset(SCOPES))


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyTable:
    def __init__(self, entries: dict[str, Principal]):
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, key: str) -> Principal | None:
        digest = key_hash(key)
        for known, principal in self.entries.items():  # constant time per entry
            if hmac.compare_digest(known, digest):
                return principal
        return None

    @classmethod
    def parse(cls, raw: bytes | str, where: str) -> "KeyTable":
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise KeyFileError(f"{where}: not JSON ({exc})") from None
        items = data.get("keys") if isinstance(data, dict) else data
        if not isinstance(items, list) or not items:
            raise KeyFileError(f"{where}: expected a non-empty list of keys (or {{\"keys\": [...]}})")
        entries: dict[str, Principal] = {}
        for i, item in enumerate(items):
            entries.update([_entry(item, f"{where}: key {i}")])
        return cls(entries)

    @classmethod
    def load(cls, path: str | None, env: dict) -> "KeyTable | None":
        """The table from `path`, else from $AGENTGATE_API_KEYS; None when neither is given."""
        if path:
            try:
                with open(path, "rb") as f:
                    return cls.parse(f.read(), path)
            except OSError as exc:
                raise KeyFileError(f"{path}: {exc.strerror}") from None
        if env.get(ENV):
            return cls.parse(env[ENV], f"${ENV}")
        return None


def _entry(item, where: str) -> tuple[str, Principal]:
    if not isinstance(item, dict):
        raise KeyFileError(f"{where}: expected an object with sha256, tenant and scopes")
    unknown = sorted(set(item) - {"sha256", "tenant", "scopes", "name"})
    if unknown:
        hint = " (keys are stored hashed: give sha256, see python -m gateway.auth.keys)" if "key" in unknown else ""
        raise KeyFileError(f"{where}: unknown field(s) {', '.join(unknown)}{hint}")
    digest, tenant, scopes = item.get("sha256"), item.get("tenant"), item.get("scopes", ["user"])
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        raise KeyFileError(f"{where}: sha256 must be 64 hex digits")
    if not isinstance(tenant, str) or not TENANT_RE.match(tenant):
        raise KeyFileError(f"{where}: tenant must match {TENANT_RE.pattern}")
    if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
        raise KeyFileError(f"{where}: scopes must be a non-empty list of {', '.join(SCOPES)}")
    return digest.lower(), Principal(tenant=tenant, scopes=frozenset(scopes))


# -- what a tenant's calls and names become ---------------------------------------------------------------
def tenant_salt(tenant: str | None, client_salt: str | None) -> str | None:
    """The cache salt a call reaches the workers with. Under keys it always starts with the caller's
    tenant, and a client's own salt only comes after it ("/" cannot occur in a tenant name), so no
    client can name another tenant's salt. Without keys the client's salt is used as it is."""
    if tenant is None:
        return client_salt
    return f"tenant:{tenant}" + (f"/{client_salt}" if client_salt else "")


def scoped_name(tenant: str | None, name: str) -> str:
    """A template's name in Redis: its tenant's namespace (":" cannot occur in a template name)."""
    return name if tenant is None else f"{tenant}:{name}"


def unscoped_name(name: str | None) -> str | None:
    return name.partition(":")[2] if name and ":" in name else name


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m gateway.auth.keys KEY   (prints the key's sha256 for an API key table)",
              file=sys.stderr)
        return 2
    print(key_hash(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
