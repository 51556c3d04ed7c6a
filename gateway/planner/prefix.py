"""The knowable prompt prefix of a node that cannot run yet, as token ids that are
guaranteed to begin its final prompt.

A pending node's messages quote upstream outputs (`{{node_id}}`) that may not
exist yet. Everything before the first missing one is known now: system prompt,
instructions, tool schemas, inputs, finished upstream outputs, and — while the
upstream streams — the part of its output already generated. Prefetching those
tokens only helps if they are a *token* prefix of the final prompt, not just a
text prefix: BPE merges across the cut would make the worker's radix cache miss.

How the cut is made safe:
1. The messages are rendered through the model's chat template with every
   missing reference replaced by SENTINEL (so the template sees the final
   message structure), and the text is cut at the first SENTINEL.
2. HF tokenizers split text at added (special) tokens before anything else, so
   the text up to the last special token tokenizes the same whatever follows
   (`head`). Only the text after it (`tail`) can merge with the unknown rest.
3. In the tail, a continuation can extend the last pre-token ("wor" + "ld"),
   and BPE then merges differently, or complete a special token whose start
   ends the text ("<|im_"). So the tail is cut before a trailing special-token
   stub and before its last pre-token (the tokenizer's own pre-tokenizer says
   where), and the tokens kept must also begin the tokenization of the whole
   tail followed by each of a set of probes covering every character class a
   pre-tokenizer distinguishes (letters, digits, spaces, newlines,
   punctuation, contractions, non-ASCII). A test checks the result against
   hundreds of real continuations with the real tokenizer.
Without an exact piecewise encoder (a tokenizer with a normalizer or stripping
special tokens) step 2 is skipped and the whole text is treated as tail.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from common.workflow.spec import NodeSpec
from common.workflow.templating import INPUT_PREFIX, REF
from gateway.router.prompts import PromptHasher, normalize_messages

SENTINEL = "\ue000\ue001"  # private-use characters: never in a real prompt, never escaped by a template
PROBE_WINDOW_PIECES = 16  # pre-tokens before the last one that the probes re-tokenize (stable_tokens)
PROBES = ("a", "A", "s", "t", "re", " a", " A", "  a", "1", " 1", "12", ".", " .", ",", "!", "'", "'s", "\"",
          "(", "-", "\n", "\n\n", "\na", " \n", "\t", " ", "  ", "é", "中", "<", "_", "$")


def render_known(spec: NodeSpec, known: Mapping[str, str], inputs: Mapping[str, Any],
                 partial: Mapping[str, str] | None = None) -> tuple[list[dict], bool]:
    """The node's messages with every reference that can be resolved now resolved.

    known: node id → its output text for every *resolved* upstream node ("" for a
    skipped one, as the final render has it). partial: node id → the text streamed
    so far by an upstream still running. A reference to anything else becomes
    SENTINEL (after the partial text, where there is one). Returns (messages,
    complete): complete is True when no SENTINEL was needed, i.e. these are the
    final messages.
    """
    partial = partial or {}
    missing = False

    def sub(m: re.Match) -> str:
        nonlocal missing
        name = m.group(1)
        if name.startswith(INPUT_PREFIX):
            value = inputs.get(name[len(INPUT_PREFIX):], "")
            return value if isinstance(value, str) else json.dumps(value)
        if name in known:
            return known[name] or ""
        missing = True
        return partial.get(name, "") + SENTINEL

    messages = [{"role": role, "content": REF.sub(sub, content)} for role, content in spec.messages]
    return messages, not missing


def knowable_prefix_ids(hasher: PromptHasher, messages: list[dict], complete: bool) -> list[int]:
    """Token ids that begin the node's final prompt (all of it when `complete`).
    [] when the gateway has no tokenizer: byte stand-ins are no use to a worker."""
    if hasher.tokenizer is None:
        return []
    if complete:
        return hasher.chat_ids(messages)
    text = hasher.tokenizer.apply_chat_template(normalize_messages(messages), add_generation_prompt=True)
    cut = text.find(SENTINEL)
    return safe_token_prefix(hasher, text if cut < 0 else text[:cut])


def safe_token_prefix(hasher: PromptHasher, text: str) -> list[int]:
    """Token ids of `text` that stay the same whatever text follows it."""
    splitter = special_splitter(hasher)
    if splitter is not None:
        last = None
        for last in splitter.finditer(text):
            pass
        if last is not None:
            head, tail = text[:last.end()], text[last.end():]
            return hasher.text_ids(head) + stable_tokens(hasher, tail)
    return stable_tokens(hasher, text)


def stable_tokens(hasher: PromptHasher, text: str) -> list[int]:
    """The leading tokens of `text` that no continuation can change: the text is cut
    before any trailing piece of a special token, then before its last pre-token
    (which a continuation may extend, and BPE then merges differently), and what
    is left must tokenize the same under every probe continuation.

    The probes re-tokenize only a window of the last `PROBE_WINDOW_PIECES` pre-tokens: a
    pre-tokenizer's pieces are tokenized apart, so a continuation cannot reach the tokens
    before the window (the window's own tokens must end the text's, or the whole text is
    probed). A streamed upstream's quoted output grows a long prompt a few blocks at a
    time, and probing all of it on every pass cost the gateway most of its CPU."""
    pre_tokenizer = _pre_tokenizer(hasher)
    if not text or pre_tokenizer is None:
        return []
    text = text[:len(text) - _special_stub(hasher, text)]
    pieces = pre_tokenizer.pre_tokenize_str(text)
    if len(pieces) < 2:
        return []
    cut = pieces[-1][1][0]
    base = hasher.text_ids(text[:cut])
    start = pieces[max(0, len(pieces) - 1 - PROBE_WINDOW_PIECES)][1][0]
    window = hasher.text_ids(text[start:cut]) if start else base
    if start and (len(window) > len(base) or base[len(base) - len(window):] != window):
        start, window = 0, base  # the window's start is no token boundary here: probe it all
    keep = len(window)
    for probe in PROBES:
        keep = min(keep, common_prefix(window, hasher.text_ids(text[start:] + probe)))
        if keep == 0:
            break
    return base[:len(base) - len(window) + keep]


def _pre_tokenizer(hasher: PromptHasher):
    """The HF pre-tokenizer behind the engine's Tokenizer (None: unknown, so nothing after
    the last special token counts as stable)."""
    return getattr(hasher.tokenizer, "pre_tokenizer", None)


def _special_stub(hasher: PromptHasher, text: str) -> int:
    """Length of the longest end of `text` that is the start of a special token ("<|im_"):
    the rest of that token may arrive and turn the stub into one special token."""
    encoder = hasher.encoder
    added = encoder.added if encoder is not None and encoder.added else {}
    longest = 0
    for token in added:
        for n in range(min(len(token) - 1, len(text)), longest, -1):
            if text.endswith(token[:n]):
                longest = n
                break
    return longest


def special_splitter(hasher: PromptHasher) -> re.Pattern | None:
    """A pattern matching the tokenizer's special tokens, when text splits exactly at them."""
    encoder = hasher.encoder
    if encoder is None or not encoder.added:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(encoder.added, key=len, reverse=True)))


def special_ids(hasher: PromptHasher) -> frozenset[int]:
    encoder = hasher.encoder
    return frozenset(encoder.added.values()) if encoder is not None and encoder.added else frozenset()


def cut_after_last_special(ids: Sequence[int], specials: frozenset[int]) -> list[int]:
    """ids up to and including the last special token ([] when there is none): a token
    prefix of any prompt that continues the same rendered conversation."""
    for i in range(len(ids) - 1, -1, -1):
        if ids[i] in specials:
            return list(ids[:i + 1])
    return []


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
