"""Request validation at the HTTP edge: every bad value is a 400 with SGLang's
message, and unknown sampling keys are refused rather than ignored."""

from __future__ import annotations

import math

import pytest

from common.errors import BadRequestError, ContextLengthError
from engine.request import SamplingParams
from engine.worker.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
    GenerateSamplingParams,
    build_sampling_params,
    parse,
    reject_unsupported,
)

VOCAB = 100
BASE = dict(max_new_tokens=16, temperature=1.0, top_p=1.0, top_k=-1, vocab_size=VOCAB)


def build(**overrides) -> SamplingParams:
    return build_sampling_params(**{**BASE, **overrides})


@pytest.mark.parametrize("overrides, param, message", [
    (dict(temperature=-1.0), "temperature", "temperature must be a non-negative finite number, got -1.0."),
    (dict(temperature=math.inf), "temperature", "temperature must be a non-negative finite number, got inf."),
    (dict(temperature=math.nan), "temperature", "temperature must be a non-negative finite number, got nan."),
    (dict(top_p=0.0), "top_p", "top_p must be in (0, 1], got 0.0."),
    (dict(top_p=1.5), "top_p", "top_p must be in (0, 1], got 1.5."),
    (dict(top_p=math.nan), "top_p", "top_p must be in (0, 1], got nan."),
    (dict(min_p=-0.1), "min_p", "min_p must be in [0, 1], got -0.1."),
    (dict(min_p=1.5), "min_p", "min_p must be in [0, 1], got 1.5."),
    (dict(top_k=0), "top_k", "top_k must be -1 (disable) or at least 1, got 0."),
    (dict(top_k=-2), "top_k", "top_k must be -1 (disable) or at least 1, got -2."),
    (dict(frequency_penalty=2.5), "frequency_penalty", "frequency_penalty must be in [-2, 2], got 2.5."),
    (dict(presence_penalty=-3.0), "presence_penalty", "presence_penalty must be in [-2, 2], got -3.0."),
    (dict(repetition_penalty=0.0), "repetition_penalty", "repetition_penalty must be in (0, 2], got 0.0."),
    (dict(repetition_penalty=2.5), "repetition_penalty", "repetition_penalty must be in (0, 2], got 2.5."),
    (dict(max_new_tokens=-1), "max_new_tokens", "max_new_tokens must be at least 0, got -1."),
    (dict(max_new_tokens=-1, max_tokens_name="max_tokens"), "max_tokens", "max_tokens must be at least 0, got -1."),
    (dict(min_new_tokens=17), "min_new_tokens", "min_new_tokens must be in [0, max_new_tokens(16)], got 17."),
    (dict(min_new_tokens=-1), "min_new_tokens", "min_new_tokens must be in [0, max_new_tokens(16)], got -1."),
    (dict(stop=[""]), "stop", "stop sequences must be non-empty strings"),
    (dict(stop=[f"s{i}" for i in range(17)]), "stop", "at most 16 stop sequences are allowed, got 17"),
    (dict(stop_token_ids=[VOCAB]), "stop_token_ids", f"stop_token_ids has {VOCAB}, outside the vocabulary [0, {VOCAB})"),
    (dict(stop_token_ids=[-1]), "stop_token_ids", f"stop_token_ids has -1, outside the vocabulary [0, {VOCAB})"),
    (dict(logit_bias={"abc": 1.0}), "logit_bias", "logit_bias keys must be token ids, got 'abc'"),
    (dict(logit_bias={str(VOCAB): 1.0}), "logit_bias", f"logit_bias must has keys in [0, {VOCAB - 1}], got {VOCAB}."),
    (dict(logit_bias={"5": 101.0}), "logit_bias", "logit_bias values must be in [-100, 100], got 101.0"),
    (dict(logit_bias={"5": math.inf}), "logit_bias", "logit_bias values must be in [-100, 100], got inf"),
])
def test_each_invalid_value_is_a_400_with_its_message(overrides, param, message):
    with pytest.raises(BadRequestError) as info:
        build(**overrides)
    err = info.value
    assert err.status == 400
    assert err.message == message
    assert err.param == param
    body = err.to_json()["error"]
    assert body == {"message": message, "type": "invalid_request_error", "param": param, "code": 400}


