"""From a chat request to the prompt the model sees: messages (tool calls and
tool results included) through the chat template, and what `tools` with
`tool_choice` mean for decoding.

tool_choice (OpenAI's):
- "none": the tools are neither shown nor parsed, and the reply is constrained
  not to open a call (a small model otherwise copies earlier calls as text);
- "auto" (the default with tools): the tools are shown, and calls the model
  writes are parsed out of its reply;
- "required" / {"type": "function", "function": {"name": N}}: as auto, and
  decoding is constrained to one call (to any tool, or to N) whose arguments
  match the tool's JSON Schema.

A template that renders tools itself (Qwen, Llama 3) gets `tools=` and messages
as HF templates expect them (arguments as objects). One that does not (the
embedded SmolLM2's) gets the parser's rendering: the tools in the system
message, earlier calls written into the assistant's content, tool results as
<tool_response> turns.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from common.errors import BadRequestError
from engine.grammar import Constraint
from engine.worker.tool_parsers import ToolCall, ToolCallParser


class ChatPlan(NamedTuple):
    text: str  # the rendered prompt
    parser: ToolCallParser | None  # parses tool calls out of the reply; None: the reply is text
    constraint: Constraint | None  # a required call's grammar


def flatten_content(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise BadRequestError(f"message content part of type {part.get('type')!r} is not supported "
                                  "(text only)", param="messages")
        parts.append(part["text"])
    return "".join(parts)


def _calls_of(message: dict) -> list[ToolCall]:
    calls = []
    for i, tc in enumerate(message.get("tool_calls") or []):
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequestError(f"messages: tool_calls[{i}] needs function.name", param="messages")
        args = fn.get("arguments", "{}")
        if not isinstance(args, str):
            args = json.dumps(args, ensure_ascii=False)
        calls.append(ToolCall(fn["name"], args))
    return calls


def _native(messages: list[dict]) -> list[dict]:
    """Messages for a template that renders tool calls: arguments as objects, as HF templates expect."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = []
            for c in _calls_of(m):
                try:
                    args = json.loads(c.arguments)
                except ValueError:
                    args = c.arguments
                calls.append({"type": "function", "function": {"name": c.name, "arguments": args}})
            m = {**m, "tool_calls": calls}
        out.append(m)
    return out


def _rendered_by_parser(messages: list[dict], tools: list[dict] | None, parser: ToolCallParser) -> list[dict]:
    """Messages for a template that knows nothing of tools: the parser writes them."""
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = parser.format_calls(_calls_of(m))
            text = m.get("content") or ""
            out.append({"role": "assistant", "content": f"{text}\n{calls}" if text else calls})
        elif m["role"] in ("tool", "function"):
            role, content = parser.format_result(m.get("content") or "")
            out.append({"role": role, "content": content})
        else:
            out.append({k: v for k, v in m.items() if k != "tool_calls"})
    if tools:
        prompt = parser.tools_prompt(tools)
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = {**out[0], "role": "system", "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def resolve_tool_choice(tools: list[dict] | None, tool_choice) -> tuple[list[dict], str | None]:
    """(tools the model is shown, the function a call must name: "*" any, "" none, None: free)."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise BadRequestError("tool_choice needs tools", param="tool_choice")
        return [], None
    if tool_choice in (None, "auto"):
        return tools, None
    if tool_choice == "none":
        return [], ""
    if tool_choice == "required":
        return tools, "*"
    name = None
    if isinstance(tool_choice, dict) and isinstance(tool_choice.get("function"), dict):
        name = tool_choice["function"].get("name")
    if not isinstance(name, str):
        raise BadRequestError('tool_choice must be "none", "auto", "required" or '
                              '{"type": "function", "function": {"name": ...}}', param="tool_choice")
    names = [(t.get("function") or {}).get("name") for t in tools]
    if name not in names:
        raise BadRequestError(f"tool_choice names function {name!r}, which is not among the tools "
                              f"({', '.join(map(str, names))})", param="tool_choice")
    return tools, name


def plan_chat(tokenizer, parser: ToolCallParser, messages: list[dict], tools: list[dict] | None, tool_choice,
              template_kwargs: dict | None = None) -> ChatPlan:
    shown, must_call = resolve_tool_choice(tools, tool_choice)
    msgs = [{**m, "content": flatten_content(m.get("content"))} for m in messages]
    kwargs = dict(template_kwargs or {})
    if tokenizer.renders_tools:
        msgs = _native(msgs)
        if shown:
            kwargs["tools"] = shown
    else:
        msgs = _rendered_by_parser(msgs, shown, parser)
    text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, **kwargs)
    constraint = None
    if must_call == "":
        constraint = parser.no_call_constraint()
    elif must_call is not None:
        targets = shown if must_call == "*" else [t for t in shown if t["function"]["name"] == must_call]
        constraint = parser.call_constraint(targets)
    return ChatPlan(text, parser if shown else None, constraint)
