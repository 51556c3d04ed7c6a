"""One object for each long message text the gateway holds.

Every LLM node of an agent's workflow repeats its system prompt (and often the whole history), and
the workflows of one deployment share their system prompts; parsed from JSON, each copy would be a
string of its own, held until the workflow ends. `shared(text)` returns the one copy seen last, so
thousands of workflows in flight hold each long text once. It remembers at most `MAX_TEXTS` texts
and `MAX_CHARS` characters (the oldest go first); a text it forgot is simply kept again.
"""

from __future__ import annotations

from collections import OrderedDict

MIN_CHARS = 256  # shorter texts cost less than the look-up saves
MAX_TEXTS = 4096
MAX_CHARS = 64 * 2**20


class TextPool:
    def __init__(self, max_texts: int = MAX_TEXTS, max_chars: int = MAX_CHARS, min_chars: int = MIN_CHARS):
        self.max_texts, self.max_chars, self.min_chars = max_texts, max_chars, min_chars
        self._texts: OrderedDict[str, str] = OrderedDict()
        self.chars = 0

    def __call__(self, text):
        if not isinstance(text, str) or len(text) < self.min_chars:
            return text
        kept = self._texts.get(text)
        if kept is not None:
            self._texts.move_to_end(text)
            return kept
        self._texts[text] = text
        self.chars += len(text)
        while len(self._texts) > self.max_texts or self.chars > self.max_chars and len(self._texts) > 1:
            _, old = self._texts.popitem(last=False)
            self.chars -= len(old)
        return text

    def __len__(self) -> int:
        return len(self._texts)


shared = TextPool()
