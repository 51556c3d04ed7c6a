"""The knowable prefix of a pending node, with the real tokenizer and chat template: its tokens
are the first tokens of the final prompt whatever the missing upstream output turns out to be,
for references anywhere in a message, and for partial (still streaming) outputs."""

from __future__ import annotations

import random

import pytest

from common.workflow.spec import NodeSpec
from gateway.planner.prefix import (
    cut_after_last_special,
    knowable_prefix_ids,
    render_known,
    special_ids,
    stable_tokens,
)
from gateway.router.prompts import PromptHasher

SYSTEM = "You are a careful assistant. Answer briefly and use plain words. " * 4
REFERENCES = ("Summarize: {{up}}", "Context:\n{{up}}", "{{up}}", "x{{up}}y", "Value={{up}}.", "Items:\n\n{{up}} end",
              "Say '{{up}}'", "Number 12{{up}}", "Hello  {{up}}", "tab\t{{up}}", "über{{up}}",
              "Result:\n {{up}}\nQ? {{inputs.q}}")
OUTPUTS = ("", " Hello", "\n\nfoo", "123", "Paris.", "'s fine", " \n x", "<|im_end|>", "é", "\tTab", "the",
           "  two spaces", "!?", "中文")


@pytest.fixture(scope="module")
def hasher(model_dir):
    h = PromptHasher.from_model_dir(model_dir)
    assert h.tokenizer is not None and h.encoder is not None
    return h


def random_outputs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pieces = list("abcXYZ 019.,!?'\"\n\t-_éü中$<>|") + ["'s", "<|im_end|>", "  ", "\n\n", " the", "12", "<|im_"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def node(content: str) -> NodeSpec:
    return NodeSpec(id="down", messages=(("system", SYSTEM), ("user", content)))


@pytest.mark.parametrize("content", REFERENCES)
def test_the_prefix_is_a_token_prefix_of_every_final_prompt(hasher, content):
    spec = node(content)
    inputs = {"q": "why?"}
    messages, complete = render_known(spec, {}, inputs)
    assert not complete
    prefix = knowable_prefix_ids(hasher, messages, complete)
    system_only = hasher.chat_ids([{"role": "system", "content": SYSTEM}])
    assert len(prefix) > len(system_only) - 8  # at least the system prompt's message is in it
    for output in (*OUTPUTS, *random_outputs(150)):
        final, complete = render_known(spec, {"up": output}, inputs)
        assert complete
        ids = hasher.chat_ids(final)
        assert ids[:len(prefix)] == prefix, (content, output)


@pytest.mark.parametrize("content", REFERENCES[:6])
def test_a_partial_output_extends_the_prefix_safely(hasher, content):
    spec = node(content)
    static = knowable_prefix_ids(hasher, *render_known(spec, {}, {"q": ""}))
    for output in (*OUTPUTS, *random_outputs(40, seed=1), "The capital of France is Paris, a city of art."):
        final = hasher.chat_ids(render_known(spec, {"up": output}, {"q": ""})[0])
        for cut in range(len(output) + 1):
            messages, complete = render_known(spec, {}, {"q": ""}, partial={"up": output[:cut]})
            prefix = knowable_prefix_ids(hasher, messages, complete)
            assert final[:len(prefix)] == prefix, (content, output, cut)
            assert len(prefix) >= len(static)


def test_a_partial_output_grows_the_prefix(hasher):
    spec = node("Summarize: {{up}}")
    long_output = "Paris is the capital of France. " * 8
    short = knowable_prefix_ids(hasher, *render_known(spec, {}, {}, partial={"up": long_output[:20]}))
    longer = knowable_prefix_ids(hasher, *render_known(spec, {}, {}, partial={"up": long_output}))
    assert len(longer) >= len(short) + 40


def test_resolved_references_and_skipped_nodes_are_known(hasher):
    spec = NodeSpec(id="d", messages=(("system", SYSTEM), ("user", "A: {{a}} B: {{b}} C: {{c}}")))
    messages, complete = render_known(spec, {"a": "alpha", "b": ""}, {})
    assert not complete and messages[1]["content"].startswith("A: alpha B:  C: ")
    messages, complete = render_known(spec, {"a": "alpha", "b": "", "c": "gamma"}, {})
    assert complete
    assert knowable_prefix_ids(hasher, messages, complete) == hasher.chat_ids(messages)


def test_without_a_tokenizer_there_is_no_prefix():
    assert knowable_prefix_ids(PromptHasher(None), [{"role": "user", "content": "hi"}], True) == []


def test_stable_tokens_drop_the_word_a_continuation_may_extend(hasher):
    kept = stable_tokens(hasher, "Hello wor")
    assert hasher.tokenizer.decode(kept) == "Hello"
    assert stable_tokens(hasher, "a <|im_") == stable_tokens(hasher, "a ")  # half a special token is not text


def test_a_conversation_prefix_ends_at_its_last_special_token(hasher):
    ids = hasher.chat_ids([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}])
    cut = cut_after_last_special(ids, special_ids(hasher))
    assert ids[len(cut) - 1] in special_ids(hasher) and len(ids) - len(cut) <= 3  # "assistant\n" after it
    nxt = hasher.chat_ids([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "More"}])
    assert nxt[:len(cut)] == cut


def test_probing_a_window_of_a_long_tail_keeps_what_probing_all_of_it_keeps(hasher, monkeypatch):
    """A long streamed output (code, prose, odd whitespace and scripts): the probes re-tokenize only the
    last pre-tokens, and the tokens kept are the ones probing the whole text keeps, a prefix of the text
    followed by any continuation."""
    from gateway.planner import prefix

    rng = random.Random(7)
    words = ["def ", "f(x):\n", "    return", " x", " * 2", "\n\n", "# é中文 ", "'s", "  ", "\t", "12.5", "!=", " the",
             "Paris.", "<", "|im_", "\n"]
    texts = ["Summarize: " + "".join(rng.choice(words) for _ in range(n)) for n in (40, 120, 400)]
    for text in texts:
        for cut in range(len(text) // 2, len(text) + 1, max(1, len(text) // 25)):
            windowed = stable_tokens(hasher, text[:cut])
            monkeypatch.setattr(prefix, "PROBE_WINDOW_PIECES", 10 ** 6)
            whole = stable_tokens(hasher, text[:cut])
            monkeypatch.undo()
            assert windowed == whole, (text[:cut][-60:],)
            for rest in (text[cut:], *random_outputs(5, seed=cut)):
                assert hasher.text_ids(text[:cut] + rest)[:len(windowed)] == windowed
