"""uvicorn's httptools protocol, writing each response to the socket once instead of twice.

uvicorn writes a response's status line and headers when the app sends `http.response.start` and the
body when it sends `http.response.body`: two `send()` calls, and with TCP_NODELAY (app.__main__) two
packets, each waking the client. Profiling a worker under load (py-spy, concurrency 4) put ~15% of its
samples in the first of those writes. Here the writes made during one turn of the event loop are joined
and handed to the socket at the start of the next turn: one write, one packet, one wake-up per response,
and nothing held longer than the turn that produced it (a streamed body still goes out turn by turn).

`python -m app` passes this class to uvicorn (`http=`); nothing else in uvicorn changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """A transport whose writes within one loop turn reach the socket as one write.

    Everything but `write`, `writelines` and `close` goes to the wrapped transport, so uvicorn's flow
    control (pause/resume reading, the transport's write-buffer watermarks) works as before."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._chunks:
            self._loop.call_soon(self._flush)
        self._chunks.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def _flush(self) -> None:
        if not self._chunks:
            return
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()  # a response written just before close (`connection: close`) still goes out whole
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
