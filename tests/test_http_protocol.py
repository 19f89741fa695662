"""`app.http_protocol`: a response of known length leaves in one write; streams, HEAD and pipelined
requests are answered as uvicorn answers them."""

import asyncio

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.http_protocol import OneWriteProtocol


class RecordingTransport(asyncio.Transport):
    """What the protocol writes, one entry per `write` call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def _stream():
    yield b"one,"
    yield b"two"


async def _json(_) -> JSONResponse:
    return JSONResponse({"posts": [1, 2, 3]})


async def _streamed(_) -> StreamingResponse:
    return StreamingResponse(_stream())


def _app() -> Starlette:
    return Starlette(routes=[Route("/json", _json, methods=["GET", "HEAD"]), Route("/stream", _streamed)])


async def _serve(protocol_class: type, raw: bytes) -> RecordingTransport:
    """Feed `raw` to a fresh connection and wait until its responses are written."""
    protocol = protocol_class(config=Config(app=_app(), log_level="warning"), server_state=ServerState(),
                              app_state={}, _loop=asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(raw)
    for _ in range(500):  # the ASGI tasks run on this loop
        await asyncio.sleep(0.001)
        if not protocol.tasks and not protocol.pipeline and protocol.cycle.response_complete:
            break
    protocol.connection_lost(None)
    return transport


def _run(protocol_class: type, raw: bytes) -> RecordingTransport:
    return asyncio.run(_serve(protocol_class, raw))


GET_JSON = b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n"


def test_a_response_of_known_length_is_one_write_with_uvicorns_bytes():
    ours, theirs = _run(OneWriteProtocol, GET_JSON), _run(HttpToolsProtocol, GET_JSON)
    assert len(theirs.writes) == 2  # uvicorn: the head, then the body
    assert len(ours.writes) == 1
    # the same bytes but for the date header, which ticks
    strip = [line for line in b"".join(theirs.writes).split(b"\r\n") if not line.startswith(b"date:")]
    assert [line for line in ours.writes[0].split(b"\r\n") if not line.startswith(b"date:")] == strip
    assert ours.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert ours.writes[0].endswith(b'\r\n\r\n{"posts":[1,2,3]}')


def test_pipelined_requests_get_their_responses_in_order_one_write_each():
    ours = _run(OneWriteProtocol, GET_JSON * 3)
    assert len(ours.writes) == 3
    assert all(w.startswith(b"HTTP/1.1 200 OK\r\n") and w.endswith(b'{"posts":[1,2,3]}') for w in ours.writes)


@pytest.mark.parametrize("raw", [b"HEAD /json HTTP/1.1\r\nHost: t\r\n\r\n",
                                 b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n"],
                         ids=["head", "stream"])
def test_head_and_streams_are_written_as_uvicorn_writes_them(raw):
    ours, theirs = _run(OneWriteProtocol, raw), _run(HttpToolsProtocol, raw)
    assert len(ours.writes) == len(theirs.writes) >= 1
    assert ours.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")  # the head is not held back
    assert b"".join(ours.writes[1:]) == b"".join(theirs.writes[1:])
