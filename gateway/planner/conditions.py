"""Edge conditions on an upstream node's output: contains / regex / equals / JSON path."""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.planner.spec import Condition

_MISSING = object()
_PATH_TOKEN = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")


def parse_json_path(path: str) -> list[str | int]:
    """'$.a.b[0].c' (or 'a.b[0].c') → ['a', 'b', 0, 'c']."""
    path = path.strip()
    if path.startswith("$"):
        path = path[1:]
    steps: list[str | int] = []
    for index, key in _PATH_TOKEN.findall(path):
        steps.append(int(index) if index else key)
    return steps


def _lookup(doc: Any, steps: list[str | int]) -> Any:
    for step in steps:
        if isinstance(step, int) and isinstance(doc, list) and -len(doc) <= step < len(doc):
            doc = doc[step]
        elif isinstance(doc, dict) and str(step) in doc:
            doc = doc[str(step)]
        else:
            return _MISSING
    return doc


def _extract_json(text: str) -> Any:
    """The output as JSON; LLMs often wrap it in prose, so fall back to the outermost {...} or [...]."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    for open_, close in (("{", "}"), ("[", "]")):
        start, end = text.find(open_), text.rfind(close)
        if 0 <= start < end:
            try:
                return json.loads(text[start:end + 1])
            except ValueError:
                continue
    return _MISSING


def evaluate(cond: Condition, output: str) -> bool:
    if cond.kind == "contains":
        result = cond.value in output
    elif cond.kind == "regex":
        result = re.search(cond.value, output) is not None
    elif cond.kind == "equals":
        result = output.strip() == cond.value.strip()
    elif cond.kind == "json_path":
        doc = _extract_json(output)
        found = _MISSING if doc is _MISSING else _lookup(doc, parse_json_path(cond.value))
        if found is _MISSING:
            result = False
        elif cond.has_expected:
            result = found == cond.expected
        else:
            result = bool(found)
    else:
        raise ValueError(f"unknown condition kind {cond.kind!r}")
    return result != cond.negate
