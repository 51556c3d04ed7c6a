"""The lean HTTP/1.1 client the gateway uses for worker calls, against scripted raw-socket servers:
keep-alive reuse, body framings, a pooled connection the server closed, deadlines, bad replies."""

from __future__ import annotations

import asyncio

import pytest

from gateway.workers.http1 import ConnectionPool, MalformedReply

pytestmark = pytest.mark.asyncio


class ScriptedServer:
    """Answers each request with the next of `replies` (raw bytes; None = hang up without a word).
    After a reply, `close_after` closes the connection (without saying so)."""

    def __init__(self, replies, *, close_after: bool = False, stall: bool = False):
        self.replies = list(replies)
        self.close_after = close_after
        self.stall = stall
        self.connections = 0
        self.requests: list[bytes] = []
        self.hung_up = asyncio.Event()  # a client closed a connection
        self.server: asyncio.Server | None = None

    async def start(self) -> "ScriptedServer":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                self.requests.append(head + await reader.readexactly(length))
                if self.stall:
                    await asyncio.sleep(3600)
                reply = self.replies.pop(0)
                if reply is None:
                    break
                for piece in reply if isinstance(reply, list) else [reply]:
                    writer.write(piece)
                    await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            self.hung_up.set()
        except asyncio.CancelledError:
            pass  # the test's loop is closing
        finally:
            writer.close()

    async def stop(self) -> None:
        self.server.close()


def ok(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    return head + b"".join(extra) + b"\r\n" + body


async def call(pool: ConnectionPool, path: str = "/x", body: bytes | None = b"{}") -> tuple[int, bytes]:
    resp = await pool.request("POST", path, body, timeout_s=5)
    try:
        return resp.status, await resp.read()
    finally:
        resp.release()


async def test_calls_reuse_one_keep_alive_connection():
    server = await ScriptedServer([ok(b'{"a": 1}'), ok(b'{"a": 2}'), ok(b"")]).start()
    pool = ConnectionPool(server.url + "/base")
    assert await call(pool) == (200, b'{"a": 1}')
    assert await call(pool, "/y", b'{"q": true}') == (200, b'{"a": 2}')
    assert await call(pool, "/z", None) == (200, b"")
    assert server.connections == 1
    assert server.requests[1].startswith(b"POST /base/y HTTP/1.1\r\n")
    assert server.requests[1].endswith(b"Content-Length: 11\r\n\r\n{\"q\": true}")
    pool.close()
    await server.stop()


async def test_chunked_replies_are_decoded_however_the_pieces_fall():
    chunked = [b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n", b"7\r\ndata: 1", b"\r", b"\n6;ext=1\r\n\n\nda",
               b"ta\r\n", b"3\r\n: 2\r\n0\r\nX-Trailer: t\r\n\r\n"]
    server = await ScriptedServer([chunked, ok(b"after")]).start()
    pool = ConnectionPool(server.url)
    resp = await pool.request("GET", "/stream", timeout_s=5)
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    pieces = [piece async for piece in resp.iter_chunks()]
    resp.release()
    assert b"".join(pieces) == b"data: 1\n\ndata: 2" and len(pieces) == 3
    assert await call(pool) == (200, b"after")  # the chunked reply was read to its end: reused
    assert server.connections == 1
    pool.close()
    await server.stop()


async def test_a_body_ended_by_the_connection_and_connection_close_are_not_reused():
    server = await ScriptedServer([b"HTTP/1.1 200 OK\r\n\r\nuntil the end", ok(b"x", b"Connection: close\r\n"),
                                   ok(b"y")], close_after=True).start()
    pool = ConnectionPool(server.url)
    assert await call(pool) == (200, b"until the end")
    assert await call(pool) == (200, b"x")
    assert await call(pool) == (200, b"y")
    assert server.connections == 3
    pool.close()
    await server.stop()


async def test_a_pooled_connection_the_server_closed_is_replaced_without_failing_the_call():
    server = await ScriptedServer([ok(b"1"), ok(b"2")], close_after=True).start()  # says nothing, then closes
    pool = ConnectionPool(server.url)
    assert await call(pool) == (200, b"1")
    assert await call(pool) == (200, b"2")
    assert server.connections == 2 and len(server.requests) == 2
    pool.close()
    await server.stop()
    # Closed just as the next request arrived (the keep-alive race): sent again on a fresh connection.
    server = await ScriptedServer([ok(b"1"), None, ok(b"2")]).start()
    pool = ConnectionPool(server.url)
    assert await call(pool) == (200, b"1")
    assert await call(pool) == (200, b"2")
    assert server.connections == 2 and len(server.requests) == 3
    pool.close()
    await server.stop()


async def test_a_connection_that_dies_on_a_fresh_request_fails_the_call():
    server = await ScriptedServer([None]).start()
    pool = ConnectionPool(server.url)
    with pytest.raises(ConnectionError):
        await call(pool)
    assert len(server.requests) == 1  # a fresh connection is never tried twice
    await server.stop()


async def test_an_unread_reply_closes_its_connection_so_the_worker_sees_the_client_go():
    stream = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"4\r\nabcd\r\n"]
    server = await ScriptedServer([stream, ok(b"next")]).start()
    pool = ConnectionPool(server.url)
    resp = await pool.request("POST", "/stream", b"{}", timeout_s=5)
    first = await resp.iter_chunks().__anext__()
    resp.release()  # mid-stream
    assert first == b"abcd"
    await asyncio.wait_for(server.hung_up.wait(), 5)
    assert await call(pool) == (200, b"next") and server.connections == 2
    pool.close()
    await server.stop()


async def test_the_deadline_covers_the_whole_call():
    server = await ScriptedServer([], stall=True).start()
    pool = ConnectionPool(server.url)
    with pytest.raises(TimeoutError):
        await pool.request("POST", "/slow", b"{}", timeout_s=0.2)
    await server.stop()
    server = await ScriptedServer([[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345"]]).start()
    pool = ConnectionPool(server.url)
    resp = await pool.request("GET", "/half", timeout_s=0.3)
    with pytest.raises(TimeoutError):
        await resp.read()  # the other half never comes
    resp.release()
    await server.stop()


async def test_malformed_or_truncated_replies_raise_connection_errors():
    for reply in (b"SPDY/3 200 OK\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n",
                  b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
        server = await ScriptedServer([reply]).start()
        pool = ConnectionPool(server.url)
        with pytest.raises(MalformedReply):
            resp = await pool.request("GET", "/", timeout_s=5)
            try:
                await resp.read()
            finally:
                resp.release()
        await server.stop()
    server = await ScriptedServer([[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345"], None],
                                  close_after=True).start()
    pool = ConnectionPool(server.url)
    resp = await pool.request("GET", "/", timeout_s=5)
    with pytest.raises(ConnectionError):
        await resp.read()
    resp.release()
    await server.stop()


async def test_an_interim_reply_is_skipped():
    server = await ScriptedServer([b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"done")]).start()
    pool = ConnectionPool(server.url)
    assert await call(pool) == (200, b"done")
    pool.close()
    await server.stop()
