"""Tool calling and structured output on a real worker, through the official
OpenAI client and SGLang's /generate: tool_calls in replies and stream deltas,
a named or required tool_choice that yields a valid call every time, tool
results rendered back, response_format valid in 50 of 50 seeded samples, and
bad schemas refused with a 400 that says what is wrong."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest

from tests.support import http_json

pytestmark = pytest.mark.slow

CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": CITY}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Current local time in a city",
                                         "parameters": CITY}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PET = {"type": "object",
       "properties": {"name": {"type": "string", "maxLength": 16}, "species": {"enum": ["cat", "dog", "bird"]},
                      "age": {"type": "integer", "minimum": 0, "maximum": 30}},
       "required": ["name", "species", "age"]}


@pytest.fixture(scope="module")
def client(worker):
    from openai import OpenAI

    return OpenAI(base_url=worker + "/v1", api_key="unused", max_retries=0)


def _args_valid(call, tool) -> dict:
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, tool["function"]["parameters"])
    return args


def test_named_tool_choice_gives_a_valid_call_every_time(client):
    named = {"type": "function", "function": {"name": "get_time"}}

    def ask(seed):
        return client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER, TIME], tool_choice=named,
                                              temperature=1.0, seed=seed, max_tokens=48)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, range(8)))
    for r in replies:
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls
        assert call.type == "function" and call.function.name == "get_time" and call.id.startswith("call_")
        _args_valid(call, TIME)


def test_required_calls_one_of_the_tools_greedy(client):
    r = client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                       temperature=0, max_tokens=48)
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert _args_valid(call, WEATHER) == {"city": "Paris"}
    assert r.choices[0].finish_reason == "tool_calls"


def test_stream_carries_the_call_in_openai_delta_format(client):
    stream = client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                            temperature=0, max_tokens=48, stream=True)
    deltas, reasons = [], []
    for chunk in stream:
        deltas += chunk.choices[0].delta.tool_calls or []
        reasons.append(chunk.choices[0].finish_reason)
    assert reasons[-1] == "tool_calls"
    [delta] = deltas
    assert delta.index == 0 and delta.id.startswith("call_") and delta.type == "function"
    assert delta.function.name == "get_weather" and json.loads(delta.function.arguments) == {"city": "Paris"}


def test_tool_choice_none_and_plain_answers_have_no_calls(client):
    r = client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER], tool_choice="none",
                                       temperature=0, max_tokens=16)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


def test_tool_results_render_through_the_template(worker):
    """A second turn carrying the assistant's call and the tool's result: the model sees both
    (its reply, constrained to a call, names the other tool with the city from the first call)."""
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 degrees."},
        {"role": "user", "content": "And what time is it there?"}]
    status, body = http_json("POST", worker + "/v1/chat/completions", {
        "messages": history, "tools": [WEATHER, TIME], "temperature": 0, "max_tokens": 48,
        "tool_choice": {"type": "function", "function": {"name": "get_time"}}})
    assert status == 200, body
    [call] = body["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_time"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_response_format_json_schema_valid_in_50_of_50_seeded_samples(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "pet", "schema": PET, "strict": True}}
    ask = [{"role": "user", "content": "Invent a pet and describe it as JSON."}]

    def sample(seed):
        r = client.chat.completions.create(model="m", messages=ask, response_format=fmt, temperature=1.0, seed=seed,
                                           max_tokens=64)
        return r.choices[0]

    with ThreadPoolExecutor(16) as pool:
        choices = list(pool.map(sample, range(50)))
    for c in choices:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.message.content), PET)
    assert len({c.message.content for c in choices}) > 5  # really sampled, not one answer fifty times


def test_json_object_and_completions(client):
    ask = [{"role": "user", "content": 'Reply with a JSON object whose key "ok" is true.'}]
    r = client.chat.completions.create(model="m", messages=ask, response_format={"type": "json_object"},
                                       temperature=0, max_tokens=128)
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    c = client.completions.create(model="m", prompt="Pet record:", temperature=0, max_tokens=48,
                                  extra_body={"response_format": {"type": "json_schema",
                                                                  "json_schema": {"name": "p", "schema": PET}}})
    jsonschema.validate(json.loads(c.choices[0].text), PET)


def test_generate_takes_sglang_json_schema_regex_and_ebnf(worker):
    prompt = "<|im_start|>user\nWhen was the Eiffel Tower built?<|im_end|>\n<|im_start|>assistant\n"
    for sp, check in [({"json_schema": json.dumps(PET)}, lambda t: jsonschema.validate(json.loads(t), PET)),
                      ({"regex": r"[0-9]{4}"}, lambda t: t.isdigit() and len(t) == 4),
                      ({"ebnf": 'root ::= "In " [0-9] [0-9] [0-9] [0-9] "."'}, lambda t: t.startswith("In "))]:
        status, body = http_json("POST", worker + "/generate", {
            "text": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": 64, **sp}})
        assert status == 200, body
        assert check(body["text"]) is not False, (sp, body["text"])


@pytest.mark.parametrize("body, says", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
     'invalid json_schema: Unsupported type "objekt"'),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "json_schema.schema"),
    ({"response_format": {"type": "yaml"}}, "'yaml' is not supported"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "'nope'"),
])
def test_bad_constraints_are_openai_shaped_400s(worker, body, says):
    status, reply = http_json("POST", worker + "/v1/chat/completions", {"messages": ASK, "max_tokens": 4, **body})
    assert status == 400
    assert says in reply["error"]["message"] and reply["error"]["type"] == "invalid_request_error"


def test_generate_bad_regex_is_a_400(worker):
    status, reply = http_json("POST", worker + "/generate", {"text": "x", "sampling_params": {"regex": "a("}})
    assert status == 400 and "invalid regex" in reply["error"]["message"]


# tool_choice "auto": the model decides. The 135M model rarely calls a tool unprompted (a plain question
# gets a text answer); after one call and its result in the conversation it writes the next call itself,
# unconstrained. Whatever it writes, the reply is the parse of the very text it generated.
AUTO_CASES = {
    "plain question": (ASK, 64),
    "after a call in the history": (ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 degrees."},
        {"role": "assistant", "content": "It is sunny and 21 degrees in Paris."},
        {"role": "user", "content": "What is the weather in Berlin?"}], 64),
}
AUTO_CASES["cut off inside the call"] = (AUTO_CASES["after a call in the history"][0], 10)


def _raw_auto_output(worker, tokenizer, messages, max_tokens) -> str:
    """What the model generates for the auto-mode prompt, unparsed: the same prompt through /generate."""
    from engine.worker.chat import plan_chat
    from engine.worker.tool_parsers import make_parser

    plan = plan_chat(tokenizer, make_parser("smollm2"), messages, [WEATHER, TIME], "auto")
    status, body = http_json("POST", worker + "/generate", {
        "text": plan.text, "sampling_params": {"temperature": 0, "max_new_tokens": max_tokens}})
    assert status == 200, body
    return body["text"]


@pytest.mark.parametrize("case", list(AUTO_CASES))
def test_auto_tool_choice_returns_the_parse_of_what_the_model_wrote(client, worker, tokenizer, case):
    from engine.worker.tool_parsers import make_parser

    messages, max_tokens = AUTO_CASES[case]
    raw = _raw_auto_output(worker, tokenizer, messages, max_tokens)
    content, calls = make_parser("smollm2").parse(raw)
    r = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER, TIME], tool_choice="auto",
                                       temperature=0, max_tokens=max_tokens)
    message, reason = r.choices[0].message, r.choices[0].finish_reason
    if case == "plain question":  # a text answer: no call, no markup
        assert not calls and message.tool_calls is None and message.content == raw and "<tool_call>" not in raw
        assert reason == "length"
    elif case == "after a call in the history":  # the model's own, unconstrained call
        assert raw == '<tool_call>[{"name": "get_weather", "arguments": {"city": "Berlin"}}]</tool_call>'
        assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == \
            [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Berlin"})]
        assert message.content is None and reason == "tool_calls"
    else:  # a call cut off by max_tokens is no call: its text stays content, never a half-made call
        assert raw.startswith("<tool_call>[") and not raw.endswith("</tool_call>")
        assert not calls and content == raw
        assert message.tool_calls is None and message.content == raw and reason == "length"
    # streamed, the same reply arrives as deltas
    stream = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER, TIME], tool_choice="auto",
                                            temperature=0, max_tokens=max_tokens, stream=True)
    text, deltas, reasons = "", [], []
    for chunk in stream:
        text += chunk.choices[0].delta.content or ""
        deltas += chunk.choices[0].delta.tool_calls or []
        reasons.append(chunk.choices[0].finish_reason)
    assert text == (message.content or "") and reasons[-1] == reason
    assert [(d.function.name, d.function.arguments) for d in deltas] == \
        [(c.function.name, c.function.arguments) for c in message.tool_calls or ()]
