"""KVPool: block allocation, reference counts and slot addressing (tiny dims, no model)."""

from __future__ import annotations

import pytest
import torch

from engine.kvcache.pool import KVPool


def make_pool(num_blocks: int = 6, block_size: int = 4) -> KVPool:
    return KVPool(num_blocks, block_size, num_layers=2, num_kv_heads=1, head_dim=2, dtype=torch.float32)


def test_allocate_hands_out_distinct_referenced_blocks():
    pool = make_pool()
    a = pool.allocate(4)
    assert len(set(a)) == 4
    assert all(pool.ref[b] == 1 for b in a)
    assert pool.num_free == 2
    assert pool.can_allocate(2) and not pool.can_allocate(3)
    b = pool.allocate(2)
    assert not set(a) & set(b)
    assert pool.num_free == 0


def test_allocating_more_than_free_is_refused():
    pool = make_pool(num_blocks=2)
    with pytest.raises(AssertionError):
        pool.allocate(3)
    assert pool.num_free == 2  # nothing was taken by the failed call


def test_free_returns_a_block_once_unreferenced():
    pool = make_pool()
    (b,) = pool.allocate(1)
    with pytest.raises(AssertionError):
        pool.free(b)  # still referenced
    pool.incref(b)
    assert pool.decref(b) == 1
    assert pool.decref(b) == 0
    with pytest.raises(AssertionError):
        pool.decref(b)  # released twice
    pool.free(b)
    assert pool.num_free == pool.num_blocks


def test_slots_address_tokens_through_the_block_table():
    pool = make_pool(block_size=4)
    # Tokens 0..5 of a sequence whose table is [3, 1]: block 3 holds tokens 0-3, block 1 tokens 4-5.
    assert pool.slots([3, 1], 6).tolist() == [12, 13, 14, 15, 4, 5]
    assert pool.slots([3, 1], 6, start=3).tolist() == [15, 4, 5]
    assert pool.slots([3, 1], 8, start=7).tolist() == [7]
    with pytest.raises(AssertionError):
        pool.slots([3, 1], 9)  # more tokens than the table covers


def test_flat_views_write_through_to_the_block_layout():
    pool = make_pool(block_size=4)
    k_flat, v_flat = pool.flat(1)
    slots = pool.slots([2], 3, start=2)  # token 2 of block 2
    k_flat.index_copy_(1, slots, torch.tensor([[[1.5, -2.0]]]))  # [heads 1, tokens 1, dim 2]
    v_flat.index_copy_(1, slots, torch.tensor([[[3.0, 4.0]]]))
    assert pool.k[1, 0, 2, 2].tolist() == [1.5, -2.0]  # [layer, head, block, offset]
    assert pool.v[1, 0, 2, 2].tolist() == [3.0, 4.0]
    assert pool.k[0].abs().sum() == 0  # other layers untouched
    assert pool.k[1].abs().sum() == 3.5


def test_bytes_counts_k_and_v():
    pool = make_pool(num_blocks=6, block_size=4)
    # 2 (k, v) × layers 2 × blocks 6 × block 4 × heads 1 × dim 2 × 4 bytes
    assert pool.bytes() == 2 * 2 * 6 * 4 * 1 * 2 * 4


def test_gather_read_and_write_agree_with_the_flat_slots():
    pool = KVPool(5, 4, num_layers=2, num_kv_heads=2, head_dim=3, dtype=torch.float32)
    table = [3, 1]  # tokens 0-3 in block 3, 4-7 in block 1
    k_new = torch.arange(8 * 2 * 3, dtype=torch.float32).view(8, 2, 3)  # [tokens, heads, dim]
    k_flat, v_flat = pool.flat(1)
    k_flat.index_copy_(1, pool.slots(table, 8), k_new.transpose(0, 1))
    v_flat.index_copy_(1, pool.slots(table, 8), -k_new.transpose(0, 1))
    k, v = pool.gather(1, torch.tensor(table))  # [heads, tokens, dim], in the sequence's order
    assert torch.equal(k, k_new.transpose(0, 1)) and torch.equal(v, -k_new.transpose(0, 1))
    assert pool.gather(0, torch.tensor(table))[0].abs().sum() == 0  # layer 0 untouched
    rk, rv = pool.read(torch.tensor(table))  # [layers, blocks, heads, bs, dim]
    assert rk.shape == (2, 2, *pool.block_shape[1:]) and pool.block_shape == (2, 2, 4, 3)
    assert torch.equal(rk[1, 1, 0], k_new[4:8, 0]) and torch.equal(rv[1, 0, 1], -k_new[0:4, 1])
    pool.write(torch.tensor([0, 2]), rk, rv)  # copies of blocks 3, 1 into 0, 2
    assert torch.equal(pool.gather(1, torch.tensor([0, 2]))[0], k)
    assert torch.equal(pool.gather(1, torch.tensor([2]))[1], -k_new[4:8].transpose(0, 1))
