"""A step's logits to tokens, and requests to their ends: sampling plain rows,
verifying draft segments, stop rules (tokens, strings, lengths), finishing a
request (its blocks back to the scheduler, its counters to the stats), and
emitting StepOutputs to each request's sink on the engine thread.

The model runner decides how logits become tokens (`choose`, `verify`): the
embedded model samples them, engine/sim reads its seeded streams."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from common.tokenizer import IncrementalDetokenizer
from engine.request import Request, Status, StepOutput
from engine.sampling import sample, token_logprobs
from engine.batching.batch import ScheduledBatch
from engine.spec.verify import verify

if TYPE_CHECKING:
    from engine.runtime.engine import Engine

log = logging.getLogger("agentgate.engine")


class Outputs:
    def __init__(self, engine: "Engine"):
        self.engine = engine
        self.detok: dict[str, IncrementalDetokenizer] = {}

    def process(self, batch: ScheduledBatch, logits) -> int:
        """Advance every request of the step; returns how many tokens it produced."""
        e = self.engine
        for req, n in batch.chunks:
            req.num_computed += n
            req.prefilled += n
            e.batcher.on_prefill_chunk(req)
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
        produced = self.sample_plain(plain, logits[plain_rows]) if plain else 0
        for req, start, n in verifies:
            tokens, accepted = self.verify(logits[start:start + n], req)
            base = req.num_computed  # position of the last token fed; its K/V and the accepted drafts' are valid
            for m, tok in enumerate(tokens, 1):
                if req.finished:
                    break
                # as in a plain run, every appended token but the newest has its K/V computed
                req.num_computed = base + m
                self.append(req, tok, None)
                produced += 1
            e.batcher.after_verify(req, accepted)
            with e.stats.lock:
                e.stats.spec_verifies += 1
                e.stats.spec_proposed += n - 1
                e.stats.spec_accepted += accepted
        return produced

    def verify(self, rows: torch.Tensor, req: Request) -> tuple[list[int], int]:
        """A verify segment's rows [1 + drafts, vocab] -> (tokens to append, drafts accepted)."""
        if req.grammar is not None:  # row i under the grammar state after draft[:i]
            req.grammar.mask(rows, req.draft)
        return verify(rows, req.draft, req)

    def choose(self, reqs: list[Request], logits: torch.Tensor) -> tuple[list[int], list | None]:
        """One token per plain row, and the logprobs of those that asked for them."""
        tokens = sample(logits, reqs, self.engine.model_config.eos_token_ids)
        logprobs = None
        if any(r.return_logprob for r in reqs):
            logprobs = token_logprobs(logits, tokens, [r.top_logprobs_num if r.return_logprob else 0 for r in reqs])
        return tokens, logprobs

    def sample_plain(self, reqs: list[Request], logits) -> int:
        tokens, logprobs = self.choose(reqs, logits)
        produced = 0
        for i, (req, tok) in enumerate(zip(reqs, tokens)):
            if req.params.max_new_tokens == 0:  # prefill only (SGLang allows it; prefetch uses it)
                self.finish(req, {"type": "length", "length": 0})
                continue
            self.append(req, tok, logprobs[i] if logprobs and req.return_logprob else None)
            produced += 1
        return produced

    def append(self, req: Request, tok: int, logprob) -> None:
        e = self.engine
        now = time.monotonic()
        if req.first_token_time is None:
            req.first_token_time = now
            e.stats.ttft.observe(now - req.arrival)
        req.output_ids.append(tok)
        req.pending_ids.append(tok)
        if req.grammar is not None:
            req.grammar.accept(tok)
        if logprob is not None:
            req.pending_logprobs.append((logprob[0], tok, logprob[1]))
        p = req.params
        detok = self.detok.get(req.rid)
        if detok is None:
            detok = self.detok[req.rid] = IncrementalDetokenizer(e.tokenizer, p.skip_special_tokens)
        req.text += detok.step(req.output_ids)
        reason = None
        if tok in p.stop_token_ids or (not p.ignore_eos and tok in e.model_config.eos_token_ids):
            reason = {"type": "stop", "matched": tok}
        elif p.stop:
            reason = self.match_stop_string(req)
        if reason is None and (len(req.output_ids) >= p.max_new_tokens or
                               len(req.prompt_ids) + len(req.output_ids) >= e.context_length):
            reason = {"type": "length", "length": p.max_new_tokens}
        if reason is not None:
            self.finish(req, reason)
        else:
            self.emit(req, finished=False)

    @staticmethod
    def match_stop_string(req: Request) -> dict | None:
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

    def finish(self, req: Request, reason: dict) -> None:
        e = self.engine
        if req.finished:
            return
        if e.staging.release(req) or not e.batcher.holds(req):
            e.batcher.release_staged(req)  # never queued (staging, or a prefetch done at once)
            req.status = Status.FINISHED
        else:
            e.batcher.remove(req)
        req.finish_reason = reason
        self.detok.pop(req.rid, None)
        e.forget(req.rid)
        with e.stats.lock:
            e.stats.num_finished += 1
            e.stats.cached_tokens += req.cached_tokens
            if reason["type"] == "abort":
                e.stats.num_aborted += 1
            e.stats.e2e.observe(time.monotonic() - req.arrival)
        self.emit(req, finished=True)

    def emit(self, req: Request, finished: bool) -> None:
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
            tier_tokens=tier_split(req) if finished else None, retractions=req.num_preemptions,
            spec=spec_meta(req) if finished and self.engine.speculator else None)
        req.pending_ids, req.pending_logprobs = [], []
        try:
            req.sink(out)
        except Exception:
            log.exception("request sink failed for %s", req.rid)


def tier_split(req: Request) -> dict[str, int]:
    """Where the cached prompt tokens came from; L1 is what the others do not explain
    (a prefix another request cached between staging and admission counts as L1)."""
    lower = req.tier_tokens.get("l2", 0) + req.tier_tokens.get("l3", 0)
    return {"l1": max(0, req.cached_tokens - lower), "l2": req.tier_tokens.get("l2", 0),
            "l3": req.tier_tokens.get("l3", 0)}


def spec_meta(req: Request) -> dict:
    """SGLang's per-request speculation fields (final chunk only)."""
    steps = req.spec_verify_ct + max(0, len(req.output_ids) - req.spec_accepted - req.spec_verify_ct)
    return {"spec_verify_ct": req.spec_verify_ct,
            "spec_accept_rate": req.spec_accepted / req.spec_proposed if req.spec_proposed else 0.0,
            "spec_accept_length": len(req.output_ids) / steps if steps else 0.0,
            "spec_accept_token_num": req.spec_accepted, "spec_draft_token_num": req.spec_proposed}
