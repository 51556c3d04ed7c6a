"""`{{node_id}}` and `{{inputs.name}}` references inside node messages."""

from __future__ import annotations

import json
import re
from typing import Any

REF = re.compile(r"\{\{\s*([A-Za-z0-9_\-.]+)\s*\}\}")
INPUT_PREFIX = "inputs."


def references(text: str) -> tuple[set[str], set[str]]:
    """(node ids, input names) that `text` refers to."""
    nodes, inputs = set(), set()
    for name in REF.findall(text):
        if name.startswith(INPUT_PREFIX):
            inputs.add(name[len(INPUT_PREFIX):])
        else:
            nodes.add(name)
    return nodes, inputs


def render(text: str, outputs: dict[str, str], inputs: dict[str, Any]) -> str:
    """Substitute every reference. A skipped upstream node renders as ""."""

    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name.startswith(INPUT_PREFIX):
            value = inputs.get(name[len(INPUT_PREFIX):], "")
            return value if isinstance(value, str) else json.dumps(value)
        return outputs.get(name) or ""

    return REF.sub(sub, text)


def render_messages(spec, outputs: dict[str, str], inputs: dict) -> list[dict]:
    """A node's messages (common/workflow/spec.py NodeSpec) with every reference rendered."""
    return [{"role": role, "content": render(content, outputs, inputs)} for role, content in spec.messages]
