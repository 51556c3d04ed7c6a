"""Token ids streamed with their text (`return_token_ids` on /v1/chat/completions, vLLM's extension).

The engine streams text behind its tokens at times: it holds back the last characters while they could
still begin a stop string, and a character split over two tokens until it is whole. A client that resumes
a call from the ids it got (the gateway's request migration) must have exactly the text of those ids, so
each chunk carries the ids whose text is entirely in what was sent up to and including it; the others
follow with the delta that completes their text. Their concatenation is the output's ids (but for the
tokens of a trimmed stop string, whose text is never sent).

The text of the next ids is decoded with a few ids of context before them (as incremental detokenizers
do: a tokenizer may render a token differently at the start of a text), so each chunk costs a short
decode, not one of the whole output.
"""

from __future__ import annotations

CONTEXT_IDS = 4


class CommittedIds:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.sent = 0  # ids handed out so far
        self.chars = 0  # length of their text

    def take(self, output_ids: list[int], sent_text: str) -> list[int]:
        """The ids not handed out yet whose text is in `sent_text` (everything streamed so far)."""
        start = max(0, self.sent - CONTEXT_IDS)
        context = len(self.tokenizer.decode(output_ids[start:self.sent]))
        unsent = sent_text[self.chars:]
        for end in range(len(output_ids), self.sent, -1):  # almost always the first try: nothing is held
            piece = self.tokenizer.decode(output_ids[start:end])[context:]
            if unsent.startswith(piece) and not piece.endswith("\ufffd"):
                new, self.sent, self.chars = output_ids[self.sent:end], end, self.chars + len(piece)
                return list(new)
        return []
