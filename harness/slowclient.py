"""Slow HTTP clients on raw sockets: connections that send a request's headers and then only part of
its body, or only part of its headers, and hold there. Used by the slow-client tests
(``tests/service/test_slow_clients.py``) and the reliability scenario (``harness/reliability``)."""

from __future__ import annotations

import socket

#: What a slow client sends of the body it declared (100 bytes): the start of a recommend body.
PARTIAL_BODY = b'{"mem'


def open_slow_body(
    port: int, key: str | None, path: str = "/v1/recommend", host: str = "127.0.0.1"
) -> socket.socket:
    """A connection that sent the headers of ``POST path`` (``Content-Length: 100``, the API key when
    given) and then only :data:`PARTIAL_BODY`, and holds there."""
    sock = socket.create_connection((host, port), timeout=10)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
    if key is not None:
        head += f"X-API-Key: {key}\r\n"
    sock.sendall((head + "\r\n").encode() + PARTIAL_BODY)
    return sock


def open_slow_headers(port: int, path: str = "/v1/recommend", host: str = "127.0.0.1") -> socket.socket:
    """A connection that sent only the request line and one header line, never the blank line."""
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode())
    return sock


def read_status(sock: socket.socket) -> int:
    """The status of the response on ``sock`` (blocking up to the socket's timeout); 0 when the server
    closed the connection without a response."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]) if data else 0


def is_open(sock: socket.socket) -> bool:
    """True when the server neither answered nor closed ``sock`` yet (non-blocking peek)."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)  # bytes: answered; b"": closed
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)
