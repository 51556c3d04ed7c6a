"""Token ids streamed with their text (`return_token_ids` on /v1/chat/completions, vLLM's extension).

The engine streams text behind its tokens at times: it holds back the last characters while they could
still begin a stop string, and a character split over two tokens until it is whole. A client that resumes
a call from the ids it got (the gateway's request migration) must have exactly the text of those ids, so
each chunk carries the ids whose text is entirely in what was sent up to and including it; the others
follow with the delta that completes their text. Their concatenation is the output's ids (but for the
tokens of a trimmed stop string, whose text is never sent).
"""

from __future__ import annotations


class CommittedIds:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.sent = 0  # ids handed out so far

    def take(self, output_ids: list[int], sent_text: str) -> list[int]:
        """The ids not handed out yet whose text is in `sent_text` (everything streamed so far)."""
        for end in range(len(output_ids), self.sent, -1):  # almost always the first try: nothing is held
            if sent_text.startswith(self.tokenizer.decode(output_ids[:end])):
                new, self.sent = output_ids[self.sent:end], end
                return list(new)
        return []
