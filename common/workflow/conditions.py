"""Edge conditions on an upstream node's output: contains / regex / equals / JSON path.

A regex is a client's pattern run on a model's output, on the event loop: it runs
on RE2, whose matching takes time linear in the output whatever the pattern
(Python's `re` backtracks: `(a+)+$` on 30 characters would stall the gateway for
minutes). What RE2 lacks — backreferences, lookaround — is refused when the
workflow is submitted (a 422), so no pattern falls back to a backtracking engine.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import re2

from common.workflow.spec import Condition

_MISSING = object()
_PATH_TOKEN = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")


class RegexUnsupported(ValueError):
    """The pattern is not valid RE2 syntax (a backreference, lookaround, or just malformed)."""


@functools.lru_cache(maxsize=1024)
def compile_regex(pattern: str):
    options = re2.Options()
    options.log_errors = False  # a refused pattern is the client's error, reported to it; not the process's
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise RegexUnsupported(f"regex {pattern!r} is not supported: {detail} (conditions run on RE2: no "
                               "backreferences or lookaround)") from None


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
        result = compile_regex(cond.value).search(output) is not None
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
