"""Our gunicorn worker: it closes a connection at once only after reading the whole request,
and answers malformed HTTP with JSON errors."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from pathlib import Path
from types import SimpleNamespace

from gunicorn.http.body import Body, EOFReader, LengthReader
from service_helpers import http_call, raw_exchange, read_answer, running_server

from service.worker import bytes_waiting, request_read_whole


def test_gunicorn_worker_closes_at_once_only_after_reading_the_whole_request(exported_bundle: Path,
                                                                            tmp_path: Path) -> None:
    body = json.dumps({"text": "I was charged twice"}).encode()
    with running_server(exported_bundle, tmp_path / "server.log", "--workers", "1") as port:
        # A client that reads its answer but keeps the connection open must not hold the only
        # worker: gunicorn's lingering close would wait up to 2 s for it to close first.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as idle_client:
            status_line, _ = raw_exchange(idle_client, "/classify", body, len(body))
            assert status_line.startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert http_call(port, "POST", "/classify", {"text": "card not arriving"})[0] == 200
            assert time.monotonic() - started < 1.0
        # An answer given before the body was read (413) keeps the lingering close: closing
        # with unread bytes would reset the connection and could lose the answer.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as big_client:
            status_line, answer = raw_exchange(big_client, "/classify", b"x" * 65536, 2 * 1024 * 1024)
            assert status_line.startswith(b"HTTP/1.1 413")
            assert json.loads(answer)["error"]["code"] == "payload_too_large"
        # A chunked body has no Content-Length to refuse it by: over the limit, it is refused all the same.
        chunked = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            pieces = [b'{"text": "', *[b"x" * 65536] * 20, b'"}']  # 1.25 MiB, the limit is 1 MiB
            chunked.request("POST", "/classify", iter(pieces), {"Content-Type": "application/json"},
                            encode_chunked=True)
            response = chunked.getresponse()
            assert response.status == 413 and json.loads(response.read())["error"]["code"] == "payload_too_large"
        finally:
            chunked.close()


def test_gunicorn_answers_malformed_http_with_json_errors(exported_bundle: Path, tmp_path: Path) -> None:
    with running_server(exported_bundle, tmp_path / "server.log", "--workers", "1") as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:  # read by the app: 400
            client.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
            status, headers, body = read_answer(client)
        assert status == 400 and json.loads(body)["error"]["code"] == "bad_request"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:  # refused by gunicorn itself
            client.sendall(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = read_answer(client)
        assert status == 414 and b"content-type: application/json" in headers.lower()
        request_id = re.search(rb"\r\nX-Request-ID: ([0-9a-f]{32})\r\n", headers)  # as every answer of the app
        assert request_id and json.loads(body)["error"]["code"] == "uri_too_long"
    assert f"answered 414 uri_too_long before the app (request id {request_id[1].decode()})" in \
        (tmp_path / "server.log").read_text()


def test_worker_closes_at_once_only_when_nothing_is_left_unread() -> None:
    read_whole = SimpleNamespace(body=Body(LengthReader(None, 0)))
    assert request_read_whole(read_whole)
    assert not request_read_whole(SimpleNamespace(body=Body(LengthReader(None, 10))))  # answered before the end
    assert not request_read_whole(SimpleNamespace(body=Body(EOFReader(None))))  # no length: unknown
    assert not request_read_whole(SimpleNamespace())
    server_side, client_side = socket.socketpair()
    with server_side, client_side:
        assert not bytes_waiting(server_side)
        client_side.sendall(b"GET / HTTP/1.1\r\n")  # a pipelined request or a trailing line
        assert bytes_waiting(server_side)
    server_side, client_side = socket.socketpair()
    with server_side:
        client_side.close()  # the client is done: nothing can arrive any more
        assert not bytes_waiting(server_side)
    server_side, client_side = socket.socketpair()
    with server_side, client_side:
        server_side.settimeout(5)  # as the worker reads (handle): the peek must not wait for it
        started = time.monotonic()
        assert not bytes_waiting(server_side)
        assert time.monotonic() - started < 1 and server_side.gettimeout() == 5
