"""uvicorn's httptools protocol, sending a whole-body response in one write instead of two.

uvicorn writes the status line and headers to the socket when the application starts its response and
the body when it sends it. With TCP_NODELAY on (`app.__main__`), that is two segments and two wake-ups
of the client for every response, and two `send` calls of the worker: a py-spy profile of a worker
under load had 17.5% of its busy samples in the header write (2026-11-30). Here a response that states
its length (every `Response` of the API does) keeps its head until the body comes and goes out with it;
a streamed response, a HEAD request and anything else are written as uvicorn writes them.
`python -m app` serves with it (`uvicorn.run(http="app.http_protocol:OneWriteProtocol")`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn._types import ASGI3Application, ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

PROTOCOL = "app.http_protocol:OneWriteProtocol"


class _HeadHeld:
    """One response's view of the connection's transport: after `hold_next()`, the next write (the
    head) is kept and sent in front of the one after it (the body). Everything else is the transport's."""

    __slots__ = ("_transport", "_head", "_holding")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head = b""
        self._holding = False

    def hold_next(self) -> None:
        self._holding = True

    def write(self, data: bytes) -> None:
        if self._holding:
            self._holding, self._head = False, data
            return
        if self._head:
            data, self._head = self._head + data, b""
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:  # close, is_closing, get_extra_info, ...
        return getattr(self._transport, name)


def _states_length(message: ASGISendEvent) -> bool:
    return any(name.lower() == b"content-length" for name, _ in message.get("headers", ()))


class OneWriteCycle(RequestResponseCycle):
    """A request-response cycle whose response head waits for its body when the body's length is known.
    Not for HEAD (uvicorn writes no body for it) nor streams (the head would wait for the first chunk)."""

    async def send(self, message: ASGISendEvent) -> None:
        if (message["type"] == "http.response.start" and not self.response_started
                and self.scope["method"] != "HEAD" and _states_length(message)):
            self.transport.hold_next()  # type: ignore[attr-defined]  # the _HeadHeld set below
        await super().send(message)


class OneWriteProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` whose cycles are `OneWriteCycle`s over a `_HeadHeld` transport. Every cycle,
    pipelined ones included, starts through `_start_asgi_task` (uvicorn pinned in requirements.txt)."""

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        cycle.__class__ = OneWriteCycle  # the same fields; only `send` differs
        cycle.transport = _HeadHeld(cycle.transport)  # type: ignore[assignment]
        super()._start_asgi_task(cycle, app)
