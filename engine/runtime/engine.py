"""Engine: owns the model, the KV pool, the radix cache and the scheduler, and
runs model steps in its own thread (never on an event loop), the one thread
that runs its torch work (engine/compute.py).

Other threads talk to it only through `submit`, `abort` and `call`; results
come back through each request's sink, called from the engine thread. The
loop, staging, outputs and the KV API are its parts (engine/runtime/).

The model runner is what a backend replaces: `_build_compute` (weights, pool,
model), `forward_builder` and `forward` (a step's logits), and the parts'
classes `outputs_class` (how logits become tokens) and `staging_class` (what
tier copies cost); engine/sim is the other backend.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch

from common.errors import BadRequestError, ContextLengthError
from common.tokenizer import Tokenizer
from engine.compute import ComputeThread
from engine.config import (
    EngineConfig,
    ModelConfig,
    choose_dtype,
    default_batch_tokens,
    default_prefetch_chunk,
)
from engine.grammar import GrammarBackend
from engine.hostshare import choose_threads
from engine.kvcache.events import EventLog
from engine.kvcache.host import HostPool
from engine.kvcache.pins import PinTable
from engine.kvcache.pool import KVPool
from engine.kvcache.radix import RadixCache
from engine.kvcache.store import make_store
from engine.kvcache.tiered import TieredCache
from engine.model.linear import MatmulPlan
from engine.model.llama import LlamaModel
from engine.model.weights import load_weights
from engine.request import Request
from engine.runtime.kv_api import KVApi
from engine.runtime.loop import StepLoop
from engine.runtime.outputs import Outputs
from engine.runtime.staging import Staging
from engine.batching.batch import ScheduledBatch
from engine.batching.batcher import Batcher
from engine.spec.ngram import NgramSpeculator
from engine.stats import EngineStats
from engine.step_cost import StepCost
from engine.trace import StepTrace

log = logging.getLogger("agentgate.engine")


def configure_threads(threads: int, dtype: torch.dtype, device: str, backend: str = "auto") -> MatmulPlan:
    """Give OpenBLAS and torch the same thread budget and measure which runs
    each step size faster (engine/model/linear.py); each step then runs in one
    mode, so the two thread pools never spin against each other."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads, user_api="blas")
    torch.set_num_threads(threads)
    return MatmulPlan.probe(dtype, device, threads, backend)


def make_speculator(algorithm: str):
    name = (algorithm or "none").lower()
    if name == "none":
        return None
    if name == "ngram":
        return NgramSpeculator()
    raise ValueError(f"unknown speculative algorithm {algorithm!r}; choose none or ngram")


