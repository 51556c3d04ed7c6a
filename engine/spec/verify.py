"""Verification of draft tokens against the model's own next-token rows.

rows[i] are the logits after feeding [last token, d_0, ..., d_{i-1}], i.e. the
model's prediction for the position where d_i was proposed; rows has
len(drafts) + 1 entries, the last one predicting the token after all drafts.

Greedy: accept the longest prefix where d_i == argmax(rows[i]), then append
argmax of the first row that disagrees (or of the last row): exactly the
tokens plain greedy decoding produces.

Sampling: the standard speculative-sampling rule for a deterministic draft
(q(d_i) = 1): accept d_i with probability p_i(d_i); on rejection draw from p_i
with d_i removed and renormalized, i.e. (p_i - q_i)+; if every draft passes,
draw the bonus token from the last row. The output distribution is exactly
the model's.
"""

from __future__ import annotations

import torch

from engine.sampling import probs
from engine.request import Request


def verify(rows: torch.Tensor, drafts: list[int], req: Request) -> tuple[list[int], int]:
    """rows [len(drafts) + 1, vocab] → (tokens to append, number of drafts accepted)."""
    assert rows.shape[0] == len(drafts) + 1
    if req.params.greedy:
        targets = rows.argmax(dim=-1).tolist()
        j = 0
        while j < len(drafts) and drafts[j] == targets[j]:
            j += 1
        return drafts[:j] + [targets[j]], j
    out: list[int] = []
    for i, d in enumerate(drafts):
        p = probs(rows[i], req)
        if float(torch.rand(1, generator=req.generator)) < float(p[d]):
            out.append(d)
            continue
        p[d] = 0.0
        total = float(p.sum())
        if total <= 0.0:  # the draft held all the mass; nothing else to draw
            out.append(d)
            continue
        out.append(int(torch.multinomial(p / total, 1, generator=req.generator)))
        return out, i
    out.append(int(torch.multinomial(probs(rows[-1], req), 1, generator=req.generator)))
    return out, len(drafts)
