"""The server protocol hands a response to the socket in one write, and loses nothing on close."""

import asyncio
import socket

import uvicorn

from app.http_protocol import CoalescingHttpToolsProtocol, CoalescingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def test_writes_of_one_turn_reach_the_socket_as_one():
    async def run() -> RecordingTransport:
        raw = RecordingTransport()
        transport = CoalescingTransport(raw, asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(bytearray(b"body"))  # a mutable buffer is copied, not referenced
        assert raw.writes == []  # nothing yet: the turn that wrote has not ended
        await asyncio.sleep(0)
        assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        transport.writelines([b"a", b"b"])
        await asyncio.sleep(0)
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the real transport's
        return raw

    raw = asyncio.run(run())
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"ab"]


def test_close_sends_what_was_written_first():
    async def run() -> RecordingTransport:
        raw = RecordingTransport()
        transport = CoalescingTransport(raw, asyncio.get_running_loop())
        transport.write(b"last response")
        transport.close()
        await asyncio.sleep(0)  # the flush scheduled by the write finds nothing left, and writes nothing
        return raw

    raw = asyncio.run(run())
    assert raw.writes == [b"last response"] and raw.closed


async def _app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    body = scope["path"].encode() * 1000
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    if scope["path"] == "/close":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    assert chunk, "the connection closed before the response was whole"
    return chunk


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += _recv(sock)
    return head + b"\r\n\r\n" + body


def test_uvicorn_with_the_protocol_serves_keep_alive_and_close():
    """Real uvicorn, real sockets: responses on one kept-alive connection arrive whole and in order, and a
    `connection: close` response is delivered before the connection closes."""

    async def run() -> list[bytes]:
        config = uvicorn.Config(_app, host="127.0.0.1", port=0, http=CoalescingHttpToolsProtocol,
                                log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        task = asyncio.create_task(server.serve(sockets=[listener]))
        while not server.started:
            await asyncio.sleep(0.01)
        port = listener.getsockname()[1]

        def client() -> list[bytes]:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                got = []
                for path in ("/a", "/bb", "/close"):
                    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
                    got.append(_read_response(sock))
                assert sock.recv(1) == b""  # closed by the server after the last response
                return got

        try:
            return await asyncio.to_thread(client)
        finally:
            server.should_exit = True
            await task

    responses = asyncio.run(run())
    for response, path in zip(responses, ("/a", "/bb", "/close"), strict=True):
        assert response.startswith(b"HTTP/1.1 200 OK")
        assert response.endswith(path.encode() * 1000)
