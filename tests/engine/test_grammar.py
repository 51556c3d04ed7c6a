"""Grammar-constrained decoding (engine/grammar.py) inside the engine: output that
matches its schema, regex or grammar; the same greedy fp32 tokens with n-gram
speculation on and off; drafts trimmed and rolled back exactly; compilation
cached; bad schemas refused with a message that says what is wrong."""

from __future__ import annotations

import json
import re

import pytest

from engine.grammar import Constraint, GrammarError
from engine.request import SamplingParams
from tests.support import generate, greedy, submit

pytestmark = pytest.mark.slow

RECORD = {"city": "Paris", "country": "France", "population": 2148000,
          "districts": ["Louvre", "Bourse", "Temple", "Marais"], "capital": True}
RECORD_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20},
                   "population": {"type": "integer"},
                   "districts": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 6},
                   "capital": {"type": "boolean"}},
    "required": ["city", "country", "population", "districts", "capital"],
}


def chat(user: str) -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


COPY_PROMPT = chat(f"Here is a record:\n{json.dumps(RECORD, separators=(',', ':'))}\nRepeat the record exactly as JSON.")


@pytest.fixture(scope="module")
def spec_engine(make_engine):
    return make_engine(speculative_algorithm="ngram", speculative_num_draft_tokens=8)


def schema_params(max_new_tokens=96, **kw):
    return greedy(max_new_tokens, constraint=Constraint("json_schema", json.dumps(RECORD_SCHEMA)), **kw)


def test_json_schema_output_parses_and_matches(engine_fp32, tokenizer):
    [out] = generate(engine_fp32, [tokenizer.encode(COPY_PROMPT)], schema_params())
    value = json.loads(out.text)
    assert set(value) == set(RECORD_SCHEMA["required"])
    assert isinstance(value["population"], int) and isinstance(value["capital"], bool)
    assert out.finish_reason["type"] == "stop"


def test_greedy_output_under_a_grammar_is_the_same_with_speculation(engine_fp32, spec_engine, tokenizer):
    prompts = [tokenizer.encode(COPY_PROMPT),
               tokenizer.encode(chat("Describe Paris as a JSON record with city, country, population, "
                                     "districts and capital."))]
    plain = generate(engine_fp32, prompts, schema_params())
    spec = generate(spec_engine, prompts, schema_params())
    assert [o.output_ids for o in spec] == [o.output_ids for o in plain]
    assert [o.text for o in spec] == [o.text for o in plain]
    # drafts really ran through the grammar: the copy prompt is all n-gram hits
    meta = spec[0].steps[-1].spec
    assert meta["spec_accept_token_num"] > 0


def test_regex_and_ebnf(engine_fp32, tokenizer):
    prompt = tokenizer.encode(chat("What is the date of the French national day?"))
    [dated] = generate(engine_fp32, [prompt], greedy(24, constraint=Constraint("regex", r"\d{4}-\d{2}-\d{2}")))
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", dated.text)
    ebnf = 'root ::= "answer: " ("yes" | "no")'
    [yn] = generate(engine_fp32, [tokenizer.encode(chat("Is Paris in France?"))],
                    greedy(16, constraint=Constraint("ebnf", ebnf)))
    assert yn.text in ("answer: yes", "answer: no")


def test_sampled_outputs_always_match(engine_fp32, tokenizer):
    prompt = tokenizer.encode(chat("Give a JSON record of a European city."))
    schema = Constraint("json_schema", json.dumps(RECORD_SCHEMA))
    params = [SamplingParams(max_new_tokens=160, temperature=1.0, seed=seed, constraint=schema) for seed in range(4)]
    outs = [submit(engine_fp32, prompt, p).wait() for p in params]
    for out in outs:
        value = json.loads(out.text)
        assert set(value) == set(RECORD_SCHEMA["required"])


def test_drafts_are_trimmed_and_rolled_back_exactly(engine_fp32, tokenizer):
    import torch

    state = engine_fp32.grammars.state(Constraint("json_schema", json.dumps(RECORD_SCHEMA)))
    for tok in tokenizer.encode('{"city": "Par'):
        assert state.accept(tok)
    before = torch.zeros(1, engine_fp32.model_config.vocab_size)
    state.mask(before)
    good = tokenizer.encode('is", "country": "Fr')
    bad = tokenizer.encode('"}')  # closes the object before its required fields
    assert len(bad) == 1
    assert state.valid_prefix(good + bad + good) == good  # cut at the first token the grammar rejects
    rows = torch.zeros(len(good) + 1, engine_fp32.model_config.vocab_size)
    state.mask(rows, good)
    after = torch.zeros(1, engine_fp32.model_config.vocab_size)
    state.mask(after)
    assert torch.equal(before, after)  # the walk over drafts left the matcher where it was
    assert torch.isfinite(rows[-1]).sum() < torch.isfinite(rows[0]).sum() or not torch.equal(rows[0], rows[-1])
    assert all(torch.isfinite(rows[i, t]) for i, t in enumerate(good))  # every draft allowed on its own row


def test_compilation_is_cached_per_schema(engine_fp32):
    backend = engine_fp32.grammars
    c = Constraint("json_schema", json.dumps({"type": "object", "properties": {"x": {"type": "integer"}}}))
    backend.compile(c)
    hits, misses = backend.hits, backend.misses
    backend.compile(c)
    backend.compile(Constraint("json_schema", json.dumps({"type": "object", "properties": {"x": {"type": "integer"}}})))
    assert (backend.hits, backend.misses) == (hits + 2, misses)


@pytest.mark.parametrize("constraint, says", [
    (Constraint("json_schema", '{"type": "objekt"}'), "objekt"),
    (Constraint("json_schema", '{"type": '), "not valid JSON"),
    (Constraint("regex", "a("), "parenthesis"),
    (Constraint("ebnf", "root ::= undefined_rule"), "undefined_rule"),
])
def test_a_bad_grammar_is_a_400_that_says_why(engine_fp32, constraint, says):
    with pytest.raises(GrammarError) as err:
        engine_fp32.grammars.compile(constraint)
    assert err.value.status == 400
    assert says in err.value.message
    assert err.value.message.startswith(f"invalid {constraint.kind}: ")
