"""How many draft tokens to propose: the draft length that gives the most tokens
per unit of step cost, adapted per request from the acceptance its recent
verifies showed.

Accepted drafts are successes and a rejection ends a run, so the per-token
acceptance p is estimated geometrically with forgetting. Inside copied text a
miss is a passing divergence; in free text misses are the rule, and where no
length pays for its extra rows, proposing backs off exponentially.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.request import Request

PUSH_EMA = 0.4  # acceptance (EMA) above which a miss does not pause speculation
DECAY = 0.8  # per verify: how fast the acceptance estimate forgets


class DraftLength:
    def __init__(self, max_draft: int, row_cost: Callable[[int], float] | None = None):
        self.max_draft = max_draft
        # what a step of m rows costs against one row (MatmulPlan.relative_cost)
        self.row_cost = row_cost or (lambda m: 1.0)

    def next_k(self, req: Request) -> int:
        """Drafts to propose for req this step (0 while it pauses), capped so the bonus token is the last one."""
        if not self.max_draft or not req.can_speculate:
            return 0
        if req.spec_cooldown > 0:
            req.spec_cooldown -= 1
            return 0
        room = req.params.max_new_tokens - len(req.output_ids) - 1
        return min(req.spec_k or self.max_draft, room)

    def observe(self, req: Request, proposed: int, accepted: int) -> None:
        """Account one verify of `proposed` drafts and adapt req's next draft length."""
        req.spec_verify_ct += 1
        req.spec_proposed += proposed
        req.spec_accepted += accepted
        req.spec_ema = 0.5 * req.spec_ema + 0.5 * (accepted / proposed)
        req.spec_hits = DECAY * req.spec_hits + accepted
        req.spec_rejects = DECAY * req.spec_rejects + (accepted < proposed)
        p = (req.spec_hits + 1.0) / (req.spec_hits + req.spec_rejects + 2.0)
        req.spec_k, gain = self.best(p)
        if gain < 1.0 or accepted == 0 and req.spec_ema < PUSH_EMA:
            req.spec_misses += 1
            req.spec_cooldown = min(64, 2 ** (req.spec_misses + 1))
            req.spec_k = min(req.spec_k, 2)  # the probe after the pause is a short one
        elif accepted:
            req.spec_misses = 0

    def best(self, p: float) -> tuple[int, float]:
        """(k, gain): the draft length in 1..max_draft with the most expected tokens per step cost,
        (1 + p + … + p^k) / cost(1 + k), and that gain over plain decoding."""
        best, gain, expected = 1, 0.0, 1.0
        for k in range(1, self.max_draft + 1):
            expected += p ** k
            g = expected / self.row_cost(1 + k)
            if g > gain:
                best, gain = k, g
        return best, gain
