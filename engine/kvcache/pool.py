"""L1: the attention-ready KV pool — fixed torch tensors handed out in blocks.

Layout: k[layer] and v[layer] are [kv_heads, num_blocks, block_size, head_dim]
(head-major); token t of block b lives at flat slot b * block_size + t of each
head. Attention gathers whole blocks (one index per 16 tokens) and gets each
sequence's context as a contiguous [kv_heads, tokens, head_dim], the layout its
matmuls read without another copy; writes go to flat slots. Reference counts say how
many running requests read a block; the radix cache decides what an
unreferenced block is (cached, evictable) or whether it goes back to the free list.
"""

from __future__ import annotations

from collections import deque

import torch


class KVPool:
    def __init__(self, num_blocks: int, block_size: int, num_layers: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: str | torch.device = "cpu"):
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (num_layers, num_kv_heads, num_blocks, block_size, head_dim)
        # [layers, kv_heads, blocks, block_size, head_dim]
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._free: deque[int] = deque(range(num_blocks))
        self.ref = [0] * num_blocks
        self._offsets = torch.arange(block_size, dtype=torch.long)

    # -- allocation -------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    def can_allocate(self, n: int) -> bool:
        return len(self._free) >= n

    def allocate(self, n: int) -> list[int]:
        assert self.can_allocate(n), f"pool has {len(self._free)} free blocks, {n} asked"
        blocks = [self._free.popleft() for _ in range(n)]
        for b in blocks:
            assert self.ref[b] == 0
            self.ref[b] = 1
        return blocks

    def free(self, block: int) -> None:
        assert self.ref[block] == 0, f"block {block} still referenced"
        self._free.append(block)

    # -- reference counts ------------------------------------------------------
    def incref(self, block: int) -> None:
        self.ref[block] += 1

    def decref(self, block: int) -> int:
        assert self.ref[block] > 0, f"block {block} released twice"
        self.ref[block] -= 1
        return self.ref[block]

    # -- addressing -------------------------------------------------------------
    @property
    def block_shape(self) -> tuple[int, ...]:
        """One block's K (or V) across layers: [layers, kv_heads, block_size, head_dim]."""
        layers, heads, _, bs, d = self.k.shape
        return layers, heads, bs, d

    def flat(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v of one layer as [kv_heads, num_blocks * block_size, head_dim] views."""
        k, v = self.k[layer], self.v[layer]
        return k.view(k.shape[0], -1, k.shape[-1]), v.view(v.shape[0], -1, v.shape[-1])

    def gather(self, layer: int, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V of these blocks of one layer, concatenated: [kv_heads, len(blocks)·block_size, head_dim]."""
        k, v = self.k[layer], self.v[layer]
        shape = (k.shape[0], -1, k.shape[-1])
        return k.index_select(1, blocks).view(shape), v.index_select(1, blocks).view(shape)

    def read(self, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of whole blocks across layers, [layers, n, *block_shape[1:]] (the tiers' layout)."""
        return self.k.index_select(2, blocks).transpose(1, 2), self.v.index_select(2, blocks).transpose(1, 2)

    def write(self, blocks: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Fill these blocks from [layers, n, *block_shape[1:]] K/V (read()'s layout)."""
        self.k[:, :, blocks] = k.transpose(1, 2)
        self.v[:, :, blocks] = v.transpose(1, 2)

    def slots(self, blocks: list[int], num_tokens: int, start: int = 0) -> torch.Tensor:
        """Flat slot indices [num_tokens - start] of tokens [start, num_tokens) of a
        sequence with this block table."""
        assert num_tokens <= len(blocks) * self.block_size
        table = torch.tensor(blocks, dtype=torch.long)
        # [blocks, block_size] -> [blocks * block_size]
        flat = (table[:, None] * self.block_size + self._offsets[None, :]).view(-1)
        return flat[start:num_tokens]

    def bytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
