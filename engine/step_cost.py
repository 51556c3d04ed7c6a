"""What a forward step costs on this worker, learned from the steps it ran:
seconds ≈ step_s + row_s × decode rows + token_s × prompt tokens.

`step_s` is what every step pays whatever it runs (reading the weights once, launching kernels,
Python); `row_s` is what each decode row adds (a decoding request or a verified draft: one token
attending over its whole context); `token_s` what each prompt token adds (prefill, prefetch). On a
CPU a decode row of a 1,000-token context costs about three prompt tokens; on a GPU both are a
sliver of a step. The worker publishes all three in /get_load, and the gateway's kv_aware policy
weighs a call's placement with them (gateway/router/policies/kv_aware.py): where rows and tokens
are cheap next to `step_s` (a GPU), a call joins the worker that holds its prefix; where they are
not (a CPU), an idle worker finishes a stage's calls sooner than a busy holder.

The fit is least squares with exponential forgetting (the last ~`memory` steps count), so it
follows the machine as it changes (another worker starts on the host, the cache warms). Rows and
prompt tokens get slopes of their own once the steps seen tell them apart (both varied, and not in
step with each other); until then one slope serves both, over all the step's tokens. It says
nothing until it has seen steps of different sizes: a slope from equal sizes is noise.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

MIN_STEPS = 8
MIN_SPREAD_TOKENS = 4.0  # standard deviation of the step sizes seen, before a slope is trusted
MAX_SHARED_VARIANCE = 0.9  # rows and prompt tokens that move together this closely cannot be told apart


class Costs(NamedTuple):
    step_s: float
    row_s: float
    token_s: float


class StepCost:
    def __init__(self, memory: int = 200):
        self.decay = 1.0 - 1.0 / memory
        self._lock = threading.Lock()
        self._n = 0
        # exponentially weighted sums: weight, rows r, prompt tokens p, seconds y and their products
        self._s = dict.fromkeys(("w", "r", "p", "y", "rr", "pp", "rp", "ry", "py"), 0.0)
        self._fit: Costs | None = None

    def observe(self, rows: int, prompt: int, seconds: float) -> None:
        """One step of `rows` decode rows and `prompt` prompt tokens took `seconds` (the engine thread)."""
        if rows + prompt <= 0 or seconds <= 0:
            return
        r, p, y = float(rows), float(prompt), seconds
        terms = {"w": 1.0, "r": r, "p": p, "y": y, "rr": r * r, "pp": p * p, "rp": r * p, "ry": r * y, "py": p * y}
        with self._lock:
            self._n += 1
            s = self._s
            for key, value in terms.items():
                s[key] = s[key] * self.decay + value
            self._refit()

    def _refit(self) -> None:
        if self._n < MIN_STEPS:
            return
        s = self._s
        w = s["w"]
        mr, mp, my = s["r"] / w, s["p"] / w, s["y"] / w
        vrr, vpp = s["rr"] / w - mr * mr, s["pp"] / w - mp * mp
        vrp = s["rp"] / w - mr * mp
        cry, cpy = s["ry"] / w - mr * my, s["py"] / w - mp * my
        spread = MIN_SPREAD_TOKENS ** 2
        det = vrr * vpp - vrp * vrp
        if vrr >= spread and vpp >= spread and vrp * vrp <= MAX_SHARED_VARIANCE * vrr * vpp:
            row_s = max((cry * vpp - cpy * vrp) / det, 0.0)
            token_s = max((cpy * vrr - cry * vrp) / det, 0.0)
        else:  # one slope over all the step's tokens
            vtt = vrr + 2 * vrp + vpp
            if vtt < spread:
                return  # keep the last trusted fit
            row_s = token_s = max((cry + cpy) / vtt, 0.0)
        step_s = max(my - row_s * mr - token_s * mp, 0.0)
        self._fit = Costs(step_s, row_s, token_s)

    def estimate(self) -> Costs | None:
        """(step_s, row_s, token_s), or None before the fit can be trusted."""
        with self._lock:
            return self._fit

    def as_load(self) -> dict:
        fit = self.estimate()
        if fit is None:
            return {}
        return {"step_s": round(fit.step_s, 6), "row_s": round(fit.row_s, 7), "token_s": round(fit.token_s, 7)}
