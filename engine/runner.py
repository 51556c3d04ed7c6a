"""Engine: owns the model, the KV pool, the radix cache and the scheduler, and
runs model steps in its own thread (never on an event loop), the one thread
that runs its torch work (engine/compute.py).

Other threads talk to it only through `submit`, `abort` and `call`; results
come back through each request's sink, called from the engine thread.
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

from engine.compute import ComputeThread
from engine.config import EngineConfig, ModelConfig, choose_dtype, default_batch_tokens, default_prefetch_chunk
from engine.errors import BadRequestError, ConflictError, ContextLengthError
from engine.hostshare import choose_threads
from engine.grammar import GrammarBackend
from engine.kvcache.events import EventLog
from engine.kvcache.hashing import block_hashes
from engine.kvcache.host import HostPool
from engine.kvcache.pins import PinTable
from engine.kvcache.pool import KVPool
from engine.kvcache.radix import RadixCache
from engine.kvcache.store import make_store
from engine.kvcache.tiered import Loaded, Step, TieredCache
from engine.model.linear import MatmulPlan
from engine.model.llama import LlamaModel
from engine.model.weights import load_weights
from engine.sampling import sample, token_logprobs
from engine.spec.ngram import NgramSpeculator
from engine.spec.verify import verify
from engine.scheduler.request import Request, SamplingParams, Status, StepOutput
from engine.scheduler.scheduler import ScheduledBatch, Scheduler
from engine.stats import EngineStats
from engine.step_cost import StepCost
from engine.tokenizer import IncrementalDetokenizer, Tokenizer
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
        self.scheduler = Scheduler(self.pool, self.cache, step, cfg.max_running_requests,
                                   self.speculator, cfg.speculative_num_draft_tokens,
                                   cfg.prefetch_chunk_tokens if cfg.prefetch_chunk_tokens >= 0
                                   else default_prefetch_chunk(self.device),
                                   cfg.max_background_running, row_cost=self.plan.relative_cost,
                                   low_priority_chunk=cfg.low_priority_chunk_tokens, solo_batch_tokens=solo,
                                   make_forward=self.forward_builder())
        self._staging: dict[str, Request] = {}  # rid -> request waiting for its L3 blocks
        self.tokenizer = Tokenizer(cfg.model_path)
        self.grammars = GrammarBackend(cfg.model_path, mc.vocab_size, mc.eos_token_ids, self.threads)
        self.context_length = cfg.context_length or mc.max_position
        self.stats = EngineStats()
        self.step_cost = StepCost()  # seconds ≈ step_s + token_s × tokens, published in /get_load
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = False
        self._active: set[str] = set()
        self._active_lock = threading.Lock()
        self._detok: dict[str, IncrementalDetokenizer] = {}
        self._loop_future: Future | None = None
        self._rng = random.Random(cfg.seed)
        self.trace = StepTrace(cfg.step_trace) if cfg.step_trace else None

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
        self._loop_future = self._compute.run(self._loop)
        return self

    @property
    def started(self) -> bool:
        return self._loop_future is not None

    @property
    def alive(self) -> bool:
        """Whether the loop runs: started, and neither stopped nor ended by an error."""
        return self._loop_future is not None and not self._loop_future.done()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
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
        self._inbox.put(("add", req))
        self._wake.set()

    def abort(self, rid: str, abort_all: bool = False, prefix: bool = False) -> None:
        """Abort one request by rid, every rid starting with it (prefix=True, as
        SGLang's /abort_request matches batch items rid_0, rid_1, ...), or all."""
        self._inbox.put(("abort", (rid, abort_all, prefix)))
        self._wake.set()

    def abort_many(self, rids: list[str]) -> None:
        for rid in rids:
            self._inbox.put(("abort", (rid, False, False)))
        self._wake.set()

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run fn in the engine thread between steps (cache flush, consistent reads)."""
        fut: Future = Future()
        self._inbox.put(("call", (fn, fut)))
        self._wake.set()
        return fut

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

    # -- the loop ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop:
            self._drain_inbox()
            try:
                batch = self.scheduler.schedule()
            except Exception as exc:  # a scheduler bug must not kill the worker: fail what is in flight
                log.exception("scheduling failed")
                for req in list(self.scheduler.running) + self.scheduler.queued():
                    self._finish(req, {"type": "abort", "message": f"engine error: {exc}"})
                continue
            for req in self.scheduler.take_resident():
                self._finish(req, {"type": "length", "length": 0})
            if batch is None:
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            t0 = time.monotonic()
            produced = 0
            work = {"prefill": sum(n for r, n in batch.chunks if not r.background),
                    "prefetch": sum(n for r, n in batch.chunks if r.background),
                    "decode_rows": sum(1 + len(r.draft) for r in batch.decodes)}  # before _process moves drafts
            make_up = self.trace.describe(batch) if self.trace is not None else None
            try:
                produced = self._process(batch, self._forward(batch, t0))
            except Exception as exc:  # one bad step must not take the worker down
                log.exception("engine step failed")
                for req in set(batch.requests) | {r for r, _ in batch.chunks} | set(batch.decodes):
                    if not req.finished:
                        self._finish(req, {"type": "abort", "message": f"engine error: {exc}"})
            dt = time.monotonic() - t0
            self.step_cost.observe(batch.forward.num_tokens, dt)
            self.stats.record_step(produced, dt, **work)
            if self.trace is not None:
                self.trace.step(dt, work, make_up)

    def forward_builder(self) -> Callable | None:
        """What the scheduler builds a step's model input with (None: the model's packed tensors)."""
        return None

    def _forward(self, batch: ScheduledBatch, t0: float) -> torch.Tensor:
        """The model-runner boundary: one step's next-token logits [R, vocab] on the CPU, R the rows of
        batch.sampled. Everything around it (scheduling, sampling, verification, the cache) is the same
        for every backend; engine/sim replaces only this."""
        logits = self.model.forward(batch.forward.to(self.device))
        if logits.device.type != "cpu":  # sampling and verification run on the CPU
            logits = logits.cpu()
        if batch.forward.num_tokens == 1:  # what extra rows are weighed against (draft lengths)
            self.plan.observe_step(time.monotonic() - t0)
        return logits

    def _drain_inbox(self) -> None:
        self.pins.expire()
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                payload.status = Status.WAITING
                if self.trace is not None:
                    self.trace.arrive(payload.rid, len(payload.prompt_ids), payload.priority, payload.background)
                with self.stats.lock:
                    self.stats.num_requests += 1
                    self.stats.prompt_tokens += len(payload.prompt_ids)
                self._stage(payload)
            elif kind == "loaded":
                req, steps, fut = payload
                if self._staging.pop(req.rid, None) is req:
                    self._promote(req, steps, fut)
            elif kind == "abort":
                rid, abort_all, prefix = payload
                targets = list(self.scheduler.running) + self.scheduler.queued() + list(self._staging.values())
                for req in targets:
                    if abort_all or req.rid == rid or (prefix and rid and req.rid.startswith(rid)):
                        self._finish(req, {"type": "abort", "message": "Aborted by request"})
            elif kind == "call":
                fn, fut = payload
                if not fut.set_running_or_notify_cancel():  # its caller gave up (client hung up)
                    continue
                try:
                    fut.set_result(fn())
                except Exception as exc:
                    fut.set_exception(exc)

    # -- KV tiers: bring a prompt's prefix up from L2/L3 before it is scheduled ------------------
    def _stage(self, req: Request) -> None:
        """Lock the prompt's cached L1 prefix and copy the blocks that follow it from
        L2 (now) and L3 (read on the reader thread; the request waits in _staging
        meanwhile, other requests keep stepping). A prefetch whose prefix is then
        wholly resident is done without a step."""
        if not self.tiers.enabled and not req.background:
            self.scheduler.add(req)
            return
        bs = self.cfg.block_size
        # what admission will match: all but the last token (a prefetch keeps every full block)
        ids = req.fill_ids if req.background else req.fill_ids[:-1]
        hashes = block_hashes(ids, bs, req.salt)
        match = self.cache.match_prefix(ids, req.salt)
        self.cache.lock(match.blocks)
        req.staged = list(match.blocks)
        req.tier_tokens = {"l1": len(match.blocks) * bs}
        steps = self.tiers.plan(hashes, len(match.blocks)) if self.tiers.enabled else []
        if any(s.tier == "l3" for s in steps):
            chunks = [ids[i * bs:(i + 1) * bs] for i in range(len(hashes))]
            self._staging[req.rid] = req
            self.tiers.load(steps, chunks, lambda fut: self._loaded(req, steps, fut))
            return
        self._promote(req, steps, None)

    def _loaded(self, req: Request, steps: list[Step], fut) -> None:  # reader thread
        self._inbox.put(("loaded", (req, steps, fut)))
        self._wake.set()

    def _promote(self, req: Request, steps: list[Step], fut) -> None:
        loaded: Loaded | None = None
        if fut is not None:
            try:
                loaded = fut.result()
            except Exception:  # an unreadable store is a miss, never a failed request
                log.exception("L3 load failed for %s", req.rid)
        ids = req.fill_ids if req.background else req.fill_ids[:-1]
        new, counts = self.tiers.promote(ids, req.salt, req.staged, steps, loaded) if steps else ([], {})
        req.staged += new
        bs = self.cfg.block_size
        for tier, n in counts.items():
            req.tier_tokens[tier] = n * bs
        if req.background and len(req.staged) * bs == len(ids) // bs * bs:
            self._finish(req, {"type": "length", "length": 0})  # a prefetch with nothing left to compute
            return
        self.scheduler.add(req)

    def _process(self, batch: ScheduledBatch, logits: torch.Tensor) -> int:
        """Advance every request of the step; returns how many tokens it produced."""
        for req, n in batch.chunks:
            req.num_computed += n
            req.prefilled += n
            self.scheduler.on_prefill_chunk(req)
        plain, plain_rows, verifies, row = [], [], [], 0
        for req, n in batch.sampled:
            if req.draft:
                verifies.append((req, row, n))
            else:
                plain.append(req)
                plain_rows.append(row)
            row += n
        for req in batch.decodes:
            if not req.draft:
                req.num_computed += 1
        produced = self._sample_plain(plain, logits[plain_rows]) if plain else 0
        for req, start, n in verifies:
            tokens, accepted = self._verify(logits[start:start + n], req)
            base = req.num_computed  # position of the last token fed; its K/V and the accepted drafts' are valid
            for m, tok in enumerate(tokens, 1):
                if req.finished:
                    break
                # as in a plain run, every appended token but the newest has its K/V computed
                req.num_computed = base + m
                self._append(req, tok, None)
                produced += 1
            self.scheduler.after_verify(req, accepted)
            with self.stats.lock:
                self.stats.spec_verifies += 1
                self.stats.spec_proposed += n - 1
                self.stats.spec_accepted += accepted
        return produced

    def _verify(self, rows: torch.Tensor, req: Request) -> tuple[list[int], int]:
        """A verify segment's rows [1 + drafts, vocab] -> (tokens to append, drafts accepted)."""
        if req.grammar is not None:  # row i under the grammar state after draft[:i]
            req.grammar.mask(rows, req.draft)
        return verify(rows, req.draft, req)

    def _choose(self, reqs: list[Request], logits: torch.Tensor) -> tuple[list[int], list | None]:
        """One token per plain row, and the logprobs of those that asked for them."""
        tokens = sample(logits, reqs, self.model_config.eos_token_ids)
        logprobs = None
        if any(r.return_logprob for r in reqs):
            logprobs = token_logprobs(logits, tokens, [r.top_logprobs_num if r.return_logprob else 0 for r in reqs])
        return tokens, logprobs

    def _sample_plain(self, reqs: list[Request], logits: torch.Tensor) -> int:
        tokens, logprobs = self._choose(reqs, logits)
        produced = 0
        for i, (req, tok) in enumerate(zip(reqs, tokens)):
            if req.params.max_new_tokens == 0:  # prefill only (SGLang allows it; prefetch uses it)
                self._finish(req, {"type": "length", "length": 0})
                continue
            self._append(req, tok, logprobs[i] if logprobs and req.return_logprob else None)
            produced += 1
        return produced

    def _append(self, req: Request, tok: int, logprob) -> None:
        now = time.monotonic()
        if req.first_token_time is None:
            req.first_token_time = now
            self.stats.ttft.observe(now - req.arrival)
        req.output_ids.append(tok)
        req.pending_ids.append(tok)
        if req.grammar is not None:
            req.grammar.accept(tok)
        if logprob is not None:
            req.pending_logprobs.append((logprob[0], tok, logprob[1]))
        p = req.params
        detok = self._detok.get(req.rid)
        if detok is None:
            detok = self._detok[req.rid] = IncrementalDetokenizer(self.tokenizer, p.skip_special_tokens)
        req.text += detok.step(req.output_ids)
        reason = None
        if tok in p.stop_token_ids or (not p.ignore_eos and tok in self.model_config.eos_token_ids):
            reason = {"type": "stop", "matched": tok}
        elif p.stop:
            reason = self._match_stop_string(req)
        if reason is None and (len(req.output_ids) >= p.max_new_tokens or
                               len(req.prompt_ids) + len(req.output_ids) >= self.context_length):
            reason = {"type": "length", "length": p.max_new_tokens}
        if reason is not None:
            self._finish(req, reason)
        else:
            self._emit(req, finished=False)

    def _match_stop_string(self, req: Request) -> dict | None:
        window = max(len(s) for s in req.params.stop) + 32
        start = max(0, len(req.text) - window)
        best = None
        for s in req.params.stop:
            idx = req.text.find(s, start)
            if idx >= 0 and (best is None or idx < best[0]):
                best = (idx, s)
        if best is None:
            return None
        idx, s = best
        if not req.params.no_stop_trim:
            req.text = req.text[:idx]
        else:
            req.text = req.text[:idx + len(s)]
        return {"type": "stop", "matched": s}

    def _finish(self, req: Request, reason: dict) -> None:
        if req.finished:
            return
        if self._staging.pop(req.rid, None) is req or not self.scheduler.holds(req):
            self.scheduler.release_staged(req)  # never queued (staging, or a prefetch done at once)
            req.status = Status.FINISHED
        else:
            self.scheduler.remove(req)
        req.finish_reason = reason
        self._detok.pop(req.rid, None)
        with self._active_lock:
            self._active.discard(req.rid)
        with self.stats.lock:
            self.stats.num_finished += 1
            self.stats.cached_tokens += req.cached_tokens
            if reason["type"] == "abort":
                self.stats.num_aborted += 1
            self.stats.e2e.observe(time.monotonic() - req.arrival)
        self._emit(req, finished=True)

    def _emit(self, req: Request, finished: bool) -> None:
        if req.sink is None:
            return
        hold = 0 if finished or not req.params.stop else max(len(s) for s in req.params.stop) - 1
        end = max(req.sent_text_len, len(req.text) - hold)
        delta = req.text[req.sent_text_len:end]
        if not delta and not req.pending_ids and not finished:
            return
        req.sent_text_len = end
        out = StepOutput(
            rid=req.rid, new_token_ids=req.pending_ids, text_delta=delta, finished=finished,
            finish_reason=req.finish_reason if finished else None, prompt_tokens=len(req.prompt_ids),
            completion_tokens=len(req.output_ids), cached_tokens=req.cached_tokens, logprobs=req.pending_logprobs,
            tier_tokens=self._tier_split(req) if finished else None,
            retractions=req.num_preemptions, spec=self._spec_meta(req) if finished and self.speculator else None)
        req.pending_ids, req.pending_logprobs = [], []
        try:
            req.sink(out)
        except Exception:
            log.exception("request sink failed for %s", req.rid)

    @staticmethod
    def _tier_split(req: Request) -> dict[str, int]:
        """Where the cached prompt tokens came from; L1 is what the others do not explain
        (a prefix another request cached between staging and admission counts as L1)."""
        lower = req.tier_tokens.get("l2", 0) + req.tier_tokens.get("l3", 0)
        return {"l1": max(0, req.cached_tokens - lower), "l2": req.tier_tokens.get("l2", 0),
                "l3": req.tier_tokens.get("l3", 0)}

    @staticmethod
    def _spec_meta(req: Request) -> dict:
        """SGLang's per-request speculation fields (final chunk only)."""
        steps = req.spec_verify_ct + max(0, len(req.output_ids) - req.spec_accepted - req.spec_verify_ct)
        return {"spec_verify_ct": req.spec_verify_ct,
                "spec_accept_rate": req.spec_accepted / req.spec_proposed if req.spec_proposed else 0.0,
                "spec_accept_length": len(req.output_ids) / steps if steps else 0.0,
                "spec_accept_token_num": req.spec_accepted, "spec_draft_token_num": req.spec_proposed}

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
        s = self.scheduler
        running = [r for r in s.running if not r.background]
        waiting = len(s.waiting) + sum(not r.background for r in self._staging.values())
        tokens = sum(len(r.all_ids) for r in running) + sum(len(r.fill_ids) for r in s.waiting)
        prefetching = len(s.running) - len(running) + len(s.background) + sum(
            r.background for r in self._staging.values())
        return {"num_reqs": len(running) + waiting, "num_waiting_reqs": waiting,
                "num_running_reqs": len(running), "num_tokens": tokens, "num_prefetch_reqs": prefetching,
                **self.step_cost.as_load()}

    def extra_gauges(self) -> dict:
        """Backend-specific /metrics gauges (engine/sim reports its clock here)."""
        return {}

    def kv_usage(self) -> dict:
        used = self.scheduler.blocks_in_use()
        return {"total_blocks": self.pool.num_blocks, "free_blocks": self.pool.num_free,
                "cached_blocks": self.cache.num_cached_blocks, "evictable_blocks": self.cache.num_evictable(),
                "used_blocks": used, "token_usage": used / self.pool.num_blocks,
                "block_size": self.pool.block_size}

    def flush_cache(self) -> bool:
        if self.scheduler.has_work() or self._staging:
            return False
        self.pins.clear()
        return self.cache.flush()

    # -- prefetch and pins (server threads; the work runs on the engine thread) -----------------------
    def prefetch(self, token_ids: list[int], salt: str | None = None, pin_ttl_s: float | None = None,
                 priority: int = 0) -> Future:
        """Make the full blocks of token_ids resident in L1: promote from L2, load
        from L3, compute the rest with a background prefill. Resolves to
        {resident_tokens, from: {l1, l2, l3, computed}} (computed: by this prefetch
        itself) plus, when pinned, {pin_id, pinned_tokens, expires_in_s}; a pin
        beyond the cap fails it with a 409."""
        bs = self.cfg.block_size
        ids = list(token_ids[:len(token_ids) // bs * bs])
        fut: Future = Future()
        if not ids:
            fut.set_result({"resident_tokens": 0, "from": {"l1": 0, "l2": 0, "l3": 0, "computed": 0}})
            return fut
        self.validate(ids, 0)

        def done(out: StepOutput) -> None:  # engine thread
            if not out.finished or fut.done():
                return
            if out.finish_reason and out.finish_reason.get("type") == "abort":
                fut.set_exception(BadRequestError(f"prefetch aborted: {out.finish_reason.get('message')}"))
                return
            resident = self.cache.match_prefix(ids, salt).num_tokens
            src = {"l1": req.tier_tokens.get("l1", 0), "l2": req.tier_tokens.get("l2", 0),
                   "l3": req.tier_tokens.get("l3", 0)}
            # The rest is resident because this prefetch computed it, or because a call computed it
            # while the prefetch waited or stepped aside (found in L1 when it resumed).
            rest = max(0, resident - sum(src.values()))
            src["computed"] = min(req.prefilled, rest)
            src["l1"] += rest - src["computed"]
            result = {"resident_tokens": resident, "from": src}
            if pin_ttl_s:
                try:
                    pin = self.pins.pin(ids, salt, pin_ttl_s)
                except ConflictError as exc:  # resident, but not pinned: the caller must know
                    fut.set_exception(ConflictError(f"the prefix is resident ({resident} tokens) but not pinned: "
                                                    f"{exc.message}", code="pin_capacity"))
                    return
                if pin is not None:
                    result.update(self._pin_json(pin))
            fut.set_result(result)

        req = Request(rid=f"prefetch-{os.urandom(6).hex()}", prompt_ids=ids, params=SamplingParams(max_new_tokens=0),
                      sink=done, salt=salt, background=True, priority=priority)
        self.submit(req)
        return fut

    def _pin_json(self, pin) -> dict:
        return {"pin_id": pin.id, "pinned_tokens": len(pin.blocks) * self.cfg.block_size,
                "expires_in_s": round(pin.expires - time.monotonic(), 3)}

    def pin(self, token_ids: list[int], salt: str | None, ttl_s: float) -> dict | None:
        """Engine thread (through call()): pin the resident full blocks of token_ids."""
        pin = self.pins.pin(token_ids, salt, ttl_s)
        return self._pin_json(pin) if pin is not None else None

    def unpin(self, pin_id: str | None = None, token_ids: list[int] | None = None, salt: str | None = None) -> str | None:
        """Engine thread: drop a pin by id or by its prefix; returns the id dropped, or None."""
        if pin_id is None and token_ids is not None:
            match = self.cache.match_prefix(token_ids, salt)
            pin_id = f"{match.hashes[-1]:016x}" if match.hashes else None
        return pin_id if pin_id is not None and self.pins.unpin(pin_id) else None

    def kv_snapshot(self) -> dict:
        """Engine thread: every block this worker holds, per tier (GET /kv/snapshot)."""
        lower = self.tiers.snapshot()
        return {"block_size": self.cfg.block_size, "l3": self.l3_id,
                "tiers": {"l1": [[h, p] for h, p in self.cache.snapshot()], "l2": lower["l2"], "l3": lower["l3"]}}

    def kv_stats(self) -> dict:
        """Engine thread: L1 usage, the lower tiers and the pins (GET /kv/stats)."""
        with self.stats.lock:
            prefix = {"prompt_tokens": self.stats.prompt_tokens, "cached_tokens": self.stats.cached_tokens}
        return {**self.kv_usage(), "tiers": self.tiers.describe(), "l3_error": self.l3_error,
                "pins": self.pins.describe(), "staging_requests": len(self._staging), "prefix_cache": prefix}
