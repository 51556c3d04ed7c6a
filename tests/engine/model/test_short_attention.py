"""The batched attention of decodes and verifies against torch's SDPA, one sequence at a time:
mixed query counts and context lengths in one group, padding never leaking into a result, and
prefixes that several sequences share read once for all of them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.kvcache.pool import KVPool
from engine.model.batch import build_short_group, shared_prefixes
from engine.model.llama import short_attention

BS, HKV, HQ, D = 4, 2, 6, 8


def attend(pool, group, q, share):
    g = build_short_group(group, BS, share=share)
    kd, vd = pool.gather(0, g.tables.view(-1))
    B, n = g.rows.shape
    shared = [(p.start, p.end, *pool.gather(0, p.blocks)) for p in g.shared]
    o = short_attention(q[g.rows.view(-1)].view(B, n, HQ, D), kd.view(HKV, B, -1, D), vd.view(HKV, B, -1, D),
                        g.mask_from, g.hide, shared)
    out = torch.full((q.shape[0], HQ * D), 7.0, dtype=q.dtype)
    out[g.dst] = o.reshape(B * n, HQ * D)[g.src]
    return out, g


def reference(pool, row, n, ctx, table, q):
    ks, vs = pool.gather(0, torch.tensor(table))
    qs = q[row:row + n].transpose(0, 1).unsqueeze(0)  # [1, Hq, n, d]
    mask = torch.arange(ks.shape[1])[None, :] <= (torch.arange(n) + ctx - n)[:, None]
    ref = F.scaled_dot_product_attention(qs.float(), ks.unsqueeze(0).float(), vs.unsqueeze(0).float(),
                                         attn_mask=mask, enable_gqa=True)
    return ref[0].transpose(0, 1).reshape(n, HQ * D)


def filled_pool(dtype, blocks=64):
    torch.manual_seed(0)
    pool = KVPool(blocks, BS, num_layers=1, num_kv_heads=HKV, head_dim=D, dtype=dtype)
    pool.k.copy_(torch.randn(pool.k.shape))
    pool.v.copy_(torch.randn(pool.v.shape))
    return pool


def packed(seqs):
    rows, group = 0, []
    for n, ctx, table in seqs:
        group.append((rows, n, ctx, table))
        rows += n
    return group, rows


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_short_group_matches_sdpa_per_sequence(dtype, atol):
    pool = filled_pool(dtype, blocks=32)
    # (query rows, context length after them, block table): a decode, a verify of 4, a verify ending a block
    group, rows = packed([(1, 7, [5, 9]), (4, 13, [2, 11, 20, 3]), (3, 8, [30, 31, 0])])
    q = torch.randn(rows + 2, HQ, D).to(dtype)  # two more rows belong to someone else: never written
    out, g = attend(pool, group, q, share=True)
    assert g.shared == []
    assert torch.equal(out[rows:], torch.full((2, HQ * D), 7.0, dtype=dtype))
    for row, n, ctx, table in group:
        torch.testing.assert_close(out[row:row + n].float(), reference(pool, row, n, ctx, table, q), rtol=atol,
                                   atol=atol)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_a_shared_prefix_is_read_once_and_changes_nothing(dtype, atol):
    pool = filled_pool(dtype)
    system = list(range(40, 50))  # 10 blocks = 40 tokens that three sequences share
    seqs = [(2, 30, [9, 10, 11, 12, 13, 14, 15, 16]),  # no sharing (first: the sharers get moved together)
            (1, 45, system + [1, 2]),  # a decode 5 tokens past the prefix
            (5, 52, system + [3, 4, 5]),  # a verify of 5
            (1, 33, [20, 21, 22, 23, 24, 25, 26, 27, 28]),  # starts elsewhere
            (1, 41, system + [6]),  # a decode just past it
            (3, 44, system[:9] + [7, 8])]  # shares 9 of its blocks only: the shared part shrinks to 9
    group, rows = packed(seqs)
    assert shared_prefixes(group, BS, min_blocks=8) == [([1, 2, 4, 5], 9)]
    assert shared_prefixes(group, BS, min_blocks=10) == []
    q = torch.randn(rows, HQ, D).to(dtype)
    out, g = attend(pool, group, q, share=True)
    assert [(p.start, p.end) for p in g.shared] == [(0, 4)] and g.shared[0].blocks.tolist() == system[:9]
    plain, _ = attend(pool, group, q, share=False)
    torch.testing.assert_close(out.float(), plain.float(), rtol=atol, atol=atol)
    for row, n, ctx, table in group:
        torch.testing.assert_close(out[row:row + n].float(), reference(pool, row, n, ctx, table, q), rtol=atol,
                                   atol=atol)
