"""Workflow events as typed objects, and the SSE decoder both clients read them with.

The gateway's `GET /v1/workflows/{id}/events` sends `id:`/`event:`/`data:` lines
per event (keep-alive comments in between). Every event is an `Event` with the
stream `id` (pass it back as `last_event_id` to resume), its `type` and its JSON
`data`; the subclasses name the fields each type carries, so
`isinstance(ev, NodeFinished) and ev.output` reads like what it checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from common.sse import SSEParser


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    data: dict = field(default_factory=dict)

    @property
    def node(self) -> str | None:
        return self.data.get("node")


class WorkflowStarted(Event):
    pass


class WorkflowResumed(Event):
    """Another gateway replica took the workflow over (its owner died); events go on."""


class NodeStarted(Event):
    @property
    def external(self) -> bool:
        return bool(self.data.get("external"))

    @property
    def messages(self) -> list[dict]:
        """For an external node: its messages with every `{{ref}}` rendered."""
        return self.data.get("messages") or []

    @property
    def worker(self) -> str | None:
        return self.data.get("worker")


class Token(Event):
    @property
    def text(self) -> str:
        return self.data.get("text", "")


class NodeRetry(Event):
    @property
    def error(self) -> str | None:
        return self.data.get("error")


class NodeFinished(Event):
    @property
    def status(self) -> str:
        return self.data.get("status", "")

    @property
    def output(self) -> str | None:
        return self.data.get("output")

    @property
    def usage(self) -> dict | None:
        return self.data.get("usage")

    @property
    def error(self) -> str | None:
        return self.data.get("error")


class WorkflowFinished(Event):
    @property
    def status(self) -> str:
        return self.data.get("status", "")

    @property
    def outputs(self) -> dict[str, Any]:
        return self.data.get("outputs") or {}

    @property
    def error(self) -> str | None:
        return self.data.get("error")


EVENT_CLASSES: dict[str, type[Event]] = {
    "workflow_started": WorkflowStarted, "workflow_resumed": WorkflowResumed, "node_started": NodeStarted,
    "token": Token, "node_retry": NodeRetry, "node_finished": NodeFinished, "workflow_finished": WorkflowFinished}


def make_event(id: str, type: str, data: Any) -> Event:
    """An event of the class its type names; unknown types (a newer gateway) stay plain `Event`s."""
    return EVENT_CLASSES.get(type, Event)(id, type, data if isinstance(data, dict) else {"value": data})


class SSEDecoder:
    """Feed it the stream one line at a time (newline stripped or not); it returns an Event at each
    blank line that ends one (common/sse.py parses the lines)."""

    def __init__(self) -> None:
        self._parser = SSEParser()

    def feed(self, line: str) -> Event | None:
        msg = self._parser.feed_line(line)
        if msg is None:
            return None
        try:
            data = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            data = {"value": msg.data}
        return make_event(msg.id or "", msg.event, data)
