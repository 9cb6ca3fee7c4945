"""Helpers shared by the service's tests: example tickets, error checks, running a real server."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from service.context import EXTENSION, Context

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("first-key", "second-key")
TICKET = {"subject": "Charged twice", "body": "I was billed two times for my subscription this month."}


def ctx(app: Flask) -> Context:
    return app.extensions[EXTENSION]


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    # "tickets" only where the error is about some of a batch's tickets (invalid_ticket)
    assert set(body) == {"error"} and set(body["error"]) - {"tickets"} == {"code", "message"}
    return body["error"]


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_call(port: int, method: str, path: str, body: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, json.dumps(body) if body is not None else None,
                           {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@contextmanager
def running_server(bundle: Path, log: Path, *options: str, stop: int = signal.SIGTERM, **env: str) -> Iterator[int]:
    """``ticketclf serve`` on a free loopback port until ready; always stopped by ``stop``: cleanly, or with
    ``signal.SIGKILL`` as a crash would (the master and its workers at once)."""
    port = free_port()
    environment = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    for variable in ("PROMETHEUS_MULTIPROC_DIR", "GUNICORN_CMD_ARGS"):  # the server under test, not the caller's
        environment.pop(variable, None)
    environment.update(env)
    command = [sys.executable, "-m", "classifier.cli", "serve", str(bundle), "--host", "127.0.0.1",
               "--port", str(port), *options]
    with open(log, "w") as out:
        server = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True, preexec_fn=_default_sigint)
    try:
        wait_ready(server, port, timeout=90)
        yield port
    finally:
        if stop == signal.SIGKILL:
            os.killpg(server.pid, signal.SIGKILL)
        else:
            server.send_signal(stop)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert server.returncode == (-signal.SIGKILL if stop == signal.SIGKILL else 0), log.read_text()


def _default_sigint() -> None:
    """In the server's process before it starts: a test suite run as a background job (`cmd &` in a
    script) has SIGINT ignored, the server would inherit that, and the SIGINT that stops it would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_ready(server: subprocess.Popen, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"server exited with {server.returncode}"
        try:
            if http_call(port, "GET", "/ready")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server not ready after {timeout} s")


def master_pid(log: Path) -> int:
    """gunicorn's "Listening at: http://... (PID)" line names the master."""
    line = next(line for line in log.read_text().splitlines() if "Listening at:" in line)
    return int(line.rsplit("(", 1)[1].rstrip(")"))


def read_answer(connection: socket.socket) -> tuple[int, bytes, bytes]:
    """Status, header block and body of one HTTP answer read up to the server's close."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


def raw_exchange(connection: socket.socket, path: str, body: bytes, declared_length: int) -> tuple[bytes, bytes]:
    """Send a POST (``body`` may be shorter than ``declared_length``), read the answer up to the server's FIN."""
    head = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared_length}\r\n\r\n").encode()
    connection.sendall(head + body)
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    head_part, _, answer = received.partition(b"\r\n\r\n")
    return head_part.split(b"\r\n", 1)[0], answer
