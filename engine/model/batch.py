"""ForwardBatch: the plain data one model step reads, built by the scheduler.

Tokens of all sequences are packed along one axis T. Decode tokens (one per
sequence) come first, rows [0, num_decode); prefill chunks follow as segments.
Every token's K/V is written to its pool slot before attention reads the pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PrefillSegment:
    start: int  # rows [start, end) of the packed batch
    end: int
    prefix_len: int  # tokens of this sequence already in the pool before this chunk
    ctx_blocks: torch.Tensor | None  # [nb] block table covering the context; None if prefix_len == 0
    mask: torch.Tensor | None  # [n, nb·block_size] bool, True = may attend; None if prefix_len == 0


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long
    write_slots: torch.Tensor  # [T] long: pool slot of each token's K/V
    num_decode: int
    decode_tables: torch.Tensor | None  # [B, nb_max] block ids (padding points at block 0)
    decode_mask: torch.Tensor | None  # [B, 1, 1, nb_max·block_size] bool, True = may attend
    prefills: list[PrefillSegment]
    logit_rows: torch.Tensor  # [R] long: rows whose next-token logits are needed

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: str | torch.device) -> "ForwardBatch":
        """The same batch with every tensor on `device` (the scheduler builds it on the CPU)."""
        if str(device) == "cpu":
            return self

        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return t.to(device, non_blocking=True) if t is not None else None

        segs = [PrefillSegment(s.start, s.end, s.prefix_len, mv(s.ctx_blocks), mv(s.mask)) for s in self.prefills]
        return ForwardBatch(mv(self.input_ids), mv(self.positions), mv(self.write_slots), self.num_decode,
                            mv(self.decode_tables), mv(self.decode_mask), segs, mv(self.logit_rows))


def build_prefill_segment(start: int, n: int, prefix_len: int, blocks: list[int], block_size: int) -> PrefillSegment:
    if prefix_len == 0:
        return PrefillSegment(start, start + n, 0, None, None)
    nb = -(-(prefix_len + n) // block_size)
    cols = torch.arange(nb * block_size)
    rows = torch.arange(n) + prefix_len
    mask = cols[None, :] <= rows[:, None]  # [n, nb·bs]: causal, offset by the cached prefix
    return PrefillSegment(start, start + n, prefix_len, torch.tensor(blocks[:nb], dtype=torch.long), mask)


def build_decode_meta(tables: list[list[int]], lens: list[int], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad block tables to [B, nb_max] with a [B, 1, 1, nb_max·block_size] mask
    that admits each sequence's first lens[i] tokens."""
    nb_max = max(-(-n // block_size) for n in lens)
    padded = torch.zeros(len(tables), nb_max, dtype=torch.long)
    for i, (table, n) in enumerate(zip(tables, lens)):
        nb = -(-n // block_size)
        padded[i, :nb] = torch.tensor(table[:nb], dtype=torch.long)
    mask = torch.arange(nb_max * block_size)[None, :] < torch.tensor(lens)[:, None]  # [B, nb_max·bs]
    return padded, mask[:, None, None, :]
