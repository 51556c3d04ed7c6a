"""The one definition of a KV block hash, shared by the engine (events) and the
gateway (prefix look-ups).

Block hash i = 64-bit BLAKE2b of (hash i-1, the block's token ids). The chain
starts from a root derived from the cache salt, so the salt enters the first
block and therefore every block after it: tenants with different salts never
share a hash, and one tenant cannot probe another's cache. Only full blocks
are hashed; a trailing partial block has no hash.
"""

from __future__ import annotations

import hashlib
import struct
from array import array
from collections.abc import Sequence

_U64 = struct.Struct("<Q")


def root_hash(salt: str | bytes | None = None) -> int:
    """The parent hash of a sequence's first block."""
    if not salt:
        return 0
    raw = salt.encode() if isinstance(salt, str) else salt
    return _U64.unpack(hashlib.blake2b(b"agentgate-salt\0" + raw, digest_size=8).digest())[0]


def hash_block(parent: int, token_ids: Sequence[int]) -> int:
    data = array("q", token_ids).tobytes()  # int64, so any vocabulary fits
    digest = hashlib.blake2b(_U64.pack(parent) + data, digest_size=8).digest()
    return _U64.unpack(digest)[0]


def block_hashes(token_ids: Sequence[int], block_size: int, salt: str | bytes | None = None,
                 parent: int | None = None) -> list[int]:
    """Chained hashes of every full block of `token_ids`.

    `parent` continues a chain (the hash of the block before token_ids[0]);
    by default the chain starts at the salt's root.
    """
    h = root_hash(salt) if parent is None else parent
    out = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        h = hash_block(h, token_ids[start:start + block_size])
        out.append(h)
    return out
