"""L3: a block store shared by every worker that names the same location.

Blocks are blobs keyed by chained block hash, so a worker can load a prefix
another worker computed. `BlockStore` is the interface a backend implements
(a directory here; an object store or Redis blob backend plugs in the same
way: `make_store` parses the spec). Every blob carries its own header and a
CRC32 over header and payload: a corrupt, partial or foreign blob is a miss,
never served.

Blob layout: MAGIC | u32 header length | header JSON | K bytes | V bytes | u32 CRC32
header = {hash, parent, tokens, dtype, shape} with shape = one block's K shape
[layers, block_size, kv_heads, head_dim].
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import orjson
import torch

log = logging.getLogger("agentgate.kv.l3")

MAGIC = b"AGKV\x01"
_U32 = struct.Struct("<I")
_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class StoredBlock(NamedTuple):
    hash: int
    parent: int | None
    tokens: tuple[int, ...]
    k: torch.Tensor  # [layers, kv_heads, block_size, head_dim]
    v: torch.Tensor


def encode_block(h: int, parent: int | None, tokens, k: torch.Tensor, v: torch.Tensor) -> bytes:
    header = orjson.dumps({"hash": h, "parent": parent, "tokens": list(tokens), "dtype": _DTYPES[k.dtype],
                           "shape": list(k.shape)})
    kb = k.contiguous().view(torch.uint8).numpy().tobytes()
    vb = v.contiguous().view(torch.uint8).numpy().tobytes()
    body = MAGIC + _U32.pack(len(header)) + header + kb + vb
    return body + _U32.pack(zlib.crc32(body))


def decode_block(data: bytes | bytearray, expect_hash: int, dtype: torch.dtype, shape: tuple[int, ...]
                 ) -> StoredBlock | None:
    """The block in `data`, or None when anything about it is off."""
    try:
        if len(data) < len(MAGIC) + 8 or not data.startswith(MAGIC):
            return None
        (crc,) = _U32.unpack_from(data, len(data) - 4)
        if zlib.crc32(memoryview(data)[:-4]) != crc:
            return None
        (hlen,) = _U32.unpack_from(data, len(MAGIC))
        start = len(MAGIC) + 4
        header = orjson.loads(bytes(data[start:start + hlen]))
        if header["hash"] != expect_hash or header["dtype"] != _DTYPES[dtype] or tuple(header["shape"]) != shape:
            return None
        n = 1
        for d in shape:
            n *= d
        nbytes = n * torch.tensor([], dtype=dtype).element_size()
        off = start + hlen
        if len(data) - 4 - off != 2 * nbytes:
            return None
        buf = data if isinstance(data, bytearray) else bytearray(data)
        k = torch.frombuffer(buf, dtype=dtype, count=n, offset=off).view(shape)
        v = torch.frombuffer(buf, dtype=dtype, count=n, offset=off + nbytes).view(shape)
        return StoredBlock(expect_hash, header["parent"], tuple(header["tokens"]), k, v)
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError, struct.error):
        return None


class BlockStore(ABC):
    """A shared, size-bounded blob store keyed by block hash. Thread-safe."""

    id: str  # names the store in KV events and the worker registry ("dir:/abs/path")

    @abstractmethod
    def contains(self, h: int) -> bool: ...

    @abstractmethod
    def get(self, h: int) -> bytes | bytearray | None: ...

    @abstractmethod
    def put(self, h: int, blob: bytes) -> list[int]:
        """Store a blob; returns the hashes evicted to stay within the size bound."""

    @abstractmethod
    def delete(self, h: int) -> None: ...

    @abstractmethod
    def hashes(self) -> list[int]: ...

    @abstractmethod
    def stats(self) -> dict: ...


class DirStore(BlockStore):
    """Blobs as files `<root>/<2 hex>/<16 hex>.kv`, written atomically (tmp +
    rename), LRU by modification time (a read touches it), bounded by max_bytes.

    Several processes share one directory: each keeps an in-memory view of the
    files (sizes, times), rescanned every `rescan_s` so that blobs written by
    others become known and evictable.
    """

    def __init__(self, root: str | Path, max_bytes: int, rescan_s: float = 30.0):
        self.root = Path(root).resolve()
        self.id = f"dir:{self.root}"
        self.max_bytes = max_bytes
        self.rescan_s = rescan_s
        self._lock = threading.Lock()
        self._files: OrderedDict[int, int] = OrderedDict()  # hash -> size, oldest first
        self._bytes = 0
        self._scanned = 0.0
        self.root.mkdir(parents=True, exist_ok=True)
        probe = self.root / f".probe-{os.getpid()}"
        probe.write_bytes(b"ok")  # raises when the directory is not writable
        probe.unlink()
        self.hits = self.misses = self.writes = self.evictions = 0
        self._scan()

    def _path(self, h: int) -> Path:
        name = f"{h:016x}"
        return self.root / name[:2] / f"{name}.kv"

    def _scan(self) -> None:
        found: list[tuple[float, int, int]] = []
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                if not f.name.endswith(".kv"):
                    continue
                try:
                    st = f.stat()
                    found.append((st.st_mtime, int(f.name[:-3], 16), st.st_size))
                except (OSError, ValueError):
                    continue
        found.sort()
        with self._lock:
            self._files = OrderedDict((h, size) for _, h, size in found)
            self._bytes = sum(self._files.values())
            self._scanned = time.monotonic()

    def _maybe_rescan(self) -> None:
        if time.monotonic() - self._scanned > self.rescan_s:
            self._scan()

    def contains(self, h: int) -> bool:
        with self._lock:
            if h in self._files:
                return True
        return self._path(h).is_file()  # written by another worker since the last scan

    def get(self, h: int) -> bytearray | None:
        path = self._path(h)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                buf = bytearray(size)
                if f.readinto(buf) != size:
                    return None
            os.utime(path)  # LRU across processes
        except OSError:
            with self._lock:
                self.misses += 1
            return None
        with self._lock:
            self._files[h] = size
            self._files.move_to_end(h)
            self.hits += 1
        return buf

    def put(self, h: int, blob: bytes) -> list[int]:
        path = self._path(h)
        if path.is_file():
            return []
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
        with self._lock:
            if h not in self._files:
                self._bytes += len(blob)
            self._files[h] = len(blob)
            self.writes += 1
        self._maybe_rescan()
        return self._evict()

    def _evict(self) -> list[int]:
        gone: list[int] = []
        while True:
            with self._lock:
                if self._bytes <= self.max_bytes or not self._files:
                    break
                h, size = self._files.popitem(last=False)
                self._bytes -= size
                self.evictions += 1
            try:
                self._path(h).unlink()
            except FileNotFoundError:
                pass
            gone.append(h)
        return gone

    def delete(self, h: int) -> None:
        with self._lock:
            size = self._files.pop(h, None)
            if size is not None:
                self._bytes -= size
        try:
            self._path(h).unlink()
        except FileNotFoundError:
            pass

    def hashes(self) -> list[int]:
        self._maybe_rescan()
        with self._lock:
            return list(self._files)

    def stats(self) -> dict:
        with self._lock:
            return {"id": self.id, "blocks": len(self._files), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses, "writes": self.writes,
                    "evictions": self.evictions}


def make_store(spec: str, namespace: str, max_bytes: int) -> BlockStore | None:
    """The L3 store named by `spec` ("dir:PATH", or "none"); `namespace` keeps
    models and dtypes apart (a blob is only valid for the model that made it)."""
    if not spec or spec == "none":
        return None
    kind, _, where = spec.partition(":")
    if kind == "dir" and where:
        return DirStore(Path(where) / namespace, max_bytes)
    raise ValueError(f"unknown L3 store {spec!r}; use dir:PATH or none")
