"""The worker writes an answer while it still holds the gate only when the socket takes it all at once.

Written under the gate, the answer leaves at once and no writer thread competes for the GIL with the next request;
but a client that does not read must never hold the gate, so ``_room_for`` says yes only when nothing of an earlier
answer is still queued and the answer fits well within the send buffer.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from cds_service.server import _room_for, _send_whole


@pytest.fixture
def connected() -> Iterator[tuple[socket.socket, socket.socket]]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server_side, _ = listener.accept()
    listener.close()
    try:
        yield server_side, client
    finally:
        server_side.close()
        client.close()


def test_a_fresh_connection_has_room_for_an_answer(connected: tuple[socket.socket, socket.socket]) -> None:
    server_side, _ = connected
    assert _room_for(server_side, 8 * 1024)


def test_an_answer_beyond_a_quarter_of_the_send_buffer_waits_for_after_the_gate(
    connected: tuple[socket.socket, socket.socket],
) -> None:
    server_side, _ = connected
    buffer = server_side.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert _room_for(server_side, buffer // 4)
    assert not _room_for(server_side, buffer // 4 + 1)


def test_a_client_that_does_not_read_gets_no_answer_under_the_gate(
    connected: tuple[socket.socket, socket.socket],
) -> None:
    server_side, client = connected
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server_side.setblocking(False)
    try:
        while True:  # fill the client's receive buffer and our send queue: it never reads
            server_side.send(b"x" * 65536)
    except BlockingIOError:
        pass
    server_side.setblocking(True)
    assert not _room_for(server_side, 10)


def test_a_closed_socket_is_no_room(connected: tuple[socket.socket, socket.socket]) -> None:
    server_side, _ = connected
    server_side.close()
    assert not _room_for(server_side, 10)
    assert not _room_for(object(), 10)


class FakeResponse:
    """gunicorn's Response as ``_send_whole`` uses it: ``write`` sends the head first, then the chunk."""

    def __init__(self, sock: object) -> None:
        self.sock = sock
        self.headers_sent = False
        self.sent = 0

    def write(self, chunk: bytes) -> None:
        if not self.headers_sent:
            self.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")  # type: ignore[attr-defined]
            self.headers_sent = True
        self.sock.sendall(chunk)  # type: ignore[attr-defined]
        self.sent += len(chunk)


class RecordingSocket:
    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(data)


def test_head_and_body_go_in_one_send_and_the_response_keeps_its_accounting() -> None:
    sock = RecordingSocket()
    response = FakeResponse(sock)
    _send_whole(response, [b"abc", b"def"])
    assert sock.sends == [b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabcdef"]
    assert response.sock is sock and response.headers_sent and response.sent == 6


def test_a_failed_send_leaves_the_response_on_its_socket() -> None:
    class Broken(RecordingSocket):
        def sendall(self, data: bytes) -> None:
            raise BrokenPipeError

    sock = Broken()
    response = FakeResponse(sock)
    with pytest.raises(BrokenPipeError):
        _send_whole(response, [b"abc"])
    assert response.sock is sock
