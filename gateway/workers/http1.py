"""A lean HTTP/1.1 client for what the gateway sends to its workers.

Why not aiohttp's ClientSession here: it spends about 0.25 ms of CPU on every
call (request and response objects, cookie jar, tracing hooks, a timer context)
— a quarter of the gateway's budget for added latency. Workers are plain
HTTP/1.1 servers on a trusted network, so this client does only what they need:

- a pool of keep-alive connections per worker (LIFO, so the warmest is reused);
- bodies framed by Content-Length, chunked transfer coding, or the connection's end;
- one deadline per call, from sending the request to the last byte of the reply,
  which a streaming caller moves on as tokens arrive (`Response.extend`).

A connection goes back to the pool only after its response was read to the end
and the server did not ask to close it; anything else closes it, which is also
how a worker learns that its client went away (it aborts the request). A call
on a pooled connection that the server had already closed (keep-alive expiry)
gets no byte back; it is sent once more on a fresh connection. asyncio sets
TCP_NODELAY on its TCP transports, so small requests and replies leave at once.

Failures raise OSError subclasses: ConnectionError for a broken connection or a
malformed reply, TimeoutError when the deadline passes.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

READ_SIZE = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024


class MalformedReply(ConnectionError):
    """The worker's reply is not HTTP/1.x as this client reads it."""


class _Conn:
    __slots__ = ("reader", "writer", "idle_since", "expired")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.idle_since = 0.0
        self.expired = False  # the call's deadline passed and closed it

    def usable(self, now: float, idle_s: float) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing() or now - self.idle_since > idle_s)

    def expire(self) -> None:
        self.expired = True
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.transport.abort()  # no goodbye: nothing more is owed on this connection