def test_valid_values_are_frozen_into_sampling_params():
    p = build(temperature=0.0, top_p=0.9, top_k=5, min_p=0.1, stop="END", stop_token_ids=[3, 4],
              logit_bias={"9": -1, "2": 2.5}, min_new_tokens=4, seed=11, ignore_eos=True)
    assert p.max_new_tokens == 16 and p.top_k == 5 and p.top_p == 0.9 and p.min_p == 0.1
    assert p.stop == ("END",)
    assert p.stop_token_ids == (3, 4)
    assert p.logit_bias == ((2, 2.5), (9, -1.0))
    assert p.seed == 11 and p.ignore_eos and p.min_new_tokens == 4
    assert p.greedy
    assert hash(p) == hash(build(temperature=0.0, top_p=0.9, top_k=5, min_p=0.1, stop="END", stop_token_ids=[3, 4],
                                  logit_bias={"9": -1, "2": 2.5}, min_new_tokens=4, seed=11, ignore_eos=True))


def test_boundary_values_are_accepted():
    build(top_p=1.0, min_p=0.0, top_k=1, max_new_tokens=0, repetition_penalty=2.0, frequency_penalty=-2.0,
          presence_penalty=2.0, stop=[f"s{i}" for i in range(16)], logit_bias={"0": -100, str(VOCAB - 1): 100})


def test_greedy_means_zero_temperature_or_top_k_one():
    assert build(temperature=0.0).greedy
    assert build(temperature=1e-7).greedy
    assert build(top_k=1).greedy
    assert not build(temperature=0.7).greedy


# -- parse(): pydantic at the edge -------------------------------------------------------------------
def test_unknown_sampling_param_is_a_400_naming_it():
    with pytest.raises(BadRequestError) as info:
        parse(GenerateSamplingParams, {"max_new_tokens": 4, "top_q": 0.5})
    assert info.value.status == 400
    assert "top_q" in info.value.message and "Extra inputs are not permitted" in info.value.message
    with pytest.raises(BadRequestError) as info:
        parse(GenerateRequest, {"text": "hi", "sampling_params": {"temprature": 0}})
    assert info.value.status == 400
    assert info.value.param == "sampling_params.temprature"
    assert "temprature: Extra inputs are not permitted" in info.value.message


def test_unknown_top_level_fields_are_ignored():
    req = parse(GenerateRequest, {"text": "hi", "some_future_field": 1})
    assert req.text == "hi"
    assert req.sampling_params.max_new_tokens == 128  # SGLang's default


@pytest.mark.parametrize("body", [[1, 2], "text", None, 3])
def test_a_body_that_is_not_an_object_is_a_400(body):
    with pytest.raises(BadRequestError) as info:
        parse(GenerateRequest, body)
    assert info.value.status == 400
    assert info.value.message == "the request body must be a JSON object"


@pytest.mark.parametrize("model, body, where", [
    (GenerateRequest, {"text": "hi", "sampling_params": {"max_new_tokens": "abc"}}, "max_new_tokens"),
    (GenerateRequest, {"text": "hi", "sampling_params": {"max_new_tokens": 1.5}}, "max_new_tokens"),
    (GenerateRequest, {"input_ids": "hello"}, "input_ids"),
    (GenerateRequest, {"text": "hi", "stream": "maybe"}, "stream"),
    (ChatCompletionRequest, {"messages": "hello"}, "messages"),
    (ChatCompletionRequest, {"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    (ChatCompletionRequest, {}, "messages"),
    (CompletionRequest, {"prompt": 5}, "prompt"),
    (CompletionRequest, {"prompt": "hi", "n": "two"}, "n"),
])
def test_wrong_field_types_are_a_400_naming_the_field(model, body, where):
    with pytest.raises(BadRequestError) as info:
        parse(model, body)
    assert info.value.status == 400
    assert info.value.message.startswith("invalid request: ")
    assert where in info.value.message


def test_lax_numeric_strings_are_coerced_like_sglang():
    req = parse(GenerateRequest, {"text": "hi", "sampling_params": {"max_new_tokens": "12"}})
    assert req.sampling_params.max_new_tokens == 12


def test_reject_unsupported_names_the_feature():
    reject_unsupported(regex=None, json_schema="")
    with pytest.raises(BadRequestError) as info:
        reject_unsupported(regex="[a-z]+")
    assert info.value.status == 400
    assert info.value.param == "regex"
    assert "regex is not supported" in info.value.message


def test_context_length_error_is_a_400_with_its_code():
    err = ContextLengthError("too long", param="max_tokens")
    assert err.status == 400
    assert err.to_json()["error"]["code"] == "context_length_exceeded"
