"""`python -m app`: the multi-worker listener keeps TCP_NODELAY for accepted connections."""

import socket

import uvicorn.config

from app.__main__ import _bind_tcp_socket


def test_listener_is_tcp_so_accepted_sockets_get_nodelay():
    config = uvicorn.config.Config("app.main:create_app", host="127.0.0.1", port=0)
    listener = _bind_tcp_socket(config)
    try:
        assert listener.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY only when it sees this
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        assert accepted.proto == socket.IPPROTO_TCP
        accepted.close()
        client.close()
    finally:
        listener.close()
