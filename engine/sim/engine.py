"""SimEngine: the embedded engine with the model forward pass replaced by a step-time model.

Everything else is the Engine's own: the scheduler (continuous batching, chunked prefill,
priorities, preemption), the radix cache, the L2/L3 tiers, prefetch and pins, KV events, stats.
The overrides sit at the model-runner boundary only:
- the scheduler builds a light step make-up (`SimStep`) instead of packed tensors;
- `forward` asks the step model for the step's time, sleeps it on the simulated clock and answers
  with the token each row predicts (`SimLogits`: the request's deterministic stream);
- sampling/verification read those tokens (a grammar still masks them);
- the KV pools hold one element per token (the block tables, hashes and events are real; the
  bytes are not), and L2 promotions / L3 loads cost their simulated bytes' transfer time.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

from engine.config import EngineConfig, ModelConfig
from engine.kvcache.pool import KVPool
from engine.request import Request
from engine.runtime.engine import Engine
from engine.runtime.outputs import Outputs
from engine.runtime.staging import Staging
from engine.sim.clock import IdleMark, SimClock
from engine.sim.hardware import GIB, Gpu, SimModelSpec
from engine.sim.steptime import StepWork
from engine.sim.tokens import TokenStream, request_seed

PLAN_CONTEXT = 4096  # context at which the draft-length cost curve is read
RUNNER_UP_LOGPROB = -30.0  # what a logit 30 above the rest leaves to every other token


@dataclass(frozen=True)
class SimSpec:
    gpu: Gpu
    model: SimModelSpec
    tp: int
    step_model: object  # .seconds(StepWork) -> float, .name
    speedup: float = 1.0
    storage_bytes_per_s: float = 10e9

    @property
    def pcie_bytes_per_s(self) -> float:
        return self.gpu.pcie_bytes_per_s * self.tp  # every GPU of the worker copies its share at once


@dataclass
class SimStep:
    """What one step computes: prompt chunks (tokens, cached prefix) and decode rows (rows, context)."""

    chunks: list[tuple[int, int]]
    decodes: list[tuple[int, int]]

    @property
    def num_tokens(self) -> int:
        return sum(n for n, _ in self.chunks) + sum(r for r, _ in self.decodes)

    def work(self) -> StepWork:
        w = StepWork()
        if self.chunks:
            n, start = max(self.chunks)
            w = StepWork(prefill_tokens=sum(n for n, _ in self.chunks), prefill_context=start + n, prefill_prefix=start)
        if self.decodes:
            ctx = sum(c for _, c in self.decodes) // len(self.decodes)
            w = StepWork(w.prefill_tokens, w.prefill_context, w.prefill_prefix,
                         decode_rows=sum(r for r, _ in self.decodes), decode_context=ctx)
        return w


def sim_step(decodes: list[Request], chunks: list[tuple[Request, int]]) -> SimStep:
    return SimStep([(n, r.num_computed) for r, n in chunks],
                   [(1 + len(r.draft), r.num_computed + 1 + len(r.draft)) for r in decodes])


class SimLogits:
    """The sim's answer at the model-runner boundary: the token each sampled row predicts."""

    __slots__ = ("targets",)

    def __init__(self, targets: list[int]):
        self.targets = targets

    def __getitem__(self, idx) -> "SimLogits":
        if isinstance(idx, slice):
            return SimLogits(self.targets[idx])
        return SimLogits([self.targets[i] for i in idx])

    def __len__(self) -> int:
        return len(self.targets)


class SimPlan:
    """Stands in for the matmul plan: the cost of a step of m decode rows against one row."""

    threads = 1

    def __init__(self, step_model):
        self.step_model = step_model

    @functools.lru_cache(maxsize=256)
    def relative_cost(self, m: int) -> float:
        one = self.step_model.seconds(StepWork(decode_rows=1, decode_context=PLAN_CONTEXT))
        many = self.step_model.seconds(StepWork(decode_rows=m, decode_context=PLAN_CONTEXT))
        return many / one if one > 0 else float(m)

    def describe(self) -> str:
        return f"sim: {self.step_model.name}"


class SimOutputs(Outputs):
    """Tokens are the rows' stream tokens; a grammar still masks them."""

    def _dense(self, targets: list[int], req: Request, drafts: list[int] | None = None) -> torch.Tensor:
        """Rows that put all their weight on the targets, masked by the request's grammar."""
        rows = torch.zeros(len(targets), self.engine.model_config.vocab_size)
        rows[torch.arange(len(targets)), torch.tensor(targets)] = 1.0
        if drafts is None:
            req.grammar.mask(rows)
        else:
            req.grammar.mask(rows, drafts)
        return rows

    def choose(self, reqs: list[Request], logits: SimLogits) -> tuple[list[int], list | None]:
        tokens = list(logits.targets)
        for i, req in enumerate(reqs):
            if req.grammar is not None:  # the grammar's choice where it forbids the stream's token
                tokens[i] = int(self._dense([tokens[i]], req)[0].argmax())
        logprobs = None
        if any(r.return_logprob for r in reqs):  # the stream's token is certain: logprob 0, the runners-up -30
            vocab = self.engine.model_config.vocab_size
            logprobs = [(0.0, [(0.0, tok)] + [(RUNNER_UP_LOGPROB, (tok + k) % vocab)
                                              for k in range(1, r.top_logprobs_num)])
                        for r, tok in zip(reqs, tokens)]
        return tokens, logprobs

    def verify(self, rows: SimLogits, req: Request) -> tuple[list[int], int]:
        targets = rows.targets
        if req.grammar is not None:
            targets = self._dense(targets, req, req.draft).argmax(dim=-1).tolist()
        j = 0
        while j < len(req.draft) and req.draft[j] == targets[j]:
            j += 1
        return req.draft[:j] + [targets[j]], j

    def finish(self, req: Request, reason: dict) -> None:
        super().finish(req, reason)
        self.engine.streams.pop(req.rid, None)


