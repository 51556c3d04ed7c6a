"""Server-sent events, both ways: the one writer (`encode`, `DONE`) and the one parser (`SSEParser`)
that the worker, the gateway and the SDK use (docs/architecture.md, "Contracts").

The parser follows the WHATWG rules the streams here need: an event is the lines up to a blank
line; `data:` lines join with newlines; `id:` and `event:` name it; comment lines (`: keep-alive`)
and unknown fields are skipped; one space after the colon is dropped. It takes bytes however the
network cut them (`feed`) or whole lines (`feed_line`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"  # the OpenAI stream's last event


def encode(data: Any, *, event: str | None = None, id: str | None = None) -> bytes:
    """One event: `data` as JSON (bytes are taken as already encoded), with its id and type if given."""
    payload = data if isinstance(data, bytes | bytearray) else orjson.dumps(data)
    head = b""
    if id is not None:
        head += b"id: " + id.encode() + b"\n"
    if event is not None:
        head += b"event: " + event.encode() + b"\n"
    return head + b"data: " + bytes(payload) + b"\n\n"


@dataclass(frozen=True)
class SSEMessage:
    data: str
    event: str = "message"
    id: str | None = None

    @property
    def done(self) -> bool:
        return self.data == "[DONE]"


class SSEParser:
    def __init__(self) -> None:
        self._pending = b""
        self._id: str | None = None
        self._event = "message"
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        """The events a chunk completes; a line cut by the chunk waits for the next one."""
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        out = []
        for line in lines:
            msg = self.feed_line(line.decode(errors="replace"))
            if msg is not None:
                out.append(msg)
        return out

    def close(self) -> SSEMessage | None:
        """The stream ended: an event its server did not end with a blank line still counts."""
        if self._pending:
            self.feed_line(self._pending.decode(errors="replace"))
            self._pending = b""
        return self._dispatch()

    def feed_line(self, line: str) -> SSEMessage | None:
        """One line (newline stripped or not); returns the event a blank line ends."""
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            self._id = value
        elif name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None

    def _dispatch(self) -> SSEMessage | None:
        if not self._data:
            self._event = "message"
            return None
        msg = SSEMessage("\n".join(self._data), self._event, self._id)
        self._event, self._data = "message", []
        return msg
