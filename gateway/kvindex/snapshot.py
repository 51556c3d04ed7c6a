"""A worker's snapshot (GET /kv/snapshot, shapes in common/kvwire.py):
fetched, validated, and turned into plain data; and stream entry ids."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import orjson

StreamId = tuple[int, int]
ZERO_ID: StreamId = (0, 0)


def parse_id(raw: bytes | str) -> StreamId:
    """A stream entry id "ms-seq" as a comparable tuple."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class SnapshotError(Exception):
    """A worker's /kv/snapshot could not be fetched or made no sense."""

    def __init__(self, message: str, *, missing: bool = False):
        super().__init__(message)
        self.missing = missing  # the worker has no such route (404): it can only be synced from seq 0


@dataclass(frozen=True)
class Snapshot:
    worker: str
    model: str
    epoch: str
    block_size: int
    l3: str
    upto: StreamId
    upto_seq: int | None  # None: the worker does not say (accept whatever seq comes next)
    l1: list[int]
    l2: list[int]
    l3_blocks: list[int]


def _hashes(items, name: str, pairs: bool) -> list[int]:
    if not isinstance(items, list):
        raise SnapshotError(f"tiers.{name} must be a list")
    out = []
    for item in items:
        h = item[0] if pairs and isinstance(item, list) and len(item) == 2 else item
        if not isinstance(h, int) or isinstance(h, bool):
            raise SnapshotError(f"tiers.{name} holds {item!r}, not a block hash{' or [hash, parent]' if pairs else ''}")
        out.append(h)
    return out


def parse_snapshot(body) -> Snapshot:
    """Validate a /kv/snapshot body (wire.py); SnapshotError names what is wrong."""
    if not isinstance(body, dict):
        raise SnapshotError("the snapshot is not a JSON object")
    for key, kind in (("worker", str), ("epoch", str), ("upto", str), ("tiers", dict)):
        if not isinstance(body.get(key), kind):
            raise SnapshotError(f"snapshot field {key!r} is missing or not a {kind.__name__}")
    try:
        upto = parse_id(body["upto"])
    except ValueError:
        raise SnapshotError(f"snapshot upto {body['upto']!r} is not a stream id") from None
    upto_seq = body.get("upto_seq")
    if upto_seq is not None and (not isinstance(upto_seq, int) or isinstance(upto_seq, bool) or upto_seq < -1):
        raise SnapshotError(f"snapshot upto_seq {upto_seq!r} is not a seq")
    tiers = body["tiers"]
    return Snapshot(worker=body["worker"], model=str(body.get("model", "")), epoch=body["epoch"],
                    block_size=int(body.get("block_size", 16)), l3=str(body.get("l3") or ""), upto=upto,
                    upto_seq=upto_seq,
                    l1=_hashes(tiers.get("l1", []), "l1", pairs=True), l2=_hashes(tiers.get("l2", []), "l2", False),
                    l3_blocks=_hashes(tiers.get("l3", []), "l3", False))


async def fetch_snapshot(session: aiohttp.ClientSession, url: str, timeout_s: float) -> Snapshot:
    try:
        async with session.get(f"{url}/kv/snapshot", timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            body = await r.read()
            if r.status != 200:
                raise SnapshotError(f"{url}/kv/snapshot answered {r.status}: {body[:200]!r}",
                                    missing=r.status in (404, 405))
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise SnapshotError(f"{url}/kv/snapshot failed: {exc!r}") from exc
    try:
        return parse_snapshot(orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        raise SnapshotError(f"{url}/kv/snapshot is not JSON: {exc}") from exc
