"""Engine: owns the model, the KV pool, the radix cache and the scheduler, and
runs model steps in its own thread (never on an event loop).

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

from engine.config import EngineConfig, ModelConfig, choose_dtype
from engine.errors import BadRequestError, ContextLengthError
from engine.kvcache.events import EventLog
from engine.kvcache.pool import KVPool
from engine.kvcache.radix import RadixCache
from engine.model.linear import MatmulPlan
from engine.model.llama import LlamaModel
from engine.model.weights import load_weights
from engine.sampling import sample, token_logprobs
from engine.spec.ngram import NgramSpeculator
from engine.spec.verify import verify
from engine.scheduler.request import Request, Status, StepOutput
from engine.scheduler.scheduler import ScheduledBatch, Scheduler
from engine.stats import EngineStats
from engine.tokenizer import IncrementalDetokenizer, Tokenizer

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
        self.dtype = choose_dtype(cfg.dtype)
        self.device = cfg.device
        self.threads = cfg.threads or os.cpu_count() or 1
        self.plan = configure_threads(self.threads, self.dtype, self.device, cfg.matmul_backend)
        weights = load_weights(cfg.model_path, self.model_config, self.dtype, self.device)
        mc = self.model_config
        self.pool = KVPool(cfg.num_blocks(mc, self.dtype), cfg.block_size, mc.num_layers, mc.num_kv_heads,
                           mc.head_dim, self.dtype, self.device)
        self.events = EventLog()
        self.cache = RadixCache(self.pool, self.events, enabled=cfg.enable_prefix_cache)
        self.model = LlamaModel(mc, weights, self.pool, self.dtype, self.plan)
        self.speculator = make_speculator(cfg.speculative_algorithm)
        self.scheduler = Scheduler(self.pool, self.cache, cfg.max_batch_tokens, cfg.max_running_requests,
                                   self.speculator, cfg.speculative_num_draft_tokens)
        self.tokenizer = Tokenizer(cfg.model_path)
        self.context_length = cfg.context_length or mc.max_position
        self.stats = EngineStats()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = False
        self._active: set[str] = set()
        self._active_lock = threading.Lock()
        self._detok: dict[str, IncrementalDetokenizer] = {}
        self._rng = random.Random(cfg.seed)
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

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
                for req in list(self.scheduler.running) + list(self.scheduler.waiting):
                    self._finish(req, {"type": "abort", "message": f"engine error: {exc}"})
                continue
            if batch is None:
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            t0 = time.monotonic()
            produced = 0
            try:
                logits = self.model.forward(batch.forward)
                produced = self._process(batch, logits)
            except Exception as exc:  # one bad step must not take the worker down
                log.exception("engine step failed")
                for req in set(batch.requests) | {r for r, _ in batch.chunks} | set(batch.decodes):
                    if not req.finished:
                        self._finish(req, {"type": "abort", "message": f"engine error: {exc}"})
            dt = time.monotonic() - t0
            self.stats.record_step(produced, dt)

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                payload.status = Status.WAITING
                self.scheduler.add(payload)
                with self.stats.lock:
                    self.stats.num_requests += 1
                    self.stats.prompt_tokens += len(payload.prompt_ids)
            elif kind == "abort":
                rid, abort_all, prefix = payload
                targets = list(self.scheduler.running) + list(self.scheduler.waiting)
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

    def _process(self, batch: ScheduledBatch, logits: torch.Tensor) -> int:
        """Advance every request of the step; returns how many tokens it produced."""
        for req, n in batch.chunks:
            req.num_computed += n
            if not req.in_prefill:
                self.scheduler.on_prefill_done(req)
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
            tokens, accepted = verify(logits[start:start + n], req.draft, req)
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

    def _sample_plain(self, reqs: list[Request], logits: torch.Tensor) -> int:
        tokens = sample(logits, reqs, self.model_config.eos_token_ids)
        logprobs = None
        if any(r.return_logprob for r in reqs):
            logprobs = token_logprobs(logits, tokens, [r.top_logprobs_num if r.return_logprob else 0 for r in reqs])
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
            retractions=req.num_preemptions, spec=self._spec_meta(req) if finished and self.speculator else None)
        req.pending_ids, req.pending_logprobs = [], []
        try:
            req.sink(out)
        except Exception:
            log.exception("request sink failed for %s", req.rid)

    @staticmethod
    def _spec_meta(req: Request) -> dict:
        """SGLang's per-request speculation fields (final chunk only)."""
        steps = req.spec_verify_ct + max(0, len(req.output_ids) - req.spec_accepted - req.spec_verify_ct)
        return {"spec_verify_ct": req.spec_verify_ct,
                "spec_accept_rate": req.spec_accepted / req.spec_proposed if req.spec_proposed else 0.0,
                "spec_accept_length": len(req.output_ids) / steps if steps else 0.0,
                "spec_accept_token_num": req.spec_accepted, "spec_draft_token_num": req.spec_proposed}

    # -- reads for the server (consistent when run through call()) ----------------------------
    def load(self) -> dict:
        s = self.scheduler
        tokens = sum(len(r.all_ids) for r in s.running) + sum(len(r.fill_ids) for r in s.waiting)
        return {"num_reqs": len(s.running) + len(s.waiting), "num_waiting_reqs": len(s.waiting),
                "num_running_reqs": len(s.running), "num_tokens": tokens}

    def kv_usage(self) -> dict:
        used = self.scheduler.blocks_in_use()
        return {"total_blocks": self.pool.num_blocks, "free_blocks": self.pool.num_free,
                "cached_blocks": self.cache.num_cached_blocks, "evictable_blocks": self.cache.num_evictable(),
                "used_blocks": used, "token_usage": used / self.pool.num_blocks,
                "block_size": self.pool.block_size}

    def flush_cache(self) -> bool:
        if self.scheduler.has_work():
            return False
        return self.cache.flush()
