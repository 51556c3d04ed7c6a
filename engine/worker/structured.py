"""Structured output at the HTTP edge: OpenAI's `response_format` and SGLang's
`json_schema` / `regex` / `ebnf` sampling params become one engine Constraint,
compiled here (off the event loop) so a bad schema is a 400 before anything runs
and the engine's own compile is a cache hit."""

from __future__ import annotations

import asyncio
import json

from common.errors import BadRequestError
from engine.grammar import Constraint


def from_response_format(rf: dict | None) -> Constraint | None:
    """OpenAI's response_format: text, json_object, or json_schema {name, schema, strict}."""
    if not rf:
        return None
    kind = rf.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return Constraint("json_object", "")
    if kind == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", spec.get("schema_")), (dict, bool)):
            raise BadRequestError("response_format.json_schema.schema must be a JSON Schema object",
                                  param="response_format")
        return Constraint("json_schema", json.dumps(spec.get("schema", spec.get("schema_"))))
    raise BadRequestError(f"response_format type {kind!r} is not supported; use text, json_object or json_schema",
                          param="response_format")


def from_sampling(json_schema: str | dict | None, regex: str | None, ebnf: str | None) -> Constraint | None:
    """SGLang's sampling params: at most one of json_schema (JSON text), regex, ebnf."""
    given = [(k, v) for k, v in (("json_schema", json_schema), ("regex", regex), ("ebnf", ebnf)) if v is not None]
    if len(given) > 1:
        names = ", ".join(k for k, _ in given)
        raise BadRequestError(f"only one of json_schema, regex and ebnf may be set, got {names}", param=given[1][0])
    if not given:
        return None
    kind, value = given[0]
    if kind == "json_schema" and isinstance(value, dict):
        value = json.dumps(value)
    return Constraint(kind, value)


async def compiled(engine, constraint: Constraint | None) -> Constraint | None:
    """Compile on a worker thread (cached); raises the 400 that says what is wrong."""
    if constraint is not None:
        await asyncio.to_thread(engine.grammars.compile, constraint)
    return constraint


def merge(*constraints: Constraint | None) -> Constraint | None:
    """The one constraint a request decodes under; two different ones are a 400."""
    given = [c for c in constraints if c is not None]
    if len(set(given)) > 1:
        raise BadRequestError("a request takes one output constraint: response_format, a required tool call "
                              "(tool_choice), json_schema, regex or ebnf", param="response_format")
    return given[0] if given else None