class Engine:
    outputs_class = Outputs  # how a step's logits become tokens
    staging_class = Staging  # bringing prefixes up from L2/L3

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.model_config = ModelConfig.from_dir(cfg.model_path)
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {cfg.device}: torch sees no CUDA device here")
        self.dtype = choose_dtype(cfg.dtype, cfg.device)
        self.device = cfg.device
        self.threads = cfg.threads or choose_threads().threads  # 0: OMP_NUM_THREADS, else the cores
        mc = self.model_config
        # every torch op of the engine runs on this one thread, the model's set-up included (engine/compute.py)
        self._compute = ComputeThread("engine")
        try:
            self.plan, self.pool, self.model = self._compute.run(self._build_compute, cfg, mc).result()
        except BaseException:
            self._compute.close()
            raise
        self.events = EventLog()
        self.cache = RadixCache(self.pool, self.events, enabled=cfg.enable_prefix_cache)
        self.tiers = self._make_tiers(cfg, mc)
        self.pins = PinTable(self.cache, int(cfg.max_pinned_fraction * self.pool.num_blocks))
        self.speculator = make_speculator(cfg.speculative_algorithm)
        step, solo = ((cfg.max_batch_tokens, cfg.max_batch_tokens) if cfg.max_batch_tokens
                      else default_batch_tokens(self.device, self.threads))
        self.batcher = Batcher(self.pool, self.cache, step, cfg.max_running_requests,
                                   self.speculator, cfg.speculative_num_draft_tokens,
                                   cfg.prefetch_chunk_tokens if cfg.prefetch_chunk_tokens >= 0
                                   else default_prefetch_chunk(self.device),
                                   cfg.max_background_running, row_cost=self.plan.relative_cost,
                                   low_priority_chunk=cfg.low_priority_chunk_tokens, solo_batch_tokens=solo,
                                   make_forward=self.forward_builder())
        self.tokenizer = Tokenizer(cfg.model_path)
        self.grammars = GrammarBackend(cfg.model_path, mc.vocab_size, mc.eos_token_ids, self.threads)
        self.context_length = cfg.context_length or mc.max_position
        self.stats = EngineStats()
        self.step_cost = StepCost()  # seconds ≈ step_s + row_s × rows + token_s × prompt tokens, in /get_load
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # (kind, payload) for the engine thread
        self.wake = threading.Event()
        self.stopping = False
        self._active: set[str] = set()
        self._active_lock = threading.Lock()
        self._loop_future: Future | None = None
        self._rng = random.Random(cfg.seed)
        self.trace = StepTrace(cfg.step_trace) if cfg.step_trace else None
        self.outputs = self.outputs_class(self)
        self.staging = self.staging_class(self)
        self.kv = KVApi(self)
        self.loop = StepLoop(self)

    def _make_tiers(self, cfg: EngineConfig, mc: ModelConfig) -> TieredCache:
        """L2 and L3 as configured; an L3 location that cannot be written leaves the
        worker running without L3 (l3_error says why)."""
        host = None
        layers, kv_heads, head_dim = self.kv_geometry()
        if cfg.enable_prefix_cache and cfg.num_l2_blocks(mc, self.dtype) > 0:
            host = HostPool(cfg.num_l2_blocks(mc, self.dtype), layers, cfg.block_size, kv_heads, head_dim,
                            self.dtype, pin_memory=self.device != "cpu")
        store, self.l3_error = None, None
        if cfg.enable_prefix_cache and cfg.l3 not in ("", "none"):
            dtype_name = str(self.dtype).removeprefix("torch.")
            # "hm": blocks hold K/V head-major (engine/kvcache/pool.py); another layout never shares a directory
            namespace = f"{self.kv_name()}-{dtype_name}-b{cfg.block_size}-hm"
            try:
                store = make_store(cfg.l3, namespace, int(cfg.l3_max_gb * (1 << 30)))
            except OSError as exc:
                self.l3_error = f"L3 store {cfg.l3!r} is not usable ({exc}); running without L3"
                log.warning(self.l3_error)
        return TieredCache(self.cache, host, store, self.events, l2_write_through=cfg.l2_write_through,
                           l3_write_through=cfg.l3_write_through)

    def kv_geometry(self) -> tuple[int, int, int]:
        """(layers, kv heads, head dim) of a KV block as the pools hold it."""
        mc = self.model_config
        return mc.num_layers, mc.num_kv_heads, mc.head_dim

    def kv_name(self) -> str:
        """The model part of the L3 namespace: only workers computing the same K/V share blocks."""
        return os.path.basename(self.cfg.model_path.rstrip("/"))

    @property
    def l3_id(self) -> str:
        return self.tiers.store.id if self.tiers.store is not None else ""

    # -- lifecycle -------------------------------------------------------------------------
    def _build_compute(self, cfg: EngineConfig, mc: ModelConfig) -> tuple[MatmulPlan, KVPool, LlamaModel]:
        """The matmul plan, the KV pool and the model: the engine's torch set-up, run on its compute thread."""
        plan = configure_threads(self.threads, self.dtype, self.device, cfg.matmul_backend)
        h, q, kv = mc.hidden_size, mc.num_heads * mc.head_dim, mc.num_kv_heads * mc.head_dim
        layer = h * (q + 2 * kv) + q * h + 3 * h * mc.intermediate_size  # one layer's projection weights
        plan.layers = mc.num_layers + mc.vocab_size * h / layer  # the LM head counted in layer units
        weights = load_weights(cfg.model_path, mc, self.dtype, self.device)
        pool = KVPool(cfg.num_blocks(mc, self.dtype), cfg.block_size, mc.num_layers, mc.num_kv_heads, mc.head_dim,
                      self.dtype, self.device)
        return plan, pool, LlamaModel(mc, weights, pool, self.dtype, plan)

    def start(self) -> "Engine":
        self._loop_future = self._compute.run(self.loop.run)
        return self

    @property
    def started(self) -> bool:
        return self._loop_future is not None

    @property
    def alive(self) -> bool:
        """Whether the loop runs: started, and neither stopped nor ended by an error."""
        return self._loop_future is not None and not self._loop_future.done()

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        self._compute.close()
        self.tiers.close()
        if self.trace is not None:
            self.trace.close()

    # -- thread-safe API -------------------------------------------------------------------
    def validate(self, prompt_ids: list[int], max_new_tokens: int) -> None:
        """Raise a 400 for a request that can never run here."""
        n = len(prompt_ids)
        if n == 0:
            raise BadRequestError("the prompt is empty", param="prompt")
        if n >= self.context_length:
            raise ContextLengthError(
                f"The input ({n} tokens) is longer than the model's context length ({self.context_length} tokens).")
        if n + max_new_tokens > self.context_length:
            raise ContextLengthError(
                f"Requested token count exceeds the model's maximum context length of {self.context_length} tokens. "
                f"You requested a total of {n + max_new_tokens} tokens: {n} tokens from the input messages and "
                f"{max_new_tokens} tokens for the completion. Please reduce the number of tokens in the input "
                f"messages or the completion to fit within the limit.", param="max_tokens")
        bad = [t for t in prompt_ids if not 0 <= t < self.model_config.vocab_size]
        if bad:
            raise BadRequestError(f"token id {bad[0]} is outside the vocabulary [0, {self.model_config.vocab_size})",
                                  param="input_ids")
        blocks = -(-(n + max_new_tokens) // self.cfg.block_size)
        if blocks > self.pool.num_blocks:
            raise BadRequestError(
                f"the request needs {blocks} KV blocks ({n} prompt + {max_new_tokens} new tokens) but the pool "
                f"holds {self.pool.num_blocks}; it can never fit", param="max_new_tokens")

    def submit(self, req: Request) -> None:
        self.validate(req.prompt_ids, req.params.max_new_tokens)
        with self._active_lock:
            if req.rid in self._active:
                raise BadRequestError(f"a request with rid {req.rid!r} is already running", param="rid")
            self._active.add(req.rid)
        if req.params.constraint is not None:  # compiled at the HTTP edge already: a cache hit
            req.grammar = self.grammars.state(req.params.constraint)
        if not req.params.greedy:
            seed = req.params.seed if req.params.seed is not None else self._rng.getrandbits(63)
            req.generator = torch.Generator().manual_seed(seed)
        self.post("add", req)

    def abort(self, rid: str, abort_all: bool = False, prefix: bool = False) -> None:
        """Abort one request by rid, every rid starting with it (prefix=True, as
        SGLang's /abort_request matches batch items rid_0, rid_1, ...), or all."""
        self.post("abort", (rid, abort_all, prefix))

    def abort_many(self, rids: list[str]) -> None:
        for rid in rids:
            self.inbox.put(("abort", (rid, False, False)))
        self.wake.set()

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run fn in the engine thread between steps (cache flush, consistent reads)."""
        fut: Future = Future()
        self.post("call", (fn, fut))
        return fut

    def post(self, kind: str, payload) -> None:
        """Hand the engine thread something to do before its next step (engine/runtime/loop.py)."""
        self.inbox.put((kind, payload))
        self.wake.set()

    def forget(self, rid: str) -> None:
        """Engine thread: rid finished; a new request may take it."""
        with self._active_lock:
            self._active.discard(rid)

    def set_threads(self, threads: int) -> Future:
        """Run every step from the next one on `threads` CPU threads (the host's share for this worker
        changed: engine/hostshare.py). The matmul plan keeps the modes it measured at start-up."""
        def apply() -> int:
            from threadpoolctl import threadpool_limits

            threadpool_limits(threads, user_api="blas")
            torch.set_num_threads(threads)
            self.plan.threads = self.threads = threads
            return threads

        return self.call(apply)

    def num_active(self) -> int:
        return len(self._active)

    # -- the model runner (engine/sim replaces these) ----------------------------------------
    def forward_builder(self) -> Callable | None:
        """What the scheduler builds a step's model input with (None: the model's packed tensors)."""
        return None

    def forward(self, batch: ScheduledBatch, t0: float) -> torch.Tensor:
        """The model-runner boundary: one step's next-token logits [R, vocab] on the CPU, R the rows of
        batch.sampled. Everything around it (scheduling, sampling, verification, the cache) is the same
        for every backend; engine/sim replaces only this."""
        logits = self.model.forward(batch.forward.to(self.device))
        if logits.device.type != "cpu":  # sampling and verification run on the CPU
            logits = logits.cpu()
        if batch.forward.num_tokens == 1:  # what extra rows are weighed against (draft lengths)
            self.plan.observe_step(time.monotonic() - t0)
        return logits

    # -- reads for the server (consistent when run through call()) ----------------------------
    def describe(self) -> dict:
        """What /get_server_info says about this engine beyond its KV pool: its kind and weights."""
        m = self.model
        tensors = [m.w.embed, m.lm_head.weight]
        for lin in m.layers:
            tensors += [lin.qkv.weight, lin.o.weight, lin.gate_up.weight, lin.down.weight]
        stored = {t.data_ptr(): t for t in tensors}  # a tied LM head shares the embedding
        return {"kind": "embedded", "backend": "agentgate-engine",
                "weights_gb": sum(t.numel() * t.element_size() for t in stored.values()) / 2**30,
                "kvcache_gb": self.pool.bytes() / 2**30}

    def load(self) -> dict:
        s = self.batcher
        running = [r for r in s.running if not r.background]
        staged = self.staging.requests()
        waiting = len(s.waiting) + sum(not r.background for r in staged)
        tokens = sum(len(r.all_ids) for r in running) + sum(len(r.fill_ids) for r in s.waiting)
        prefetching = len(s.running) - len(running) + len(s.background) + sum(
            r.background for r in staged)
        return {"num_reqs": len(running) + waiting, "num_waiting_reqs": waiting,
                "num_running_reqs": len(running), "num_tokens": tokens, "num_prefetch_reqs": prefetching,
                **self.step_cost.as_load()}

    def extra_gauges(self) -> dict:
        """Backend-specific /metrics gauges (engine/sim reports its clock here)."""
        return {}
