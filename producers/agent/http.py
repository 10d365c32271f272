"""A small HTTP/1.1 JSON server on asyncio streams, bound to 127.0.0.1: enough for the OpenAI
client (httpx, keep-alive, `Content-Length` bodies), no web framework in the producer.

    server = JsonServer(handle)            # async handle(method, path, headers, body) -> Reply
    port = await server.start()            # a free port on 127.0.0.1
    await server.stop()                    # idempotent; closes kept-alive connections too

It runs on the producer's event loop, so a handler may await generations of the producer's
`EngineClient` directly. Requests with a chunked body are answered 411 (clients send JSON with a
length); a body over `max_body_bytes` 413; a malformed request line or header 400, and the
connection is closed after any of these. A handler that raises is answered 500 with the error
(and logged), never a dropped connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[str, str, dict[str, str], bytes], Awaitable[Reply]]


def error_reply(status: int, message: str, *, kind: str = "invalid_request_error",
                code: str | None = None) -> Reply:
    """An error in the OpenAI API's shape, which its client turns into `APIStatusError`s."""
    return Reply(status, {"error": {"message": message, "type": kind, "param": None,
                                    "code": code}})


class JsonServer:
    def __init__(self, handle: Handler, *, max_body_bytes: int = 16 << 20) -> None:
        self.handle, self.max_body_bytes = handle, max_body_bytes
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task, asyncio.StreamWriter] = {}

    async def start(self) -> int:
        """Listen on 127.0.0.1 at a free port, which it returns."""
        if self._server is None:
            self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
        assert self.port is not None
        return self.port

    async def stop(self) -> None:
        """Stop listening and close every open connection (a client's idle keep-alive ones
        included), cancelling a request still being answered. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._connections)
        for task, writer in self._connections.items():
            writer.close()
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except asyncio.CancelledError:
            pass  # `stop`: asyncio's stream callback would log a cancelled handler as an error
        finally:
            del self._connections[task]
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection should close."""
        line = await reader.readline()
        if not line:
            return False
        parts = line.decode("latin-1").split()
        headers: dict[str, str] = {}
        while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, sep, value = header.decode("latin-1").partition(":")
            if not sep:
                await _send(writer, error_reply(400, "malformed header line"), close=True)
                return False
            headers[name.strip().lower()] = value.strip()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1"):
            await _send(writer, error_reply(400, "malformed request line"), close=True)
            return False
        if "chunked" in headers.get("transfer-encoding", "").lower():
            await _send(writer, error_reply(411, "send the body with a Content-Length"),
                        close=True)
            return False
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= self.max_body_bytes:
            await _send(writer, error_reply(413, f"body length must be 0..{self.max_body_bytes}"),
                        close=True)
            return False
        body = await reader.readexactly(length)
        method, path = parts[0].upper(), parts[1].split("?", 1)[0]
        try:
            reply = await self.handle(method, path, headers, body)
        except Exception as error:  # a bug: the client sees it instead of a dropped connection
            log.exception("%s %s failed", method, path)
            reply = error_reply(500, f"internal error: {type(error).__name__}: {error}",
                                kind="server_error")
        close = headers.get("connection", "").lower() == "close"
        await _send(writer, reply, close=close)
        return not close


async def _send(writer: asyncio.StreamWriter, reply: Reply, *, close: bool) -> None:
    body = json.dumps(reply.body).encode()
    reason = HTTPStatus(reply.status).phrase
    head = {"Content-Type": "application/json", "Content-Length": str(len(body)),
            "Connection": "close" if close else "keep-alive", **reply.headers}
    lines = [f"HTTP/1.1 {reply.status} {reason}"] + [f"{k}: {v}" for k, v in head.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
