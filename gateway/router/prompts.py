"""Prompts → RouteRequests: tokenize exactly as the worker does, then hash blocks.

Chat calls go through the model's chat template (same Tokenizer class, same
message normalisation as engine/worker/openai_api.py), so the block hashes the
gateway computes are the ones the worker's radix cache holds. Without a
tokenizer (a worker whose model files are not on this machine) the UTF-8 bytes
of the prompt stand in for tokens: hashes stay consistent within the gateway,
which is all its own prefix record needs.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from common.hashing import hash_block, root_hash
from common.tokenizer import Tokenizer
from gateway.router.base import RouteRequest
from gateway.router.segment_cache import SegmentEncoder

log = logging.getLogger("agentgate.gateway")
BLOCK_SIZE = 16
# Prompts longer than this are tokenized off the event loop.
THREAD_THRESHOLD_CHARS = 20_000
# Remembered (parent hash, block) → block hash pairs: 16 ids each, about 250 bytes an entry.
MAX_MEMO_BLOCKS = 50_000
MAX_MEMO_SALTS = 10_000


def _flatten(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")


def normalize_messages(messages: list) -> list[dict]:
    """What the worker renders: each message without None fields, content flattened to text."""
    out = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        d = {k: v for k, v in m.items() if v is not None}
        d["content"] = _flatten(m.get("content"))
        out.append(d)
    return out


class BlockHashMemo:
    """common.hashing.block_hashes, remembering each (parent hash, block) it hashed.

    Agents resend the same system prompts and histories, so most blocks of a call were hashed
    before; a dict look-up of the block's ids costs a tenth of hashing it again. The result is
    the engine's hash exactly (a miss calls hash_block); the oldest entries go first when full.
    """

    def __init__(self, max_blocks: int = MAX_MEMO_BLOCKS):
        self.max_blocks = max_blocks
        self._memo: dict[tuple[int, tuple[int, ...]], int] = {}
        self._roots: dict[str | None, int] = {None: root_hash(None)}

    def __call__(self, ids: list[int], block_size: int, salt: str | None = None) -> list[int]:
        h = self._roots.get(salt)
        if h is None:
            h = self._roots[salt] = root_hash(salt)
            if len(self._roots) > MAX_MEMO_SALTS:  # tenants come and go
                del self._roots[next(k for k in self._roots if k is not None)]
        memo, out = self._memo, []
        for start in range(0, len(ids) - block_size + 1, block_size):
            key = (h, tuple(ids[start:start + block_size]))
            nxt = memo.get(key)
            if nxt is None:
                nxt = memo[key] = hash_block(h, key[1])
                if len(memo) > self.max_blocks:
                    del memo[next(iter(memo))]
            out.append(nxt)
            h = nxt
        return out


class PromptHasher:
    def __init__(self, tokenizer: Tokenizer | None = None, block_size: int = BLOCK_SIZE,
                 encoder: SegmentEncoder | None = None):
        self.tokenizer = tokenizer
        self.encoder = encoder  # cached piecewise encode; None = encode whole texts
        self.block_size = block_size
        self.tried: str | None = None  # the last model dir a tokenizer was looked for in
        self.block_hashes = BlockHashMemo()

    @classmethod
    def from_model_dir(cls, model_dir: str | Path | None, block_size: int = BLOCK_SIZE) -> "PromptHasher":
        if model_dir and (Path(model_dir) / "tokenizer.json").is_file():
            tokenizer = Tokenizer(model_dir)
            return cls(tokenizer, block_size, SegmentEncoder.for_model_dir(tokenizer, model_dir))
        if model_dir:
            log.warning("no tokenizer.json under %s; prefix hashing falls back to bytes", model_dir)
        return cls(None, block_size)

    def load(self, model_dir: str) -> bool:
        """Take the tokenizer of model_dir (blocking: call it in a thread), once per model dir; whether
        prefix hashing now uses a tokenizer."""
        if self.tokenizer is not None or model_dir == self.tried:
            return self.tokenizer is not None
        self.tried = model_dir
        fresh = PromptHasher.from_model_dir(model_dir, self.block_size)
        if fresh.tokenizer is not None:
            self.tokenizer, self.encoder = fresh.tokenizer, fresh.encoder
        return self.tokenizer is not None

    def chat_ids(self, messages: list, tools=None, template_kwargs: dict | None = None) -> list[int]:
        msgs = normalize_messages(messages)
        if self.tokenizer is None:
            return list("".join(f"<{m.get('role')}>{m['content']}" for m in msgs).encode())
        kwargs = dict(template_kwargs or {})
        if tools:
            kwargs["tools"] = tools
        return self._encode(self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, **kwargs))

    def text_ids(self, text: str) -> list[int]:
        return self._encode(text) if self.tokenizer is not None else list(text.encode())

    def _encode(self, text: str) -> list[int]:
        return self.encoder.encode(text) if self.encoder is not None else self.tokenizer.encode(text)

    def route_for_ids(self, ids: list[int], salt: str | None = None) -> RouteRequest:
        hashes = self.block_hashes(ids, self.block_size, salt)
        return RouteRequest(prompt_tokens=len(ids), block_hashes=tuple(hashes), block_size=self.block_size)

    async def for_chat(self, messages: list, *, tools=None, template_kwargs: dict | None = None,
                       salt: str | None = None) -> RouteRequest:
        size = sum(len(_flatten(m.get("content"))) for m in messages if isinstance(m, dict))
        if size > THREAD_THRESHOLD_CHARS:
            ids = await asyncio.to_thread(self.chat_ids, messages, tools, template_kwargs)
        else:
            ids = self.chat_ids(messages, tools, template_kwargs)
        return self.route_for_ids(ids, salt)

    async def for_text(self, text: str, salt: str | None = None) -> RouteRequest:
        ids = await asyncio.to_thread(self.text_ids, text) if len(text) > THREAD_THRESHOLD_CHARS \
            else self.text_ids(text)
        return self.route_for_ids(ids, salt)