class Response:
    """One reply. Read it with `read()` or `iter_chunks()`, then `release()` (idempotent)."""

    def __init__(self, pool: "ConnectionPool", conn: _Conn, timer: asyncio.TimerHandle, status: int,
                 headers: dict[str, str], keep_alive: bool, length: int | None, chunked: bool):
        self.status = status
        self.headers = headers
        self.content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        self._pool, self._conn, self._timer = pool, conn, timer
        self._keep_alive = keep_alive and (chunked or length is not None)
        self._length = length  # bytes of body left to read (Content-Length framing)
        self._chunked = chunked
        self._done = length == 0

    async def read(self) -> bytes:
        if self._length is not None and not self._chunked:  # the common case: one read, no list
            return await self._exactly(self._length) if self._length else b""
        return b"".join([chunk async for chunk in self.iter_chunks()])

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives (chunk by chunk for chunked replies)."""
        if self._done:
            return
        if self._chunked:
            async for piece in self._chunks():
                yield piece
        elif self._length is not None:
            while self._length:
                yield await self._some(self._length)
        else:  # delimited by the end of the connection
            while piece := await self._guard(self._conn.reader.read(READ_SIZE)):
                yield piece
        self._done = True

    def extend(self, timeout_s: float) -> None:
        """Move the call's deadline to `timeout_s` from now: a stream that just gave a token gets the
        time to its next one. Nothing once released."""
        if self._conn is None:
            return
        self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(timeout_s, self._conn.expire)

    def release(self) -> None:
        if self._conn is None:
            return
        self._timer.cancel()
        if self._done and self._keep_alive:
            self._pool._put_back(self._conn)
        else:
            self._conn.close()
        self._conn = None

    async def _exactly(self, n: int) -> bytes:
        data = await self._guard(self._conn.reader.readexactly(n))
        self._length, self._done = 0, True
        return data

    async def _some(self, limit: int) -> bytes:
        data = await self._guard(self._conn.reader.read(min(limit, READ_SIZE)))
        if not data:
            raise ConnectionError("the reply ended before its Content-Length")
        self._length -= len(data)
        return data

    async def _chunks(self) -> AsyncIterator[bytes]:
        reader = self._conn.reader
        while True:
            line = await self._guard(reader.readuntil(b"\r\n"))
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise MalformedReply(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                while await self._guard(reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, if any
                    pass
                return
            data = await self._guard(reader.readexactly(size + 2))
            yield data[:-2]

    async def _guard(self, op):
        try:
            return await op
        except asyncio.IncompleteReadError:
            raise self._broken("the reply ended early") from None
        except asyncio.LimitOverrunError:
            raise MalformedReply("a chunk size line is too long") from None
        except OSError as exc:
            raise self._broken(str(exc) or type(exc).__name__) from exc

    def _broken(self, what: str) -> OSError:
        if self._conn is not None and self._conn.expired:
            return TimeoutError("the call's deadline passed while its reply was read")
        return ConnectionError(what)


class ConnectionPool:
    """Keep-alive connections to one origin (scheme://host:port[/base path])."""

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0, idle_s: float = 30.0, max_idle: int = 64,
                 headers: dict[str, str] | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.base = parts.path.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_line = f"Host: {host}:{self.port}\r\n".encode("latin-1")  # and the headers every request carries
        self._host_line += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()).encode("latin-1")
        self.connect_timeout_s, self.idle_s, self.max_idle = connect_timeout_s, idle_s, max_idle
        self._idle: list[_Conn] = []

    async def request(self, method: str, path: str, body: bytes | None = None, *, timeout_s: float,
                      content_type: str = "application/json", headers: dict[str, str] | None = None) -> Response:
        """Send one request and read the reply's head; the caller reads the body and releases it."""
        head = b"%s %s HTTP/1.1\r\n%s" % (method.encode(), (self.base + path).encode(), self._host_line)
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n".encode("latin-1")
        if body is not None:
            head += b"Content-Type: %s\r\nContent-Length: %d\r\n" % (content_type.encode(), len(body))
        message = head + b"\r\n" + (body or b"")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            conn = self._take_idle()
            reused = conn is not None
            if conn is None:
                conn = await self._connect(deadline - loop.time())
            timer = loop.call_at(deadline, conn.expire)
            try:
                conn.writer.write(message)
                return await self._read_head(conn, timer, method)
            except asyncio.IncompleteReadError as exc:
                timer.cancel()
                conn.close()
                if reused and not exc.partial and not conn.expired:
                    continue  # the server had closed this idle connection: not a failure of the call
                raise TimeoutError("no reply before the deadline") if conn.expired else \
                    ConnectionError("the connection closed before a complete reply head") from None
            except (OSError, asyncio.LimitOverrunError, ValueError) as exc:
                timer.cancel()
                conn.close()
                if reused and isinstance(exc, ConnectionResetError) and not conn.expired:
                    continue
                if conn.expired:
                    raise TimeoutError("no reply before the deadline") from None
                if isinstance(exc, OSError):
                    raise
                raise MalformedReply(f"unreadable reply head: {exc}") from None
            except BaseException:  # cancelled: the connection is mid-call, it cannot be reused
                timer.cancel()
                conn.close()
                raise

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    async def _connect(self, timeout_s: float) -> _Conn:
        try:
            async with asyncio.timeout(min(self.connect_timeout_s, max(timeout_s, 0.0))):
                reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl,
                                                               limit=MAX_HEAD_BYTES)
        except TimeoutError:
            raise TimeoutError(f"no connection to {self.host}:{self.port} in time") from None
        return _Conn(reader, writer)

    def _take_idle(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable(now, self.idle_s):
                return conn
            conn.close()
        return None

    def _put_back(self, conn: _Conn) -> None:
        if len(self._idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def _read_head(self, conn: _Conn, timer: asyncio.TimerHandle, method: str) -> Response:
        while True:
            raw = await conn.reader.readuntil(b"\r\n\r\n")
            lines = raw[:-4].split(b"\r\n")
            version, status_text = lines[0].split(b" ", 2)[:2]
            status = int(status_text)
            if not (100 <= status < 200) or status == 101:
                break  # an interim 1xx reply is followed by the real one
        if not version.startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP/1.x reply: {lines[0][:40]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == b"HTTP/1.1" else connection == "keep-alive"
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if method == "HEAD" or status in (204, 304):
            length = 0
        elif chunked:
            length = None
        elif "content-length" in headers:
            length = int(headers["content-length"])
        else:
            length = None
        return Response(self, conn, timer, status, headers, keep_alive, length, chunked)
