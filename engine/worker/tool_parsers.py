"""Tool-call parsers, one per chat-template family, named as SGLang's
`--tool-call-parser` names them.

A parser knows how its model family writes a tool call:
- `parse(text)` splits finished output into (content, calls); text whose call
  markup does not hold valid JSON stays content, never a half-made call;
- `call_constraint(tools)` is the grammar of one call to one of `tools`, used
  when `tool_choice` is "required" or names a function, so decoding can only
  produce a well-formed call whose arguments match the tool's JSON Schema;
- `no_call_constraint()` is the grammar of a reply that opens no call
  (`tool_choice` "none": small models otherwise copy earlier calls as text);
- `format_calls`, `tools_prompt` and `format_result` write the tools, an
  assistant's earlier calls and tool results in the model's own format, for
  chat templates that do not render tools themselves (the embedded model's).

Families:
- smollm2: `<tool_call>[{"name": ..., "arguments": {...}}, ...]</tool_call>`, the
  format SmolLM2's function-calling data uses (a JSON list inside the tag);
- qwen25 (also qwen, hermes): one `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`
  block per call;
- llama3: the whole reply is `{"name": ..., "parameters": {...}}`, optionally after
  `<|python_tag|>`, several joined by `;`.
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from typing import NamedTuple

from common.errors import BadRequestError
from engine.grammar import Constraint


class ToolCall(NamedTuple):
    name: str
    arguments: str  # JSON text, as OpenAI's function.arguments

    def to_openai(self, index: int | None = None, call_id: str | None = None) -> dict:
        out = {"id": call_id or f"call_{uuid.uuid4().hex[:24]}", "type": "function",
               "function": {"name": self.name, "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}


def _call(obj, args_key: str) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get(args_key, obj.get("arguments", obj.get("parameters", {})))
    if isinstance(args, str):  # some models write arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _function(tool: dict) -> dict:
    fn = tool.get("function") if tool.get("type", "function") == "function" else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise BadRequestError("each tool must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                              param="tools")
    return fn


def call_schema(tools: list[dict], args_key: str = "arguments") -> dict:
    """JSON Schema of one call {"name": ..., args_key: {...}} to any of tools."""
    options = []
    for tool in tools:
        fn = _function(tool)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        options.append({"type": "object", "properties": {"name": {"const": fn["name"]}, args_key: params},
                        "required": ["name", args_key]})
    return options[0] if len(options) == 1 else {"anyOf": options}


class ToolCallParser(ABC):
    """The contract; subclasses set the markup. `starts`: text that opens the calls
    (at_start: only at the very beginning of the reply, leading whitespace aside)."""

    name = ""
    starts: tuple[str, ...] = ()
    at_start = False
    args_key = "arguments"

    @abstractmethod
    def parse(self, text: str, final: bool = True) -> tuple[str, list[ToolCall]]:
        """(content, calls) of a reply; with final=False, content that may still open a call is held back."""

    @abstractmethod
    def call_constraint(self, tools: list[dict]) -> Constraint:
        """The grammar a required or named call is decoded under."""

    @abstractmethod
    def format_calls(self, calls: list[ToolCall]) -> str:
        """The calls as this family writes them in an assistant turn."""

    def tools_prompt(self, tools: list[dict]) -> str:
        listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        example = self.format_calls([ToolCall("tool_name", json.dumps({"argument": "value"}))])
        return ("You can call these tools (function signatures in JSON Schema):\n"
                f"<tools>\n{listed}\n</tools>\n"
                "To call tools, reply with nothing but the calls, in this format:\n"
                f"{example}\n"
                "When no tool is needed, answer in plain text.")

    def format_result(self, content: str) -> tuple[str, str]:
        """(role, content) of a tool result's turn."""
        return "user", f"<tool_response>\n{content}\n</tool_response>"

    def no_call_constraint(self) -> Constraint:
        """tool_choice "none" with tools in the conversation: a reply that cannot open a call."""
        firsts = sorted({s[0] for s in self.starts})
        banned = "".join("\\" + c if c in "\\]^-" else c for c in firsts)
        return Constraint("ebnf", f"root ::= [^{banned}] [^\\x00]*")

    def find_start(self, text: str) -> int | None:
        """Where the calls begin in text, or None."""
        if self.at_start:
            stripped = text.lstrip()
            for s in self.starts:
                if stripped.startswith(s):
                    return len(text) - len(stripped)
            return None
        found = [i for i in (text.find(s) for s in self.starts) if i >= 0]
        return min(found) if found else None

    def holdback(self, text: str, at_beginning: bool) -> int:
        """How many trailing characters of text (unreleased output; at_beginning: nothing
        released before it) might begin a start marker, so are not content yet."""
        if self.at_start:
            head = text.lstrip()
            return len(text) if at_beginning and any(s.startswith(head) for s in self.starts) else 0
        longest = 0
        for s in self.starts:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    longest = max(longest, n)
                    break
        return longest


