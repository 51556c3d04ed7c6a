"""A scheduled step: which requests prefill how many tokens, which decode (or verify drafts), which
rows give logits, and the packed tensors the embedded model computes the step on."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.kvcache.pool import KVPool
from engine.model.batch import ForwardBatch, build_prefill_segment, build_short_group
from engine.request import Request


@dataclass
class ScheduledBatch:
    forward: ForwardBatch
    sampled: list[tuple[Request, int]]  # (request, its logit rows) in row order: 1, or 1 + drafts
    chunks: list[tuple[Request, int]]  # (request, tokens prefilled this step)
    decodes: list[Request]  # plain decodes and verify segments alike

    @property
    def requests(self) -> list[Request]:
        return [r for r, _ in self.sampled]


def forward_tensors(pool: KVPool, decodes: list[Request], chunks: list[tuple[Request, int]]) -> ForwardBatch:
    """The model input of a step: decode and verify rows first, then the prompt chunks."""
    bs = pool.block_size
    ids: list[int] = []
    positions: list[int] = []
    write: list[torch.Tensor] = []
    prefills, logit_rows, short, row = [], [], [], 0
    for req in decodes:
        # a decode: its last token; a verify: that token + its drafts, every row's logits wanted
        pos, n = req.num_computed, 1 + len(req.draft)
        ids.append(req.all_ids[pos])
        ids.extend(req.draft)
        positions.extend(range(pos, pos + n))
        write.append(pool.slots(req.blocks, pos + n, pos))
        short.append((row, n, pos + n, req.blocks))
        logit_rows.extend(range(row, row + n))
        row += n
    for req, n in chunks:
        start = req.num_computed
        ids.extend(req.fill_ids[start:start + n])
        positions.extend(range(start, start + n))
        write.append(pool.slots(req.blocks, start + n, start))  # [n]
        prefills.append(build_prefill_segment(row, n, start, req.blocks, bs))
        row += n
        if start + n == len(req.fill_ids):  # last chunk: its final row gives the next token
            logit_rows.append(row - 1)
    return ForwardBatch(
        input_ids=torch.tensor(ids, dtype=torch.long),
        positions=torch.tensor(positions, dtype=torch.long),
        write_slots=torch.cat(write),
        short=build_short_group(short, bs) if short else None,
        prefills=prefills,
        logit_rows=torch.tensor(logit_rows, dtype=torch.long),
    )
