"""L2 (HostPool) and L3 (DirStore + blob codec) on their own: LRU, size bounds,
and a corrupt, partial or foreign blob is a miss, never served."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from engine.kvcache.host import HostEntry, HostPool
from engine.kvcache.store import DirStore, decode_block, encode_block, make_store

LAYERS, BS, KVH, D = 2, 4, 1, 3
SHAPE = (LAYERS, KVH, BS, D)


def kv(n: int, base: float = 0.0, dtype=torch.float32):
    """K/V for n blocks in the tiers' layout [layers, n, kvh, bs, d], every block distinct."""
    k = torch.arange(LAYERS * n * KVH * BS * D, dtype=torch.float32).view(LAYERS, n, KVH, BS, D) + base
    return k.to(dtype), (-k).to(dtype)


def entries(hashes):
    return [HostEntry(h, None, tuple(range(h, h + BS))) for h in hashes]


def test_host_pool_round_trip_and_lru():
    pool = HostPool(3, LAYERS, BS, KVH, D, torch.float32)
    k, v = kv(3)
    assert pool.put(entries([1, 2, 3]), k, v) == []
    got_k, got_v = pool.get([2, 3])
    assert torch.equal(got_k, k[:, 1:3]) and torch.equal(got_v, v[:, 1:3])
    # 1 is now least recently used: a fourth block pushes it out, with a copy when asked
    k4, v4 = kv(1, base=1000.0)
    evicted = pool.put(entries([4]), k4, v4, keep_copies=True)
    assert [e.entry.hash for e in evicted] == [1]
    assert torch.equal(evicted[0].k, k[:, 0]) and torch.equal(evicted[0].v, v[:, 0])
    assert [h for h in (1, 2, 3, 4) if h in pool] == [2, 3, 4]  # membership agrees with the listing below
    assert sorted(pool.hashes()) == [2, 3, 4]
    assert torch.equal(pool.get([4])[0][:, 0], k4[:, 0])


def test_host_pool_put_existing_only_touches():
    pool = HostPool(2, LAYERS, BS, KVH, D, torch.float32)
    k, v = kv(2)
    pool.put(entries([1, 2]), k, v)
    pool.put(entries([1]), *kv(1, base=5.0))  # already there: content unchanged, now most recent
    assert torch.equal(pool.get([1])[0][:, 0], k[:, 0])
    evicted = pool.put(entries([3]), *kv(1, base=9.0))
    assert [e.entry.hash for e in evicted] == [2]


def test_host_pool_clear():
    pool = HostPool(2, LAYERS, BS, KVH, D, torch.float32)
    pool.put(entries([1, 2]), *kv(2))
    assert pool.clear() == 2 and len(pool) == 0
    pool.put(entries([5, 6]), *kv(2))
    assert set(pool.hashes()) == {5, 6}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blob_round_trip(dtype):
    k, v = kv(1, dtype=dtype)
    blob = encode_block(77, 5, (1, 2, 3, 4), k[:, 0], v[:, 0])
    blk = decode_block(blob, 77, dtype, SHAPE)
    assert blk is not None and blk.parent == 5 and blk.tokens == (1, 2, 3, 4)
    assert torch.equal(blk.k, k[:, 0]) and torch.equal(blk.v, v[:, 0])


def test_blob_damage_is_a_miss():
    k, v = kv(1)
    blob = encode_block(77, None, (1, 2, 3, 4), k[:, 0], v[:, 0])
    flipped = bytearray(blob)
    flipped[len(flipped) // 2] ^= 0x01
    assert decode_block(flipped, 77, torch.float32, SHAPE) is None  # checksum
    assert decode_block(blob[:-100], 77, torch.float32, SHAPE) is None  # partial write
    assert decode_block(blob, 78, torch.float32, SHAPE) is None  # another block's blob
    assert decode_block(blob, 77, torch.bfloat16, SHAPE) is None  # another dtype
    assert decode_block(blob, 77, torch.float32, (LAYERS, BS, KVH, D + 1)) is None  # another model shape
    assert decode_block(b"", 77, torch.float32, SHAPE) is None


def test_dir_store_put_get_and_size_bound(tmp_path):
    k, v = kv(1)
    blob = encode_block(1, None, (0,) * BS, k[:, 0], v[:, 0])
    store = DirStore(tmp_path / "l3", max_bytes=int(len(blob) * 2.5))
    assert store.id == f"dir:{(tmp_path / 'l3').resolve()}"
    assert store.put(1, blob) == [] and store.put(2, blob) == []
    assert store.get(1) is not None  # 1 is now the most recent
    assert store.put(3, blob) == [2]  # over the bound: the least recently used goes
    assert store.contains(1) and store.contains(3) and not store.contains(2)
    assert store.get(2) is None
    assert sorted(store.hashes()) == [1, 3]


def test_dir_store_is_shared_between_instances(tmp_path):
    k, v = kv(1)
    a = DirStore(tmp_path / "l3", max_bytes=1 << 30)
    b = DirStore(tmp_path / "l3", max_bytes=1 << 30)
    a.put(42, encode_block(42, None, (0,) * BS, k[:, 0], v[:, 0]))
    assert b.contains(42)  # written after b's scan: still found
    assert decode_block(b.get(42), 42, torch.float32, SHAPE) is not None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_dir_raises(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(OSError):
            DirStore(ro / "l3", max_bytes=1 << 20)
    finally:
        ro.chmod(stat.S_IRWXU)


def test_unwritable_path_raises_even_for_root(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError):
        make_store(f"dir:{blocker}", "model", 1 << 20)


def test_make_store_specs(tmp_path):
    assert make_store("none", "m", 1) is None
    assert isinstance(make_store(f"dir:{tmp_path}", "m", 1), DirStore)
    with pytest.raises(ValueError):
        make_store("s3://bucket", "m", 1)
