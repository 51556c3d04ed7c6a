"""The KV wire contract between workers and gateways, in Redis.

One module so that the engine worker (publisher), the SGLang bridge and the
gateway's KV index agree byte for byte.

Keys (prefix `ag`, as the gateway's workflow store). `{kv}` and `{registry}`
are written with their braces: they are Redis Cluster hash tags, so every
KV stream sits in one slot (a gateway reads all of them in one XREADGROUP and
waits on all of them in one XREAD) and every registry key in another (a
heartbeat is one MULTI, the prune one script); <model> and <url> are plain text:
  ag:{kv}:events:<model>      stream; one entry per batch of KV events of one worker
  ag:{registry}:worker:<url>  string, JSON WorkerInfo, with a TTL the worker keeps
                              refreshing (heartbeat); an expired key = a gone worker.
                              An operator's registration (POST /admin/workers) is a
                              WorkerInfo of kind "operator" with no TTL, written only
                              where no worker holds the key
  ag:{registry}:worker-ids    set of worker URLs that have registered, either way (the
                              one worker registry; readers prune the ones whose key expired)

A stream entry (all values bytes/str):
  worker  the worker's base URL (its identity everywhere: index, router, pool)
  model   the served model name
  epoch   a random id per worker process start; a new epoch means the worker
          restarted and everything the index held for it is gone
  seq     the batch counter within the epoch (0, 1, 2, ...); a gap means lost
          batches: the reader re-fetches the worker's snapshot
  l3      the id of the L3 store the worker shares ("" if none), e.g. "dir:/abs/path"
  events  orjson list of events, each
          {op, tier, block_hashes, parent_hash, ts}
          op:   "stored" | "removed" | "cleared" | "resync"
          tier: "l1" | "l2" | "l3"
          Blocks in tier l3 belong to the *store* (any worker sharing it can load
          them), not to the worker that wrote them. "cleared" drops every block
          of that worker in that tier. "resync" means the worker dropped events
          (Redis was down too long): re-fetch its snapshot.

GET /kv/snapshot on a worker returns a Snapshot as JSON:
  {worker, model, epoch, block_size, l3, upto, tiers: {l1: [[hash, parent|null], ...],
   l2: [hash, ...], l3: [hash, ...]}}
  `upto` is the id of the last stream entry the worker had appended before the
  snapshot was taken ("0-0" when none): a reader applies the snapshot, then
  every entry of that worker after `upto`. Replaying entries that happened
  before the snapshot is harmless: each op sets a block's state, so the last
  op on each block wins and the state after the replay is the worker's.
  Optional `upto_seq`: the seq of that entry (-1 with "0-0"), so a reader
  knows the next seq to expect and spots a gap right after a snapshot; a
  reader given no `upto_seq` accepts whatever seq comes next.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

PREFIX = "ag"
OPERATOR = "operator"  # WorkerInfo.kind of a worker an operator registered (it publishes nothing itself)


def worker_ids(prefix: str = PREFIX) -> str:
    """The registry's set of URLs; gateways under another key prefix keep their operators' entries in
    that prefix's registry, of the same layout."""
    return f"{prefix}:{{registry}}:worker-ids"


REGISTRY = f"{PREFIX}:{{registry}}"
WORKER_IDS = worker_ids()
TIERS = ("l1", "l2", "l3")
OPS = ("stored", "removed", "cleared", "resync")
DEFAULT_STREAM_MAXLEN = 200_000  # entries (batches) kept per model stream, trimmed approximately
HEARTBEAT_TTL_S = 10.0


def stream_key(model: str) -> str:
    return f"{PREFIX}:{{kv}}:events:{model}"


def worker_key(url: str, prefix: str = PREFIX) -> str:
    return f"{prefix}:{{registry}}:worker:{url}"


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker registers under ag:{registry}:worker:<url>."""

    url: str
    model: str
    kind: str = "agentgate"  # "agentgate" (embedded engine) | "sglang"
    epoch: str = ""
    block_size: int = 16
    l3: str = ""  # L3 store id, "" if none
    started: float = 0.0

    def dumps(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def loads(cls, raw: bytes | str) -> "WorkerInfo":
        d = orjson.loads(raw)
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class EventBatch:
    worker: str
    model: str
    epoch: str
    seq: int
    l3: str
    events: list[dict] = field(default_factory=list)

    def fields(self) -> dict[str, bytes | str]:
        """The stream entry's fields (XADD)."""
        return {"worker": self.worker, "model": self.model, "epoch": self.epoch, "seq": str(self.seq),
                "l3": self.l3, "events": orjson.dumps(self.events)}

    @classmethod
    def from_fields(cls, f: dict) -> "EventBatch":
        """Parse an entry read back (keys/values may be bytes or str)."""
        g = {(k.decode() if isinstance(k, bytes) else k): v for k, v in f.items()}

        def s(key: str) -> str:
            v = g.get(key, "")
            return v.decode() if isinstance(v, bytes) else v

        return cls(worker=s("worker"), model=s("model"), epoch=s("epoch"), seq=int(s("seq") or 0), l3=s("l3"),
                   events=orjson.loads(g.get("events") or b"[]"))


def event(op: str, tier: str, block_hashes, parent_hash: int | None = None, ts: float = 0.0) -> dict:
    return {"op": op, "tier": tier, "block_hashes": list(block_hashes), "parent_hash": parent_hash, "ts": ts}
