"""The batched attention of decodes and verifies against torch's SDPA, one sequence at a time:
mixed query counts and context lengths in one group, padding never leaking into a result."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.kvcache.pool import KVPool
from engine.model.batch import build_short_group
from engine.model.llama import short_attention

BS, HKV, HQ, D = 4, 2, 6, 8


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_short_group_matches_sdpa_per_sequence(dtype, atol):
    torch.manual_seed(0)
    pool = KVPool(32, BS, num_layers=1, num_kv_heads=HKV, head_dim=D, dtype=dtype)
    pool.k.copy_(torch.randn(pool.k.shape))
    pool.v.copy_(torch.randn(pool.v.shape))
    # (query rows, context length after them, block table): a decode, a verify of 4, a verify ending a block
    seqs = [(1, 7, [5, 9]), (4, 13, [2, 11, 20, 3]), (3, 8, [30, 31, 0])]
    rows, group = 0, []
    for n, ctx, table in seqs:
        group.append((rows, n, ctx, table))
        rows += n
    g = build_short_group(group, BS)
    q = torch.randn(rows + 2, HQ, D).to(dtype)  # two more rows belong to someone else: never written
    kd, vd = pool.gather(0, g.tables.view(-1))
    B, n = g.rows.shape
    o = short_attention(q[g.rows.view(-1)].view(B, n, HQ, D), kd.view(HKV, B, -1, D), vd.view(HKV, B, -1, D),
                        g.mask_from, g.hide)
    out = torch.full((rows + 2, HQ * D), 7.0, dtype=dtype)
    out[g.dst] = o.reshape(B * n, HQ * D)[g.src]
    assert torch.equal(out[rows:], torch.full((2, HQ * D), 7.0, dtype=dtype))
    for (row, n, ctx, table) in group:
        ks, vs = pool.gather(0, torch.tensor(table))
        qs = q[row:row + n].transpose(0, 1).unsqueeze(0)  # [1, Hq, n, d]
        mask = torch.arange(ks.shape[1])[None, :] <= (torch.arange(n) + ctx - n)[:, None]
        ref = F.scaled_dot_product_attention(qs.float(), ks.unsqueeze(0).float(), vs.unsqueeze(0).float(),
                                             attn_mask=mask, enable_gqa=True)
        got = out[row:row + n].view(n, HQ, D).transpose(0, 1)
        torch.testing.assert_close(got.float(), ref[0], rtol=atol, atol=atol)
