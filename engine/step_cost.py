"""What a forward step costs on this worker, learned from the steps it ran: seconds ≈ step_s + token_s × tokens.

`step_s` is what every step pays whatever it runs (reading the weights once, launching kernels,
Python); `token_s` is what each token in the step adds (a decode row, a verified draft or a prompt
token). The worker publishes both in /get_load, and the gateway's kv_aware policy weighs a call's
placement with them (gateway/router/policies/kv_aware.py): where `token_s` is small next to
`step_s` (a GPU), a call joins the worker that holds its prefix; where it is not (a CPU), an idle
worker finishes a stage's calls sooner than a busy holder.

The fit is least squares with exponential forgetting (the last ~`memory` steps count), so it
follows the machine as it changes (another worker starts on the host, the cache warms). It says
nothing until it has seen steps of different sizes: a slope from equal sizes is noise.
"""

from __future__ import annotations

import threading

MIN_STEPS = 8
MIN_SPREAD_TOKENS = 4.0  # standard deviation of the step sizes seen, before a slope is trusted


class StepCost:
    def __init__(self, memory: int = 200):
        self.decay = 1.0 - 1.0 / memory
        self._lock = threading.Lock()
        self._n = 0
        self._w = self._x = self._xx = self._y = self._xy = 0.0
        self._fit: tuple[float, float] | None = None

    def observe(self, tokens: int, seconds: float) -> None:
        """One step of `tokens` tokens took `seconds` (called from the engine thread)."""
        if tokens <= 0 or seconds <= 0:
            return
        d, x, y = self.decay, float(tokens), seconds
        with self._lock:
            self._n += 1
            self._w = self._w * d + 1.0
            self._x = self._x * d + x
            self._xx = self._xx * d + x * x
            self._y = self._y * d + y
            self._xy = self._xy * d + x * y
            self._refit()

    def _refit(self) -> None:
        if self._n < MIN_STEPS:
            return
        mean_x, mean_y = self._x / self._w, self._y / self._w
        var_x = self._xx / self._w - mean_x * mean_x
        if var_x < MIN_SPREAD_TOKENS ** 2:
            return  # keep the last trusted fit
        slope = (self._xy / self._w - mean_x * mean_y) / var_x
        slope = max(slope, 0.0)
        intercept = max(mean_y - slope * mean_x, 0.0)
        self._fit = (intercept, slope)

    def estimate(self) -> tuple[float, float] | None:
        """(step_s, token_s), or None before the fit can be trusted."""
        with self._lock:
            return self._fit

    def as_load(self) -> dict:
        fit = self.estimate()
        return {} if fit is None else {"step_s": round(fit[0], 6), "token_s": round(fit[1], 7)}
