"""Grammar-constrained decoding with xgrammar (SGLang's default grammar backend).

A request's SamplingParams may carry a Constraint: JSON Schema, any JSON object,
a regex, an EBNF grammar, or a tool call (a JSON Schema between a fixed prefix
and suffix, as a tool-call parser writes it). `GrammarBackend` compiles a
constraint once per distinct source (an LRU of compiled grammars; compiling runs
off the event loop, at the HTTP edge) and hands each request a `GrammarState`.

The state lives on the request and is touched only by the engine thread:
- `mask(rows, drafts)` turns every row a step produced for the request into the
  distribution the grammar allows there: row i under the state reached after
  drafts[:i]. The matcher walks the drafts and rolls back exactly as far, so it
  is left where it started;
- `valid_prefix(draft)` keeps the longest draft the grammar accepts (a rejected
  token, and everything after it, is never fed to the model);
- `accept(tok)` advances the matcher by a token the request really emitted.
So greedy output under a grammar is the same with speculation on and off: each
kept token is the argmax of the same masked row a plain step would compute.

JSON has no optional whitespace (one space after ":" and ","): small models otherwise pad forever.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch

from common.errors import BadRequestError

KINDS = ("json_schema", "json_object", "regex", "ebnf", "tool_call")
CACHE_SIZE = 128  # compiled grammars kept (LRU)


class Constraint(NamedTuple):
    """What a request's output must match. source: the schema (JSON text), regex or
    EBNF; for "tool_call", JSON {"prefix", "schema", "suffix"}; "" for json_object."""

    kind: str
    source: str


class GrammarError(BadRequestError):
    """A schema, regex or grammar xgrammar cannot compile (HTTP 400)."""


def _clean(exc: Exception) -> str:
    # xgrammar's messages start with "[time] path/to/file.cc:line: "
    return re.sub(r"^\[[\d:]+\]\s+\S+:\d+:\s*", "", str(exc).strip()).strip()


def _literal(text: str) -> str:
    """An EBNF rule matching exactly text (JSON string escapes are EBNF's)."""
    return f"root ::= {json.dumps(text)}"


class GrammarBackend:
    """Compiles constraints for one tokenizer; thread-safe. xgrammar is imported on first use."""

    def __init__(self, model_dir: str | Path, vocab_size: int, stop_token_ids: tuple[int, ...], threads: int = 2):
        self.model_dir = Path(model_dir)
        self.vocab_size = vocab_size
        self.stop_token_ids = list(stop_token_ids)
        self.threads = max(1, threads)
        self._compiler = None
        self._cache: OrderedDict[Constraint, object] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _xgr(self):
        try:
            import xgrammar
        except ImportError:
            raise BadRequestError("structured output needs the xgrammar package (pip install xgrammar)") from None
        return xgrammar

    def _get_compiler(self):
        if self._compiler is None:
            xgr = self._xgr()
            spec = json.loads((self.model_dir / "tokenizer.json").read_text())
            vocab = spec["model"]["vocab"]
            added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
            encoded = [""] * self.vocab_size
            for token, idx in {**vocab, **added}.items():
                if idx < self.vocab_size:
                    encoded[idx] = token
            decoder = json.dumps(spec.get("decoder") or {})
            vocab_type = (xgr.VocabType.BYTE_LEVEL if "ByteLevel" in decoder else
                          xgr.VocabType.BYTE_FALLBACK if "ByteFallback" in decoder else xgr.VocabType.RAW)
            info = xgr.TokenizerInfo(encoded, vocab_type, vocab_size=self.vocab_size,
                                     stop_token_ids=self.stop_token_ids)
            # our LRU is the cache; xgrammar's own would hold every grammar ever compiled
            self._compiler = xgr.GrammarCompiler(info, max_threads=self.threads, cache_enabled=False)
        return self._compiler

    def compile(self, constraint: Constraint):
        """The compiled grammar for constraint (cached); a GrammarError says what is wrong."""
        with self._lock:
            compiled = self._cache.get(constraint)
            if compiled is not None:
                self._cache.move_to_end(constraint)
                self.hits += 1
                return compiled
            compiler = self._get_compiler()
        compiled = self._compile(compiler, constraint)
        with self._lock:
            self.misses += 1
            self._cache[constraint] = compiled
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, compiler, c: Constraint):
        xgr = self._xgr()
        if c.kind not in KINDS:
            raise GrammarError(f"unknown constraint kind {c.kind!r}; one of {', '.join(KINDS)}")
        try:
            if c.kind == "json_schema":
                json.loads(c.source)  # a clearer message than the converter's for plain bad JSON
                return compiler.compile_json_schema(c.source, any_whitespace=False)
            if c.kind == "json_object":
                return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
            if c.kind == "regex":
                return compiler.compile_regex(c.source)
            if c.kind == "ebnf":
                return compiler.compile_grammar(c.source)
            spec = json.loads(c.source)
            schema = json.dumps(spec["schema"])
            return compiler.compile_grammar(xgr.Grammar.concat(
                xgr.Grammar.from_ebnf(_literal(spec["prefix"])),
                xgr.Grammar.from_json_schema(schema, any_whitespace=False),
                xgr.Grammar.from_ebnf(_literal(spec["suffix"]))))
        except json.JSONDecodeError as exc:
            raise GrammarError(f"invalid {c.kind}: not valid JSON ({exc})", param=c.kind) from None
        except (RuntimeError, ValueError, TypeError) as exc:
            raise GrammarError(f"invalid {c.kind}: {_clean(exc)}", param=c.kind) from None

    def state(self, constraint: Constraint) -> "GrammarState":
        return GrammarState(self.compile(constraint), self.vocab_size, self._xgr())


class GrammarState:
    """One request's position in its grammar (engine thread only)."""

    def __init__(self, compiled, vocab_size: int, xgr):
        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)
        self.vocab_size = vocab_size
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)  # [rows, ceil(vocab / 32)] int32

    def mask(self, rows: torch.Tensor, drafts: list[int] = ()) -> None:
        """rows [1 + len(drafts), vocab], masked in place; the matcher ends where it began."""
        n = rows.shape[0]
        assert n == len(drafts) + 1
        if self._bitmask.shape[0] < n:
            self._bitmask = self._xgr.allocate_token_bitmask(n, self.vocab_size)
        walked = 0
        for i in range(n):
            self.matcher.fill_next_token_bitmask(self._bitmask, i)
            if i < len(drafts):
                ok = self.matcher.accept_token(drafts[i])
                assert ok, "drafts are trimmed to the grammar before they are fed (valid_prefix)"
                walked += 1
        if walked:
            self.matcher.rollback(walked)
        self._xgr.apply_token_bitmask_inplace(rows, self._bitmask[:n], vocab_size=self.vocab_size)

    def valid_prefix(self, draft: list[int]) -> list[int]:
        """The longest prefix of draft the grammar accepts, stopping before the token that would end it."""
        kept = 0
        for tok in draft:
            if not self.matcher.accept_token(tok):
                break
            kept += 1
            if self.matcher.is_terminated():  # a draft never carries the end: the bonus row decides that
                kept -= 1
                self.matcher.rollback(1)
                break
        if kept:
            self.matcher.rollback(kept)
        return list(draft[:kept])

    def accept(self, tok: int) -> bool:
        return self.matcher.accept_token(tok)
