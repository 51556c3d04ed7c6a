"""Prompt-lookup (n-gram) speculation.

Algorithm: take the last n tokens of the sequence (n from max_n down to
min_n, longest first), find their most recent earlier occurrence in the
sequence (prompt and generated text alike), and propose the tokens that
followed it. Agent calls copy a lot — code being edited, JSON re-emitted, tool
results quoted back — so the continuation of an earlier occurrence is very
often exactly what comes next. A two-token match is the least evidence it
acts on, and proposes fewer tokens than a longer one.
"""

from __future__ import annotations


class NgramSpeculator:
    name = "ngram"

    def __init__(self, min_n: int = 2, max_n: int = 4, max_lookback: int = 8192):
        assert 1 <= min_n <= max_n
        self.min_n = min_n
        self.max_n = max_n
        self.max_lookback = max_lookback

    def propose(self, token_ids: list[int], k: int) -> list[int]:
        if k <= 0 or len(token_ids) < self.min_n + 1:
            return []
        ids = token_ids[-self.max_lookback:]
        last = ids[-1]
        # candidate ends: earlier positions holding the last token, most recent first
        ends = [i for i in range(len(ids) - 2, -1, -1) if ids[i] == last]
        for n in range(min(self.max_n, len(ids) - 1), self.min_n - 1, -1):
            tail = ids[-n:]
            for end in ends:
                start = end - n + 1
                if start >= 0 and ids[start:end + 1] == tail:
                    # weaker evidence, shorter draft
                    limit = k if n >= 3 else min(k, 4 * n)
                    return ids[end + 1:end + 1 + limit]
        return []
