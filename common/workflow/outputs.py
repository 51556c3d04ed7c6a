"""What an LLM node hands downstream: its text, or (`NodeSpec.output` "tool_call" / "tool_calls") the tool
calls of its chat completion as JSON. The gateway's executor and the SDK's client-driven runner both shape a
node's output here, from the same streamed chunks, so a workflow's outputs are the same whichever runs it."""

from __future__ import annotations

import json

from common.workflow.spec import NodeSpec


class ToolCallDeltas:
    """Tool calls assembled from a stream's chunks: by index, the name and id once, the arguments in pieces."""

    def __init__(self) -> None:
        self._calls: dict[int, dict] = {}

    def add(self, chunk: dict) -> None:
        for choice in chunk.get("choices") or ():
            for tc in (choice.get("delta") or {}).get("tool_calls") or ():
                call = self._calls.setdefault(tc.get("index", len(self._calls)),
                                              {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                call["id"] = tc.get("id") or call["id"]
                fn = tc.get("function") or {}
                call["function"]["name"] += fn.get("name") or ""
                call["function"]["arguments"] += fn.get("arguments") or ""

    def __bool__(self) -> bool:
        return bool(self._calls)

    def calls(self) -> tuple[dict, ...]:
        """OpenAI's {id, type, function: {name, arguments}}, in index order."""
        return tuple(self._calls[i] for i in sorted(self._calls))


class NotAToolCall(ValueError):
    """The node expects a tool call and the model answered in text."""


def node_output(spec: NodeSpec, text: str, tool_calls: tuple[dict, ...] | list[dict],
                finish_reason: str | None) -> str:
    """The node's output: `text`, or its tool call's arguments ("tool_call") or every call ("tool_calls"),
    as JSON. Raises NotAToolCall when a call was expected and none came."""
    if spec.output == "text":
        return text
    if not tool_calls:
        raise NotAToolCall(f"node {spec.id!r} expects a tool call (output {spec.output!r}) but the model "
                           f"answered in text (finish_reason {finish_reason}): {text[:200]!r}")
    calls = [{"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])}
             for c in tool_calls]
    if spec.output == "tool_call":
        return json.dumps(calls[0]["arguments"], ensure_ascii=False)
    return json.dumps(calls, ensure_ascii=False)


def _arguments(text):
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
