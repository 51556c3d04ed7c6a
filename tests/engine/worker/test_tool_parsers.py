"""Tool-call parsers (engine/worker/tool_parsers.py) and chat planning
(engine/worker/chat.py): each family's format parsed whole and streamed in any
split, invalid markup kept as content, tool_choice resolved, and calls and tool
results rendered for a template that knows nothing of tools."""

from __future__ import annotations

import json

import pytest

from common.errors import BadRequestError
from engine.worker.chat import plan_chat, resolve_tool_choice
from engine.worker.tool_parsers import StreamingToolCalls, ToolCall, make_parser

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}

CASES = [
    ("smollm2", 'Let me check.<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                '{"name": "get_time", "arguments": {}}]</tool_call>', "Let me check."),
    ("qwen25", 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
               '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>', "Let me check."),
    ("llama3", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
               '{"name": "get_time", "parameters": {}}', ""),
]
EXPECTED = [ToolCall("get_weather", '{"city": "Paris"}'), ToolCall("get_time", "{}")]


@pytest.mark.parametrize("name, text, content", CASES)
def test_parse_whole_reply(name, text, content):
    assert make_parser(name).parse(text) == (content, EXPECTED)


@pytest.mark.parametrize("name, text, content", CASES)
@pytest.mark.parametrize("step", [1, 3, 7])
def test_streaming_in_any_split_gives_the_same_calls_and_content(name, text, content, step):
    stream = StreamingToolCalls(make_parser(name))
    got_content, got_calls = "", []
    pieces = [text[i:i + step] for i in range(0, len(text), step)]
    for i, piece in enumerate(pieces):
        c, calls = stream.feed(piece, final=i == len(pieces) - 1)
        got_content += c
        got_calls += calls
    assert got_calls == EXPECTED
    assert got_content.strip() == content
    assert "<tool_call>" not in got_content and "python_tag" not in got_content


@pytest.mark.parametrize("name", ["smollm2", "qwen25", "llama3"])
def test_plain_text_and_broken_markup_stay_content(name):
    parser = make_parser(name)
    for text in ["The weather is fine.", '<tool_call>[{"name": "get_weather", "arguments": {"city": </tool_call>',
                 '{"name": "get_weather", "parameters": {"city": ']:
        assert parser.parse(text) == (text, [])
        stream = StreamingToolCalls(parser)
        streamed = "".join(stream.feed(text[i:i + 4], final=i + 4 >= len(text))[0] for i in range(0, len(text), 4))
        assert streamed == text


@pytest.mark.parametrize("name", ["smollm2", "qwen25"])
def test_a_string_argument_that_holds_the_closing_tag_stays_inside_its_call(name):
    """A grammar-bound call of a small model wrote `}}]</tool_call>` inside its string argument and went on:
    the block is read as JSON, so the call is whole and its argument keeps that text."""
    expression = 'round(4.2, 2)}}]</tool_call> 4.2 * 100 = $42.20'
    call = {"name": "calculator", "arguments": {"expression": expression}}
    body = json.dumps([call]) if name == "smollm2" else "\n" + json.dumps(call) + "\n"
    text = f"<tool_call>{body}</tool_call>"
    content, calls = make_parser(name).parse(text)
    assert content == "" and calls == [ToolCall("calculator", json.dumps({"expression": expression}))]
    stream = StreamingToolCalls(make_parser(name))
    streamed = [c for i in range(0, len(text), 5) for c in stream.feed(text[i:i + 5], final=i + 5 >= len(text))[1]]
    assert streamed == calls


def test_streamed_content_is_released_before_the_call_completes():
    stream = StreamingToolCalls(make_parser("smollm2"))
    assert stream.feed("Checking the weather. ") == ("Checking the weather. ", [])
    assert stream.feed("<tool_") == ("", [])  # might open a call: held back
    assert stream.feed('call>[{"name": "get_time", "arguments": {}}]') == ("", [])
    assert stream.feed("</tool_call>") == ("", [ToolCall("get_time", "{}")])


def test_tool_choice():
    assert resolve_tool_choice([WEATHER], None) == ([WEATHER], None)
    assert resolve_tool_choice([WEATHER], "none") == ([], "")
    assert resolve_tool_choice([WEATHER, TIME], "required") == ([WEATHER, TIME], "*")
    named = {"type": "function", "function": {"name": "get_time"}}
    assert resolve_tool_choice([WEATHER, TIME], named) == ([WEATHER, TIME], "get_time")
    with pytest.raises(BadRequestError, match="'nope'"):
        resolve_tool_choice([WEATHER], {"type": "function", "function": {"name": "nope"}})
    with pytest.raises(BadRequestError, match="needs tools"):
        resolve_tool_choice(None, "required")


def test_constraint_of_a_named_call_holds_only_that_tool():
    spec = json.loads(make_parser("smollm2").call_constraint([TIME]).source)
    assert spec["prefix"] == "<tool_call>[" and spec["suffix"] == "]</tool_call>"
    assert spec["schema"]["properties"]["name"] == {"const": "get_time"}
    both = json.loads(make_parser("qwen25").call_constraint([WEATHER, TIME]).source)["schema"]
    assert [o["properties"]["name"]["const"] for o in both["anyOf"]] == ["get_weather", "get_time"]


def test_a_template_without_tools_gets_them_from_the_parser(tokenizer):
    assert not tokenizer.renders_tools  # the embedded model's template
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"}]
    plan = plan_chat(tokenizer, make_parser("smollm2"), messages, [WEATHER], "auto")
    assert plan.text.startswith("<|im_start|>system\n") and '"get_weather"' in plan.text.split("<|im_end|>")[0]
    assert ('<|im_start|>assistant\n<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
            '</tool_call><|im_end|>') in plan.text
    assert "<|im_start|>tool\nsunny, 21C<|im_end|>" in plan.text
    assert plan.text.endswith("<|im_start|>assistant\n")
    assert plan.parser is not None and plan.constraint is None
    none = plan_chat(tokenizer, make_parser("smollm2"), messages[:1], [WEATHER], "none")
    assert "get_weather" not in none.text and none.parser is None
    assert none.constraint.kind == "ebnf" and none.constraint.source == "root ::= [^<] [^\\x00]*"