class SimStaging(Staging):
    """KV tiers: copies take their bytes' time."""

    def promote(self, req: Request, steps, fut) -> None:
        e = self.engine
        before = req.tier_tokens.get("l2", 0) + req.tier_tokens.get("l3", 0)
        super().promote(req, steps, fut)
        moved = req.tier_tokens.get("l2", 0) + req.tier_tokens.get("l3", 0) - before
        e.debt += moved * e.sim.model.kv_bytes_per_token / e.sim.pcie_bytes_per_s

    def loaded(self, req: Request, steps, fut) -> None:  # the L3 reader thread: the storage read's time
        e = self.engine
        tokens = sum(s.tier == "l3" for s in steps) * e.cfg.block_size
        time.sleep(tokens * e.sim.model.kv_bytes_per_token / e.sim.storage_bytes_per_s / e.sim.speedup)
        super().loaded(req, steps, fut)


class SimEngine(Engine):
    outputs_class = SimOutputs
    staging_class = SimStaging

    def __init__(self, cfg: EngineConfig, sim: SimSpec):
        self.sim = sim
        self.clock = SimClock(sim.speedup)
        self.streams: dict[str, TokenStream] = {}
        self.debt = 0.0  # simulated seconds of host<->GPU copies the next step waits for
        super().__init__(cfg)
        self.wake = IdleMark()
        self.context_length = min(self.context_length, sim.model.context_length)

    # -- construction: no weights, one-element KV blocks ---------------------------------------
    def _build_compute(self, cfg: EngineConfig, mc: ModelConfig):
        plan = SimPlan(self.sim.step_model)
        pool = KVPool(cfg.num_blocks(mc, self.dtype), cfg.block_size, 1, 1, 1, self.dtype)
        return plan, pool, self.sim.step_model

    def kv_geometry(self) -> tuple[int, int, int]:
        return 1, 1, 1

    def kv_name(self) -> str:
        return f"sim-{self.sim.model.name.replace('/', '--')}-tp{self.sim.tp}"

    def forward_builder(self):
        return sim_step

    # -- the step ---------------------------------------------------------------------------------
    def forward(self, batch, t0: float) -> SimLogits:
        predicted = self.sim.step_model.seconds(batch.forward.work()) + self.debt
        self.debt = 0.0
        targets: list[int] = []
        for req, n in batch.sampled:
            targets += self.stream(req).take(len(req.output_ids), n)
        self.clock.run_step(predicted, self.wake.idle_end)
        return SimLogits(targets)

    def stream(self, req: Request) -> TokenStream:
        """req's deterministic token stream (engine/sim/tokens.py)."""
        stream = self.streams.get(req.rid)
        if stream is None:
            banned = set(self.model_config.eos_token_ids) | set(req.params.stop_token_ids)
            seed = request_seed(req.prompt_ids, req.params.seed, self.cfg.seed)
            stream = self.streams[req.rid] = TokenStream(req.prompt_ids, seed, self.model_config.vocab_size, banned)
        return stream

    # -- what the server reports --------------------------------------------------------------------
    def describe(self) -> dict:
        s = self.sim
        kv_tokens = self.pool.num_blocks * self.pool.block_size
        return {"kind": "sim", "backend": "agentgate-engine", "weights_gb": s.model.weight_bytes / GIB,
                "kvcache_gb": kv_tokens * s.model.kv_bytes_per_token / GIB,
                "details": {"sim": {"gpu": s.gpu.name, "model": s.model.name, "tp": s.tp, "speedup": s.speedup,
                                    "step_model": s.step_model.name,
                                    "kv_bytes_per_token": s.model.kv_bytes_per_token,
                                    "pcie_gbps": s.pcie_bytes_per_s / 1e9,
                                    "storage_gbps": s.storage_bytes_per_s / 1e9}}}

    def extra_gauges(self) -> dict:
        c = self.clock.snapshot()
        return {"agentgate:sim_steps_total": c["steps"], "agentgate:sim_predicted_seconds_total": c["predicted_seconds"],
                "agentgate:sim_step_wall_seconds_total": c["wall_seconds"],
                "agentgate:sim_step_lag_seconds_total": c["lag_seconds"],
                "agentgate:sim_step_lag_max_seconds": c["lag_max_seconds"],
                "agentgate:sim_step_lag_median_seconds": c["median_lag_seconds"],
                "agentgate:sim_step_median_seconds": c["median_step_seconds"], "agentgate:sim_speedup": c["speedup"]}
