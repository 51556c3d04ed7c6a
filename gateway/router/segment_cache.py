"""Tokenize prompts in pieces that repeat, and remember the pieces.

HF tokenizers cut a text at its added tokens (<|im_start|>, <|im_end|>, ...)
before normalizing or pre-tokenizing anything, and tokenize each piece between
them on its own. So encode(text) is the concatenation of encode(piece) and the
added tokens' ids — exactly, when no added token strips neighbouring spaces and
there is no normalizer (checked from tokenizer.json; otherwise this stays off).
Agents resend the same system prompt and history, so the pieces repeat: the
gateway tokenizes each one once (LRU), which keeps kv_aware routing cheap.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path

from common.tokenizer import Tokenizer

MAX_ENTRIES = 4096
MAX_CACHED_CHARS = 200_000


class SegmentEncoder:
    def __init__(self, tokenizer: Tokenizer, added: dict[str, int] | None):
        """`added`: added-token text → id, or None when piecewise encoding would not be exact."""
        self.tokenizer = tokenizer
        self.added = added
        self._split = re.compile("(" + "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)) + ")") \
            if added else None
        self._cache: OrderedDict[str, list[int]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @classmethod
    def for_model_dir(cls, tokenizer: Tokenizer, model_dir: str | Path) -> "SegmentEncoder":
        spec = json.loads((Path(model_dir) / "tokenizer.json").read_text())
        tokens = spec.get("added_tokens") or []
        exact = spec.get("normalizer") is None and not any(
            t.get("lstrip") or t.get("rstrip") or t.get("single_word") or t.get("normalized") for t in tokens)
        return cls(tokenizer, {t["content"]: t["id"] for t in tokens} if exact and tokens else None)

    def encode(self, text: str) -> list[int]:
        if self._split is None:
            return self.tokenizer.encode(text)
        ids: list[int] = []
        for i, piece in enumerate(self._split.split(text)):
            if i % 2:  # the split keeps the separators at odd positions
                ids.append(self.added[piece])
            elif piece:
                ids.extend(self._piece(piece))
        return ids

    def _piece(self, piece: str) -> list[int]:
        cached = self._cache.get(piece)
        if cached is not None:
            self._cache.move_to_end(piece)
            self.hits += 1
            return cached
        self.misses += 1
        ids = self.tokenizer.encode(piece)
        if len(piece) <= MAX_CACHED_CHARS:
            self._cache[piece] = ids
            if len(self._cache) > MAX_ENTRIES:
                self._cache.popitem(last=False)
        return ids
