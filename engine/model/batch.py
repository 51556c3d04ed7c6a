"""ForwardBatch: the plain data one model step reads, built by the scheduler.

Tokens of all sequences are packed along one axis T. Sequences with a few query
rows each (a decode: 1; a verify: 1 + drafts) form one ShortGroup, attended
together in batched matmuls, a prefix that several of them share (the same pool
blocks: a system prompt, a conversation) read once for all of them; prompt
chunks follow as segments. Every token's K/V is written to its pool slot before
attention reads the pool.
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
class SharedPrefix:
    """Sequences [start, end) of a ShortGroup, whose block tables start with the same blocks."""

    start: int
    end: int
    blocks: torch.Tensor  # [s] long: the blocks they share, all before every query of theirs


@dataclass
class ShortGroup:
    """B sequences with at most n query rows each, padded to [B, n] queries over [B, nb_max] blocks.
    `tables` hold each sequence's own blocks: all of them, or those after its shared prefix.
    Every query sees the own columns before `mask_from`; `hide` masks the rest (causality,
    padding). A padded query repeats its sequence's last row (same mask, so no row is all
    -inf); only `src` → `dst` results are kept."""

    rows: torch.Tensor  # [B, n] long: packed-batch row of each query
    tables: torch.Tensor  # [B, nb_max] long: own block ids (padding points at block 0)
    mask_from: int
    hide: torch.Tensor  # [B, n, nb_max·block_size - mask_from] bool, True = may not attend
    src: torch.Tensor  # [Q] long: flat indices into [B·n] of the real queries
    dst: torch.Tensor  # [Q] long: their packed-batch rows
    shared: list[SharedPrefix]


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long
    write_slots: torch.Tensor  # [T] long: pool slot of each token's K/V
    short: ShortGroup | None  # decodes and verifies
    prefills: list[PrefillSegment]  # prompt chunks
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
        g = self.short
        short = ShortGroup(mv(g.rows), mv(g.tables), g.mask_from, mv(g.hide), mv(g.src), mv(g.dst),
                           [SharedPrefix(p.start, p.end, mv(p.blocks)) for p in g.shared]) if g else None
        return ForwardBatch(mv(self.input_ids), mv(self.positions), mv(self.write_slots), short, segs,
                            mv(self.logit_rows))


def build_prefill_segment(start: int, n: int, prefix_len: int, blocks: list[int], block_size: int) -> PrefillSegment:
    if prefix_len == 0:
        return PrefillSegment(start, start + n, 0, None, None)
    nb = -(-(prefix_len + n) // block_size)
    cols = torch.arange(nb * block_size)
    rows = torch.arange(n) + prefix_len
    mask = cols[None, :] <= rows[:, None]  # [n, nb·bs]: causal, offset by the cached prefix
    return PrefillSegment(start, start + n, prefix_len, torch.tensor(blocks[:nb], dtype=torch.long), mask)


# A prefix shared by fewer blocks is cheaper to read per sequence than to split the attention for.
MIN_SHARED_BLOCKS = 8


def shared_prefixes(seqs: list[tuple[int, int, int, list[int]]], block_size: int,
                    min_blocks: int | None = None) -> list[tuple[list[int], int]]:
    """(members, shared block count) for each set of ≥ 2 sequences whose tables start with the
    same block, sharing at least min_blocks (default MIN_SHARED_BLOCKS) blocks that lie before
    all their queries."""
    min_blocks = MIN_SHARED_BLOCKS if min_blocks is None else min_blocks
    by_first: dict[int, list[int]] = {}
    for i, (_, n, ctx, table) in enumerate(seqs):
        if (ctx - n) // block_size >= min_blocks:
            by_first.setdefault(table[0], []).append(i)
    out = []
    for members in by_first.values():
        if len(members) < 2:
            continue
        first = seqs[members[0]][3]
        common = min((seqs[i][2] - seqs[i][1]) // block_size for i in members)  # full blocks before any query
        for i in members[1:]:
            table = seqs[i][3]
            same = 0
            while same < common and table[same] == first[same]:
                same += 1
            common = same
        if common >= min_blocks:
            out.append((members, common))
    return out


def build_short_group(seqs: list[tuple[int, int, int, list[int]]], block_size: int,
                      share: bool = True) -> ShortGroup:
    """seqs: (first row in the packed batch, query rows n, context length after them, block table).
    Query j of a sequence sits at position ctx - n + j and attends to positions ≤ its own.
    Sequences that share a prefix are placed next to each other, so attention reads them as slices."""
    groups = shared_prefixes(seqs, block_size) if share else []
    order: list[int] = [i for members, _ in groups for i in members]
    order += sorted(set(range(len(seqs))) - set(order))
    skip = [0] * len(seqs)  # blocks of each sequence read through its shared prefix
    shared, at = [], 0
    for members, common in groups:
        for i in members:
            skip[i] = common
        table = seqs[members[0]][3][:common]
        shared.append(SharedPrefix(at, at + len(members), torch.tensor(table, dtype=torch.long)))
        at += len(members)
    B = len(seqs)
    n_max = max(n for _, n, _, _ in seqs)
    nb_max = max(-(-ctx // block_size) - skip[i] for i, (_, _, ctx, _) in enumerate(seqs))
    rows = torch.empty(B, n_max, dtype=torch.long)
    tables = torch.zeros(B, nb_max, dtype=torch.long)
    last = torch.empty(B, n_max, dtype=torch.long)  # own column of each (padded) query
    src: list[int] = []
    dst: list[int] = []
    query = torch.arange(n_max)
    for slot, i in enumerate(order):
        row, n, ctx, table = seqs[i]
        j = query.clamp(max=n - 1)
        rows[slot] = row + j
        last[slot] = ctx - n + j - skip[i] * block_size
        nb = -(-ctx // block_size)
        tables[slot, :nb - skip[i]] = torch.tensor(table[skip[i]:nb], dtype=torch.long)
        src.extend(range(slot * n_max, slot * n_max + n))
        dst.extend(range(row, row + n))
    mask_from = int(last.min()) + 1  # every query sees the own columns before this one
    hide = torch.arange(mask_from, nb_max * block_size)[None, None, :] > last[:, :, None]
    return ShortGroup(rows, tables, mask_from, hide, torch.tensor(src, dtype=torch.long),
                      torch.tensor(dst, dtype=torch.long), shared)
