"""Untrusted model text into tool calls, and the endpoint's HTTP server under bad requests: no
model needed, milliseconds each."""

from __future__ import annotations

import asyncio
import json

import pytest

from streamrl.producers.agent import parse_tool_calls
from streamrl.producers.agent.http import JsonServer, Reply

CALC = '{"name": "calculator", "arguments": {"expression": "2+3"}}'


@pytest.mark.parametrize(("text", "content", "names"), [
    ("The answer is 5.", "The answer is 5.", []),
    (f"<tool_call>\n{CALC}\n</tool_call>", None, ["calculator"]),
    (f"Let me compute.\n<tool_call>{CALC}</tool_call>", "Let me compute.", ["calculator"]),
    (f"<tool_call>{CALC}</tool_call><tool_call>{CALC}</tool_call>", None,
     ["calculator", "calculator"]),
    ('<tool_call>{"name": "f"}</tool_call>', None, ["f"]),  # no arguments: {}
])
def test_tool_calls_are_parsed(text: str, content: str | None, names: list[str]) -> None:
    reply = parse_tool_calls(text)
    assert (reply.content, [c["name"] for c in reply.tool_calls]) == (content, names)
    assert not reply.malformed


@pytest.mark.parametrize("text", [
    '<tool_call>{"name": "calculator", "arguments": {"expression": }</tool_call>',  # bad JSON
    '<tool_call>["calculator"]</tool_call>',  # not an object
    '<tool_call>{"name": 3, "arguments": {}}</tool_call>',  # name not a string
    '<tool_call>{"name": "f", "arguments": "2+3"}</tool_call>',  # arguments not an object
    f"<tool_call>{CALC}",  # never closed (cut by length)
    f"<tool_call>{CALC}</tool_call><tool_call>{CALC}",  # the second never closed
])
def test_malformed_tool_calls_are_plain_text(text: str) -> None:
    reply = parse_tool_calls(text)
    assert (reply.content, reply.tool_calls, reply.malformed) == (text, [], True)


async def test_the_server_answers_bad_requests_and_keeps_serving() -> None:
    async def echo(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        if path == "/boom":
            raise RuntimeError("a handler bug")
        return Reply(200, {"method": method, "path": path, "body": body.decode()})

    server = JsonServer(echo, max_body_bytes=64)
    port = await server.start()

    async def exchange(raw: bytes) -> tuple[int, dict]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) != b"\r\n":
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = json.loads(await reader.readexactly(length))
        writer.close()
        return status, body

    try:
        assert (await exchange(b"GARBAGE\r\n\r\n"))[0] == 400
        assert (await exchange(b"POST /x HTTP/1.1\r\nno colon here\r\n\r\n"))[0] == 400
        assert (await exchange(b"POST /x HTTP/1.1\r\nContent-Length: 999\r\n\r\n"))[0] == 413
        status, body = await exchange(
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert status == 411 and "Content-Length" in body["error"]["message"]
        status, body = await exchange(b"GET /boom HTTP/1.1\r\n\r\n")
        assert status == 500 and "RuntimeError: a handler bug" in body["error"]["message"]
        status, body = await exchange(b"POST /v1/x?y=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
        assert (status, body) == (200, {"method": "POST", "path": "/v1/x", "body": "hi"})
    finally:
        await server.stop()
        await server.stop()  # idempotent
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