class SmolLM2Parser(ToolCallParser):
    name = "smollm2"
    starts = ("<tool_call>",)
    opens, closes = "<tool_call>", "</tool_call>"

    def format_result(self, content: str) -> tuple[str, str]:
        # its template renders any role; a `tool` turn is what the 135M model answers from best
        return "tool", content

    def parse(self, text: str, final: bool = True) -> tuple[str, list[ToolCall]]:
        """Every <tool_call> block whose body is JSON naming calls. The body is read as JSON, not up to the
        first </tool_call>: a string argument may hold that text (a small model's grammar-bound call can)."""
        calls, content, pos, decoder = [], [], 0, json.JSONDecoder()
        start = text.find(self.opens)
        while start != -1:
            block = self._block_at(text, start, decoder)
            if block is None:
                start = text.find(self.opens, start + 1)
                continue
            parsed, end = block
            content.append(text[pos:start])
            pos = end
            calls += parsed
            start = text.find(self.opens, pos)
        content.append(text[pos:])
        return "".join(content).strip() if calls else text, calls

    def _block_at(self, text: str, start: int, decoder: json.JSONDecoder) -> tuple[list[ToolCall], int] | None:
        """The calls of the block opening at `start` and where it ends, or None when it is not one (yet)."""
        at = _skip_space(text, start + len(self.opens))
        try:
            items, at = decoder.raw_decode(text, at)
        except ValueError:
            return None
        at = _skip_space(text, at)
        if not text.startswith(self.closes, at):
            return None
        items = items if isinstance(items, list) else [items]
        parsed = [_call(i, self.args_key) for i in items]
        if not parsed or None in parsed:
            return None
        return parsed, at + len(self.closes)

    def call_constraint(self, tools: list[dict]) -> Constraint:
        spec = {"prefix": "<tool_call>[", "schema": call_schema(tools), "suffix": "]</tool_call>"}
        return Constraint("tool_call", json.dumps(spec))

    def format_calls(self, calls: list[ToolCall]) -> str:
        items = ", ".join(f'{{"name": {json.dumps(c.name)}, "arguments": {c.arguments}}}' for c in calls)
        return f"<tool_call>[{items}]</tool_call>"


class HermesParser(SmolLM2Parser):
    """Qwen 2.5 / Hermes: one JSON object per <tool_call> block."""

    name = "qwen25"
    format_result = ToolCallParser.format_result

    def call_constraint(self, tools: list[dict]) -> Constraint:
        spec = {"prefix": "<tool_call>\n", "schema": call_schema(tools), "suffix": "\n</tool_call>"}
        return Constraint("tool_call", json.dumps(spec))

    def format_calls(self, calls: list[ToolCall]) -> str:
        return "\n".join(f'<tool_call>\n{{"name": {json.dumps(c.name)}, "arguments": {c.arguments}}}\n</tool_call>'
                         for c in calls)


class Llama3Parser(ToolCallParser):
    """Llama 3.x JSON tool calls: the reply is the call(s)."""

    name = "llama3"
    starts = ("<|python_tag|>", "{")
    at_start = True
    args_key = "parameters"

    def parse(self, text: str, final: bool = True) -> tuple[str, list[ToolCall]]:
        start = self.find_start(text)
        if start is None:
            return text, []
        body = text[start:].removeprefix("<|python_tag|>").strip()
        decoder, calls, pos = json.JSONDecoder(), [], 0
        while pos < len(body):
            try:
                obj, end = decoder.raw_decode(body, pos)
            except ValueError:
                return (text, []) if final or not calls else ("", calls)
            call = _call(obj, self.args_key)
            if call is None:
                return text, []
            calls.append(call)
            pos = end
            while pos < len(body) and body[pos] in "; \n\t":
                pos += 1
        return "", calls

    def call_constraint(self, tools: list[dict]) -> Constraint:
        spec = {"prefix": "", "schema": call_schema(tools, self.args_key), "suffix": ""}
        return Constraint("tool_call", json.dumps(spec))

    def format_calls(self, calls: list[ToolCall]) -> str:
        return "; ".join(f'{{"name": {json.dumps(c.name)}, "parameters": {c.arguments}}}' for c in calls)


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


PARSERS = {"smollm2": SmolLM2Parser, "qwen25": HermesParser, "qwen": HermesParser, "hermes": HermesParser,
           "llama3": Llama3Parser}


def make_parser(name: str, template_source: str = "") -> ToolCallParser:
    """The parser `--tool-call-parser name` selects; "auto" reads the chat template."""
    if name == "auto":
        if "<tool_call>" in template_source:
            name = "qwen25"
        elif "<|python_tag|>" in template_source or "ipython" in template_source:
            name = "llama3"
        else:
            name = "smollm2"
    if name not in PARSERS:
        raise ValueError(f"unknown tool-call parser {name!r}; choose auto or one of {', '.join(PARSERS)}")
    return PARSERS[name]()


class StreamingToolCalls:
    """Splits a growing reply into content deltas and complete tool calls.
    Text that may still open a call is held back; once a call opens, everything
    after it is buffered and calls are released as each one completes. If the
    markup never parses, the held text is released as content at the end."""

    def __init__(self, parser: ToolCallParser):
        self.parser = parser
        self.text = ""
        self.sent = 0  # characters of text released as content
        self.call_start: int | None = None
        self.calls_sent = 0

    def feed(self, delta: str, final: bool = False) -> tuple[str, list[ToolCall]]:
        self.text += delta
        if self.call_start is None:
            start = self.parser.find_start(self.text)
            if start is None:
                end = len(self.text) if final else len(self.text) - self.parser.holdback(self.text[self.sent:], self.sent == 0)
                content, self.sent = self.text[self.sent:max(end, self.sent)], max(end, self.sent)
                return content, []
            self.call_start = start
        content = self.text[self.sent:self.call_start] if self.sent < self.call_start else ""
        self.sent = max(self.sent, self.call_start)
        rest, calls = self.parser.parse(self.text[self.call_start:], final=final)
        if final and not calls:  # the markup did not hold a call: it was content after all
            content += self.text[self.sent:]
            self.sent = len(self.text)
            return content, []
        new = calls[self.calls_sent:]
        self.calls_sent = len(calls)
        if final and rest.strip():
            content += rest if not content else "\n" + rest
        return content, new
