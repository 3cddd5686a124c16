"""A WebSocket client on a plain socket, for traffic no library sends: floods of empty
frames or pings, from a client that never reads."""

from __future__ import annotations

import base64
import os
import socket

MASK = b"\x11\x22\x33\x44"


def frame(opcode: int, payload: bytes = b"") -> bytes:
    """One final, masked client frame (RFC 6455 §5.2); payloads under 64 KiB."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    else:
        header = bytes((0x80 | opcode, 0x80 | 126, length >> 8, length & 0xFF))
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return header + MASK + masked


def binary(payload: bytes = b"") -> bytes:
    return frame(0x2, payload)


def ping(payload: bytes = b"") -> bytes:
    return frame(0x9, payload)


def open_websocket(port: int, target: str, *, receive_buffer: int = 0) -> socket.socket:
    """A socket past the handshake to `target` ("/?token=…"); its 101 answer read.

    `receive_buffer` (bytes) keeps the client's kernel buffer small, so that what the
    server sends a client that does not read stays in the server's buffers.
    """
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(1)  # byte by byte: nothing after the headers is taken
        if not chunk:
            raise ConnectionError(f"closed during the handshake: {answer!r}")
        answer += chunk
    if not answer.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {answer!r}")
    return sock


def send_until_stalled(sock: socket.socket, data: bytes, *, timeout: float) -> int:
    """Send `data`; stop when the socket takes nothing for `timeout` seconds (the
    server stopped reading) or the connection is gone. Returns the bytes sent."""
    sock.settimeout(timeout)
    sent = 0
    view = memoryview(data)
    try:
        while sent < len(data):
            sent += sock.send(view[sent : sent + 65536])
    except (TimeoutError, ConnectionError):
        pass
    return sent
